"""Model sets: 2–4 checkpoints (e.g. base, SFT, GRPO) loaded once and asked about the same images side by side.

A model set is a small YAML file naming the checkpoints in display order::

    name: tiny
    description: Tiny Gemma3 trained by the tiny recipe on synthetic phantoms (not diagnostic).
    checkpoints:
      - name: base            # unique ([A-Za-z0-9][A-Za-z0-9_-]*): column title and results key
        title: Base           # optional display name (default: name)
        model: base           # local path (relative to this file's folder) or a Hub id
        revision: null        # Hub revision of `model`: pin it for Hub ids
        prompt: free_reasoning   # key for chexreason.prompts.get_prompt (default: free_reasoning)
      - name: sft
        model: base
        adapter: sft          # optional LoRA adapter: local dir (relative path) or Hub id
        adapter_revision: null
        prompt: free_reasoning

A reference starting with ``/``, ``./``, ``../`` or ``~`` is always a local path; otherwise it is a local path
when it exists next to the YAML file, else a Hub id when it looks like one (``org/name``). Local models and
adapters are checked when the file is read, so a typo fails before any weights load.

Why the loading is shaped the way it is:

- Checkpoints with the same base model (same reference and revision) share ONE copy of its weights: the
  base is wrapped once in a `peft.PeftModel` holding every adapter, and the bare base is PEFT's special
  adapter name ``"__base__"``. Base, SFT and GRPO of a 4 B model then cost one model's memory, not three.
- One ``generate`` call serves every image × checkpoint row of a base at once with PEFT's mixed-adapter
  batches (``adapter_names=[...]``, one per row). ``set_adapter`` is never called: it switches the whole
  model and would race under concurrent requests. PEFT's mixed-batch hooks are not re-entrant either (two
  concurrent ``generate`` calls on one PeftModel overwrite each other's ``adapter_names``), so each base
  model has a lock and its calls run one at a time.
- Sampling draws each row from its own seeded ``torch.Generator`` (seed, checkpoint, image index), so a
  seeded row gives the same completion alone or in any batch, and concurrent requests cannot disturb each
  other's random state.
- Completions are decoded keeping the reasoning tags (``<think>``, ``<solution>``, ``<answer>``): the tiny
  tokenizer registers them as special tokens, which ``skip_special_tokens=True`` would silently drop and
  every output would then be unparseable.

Everything loads with ``use_safetensors=True`` and ``trust_remote_code=False``; adapters must ship
``adapter_model.safetensors`` (PEFT would otherwise fall back to a pickled ``adapter_model.bin``).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import secrets
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from tqdm.auto import tqdm
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation import BaseStreamer
from transformers.generation.logits_process import TopPLogitsWarper

from chexreason.images import load_image
from chexreason.prompts import PromptVariant, get_prompt
from chexreason.tiny_model import TAGS

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_SETS = Path(__file__).resolve().parent / "model_sets"
# Where a bare model-set name is looked up, in order: the set trained here, then the bundled examples.
SEARCH_PATTERNS: tuple[Path, ...] = (
    REPO_ROOT / "checkpoints" / "{name}" / "model_set.yaml",
    BUNDLED_SETS / "{name}.yaml",
)

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
MIN_CHECKPOINTS, MAX_CHECKPOINTS = 2, 4
DEFAULT_PROMPT = "free_reasoning"
DEFAULT_MAX_NEW_TOKENS = 512
ADAPTER_WEIGHTS = "adapter_model.safetensors"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # also a valid PEFT adapter name (no dots)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SET_KEYS = {"name", "description", "checkpoints", "min_pixels", "max_pixels"}
_CHECKPOINT_KEYS = {"name", "title", "model", "revision", "adapter", "adapter_revision", "prompt"}


class ModelSetError(ValueError):
    """A model-set file that cannot be used; the message names the file, the checkpoint and the fix."""


# ------------------------------------------------------------------------------------------------ the spec


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
    """

    name: str
    model: str
    prompt: str = DEFAULT_PROMPT
    title: str | None = None
    revision: str | None = None
    adapter: str | None = None
    adapter_revision: str | None = None

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


def _spec_from_mapping(data: Any, path: Path, check_paths: bool) -> ModelSetSpec:
    where = str(path)
    if not isinstance(data, Mapping):
        raise ModelSetError(f"{where}: a model set must be a mapping with a 'checkpoints' list")
    _reject_unknown_keys(data, _SET_KEYS, where)
    entries = data.get("checkpoints")
    if not isinstance(entries, list):
        raise ModelSetError(f"{where}: 'checkpoints' must be a list of {MIN_CHECKPOINTS} to {MAX_CHECKPOINTS} entries")
    if not MIN_CHECKPOINTS <= len(entries) <= MAX_CHECKPOINTS:
        raise ModelSetError(
            f"{where}: a model set compares {MIN_CHECKPOINTS} to {MAX_CHECKPOINTS} checkpoints, found {len(entries)}"
        )
    checkpoints = tuple(
        _checkpoint_from_mapping(entry, i, path.parent, where, check_paths) for i, entry in enumerate(entries)
    )
    names = [c.name for c in checkpoints]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelSetError(f"{where}: duplicate checkpoint names {duplicates}; names must be unique")
    name = data.get("name", path.stem if path.name != "model_set.yaml" else path.parent.name)
    description = data.get("description") or ""
    if not isinstance(name, str) or not isinstance(description, str):
        raise ModelSetError(f"{where}: 'name' and 'description' must be strings")
    bounds = (data.get("min_pixels"), data.get("max_pixels"))
    if bounds != (None, None) and not (
        all(isinstance(b, int) and b > 0 for b in bounds) and bounds[0] <= bounds[1]  # type: ignore[operator]
    ):
        raise ModelSetError(f"{where}: min_pixels and max_pixels go together, as positive integers with min <= max")
    return ModelSetSpec(name, checkpoints, description, path.resolve(), *bounds)


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


def _checkpoint_from_mapping(entry: Any, index: int, base_dir: Path, where: str, check_paths: bool) -> CheckpointSpec:
    if not isinstance(entry, Mapping):
        raise ModelSetError(f"{where}: checkpoint #{index + 1} must be a mapping with 'name' and 'model'")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ModelSetError(
            f"{where}: checkpoint #{index + 1} needs a 'name' of letters, digits, '_' or '-' (got {name!r})"
        )
    where = f"{where}: checkpoint {name!r}"
    _reject_unknown_keys(entry, _CHECKPOINT_KEYS, where)
    strings = {key: entry.get(key) for key in ("title", "revision", "adapter_revision")}
    for key, value in strings.items():
        if value is not None and not isinstance(value, str):
            raise ModelSetError(f"{where}: '{key}' must be a string (quote commit hashes), got {value!r}")
    prompt = entry.get("prompt", DEFAULT_PROMPT)
    try:
        get_prompt(prompt)
    except (ValueError, TypeError) as err:
        raise ModelSetError(f"{where}: {err}") from None
    if "model" not in entry:
        raise ModelSetError(f"{where}: missing 'model' (a local path or a Hub id)")
    model = _resolve_reference(entry["model"], base_dir, "model", where, check_paths)
    adapter = entry.get("adapter")
    if adapter is not None:
        adapter = _resolve_reference(adapter, base_dir, "adapter", where, check_paths)
    if check_paths:
        _check_local_files(model, adapter, where)
    return CheckpointSpec(
        name=name,
        model=model,
        prompt=prompt,
        title=strings["title"],
        revision=strings["revision"],
        adapter=adapter,
        adapter_revision=strings["adapter_revision"],
    )


def _reject_unknown_keys(data: Mapping, known: set[str], where: str) -> None:
    """Typos such as ``adaptor:`` would otherwise silently serve the bare base model."""
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ModelSetError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")


def _resolve_reference(value: Any, base_dir: Path, key: str, where: str, check_paths: bool) -> str:
    """An absolute local path, or the Hub id as written."""
    if not isinstance(value, str) or not value.strip():
        raise ModelSetError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    value = value.strip()
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


# ---------------------------------------------------------------------------------------------- decoding


class CompletionDecoder:
    """Turns generated token ids into completion text, keeping the reasoning protocol's tags.

    The ids are cut at the first stop token (EOS, end of turn: everything after is padding), the
    tokenizer's special tokens are dropped *except* the tags in `chexreason.tiny_model.TAGS`, and the rest is
    decoded without ``skip_special_tokens`` (which would drop the tags where they are special tokens).
    """

    def __init__(self, tokenizer: Any, stop_token_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(int(i) for i in stop_token_ids)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special = {int(i) for i, token in added.items() if getattr(token, "special", False)}
        special |= set(tokenizer.all_special_ids)
        keep = {i for i in special if tokenizer.convert_ids_to_tokens(i) in TAGS}
        self.drop_ids = frozenset(special - keep)

    def cut(self, ids: Iterable[int]) -> list[int]:
        """The ids before the first stop token."""
        kept = []
        for token in ids:
            if int(token) in self.stop_ids:
                break
            kept.append(int(token))
        return kept

    def decode(self, ids: Iterable[int], partial: bool = False) -> str:
        """Decode one row of generated ids; `partial` hides a character still waiting for its next bytes."""
        text = self.tokenizer.decode([i for i in self.cut(ids) if i not in self.drop_ids], skip_special_tokens=False)
        return text.rstrip("\ufffd") if partial else text


class BatchTextStreamer(BaseStreamer):
    """A streamer for batched ``generate``: keeps every row's decoded text and posts it after each step.

    transformers' `TextIteratorStreamer` takes batch size 1. ``generate`` calls `put` first with the prompt
    ids (batch × prompt length), which are skipped, then once per step with one new id per row. A row that
    has emitted a stop token keeps its text while ``generate`` pads it. After each step the streamer puts
    ``(tag, texts)`` on `output` when one is given.
    """

    def __init__(self, decoder: CompletionDecoder, output: queue.Queue | None = None, tag: Any = None) -> None:
        self.decoder = decoder
        self.output = output
        self.tag = tag
        self.token_ids: list[list[int]] = []
        self.finished: list[bool] = []
        self.texts: list[str] = []
        self.ended = False
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            rows = value.shape[0] if value.dim() > 1 else 1
            self.token_ids = [[] for _ in range(rows)]
            self.finished = [False] * rows
            self.texts = [""] * rows
            return
        for row, new_ids in enumerate(value.reshape(len(self.token_ids), -1).tolist()):
            if self.finished[row]:
                continue
            for token in new_ids:
                if token in self.decoder.stop_ids:
                    self.finished[row] = True
                    break
                self.token_ids[row].append(token)
            self.texts[row] = self.decoder.decode(self.token_ids[row], partial=not self.finished[row])
        if self.output is not None:
            self.output.put((self.tag, tuple(self.texts)))

    def end(self) -> None:
        self.texts = [self.decoder.decode(ids) for ids in self.token_ids]
        self.ended = True


# -------------------------------------------------------------------------------------- generation helpers


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode: greedy by default; sampling settings apply only with ``do_sample=True``."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


def row_seed(seed: int, checkpoint: str, image_index: int) -> int:
    """The sampling seed of one row: fixed by (seed, checkpoint, image), whatever else shares its batch.

    >>> row_seed(0, "sft", 3) == row_seed(0, "sft", 3) != row_seed(0, "grpo", 3)
    True
    """
    digest = hashlib.sha256(f"{seed}\0{checkpoint}\0{image_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class _RowSampler(LogitsProcessor):
    """Samples each row with its own generator, then leaves only the drawn token for greedy selection.

    Used with ``do_sample=False`` so transformers' own sampling (the global RNG, shared by every thread
    and every row of the batch) never runs.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.seeds = list(seeds)
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1 else None
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        probs = torch.softmax(scores, dim=-1)
        drawn = [torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(self.generators)]
        chosen = torch.cat(drawn)[:, None]
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)


class _StopWhenSet(StoppingCriteria):
    """Ends generation early when a stream's consumer has gone away or another worker failed."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class _Row:
    """One prompt of a batch: an image asked by a checkpoint."""

    image_index: int
    checkpoint: str
    prompt: PromptVariant
    seed: int


@dataclass(frozen=True)
class _WorkerDone:
    error: BaseException | None = None


def _as_rgb(image: Image.Image | str | Path | bytes) -> Image.Image:
    """Processors expect RGB; anything else is loaded as a chest X-ray first (PNG/JPEG/DICOM)."""
    if not isinstance(image, Image.Image):
        image = load_image(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# ---------------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class ParameterCount:
    """Parameters behind one checkpoint: its (possibly shared) base model and its own adapter."""

    base: int
    adapter: int

    @property
    def total(self) -> int:
        return self.base + self.adapter


@dataclass
class LoadedBase:
    """One base model in memory and the checkpoints served from it.

    Attributes:
        model: the base model, wrapped in a `peft.PeftModel` holding every adapter when any checkpoint has one.
        processor: its processor (tokenizer padding on the left).
        adapter_names: checkpoint name -> PEFT adapter name (``"__base__"`` for the bare base).
        decoder: turns its generated ids into text.
        lock: serialises ``generate`` calls on this model (PEFT's mixed-batch hooks are not re-entrant).
    """

    reference: str
    revision: str | None
    model: Any
    processor: Any
    adapter_names: dict[str, str]
    decoder: CompletionDecoder
    lock: threading.Lock = field(default_factory=threading.Lock)
    prompt_texts: dict[str, str] = field(default_factory=dict)

    @property
    def is_peft(self) -> bool:
        return any(name != BASE_ADAPTER for name in self.adapter_names.values())


def _resolve_device_dtype(
    device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError("dtype must be a torch dtype name such as 'float32' or 'bfloat16'")
    if dtype is None:
        on_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if on_gpu else torch.float32
    return device, dtype


def _local_adapter_dir(checkpoint: CheckpointSpec) -> str:
    """A local folder holding the adapter's safetensors: Hub adapters are fetched without their pickles."""
    assert checkpoint.adapter is not None
    if not is_hub_id(checkpoint.adapter):
        return checkpoint.adapter
    from huggingface_hub import snapshot_download

    if checkpoint.adapter_revision is None:
        logger.warning("adapter %s of %r has no pinned adapter_revision", checkpoint.adapter, checkpoint.name)
    folder = snapshot_download(
        checkpoint.adapter,
        revision=checkpoint.adapter_revision,
        allow_patterns=["adapter_config.json", ADAPTER_WEIGHTS],
    )
    if not (Path(folder) / ADAPTER_WEIGHTS).is_file():
        raise ModelSetError(f"adapter {checkpoint.adapter} has no {ADAPTER_WEIGHTS}; only safetensors are loaded")
    return folder


def _check_mixable(folder: str, checkpoint: CheckpointSpec) -> None:
    """PEFT serves several adapters in one batch only for plain LoRA (no DoRA)."""
    from peft import PeftConfig, PeftType

    config = PeftConfig.from_pretrained(folder)
    if config.peft_type != PeftType.LORA or getattr(config, "use_dora", False):
        raise ModelSetError(
            f"checkpoint {checkpoint.name!r}: adapter {checkpoint.adapter} is {config.peft_type}"
            f"{' with DoRA' if getattr(config, 'use_dora', False) else ''}; only plain LoRA adapters can share a batch"
        )


def _load_base(
    checkpoints: Sequence[CheckpointSpec], device: torch.device, dtype: torch.dtype, pixels: dict
) -> LoadedBase:
    """Load one base model once, with every adapter its checkpoints name, and its processor."""
    first = checkpoints[0]
    if is_hub_id(first.model) and first.revision is None:
        logger.warning("model %s has no pinned revision: results may change when the Hub repository does", first.model)
    common = {"revision": first.revision, "trust_remote_code": False}
    logger.info("loading %s (%s) for %s", first.model, dtype, ", ".join(c.name for c in checkpoints))
    model = AutoModelForImageTextToText.from_pretrained(first.model, dtype=dtype, use_safetensors=True, **common)
    processor = AutoProcessor.from_pretrained(first.model, **common, **pixels)
    processor.tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    adapter_names: dict[str, str] = {}
    loaded: dict[tuple[str, str | None], str] = {}
    for checkpoint in checkpoints:
        key = checkpoint.adapter_key
        if key is None:
            adapter_names[checkpoint.name] = BASE_ADAPTER
            continue
        if key not in loaded:
            folder = _local_adapter_dir(checkpoint)
            _check_mixable(folder, checkpoint)
            model = _add_adapter(model, folder, checkpoint.name)
            loaded[key] = checkpoint.name
        adapter_names[checkpoint.name] = loaded[key]
    model.to(device)
    model.eval()  # PEFT refuses adapter_names in training mode; no dropout at inference
    decoder = CompletionDecoder(processor.tokenizer, stop_token_ids(model, processor.tokenizer))
    return LoadedBase(first.model, first.revision, model, processor, adapter_names, decoder)


def _add_adapter(model: Any, folder: str, adapter_name: str) -> Any:
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.load_adapter(folder, adapter_name=adapter_name, is_trainable=False)
        return model
    return PeftModel.from_pretrained(model, folder, adapter_name=adapter_name, is_trainable=False)


def load_model_set(
    spec: ModelSetSpec | str | Path,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> ModelSet:
    """Load every checkpoint of a model set once: one model per distinct base, adapters on top.

    Args:
        spec: a `ModelSetSpec`, a model-set file, or a bare name (see `read_model_set`).
        device: where to run (default: CUDA when available, else CPU).
        dtype: weights' dtype (default: bfloat16 on a GPU that supports it, else float32).
    """
    if not isinstance(spec, ModelSetSpec):
        spec = read_model_set(spec)
    device, dtype = _resolve_device_dtype(device, dtype)
    by_base: dict[tuple[str, str | None], list[CheckpointSpec]] = {}
    for checkpoint in spec.checkpoints:
        by_base.setdefault(checkpoint.base_key, []).append(checkpoint)
    references = [model for model, _ in by_base]
    for model in sorted({m for m in references if references.count(m) > 1}):
        logger.warning("%s is named with different revisions, so it is loaded more than once", model)
    pixels = pixel_bounds(spec.min_pixels, spec.max_pixels)
    bases = [_load_base(checkpoints, device, dtype, pixels) for checkpoints in by_base.values()]
    return ModelSet(spec, bases, device)


# ---------------------------------------------------------------------------------------------- the set


class ModelSet:
    """The loaded checkpoints of a model set; ask them about images with `generate`, `generate_batch`, `stream`.

    Safe to share between threads: calls on one base model run one at a time, calls on different bases
    may overlap.
    """

    def __init__(self, spec: ModelSetSpec, bases: Sequence[LoadedBase], device: torch.device) -> None:
        self.spec = spec
        self.bases = tuple(bases)
        self.device = device
        self._base_of = {name: base for base in self.bases for name in base.adapter_names}

    @property
    def checkpoints(self) -> tuple[str, ...]:
        """Checkpoint names in display order."""
        return self.spec.names

    def model_of(self, checkpoint: str) -> Any:
        """The model object serving a checkpoint (shared by the checkpoints of one base)."""
        return self._base(checkpoint).model

    def processor_of(self, checkpoint: str) -> Any:
        return self._base(checkpoint).processor

    def decoder_of(self, checkpoint: str) -> CompletionDecoder:
        return self._base(checkpoint).decoder

    def prompt_for(self, checkpoint: str, prompt: str | None = None) -> PromptVariant:
        """The prompt a checkpoint is asked with: `prompt` when given, else its own."""
        return get_prompt(prompt or self.spec.checkpoint(checkpoint).prompt)

    def parameter_counts(self) -> dict[str, ParameterCount]:
        """Base and adapter parameters of each checkpoint (base parameters are shared within a base)."""
        counts = {}
        for base in self.bases:
            adapter_sizes = _adapter_sizes(base)
            shared = _distinct_parameters(base.model) - sum(adapter_sizes.values())
            for checkpoint, adapter in base.adapter_names.items():
                counts[checkpoint] = ParameterCount(shared, adapter_sizes.get(adapter, 0))
        return {name: counts[name] for name in self.checkpoints}

    def loaded_parameters(self) -> int:
        """Parameters held in memory, each tensor counted once."""
        return sum(_distinct_parameters(base.model) for base in self.bases)

    def generate(
        self,
        images: Sequence[Image.Image | str | Path | bytes],
        checkpoint_names: Sequence[str] | None = None,
        prompt: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        do_sample: bool = False,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int | None = None,
    ) -> list[list[str]]:
        """Ask every requested checkpoint about every image; returns ``[image][checkpoint]`` completions.

        All rows of a base model (images × its checkpoints) go through one ``generate`` call.

        Args:
            images: PIL images (any mode), or files / bytes loaded with `chexreason.images.load_image`.
            checkpoint_names: which checkpoints, in the order of the returned lists (default: all).
            prompt: a prompt key asked of every checkpoint instead of each one's own.
            max_new_tokens, do_sample, temperature, top_p: decoding (greedy by default).
            seed: sampling seed; each row is seeded from (seed, checkpoint, image index).
        """
        settings = GenerationSettings(max_new_tokens, do_sample, temperature, top_p, seed)
        return self._generate([_as_rgb(image) for image in images], self._names(checkpoint_names), prompt, settings)

    def generate_batch(
        self,
        images: Iterable[Image.Image | str | Path | bytes],
        checkpoint_names: Sequence[str] | None = None,
        prompt: str | None = None,
        batch_size: int = 8,
        progress: bool = True,
        total: int | None = None,
        **decoding: Any,
    ) -> list[list[str]]:
        """`generate` over many images, `batch_size` images per call, with a progress bar (for evaluation).

        `images` may be a lazy iterable (pass `total` for the bar); `decoding` takes `generate`'s
        decoding arguments. Seeds follow each image's index in the whole run, so the batch size does not
        change which random draws a row gets.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        settings = GenerationSettings(**decoding)
        names = self._names(checkpoint_names)
        if total is None and isinstance(images, Sequence):
            total = len(images)
        results: list[list[str]] = []
        chunk: list[Image.Image] = []
        with tqdm(total=total, unit="image", desc="generating", disable=not progress) as bar:
            for image in images:
                chunk.append(_as_rgb(image))
                if len(chunk) == batch_size:
                    results += self._generate(chunk, names, prompt, settings, offset=len(results))
                    bar.update(len(chunk))
                    chunk = []
            if chunk:
                results += self._generate(chunk, names, prompt, settings, offset=len(results))
                bar.update(len(chunk))
        return results

    def stream(
        self,
        image: Image.Image | str | Path | bytes,
        checkpoint_names: Sequence[str] | None = None,
        prompt: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        do_sample: bool = False,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int | None = None,
    ) -> Iterator[tuple[str, ...]]:
        """Yield the partial completion of every requested checkpoint, as generation proceeds.

        Each base model generates its rows in one batched call in a background thread (bases run side by
        side). Updates that arrive while the consumer is busy are merged, so each yield is the latest state;
        the last yield equals what `generate` returns. An error in a generation thread is raised here;
        closing the generator early stops generation; threads are always joined.
        """
        names = self._names(checkpoint_names)
        settings = GenerationSettings(max_new_tokens, do_sample, temperature, top_p, seed)
        rgb = _as_rgb(image)
        updates: queue.Queue = queue.Queue()
        stop = threading.Event()
        threads = []
        for base, rows in self._plan(names, prompt, 1, settings):
            streamer = BatchTextStreamer(base.decoder, updates, tag=tuple(row.checkpoint for row in rows))
            args = (base, rows, [rgb], settings, streamer, stop, updates)
            threads.append(
                threading.Thread(target=self._stream_worker, args=args, daemon=True, name="chexreason-stream")
            )
        texts = dict.fromkeys(names, "")
        last: tuple[str, ...] | None = None
        try:
            for thread in threads:
                thread.start()
            running = len(threads)
            while running:
                for item in _drain(updates):
                    if isinstance(item, _WorkerDone):
                        running -= 1
                        if item.error is not None:
                            raise item.error
                    else:
                        texts.update(zip(*item, strict=True))
                snapshot = tuple(texts[name] for name in names)
                if snapshot != last:
                    last = snapshot
                    yield snapshot
        finally:
            stop.set()
            for thread in threads:
                if thread.ident is not None:  # started
                    thread.join()

    # ------------------------------------------------------------------------------------------ internals

    def _base(self, checkpoint: str) -> LoadedBase:
        try:
            return self._base_of[checkpoint]
        except KeyError:
            raise KeyError(f"unknown checkpoint {checkpoint!r}; this model set has {list(self.checkpoints)}") from None

    def _names(self, checkpoint_names: Sequence[str] | None) -> list[str]:
        if checkpoint_names is None:
            return list(self.checkpoints)
        if isinstance(checkpoint_names, str):
            raise TypeError("checkpoint_names must be a sequence of names, not a string")
        names = list(checkpoint_names)
        for name in names:
            self._base(name)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"checkpoint_names must be non-empty and without repeats, got {names}")
        return names

    def _plan(
        self, names: Sequence[str], prompt: str | None, n_images: int, settings: GenerationSettings, offset: int = 0
    ) -> list[tuple[LoadedBase, list[_Row]]]:
        """The rows of each base model, image-major, bases in order of their first requested checkpoint."""
        plan: dict[int, tuple[LoadedBase, list[_Row]]] = {}
        for i in range(n_images):
            for name in names:
                base = self._base(name)
                seed = settings.seed if settings.seed is not None else secrets.randbits(62)
                row = _Row(i, name, self.prompt_for(name, prompt), row_seed(seed, name, offset + i))
                plan.setdefault(id(base), (base, []))[1].append(row)
        return list(plan.values())

    def _generate(
        self,
        images: Sequence[Image.Image],
        names: Sequence[str],
        prompt: str | None,
        settings: GenerationSettings,
        offset: int = 0,
    ) -> list[list[str]]:
        results: list[list[str | None]] = [[None] * len(names) for _ in images]
        position = {name: j for j, name in enumerate(names)}
        for base, rows in self._plan(names, prompt, len(images), settings, offset):
            for row, text in zip(rows, _run(base, rows, images, settings), strict=True):
                results[row.image_index][position[row.checkpoint]] = text
        return results  # type: ignore[return-value]

    @staticmethod
    def _stream_worker(
        base: LoadedBase,
        rows: list[_Row],
        images: list[Image.Image],
        settings: GenerationSettings,
        streamer: BatchTextStreamer,
        stop: threading.Event,
        updates: queue.Queue,
    ) -> None:
        """Runs in a thread: generate, post the final texts, then always post a done marker."""
        error = None
        try:
            texts = _run(base, rows, images, settings, streamer=streamer, stop=stop)
            updates.put((streamer.tag, tuple(texts)))
        except Exception as err:  # handed to the consumer, which raises it
            error = err
            stop.set()
        finally:  # even on a BaseException, so the consumer never waits forever
            updates.put(_WorkerDone(error))


def _drain(updates: queue.Queue) -> list[Any]:
    """Wait for one update, then take whatever else has arrived, so a slow consumer sees the latest state."""
    items = [updates.get()]
    while True:
        try:
            items.append(updates.get_nowait())
        except queue.Empty:
            return items


def _prompt_text(base: LoadedBase, prompt: PromptVariant) -> str:
    if prompt.key not in base.prompt_texts:
        base.prompt_texts[prompt.key] = base.processor.apply_chat_template(
            prompt.messages(), add_generation_prompt=True, tokenize=False
        )
    return base.prompt_texts[prompt.key]


def _run(
    base: LoadedBase,
    rows: Sequence[_Row],
    images: Sequence[Image.Image],
    settings: GenerationSettings,
    streamer: BatchTextStreamer | None = None,
    stop: threading.Event | None = None,
) -> list[str]:
    """One ``generate`` call over the rows of one base model; returns each row's completion."""
    model = base.model
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,  # sampling, when asked, is done by _RowSampler with per-row generators
        eos_token_id=sorted(base.decoder.stop_ids),
        pad_token_id=base.processor.tokenizer.pad_token_id,
    )
    processors = LogitsProcessorList()
    if settings.do_sample:
        processors.append(_RowSampler([row.seed for row in rows], settings.temperature, settings.top_p))
    kwargs: dict[str, Any] = {"generation_config": config, "logits_processor": processors, "streamer": streamer}
    if stop is not None:
        kwargs["stopping_criteria"] = StoppingCriteriaList([_StopWhenSet(stop)])
    if base.is_peft:
        kwargs["adapter_names"] = [base.adapter_names[row.checkpoint] for row in rows]
    with base.lock:  # the processor's padding state and PEFT's hooks are per model, not per call
        inputs = base.processor(
            text=[_prompt_text(base, row.prompt) for row in rows],
            images=[[images[row.image_index]] for row in rows],
            padding=True,
            add_special_tokens=False,  # the chat template already starts with BOS, as in TRL's training
            return_tensors="pt",
        ).to(model.device, dtype=model.dtype)  # floating-point inputs (pixels) only
        with torch.inference_mode():
            sequences = model.generate(**inputs, **kwargs)
    new_ids = sequences[:, inputs["input_ids"].shape[1] :].tolist()
    return [base.decoder.decode(ids) for ids in new_ids]


def _distinct_parameters(model: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if parameter.data_ptr() not in seen:
            seen.add(parameter.data_ptr())
            total += parameter.numel()
    return total


def _adapter_sizes(base: LoadedBase) -> dict[str, int]:
    if not base.is_peft:
        return {}
    from peft import get_peft_model_state_dict

    names = {name for name in base.adapter_names.values() if name != BASE_ADAPTER}
    return {
        name: sum(t.numel() for t in get_peft_model_state_dict(base.model, adapter_name=name).values())
        for name in names
    }
