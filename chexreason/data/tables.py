"""What every dataset reader shares: the `Record` it returns, the account of every row (`ReadSummary`), and the
CSV plumbing — one row loop (`parsed_rows`), id and label parsing, refusing a mostly-bad file.

Why the csv module and not pandas: pandas would coerce ``"2.0"`` or ``"yes"`` to numbers or NaN and turn blank
into NaN before we could tell a blank from a bad value, and it reports no line numbers. The csv module hands us
raw strings per line, so each bad row is counted with its line number.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

from chexreason.labels import CHEXPERT_LABELS

logger = logging.getLogger(__name__)
T = TypeVar("T")

FRONTAL_VIEWS = frozenset({"PA", "AP"})
UNCERTAINTY_POLICIES = ("u-zeros", "u-ones", "ignore")

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
    """What a reader returns: the kept records and the account of every row (`summary`).

    A sized iterable of its records: ``len(result)`` and ``for record in result`` mean ``result.records``.
    """

    records: list[Record]
    summary: ReadSummary

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)


class BadRow(Exception):
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


def open_text(path: Path) -> TextIO:
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


def read_rows(path: Path, required: Sequence[str], summary: ReadSummary) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row by column name) for each data row; count rows and wrong-width rows in `summary`."""
    try:
        with open_text(path) as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            missing = [name for name in required if name not in header]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; its header is {header}")
            line = reader.line_num
            for fields in reader:
                # Records are counted by line too: none of these tables has a field spanning lines, so a record that
                # does is an unmatched quote that silently swallowed the lines after it.
                if reader.line_num - line > 1:
                    joined = f"lines {line + 1}-{reader.line_num}"
                    raise DatasetError(
                        f"{path}: line {line + 1}: an unmatched quote joins {joined} into one row; fix the quote "
                        "(no field of these tables spans lines)"
                    )
                line = reader.line_num
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


def parsed_rows(
    path: Path,
    required: Sequence[str],
    summary: ReadSummary,
    parse: Callable[[Mapping[str, str]], tuple[Hashable, str, T] | None],
) -> Iterator[tuple[int, Hashable, T]]:
    """The one row loop of every reader: yield (line, key, item) for each usable, first-seen row of a table.

    `parse` turns a row into (key, how to name the key in a message, item), returns None for a row a split
    list excludes, or raises `BadRow`; a bad row is counted in `summary` under its kind, a repeated key under
    "duplicate row".
    """
    seen: set[Hashable] = set()
    for line, row in read_rows(path, required, summary):
        try:
            parsed = parse(row)
            if parsed is None:
                summary.rows_filtered += 1
                continue
            key, description, item = parsed
            if key in seen:
                raise BadRow(DUPLICATE_ROW, f"{description} seen before")
        except BadRow as bad:
            summary.add(bad.kind, f"line {line}: {bad}")
            continue
        seen.add(key)
        yield line, key, item


def require(row: Mapping[str, str], column: str, pattern: re.Pattern[str] | None = None) -> str:
    """The stripped value of an id column; a blank or ill-formed id makes the row malformed."""
    value = row[column].strip()
    if not value:
        raise BadRow(MALFORMED_ROW, f"missing {column}")
    if pattern is not None and not pattern.fullmatch(value):
        raise BadRow(MALFORMED_ROW, f"ill-formed {column}")
    return value


def parse_label(value: str, column: str) -> float | None:
    """Blank -> None; 1/0/-1 (as "1.0" or "1") -> float; anything else makes the row malformed."""
    text = value.strip()
    if not text:
        return None
    try:
        parsed = _LABEL_VALUES.get(float(text))
    except ValueError:
        parsed = None
    if parsed is None:
        raise BadRow(MALFORMED_ROW, f"value {text[:20]!r} in column {column!r}")
    return parsed


def parse_labels(row: Mapping[str, str], columns: Sequence[str]) -> dict[str, float | None]:
    return {column: parse_label(row[column], column) for column in columns}


def chexpert_view_of(source: Mapping[str, float | None]) -> dict[str, float]:
    """CheXpert-vocabulary labels from raw CheXpert-named values: blank (not mentioned) becomes 0.0."""
    return {label: 0.0 if source[label] is None else source[label] for label in CHEXPERT_LABELS}


def view_of(value: str | None) -> str | None:
    text = (value or "").strip().upper()
    return text or None


def finish(records: list[Record], summary: ReadSummary, path: Path) -> ReadResult:
    """Close the account, refuse a mostly-bad file, and log the summary."""
    summary.records_kept = len(records)
    raise_if_mostly_bad(summary, path)
    summary.log()
    return ReadResult(records=records, summary=summary)


def raise_if_mostly_bad(summary: ReadSummary, path: Path) -> None:
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


def merge_auxiliary(summary: ReadSummary, auxiliary: ReadSummary, path: Path) -> None:
    """Fold a side table's problems into the main summary as notes, after refusing a mostly-bad side table.

    Side-table rows are not rows of the main table, so they never count as dropped records; their effect
    shows up where it matters (e.g. a study whose label row was malformed is counted under "no label row").
    """
    raise_if_mostly_bad(auxiliary, path)
    for kind, problem in auxiliary.problems.items():
        merged = summary.problems.setdefault(f"{kind} in {path.name}", Problem(drops_row=False))
        merged.count += problem.count
        merged.examples.extend(problem.examples[: _MAX_EXAMPLES - len(merged.examples)])
