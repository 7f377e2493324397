"""The Compare tab's work: read an upload, ask every checkpoint about it, stream the answers into their columns.

`Comparer.run` is the ``compare`` endpoint. It is a generator: Gradio sends each yield to the page (and to
`gradio_client` users) as it comes. Outputs, in order: preview, notice, then the reasoning text and the
labels of each checkpoint, the agreement table, a JSON summary, and the session's `LoadedUpload` (a `gr.State`,
which API users do not see).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from chexreason.app import rendering
from chexreason.app.examples import Example, example_for
from chexreason.decode_pool import DecodePool
from chexreason.images import ImageError, ImageInfo
from chexreason.modeling import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    GenerationSettings,
    ModelSet,
)
from chexreason.parsing import parse_completion
from chexreason.prompts import ALL_PROMPTS

logger = logging.getLogger(__name__)

OWN_PROMPT = "own"  # the prompt selector's value for "each checkpoint's own prompt"
MAX_UPLOAD_BYTES = 100 * 2**20  # also the server's max_file_size; a chest film is rarely over 30 MB
MAX_NEW_TOKENS_LIMIT = 1024  # the most a visitor may ask for (a set recording a larger budget raises it)
GENERATING = '<div class="legend">generating…</div>'
STREAM_INTERVAL = 0.05  # seconds between streamed updates: 20 a second reads as live text

try:  # On a ZeroGPU Space, generation must run inside a function decorated with spaces.GPU; elsewhere a no-op.
    import spaces

    _gpu = spaces.GPU(duration=120)
except ImportError:

    def _gpu(function):
        return function


@_gpu
def _stream(
    model_set: ModelSet, image: Any, prompt: str | None, settings: GenerationSettings
) -> Iterator[tuple[str, ...]]:
    yield from model_set.stream(image, prompt=prompt, settings=settings)


def _upload_folder() -> Path:
    return Path(gr.utils.get_upload_folder()).resolve()


def _number(name: str, value: Any) -> float:
    """A finite number sent for setting `name`, or a message saying what it must be."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise gr.Error(f"{name} must be a finite number.")
    return float(value)


def _read_upload(path: str | None) -> bytes:
    if not path:
        raise gr.Error("Upload a chest X-ray first (PNG, JPEG or DICOM), or click one of the examples.")
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise gr.Error(f"The file is {size / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB.")
        return file.read_bytes()
    except OSError as err:
        raise gr.Error("The uploaded file could not be read; please upload it again.") from err


def _forget_upload(path: str | None) -> None:
    """Delete the request's upload now (Gradio's own cache clean-up runs on a timer), never a file of ours."""
    if not path:
        return
    file = Path(path).resolve()
    if file.is_relative_to(_upload_folder()):
        file.unlink(missing_ok=True)


_pool: DecodePool | None = None
_pool_lock = threading.Lock()


def decode_pool() -> DecodePool:
    """The server's image decoders: worker processes with a memory and a time limit (`chexreason.decode_pool`),
    so a hostile upload can neither exhaust nor stall the server. Started once, by the first `Comparer`."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = DecodePool()
        return _pool


def _load(data: bytes, name: str | None):
    try:
        return decode_pool().load(data, name)
    except ImageError as err:
        raise gr.Error(str(err)) from None


@dataclass(frozen=True)
class LoadedUpload:
    """An upload as the models see it: the decoded 8-bit image (none of the file's metadata), facts about it, and
    the bundled example it is, if any. A session keeps its last one in memory (a `gr.State` with a time to live)
    once the file is deleted, so the same upload can be compared again with other settings."""

    path: str | None
    image: Image.Image
    info: ImageInfo
    example: Example | None


def load_upload(path: str | None, held: LoadedUpload | None = None) -> LoadedUpload:
    """The upload at `path`: the session's held copy when it is that upload, else read and decoded from disk.

    A file that cannot be used is deleted at once and reported as a `gr.Error`.
    """
    if held is not None and path == held.path:
        return held
    try:
        data = _read_upload(path)
        image, info = _load(data, Path(path).name if path else None)  # the name: a preamble-less .dcm is DICOM
    except gr.Error:
        _forget_upload(path)
        raise
    return LoadedUpload(path, image, info, example_for(data))


class Comparer:
    """Serves the ``compare`` endpoint for one loaded model set."""

    def __init__(self, model_set: ModelSet) -> None:
        self.model_set = model_set
        self.names = model_set.checkpoints
        self.titles = {name: model_set.spec.checkpoint(name).display_title for name in self.names}
        decode_pool()  # the decoders start with the app, not on the first visitor's upload
        # The token-limit slider starts at the set's budget (what evaluation used); left there, every checkpoint
        # answers within its own recorded budget, exactly as it was evaluated.
        self.default_budget = model_set.spec.largest_budget
        self.token_limit = max(MAX_NEW_TOKENS_LIMIT, self.default_budget)

    @property
    def default_prompt(self) -> str:
        """The prompt the checkpoints were trained with when they share one, else each one's own."""
        prompts = {self.model_set.spec.checkpoint(name).prompt for name in self.names}
        return prompts.pop() if len(prompts) == 1 else OWN_PROMPT

    def prompt_choices(self) -> list[tuple[str, str]]:
        own = [("Each checkpoint's own prompt", OWN_PROMPT)] if self.default_prompt == OWN_PROMPT else []
        return own + [(f"{variant.name} ({key})", key) for key, variant in ALL_PROMPTS.items()]

    def check(self, upload: str | None, *settings: Any) -> LoadedUpload:
        """The page's first step: refuse a bad file or setting before `run`, so the error is one message
        rather than an error badge on every output. A good upload goes to the session's state, so `run` does
        not decode it again (its file is kept for `run`, which deletes it)."""
        *settings, held = settings
        self._decoding(*settings)
        return load_upload(upload, held)

    def run(
        self,
        upload: str | None,
        prompt: str = OWN_PROMPT,
        sampling: bool = False,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        max_new_tokens: int | None = None,
        held: LoadedUpload | None = None,
    ) -> Iterator[list[Any]]:
        """The ``compare`` endpoint: `compare` on the upload, whose file is deleted once read (not a bundled
        example's: Gradio's cache holds one copy per content, shared with the gallery); the last output is the
        session's `LoadedUpload` (a `gr.State`, invisible to API users). ``max_new_tokens`` None or the set's largest
        budget (the slider's starting value) means each checkpoint within its own recorded budget, as evaluated."""
        loaded = load_upload(upload, held)
        if loaded.example is None:
            _forget_upload(upload)
        outputs_held: Any = loaded
        for outputs in self.compare(loaded, prompt, sampling, temperature, top_p, max_new_tokens):
            yield [*outputs, outputs_held]
            outputs_held = gr.skip()

    def compare(
        self,
        loaded: LoadedUpload,
        prompt: str = OWN_PROMPT,
        sampling: bool = False,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        max_new_tokens: int | None = None,
    ) -> Iterator[list[Any]]:
        """The comparison for one loaded image; see the module docstring for what each yield holds."""
        decoding = self._decoding(prompt, sampling, temperature, top_p, max_new_tokens)
        image, info, example = loaded.image, loaded.info, loaded.example
        truth = example.truth if example else None
        unscored = example.unscored if example else ()
        n = len(self.names)
        preview = rendering.preview_html(image, info)
        notice = rendering.notice_markdown(info, example.caption if example else None)
        yield [
            preview,
            notice,
            *(value for _ in range(n) for value in ("", GENERATING)),
            "",
            None,
        ]
        started = time.perf_counter()
        sent = None  # when texts were last sent
        texts: tuple[str, ...] = ("",) * n
        try:
            for texts in _stream(self.model_set, image.convert("RGB"), **decoding):
                # Each update costs the server ~10 ms whatever its size: send the first text at once, then at most
                # one update per STREAM_INTERVAL, and only the texts (not the preview again).
                now = time.perf_counter()
                if not any(texts) or (sent is not None and now - sent < STREAM_INTERVAL):
                    continue
                sent = now
                yield [gr.skip(), gr.skip(), *(v for text in texts for v in (text, gr.skip())), gr.skip(), gr.skip()]
        except Exception as err:  # never a traceback page: say what failed, keep serving
            logger.exception("generation failed")
            raise gr.Error(f"The models failed on this image ({type(err).__name__}). Please try again.") from None
        logger.info("compared a %s image in %.2f s", info.format, time.perf_counter() - started)
        parsed = {
            name: parse_completion(text, self.model_set.prompt_for(name, decoding["prompt"]).protocol)
            for name, text in zip(self.names, texts, strict=True)
        }
        summary = {
            "checkpoints": {
                name: {"text": text, "labels": list(p.labels), "parseable": p.parseable, "error": p.error}
                for (name, p), text in zip(parsed.items(), texts, strict=True)
            },
            "ground_truth": list(truth) if truth is not None else None,
            "example": example.id if example else None,
            "image": asdict(info),
        }
        yield [  # the whole state once more, so the last yield alone (gradio_client's result) says everything
            preview,
            notice,
            *(value for name, text in zip(self.names, texts, strict=True)
              for value in (text, rendering.labels_html(parsed[name], truth, unscored))),
            rendering.agreement_html(self.titles, parsed, truth),
            summary,
        ]  # fmt: skip

    def _decoding(self, prompt: Any, sampling: Any, temperature: Any, top_p: Any, max_new_tokens: Any) -> dict:
        """Check the settings a `gradio_client` user may send unchecked by the page's widgets: every malformed value
        is a message naming the setting (never echoing it back at length), not a raw exception."""
        if prompt is not None and not isinstance(prompt, str):
            raise gr.Error("The prompt must be a prompt key (text), e.g. free_reasoning.")
        if prompt not in ALL_PROMPTS and prompt not in (OWN_PROMPT, "", None):
            shown = prompt if len(prompt) <= 40 else prompt[:40] + "…"
            raise gr.Error(f"Unknown prompt {shown!r}; choose one of {', '.join(ALL_PROMPTS)} or {OWN_PROMPT!r}.")
        if not isinstance(sampling, bool):
            raise gr.Error("sampling must be true or false.")
        temperature, top_p = _number("temperature", temperature), _number("top_p", top_p)
        if max_new_tokens is not None:
            max_new_tokens = _number("max_new_tokens", max_new_tokens)
            if max_new_tokens != int(max_new_tokens) or not 1 <= max_new_tokens <= self.token_limit:
                raise gr.Error(f"max_new_tokens must be a whole number between 1 and {self.token_limit}.")
        if sampling and not (0 < temperature <= 2 and 0 < top_p <= 1):
            raise gr.Error("Sampling needs 0 < temperature ≤ 2 and 0 < top-p ≤ 1.")
        # None, or the slider's starting value: each checkpoint's own budget (the model set's record).
        budget = None if max_new_tokens is None or int(max_new_tokens) == self.default_budget else int(max_new_tokens)
        settings = GenerationSettings(budget, sampling, temperature, top_p)
        return {"prompt": None if prompt in (OWN_PROMPT, "", None) else prompt, "settings": settings}
