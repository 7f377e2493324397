"""A teacher that asks an OpenAI-compatible chat-completions endpoint to write SFT reasoning traces.

The paper wrote its SFT traces with Gemini 2.5, shown the image *and* the ground-truth labels and asked to
reason as if it read the image on its own. `ApiTeacher` does the same against any server that speaks
``POST {base_url}/chat/completions`` (Gemini's OpenAI-compatible endpoint, vLLM, Ollama, …):

- every response goes through `chexreason.parsing.parse_completion`; a trace is accepted when its format
  is clean and its labels are exactly the ground truth, and asked for again (``regenerate_mismatches``)
  when not. A trace whose labels never match is kept but flagged, so the caller can drop it;
- requests go through the official ``openai`` client, pointed at ``base_url`` and given only what the
  config says (no ``OPENAI_*`` environment variable reaches the request); connection errors, timeouts,
  HTTP 408/429 and 5xx are retried with exponential backoff and jitter
  (``Retry-After`` is honoured, capped); other 4xx fail fast, and errors that concern every case (bad key,
  wrong URL or model, a redirect) or an endpoint that stays down end the run at once instead of
  spending the whole dataset on them;
- results are appended to a JSONL cache (`chexreason.teachers.cache`) as soon as each case is done, so
  an interrupted run resumes where it stopped and no case is paid for twice;
- images under a credentialed-access agreement (MIMIC-CXR, CheXpert) are refused for any endpoint that is
  not this machine's loopback, unless the caller explicitly acknowledges otherwise.

The API key is read from an environment variable at run time, never stored in the config, never logged
and redacted from every error message.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
from openai import OpenAI
from tqdm.auto import tqdm

from chexreason.labels import CHEXPERT_LABELS, in_canonical_order
from chexreason.parsing import OUTSIDE_TEXT, ParsedCompletion, completion_text, parse_completion
from chexreason.prompts import AnswerFormat
from chexreason.teachers.base import TeacherCase
from chexreason.teachers.cache import CacheKey, CacheLine, CacheWriter, cache_key, read_cache
from chexreason.teachers.endpoint import ApiTeacherConfig, is_local_endpoint, open_client
from chexreason.teachers.messages import FINDINGS_PREFIX, system_prompt, teacher_messages
from chexreason.teachers.report import CaseResult, TeacherError, TeacherReport

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "FINDINGS_PREFIX",
    "ApiTeacher",
    "ApiTeacherConfig",
    "CacheKey",
    "CaseResult",
    "TeacherError",
    "TeacherReport",
    "is_local_endpoint",
    "system_prompt",
    "teacher_messages",
]

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


def _connection_problem(error: openai.APIConnectionError) -> str:
    """The transport error under the client's generic "Connection error." (e.g. ``ConnectError: …``)."""
    cause = error.__cause__ or error
    return f"{type(cause).__name__}: {cause}"


class _CaseFailed(Exception):
    """One case got an HTTP error it cannot get past (a 4xx, or retries exhausted)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.attempts = 0  # chat completions received for the case before it gave up


@dataclass
class _Run:
    """The state one `ApiTeacher.write_all` call shares between its worker threads."""

    client: OpenAI
    url: str
    secret: str | None
    answer_format: AnswerFormat
    cache: CacheWriter
    abort_after: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    abort: threading.Event = field(default_factory=threading.Event)
    abort_reason: str = ""
    consecutive_failures: int = 0

    @property
    def headers(self) -> dict[str, Any]:
        """The Authorization header of every request: the configured key, or none at all."""
        return {"Authorization": f"Bearer {self.secret}" if self.secret else openai.omit}

    def stop(self, reason: str) -> TeacherError:
        """Make every worker stop before its next request (and wake from a backoff); return the error to raise."""
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
        cache, unusable = read_cache(self.config.cache_path)
        if unusable:
            logger.warning(
                "%s: skipped %d corrupt or truncated line(s) in %s (an interrupted run leaves one; so does a line "
                "with an unknown key or a wrong type); those cases are requested again",
                self.name,
                unusable,
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
        return cache_key(case.id, answer_format.key, self.config.model)

    def _cached(
        self, cache: dict[CacheKey, CacheLine], case: TeacherCase, answer_format: AnswerFormat
    ) -> CaseResult | None:
        """The cached result for a case, unless absent or written for other ground-truth labels."""
        line = cache.get(self._key(case, answer_format))
        if line is None or not line.written_for(case.labels):
            return None
        return CaseResult(
            case.id, line.reasoning, line.labels_match, line.attempts, cached=True, response=line.response
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
        results: dict[str, CaseResult] = {}
        with (
            open_client(cfg) as client,
            CacheWriter(cfg.cache_path) as cache,
            tqdm(total=len(cases), desc=self.name, unit="case") as bar,
        ):
            run = _Run(
                client=client,
                url=cfg.base_url.rstrip("/") + "/chat/completions",
                secret=secret,
                answer_format=answer_format,
                cache=cache,
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
                # Ctrl-C or a run-level error: queued cases are dropped, in-flight ones finish and are cached,
                # and workers waiting out a backoff wake at once (they wait on run.abort).
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
        """POST one chat completion, retrying what is worth retrying; return the message text.

        The retry loop is ours, the client's is off (``max_retries=0``): openai's own retry
        (``_base_client.py: SyncAPIClient.request``) waits in ``_sleep_for_retry`` with ``time.sleep``, which
        the run-wide stop cannot cut short, and ``_should_retry`` gives up on a ``Retry-After`` above two
        minutes instead of capping it.
        """
        retries = self.config.max_retries
        for retry in range(retries + 1):
            run.check()
            try:
                response = run.client.chat.completions.with_raw_response.create(**payload, extra_headers=run.headers)
            except openai.APIStatusError as error:  # any non-2xx status, 3xx included (redirects are not followed)
                problem = self._status_problem(run, error.response)
                wait = _retry_after_s(error.response.headers.get("Retry-After"))
            except openai.APIConnectionError as error:  # APITimeoutError included
                problem, wait = _redact(_connection_problem(error), run.secret), None
            else:
                run.note_completion()
                return _message_text(response.http_response)
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

    def _status_problem(self, run: _Run, response: httpx.Response) -> str:
        """What an error status means: raised unless it is worth retrying, else returned as the problem text."""
        status = response.status_code
        problem = f"HTTP {status} from {run.url}: {_error_text(response, run.secret)}"
        if status in _FATAL_STATUSES or 300 <= status < 400:
            if "Location" in response.headers:
                problem += f" (redirected to {response.headers['Location']}; set base_url to that address)"
            raise run.stop(
                f"{self.name}: {problem}. This concerns every request: check base_url, model and the API key."
            )
        if status not in _RETRYABLE_STATUSES and status < 500:
            raise _CaseFailed(problem)
        return problem

    def _append(self, run: _Run, case: TeacherCase, result: CaseResult) -> None:
        """Append one finished case to the cache (flushed at once, so an interruption cannot lose it)."""
        line = CacheLine(
            id=case.id,
            format=run.answer_format.key,
            model=self.config.model,
            labels=list(in_canonical_order(case.labels)),
            reasoning=result.reasoning or "",
            labels_match=result.labels_match,
            attempts=result.attempts,
            response=result.response,
        )
        run.cache.append(line)


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
