"""The API teacher's JSONL cache: one line per finished case, so an interrupted run resumes where it stopped.

Each line is appended and flushed as soon as its case is done, so no case is paid for twice. A line is keyed
by (case id, answer format, model), the last line for a key winning; one file may hold several models and
formats. Every line is validated with `CacheLine`: a truncated line (an interrupted write), one that is not
JSON, and one with an unknown key or a wrong type are skipped and counted, and their cases requested again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType
from typing import IO

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

CacheKey = tuple[str, str, str]  # (case id, answer format key, model)


def cache_key(case_id: str, format_key: str, model: str) -> CacheKey:
    return (case_id, format_key, model)


class CacheLine(BaseModel):
    """One cached case: the kept trace and how it was obtained.

    Strict, so that a line written by something else (a number as a string, an extra key) is not taken for
    a trace: reusing a wrong one would silently put it in the SFT data.

    Attributes:
        id, format, model: the cache key (case id, answer format key, model name).
        labels: the ground-truth labels the trace was written for. Lines written before labels were recorded
            lack the key; they are reused for any labels (see `written_for`).
        reasoning: the trace's reasoning (non-blank: a failure is never cached).
        labels_match: the trace's labels were exactly the ground truth.
        attempts: chat completions paid for the case.
        response: the raw text of the kept response.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str
    format: str
    model: str
    labels: list[str] = []
    reasoning: str
    labels_match: bool
    attempts: int
    response: str | None = None

    @field_validator("reasoning")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("reasoning is blank")
        return value

    @property
    def key(self) -> CacheKey:
        return cache_key(self.id, self.format, self.model)

    def written_for(self, labels: tuple[str, ...] | list[str]) -> bool:
        """The trace was written for these ground-truth labels (or for unrecorded ones, in an old line)."""
        return "labels" not in self.model_fields_set or set(self.labels) == set(labels)


def parse_line(raw: bytes) -> CacheLine | None:
    """One cache line, or None when it is truncated, not UTF-8 JSON, or not shaped like a `CacheLine`."""
    try:
        return CacheLine.model_validate_json(raw)
    except ValidationError:
        return None


def read_cache(path: Path) -> tuple[dict[CacheKey, CacheLine], int]:
    """The cached lines by key, the last line winning; and the number of unusable lines."""
    if not path.exists():
        return {}, 0
    lines: dict[CacheKey, CacheLine] = {}
    unusable = 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        line = parse_line(raw)
        if line is None:
            unusable += 1
        else:
            lines[line.key] = line
    return lines, unusable


def open_for_append(path: Path) -> IO[str]:
    """Open the cache for appending, first ending a truncated last line so the next record starts clean."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            complete = handle.read(1) == b"\n"
        if not complete:
            with path.open("ab") as handle:
                handle.write(b"\n")
    return path.open("a", encoding="utf-8", newline="\n")


class CacheWriter:
    """Appends lines to the cache from several worker threads, each flushed so an interruption cannot lose it."""

    def __init__(self, path: Path) -> None:
        self._file = open_for_append(path)
        self._lock = threading.Lock()

    def append(self, line: CacheLine) -> None:
        text = line.model_dump_json() + "\n"
        with self._lock:
            self._file.write(text)
            self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
