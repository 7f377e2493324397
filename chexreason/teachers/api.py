"""A teacher that asks an OpenAI-compatible chat-completions endpoint to write SFT reasoning traces.

The paper wrote its SFT traces with Gemini 2.5, shown the image *and* the ground-truth labels and asked to
reason as if it read the image on its own. `ApiTeacher` does the same against any server that speaks
``POST {base_url}/chat/completions`` (Gemini's OpenAI-compatible endpoint, vLLM, Ollama, …):

- every response goes through `chexreason.parsing.parse_completion`; a trace is accepted when its format
  is clean and its labels are exactly the ground truth, and asked for again (``regenerate_mismatches``)
  when not. A trace whose labels never match is kept but flagged, so the caller can drop it;
- connection errors, timeouts, HTTP 408/429 and 5xx are retried with exponential backoff and jitter
  (``Retry-After`` is honoured, capped); other 4xx fail fast, and errors that concern every case (bad key,
  wrong URL or model, a redirect) or an endpoint that stays down end the run at once instead of
  spending the whole dataset on them;
- results are appended to a JSONL cache as soon as each case is done, so an interrupted run resumes
  where it stopped and no case is paid for twice;
- images under a credentialed-access agreement (MIMIC-CXR, CheXpert) are refused for any endpoint that is
  not this machine's loopback, unless the caller explicitly acknowledges otherwise.

The API key is read from an environment variable at run time, never stored in the config, never logged
and redacted from every error message.
"""

from __future__ import annotations

import base64
import email.utils
import io
import ipaddress
import json
import logging
import math
import os
import random
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
from PIL import Image
from tqdm.auto import tqdm

from chexreason.images import to_grayscale
from chexreason.labels import CHEXPERT_LABELS, in_canonical_order
from chexreason.parsing import OUTSIDE_TEXT, ParsedCompletion, completion_text, parse_completion
from chexreason.prompts import AnswerFormat
from chexreason.teachers.base import TeacherCase

logger = logging.getLogger(__name__)

# Backoff before retry k (0-based): base * 2**k, times a jitter factor in [1, 1.5) so that parallel workers
# hit by the same outage do not retry in lockstep; never more than the cap, which also caps Retry-After.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
# Statuses worth retrying: the server is overloaded, rate-limiting or briefly broken.
_RETRYABLE_STATUSES = frozenset({408, 429})
# Statuses that concern every request of the run (credentials, URL, model name): stop at once.
_FATAL_STATUSES = frozenset({401, 403, 404, 405})
# The most server error text repeated in a message.
_MAX_ERROR_CHARS = 500
# The user-message line the ground truth is given on (the test server reads it back).
FINDINGS_PREFIX = "Findings present: "
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class TeacherError(RuntimeError):
    """A teacher could not do its job; the message says why and what to do.

    Attributes:
        report: the per-case report, when the run finished but some cases failed (`ApiTeacher.write`).
    """

    def __init__(self, message: str, report: TeacherReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def is_local_endpoint(url: str) -> bool:
    """True when the URL's host is this machine's loopback: ``localhost``, 127.0.0.0/8 or ``::1``.

    Decided from the URL text alone, resolving nothing, so that a refusal can never itself reach the
    network. Deliberately strict: ``0.0.0.0`` (the *unspecified* address: a listen address, which some
    systems but not all route to this machine), private addresses such as 10.0.0.5 (another machine, even
    on your own network) and names that merely look local (``foo.localhost``, ``127.0.0.1.nip.io``) are not
    local.

    >>> [is_local_endpoint(u) for u in ("http://localhost:8000/v1", "http://127.1.2.3/v1", "http://[::1]:11434/v1")]
    [True, True, True]
    >>> [is_local_endpoint(u) for u in ("http://0.0.0.0:8000/v1", "http://10.0.0.5/v1", "https://example.com/v1")]
    [False, False, False]
    """
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@dataclass(frozen=True)
class ApiTeacherConfig:
    """Where to send requests and how hard to try.

    Attributes:
        base_url: the API root, e.g. ``http://localhost:8000/v1`` (vLLM), ``http://localhost:11434/v1``
            (Ollama) or ``https://generativelanguage.googleapis.com/v1beta/openai`` (Gemini).
        model: the model name the server expects.
        cache_path: the JSONL cache (created on first use). One file may hold several models and formats.
        api_key_env: the *name* of the environment variable holding the key; None, or a variable that is
            unset, sends no Authorization header (local servers).
        max_concurrency: requests in flight at once.
        max_retries: retries of one request after a connection error, timeout, 408, 429 or 5xx.
        timeout_s: seconds allowed for each HTTP request (connect, write, read).
        temperature: sampling temperature; keep it above 0 if mismatches are to be regenerated.
        max_tokens: the most tokens the teacher may write per trace.
        regenerate_mismatches: extra attempts when a trace is malformed or its labels are not the ground truth.
        max_image_side: images larger than this on either side are downscaled (aspect kept) before sending:
            the served models resize far below chest X-ray resolution anyway, and a full-size PNG can exceed
            request-size limits. None sends the image as is.
        allow_credentialed_remote: acknowledge that credentialed images (MIMIC-CXR, CheXpert) may go to a
            non-local endpoint. Their data use agreements forbid third-party online services; set this only
            for a server under your own control that the agreement covers.
    """

    base_url: str
    model: str
    cache_path: Path | str
    api_key_env: str | None = None
    max_concurrency: int = 4
    max_retries: int = 5
    timeout_s: float = 60.0
    temperature: float = 0.7
    max_tokens: int = 1024
    regenerate_mismatches: int = 1
    max_image_side: int | None = 1024
    allow_credentialed_remote: bool = False

    def __post_init__(self) -> None:
        _check_base_url(self.base_url)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must be a non-empty model name, e.g. 'gemini-2.5-flash'")
        if not isinstance(self.cache_path, (str, Path)) or not str(self.cache_path):
            raise ValueError("cache_path must be the path of a JSONL file")
        object.__setattr__(self, "cache_path", Path(self.cache_path))
        if self.api_key_env is not None and not (
            isinstance(self.api_key_env, str) and _ENV_NAME.fullmatch(self.api_key_env)
        ):
            # Not echoed: a key pasted here by mistake must not end up in a log.
            raise ValueError(
                "api_key_env must be the NAME of an environment variable holding the key (e.g. GEMINI_API_KEY), "
                "not the key itself"
            )
        _check_int("max_concurrency", self.max_concurrency, 1)
        _check_int("max_retries", self.max_retries, 0)
        _check_int("max_tokens", self.max_tokens, 1)
        _check_int("regenerate_mismatches", self.regenerate_mismatches, 0)
        if self.max_image_side is not None:
            _check_int("max_image_side", self.max_image_side, 64)
        _check_number("timeout_s", self.timeout_s, low=0.0, low_inclusive=False)
        _check_number("temperature", self.temperature, low=0.0, high=2.0)
        if not isinstance(self.allow_credentialed_remote, bool):
            raise ValueError("allow_credentialed_remote must be True or False")


def _check_base_url(url: object) -> None:
    """base_url must be a plain http(s) URL: no credentials or query string, which would leak into errors."""
    if not isinstance(url, str):
        raise ValueError(f"base_url must be a string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as error:
        raise ValueError(f"base_url {url!r} is not a valid URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"base_url must be an http:// or https:// URL with a host, e.g. http://localhost:8000/v1; got {url!r}"
        )
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise ValueError(
            "base_url must not carry credentials, a query string or a fragment; put the API key in the "
            "environment variable named by api_key_env"
        )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_number(name: str, value: object, low: float, high: float | None = None, low_inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if low_inclusive else value > low) and (high is None or value <= high)
    if not ok:
        bounds = f"{'>=' if low_inclusive else '>'} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} must be a number {bounds}, got {value!r}")


@dataclass(frozen=True)
class CaseResult:
    """What the teacher produced for one case.

    Attributes:
        id: the case id.
        reasoning: the trace's reasoning (the ``<think>`` text); None when the case failed.
        labels_match: the trace's labels are exactly the ground truth. False for a kept mismatch (the
            reasoning argues for other findings: drop it from SFT data) and for a failure.
        attempts: chat completions received for this case (paid for), retries of failed requests excluded.
        cached: read from the cache, not requested in this run.
        error: why the case failed, or why its last attempt was rejected; None when the trace was accepted.
        response: the raw text of the kept response (what the cache stores), for inspection.
    """

    id: str
    reasoning: str | None
    labels_match: bool
    attempts: int
    cached: bool = False
    error: str | None = None
    response: str | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.reasoning is None


@dataclass(frozen=True)
class TeacherReport:
    """Per-case results of one run, in the order of the cases given, and the counts a caller checks.

    ``requested == cached + generated + failed``; ``mismatched`` counts cached and generated traces alike.
    """

    results: tuple[CaseResult, ...]

    @property
    def requested(self) -> int:
        return len(self.results)

    @property
    def cached(self) -> int:
        return sum(r.cached for r in self.results)

    @property
    def generated(self) -> int:
        return sum(not r.cached and not r.failed for r in self.results)

    @property
    def mismatched(self) -> int:
        return len(self.mismatched_ids)

    @property
    def failed(self) -> int:
        return len(self.failed_ids)

    @property
    def failed_ids(self) -> list[str]:
        return [r.id for r in self.results if r.failed]

    @property
    def mismatched_ids(self) -> list[str]:
        return [r.id for r in self.results if not r.failed and not r.labels_match]

    @property
    def reasonings(self) -> list[str | None]:
        return [r.reasoning for r in self.results]

    def summary(self) -> str:
        return (
            f"{self.requested} cases: {self.cached} cached, {self.generated} generated, "
            f"{self.mismatched} with mismatched labels, {self.failed} failed"
        )


def system_prompt(answer_format: AnswerFormat) -> str:
    """The teacher's instructions for one answer format (the same for every case, so servers can cache it)."""
    if answer_format.trace_style is None:
        raise ValueError(
            f"answer format {answer_format.key!r} has no reasoning: there is nothing for a teacher to write"
        )
    return "\n\n".join(
        (
            "You are an expert chest radiologist writing the reasoning part of a training example for a model "
            "that learns to read chest X-rays.",
            "You are shown a chest X-ray together with its correct CheXpert findings. Write the reasoning a "
            "radiologist would write when reading this image independently: describe the image evidence and "
            "reason from it towards exactly the findings given, no more and no fewer.",
            "Write as if you reached the conclusion yourself from the image. Never mention that the findings "
            "were given to you, and never refer to labels, a reference reading, a ground truth or an answer key.",
            f"Reasoning style: {answer_format.trace_style}",
            "The CheXpert findings are: " + ", ".join(CHEXPERT_LABELS) + ". No Finding means that none of the "
            "others is present.",
            "Output exactly <think>your reasoning</think><solution>Label, Label</solution>: the reasoning, then "
            "the findings given, comma-separated, spelled as given. Write nothing before, between or after the "
            "two blocks.",
        )
    )


def teacher_messages(
    case: TeacherCase, answer_format: AnswerFormat, max_image_side: int | None = 1024
) -> list[dict[str, Any]]:
    """The chat messages for one case: the instructions, then the image and its ground-truth findings."""
    if case.image is None:
        raise ValueError(f"case {case.id!r} has no image: the API teacher must be shown the image")
    lines = [FINDINGS_PREFIX + ", ".join(in_canonical_order(case.labels))]
    if case.view:
        lines.append(f"View: {case.view}")
    lines.append("Write the reasoning and the solution for this image.")
    image_url = "data:image/png;base64," + _png_base64(case.image, max_image_side)
    user = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": "\n".join(lines)}]
    return [{"role": "system", "content": system_prompt(answer_format)}, {"role": "user", "content": user}]


def _png_base64(image: Image.Image, max_side: int | None) -> str:
    """PNG-encode an image (greyscale unless it is RGB) at no more than max_side pixels a side."""
    if image.mode not in ("L", "RGB"):
        image = to_grayscale(image)
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), BACKOFF_MAX_S)


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "[redacted]") if secret else text


def _error_text(response: httpx.Response, secret: str | None) -> str:
    """The server's error text, shortened to one line and with the key redacted (some servers echo it)."""
    text = " ".join(response.text.split())
    if len(text) > _MAX_ERROR_CHARS:
        text = text[:_MAX_ERROR_CHARS] + "…"
    return _redact(text, secret) or "(empty body)"


def _message_text(response: httpx.Response) -> str:
    """``choices[0].message.content`` as text; "" when the body is not a chat completion."""
    try:
        message = response.json()["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""
    if not isinstance(message, Mapping) or message.get("content") is None:
        return ""
    return completion_text(message)


class _CaseFailed(Exception):
    """One case got an HTTP error it cannot get past (a 4xx, or retries exhausted)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.attempts = 0  # chat completions received for the case before it gave up


@dataclass
class _Run:
    """The state one `ApiTeacher.write_all` call shares between its worker threads."""

    client: httpx.Client
    url: str
    secret: str | None
    answer_format: AnswerFormat
    cache_file: IO[str]
    abort_after: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    abort: threading.Event = field(default_factory=threading.Event)
    abort_reason: str = ""
    consecutive_failures: int = 0

    def stop(self, reason: str) -> TeacherError:
        """Make every worker stop before its next request, and return the error to raise."""
        with self.lock:
            if not self.abort.is_set():
                self.abort_reason = reason
                self.abort.set()
            return TeacherError(self.abort_reason)

    def check(self) -> None:
        if self.abort.is_set():
            raise TeacherError(self.abort_reason)

    def note_completion(self) -> None:
        """A chat completion came back: the endpoint works."""
        with self.lock:
            self.consecutive_failures = 0

    def note_failure(self, error: str) -> None:
        """A case failed on an HTTP error; too many in a row with no completion between means a systematic
        problem (endpoint down, a key some server rejects with 400): stop rather than fail every case."""
        with self.lock:
            self.consecutive_failures += 1
            n = self.consecutive_failures
        if n >= self.abort_after:
            raise self.stop(
                f"the endpoint {self.url} kept failing: {n} cases in a row failed with no completion between "
                f"(last: {error}). Completed cases are cached; fix the problem and run again to resume."
            )


CacheKey = tuple[str, str, str]


class ApiTeacher:
    """Writes SFT reasoning with a vision-language model behind an OpenAI-compatible API (see the module doc).

    Args:
        config: the endpoint, model, cache and limits.
        sleep: how to wait between retries (injectable so tests need not wait). The default waits like
            `time.sleep` but wakes as soon as the run is stopped (Ctrl-C, a run-level error), so that
            stopping never hangs on a long backoff.
    """

    def __init__(self, config: ApiTeacherConfig, *, sleep: Callable[[float], None] | None = None) -> None:
        self.config = config
        self.name = f"api:{config.model}"
        self._sleep = sleep
        self._rng = random.Random()

    def write(self, cases: Sequence[TeacherCase], answer_format: AnswerFormat) -> list[str]:
        """Reasoning for every case (mismatched traces included: use `write_all` to tell them apart).

        Raises:
            TeacherError: some cases got no usable trace (their ids are listed; every success is cached and
                the full report is on the error's ``report``), or the run had to stop (see `write_all`).
        """
        report = self.write_all(cases, answer_format)
        if report.failed:
            ids = report.failed_ids
            shown = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
            errors = sorted({r.error for r in report.results if r.failed and r.error})
            raise TeacherError(
                f"{self.name}: no usable trace for {len(ids)} of {report.requested} cases: {shown} "
                f"(errors: {'; '.join(errors[:3])}). Successes are cached; run again to retry the failures.",
                report=report,
            )
        return [r.reasoning or "" for r in report.results]

    def write_all(self, cases: Sequence[TeacherCase], answer_format: AnswerFormat) -> TeacherReport:
        """Write (or read from the cache) a trace for every case; per-case failures are reported, not raised.

        Raises:
            ValueError: the cases or the answer format are unusable (checked before anything is sent).
            TeacherError: credentialed images would go to a non-local endpoint; or the run had to stop
                because of something that concerns every case (rejected key, wrong URL or model, a
                redirect) or because ``max_concurrency + 2`` cases in a row failed on HTTP errors. Completed
                cases are cached either way.
        """
        system_prompt(answer_format)  # fails early for a format without reasoning
        _check_cases(cases)
        cache, corrupt = _read_cache(self.config.cache_path)
        if corrupt:
            logger.warning(
                "%s: skipped %d corrupt or truncated line(s) in %s (an interrupted run leaves one); "
                "those cases are requested again",
                self.name,
                corrupt,
                self.config.cache_path,
            )
        results: dict[str, CaseResult] = {}
        todo: list[TeacherCase] = []
        stale = 0
        for case in cases:
            hit = self._cached(cache, case, answer_format)
            if hit is None:
                stale += self._key(case, answer_format) in cache
                todo.append(case)
            else:
                results[case.id] = hit
        if stale:
            logger.warning(
                "%s: %d cached trace(s) were written for other labels; requesting them again", self.name, stale
            )
        if todo:
            self._check_data_use(todo)
            missing = [case.id for case in todo if case.image is None]
            if missing:
                raise ValueError(f"the API teacher must be shown the image; cases without one: {missing[:20]}")
            results.update(self._generate_all(todo, answer_format))
        report = TeacherReport(tuple(results[case.id] for case in cases))
        logger.info("%s (%s): %s", self.name, answer_format.key, report.summary())
        return report

    def _key(self, case: TeacherCase, answer_format: AnswerFormat) -> CacheKey:
        return (case.id, answer_format.key, self.config.model)

    def _cached(
        self, cache: dict[CacheKey, dict], case: TeacherCase, answer_format: AnswerFormat
    ) -> CaseResult | None:
        """The cached result for a case, unless absent or written for other ground-truth labels."""
        entry = cache.get(self._key(case, answer_format))
        if entry is None or ("labels" in entry and set(entry["labels"]) != set(case.labels)):
            return None
        return CaseResult(
            case.id,
            entry["reasoning"],
            entry["labels_match"],
            entry["attempts"],
            cached=True,
            response=entry.get("response"),
        )

    def _check_data_use(self, cases: Sequence[TeacherCase]) -> None:
        """Refuse to send credentialed images anywhere but this machine, unless explicitly acknowledged."""
        credentialed = [case.id for case in cases if case.credentialed]
        if not credentialed or is_local_endpoint(self.config.base_url):
            return
        host = urlsplit(self.config.base_url).hostname
        if not self.config.allow_credentialed_remote:
            raise TeacherError(
                f"refusing to send {len(credentialed)} credentialed image(s) (e.g. {credentialed[0]!r}) to {host}: "
                "the MIMIC-CXR and CheXpert data use agreements forbid sharing the data with third-party online "
                "services. Use a model served on this machine (e.g. vLLM or Ollama at http://localhost:PORT/v1), "
                "or the template teacher. If this endpoint is a server under your own control that your agreement "
                "covers, set allow_credentialed_remote=True."
            )
        logger.warning(
            "DATA USE AGREEMENT: sending %d credentialed image(s) (MIMIC-CXR / CheXpert) to the non-local endpoint "
            "%s because allow_credentialed_remote=True. Their agreements forbid third-party online services: "
            "make sure this server is under your control and covered by your agreement.",
            len(credentialed),
            host,
        )

    def _generate_all(self, cases: Sequence[TeacherCase], answer_format: AnswerFormat) -> dict[str, CaseResult]:
        """Request every case with bounded concurrency; stop everything on the first run-level error."""
        cfg = self.config
        secret = (os.environ.get(cfg.api_key_env) or None) if cfg.api_key_env else None
        if cfg.api_key_env and secret is None:
            logger.info("%s: environment variable %s is not set; sending no API key", self.name, cfg.api_key_env)
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        limits = httpx.Limits(max_connections=cfg.max_concurrency, max_keepalive_connections=cfg.max_concurrency)
        cfg.cache_path.parent.mkdir(parents=True, exist_ok=True)
        results: dict[str, CaseResult] = {}
        with (
            # A proxy from the environment has no business relaying requests meant for this machine.
            httpx.Client(
                headers=headers,
                timeout=cfg.timeout_s,
                limits=limits,
                trust_env=not is_local_endpoint(cfg.base_url),
            ) as client,
            _open_for_append(cfg.cache_path) as cache_file,
            tqdm(total=len(cases), desc=self.name, unit="case") as bar,
        ):
            run = _Run(
                client=client,
                url=cfg.base_url.rstrip("/") + "/chat/completions",
                secret=secret,
                answer_format=answer_format,
                cache_file=cache_file,
                abort_after=cfg.max_concurrency + 2,
            )
            pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="api-teacher")
            futures: dict[Future[CaseResult], TeacherCase] = {
                pool.submit(self._work, run, case): case for case in cases
            }
            try:
                for future in as_completed(futures):
                    result = future.result()
                    results[result.id] = result
                    bar.update(1)
                    bar.set_postfix(failed=sum(r.failed for r in results.values()), refresh=False)
            except BaseException:
                # Ctrl-C or a run-level error: queued cases are dropped, in-flight ones finish and are cached.
                run.abort.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                pool.shutdown(wait=True)
        return results

    def _work(self, run: _Run, case: TeacherCase) -> CaseResult:
        """One case, start to finish, in a worker thread; a usable trace is cached before returning."""
        try:
            result = self._generate(run, case)
        except _CaseFailed as failure:
            logger.warning("%s: case %s failed: %s", self.name, case.id, failure)
            run.note_failure(str(failure))
            return CaseResult(case.id, None, False, failure.attempts, error=str(failure))
        if result.failed:
            logger.warning("%s: case %s failed: %s", self.name, case.id, result.error)
        else:
            self._append(run, case, result)
        return result

    def _generate(self, run: _Run, case: TeacherCase) -> CaseResult:
        """Ask until a clean trace with the ground-truth labels comes back, or the attempts run out."""
        payload = {
            "model": self.config.model,
            "messages": teacher_messages(case, run.answer_format, self.config.max_image_side),
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        kept: tuple[str, ParsedCompletion] | None = None  # the last clean trace with the wrong labels
        error: str | None = None
        attempts = 0
        for _ in range(1 + self.config.regenerate_mismatches):
            try:
                text = self._chat(run, payload)
            except _CaseFailed as failure:
                if kept is None:
                    failure.attempts = attempts
                    raise
                break  # a mismatched trace already in hand is better than nothing
            attempts += 1
            parsed = parse_completion(text)
            error = _rejection(text, parsed, case.labels)
            if error is None:
                return CaseResult(case.id, parsed.reasoning, True, attempts, response=text)
            logger.debug("%s: case %s attempt %d rejected: %s", self.name, case.id, attempts, error)
            if _is_clean(parsed):
                kept = (text, parsed)
        if kept is None:
            return CaseResult(case.id, None, False, attempts, error=error)
        text, parsed = kept
        return CaseResult(case.id, parsed.reasoning, False, attempts, error=error, response=text)

    def _chat(self, run: _Run, payload: dict[str, Any]) -> str:
        """POST one chat completion, retrying what is worth retrying; return the message text."""
        retries = self.config.max_retries
        for retry in range(retries + 1):
            run.check()
            try:
                response = run.client.post(run.url, json=payload)
            except httpx.TransportError as error:
                problem, wait = _redact(f"{type(error).__name__}: {error}", run.secret), None
            else:
                status = response.status_code
                if response.is_success:
                    run.note_completion()
                    return _message_text(response)
                problem = f"HTTP {status} from {run.url}: {_error_text(response, run.secret)}"
                if status in _FATAL_STATUSES or 300 <= status < 400:
                    if "Location" in response.headers:
                        problem += f" (redirected to {response.headers['Location']}; set base_url to that address)"
                    raise run.stop(
                        f"{self.name}: {problem}. This concerns every request: check base_url, model and the API key."
                    )
                if status not in _RETRYABLE_STATUSES and status < 500:
                    raise _CaseFailed(problem)
                wait = _retry_after_s(response.headers.get("Retry-After"))
            if retry == retries:
                raise _CaseFailed(f"gave up after {retries + 1} attempts: {problem}")
            if wait is None:
                wait = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**retry * (1 + 0.5 * self._rng.random()))
            logger.warning("%s: %s; retrying in %.1f s (%d/%d)", self.name, problem, wait, retry + 1, retries)
            if self._sleep is None:
                run.abort.wait(wait)
            else:
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _append(self, run: _Run, case: TeacherCase, result: CaseResult) -> None:
        """Append one finished case to the cache and flush, so an interruption cannot lose it."""
        line = {
            "id": case.id,
            "format": run.answer_format.key,
            "model": self.config.model,
            "labels": list(in_canonical_order(case.labels)),
            "reasoning": result.reasoning,
            "labels_match": result.labels_match,
            "attempts": result.attempts,
            "response": result.response,
        }
        text = json.dumps(line, ensure_ascii=False) + "\n"
        with run.lock:
            run.cache_file.write(text)
            run.cache_file.flush()


def _is_clean(parsed: ParsedCompletion) -> bool:
    """The format is right, or wrong only by stray text around the blocks (dropped when re-rendered)."""
    return parsed.valid or parsed.error == OUTSIDE_TEXT


def _rejection(text: str, parsed: ParsedCompletion, labels: Sequence[str]) -> str | None:
    """Why a response is not an acceptable trace, or None when it is.

    Acceptable: a clean format (stray text around the blocks is tolerated: the reasoning is re-wrapped by
    the answer format anyway) and exactly the ground-truth labels.
    """
    if not text.strip():
        return "empty response"
    if not _is_clean(parsed):
        return f"malformed response: {parsed.error}"
    if set(parsed.labels) != set(labels):
        return f"labels {', '.join(parsed.labels) or '(none)'} instead of {', '.join(in_canonical_order(labels))}"
    return None


def _check_cases(cases: Sequence[TeacherCase]) -> None:
    """Reject inputs that can only waste requests: duplicate ids, no labels, labels outside CheXpert."""
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise ValueError(f"duplicate case id {case.id!r}: ids key the cache and must be unique")
        seen.add(case.id)
        if not case.labels:
            raise ValueError(f"case {case.id!r} has no labels (a normal image is labelled 'No Finding')")
        unknown = [label for label in case.labels if label not in CHEXPERT_LABELS]
        if unknown:
            raise ValueError(f"case {case.id!r}: not CheXpert label names: {unknown}")


def _open_for_append(path: Path) -> IO[str]:
    """Open the cache for appending, first ending a truncated last line so the next record starts clean."""
    if path.exists() and path.stat().st_size:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            complete = handle.read(1) == b"\n"
        if not complete:
            with path.open("ab") as handle:
                handle.write(b"\n")
    return path.open("a", encoding="utf-8", newline="\n")


def _read_cache(path: Path) -> tuple[dict[CacheKey, dict], int]:
    """Cached entries by (id, format, model), the last line winning; and the number of unreadable lines."""
    if not path.exists():
        return {}, 0
    entries: dict[CacheKey, dict] = {}
    corrupt = 0
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        entry = _cache_entry(raw)
        if entry is None:
            corrupt += 1
        else:
            entries[(entry["id"], entry["format"], entry["model"])] = entry
    return entries, corrupt


def _cache_entry(raw: bytes) -> dict | None:
    """One cache line as a dict, or None when it is truncated, not JSON or not shaped like a record."""
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(entry, dict):
        return None
    strings_ok = all(isinstance(entry.get(key), str) for key in ("id", "format", "model", "reasoning"))
    attempts = entry.get("attempts")
    labels = entry.get("labels", [])
    shaped = (
        strings_ok
        and bool(entry["reasoning"].strip())
        and isinstance(entry.get("labels_match"), bool)
        and isinstance(attempts, int)
        and not isinstance(attempts, bool)
        and isinstance(labels, list)
        and all(isinstance(label, str) for label in labels)
        and isinstance(entry.get("response"), (str, type(None)))
    )
    return entry if shaped else None
