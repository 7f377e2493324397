"""A loaded model set: its checkpoints asked about the same images side by side, batched or streamed.

Why generation is shaped the way it is (loading: `chexreason.loading`):

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

import queue
import secrets
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from chexreason.decoding import (
    BatchTextStreamer,
    Completion,
    CompletionDecoder,
    GenerationSettings,
    RowBudget,
    RowSampler,
    StopWhenSet,
    row_seed,
    stop_token_ids,
)
from chexreason.images import load_image
from chexreason.model_set_spec import CheckpointSpec, ModelSetSpec
from chexreason.prompts import PromptVariant, get_prompt

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


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
        templates: checkpoint name -> the chat template its adapter was trained with (saved beside it), which its
            prompts are rendered with; a checkpoint not named (the bare base) uses the processor's own.
    """

    reference: str
    revision: str | None
    model: Any
    processor: Any
    adapter_names: dict[str, str]
    decoder: CompletionDecoder
    lock: threading.Lock = field(default_factory=threading.Lock)
    templates: dict[str, str] = field(default_factory=dict)
    prompt_texts: dict[tuple[str | None, str], str] = field(default_factory=dict)

    @property
    def is_peft(self) -> bool:
        return any(name != BASE_ADAPTER for name in self.adapter_names.values())


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

    @classmethod
    def from_model(
        cls, model: Any, processor: Any, checkpoint: str, prompt: str, adapter: str | None = None
    ) -> ModelSet:
        """A one-checkpoint set around a model already in memory (e.g. a policy while it trains).

        Args:
            model: the model, a `peft.PeftModel` when `adapter` names one of its adapters.
            processor: its processor; its tokenizer must pad on the left.
            checkpoint: the checkpoint's name in results.
            prompt: the prompt key it is asked with.
            adapter: the PEFT adapter to answer with, per row (whatever adapter is active), or None for the base.
        """
        spec = ModelSetSpec(
            name=checkpoint,
            checkpoints=(
                CheckpointSpec(name=checkpoint, model=str(model.config.name_or_path), prompt=prompt, adapter=adapter),
            ),
        )
        decoder = CompletionDecoder(processor.tokenizer, stop_token_ids(model, processor.tokenizer))
        base = LoadedBase(
            spec.checkpoints[0].model, None, model, processor, {checkpoint: adapter or BASE_ADAPTER}, decoder
        )
        return cls(spec, [base], model.device)

    @property
    def checkpoints(self) -> tuple[str, ...]:
        """Checkpoint names in display order."""
        return self.spec.names

    def model_of(self, checkpoint: str) -> Any:
        """The model object serving a checkpoint (shared by the checkpoints of one base)."""
        return self._base(checkpoint).model

    def processor_of(self, checkpoint: str) -> Any:
        return self._base(checkpoint).processor

    def input_resolution(self) -> tuple[int, int, int] | None:
        """(width, height, PIL resampling filter) every base's image processor resizes its images to, when they all
        resize to one fixed size (Gemma 3's and MedGemma's do); None otherwise. An image already at this size goes
        through the processor unchanged, so it can stand in for the original (the app holds only that)."""
        found = set()
        for base in self.bases:
            image_processor = getattr(base.processor, "image_processor", None)
            size = getattr(image_processor, "size", None)
            size = dict(size) if isinstance(size, dict) else {k: getattr(size, k, None) for k in ("height", "width")}
            height, width = size.get("height"), size.get("width")
            if not getattr(image_processor, "do_resize", False) or not height or not width:
                return None
            found.add((int(width), int(height), int(getattr(image_processor, "resample", 2))))
        return found.pop() if len(found) == 1 else None

    def decoder_of(self, checkpoint: str) -> CompletionDecoder:
        return self._base(checkpoint).decoder

    def prompt_for(self, checkpoint: str, prompt: str | None = None) -> PromptVariant:
        """The prompt a checkpoint is asked with: `prompt` when given, else its own."""
        return get_prompt(prompt or self.spec.checkpoint(checkpoint).prompt)

    def budget_of(self, checkpoint: str, settings: GenerationSettings | None = None) -> int:
        """The token budget a checkpoint answers within: the settings' when they name one, else the set's record."""
        settings = _settings(settings)
        return settings.max_new_tokens or self.spec.checkpoint(checkpoint).max_new_tokens

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
        *,
        settings: GenerationSettings | None = None,
    ) -> list[list[str]]:
        """Ask every requested checkpoint about every image; returns ``[image][checkpoint]`` completions.

        All rows of a base model (images × its checkpoints) go through one ``generate`` call.

        Args:
            images: PIL images (any mode), or files / bytes loaded with `chexreason.images.load_image`.
            checkpoint_names: which checkpoints, in the order of the returned lists (default: all).
            prompt: a prompt key asked of every checkpoint instead of each one's own.
            settings: how to decode (default: greedy, `GenerationSettings`, each checkpoint within its own
                token budget); sampling rows are seeded from (seed, checkpoint, image index).
        """
        settings = _settings(settings)
        rows = self._generate([_as_rgb(image) for image in images], self._names(checkpoint_names), prompt, settings)
        return _texts(rows)

    def generate_batch(
        self, images: Iterable[Image.Image | str | Path | bytes], *args: Any, **kwargs: Any
    ) -> list[list[str]]:
        """`generate` over many images, `batch_size` images per call, with a progress bar (for evaluation).

        The texts of `complete_batch`, which takes the same arguments.
        """
        return _texts(self.complete_batch(images, *args, **kwargs))

    def complete_batch(
        self,
        images: Iterable[Image.Image | str | Path | bytes],
        checkpoint_names: Sequence[str] | None = None,
        prompt: str | None = None,
        batch_size: int = 8,
        progress: bool = True,
        total: int | None = None,
        *,
        settings: GenerationSettings | None = None,
        start: int = 0,
    ) -> list[list[Completion]]:
        """Like `generate_batch`, with each answer's token count and whether it was cut off (`Completion`).

        `images` may be a lazy iterable (pass `total` for the bar). Seeds follow each image's index in the whole
        run (`start`: the index of the first image, for a run done in parts), so the batch size does not change
        which random draws a row gets.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        settings = _settings(settings)
        names = self._names(checkpoint_names)
        if total is None and isinstance(images, Sequence):
            total = len(images)
        results: list[list[Completion]] = []
        chunk: list[Image.Image] = []
        with tqdm(total=total, unit="image", desc="generating", disable=not progress) as bar:
            for image in images:
                chunk.append(_as_rgb(image))
                if len(chunk) == batch_size:
                    results += self._generate(chunk, names, prompt, settings, offset=start + len(results))
                    bar.update(len(chunk))
                    chunk = []
            if chunk:
                results += self._generate(chunk, names, prompt, settings, offset=start + len(results))
                bar.update(len(chunk))
        return results

    def stream(
        self,
        image: Image.Image | str | Path | bytes,
        checkpoint_names: Sequence[str] | None = None,
        prompt: str | None = None,
        *,
        settings: GenerationSettings | None = None,
    ) -> Iterator[tuple[str, ...]]:
        """Yield the partial completion of every requested checkpoint, as generation proceeds.

        Each base model generates its rows in one batched call in a background thread (bases run side by
        side). Updates that arrive while the consumer is busy are merged, so each yield is the latest state;
        the last yield equals what `generate` returns. An error in a generation thread is raised here;
        closing the generator early stops generation; threads are always joined.
        """
        names = self._names(checkpoint_names)
        settings = _settings(settings)
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
                budget = self.budget_of(name, settings)
                row = _Row(i, name, self.prompt_for(name, prompt), row_seed(seed, name, offset + i), budget)
                plan.setdefault(id(base), (base, []))[1].append(row)
        return list(plan.values())

    def _generate(
        self,
        images: Sequence[Image.Image],
        names: Sequence[str],
        prompt: str | None,
        settings: GenerationSettings,
        offset: int = 0,
    ) -> list[list[Completion]]:
        results: list[list[Completion | None]] = [[None] * len(names) for _ in images]
        position = {name: j for j, name in enumerate(names)}
        for base, rows in self._plan(names, prompt, len(images), settings, offset):
            for row, completion in zip(rows, _run(base, rows, images, settings), strict=True):
                results[row.image_index][position[row.checkpoint]] = completion
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
            completions = _run(base, rows, images, settings, streamer=streamer, stop=stop)
            updates.put((streamer.tag, tuple(c.text for c in completions)))
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


def _prompt_text(base: LoadedBase, checkpoint: str, prompt: PromptVariant) -> str:
    """The prompt as `checkpoint` was trained to read it: rendered with its own chat template (cached)."""
    template = base.templates.get(checkpoint)
    key = (template, prompt.key)
    if key not in base.prompt_texts:
        base.prompt_texts[key] = base.processor.apply_chat_template(
            prompt.messages(), chat_template=template, add_generation_prompt=True, tokenize=False
        )
    return base.prompt_texts[key]


def _run(
    base: LoadedBase,
    rows: Sequence[_Row],
    images: Sequence[Image.Image],
    settings: GenerationSettings,
    streamer: BatchTextStreamer | None = None,
    stop: threading.Event | None = None,
) -> list[Completion]:
    """One ``generate`` call over the rows of one base model; returns each row's completion, each within its
    row's budget."""
    model = base.model
    budgets = [row.max_new_tokens for row in rows]
    config = GenerationConfig(
        max_new_tokens=max(budgets),
        do_sample=False,  # sampling, when asked, is done by RowSampler with per-row generators
        eos_token_id=sorted(base.decoder.stop_ids),
        pad_token_id=base.processor.tokenizer.pad_token_id,
    )
    processors = LogitsProcessorList()
    if settings.do_sample:
        processors.append(RowSampler([row.seed for row in rows], settings.temperature, settings.top_p))
    kwargs: dict[str, Any] = {"generation_config": config, "logits_processor": processors, "streamer": streamer}
    criteria = StoppingCriteriaList([StopWhenSet(stop)] if stop is not None else [])
    if base.is_peft:
        kwargs["adapter_names"] = [base.adapter_names[row.checkpoint] for row in rows]
    with base.lock:  # the processor's padding state and PEFT's hooks are per model, not per call
        inputs = base.processor(
            text=[_prompt_text(base, row.checkpoint, row.prompt) for row in rows],
            images=[[images[row.image_index]] for row in rows],
            padding=True,
            add_special_tokens=False,  # the chat template already starts with BOS, as in TRL's training
            return_tensors="pt",
        ).to(model.device, dtype=model.dtype)  # floating-point inputs (pixels) only
        prompt_length = inputs["input_ids"].shape[1]
        if min(budgets) < max(budgets):  # rows with a smaller budget end there; the call runs to the largest
            criteria.append(RowBudget(budgets, prompt_length))
        with torch.inference_mode():
            sequences = model.generate(**inputs, **kwargs, stopping_criteria=criteria)
    new_ids = sequences[:, prompt_length:].tolist()
    return [base.decoder.complete(ids, budget) for ids, budget in zip(new_ids, budgets, strict=True)]


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


@dataclass(frozen=True)
class _Row:
    """One prompt of a batch: an image asked by a checkpoint."""

    image_index: int
    checkpoint: str
    prompt: PromptVariant
    seed: int
    max_new_tokens: int


@dataclass(frozen=True)
class _WorkerDone:
    error: BaseException | None = None


def _as_rgb(image: Image.Image | str | Path | bytes) -> Image.Image:
    """Processors expect RGB; anything else is loaded as a chest X-ray first (PNG/JPEG/DICOM)."""
    if not isinstance(image, Image.Image):
        image = load_image(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _settings(settings: GenerationSettings | None) -> GenerationSettings:
    """The call's settings (default: greedy); anything else than a `GenerationSettings` is a mistake said early."""
    if settings is None:
        return GenerationSettings()
    if not isinstance(settings, GenerationSettings):
        raise TypeError(f"settings must be a GenerationSettings, not {type(settings).__name__}")
    return settings


def _texts(rows: list[list[Completion]]) -> list[list[str]]:
    return [[completion.text for completion in row] for row in rows]
