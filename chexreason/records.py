"""The per-image records of an evaluation (results schema v2): one JSON object per line, read and written a line at
a time, and the `ResultsError` every results file raises, with pydantic's errors in a reader's words.

A record is one checkpoint's answer about one image (`Record`); the summary beside the file
(`chexreason.results`) names it with its count and sha256 (`RecordsFile`), which a full read checks.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from chexreason.fingerprints import STRICT, Strict

Count = Annotated[int, Field(ge=0)]


class ResultsError(ValueError):
    """A results file that does not follow the schema; the message says which file, which field and what."""


def _where(loc: tuple) -> str:
    """``("runs", 0, "metrics", "n")`` → ``runs[0].metrics.n``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error: ValidationError, limit: int = 3) -> str:
    """pydantic's errors as ``field.path: problem (got value)``, the first `limit` of them."""
    parts = []
    for e in error.errors()[:limit]:
        msg, value = re.sub(r"^Value error, ", "", e["msg"]), repr(e.get("input"))
        value = value if len(value) <= 60 else value[:57] + "..."
        got = "" if e["type"] in ("missing", "value_error") else f" (got {value})"
        parts.append(f"{_where(e['loc'])}: {msg}{got}" if e["loc"] else f"{msg}{got}")
    more = len(error.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def validated(model: type[BaseModel], obj: Any, where: str) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise ResultsError(f"{where}: {_message(e)}") from None


def read_json(text: str, where: str) -> Any:
    """JSON, or a ResultsError: a hostile file (too deep, numbers too long) must not escape as anything else."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError, as is "Exceeds the limit"
        raise ResultsError(f"{where}: {str(e)[:200]}") from None


def dataset_relative_source(source: str) -> str:
    """`source` if it names an image as records may: a phantom id or a path inside its dataset folder."""
    posix, windows = PurePosixPath(source), PureWindowsPath(source)
    if not source or posix.is_absolute() or windows.anchor or source.startswith("~"):
        raise ValueError(f"{source!r} is not a phantom id or a dataset-relative path (absolute paths are refused)")
    if ".." in posix.parts or ".." in windows.parts:
        raise ValueError(f"{source!r} leaves its dataset folder ('..')")
    return source


class RecordsFile(Strict):
    file: Annotated[str, Field(pattern=r"^[^/\\]+$")]  # a file name beside the summary, no folder
    n: Count
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Record(Strict):
    """One checkpoint's answer about one image (a line of the records file)."""

    model_config = ConfigDict(**STRICT, frozen=True)
    dataset: str
    checkpoint: str
    prompt: str
    index: Count
    source: (
        Annotated[str, AfterValidator(dataset_relative_source)] | None
    )  # null: unknown (a v1 file named it absolutely)
    truth: list[str]
    output: str
    predicted: list[str] | None  # the parsed labels; null when the output is unparseable
    parseable: bool
    truncated: bool | None  # hit max_new_tokens without a stop token; null: not recorded (v1 files)
    n_tokens: Count | None = None  # tokens generated; null: not recorded

    @model_validator(mode="after")
    def _consistent(self) -> Record:
        if self.parseable != (self.predicted is not None):
            raise ValueError("parseable must be true exactly when predicted is a list")
        return self


def records_path(summary: str | Path) -> Path:
    """The records file beside a summary: ``eval.json`` → ``eval.records.jsonl``."""
    summary = Path(summary)
    return summary.with_name(f"{summary.stem}.records.jsonl")


class RecordWriter:
    """Appends records to a JSON Lines file, flushed after every `write` (evaluation writes a pass at a time).

    ``fresh=True`` starts the file empty; otherwise new lines go after the ones already there.
    """

    def __init__(self, path: str | Path, fresh: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w" if fresh else "a", encoding="utf-8")

    def write(self, records: Iterable[Record]) -> None:
        self._file.write("".join(record.model_dump_json() + "\n" for record in records))
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_records(
    path: str | Path,
    dataset: str | None = None,
    checkpoint: str | None = None,
    prompt: str | None = None,
    expect: RecordsFile | None = None,
) -> Iterator[Record]:
    """The records of a JSON Lines file, read one line at a time (never the whole file), optionally filtered;
    each is validated as it is read (a bad line is a `ResultsError` naming the file and line). With `expect`
    (the summary's ``records`` entry), a file read to its end must have that many lines and that sha256: records
    from another run beside a summary are an error, not silently other numbers."""
    path = Path(path)
    filters = {"dataset": dataset, "checkpoint": checkpoint, "prompt": prompt}
    digest, count = hashlib.sha256(), 0
    try:
        with path.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                digest.update(raw)
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                count += 1
                obj = read_json(line, f"{path} line {number}: not JSON")
                if all(v is None or (isinstance(obj, dict) and obj.get(k) == v) for k, v in filters.items()):
                    yield validated(Record, obj, f"{path} line {number}")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read records: {e}") from None
    if expect is not None and (count, digest.hexdigest()) != (expect.n, expect.sha256):
        raise ResultsError(
            f"{path}: {count} records (sha256 {digest.hexdigest()[:12]}…) are not the {expect.n} its summary was "
            f"written with (sha256 {expect.sha256[:12]}…): re-run `python -m train.evaluate`"
        )


def page_records(path: str | Path, offset: int = 0, limit: int | None = None, **filters: str | None) -> list[Record]:
    """Records ``offset`` to ``offset + limit`` of `iter_records(path, **filters)`; only that page is kept."""
    return page_of(iter_records(path, **filters), offset, limit)


def page_of(records: Iterator[Record], offset: int, limit: int | None) -> list[Record]:
    """Records `offset` to `offset + limit` of a stream, reading no further."""
    if offset < 0 or (limit is not None and limit < 0):
        raise ResultsError(f"a page needs offset >= 0 and limit >= 0, got offset {offset}, limit {limit}")
    return list(itertools.islice(records, offset, None if limit is None else offset + limit))
