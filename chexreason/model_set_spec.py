"""The model-set file format: 2–4 checkpoints (e.g. base, SFT, GRPO) to compare side by side, and its validation.

A model set is a small YAML file naming the checkpoints in display order::

    name: tiny
    description: Tiny Gemma3 trained by the tiny recipe on synthetic phantoms (not diagnostic).
    checkpoints:
      - name: base            # unique ([A-Za-z0-9][A-Za-z0-9_-]*): column title and results key
        title: Base           # optional display name (default: name)
        model: base           # local path (relative to this file's folder) or a Hub id
        revision: null        # Hub revision of `model`: pin it for Hub ids
        prompt: free_reasoning   # key for chexreason.prompts.get_prompt (default: free_reasoning)
        max_new_tokens: 192   # generation budget (default 1024): the GRPO recipe's max_completion_length
      - name: sft
        model: base
        adapter: sft          # optional LoRA adapter: local dir (relative path) or Hub id
        adapter_revision: null
        prompt: free_reasoning
        max_new_tokens: 192

The generation budget is part of a checkpoint: the GRPO stage samples at most ``max_completion_length`` tokens
and validates with that budget, so an answer cut off sooner is one the policy was never cut off at (no
``</solution>``: unparseable). `train.grpo`'s export records that length for every checkpoint; evaluation,
``predict`` and the app use it unless asked otherwise.

A reference starting with ``/``, ``./``, ``../`` or ``~`` is always a local path; otherwise it is a local path
when it exists next to the YAML file, else a Hub id when it looks like one (``org/name``). Local models and
adapters are checked when the file is read, so a typo fails before any weights load.

`read_model_set` turns a file into a `ModelSetSpec`; `chexreason.loading.load_model_set` loads one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from chexreason.prompts import get_prompt

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_SETS = Path(__file__).resolve().parent / "model_sets"
# Where a bare model-set name is looked up, in order: the set trained here, then the bundled examples.
SEARCH_PATTERNS: tuple[Path, ...] = (
    REPO_ROOT / "checkpoints" / "{name}" / "model_set.yaml",
    BUNDLED_SETS / "{name}.yaml",
)

MIN_CHECKPOINTS, MAX_CHECKPOINTS = 2, 4
DEFAULT_PROMPT = "free_reasoning"
# A checkpoint's budget when its set records none: the paper GRPO recipe's max_completion_length.
DEFAULT_MAX_NEW_TOKENS = 1024
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # also a valid PEFT adapter name (no dots)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelSetError(ValueError):
    """A model-set file that cannot be used; the message names the file, the checkpoint and the fix."""


@dataclass(frozen=True)
class CheckpointSpec:
    """One checkpoint of a model set, with its references resolved.

    Attributes:
        name: unique key (results, column titles, PEFT adapter name).
        model: absolute local path or Hub id of the base model.
        prompt: key of the prompt it is asked with (`chexreason.prompts.get_prompt`).
        title: display name, if different from `name`.
        revision: Hub revision of `model`.
        adapter: absolute local path or Hub id of a LoRA adapter, or None for the bare base.
        adapter_revision: Hub revision of `adapter`.
        max_new_tokens: its generation budget (the max_completion_length it was trained to answer within).
    """

    name: str
    model: str
    prompt: str = DEFAULT_PROMPT
    title: str | None = None
    revision: str | None = None
    adapter: str | None = None
    adapter_revision: str | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS

    @property
    def display_title(self) -> str:
        return self.title or self.name

    @property
    def base_key(self) -> tuple[str, str | None]:
        """Checkpoints with equal keys share one copy of the base weights."""
        return self.model, self.revision

    @property
    def adapter_key(self) -> tuple[str, str | None] | None:
        return None if self.adapter is None else (self.adapter, self.adapter_revision)


@dataclass(frozen=True)
class ModelSetSpec:
    """An ordered set of 2–4 checkpoints to compare, as read from a model-set YAML file."""

    name: str
    checkpoints: tuple[CheckpointSpec, ...]
    description: str = ""
    source: Path | None = None
    min_pixels: int | None = None  # Qwen2.5-VL: the image pixel bounds its checkpoints were trained with
    max_pixels: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checkpoints)

    @property
    def largest_budget(self) -> int:
        """The largest generation budget of the set's checkpoints (the app's token-limit slider starts there)."""
        return max(c.max_new_tokens for c in self.checkpoints)

    def checkpoint(self, name: str) -> CheckpointSpec:
        for checkpoint in self.checkpoints:
            if checkpoint.name == name:
                return checkpoint
        raise KeyError(f"model set {self.name!r} has no checkpoint {name!r}; it has {list(self.names)}")


def is_hub_id(reference: str) -> bool:
    """Whether a model or adapter reference is a Hub id (local references are resolved to absolute paths).

    >>> is_hub_id("google/medgemma-4b-it"), is_hub_id("/models/base")
    (True, False)
    """
    return not Path(reference).is_absolute() and _HUB_ID.fullmatch(reference) is not None


def resolve_model_set_path(path_or_name: str | Path) -> Path:
    """The YAML file a model-set argument means: a path as given, or a bare name looked up in `SEARCH_PATTERNS`."""
    text = str(path_or_name)
    looks_like_path = isinstance(path_or_name, Path) or "/" in text or "\\" in text or text.endswith((".yaml", ".yml"))
    if looks_like_path or Path(text).is_file():
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelSetError(f"model-set file {path} not found")
        return path
    if not _NAME.fullmatch(text):
        raise ModelSetError(f"{text!r} is neither a model-set file nor a model-set name")
    candidates = [Path(str(pattern).format(name=text)) for pattern in SEARCH_PATTERNS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise ModelSetError(f"no model set named {text!r}: looked for {looked}")


def read_model_set(path_or_name: str | Path, check_paths: bool = True) -> ModelSetSpec:
    """Read and validate a model-set YAML file (a path, or a bare name such as ``tiny``).

    Args:
        path_or_name: the file, or a name resolved through `SEARCH_PATTERNS`.
        check_paths: check that local models and adapters exist (turn off to validate an example whose
            local outputs have not been trained yet).

    Raises:
        ModelSetError: the file is missing or malformed, or a checkpoint is invalid.
    """
    path = resolve_model_set_path(path_or_name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ModelSetError(f"{path}: could not parse the model set ({err})") from err
    return _spec_from_mapping(data, path, check_paths)


class _CheckpointEntry(BaseModel):
    """One entry of ``checkpoints:`` as written (strict: ``revision: 123456`` is a number, not a string)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=rf"^(?:{_NAME.pattern})$")  # pydantic searches: anchor the full match
    model: str
    title: str | None = None
    revision: str | None = None
    adapter: str | None = None
    adapter_revision: str | None = None
    prompt: str = DEFAULT_PROMPT
    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1)

    @field_validator("model", "adapter")
    @classmethod
    def _not_blank(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"'{info.field_name}' must be a non-empty string, got {value!r}")
        return value if value is None else value.strip()

    @field_validator("prompt")
    @classmethod
    def _known_prompt(cls, value: str) -> str:
        get_prompt(value)  # its ValueError names the known prompts
        return value


class _ModelSetFile(BaseModel):
    """A model-set file as written."""

    model_config = ConfigDict(extra="forbid", strict=True)

    checkpoints: list[_CheckpointEntry] = Field(min_length=MIN_CHECKPOINTS, max_length=MAX_CHECKPOINTS)
    name: str | None = None
    description: str | None = None
    min_pixels: int | None = None  # Qwen2.5-VL: the image pixel bounds its checkpoints were trained with
    max_pixels: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> _ModelSetFile:
        names = [c.name for c in self.checkpoints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate checkpoint names {duplicates}; names must be unique")
        bounds = (self.min_pixels, self.max_pixels)
        if bounds != (None, None) and not (None not in bounds and 0 < bounds[0] <= bounds[1]):  # type: ignore[operator]
            raise ValueError("min_pixels and max_pixels go together, as positive integers with min <= max")
        return self


def _spec_from_mapping(data: Any, path: Path, check_paths: bool) -> ModelSetSpec:
    try:
        written = _ModelSetFile.model_validate(data)
    except ValidationError as err:
        raise ModelSetError(f"{path}: " + "; ".join(_messages(err, data))) from None
    where = str(path)
    checkpoints = tuple(_checkpoint_spec(entry, path.parent, where, check_paths) for entry in written.checkpoints)
    name = (
        written.name if written.name is not None else path.stem if path.name != "model_set.yaml" else path.parent.name
    )
    return ModelSetSpec(
        name, checkpoints, written.description or "", path.resolve(), written.min_pixels, written.max_pixels
    )


def _messages(error: ValidationError, data: Any) -> list[str]:
    """pydantic's errors in this file's terms: which checkpoint, which key, and what to write instead."""
    messages: list[str] = []
    unknown: dict[str, list[str]] = {}  # where -> unknown keys, reported together
    for item in error.errors():
        loc, kind = item["loc"], item["type"]
        where, key = "", loc[0] if loc else None
        if loc[:1] == ("checkpoints",) and len(loc) > 1 and isinstance(loc[1], int):
            entry = data["checkpoints"][loc[1]]
            name = entry.get("name") if isinstance(entry, Mapping) else None
            valid_name = isinstance(name, str) and _NAME.fullmatch(name)
            where = f"checkpoint {name!r}: " if valid_name else f"checkpoint #{loc[1] + 1} "
            key = loc[2] if len(loc) > 2 else None
        if kind == "extra_forbidden":
            unknown.setdefault(where, []).append(str(loc[-1]))
        elif not loc and kind == "model_type":
            messages.append("a model set must be a mapping with a 'checkpoints' list")
        elif key == "checkpoints" and kind in ("missing", "list_type"):
            messages.append(f"'checkpoints' must be a list of {MIN_CHECKPOINTS} to {MAX_CHECKPOINTS} entries")
        elif key == "checkpoints" and kind in ("too_short", "too_long"):
            found = len(item["input"])
            messages.append(f"a model set compares {MIN_CHECKPOINTS} to {MAX_CHECKPOINTS} checkpoints, found {found}")
        elif where and key is None:
            messages.append(f"{where.rstrip(': ')} must be a mapping with 'name' and 'model'")
        elif key == "name" and where:
            name = entry.get("name") if isinstance(entry, Mapping) else None
            messages.append(f"{where}needs a 'name' of letters, digits, '_' or '-' (got {name!r})")
        elif key == "model" and kind == "missing":
            messages.append(f"{where}missing 'model' (a local path or a Hub id)")
        elif key in ("model", "adapter") and kind == "string_type":
            messages.append(f"{where}'{key}' must be a non-empty string, got {item['input']!r}")
        elif kind == "string_type":
            hint = " (quote commit hashes)" if key in ("revision", "adapter_revision") else ""
            messages.append(f"{where}'{key}' must be a string{hint}, got {item['input']!r}")
        elif key in ("min_pixels", "max_pixels"):
            messages.append("min_pixels and max_pixels go together, as positive integers with min <= max")
        elif key == "max_new_tokens":
            messages.append(f"{where}'max_new_tokens' must be a whole number of at least 1, got {item['input']!r}")
        elif kind == "value_error":
            messages.append(f"{where}{item['ctx']['error']}")
        else:
            messages.append(f"{where}{'.'.join(map(str, loc))}: {item['msg']}")
    for where, keys in unknown.items():
        allowed = sorted((_CheckpointEntry if where else _ModelSetFile).model_fields)
        messages.append(f"{where}unknown key(s) {sorted(keys)}; allowed: {allowed}")  # typos such as `adaptor:`
    return list(dict.fromkeys(messages))


def pixel_bounds(min_pixels: int | None, max_pixels: int | None) -> dict:
    """`AutoProcessor.from_pretrained` keywords that bound Qwen2.5-VL's image size (and so its visual tokens).

    Given as the image processor's ``size``: passed as min_pixels/max_pixels, transformers 5.23 re-sends them with
    every processor call, where they are deprecated.

    >>> pixel_bounds(256 * 28 * 28, 512 * 28 * 28)
    {'size': {'shortest_edge': 200704, 'longest_edge': 401408}}
    >>> pixel_bounds(None, None)
    {}
    """
    if min_pixels is None:
        return {}
    return {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}


def _checkpoint_spec(entry: _CheckpointEntry, base_dir: Path, where: str, check_paths: bool) -> CheckpointSpec:
    """A validated entry with its local references resolved next to the file (and checked, with `check_paths`)."""
    where = f"{where}: checkpoint {entry.name!r}"
    model = _resolve_reference(entry.model, base_dir, "model", where, check_paths)
    adapter = (
        None if entry.adapter is None else _resolve_reference(entry.adapter, base_dir, "adapter", where, check_paths)
    )
    if check_paths:
        _check_local_files(model, adapter, where)
        _check_readable_weights([model] if adapter is None else [model, adapter], where)
    return CheckpointSpec(
        name=entry.name,
        model=model,
        prompt=entry.prompt,
        title=entry.title,
        revision=entry.revision,
        adapter=adapter,
        adapter_revision=entry.adapter_revision,
        max_new_tokens=entry.max_new_tokens,
    )


def _resolve_reference(value: str, base_dir: Path, key: str, where: str, check_paths: bool) -> str:
    """An absolute local path, or the Hub id as written."""
    path = Path(value).expanduser()
    local = path if path.is_absolute() else base_dir / path
    explicitly_local = value.startswith(("/", "./", "../", "~"))
    if local.exists() or explicitly_local or not _HUB_ID.fullmatch(value):
        if check_paths and not local.exists():
            raise ModelSetError(f"{where}: {key} {value!r} not found at {local.resolve()}")
        return str(local.resolve())
    return value


def _check_local_files(model: str, adapter: str | None, where: str) -> None:
    if not is_hub_id(model) and not (Path(model) / "config.json").is_file():
        raise ModelSetError(f"{where}: model folder {model} has no config.json (save it with save_pretrained)")
    if adapter is None or is_hub_id(adapter):
        return
    for needed in ("adapter_config.json", ADAPTER_WEIGHTS):
        if not (Path(adapter) / needed).is_file():
            raise ModelSetError(f"{where}: adapter folder {adapter} has no {needed} (save it with save_pretrained)")


def _check_readable_weights(folders: Iterable[str], where: str) -> None:
    for folder in folders:
        if not is_hub_id(folder) and (problem := unreadable_weights(Path(folder))):
            raise ModelSetError(f"{where}: {problem} (a copy or download cut short? copy or export it again)")


def unreadable_weights(folder: Path) -> str | None:
    """Which ``*.safetensors`` file in `folder` cannot be opened (its header cut short or garbled), or None.
    Reads each file's header only, so a set of any size is checked at start in moments."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except Exception:  # safetensors raises its own error types for a truncated or garbled file
            return f"{path} is cut short or unreadable"
    return None
