"""Fingerprints of what an evaluation scored — the weights of each checkpoint and the data — as results files
record them (`chexreason.results`), and `fingerprint`, the short stable hash of any JSON-able object.

A checkpoint is its base model plus, optionally, a LoRA adapter; each is fingerprinted by where it lives:

- a Hub reference by its id and revision — ``{"kind": "hub", "id", "revision", "pinned"}``; a revision of
  null is *unpinned* (the repository may have moved on since), ``pinned`` says it is a commit hash;
- a local folder whose weight files (``*.safetensors``) total under 1 GB by hashing every file a checkpoint
  loads from — ``{"kind": "sha256", "sha256": {file name: digest}}`` (adapters, the tiny set);
- a larger local folder by the sizes and modification times of its weight files, with the small files (the
  safetensors index, configs, tokenizer, chat template) still hashed — ``{"kind": "stat", "sha256": {…},
  "stat": {file name: {"size", "mtime_ns"}}}``: no gigabytes are read, so the app can check at start.

`checkpoint_fingerprint` combines base and adapter with a short ``digest`` of both: equal digests, same
weights (for "stat" folders: same files by size and time; a copy that keeps times, as ``shutil.copy2`` does,
keeps the digest). Only file names are recorded, never a local folder's absolute path.

    >>> fingerprint_reference("google/medgemma-4b-it", None)["pinned"]
    False
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from chexreason.modeling import CheckpointSpec

HASH_LIMIT = 2**30  # weight files of 1 GB or more in all are fingerprinted by size and time, not hashed
# What a checkpoint loads from (what `chexreason.training.export` copies): weights, configs, tokenizer, chat
# template; training bookkeeping that may sit beside an adapter is left out.
FILES = ("*.safetensors", "*.json", "*.jinja", "*.model", "*.txt")
_NOT_WEIGHTS = ("best.json", "trainer_state.json")
_COMMIT = re.compile(r"[0-9a-f]{40}")

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # results: unknown keys, wrong types refused
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def fingerprint(obj: Any) -> str:
    """A short, stable hash of a JSON-serialisable object (config, data manifest, weights fingerprints).

    >>> fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    True
    """
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Strict(BaseModel):
    """A results-file object: unknown keys and wrong types are errors."""

    model_config = STRICT


class SplitData(Strict):
    """One evaluated split: its size, label set, where its images come from and a fingerprint of its content."""

    n: Annotated[int, Field(ge=1)]
    label_set: str
    fingerprint: str | None  # of the split's sources and truth (`split_fingerprint`); null: not recorded (v1)
    images: str | None = None  # the rows' `dataset`: phantom-a/b (ids), or the dataset a path is relative to


class DataFingerprint(Strict):
    manifest: str | None  # the data build's manifest fingerprint; null: not recorded
    splits: dict[str, SplitData] = Field(default_factory=dict)


def split_fingerprint(sources: Iterable[str], truth: Iterable[Iterable[str]]) -> str:
    """What a split is: its images (by source) and their ground truth, in order."""
    return fingerprint({"sources": list(sources), "truth": [sorted(t) for t in truth]})


class FileStat(Strict):
    size: Annotated[int, Field(ge=0)]
    mtime_ns: Annotated[int, Field(ge=0)]


class HubWeights(Strict):
    kind: Literal["hub"]
    id: str
    revision: str | None  # null: unpinned
    pinned: bool  # the revision is a commit hash


class HashedWeights(Strict):
    kind: Literal["sha256"]
    sha256: dict[str, Sha256]  # every file, by name


class StatWeights(Strict):
    kind: Literal["stat"]
    sha256: dict[str, Sha256]  # the small files, the safetensors index among them
    stat: dict[str, FileStat]  # the weight files, too large to hash


Weights = Annotated[HubWeights | HashedWeights | StatWeights, Field(discriminator="kind")]


class CheckpointWeights(Strict):
    """What one checkpoint scored with: its base, its adapter (null: the bare base) and a digest of both."""

    base: Weights
    adapter: Weights | None
    digest: str


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint_folder(folder: str | Path, hash_limit: int = HASH_LIMIT) -> dict:
    """A local model or adapter folder: every file hashed, or (weights of `hash_limit` bytes or more) the
    weight files by size and modification time and the rest hashed."""
    folder = Path(folder)
    found = {path for pattern in FILES for path in folder.glob(pattern) if path.is_file()}
    files = sorted(path for path in found if path.name not in _NOT_WEIGHTS)
    if not files:
        raise FileNotFoundError(f"{folder}: no weight or config files ({', '.join(FILES)}) to fingerprint")
    weights = [path for path in files if path.suffix == ".safetensors"]
    if sum(path.stat().st_size for path in weights) < hash_limit:
        return {"kind": "sha256", "sha256": {path.name: sha256_file(path) for path in files}}
    stats = {path.name: {"size": (s := path.stat()).st_size, "mtime_ns": s.st_mtime_ns} for path in weights}
    return {"kind": "stat", "sha256": {p.name: sha256_file(p) for p in files if p not in weights}, "stat": stats}


def fingerprint_reference(reference: str, revision: str | None = None) -> dict:
    """A base model or adapter as a model set names it: a Hub id (with its revision) or an absolute local folder
    (a model set resolves local references; a relative or empty one would fingerprint whatever folder we run in)."""
    from chexreason.model_set_spec import is_hub_id  # lazy: the spec module reads prompts, which reads labels

    if is_hub_id(reference):
        pinned = revision is not None and _COMMIT.fullmatch(revision) is not None
        return {"kind": "hub", "id": reference, "revision": revision, "pinned": pinned}
    if not reference or not Path(reference).is_absolute():
        raise ValueError(f"cannot fingerprint {reference!r}: neither a Hub id nor an absolute local folder")
    return fingerprint_folder(reference)


def checkpoint_fingerprint(checkpoint: CheckpointSpec, _cache: dict | None = None) -> dict:
    """The fingerprint of a checkpoint's weights: base, adapter (or None) and their digest."""
    cache = {} if _cache is None else _cache

    def of(reference: str, revision: str | None) -> dict:
        if (reference, revision) not in cache:
            cache[reference, revision] = fingerprint_reference(reference, revision)
        return cache[reference, revision]

    base = of(checkpoint.model, checkpoint.revision)
    adapter = None if checkpoint.adapter is None else of(checkpoint.adapter, checkpoint.adapter_revision)
    return {"base": base, "adapter": adapter, "digest": fingerprint({"base": base, "adapter": adapter})}


def model_set_fingerprints(checkpoints: Iterable[CheckpointSpec]) -> dict[str, dict]:
    """`checkpoint_fingerprint` of each checkpoint by name; a base shared by several is read once."""
    cache: dict = {}
    return {c.name: checkpoint_fingerprint(c, cache) for c in checkpoints}
