"""Readers for the metadata of MIMIC-CXR-JPG, CheXpert and NIH ChestX-ray14: one `Record` per image.

Every reader returns a `ReadResult`: the records plus a `ReadSummary` that accounts for every row of the
main table (kept, excluded by a split list, or dropped under a named problem kind), so nothing is dropped
silently. A file where more than half of the rows cannot be used raises `DatasetError`: that is almost
always the wrong file or the wrong image folder, and training on the remaining scraps would hide it.

Labels are kept twice: `Record.source_labels` holds the dataset's own names and raw values (blank as
None, distinct from 0.0) and `Record.labels` the CheXpert-14 view (blank -> 0.0, NaN where the dataset
cannot express a label). The uncertainty policy is *not* applied here — splits apply it later with
`apply_uncertainty` — so one read serves every recipe.

Why the csv module and not pandas: pandas would coerce ``"2.0"`` or ``"yes"`` to numbers or NaN and turn
blank into NaN before we could tell a blank from a bad value, and it reports no line numbers. The csv
module hands us raw strings per line, so each bad row is counted with its line number.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TextIO

from chexreason.labels import CHEXPERT_LABELS, NIH_LABELS, NIH_TO_CHEXPERT, nih_to_chexpert

logger = logging.getLogger(__name__)

__all__ = [
    "DUPLICATE_ROW",
    "FRONTAL_VIEWS",
    "MALFORMED_ROW",
    "MIMIC_LABELERS",
    "MISSING_IMAGE",
    "NIH_ANNOTATED_LABELS",
    "NOT_IN_CSV",
    "NO_LABEL_ROW",
    "NO_SPLIT_ROW",
    "UNCERTAINTY_POLICIES",
    "UNKNOWN_LABEL",
    "DatasetError",
    "Problem",
    "ReadResult",
    "ReadSummary",
    "Record",
    "apply_uncertainty",
    "read_chexpert",
    "read_mimic",
    "read_nih",
]

FRONTAL_VIEWS = frozenset({"PA", "AP"})
UNCERTAINTY_POLICIES = ("u-zeros", "u-ones", "ignore")
MIMIC_LABELERS = ("chexpert", "negbio")
# CheXpert labels some NIH finding maps to; every other CheXpert label is NaN for NIH records.
NIH_ANNOTATED_LABELS = frozenset(target for target in NIH_TO_CHEXPERT.values() if target is not None)

# Problem kinds. The first five drop the row they describe; the last two are notes on kept data.
MALFORMED_ROW = "malformed row"
UNKNOWN_LABEL = "unknown label name"
MISSING_IMAGE = "missing image file"
NO_LABEL_ROW = "no label row"
DUPLICATE_ROW = "duplicate row"
NO_SPLIT_ROW = "no split row"
NOT_IN_CSV = "split-list name not in CSV"

_MAX_EXAMPLES = 5
# Accepted label values; keyed by float so "1", "1.0" and "-0.0" all land on one canonical value.
_LABEL_VALUES = {1.0: 1.0, 0.0: 0.0, -1.0: -1.0}
_MIMIC_PREFIX = "mimic-cxr-2.0.0"  # MIMIC-CXR-JPG 2.1.0 still ships its tables under the 2.0.0 names
_MIMIC_ID = re.compile(r"\d{2,}")
_DICOM_ID = re.compile(r"[\w-]+")
_NIH_IMAGE = re.compile(r"[\w-]+\.\w+")
_CHEXPERT_PATH = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/([^/]+)$")


class DatasetError(ValueError):
    """A dataset file that cannot be what the reader was told it is (wrong columns, mostly bad rows)."""


@dataclass(frozen=True)
class Record:
    """One image and its labels, in the same shape whichever dataset it came from.

    `labels` has every CheXpert label as key: 1.0 present, -1.0 uncertain, 0.0 negative or not mentioned,
    NaN where the dataset's vocabulary cannot express the label. `source_labels` keeps the dataset's own
    names and raw values with blank as None, so "not mentioned" stays distinguishable from "negative".
    `frontal` is set only where the dataset says so explicitly (CheXpert's Frontal/Lateral column or file
    name); elsewhere `is_frontal` is derived from `view`.
    """

    image_path: Path
    dataset: str
    patient_id: str
    study_id: str | None
    view: str | None
    labels: dict[str, float]
    source_labels: dict[str, float | None]
    split: str | None = None
    frontal: bool | None = None

    @property
    def is_frontal(self) -> bool:
        """Whether the image is a frontal (PA/AP) view; unknown views count as not frontal."""
        if self.frontal is not None:
            return self.frontal
        return self.view in FRONTAL_VIEWS


@dataclass
class Problem:
    """How many rows had one kind of problem, with a few examples (line numbers and ids only)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    drops_row: bool = True


@dataclass
class ReadSummary:
    """Accounts for every row of a reader's main table: rows_read == records_kept + rows_filtered + rows_dropped."""

    source: str
    rows_read: int = 0
    records_kept: int = 0
    rows_filtered: int = 0
    problems: dict[str, Problem] = field(default_factory=dict)

    def add(self, kind: str, example: str, *, drops_row: bool = True) -> None:
        """Count one problem of `kind`, keeping the example if fewer than five are kept yet."""
        problem = self.problems.setdefault(kind, Problem(drops_row=drops_row))
        problem.count += 1
        if len(problem.examples) < _MAX_EXAMPLES:
            problem.examples.append(example)

    @property
    def rows_dropped(self) -> int:
        """Rows of the main table dropped because of a problem."""
        return sum(problem.count for problem in self.problems.values() if problem.drops_row)

    def log(self) -> None:
        """Log the totals at INFO, and one WARNING line per problem kind."""
        logger.info(
            "%s: %d rows read, %d records kept, %d excluded by the split list, %d dropped",
            self.source,
            self.rows_read,
            self.records_kept,
            self.rows_filtered,
            self.rows_dropped,
        )
        for kind, problem in self.problems.items():
            effect = "dropped" if problem.drops_row else "kept"
            logger.warning(
                "%s: %d x %s (%s); e.g. %s", self.source, problem.count, kind, effect, "; ".join(problem.examples)
            )

    def __str__(self) -> str:
        lines = [
            f"{self.source}: {self.rows_read} rows read, {self.records_kept} records kept, "
            f"{self.rows_filtered} excluded by the split list, {self.rows_dropped} dropped"
        ]
        for kind, problem in self.problems.items():
            effect = "dropped" if problem.drops_row else "kept"
            lines.append(f"  {kind}: {problem.count} ({effect})")
            lines.extend(f"    {example}" for example in problem.examples)
        return "\n".join(lines)


@dataclass
class ReadResult:
    """What a reader returns: the kept records and the account of every row."""

    records: list[Record]
    summary: ReadSummary


class _BadRow(Exception):
    """Raised inside row parsing to route a row to a problem kind with a short, id-only description."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def apply_uncertainty(labels: Mapping[str, float], policy: str) -> dict[str, float] | None:
    """Resolve uncertain (-1.0) labels by `policy`; None means "drop this sample" (policy ``ignore``).

    Readers keep -1.0 so that one read serves every recipe; splits call this with the recipe's policy.
    NaN (label not annotated) is left alone by every policy.

    >>> apply_uncertainty({"Edema": -1.0, "Cardiomegaly": 1.0}, "u-zeros")
    {'Edema': 0.0, 'Cardiomegaly': 1.0}
    >>> apply_uncertainty({"Edema": -1.0, "Fracture": float("nan")}, "u-ones")
    {'Edema': 1.0, 'Fracture': nan}
    >>> apply_uncertainty({"Edema": -1.0}, "ignore") is None
    True
    """
    if policy not in UNCERTAINTY_POLICIES:
        raise ValueError(f"unknown uncertainty policy {policy!r}; choose one of {list(UNCERTAINTY_POLICIES)}")
    if policy == "ignore":
        return None if any(value == -1.0 for value in labels.values()) else dict(labels)
    replacement = 0.0 if policy == "u-zeros" else 1.0
    return {label: replacement if value == -1.0 else value for label, value in labels.items()}


# --- CSV plumbing ------------------------------------------------------------------------------------------


def _open_text(path: Path) -> TextIO:
    """Open a .csv or .csv.gz as text; utf-8-sig drops the byte-order mark some re-saved copies carry."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def _fit_width(fields: list[str], header: Sequence[str]) -> list[str] | None:
    """Return `fields` at the header's width, or None if they cannot be matched to it.

    Only a difference made of trailing empty fields is forgiven: the 2017 NIH table ends every line with a
    comma (an unnamed empty column), and some copies drop it on some lines but not in the header.
    """
    width = len(header)
    if len(fields) > width and not any(value.strip() for value in fields[width:]):
        return fields[:width]
    if len(fields) < width and not any(name for name in header[len(fields) :]):
        return fields + [""] * (width - len(fields))
    return fields if len(fields) == width else None


def _read_rows(path: Path, required: Sequence[str], summary: ReadSummary) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row by column name) for each data row; count rows and wrong-width rows in `summary`."""
    try:
        with _open_text(path) as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            missing = [name for name in required if name not in header]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; its header is {header}")
            for fields in reader:
                if not fields:  # a blank line is no row at all
                    continue
                summary.rows_read += 1
                fitted = _fit_width(fields, header)
                if fitted is None:
                    summary.add(MALFORMED_ROW, f"line {reader.line_num}: {len(fields)} fields, expected {len(header)}")
                    continue
                yield reader.line_num, dict(zip(header, fitted, strict=True))
    except (csv.Error, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise DatasetError(f"{path}: not a readable CSV ({error})") from error


def _require(row: Mapping[str, str], column: str, pattern: re.Pattern[str] | None = None) -> str:
    """The stripped value of an id column; a blank or ill-formed id makes the row malformed."""
    value = row[column].strip()
    if not value:
        raise _BadRow(MALFORMED_ROW, f"missing {column}")
    if pattern is not None and not pattern.fullmatch(value):
        raise _BadRow(MALFORMED_ROW, f"ill-formed {column}")
    return value


def _parse_label(value: str, column: str) -> float | None:
    """Blank -> None; 1/0/-1 (as "1.0" or "1") -> float; anything else makes the row malformed."""
    text = value.strip()
    if not text:
        return None
    try:
        parsed = _LABEL_VALUES.get(float(text))
    except ValueError:
        parsed = None
    if parsed is None:
        raise _BadRow(MALFORMED_ROW, f"value {text[:20]!r} in column {column!r}")
    return parsed


def _parse_labels(row: Mapping[str, str], columns: Sequence[str]) -> dict[str, float | None]:
    return {column: _parse_label(row[column], column) for column in columns}


def _chexpert_view_of(source: Mapping[str, float | None]) -> dict[str, float]:
    """CheXpert-vocabulary labels from raw CheXpert-named values: blank (not mentioned) becomes 0.0."""
    return {label: 0.0 if source[label] is None else source[label] for label in CHEXPERT_LABELS}


def _view(value: str | None) -> str | None:
    text = (value or "").strip().upper()
    return text or None


def _unique(key: object, seen: set | Mapping, description: str) -> None:
    """Refuse a key already seen; the caller records it once the row is kept."""
    if key in seen:
        raise _BadRow(DUPLICATE_ROW, f"{description} seen before")


def _finish(records: list[Record], summary: ReadSummary, path: Path) -> ReadResult:
    """Close the account, refuse a mostly-bad file, and log the summary."""
    summary.records_kept = len(records)
    _raise_if_mostly_bad(summary, path)
    summary.log()
    return ReadResult(records=records, summary=summary)


def _raise_if_mostly_bad(summary: ReadSummary, path: Path) -> None:
    """Raise DatasetError when more than half the rows (not counting split-list exclusions) were dropped."""
    considered = summary.rows_read - summary.rows_filtered
    bad = summary.rows_dropped
    if considered == 0 or 2 * bad <= considered:
        return
    kinds = ", ".join(f"{kind}: {p.count}" for kind, p in summary.problems.items() if p.drops_row)
    examples = "; ".join(example for p in summary.problems.values() if p.drops_row for example in p.examples[:2])
    hint = ""
    if 2 * summary.problems.get(MISSING_IMAGE, Problem()).count > bad:
        hint = " Most images are missing: is the image folder right? check_files=False reads the tables alone."
    raise DatasetError(
        f"{path}: {bad} of {considered} rows could not be used ({kinds}); first examples: {examples}.{hint}"
    )


def _merge_auxiliary(summary: ReadSummary, auxiliary: ReadSummary, path: Path) -> None:
    """Fold a side table's problems into the main summary as notes, after refusing a mostly-bad side table.

    Side-table rows are not rows of the main table, so they never count as dropped records; their effect
    shows up where it matters (e.g. a study whose label row was malformed is counted under "no label row").
    """
    _raise_if_mostly_bad(auxiliary, path)
    for kind, problem in auxiliary.problems.items():
        merged = summary.problems.setdefault(f"{kind} in {path.name}", Problem(drops_row=False))
        merged.count += problem.count
        merged.examples.extend(problem.examples[: _MAX_EXAMPLES - len(merged.examples)])


# --- MIMIC-CXR-JPG -----------------------------------------------------------------------------------------


def _find_table(root: Path, stem: str) -> Path | None:
    for suffix in (".csv", ".csv.gz"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    return None


def _required_table(root: Path, stem: str) -> Path:
    path = _find_table(root, stem)
    if path is None:
        raise FileNotFoundError(f"{root}: no {stem}.csv or {stem}.csv.gz; is this the MIMIC-CXR-JPG root?")
    return path


def _read_mimic_labels(path: Path) -> tuple[dict[tuple[str, str], dict[str, float | None]], ReadSummary]:
    """Labels per (subject_id, study_id) from the CheXpert- or NegBio-labeler table."""
    summary = ReadSummary(source=str(path))
    by_study: dict[tuple[str, str], dict[str, float | None]] = {}
    for line, row in _read_rows(path, ("subject_id", "study_id", *CHEXPERT_LABELS), summary):
        try:
            key = (_require(row, "subject_id", _MIMIC_ID), _require(row, "study_id", _MIMIC_ID))
            labels = _parse_labels(row, sorted(CHEXPERT_LABELS))  # the file's own (alphabetical) order
            _unique(key, by_study, f"study {key[1]}")
        except _BadRow as bad:
            summary.add(bad.kind, f"line {line}: {bad}")
            continue
        by_study[key] = labels
    return by_study, summary


def _read_mimic_splits(path: Path) -> tuple[dict[str, str], ReadSummary]:
    """The official split (train/validate/test) per dicom_id."""
    summary = ReadSummary(source=str(path))
    splits: dict[str, str] = {}
    for line, row in _read_rows(path, ("dicom_id", "split"), summary):
        try:
            dicom = _require(row, "dicom_id", _DICOM_ID)
            split = _require(row, "split")
            _unique(dicom, splits, f"dicom {dicom}")
        except _BadRow as bad:
            summary.add(bad.kind, f"line {line}: {bad}")
            continue
        splits[dicom] = split
    return splits, summary


def _mimic_record(
    row: Mapping[str, str],
    root: Path,
    by_study: Mapping[tuple[str, str], dict[str, float | None]],
    splits: Mapping[str, str] | None,
    check_files: bool,
) -> Record:
    dicom = _require(row, "dicom_id", _DICOM_ID)
    subject = _require(row, "subject_id", _MIMIC_ID)
    study = _require(row, "study_id", _MIMIC_ID)
    source = by_study.get((subject, study))
    if source is None:
        raise _BadRow(NO_LABEL_ROW, f"dicom {dicom}: study {study} of subject {subject} has no label row")
    relative = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"  # one join: pathlib is slow per part
    path = root / relative
    if check_files and not path.is_file():
        raise _BadRow(MISSING_IMAGE, relative)
    return Record(
        image_path=path,
        dataset="mimic-cxr",
        patient_id=subject,
        study_id=study,
        view=_view(row["ViewPosition"]),
        labels=_chexpert_view_of(source),
        source_labels=dict(source),
        split=splits.get(dicom) if splits is not None else None,
    )


def read_mimic(root: str | Path, labeler: str = "chexpert", *, check_files: bool = True) -> ReadResult:
    """Read MIMIC-CXR-JPG 2.0/2.1: one record per dicom of the metadata table, labelled per study.

    Args:
        root: the dataset folder, holding ``mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv[.gz]`` and
            ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg``.
        labeler: which label table to use, ``"chexpert"`` or ``"negbio"``.
        check_files: count and drop dicoms whose JPEG is missing (one stat per image).

    Labels are per study, joined on (subject_id, study_id); a dicom whose study has no label row is
    dropped under "no label row". The split table is optional: without it (or without a dicom's row)
    `Record.split` is None, and the latter is noted under "no split row".
    """
    root = Path(root)
    if labeler not in MIMIC_LABELERS:
        raise ValueError(f"unknown MIMIC labeler {labeler!r}; choose one of {list(MIMIC_LABELERS)}")
    metadata_path = _required_table(root, f"{_MIMIC_PREFIX}-metadata")
    labels_path = _required_table(root, f"{_MIMIC_PREFIX}-{labeler}")
    summary = ReadSummary(source=str(metadata_path))
    by_study, label_summary = _read_mimic_labels(labels_path)
    _merge_auxiliary(summary, label_summary, labels_path)
    splits = _mimic_splits(root, summary)
    records: list[Record] = []
    seen: set[str] = set()
    for line, row in _read_rows(metadata_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"), summary):
        try:
            record = _mimic_record(row, root, by_study, splits, check_files)
            dicom = row["dicom_id"].strip()
            _unique(dicom, seen, f"dicom {dicom}")
        except _BadRow as bad:
            summary.add(bad.kind, f"line {line}: {bad}")
            continue
        seen.add(dicom)
        if splits is not None and record.split is None:
            summary.add(NO_SPLIT_ROW, f"line {line}: dicom {dicom}", drops_row=False)
        records.append(record)
    return _finish(records, summary, metadata_path)


def _mimic_splits(root: Path, summary: ReadSummary) -> dict[str, str] | None:
    """The split table if present (None if absent, with a warning: records then have split None)."""
    path = _find_table(root, f"{_MIMIC_PREFIX}-split")
    if path is None:
        logger.warning("%s: no %s-split.csv(.gz); records will have split=None", root, _MIMIC_PREFIX)
        return None
    splits, split_summary = _read_mimic_splits(path)
    _merge_auxiliary(summary, split_summary, path)
    return splits


# --- CheXpert ----------------------------------------------------------------------------------------------


class _PathResolver:
    """Turn CheXpert's relative `Path` cells into files, learning the folder layout from the first hit.

    Candidates, in order, for each base folder: ``base/Path`` and ``base/<Path minus its first component>``
    (the latter when the base is the dataset folder itself, e.g. ``CheXpert-v1.0-small/``). All rows of
    one CSV share a layout, so once a candidate exists it is used for every later row without probing.
    When nothing resolves (files absent, or not yet seen) the first candidate is returned.
    """

    def __init__(self, bases: Sequence[Path]) -> None:
        self._strategies = [(base, strip) for base in bases for strip in (False, True)]
        self._chosen: tuple[Path, bool] | None = None

    @staticmethod
    def _build(strategy: tuple[Path, bool], relative: str) -> Path:
        base, strip = strategy
        parts = PurePosixPath(relative).parts
        return base.joinpath(*(parts[1:] if strip else parts))

    def resolve(self, relative: str) -> Path:
        if self._chosen is not None:
            return self._build(self._chosen, relative)
        for strategy in self._strategies:
            if len(PurePosixPath(relative).parts) < 2 and strategy[1]:
                continue
            candidate = self._build(strategy, relative)
            if candidate.is_file():
                self._chosen = strategy
                return candidate
        return self._build(self._strategies[0], relative)


def _frontal_of(row: Mapping[str, str], file_name: str) -> bool | None:
    """Frontal or lateral from the Frontal/Lateral column, or from the file name where the column is absent."""
    if "Frontal/Lateral" not in row:  # test_labels.csv has no such column
        name = file_name.lower()
        return True if "_frontal" in name else False if "_lateral" in name else None
    value = row["Frontal/Lateral"].strip().lower()
    if value not in ("frontal", "lateral"):
        raise _BadRow(MALFORMED_ROW, f"Frontal/Lateral value {value[:20]!r}")
    return value == "frontal"


def _chexpert_record(row: Mapping[str, str], resolver: _PathResolver, check_files: bool) -> Record:
    relative = _require(row, "Path")
    match = _CHEXPERT_PATH.search(relative)
    if match is None:
        raise _BadRow(MALFORMED_ROW, "Path has no patientNNNNN/studyN/ components")
    patient, study, file_name = match.groups()
    source = _parse_labels(row, CHEXPERT_LABELS)
    frontal = _frontal_of(row, file_name)
    path = resolver.resolve(relative)
    if check_files and not path.is_file():
        raise _BadRow(MISSING_IMAGE, relative)
    return Record(
        image_path=path,
        dataset="chexpert",
        patient_id=patient,
        study_id=f"{patient}/{study}",
        view="LATERAL" if frontal is False else _view(row.get("AP/PA")),
        labels=_chexpert_view_of(source),
        source_labels=source,
        frontal=frontal,
    )


def read_chexpert(csv_path: str | Path, root: str | Path | None = None, *, check_files: bool = True) -> ReadResult:
    """Read a CheXpert ``train.csv``, ``valid.csv`` or ``test_labels.csv``.

    Args:
        csv_path: the label table.
        root: the folder the ``Path`` column is relative to (the parent of ``CheXpert-v1.0-small/``), or the
            dataset folder itself. Default: try the CSV's grandparent, then its parent — which covers the
            CSV inside the dataset folder (``train.csv``, ``valid.csv``) and ``test_labels.csv`` beside
            ``test/``. See `_PathResolver` for the exact rule.
        check_files: count and drop rows whose image is missing.

    `patient_id` is the ``patientNNNNN`` path component and `study_id` is ``patientNNNNN/studyN`` (CheXpert
    numbers studies per patient). The view is the AP/PA cell for frontal images and "LATERAL" for lateral
    ones; where the table has no Frontal/Lateral column (the test set) frontal is read from the file name
    (``view1_frontal.jpg``) and the frontal view is None.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"no CheXpert label table at {csv_path}")
    bases = [Path(root)] if root is not None else [csv_path.parent.parent, csv_path.parent]
    resolver = _PathResolver(bases)
    summary = ReadSummary(source=str(csv_path))
    records: list[Record] = []
    seen: set[str] = set()
    for line, row in _read_rows(csv_path, ("Path", *CHEXPERT_LABELS), summary):
        try:
            record = _chexpert_record(row, resolver, check_files)
            _unique(row["Path"].strip(), seen, "Path")
        except _BadRow as bad:
            summary.add(bad.kind, f"line {line}: {bad}")
            continue
        seen.add(row["Path"].strip())
        records.append(record)
    return _finish(records, summary, csv_path)


# --- NIH ChestX-ray14 --------------------------------------------------------------------------------------

# Located by name: the header's bracketed columns (`OriginalImage[Width,Height]`) contain unquoted commas,
# so the csv module splits each into two header fields — as it splits the matching data values — and only
# these leading columns are needed. "Patient Gender" / "Patient Sex" varies between copies and is unused.
_NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def _nih_image_index(images_dir: Path) -> dict[str, Path]:
    """Map file name -> path over ``images_dir``, ``images_dir/images`` and Kaggle's ``images_0XX/images``.

    One directory listing per folder instead of a stat per row, and the only way to find an image in the
    Kaggle layout without probing twelve folders per row.
    """
    folders = [images_dir, images_dir / "images", *sorted(images_dir.glob("images_*/images"))]
    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file():
                    index.setdefault(entry.name, Path(entry.path))
    return index


def _read_split_list(path: Path) -> set[str]:
    """File names, one per line (``train_val_list.txt`` / ``test_list.txt``)."""
    with _open_text(path) as handle:
        return {line.strip() for line in handle if line.strip()}


def _nih_labels(cell: str) -> tuple[dict[str, float | None], dict[str, float]]:
    """NIH source labels (1.0 listed, 0.0 not) and their CheXpert view (NaN where NIH cannot say)."""
    names = {part.strip() for part in cell.split("|") if part.strip()}
    if not names:
        raise _BadRow(MALFORMED_ROW, "empty Finding Labels")
    unknown = sorted(names - set(NIH_LABELS))
    if unknown:
        raise _BadRow(UNKNOWN_LABEL, f"unknown finding(s) {unknown}")
    if "No Finding" in names and len(names) > 1:
        raise _BadRow(MALFORMED_ROW, "No Finding listed together with findings")
    source: dict[str, float | None] = {name: 1.0 if name in names else 0.0 for name in NIH_LABELS}
    positives = nih_to_chexpert(names, label_set=None)
    labels = {
        label: (1.0 if label in positives else 0.0) if label in NIH_ANNOTATED_LABELS else math.nan
        for label in CHEXPERT_LABELS
    }
    return source, labels


def _nih_record(row: Mapping[str, str], name: str, path: Path | None) -> Record:
    patient = _require(row, "Patient ID")
    source, labels = _nih_labels(row["Finding Labels"])
    if path is None:
        raise _BadRow(MISSING_IMAGE, name)
    return Record(
        image_path=path,
        dataset="nih",
        patient_id=patient,
        study_id=None,
        view=_view(row["View Position"]),
        labels=labels,
        source_labels=source,
    )


def read_nih(
    csv_path: str | Path,
    images_dir: str | Path,
    split_list: str | Path | None = None,
    *,
    check_files: bool = True,
) -> ReadResult:
    """Read NIH ChestX-ray14's ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv``.

    Args:
        csv_path: the data-entry table.
        images_dir: the folder of PNGs; the Kaggle layout (``images_0XX/images/``) and an ``images/``
            subfolder are found too.
        split_list: ``train_val_list.txt`` or ``test_list.txt``; rows not listed are excluded (counted as
            `rows_filtered`), and listed names absent from the CSV are noted.
        check_files: count and drop rows whose image is missing.

    `study_id` is None: NIH has no study id, and ``Follow-up #`` is a per-patient visit counter, not an
    identifier of a multi-image study. Labels go through `NIH_TO_CHEXPERT` (every target kept, Effusion
    included); CheXpert labels NIH cannot express are NaN, and an image whose findings all lack a CheXpert
    equivalent (just Infiltration, say) is 0.0 everywhere — it is not No Finding.
    """
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    if not csv_path.is_file():
        raise FileNotFoundError(f"no NIH data-entry table at {csv_path}")
    if check_files and not images_dir.is_dir():
        raise FileNotFoundError(f"NIH images_dir {images_dir} is not a folder (check_files=False skips images)")
    wanted = _read_split_list(Path(split_list)) if split_list is not None else None
    index = _nih_image_index(images_dir)
    summary = ReadSummary(source=str(csv_path))
    records: list[Record] = []
    named: set[str] = set()  # every well-formed Image Index of the CSV, kept or not
    seen: set[str] = set()
    for line, row in _read_rows(csv_path, _NIH_COLUMNS, summary):
        try:
            name = _require(row, "Image Index", _NIH_IMAGE)
            named.add(name)
            if wanted is not None and name not in wanted:
                summary.rows_filtered += 1
                continue
            path = index.get(name) or (None if check_files else images_dir / name)
            record = _nih_record(row, name, path)
            _unique(name, seen, f"image {name}")
        except _BadRow as bad:
            summary.add(bad.kind, f"line {line}: {bad}")
            continue
        seen.add(name)
        records.append(record)
    for name in sorted((wanted or set()) - named):
        summary.add(NOT_IN_CSV, name, drops_row=False)
    return _finish(records, summary, csv_path)
