"""Loading a model set: one model per distinct base, every adapter of its checkpoints on top, once.

Checkpoints with the same base model (same reference and revision) share ONE copy of its weights: the base is
wrapped once in a `peft.PeftModel` holding every adapter, and the bare base is PEFT's special adapter name
``"__base__"``. Base, SFT and GRPO of a 4 B model then cost one model's memory, not three. Everything loads with
``use_safetensors=True`` and ``trust_remote_code=False``; adapters must ship ``adapter_model.safetensors`` (PEFT
would otherwise fall back to a pickled ``adapter_model.bin``).

**Chat template.** An adapter folder written by ``train.sft`` / ``train.grpo`` carries the chat template it was
trained with (``chat_template.jinja``, saved with its processor: for the paper recipes TRL's training variant of
the model's template, the one with ``{% generation %}`` markers). Each checkpoint's prompts are rendered with
its own adapter's template (`chexreason.model_set.LoadedBase.templates`), the bare base's and those of adapters
that carry none with the processor's own — so a base row is never prompted with a template it was not made with,
and adapters trained with different templates can share one base.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from chexreason.decoding import CompletionDecoder, stop_token_ids
from chexreason.model_set import BASE_ADAPTER, LoadedBase, ModelSet
from chexreason.model_set_spec import (
    ADAPTER_WEIGHTS,
    CheckpointSpec,
    ModelSetError,
    ModelSetSpec,
    is_hub_id,
    pixel_bounds,
    read_model_set,
)

logger = logging.getLogger(__name__)

CHAT_TEMPLATE = "chat_template.jinja"  # what `processor.save_pretrained` writes beside an adapter (transformers 5)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name (``float32``, ``bfloat16``, ``half``, ...), for loading and prediction.

    >>> parse_dtype("bfloat16")
    torch.bfloat16
    """
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype name such as float32 or bfloat16, not {name!r}")
    return dtype


def _resolve_device_dtype(
    device: str | torch.device | None, dtype: str | torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        on_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return device, torch.bfloat16 if on_gpu else torch.float32
    return device, parse_dtype(dtype)


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
        allow_patterns=["adapter_config.json", ADAPTER_WEIGHTS, CHAT_TEMPLATE],
    )
    if not (Path(folder) / ADAPTER_WEIGHTS).is_file():
        raise ModelSetError(f"adapter {checkpoint.adapter} has no {ADAPTER_WEIGHTS}; only safetensors are loaded")
    return folder


def adapter_chat_template(folder: str | Path) -> str | None:
    """The chat template saved beside an adapter (its training processor's), or None when it carries none."""
    path = Path(folder) / CHAT_TEMPLATE
    return path.read_text(encoding="utf-8") if path.is_file() else None


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
    templates: dict[str, str] = {}  # checkpoint name -> the chat template its adapter was trained with
    trained: dict[tuple[str, str | None], str | None] = {}
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
            trained[key] = adapter_chat_template(folder)
        adapter_names[checkpoint.name] = loaded[key]
        if trained[key] is not None:
            templates[checkpoint.name] = trained[key]
    model.to(device)
    model.eval()  # PEFT refuses adapter_names in training mode; no dropout at inference
    decoder = CompletionDecoder(processor.tokenizer, stop_token_ids(model, processor.tokenizer))
    return LoadedBase(first.model, first.revision, model, processor, adapter_names, decoder, templates=templates)


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
