"""Readers for the metadata of MIMIC-CXR-JPG, CheXpert and NIH ChestX-ray14: one `Record` per image.

Every reader returns a `ReadResult`: a sized iterable of the records (``len(result)``, ``for record in result``)
with a `ReadSummary` (``result.summary``) that accounts for every row of the main table (kept, excluded by a
split list, or dropped under a named problem kind), so nothing is dropped silently. A file where more than half
of the rows cannot be used raises `DatasetError`: that is almost always the wrong file or the wrong image folder,
and training on the remaining scraps would hide it.

Labels are kept twice: `Record.source_labels` holds the dataset's own names and raw values (blank as
None, distinct from 0.0) and `Record.labels` the CheXpert-14 view (blank -> 0.0, NaN where the dataset
cannot express a label). The uncertainty policy is *not* applied here — splits apply it later with
`apply_uncertainty` — so one read serves every recipe.

The plumbing every reader shares (the record type, the row account, the one CSV row loop) is in
`chexreason.data.tables`; its public names are re-exported here.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from chexreason.data.tables import (
    DUPLICATE_ROW,
    FRONTAL_VIEWS,
    MALFORMED_ROW,
    MISSING_IMAGE,
    NO_LABEL_ROW,
    NO_SPLIT_ROW,
    NOT_IN_CSV,
    UNCERTAINTY_POLICIES,
    UNKNOWN_LABEL,
    BadRow,
    DatasetError,
    Problem,
    ReadResult,
    ReadSummary,
    Record,
    apply_uncertainty,
    chexpert_view_of,
    finish,
    merge_auxiliary,
    open_text,
    parse_labels,
    parsed_rows,
    require,
    view_of,
)
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

MIMIC_LABELERS = ("chexpert", "negbio")
# CheXpert labels some NIH finding maps to; every other CheXpert label is NaN for NIH records.
NIH_ANNOTATED_LABELS = frozenset(target for target in NIH_TO_CHEXPERT.values() if target is not None)
_MIMIC_PREFIX = "mimic-cxr-2.0.0"  # MIMIC-CXR-JPG 2.1.0 still ships its tables under the 2.0.0 names
_MIMIC_ID = re.compile(r"\d{2,}")
_DICOM_ID = re.compile(r"[\w-]+")
_NIH_IMAGE = re.compile(r"[\w-]+\.\w+")
_CHEXPERT_PATH = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/([^/]+)$")


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

    def parse(row: Mapping[str, str]) -> tuple[tuple[str, str], str, dict[str, float | None]]:
        key = (require(row, "subject_id", _MIMIC_ID), require(row, "study_id", _MIMIC_ID))
        return key, f"study {key[1]}", parse_labels(row, sorted(CHEXPERT_LABELS))  # the file's (alphabetical) order

    rows = parsed_rows(path, ("subject_id", "study_id", *CHEXPERT_LABELS), summary, parse)
    return {key: labels for _, key, labels in rows}, summary


def _read_mimic_splits(path: Path) -> tuple[dict[str, str], ReadSummary]:
    """The official split (train/validate/test) per dicom_id."""
    summary = ReadSummary(source=str(path))

    def parse(row: Mapping[str, str]) -> tuple[str, str, str]:
        dicom = require(row, "dicom_id", _DICOM_ID)
        return dicom, f"dicom {dicom}", require(row, "split")

    return {dicom: split for _, dicom, split in parsed_rows(path, ("dicom_id", "split"), summary, parse)}, summary


def _mimic_record(
    row: Mapping[str, str],
    root: Path,
    by_study: Mapping[tuple[str, str], dict[str, float | None]],
    splits: Mapping[str, str] | None,
    check_files: bool,
) -> Record:
    dicom = require(row, "dicom_id", _DICOM_ID)
    subject = require(row, "subject_id", _MIMIC_ID)
    study = require(row, "study_id", _MIMIC_ID)
    source = by_study.get((subject, study))
    if source is None:
        raise BadRow(NO_LABEL_ROW, f"dicom {dicom}: study {study} of subject {subject} has no label row")
    relative = f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg"  # one join: pathlib is slow per part
    path = root / relative
    if check_files and not path.is_file():
        raise BadRow(MISSING_IMAGE, relative)
    return Record(
        image_path=path,
        dataset="mimic-cxr",
        patient_id=subject,
        study_id=study,
        view=view_of(row["ViewPosition"]),
        labels=chexpert_view_of(source),
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
    merge_auxiliary(summary, label_summary, labels_path)
    splits = _mimic_splits(root, summary)
    records: list[Record] = []

    def parse(row: Mapping[str, str]) -> tuple[str, str, Record]:
        record = _mimic_record(row, root, by_study, splits, check_files)
        dicom = row["dicom_id"].strip()
        return dicom, f"dicom {dicom}", record

    columns = ("dicom_id", "subject_id", "study_id", "ViewPosition")
    for line, dicom, record in parsed_rows(metadata_path, columns, summary, parse):
        if splits is not None and record.split is None:
            summary.add(NO_SPLIT_ROW, f"line {line}: dicom {dicom}", drops_row=False)
        records.append(record)
    return finish(records, summary, metadata_path)


def _mimic_splits(root: Path, summary: ReadSummary) -> dict[str, str] | None:
    """The split table if present (None if absent, with a warning: records then have split None)."""
    path = _find_table(root, f"{_MIMIC_PREFIX}-split")
    if path is None:
        logger.warning("%s: no %s-split.csv(.gz); records will have split=None", root, _MIMIC_PREFIX)
        return None
    splits, split_summary = _read_mimic_splits(path)
    merge_auxiliary(summary, split_summary, path)
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
        raise BadRow(MALFORMED_ROW, f"Frontal/Lateral value {value[:20]!r}")
    return value == "frontal"


def _chexpert_record(row: Mapping[str, str], resolver: _PathResolver, check_files: bool) -> Record:
    relative = require(row, "Path")
    match = _CHEXPERT_PATH.search(relative)
    if match is None:
        raise BadRow(MALFORMED_ROW, "Path has no patientNNNNN/studyN/ components")
    patient, study, file_name = match.groups()
    source = parse_labels(row, CHEXPERT_LABELS)
    frontal = _frontal_of(row, file_name)
    path = resolver.resolve(relative)
    if check_files and not path.is_file():
        raise BadRow(MISSING_IMAGE, relative)
    return Record(
        image_path=path,
        dataset="chexpert",
        patient_id=patient,
        study_id=f"{patient}/{study}",
        view="LATERAL" if frontal is False else view_of(row.get("AP/PA")),
        labels=chexpert_view_of(source),
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

    def parse(row: Mapping[str, str]) -> tuple[str, str, Record]:
        return row["Path"].strip(), "Path", _chexpert_record(row, resolver, check_files)

    rows = parsed_rows(csv_path, ("Path", *CHEXPERT_LABELS), summary, parse)
    return finish([record for _, _, record in rows], summary, csv_path)


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
    with open_text(path) as handle:
        return {line.strip() for line in handle if line.strip()}


def _nih_labels(cell: str) -> tuple[dict[str, float | None], dict[str, float]]:
    """NIH source labels (1.0 listed, 0.0 not) and their CheXpert view (NaN where NIH cannot say)."""
    names = {part.strip() for part in cell.split("|") if part.strip()}
    if not names:
        raise BadRow(MALFORMED_ROW, "empty Finding Labels")
    unknown = sorted(names - set(NIH_LABELS))
    if unknown:
        raise BadRow(UNKNOWN_LABEL, f"unknown finding(s) {unknown}")
    if "No Finding" in names and len(names) > 1:
        raise BadRow(MALFORMED_ROW, "No Finding listed together with findings")
    source: dict[str, float | None] = {name: 1.0 if name in names else 0.0 for name in NIH_LABELS}
    positives = nih_to_chexpert(names, label_set=None)
    labels = {
        label: (1.0 if label in positives else 0.0) if label in NIH_ANNOTATED_LABELS else math.nan
        for label in CHEXPERT_LABELS
    }
    return source, labels


def _nih_record(row: Mapping[str, str], name: str, path: Path | None) -> Record:
    patient = require(row, "Patient ID")
    source, labels = _nih_labels(row["Finding Labels"])
    if path is None:
        raise BadRow(MISSING_IMAGE, name)
    return Record(
        image_path=path,
        dataset="nih",
        patient_id=patient,
        study_id=None,
        view=view_of(row["View Position"]),
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
    named: set[str] = set()  # every well-formed Image Index of the CSV, kept or not

    def parse(row: Mapping[str, str]) -> tuple[str, str, Record] | None:
        name = require(row, "Image Index", _NIH_IMAGE)
        named.add(name)
        if wanted is not None and name not in wanted:
            return None  # excluded by the split list
        path = index.get(name) or (None if check_files else images_dir / name)
        return name, f"image {name}", _nih_record(row, name, path)

    records = [record for _, _, record in parsed_rows(csv_path, _NIH_COLUMNS, summary, parse)]
    if wanted is not None and named and not wanted & named:  # another dataset's list, or another CSV version's
        example = f"e.g. {min(wanted)!r}" if wanted else "it is empty"
        raise DatasetError(
            f"NIH split list {split_list}: none of its {len(wanted)} file names is in {csv_path} ({example}); "
            "is it the list of this data-entry table?"
        )
    for name in sorted((wanted or set()) - named):
        summary.add(NOT_IN_CSV, name, drops_row=False)
    return finish(records, summary, csv_path)
