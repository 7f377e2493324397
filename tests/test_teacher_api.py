"""ApiTeacher against a real chat-completions server on 127.0.0.1 (stdlib http.server), scripted per test.

The server checks every request the way a real one would (JSON body, a base64 PNG data URL, the prompt),
reads the ground-truth labels back from the prompt and answers in the think/solution protocol. Each test
queues behaviours per label set (errors, wrong labels, garbage, slow replies); anything not queued gets a
correct answer. Nothing leaves 127.0.0.1: the only non-local URL used is refused before any request.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import logging
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from chexreason.parsing import parse_completion
from chexreason.prompts import ANSWER_FORMATS
from chexreason.teachers import api
from chexreason.teachers.api import (
    ApiTeacher,
    ApiTeacherConfig,
    TeacherError,
    is_local_endpoint,
    system_prompt,
    teacher_messages,
)
from chexreason.teachers.base import TeacherCase

FMT = ANSWER_FORMATS["free_reasoning"]
KEY_ENV = "CHEXREASON_TEST_API_KEY"
KEY = "sk-local-test-5f3a9c"
MODEL = "test-model"
GEMINI = "https://generativelanguage.googleapis.com/v1beta/openai"

Reply = tuple[int, bytes, dict[str, str]]
Behaviour = Callable[[list[str], int], Reply]  # (ground-truth labels from the prompt, reply number) -> reply


def _completion(content: str) -> Reply:
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    body = {"id": "cmpl", "object": "chat.completion", "choices": [choice]}
    return 200, json.dumps(body).encode(), {"Content-Type": "application/json"}


def answer(labels: list[str], n: int) -> Reply:
    """A correct trace; the reply number makes every reasoning text unique."""
    joined = ", ".join(labels)
    return _completion(
        f"<think>Reply {n}: the image shows the evidence of {joined}.</think><solution>{joined}</solution>"
    )


def wrong(labels: list[str], n: int) -> Reply:
    return _completion(f"<think>Reply {n}: a cortical break in a rib.</think><solution>Fracture</solution>")


def garbage(labels: list[str], n: int) -> Reply:
    return _completion("I am sorry, I cannot interpret medical images.")


def http_error(status: int, text: str = "", headers: dict[str, str] | None = None) -> Behaviour:
    def reply(labels: list[str], n: int) -> Reply:
        return status, text.encode(), {"Content-Type": "text/plain", **(headers or {})}

    return reply


def slow(seconds: float) -> Behaviour:
    def reply(labels: list[str], n: int) -> Reply:
        time.sleep(seconds)
        return answer(labels, n)

    return reply


class ChatServer:
    """A scripted OpenAI-compatible chat-completions server: records requests, checks them, answers."""

    def __init__(self) -> None:
        self.script: dict[frozenset[str], deque[Behaviour]] = {}
        self.default: Behaviour = answer
        self.requests: list[dict] = []
        self.problems: list[str] = []
        self.delay = 0.0
        self.inflight = self.max_inflight = 0
        self._lock = threading.Lock()
        self._replies = itertools.count(1)
        self.url = ""

    def queue(self, labels: tuple[str, ...], *behaviours: Behaviour) -> None:
        self.script.setdefault(frozenset(labels), deque()).extend(behaviours)

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            time.sleep(self.delay)
            labels, problem = self._check(path, raw)
            with self._lock:
                self.requests.append({"auth": headers.get("authorization"), "labels": labels, "headers": headers})
                if problem:
                    self.problems.append(problem)
                    return http_error(400, problem)(labels, 0)
                queued = self.script.get(frozenset(labels))
                behaviour = queued.popleft() if queued else self.default
                n = next(self._replies)
            return behaviour(labels, n)
        finally:
            with self._lock:
                self.inflight -= 1

    def _check(self, path: str, raw: bytes) -> tuple[list[str], str | None]:
        """The labels in the prompt, and what is wrong with the request (None if nothing)."""
        try:
            body = json.loads(raw)
            assert path == "/v1/chat/completions", f"path {path}"
            assert body["model"] in (MODEL, "other-model") and isinstance(body["temperature"], float)
            assert isinstance(body["max_tokens"], int)
            system, user = body["messages"]
            assert system["role"] == "system" and "<think>" in system["content"], "system message"
            assert "Reasoning style:" in system["content"], "no trace style"
            image_part, text_part = user["content"]
            assert user["role"] == "user" and image_part["type"] == "image_url" and text_part["type"] == "text"
            prefix = "data:image/png;base64,"
            url = image_part["image_url"]["url"]
            assert url.startswith(prefix), "not a PNG data URL"
            data = base64.b64decode(url[len(prefix) :], validate=True)
            assert data.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
            Image.open(io.BytesIO(data)).verify()
            found = re.search(r"^Findings present: (.+)$", text_part["text"], re.MULTILINE)
            assert found, "no findings line"
        except Exception as error:  # any malformed request is reported, not crashed on
            return [], f"bad request: {type(error).__name__}: {error}"
        return found.group(1).split(", "), None


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatServer]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    chat = ChatServer()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, body, headers = chat.handle(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        block_on_close = False

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that timed out and hung up: expected in the timeout test

    httpd = Server(("127.0.0.1", 0), Handler)
    chat.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield chat
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)
    assert not chat.problems, chat.problems


def case(case_id: str, *labels: str, credentialed: bool = False, size: tuple[int, int] = (32, 32)) -> TeacherCase:
    return TeacherCase(case_id, labels, image=Image.new("L", size, 128), view="PA", credentialed=credentialed)


def make_teacher(base_url: str, tmp_path: Path, **overrides: object) -> tuple[ApiTeacher, list[float]]:
    """A teacher whose retry waits are recorded, not slept."""
    sleeps: list[float] = []
    options = {"model": MODEL, "cache_path": tmp_path / "cache.jsonl", **overrides}
    return ApiTeacher(ApiTeacherConfig(base_url, **options), sleep=sleeps.append), sleeps


def read_cache(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "cache.jsonl").read_text().splitlines()]


# --- happy path ---------------------------------------------------------------------------------------------


def test_happy_path_with_bounded_concurrency_and_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    server.delay = 0.15
    cases = [
        case("a", "Cardiomegaly"),
        case("b", "Pleural Effusion", "Edema"),
        case("c", "No Finding"),
        case("d", "Pneumothorax", "Support Devices"),
    ]
    teacher, sleeps = make_teacher(server.url, tmp_path, api_key_env=KEY_ENV, max_concurrency=2)
    assert teacher.name == f"api:{MODEL}"

    reasonings = teacher.write(cases, FMT)

    assert len(server.requests) == 4 and server.max_inflight == 2 and sleeps == []
    assert {r["auth"] for r in server.requests} == {f"Bearer {KEY}"}
    for c, reasoning in zip(cases, reasonings, strict=True):
        assert reasoning.startswith("Reply ") and "<think>" not in reasoning
        # The rendered SFT target parses back to the ground truth.
        assert set(parse_completion(FMT.render(c.labels, reasoning)).labels) == set(c.labels)
    lines = read_cache(tmp_path)
    assert {line["id"] for line in lines} == {"a", "b", "c", "d"}
    assert set(lines[0]) == {"id", "format", "model", "labels", "response", "reasoning", "labels_match", "attempts"}
    assert all(line["format"] == FMT.key and line["model"] == MODEL and line["labels_match"] for line in lines)


@pytest.mark.parametrize("key_env", [KEY_ENV, None])
def test_no_authorization_header_without_a_key(server, tmp_path, monkeypatch, key_env):
    monkeypatch.delenv(KEY_ENV, raising=False)
    teacher, _ = make_teacher(server.url, tmp_path, api_key_env=key_env)
    teacher.write([case("a", "Edema")], FMT)
    assert [r["auth"] for r in server.requests] == [None]


def test_stray_text_around_the_blocks_is_accepted(server, tmp_path):
    # The reasoning is re-wrapped by the answer format, so text outside the blocks costs nothing.
    server.queue(
        ("Edema",), lambda labels, n: _completion("Here it is:\n<think>Hazy hila.</think><solution>Edema</solution>")
    )
    report = make_teacher(server.url, tmp_path)[0].write_all([case("a", "Edema")], FMT)
    assert report.results[0].reasoning == "Hazy hila." and report.results[0].labels_match
    assert report.results[0].attempts == 1 and len(server.requests) == 1


# --- retries ------------------------------------------------------------------------------------------------


def test_5xx_is_retried_with_growing_backoff(server, tmp_path):
    server.queue(("Edema",), http_error(500, "boom"), http_error(502), http_error(503), answer)
    teacher, sleeps = make_teacher(server.url, tmp_path, max_retries=5)
    report = teacher.write_all([case("a", "Edema")], FMT)
    assert not report.failed and report.results[0].attempts == 1 and len(server.requests) == 4
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2]
    assert api.BACKOFF_BASE_S <= sleeps[0] < 1.5 * api.BACKOFF_BASE_S


def test_429_honours_retry_after_capped(server, tmp_path):
    server.queue(
        ("Edema",),
        http_error(429, "slow down", {"Retry-After": "7"}),
        http_error(429, "slow down", {"Retry-After": "99999"}),
        http_error(503, "", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}),  # a date in the past: no wait
        answer,
    )
    teacher, sleeps = make_teacher(server.url, tmp_path)
    assert teacher.write([case("a", "Edema")], FMT)[0]
    assert sleeps == [7.0, api.BACKOFF_MAX_S, 0.0]


def test_timeout_is_retried(server, tmp_path):
    server.queue(("Edema",), slow(0.6), answer)
    teacher, sleeps = make_teacher(server.url, tmp_path, timeout_s=0.2)
    assert teacher.write([case("a", "Edema")], FMT)[0] and len(sleeps) == 1


def test_default_sleep_really_waits(server, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "BACKOFF_BASE_S", 0.01)
    server.queue(("Edema",), http_error(500), answer)
    teacher = ApiTeacher(ApiTeacherConfig(server.url, MODEL, tmp_path / "cache.jsonl"))
    assert teacher.write([case("a", "Edema")], FMT)[0] and len(server.requests) == 2


def test_connection_refused_fails_the_case_after_retries(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    teacher, sleeps = make_teacher(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=2)
    report = teacher.write_all([case("a", "Edema")], FMT)
    assert report.failed_ids == ["a"] and "ConnectError" in report.results[0].error and len(sleeps) == 2
    with pytest.raises(TeacherError, match="no usable trace for 1 of 1 cases: a"):
        teacher.write([case("a", "Edema")], FMT)


def test_an_endpoint_that_stays_down_stops_the_run(server, tmp_path):
    server.default = http_error(503, "overloaded")
    cases = [
        case(str(i), label) for i, label in enumerate(("Edema", "Fracture", "Pneumonia", "Atelectasis", "Lung Lesion"))
    ]
    teacher, _ = make_teacher(server.url, tmp_path, max_retries=0, max_concurrency=1)
    with pytest.raises(TeacherError, match="kept failing"):
        teacher.write_all(cases, FMT)
    assert len(server.requests) == 3  # max_concurrency + 2 cases in a row, not the whole dataset


def test_a_4xx_on_every_case_stops_the_run(server, tmp_path):
    # e.g. a key some server rejects with 400 rather than 401: fail the run, not each of 10,000 cases.
    server.default = http_error(400, "API key not valid")
    cases = [case(str(i), label) for i, label in enumerate(("Edema", "Fracture", "Pneumonia", "Atelectasis"))]
    with pytest.raises(TeacherError, match=r"3 cases in a row failed .*API key not valid"):
        make_teacher(server.url, tmp_path, max_concurrency=1)[0].write_all(cases, FMT)
    assert len(server.requests) == 3


def test_401_fails_fast_and_never_shows_the_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    server.queue(("Edema",), http_error(401, f'{{"error": {{"message": "invalid api key {KEY}"}}}}'))
    teacher, sleeps = make_teacher(server.url, tmp_path, api_key_env=KEY_ENV, max_concurrency=1)
    with pytest.raises(TeacherError) as caught:
        teacher.write_all([case("a", "Edema"), case("b", "Fracture")], FMT)
    message = str(caught.value)
    assert "401" in message and "invalid api key" in message and KEY not in message
    assert len(server.requests) == 1 and sleeps == []  # no retry, and the next case was never sent


def test_other_4xx_fails_only_that_case(server, tmp_path):
    server.queue(("Edema",), http_error(400, "image too large"))
    teacher, sleeps = make_teacher(server.url, tmp_path)
    report = teacher.write_all([case("a", "Edema"), case("b", "Fracture")], FMT)
    assert (
        report.failed_ids == ["a"]
        and "400" in report.results[0].error
        and "image too large" in report.results[0].error
    )
    assert report.generated == 1 and len(server.requests) == 2 and sleeps == []


def test_a_run_level_error_cuts_a_long_backoff_short(server, tmp_path):
    # One case is told to wait 50 s; another then gets a 401, which ends the run: the waiting worker must
    # wake at once instead of sleeping the backoff out (the real sleep, not a recorded one).
    def late_401(labels: list[str], n: int) -> Reply:
        time.sleep(0.3)  # the 429 has arrived and its backoff begun
        return http_error(401, "invalid api key")(labels, n)

    server.queue(("Edema",), http_error(429, "slow down", {"Retry-After": "50"}))
    server.queue(("Fracture",), late_401)
    teacher = ApiTeacher(ApiTeacherConfig(server.url, MODEL, tmp_path / "cache.jsonl", max_concurrency=2))
    start = time.monotonic()
    with pytest.raises(TeacherError, match="401"):
        teacher.write_all([case("a", "Edema"), case("b", "Fracture")], FMT)
    assert time.monotonic() - start < 10
    assert sorted(r["labels"][0] for r in server.requests) == ["Edema", "Fracture"]  # the 429 was not retried


def test_a_redirect_is_not_followed_and_stops_the_run(server, tmp_path):
    # A POST carrying an image must never land on a host nobody configured.
    elsewhere = "http://127.0.0.1:9/v1/chat/completions"
    server.default = http_error(307, "moved", {"Location": elsewhere})
    teacher, sleeps = make_teacher(server.url, tmp_path, max_concurrency=1)
    with pytest.raises(TeacherError, match=re.escape(f"redirected to {elsewhere}")):
        teacher.write_all([case("a", "Edema"), case("b", "Fracture")], FMT)
    assert len(server.requests) == 1 and sleeps == []


@pytest.mark.parametrize("key_env", [KEY_ENV, None])
def test_openai_environment_variables_are_ignored(server, tmp_path, monkeypatch, key_env):
    # The openai client reads OPENAI_* variables when not told otherwise: none may redirect or add to requests.
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://bogus.invalid:1/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-api-key")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-leak")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-leak")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Leak: yes\nAuthorization: Bearer sk-from-custom-headers")
    teacher, _ = make_teacher(server.url, tmp_path, api_key_env=key_env)
    assert teacher.write([case("a", "Edema")], FMT)[0]
    (request,) = server.requests
    assert request["auth"] == (f"Bearer {KEY}" if key_env else None)
    headers = request["headers"]
    assert not {"x-leak", "openai-organization", "openai-project"} & set(headers)
    assert not any("leak" in value or "sk-from" in value for value in headers.values())
    machine = {"x-stainless-os", "x-stainless-arch", "x-stainless-runtime", "x-stainless-runtime-version"}
    assert not machine & set(headers)  # nor what this machine runs


# --- mismatches and garbage ---------------------------------------------------------------------------------


def test_mismatch_is_regenerated_then_accepted(server, tmp_path):
    server.queue(("Edema",), wrong, answer)
    report = make_teacher(server.url, tmp_path, regenerate_mismatches=1)[0].write_all([case("a", "Edema")], FMT)
    result = report.results[0]
    assert result.labels_match and result.attempts == 2 and "Edema" in result.reasoning
    assert report.mismatched == 0 and len(server.requests) == 2


def test_mismatch_after_all_attempts_is_kept_and_flagged(server, tmp_path):
    server.queue(("Edema",), wrong, wrong)
    teacher, _ = make_teacher(server.url, tmp_path, regenerate_mismatches=1, max_concurrency=1)
    report = teacher.write_all([case("a", "Edema"), case("b", "Cardiomegaly")], FMT)
    result = report.results[0]
    assert not result.labels_match and result.attempts == 2 and "rib" in result.reasoning
    assert result.reasoning.startswith("Reply 2:")  # the last trace is kept (one worker: a gets replies 1, 2)
    assert report.mismatched == 1 and report.mismatched_ids == ["a"] and report.failed == 0
    assert "Fracture instead of Edema" in result.error
    # write() keeps it too (the caller filters with write_all), and it is cached as a mismatch.
    again = teacher.write_all([case("a", "Edema")], FMT)
    assert again.results[0].cached and not again.results[0].labels_match and again.mismatched == 1
    assert teacher.write([case("a", "Edema")], FMT) == [result.reasoning]
    assert len(server.requests) == 3


def test_garbage_fails_the_case_and_write_names_it(server, tmp_path):
    server.queue(("Edema",), *[garbage] * 4)
    teacher, _ = make_teacher(server.url, tmp_path, regenerate_mismatches=1)
    cases = [case("good", "Cardiomegaly"), case("bad-1", "Edema")]

    report = teacher.write_all(cases, FMT)
    assert report.failed_ids == ["bad-1"] and report.results[1].reasoning is None
    assert report.results[1].attempts == 2 and "malformed response" in report.results[1].error
    assert (report.requested, report.generated, report.failed) == (2, 1, 1)

    with pytest.raises(TeacherError, match="bad-1") as caught:
        teacher.write(cases, FMT)
    assert caught.value.report.failed_ids == ["bad-1"] and caught.value.report.cached == 1
    # The good case was cached on the first run, the failure never is.
    assert [line["id"] for line in read_cache(tmp_path)] == ["good"]
    assert len(server.requests) == 1 + 2 + 2


# --- cache --------------------------------------------------------------------------------------------------


def test_second_run_is_served_from_the_cache(server, tmp_path):
    cases = [case("a", "Edema"), case("b", "Cardiomegaly"), case("c", "No Finding")]
    first = make_teacher(server.url, tmp_path, max_concurrency=2)[0].write(cases, FMT)
    assert len(server.requests) == 3

    report = make_teacher(server.url, tmp_path)[0].write_all(cases, FMT)
    assert len(server.requests) == 3 and report.reasonings == first
    assert (report.cached, report.generated) == (3, 0)


def test_cache_is_keyed_by_format_and_model(server, tmp_path):
    cases = [case("a", "Edema")]
    make_teacher(server.url, tmp_path)[0].write(cases, FMT)
    make_teacher(server.url, tmp_path)[0].write(cases, ANSWER_FORMATS["reasoning_a"])
    make_teacher(server.url, tmp_path, model="other-model")[0].write(cases, FMT)
    assert len(server.requests) == 3
    assert len(read_cache(tmp_path)) == 3


def test_cache_entry_for_other_labels_is_not_reused(server, tmp_path, caplog):
    make_teacher(server.url, tmp_path)[0].write([case("a", "Edema")], FMT)
    with caplog.at_level(logging.WARNING, logger=api.__name__):
        report = make_teacher(server.url, tmp_path)[0].write_all([case("a", "Pneumonia")], FMT)
    assert not report.results[0].cached and "Pneumonia" in report.results[0].reasoning
    assert len(server.requests) == 2 and "other labels" in caplog.text


def test_truncated_and_corrupt_cache_lines_are_tolerated(server, tmp_path, caplog):
    cases = [case("a", "Edema"), case("b", "Cardiomegaly")]
    make_teacher(server.url, tmp_path, max_concurrency=1)[0].write(cases, FMT)
    path = tmp_path / "cache.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    last_id = json.loads(lines[-1])["id"]
    junk = b'not json\n[1, 2]\n{"id": "a"}\n\xff\xfe\n'
    path.write_bytes(lines[0] + junk + lines[1][: len(lines[1]) // 2])  # an interrupted write: no newline

    with caplog.at_level(logging.WARNING, logger=api.__name__):
        report = make_teacher(server.url, tmp_path)[0].write_all(cases, FMT)
    assert "skipped 5 corrupt or truncated line(s)" in caplog.text
    assert len(server.requests) == 3 and report.cached == 1 and report.generated == 1
    assert not next(r for r in report.results if r.id == last_id).cached

    # The record appended after the partial line is intact: a third run requests nothing.
    report = make_teacher(server.url, tmp_path)[0].write_all(cases, FMT)
    assert len(server.requests) == 3 and report.cached == 2


@pytest.mark.parametrize(
    "change",
    [
        {"surplus": "an unknown key"},
        {"attempts": "1"},  # a wrong type: strings are not coerced
        {"labels_match": 1},
        {"labels": "Edema"},
        {"reasoning": " "},
    ],
)
def test_an_invalid_cache_line_is_not_reused(server, tmp_path, caplog, change):
    make_teacher(server.url, tmp_path)[0].write([case("a", "Edema")], FMT)
    path = tmp_path / "cache.jsonl"
    (line,) = read_cache(tmp_path)
    path.write_text(json.dumps({**line, **change}) + "\n")

    with caplog.at_level(logging.WARNING, logger=api.__name__):
        report = make_teacher(server.url, tmp_path)[0].write_all([case("a", "Edema")], FMT)
    assert "skipped 1 corrupt or truncated line(s)" in caplog.text
    assert report.cached == 0 and report.generated == 1 and len(server.requests) == 2
    assert read_cache(tmp_path)[-1]["reasoning"] == report.results[0].reasoning  # the new trace is cached


def test_an_old_cache_line_without_labels_is_reused(server, tmp_path):
    make_teacher(server.url, tmp_path)[0].write([case("a", "Edema")], FMT)
    path = tmp_path / "cache.jsonl"
    (line,) = read_cache(tmp_path)
    del line["labels"], line["response"]
    path.write_text(json.dumps(line) + "\n")
    report = make_teacher(server.url, tmp_path)[0].write_all([case("a", "Edema")], FMT)
    assert report.cached == 1 and len(server.requests) == 1


# --- data use agreements ------------------------------------------------------------------------------------


def test_credentialed_images_are_refused_for_a_remote_endpoint(tmp_path, monkeypatch):
    def no_client(*args: object, **kwargs: object) -> None:
        raise AssertionError("an HTTP client was created: the refusal must come before any request")

    monkeypatch.setattr(api, "open_client", no_client)
    monkeypatch.setattr(api.httpx, "Client", no_client)
    teacher, _ = make_teacher(GEMINI, tmp_path, api_key_env=KEY_ENV)
    with pytest.raises(TeacherError, match="data use agreements") as caught:
        teacher.write([case("mimic-1", "Edema", credentialed=True), case("nih-1", "Edema")], FMT)
    assert "generativelanguage.googleapis.com" in str(caught.value) and "allow_credentialed_remote" in str(
        caught.value
    )
    assert not (tmp_path / "cache.jsonl").exists()


def test_acknowledged_remote_sends_with_a_loud_warning(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(api, "is_local_endpoint", lambda url: False)  # the local server, seen as remote
    cases = [case("mimic-1", "Edema", credentialed=True)]
    with pytest.raises(TeacherError, match="data use agreements"):
        make_teacher(server.url, tmp_path)[0].write(cases, FMT)
    assert server.requests == []

    with caplog.at_level(logging.WARNING, logger=api.__name__):
        make_teacher(server.url, tmp_path)[0].write([case("nih-1", "Edema")], FMT)  # not credentialed: fine
        assert "DATA USE AGREEMENT" not in caplog.text
        assert make_teacher(server.url, tmp_path, allow_credentialed_remote=True)[0].write(cases, FMT)[0]
    assert "DATA USE AGREEMENT" in caplog.text and len(server.requests) == 2


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://localhost:8000/v1", True),
        ("http://LOCALHOST:8000/v1", True),
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.1.2.3/v1", True),
        ("http://[::1]:11434/v1", True),
        ("http://[::ffff:127.0.0.1]/v1", True),
        ("http://0.0.0.0:8000/v1", False),  # the unspecified address, not a loopback: refused, to be safe
        ("https://example.com/v1", False),
        ("http://10.0.0.5:8000/v1", False),  # private, but another machine
        ("http://192.168.1.2/v1", False),
        ("http://foo.localhost/v1", False),
        ("http://127.0.0.1.nip.io/v1", False),
        (GEMINI, False),
        ("http://[::1/v1", False),  # malformed
        ("not a url", False),
    ],
)
def test_is_local_endpoint(url, local):
    assert is_local_endpoint(url) is local


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": "ftp://localhost/v1"}, "http:// or https://"),
        ({"base_url": "localhost:8000/v1"}, "http:// or https://"),
        ({"base_url": "http://user:pw@localhost/v1"}, "credentials"),
        ({"base_url": "https://example.com/v1?key=abc"}, "query string"),
        ({"base_url": "http://localhost:99999/v1"}, "not a valid URL"),
        ({"model": " "}, "model"),
        ({"cache_path": ""}, "cache_path"),
        ({"api_key_env": "sk-abc-123"}, "NAME of an environment variable"),
        ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout_s": 0}, "timeout_s must be a number > 0"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"regenerate_mismatches": -1}, "regenerate_mismatches"),
        ({"max_image_side": 10}, "max_image_side"),
        ({"allow_credentialed_remote": "yes"}, "allow_credentialed_remote"),
    ],
)
def test_config_validation(overrides, message, tmp_path):
    options = {"base_url": "http://localhost:8000/v1", "model": MODEL, "cache_path": tmp_path / "c.jsonl"}
    with pytest.raises(ValueError, match=re.escape(message)):
        ApiTeacherConfig(**{**options, **overrides})


def test_config_defaults(tmp_path):
    config = ApiTeacherConfig("http://localhost:8000/v1", MODEL, str(tmp_path / "c.jsonl"))
    assert config.cache_path == tmp_path / "c.jsonl"
    assert (config.max_concurrency, config.max_retries, config.timeout_s) == (4, 5, 60.0)
    assert (config.temperature, config.max_tokens, config.regenerate_mismatches) == (0.7, 1024, 1)
    assert config.api_key_env is None and config.allow_credentialed_remote is False


@pytest.mark.parametrize(
    ("cases", "fmt", "message"),
    [
        ([case("a", "Edema"), case("a", "Fracture")], FMT, "duplicate case id"),
        ([case("a")], FMT, "no labels"),
        ([case("a", "Effusion")], FMT, "not CheXpert label names"),
        ([TeacherCase("a", ("Edema",))], FMT, "must be shown the image"),
        ([case("a", "Edema")], ANSWER_FORMATS["only_label"], "no reasoning"),
    ],
)
def test_unusable_inputs_are_refused_before_any_request(server, tmp_path, cases, fmt, message):
    with pytest.raises(ValueError, match=message):
        make_teacher(server.url, tmp_path)[0].write(cases, fmt)
    assert server.requests == []


# --- the prompt ---------------------------------------------------------------------------------------------


def test_messages_carry_the_instructions_the_findings_and_a_downscaled_png():
    big = TeacherCase("a", ("Edema", "Cardiomegaly"), image=Image.new("I;16", (2000, 1000), 3000), view="AP")
    system, user = teacher_messages(big, ANSWER_FORMATS["reasoning_a"], max_image_side=512)
    assert system == {"role": "system", "content": system_prompt(ANSWER_FORMATS["reasoning_a"])}
    assert ANSWER_FORMATS["reasoning_a"].trace_style in system["content"]
    assert "Never mention that the findings were given to you" in system["content"]
    image_part, text_part = user["content"]
    png = base64.b64decode(image_part["image_url"]["url"].removeprefix("data:image/png;base64,"))
    image = Image.open(io.BytesIO(png))
    assert image.size == (512, 256) and image.mode == "L"
    assert "Findings present: Cardiomegaly, Edema\nView: AP" in text_part["text"]


def test_retry_after_parsing():
    assert api._retry_after_s("3.5") == 3.5
    assert api._retry_after_s("-4") == 0.0
    assert (
        api._retry_after_s("nan") is None and api._retry_after_s("soon") is None and api._retry_after_s(None) is None
    )
    assert api._retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_train_data_with_the_api_teacher(server, tmp_path):
    # The whole build path: phantom SFT traces written by the server, cached, mismatches dropped.
    from chexreason.data.build import load_built
    from train import data as train_data

    argv = ["--config", "train/recipes/tiny/data.yaml", "--output_dir", str(tmp_path), "--workers", "1",
            "--sft_samples", "10", "--rl_samples", "2", "--test_samples_per_site", "2", "--image_size", "64",
            "--teacher", "api", "--teacher_base_url", server.url, "--teacher_model", MODEL]  # fmt: skip
    manifest = train_data.main(argv)
    built = load_built(tmp_path)
    assert len(built["sft_train"]) == 9 and all(r["reasoning"].startswith("Reply") for r in built["sft_train"])
    assert manifest["teacher"]["sft_train"]["generated"] == 9
    requests = len(server.requests)
    train_data.main([*argv, "--seed", "1"])  # new images: only those are requested
    assert len(server.requests) > requests
    server.default = wrong  # every trace misses its labels: dropped, and an empty split is a clear error
    with pytest.raises(SystemExit, match="sft_train split came out empty"):
        train_data.main([*argv, "--seed", "2", "--output_dir", str(tmp_path / "wrong")])
