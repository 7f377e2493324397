"""The app's HTTP edge: ASGI middleware in front of Gradio's routes that keeps the upload and privacy promises.

Installed by `chexreason.app.launch_options` (``app_kwargs``), so it runs wherever the app is launched: ``python
app.py``, a Hugging Face Space, the tests.

- ``POST …/upload`` is served here, not by Gradio: one file per request, parsed by Starlette into an anonymous
  spooled temporary file (no name on disk; gone when the request ends, however it ends) and counted against the size
  limit as it arrives, whatever ``Content-Length`` claims; only a complete upload is written, by
  `UploadLedger.store`, to a folder of its own. (Gradio's route names the file by its content's hash, so identical
  uploads share one path, and leaves the partial file of an aborted upload in the served folder.) Any other
  multipart request is refused: Gradio's other multipart routes write files the app never sees.
- Every other ``POST`` is read first, at most `MAX_JSON_BYTES`, and its file inputs checked: at most one, only in an
  endpoint's file slot, naming an upload this server issued (or a cached gallery example). A URL is refused here,
  before Gradio would resolve its host name; so is any other path. ``GET …/file=<URL>`` and ``…/proxy=`` are refused
  too (Gradio would fetch the URL).
- Uploads follow their request: deleted at once when Gradio refuses it (queue full, bad data), and when it is
  cancelled (``POST …/cancel``), completes (its result stream says so) or is dropped because its visitor's result
  stream closed. The ledger's sweeper deletes what is left (`chexreason.app.uploads`).

Refusals are HTTP 4xx with a message: 422 in Gradio's validation format, which `gradio_client` raises as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import unquote

import gradio as gr
from fastapi.exceptions import RequestValidationError
from gradio.data_classes import FileData
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse

from chexreason.app.uploads import UploadLedgerFull, is_example_copy, ledger

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

MAX_JSON_BYTES = 64 * 2**10  # the app's API calls are a few hundred bytes; a long value is refused, not echoed
MULTIPART_OVERHEAD = 64 * 2**10  # boundaries and part headers around the file's bytes
MAX_PATHS = 4  # file objects in one request: the upload, and a gallery click's image (its event data)


class _TooLarge(Exception):
    pass


class UploadGuard:
    """ASGI middleware; `max_upload_bytes` is the largest file accepted (the app's `MAX_UPLOAD_BYTES`)."""

    def __init__(self, app: Callable, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/")
        if "/file=" in path or "/proxy=" in path:
            target = unquote(path.split("=", 1)[1])
            if "/proxy=" in path or "://" in target or target.startswith("//"):
                return await _refuse("Files are served from this server only; URLs are not fetched.", scope, send, 403)
        if scope["method"] == "GET" and (path.endswith("/queue/data") or "/call/" in path):
            return await self.app(scope, receive, _CompletionWatch(scope, send))
        if scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if path.endswith("/upload"):
            return await self._upload(scope, receive, send)
        if dict(scope["headers"]).get(b"content-type", b"").startswith(b"multipart/"):
            return await _refuse("Files are uploaded to /gradio_api/upload only.", scope, send, 415)
        return await self._post(scope, receive, send, path)

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_upload_bytes + MULTIPART_OVERHEAD
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge
            return message

        try:
            async with Request(scope, counted).form(max_files=1, max_fields=4) as form:
                files = [value for value in form.getlist("files") if isinstance(value, UploadFile)]
                if len(files) != 1:
                    return await _refuse("Send one file, in the form field 'files'.", scope, send, 400)
                path = await run_in_threadpool(ledger().store, files[0].filename, files[0].file)
        except _TooLarge:
            message = f"The file is larger than the {self.max_upload_bytes // 2**20} MB limit."
            return await _refuse(message, scope, send, 413)
        except ClientDisconnect:
            logger.info("an upload was aborted mid-stream; nothing of it was kept")
            return
        except MultiPartException as err:
            return await _refuse(f"Malformed upload: {_short(str(err))}", scope, send, 400)
        except UploadLedgerFull as err:
            return await _refuse(str(err), scope, send, 503)
        await JSONResponse([str(path)])(scope, receive, send)

    async def _post(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_JSON_BYTES:
                return await _refuse(f"The request is larger than {MAX_JSON_BYTES // 1024} KB.", scope, send)
        body = b"".join(chunks)
        try:
            payload = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError):
            payload = None  # Gradio answers malformed JSON itself
        problem = await run_in_threadpool(_problem_with_files, payload, _inputs_of(scope, path, payload))
        files = [item for item in _file_paths(payload) if isinstance(item, str) and ledger().on_disk(item)]
        if problem:
            for file in files:  # nothing will read them
                ledger().discard(file)
            return await _refuse(problem, scope, send)

        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status, answer = 0, []

        async def watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and len(answer) < 16:
                answer.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay, watch)
        finally:  # also when Gradio raised (a 500): then nothing will read the uploads either
            _settle(path, payload, files, status, b"".join(answer))


def _settle(path: str, payload: Any, files: list[str], status: int, answer: bytes) -> None:
    """After Gradio answered: claim a queued request's uploads, or delete those nothing will read."""
    body = payload if isinstance(payload, dict) else {}
    if path.endswith("/cancel") and isinstance(body.get("event_id"), str):
        ledger().release(body["event_id"])
    elif files and status != 200:  # refused by Gradio (queue full, invalid data)
        for file in files:
            ledger().discard(file)
    elif files:
        event_id = _event_id(answer)
        session = body.get("session_hash") if isinstance(body.get("session_hash"), str) else None
        if event_id:
            ledger().claim(event_id, files, session)
        else:  # answered without queueing anything: nothing will come back for the files
            for file in files:
                ledger().discard(file)


class _CompletionWatch:
    """Passes a result stream (``queue/data``, ``call/<api>/<event id>``) through, releasing each event's uploads
    when the stream says it completed, and the session's remaining ones when the stream ends (Gradio drops a
    session's queued events when its stream closes)."""

    def __init__(self, scope: Scope, send: Send) -> None:
        self.send = send
        query = dict(part.split("=", 1) for part in scope.get("query_string", b"").decode().split("&") if "=" in part)
        self.session = query.get("session_hash")
        self.stream_event = scope["path"].rstrip("/").rsplit("/", 1)[-1] if "/call/" in scope["path"] else None
        self.pending = b""

    async def __call__(self, message: dict) -> None:
        try:
            await self.send(message)
        finally:
            if message["type"] == "http.response.body":
                self._read(message.get("body", b""))
                if not message.get("more_body", False):
                    self._ended()

    def _read(self, chunk: bytes) -> None:
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        self.pending = self.pending[-MAX_JSON_BYTES:]
        for line in lines:
            if line.startswith(b"event: ") and line[7:].strip() in (b"complete", b"error") and self.stream_event:
                ledger().release(self.stream_event)
            elif line.startswith(b"data: ") and b"process_completed" in line:
                try:
                    message = json.loads(line[6:])
                except ValueError:
                    continue
                if isinstance(message, dict) and isinstance(message.get("event_id"), str):
                    ledger().release(message["event_id"])

    def _ended(self) -> None:
        if self.stream_event:
            ledger().release(self.stream_event)
        elif self.session:
            ledger().release_session(self.session)


def _inputs_of(scope: Scope, path: str, payload: Any) -> list | None:
    """The input components of the endpoint a request runs (``queue/join``'s fn_index, ``call/<api>``), if known."""
    blocks = getattr(scope.get("app"), "get_blocks", lambda: None)()
    body = payload if isinstance(payload, dict) else {}
    fns = getattr(blocks, "fns", {})
    if path.endswith("/queue/join") and isinstance(body.get("fn_index"), int):
        fn = fns.get(body["fn_index"])
    elif "/call/" in path and "/call/v2/" not in path:
        api = path.rsplit("/", 1)[-1]
        fn = next((fn for fn in fns.values() if fn.api_name == api), None)
    else:
        return None
    return list(fn.inputs) if fn is not None else None


def _problem_with_files(payload: Any, inputs: list | None) -> str | None:
    """Why the request's file inputs are refused, or None. Runs in a worker thread (it may read a small file)."""
    paths = list(_file_paths(payload))
    if len(paths) > MAX_PATHS:
        return "Send one file per request."
    data = payload.get("data") if isinstance(payload, dict) else None
    if inputs is not None and isinstance(data, list):
        if len(data) != len(inputs):
            return f"This endpoint takes {len(inputs)} values; the request sent {len(data)}."
        for component, value in zip(inputs, data, strict=True):
            is_file = isinstance(component, gr.File)
            if is_file and value is not None and not _is_file_object(value):
                return 'The file input must be one file object: {"path": <what /gradio_api/upload returned>}.'
            if not is_file and list(_file_paths(value)):
                return "Only the upload input takes a file."
    for path in paths:
        problem = _problem_with(path)
        if problem:
            return problem
    return None


def _is_file_object(value: Any) -> bool:
    """A well-formed Gradio file object (checked with Gradio's own model: its error text would echo the value)."""
    if not isinstance(value, dict) or not isinstance(value.get("path"), str):
        return False
    try:
        FileData.model_validate(value)
    except ValidationError:
        return False
    return True


def _file_paths(payload: Any) -> Iterator[Any]:
    """The ``path`` of every file object (a JSON object with a ``path`` key) anywhere in the payload."""
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "path" in item:
                yield item["path"]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _problem_with(path: Any) -> str | None:
    if not isinstance(path, str) or not path:
        return "A file input's path must be the text an upload to this server returned."
    if "://" in path or path.startswith(("data:", "//")):
        return "Files are not fetched from URLs: upload the file to this server (POST /gradio_api/upload) first."
    if ledger().issued(path) or is_example_copy(path):
        return None
    return "A file input must name a file uploaded to this server (POST /gradio_api/upload); this one was not."


def _event_id(body: bytes) -> str | None:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer.get("event_id") if isinstance(answer, dict) and isinstance(answer.get("event_id"), str) else None


async def _refuse(message: str, scope: Scope, send: Send, status: int = 422) -> None:
    """Answer with `message` (one log line); 422 in the validation format `gradio_client` shows as it is."""
    logger.info("refused a request: %s", message)
    detail = [{"__type__": "validate", "is_valid": False, "parameter_name": "request", "message": message}]
    response = JSONResponse({"detail": detail}, status) if status == 422 else PlainTextResponse(message, status)

    async def nothing() -> dict:
        return {"type": "http.disconnect"}

    await response(scope, nothing, send)


async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's answer to a request body of the wrong shape, without FastAPI's echo of the input."""
    problems = [
        {"loc": list(item.get("loc", ())), "msg": _short(str(item.get("msg", ""))), "type": item.get("type")}
        for item in error.errors()[:5]
    ]
    logger.info("refused a request: %s", "; ".join(f"{p['loc']}: {p['msg']}" for p in problems))
    return JSONResponse({"detail": problems}, status_code=422)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
