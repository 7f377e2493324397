"""The Compare tab's work: read an upload, ask every checkpoint about it, stream the answers into their columns.

`Comparer.run` is the ``compare`` endpoint. It is a generator: Gradio sends each yield to the page (and to
`gradio_client` users) as it comes. Outputs, in order: preview, notice, then the reasoning text and the
labels of each checkpoint, the agreement table and a JSON summary. The decoded upload is held for the session
(`chexreason.app.sessions`), its file deleted once read (`chexreason.app.uploads`).
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

from chexreason.app import rendering, uploads
from chexreason.app.examples import Example, example_for
from chexreason.app.sessions import HeldImages, held_seconds
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
HELD_SIDE = 1024  # the longest side a session's image keeps when the models have no one input size
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


def _number(name: str, value: Any) -> float:
    """A finite number sent for setting `name`, or a message saying what it must be."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise refusal(f"{name} must be a finite number.")
    return float(value)


def refusal(message: str) -> gr.Error:
    """An expected refusal: the visitor sees `message`; the log gets it as one line, never a traceback (and no
    request value at length: messages quote at most 40 characters of one)."""
    logger.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


def _read_upload(path: Any) -> bytes:
    """The bytes of the upload at `path`: one this server stored (`chexreason.app.uploads`) or a gallery example."""
    if not path:
        raise refusal("Upload a chest X-ray first (PNG, JPEG or DICOM), or click one of the examples.")
    if not isinstance(path, str):
        raise refusal("Send one file (the upload's path as text).")
    if not (uploads.ledger().on_disk(path) or uploads.is_example_copy(path)):
        if uploads.ledger().issued(path):
            raise refusal(
                "That upload is no longer on the server (files are deleted once read, and the image your session "
                f"keeps after {held_seconds() / 60:g} minutes); please upload it again."
            )
        raise refusal("The file input must name a file uploaded to this server; upload it again.")
    file = Path(path)
    try:
        size = file.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise refusal(f"The file is {size / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB.")
        return file.read_bytes()
    except OSError:
        raise refusal("The uploaded file could not be read; please upload it again.") from None


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


@dataclass(frozen=True)
class LoadedUpload:
    """An upload as the models see it: the decoded 8-bit image at the models' input resolution (none of the file's
    metadata, never the original's pixels), facts about the file, and the bundled example it is, if any. A session
    holds its last one (`HeldImages`) once the file is deleted, so it can be compared again with other settings."""

    path: str | None
    image: Image.Image
    info: ImageInfo
    example: Example | None


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) or None


def _notice(loaded: LoadedUpload) -> str:
    return rendering.notice_markdown(loaded.info, loaded.example.caption if loaded.example else None)


@dataclass(frozen=True)
class RefusedUpload:
    """An upload that was refused, and why: the session's answer when the same path is sent again."""

    path: str
    message: str


class Comparer:
    """Serves the ``compare`` endpoint for one loaded model set."""

    def __init__(self, model_set: ModelSet) -> None:
        self.model_set = model_set
        self.names = model_set.checkpoints
        self.titles = {name: model_set.spec.checkpoint(name).display_title for name in self.names}
        decode_pool()  # the decoders start with the app, not on the first visitor's upload
        self.resolution = model_set.input_resolution()
        self.held: HeldImages[LoadedUpload] = HeldImages()
        self.refused: HeldImages[RefusedUpload] = HeldImages()  # apart: a refusal never pushes out an image
        self._decoding_now: dict[str, threading.Event] = {}  # upload path → set when its decode is done
        self._decoding_lock = threading.Lock()
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

    def load(self, path: Any, session: str | None) -> LoadedUpload:
        """The upload at `path`: what the session holds when it is that upload, else read from disk and decoded
        (at the models' input resolution) into the session. Whatever happens, the file is deleted here; a file
        that cannot be used is a `gr.Error` with a message (the session remembers it for the same path)."""
        key = path if isinstance(path, str) else None
        while True:  # the page's upload step may be decoding this very upload: wait for it, then use its outcome
            with self._decoding_lock:
                mine = threading.Event()
                decoding = self._decoding_now.setdefault(key, mine) if key else mine
            if decoding is mine:
                break
            decoding.wait()
            if (outcome := self._held_outcome(path, session)) is not None:
                return outcome
        try:
            if (outcome := self._held_outcome(path, session)) is not None:
                return outcome
            loaded = self._decode(path)
            self.held.put(session, loaded)
            return loaded
        except gr.Error as err:
            if key:
                self.refused.put(session, RefusedUpload(key, str(err)))
            raise
        finally:  # after the session holds the outcome: a request waiting on this path finds it
            if key:
                with self._decoding_lock:
                    del self._decoding_now[key]
            mine.set()

    def _held_outcome(self, path: Any, session: str | None) -> LoadedUpload | None:
        """What the session holds for `path`: its decoded image, or (raised again) the refusal it met."""
        refused = self.refused.get(session)
        if refused is not None and path == refused.path:
            raise refusal(refused.message)
        held = self.held.get(session)
        return held if held is not None and path is not None and path == held.path else None

    def _decode(self, path: Any) -> LoadedUpload:
        try:
            data = _read_upload(path)
        finally:  # read or refused, the upload goes (a gallery example's cached copy is not an upload: it stays)
            for sent in path if isinstance(path, list) else [path]:
                if isinstance(sent, str):
                    uploads.ledger().discard(sent)
        name = Path(path).name  # the name: a preamble-less .dcm is DICOM
        try:
            # A model set without one input size: the image is held at no more than HELD_SIDE pixels a side.
            image, info = decode_pool().load(data, name, self.resolution, None if self.resolution else HELD_SIDE)
        except ImageError as err:
            raise refusal(str(err)) from None
        return LoadedUpload(path, image, info, example_for(data))

    def prepare(self, upload: Any, request: gr.Request | None = None) -> list[Any]:
        """The page's step on an upload: decode it into the session at once (deleting its file) and show its preview.
        A refusal is kept for the Compare button, which shows it: one message per click, not one more per upload."""
        try:
            loaded = self.load(upload, _session(request))
        except gr.Error:
            return [None, None]
        return [rendering.preview_html(loaded.image, loaded.info), _notice(loaded)]

    def forget(self, request: gr.Request | None = None) -> None:
        """Drop what the session holds now: its tab was closed (``demo.unload``) or its upload cleared."""
        self.held.forget(_session(request))
        self.refused.forget(_session(request))

    def check(
        self,
        upload: Any,
        prompt: Any = OWN_PROMPT,
        sampling: Any = False,
        temperature: Any = DEFAULT_TEMPERATURE,
        top_p: Any = DEFAULT_TOP_P,
        max_new_tokens: Any = None,
        request: gr.Request | None = None,
    ) -> list[str]:
        """The ``check`` endpoint, the page's first step on an upload and before each comparison: decode the upload
        into the session (deleting its file) and refuse a bad file or setting as one message, rather than an error
        badge on every output. Returns the preview and the notice."""
        loaded = self.load(upload, _session(request))
        self._decoding(prompt, sampling, temperature, top_p, max_new_tokens)
        return [rendering.preview_html(loaded.image, loaded.info), _notice(loaded)]

    def run(
        self,
        upload: Any,
        prompt: Any = OWN_PROMPT,
        sampling: Any = False,
        temperature: Any = DEFAULT_TEMPERATURE,
        top_p: Any = DEFAULT_TOP_P,
        max_new_tokens: Any = None,
        request: gr.Request | None = None,
    ) -> Iterator[list[Any]]:
        """The ``compare`` endpoint: `compare` on the upload (its file deleted once read, the decoded image held by the
        session). ``max_new_tokens`` None or the set's largest budget (the slider's starting value) means each
        checkpoint within its own recorded budget, as evaluated."""
        loaded = self.load(upload, _session(request))
        yield from self.compare(loaded, prompt, sampling, temperature, top_p, max_new_tokens)

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
        notice = _notice(loaded)
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
            raise refusal("The prompt must be a prompt key (text), e.g. free_reasoning.")
        if prompt not in ALL_PROMPTS and prompt not in (OWN_PROMPT, "", None):
            shown = prompt if len(prompt) <= 40 else prompt[:40] + "…"
            raise refusal(f"Unknown prompt {shown!r}; choose one of {', '.join(ALL_PROMPTS)} or {OWN_PROMPT!r}.")
        if not isinstance(sampling, bool):
            raise refusal("sampling must be true or false.")
        temperature, top_p = _number("temperature", temperature), _number("top_p", top_p)
        if max_new_tokens is not None:
            max_new_tokens = _number("max_new_tokens", max_new_tokens)
            if max_new_tokens != int(max_new_tokens) or not 1 <= max_new_tokens <= self.token_limit:
                raise refusal(f"max_new_tokens must be a whole number between 1 and {self.token_limit}.")
        if sampling and not (0 < temperature <= 2 and 0 < top_p <= 1):
            raise refusal("Sampling needs 0 < temperature ≤ 2 and 0 < top-p ≤ 1.")
        # None, or the slider's starting value: each checkpoint's own budget (the model set's record).
        budget = None if max_new_tokens is None or int(max_new_tokens) == self.default_budget else int(max_new_tokens)
        settings = GenerationSettings(budget, sampling, temperature, top_p)
        return {"prompt": None if prompt in (OWN_PROMPT, "", None) else prompt, "settings": settings}
