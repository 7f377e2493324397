"""The app's HTTP edge: ASGI middleware in front of Gradio's routes that keeps the upload and privacy promises.

Installed by `chexreason.app.launch_options` (``app_kwargs={"middleware": ...}``), so it runs wherever the app is
launched: ``python app.py``, a Hugging Face Space, the tests.

- ``POST …/upload`` is served here, not by Gradio: the body is parsed by Starlette into anonymous spooled temporary
  files (no name on disk, gone when the request ends, however it ends) and counted against the size limit as it
  arrives, whatever ``Content-Length`` claims; only a complete upload is written, by `UploadLedger.store`, to a
  folder of its own. (Gradio's route names the file by its content's hash — identical uploads share one path — and
  leaves the partial file of an aborted upload in the served folder.)
- Every other JSON ``POST`` (``queue/join``, ``call/<api>``, …) is read first, at most `MAX_JSON_BYTES`: each file
  input must name an upload this server issued or a cached gallery example. A URL is refused here, before Gradio
  would resolve its host name; so is any other path (a folder, another visitor's guess). When Gradio then refuses the
  request (queue full, bad data), the uploads it named are deleted at once; a queued request's uploads are claimed
  until it runs, and deleted when it is cancelled (``POST …/cancel``).

Refusals are HTTP 422 in Gradio's validation format, so `gradio_client` raises them with the message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse

from chexreason.app.uploads import is_example_copy, ledger

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

MAX_JSON_BYTES = 64 * 2**10  # the app's API calls are a few hundred bytes; a long value is refused, not echoed
MULTIPART_OVERHEAD = 64 * 2**10  # boundaries and part headers around the file's bytes


class _TooLarge(Exception):
    pass


class UploadGuard:
    """ASGI middleware; `max_upload_bytes` is the largest file accepted (the app's `MAX_UPLOAD_BYTES`)."""

    def __init__(self, app: Callable, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"].rstrip("/")
        if path.endswith("/upload"):
            return await self._upload(scope, receive, send)
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        if content_type.startswith(b"multipart/"):
            return await self.app(scope, receive, send)
        return await self._json(scope, receive, send, cancel=path.endswith("/cancel"))

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

        request = Request(scope, counted)
        try:
            async with request.form(max_files=8, max_fields=8) as form:
                uploads = [value for value in form.getlist("files") if isinstance(value, UploadFile)]
                paths = [
                    str(await run_in_threadpool(ledger().store, upload.filename, upload.file)) for upload in uploads
                ]
        except _TooLarge:
            limit_mb = self.max_upload_bytes // 2**20
            response = PlainTextResponse(f"The file is larger than the {limit_mb} MB limit.", status_code=413)
            return await response(scope, receive, send)
        except ClientDisconnect:
            logger.info("an upload was aborted mid-stream; nothing of it was kept")
            return
        except Exception as err:  # a malformed multipart body: python-multipart says what is wrong
            logger.info("refused an upload: %s", _short(str(err)))
            return await PlainTextResponse(f"Malformed upload: {_short(str(err))}", status_code=400)(
                scope, receive, send
            )
        if not paths:
            return await PlainTextResponse("No file in the upload (form field 'files').", status_code=400)(
                scope, receive, send
            )
        await JSONResponse(paths)(scope, receive, send)

    async def _json(self, scope: Scope, receive: Receive, send: Send, cancel: bool) -> None:
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > MAX_JSON_BYTES:
                problem = f"The request is larger than {MAX_JSON_BYTES // 1024} KB."
                logger.info("refused a request: %s", problem)
                return await _refuse(problem, scope, receive, send)
        body = b"".join(chunks)
        try:
            payload = json.loads(body) if body.strip() else None
        except (ValueError, RecursionError):
            payload = None  # Gradio answers malformed JSON itself
        files = list(_file_paths(payload))
        for path in files:
            problem = _problem_with(path)
            if problem:
                logger.info("refused a request: %s", problem)
                return await _refuse(problem, scope, receive, send)

        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status, response_chunks = 0, []

        async def watch(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and (files or cancel) and len(response_chunks) < 64:
                response_chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay, watch)
        finally:  # also when Gradio raised (a 500): then nothing will read the uploads either
            self._settle(payload, files, status, b"".join(response_chunks), cancel)

    @staticmethod
    def _settle(payload: Any, files: list, status: int, response: bytes, cancel: bool) -> None:
        """After Gradio answered: claim a queued request's uploads, or delete those nothing will read."""
        uploads = [path for path in files if ledger().on_disk(path)]
        if cancel and isinstance(payload, dict) and isinstance(payload.get("event_id"), str):
            ledger().release(payload["event_id"])
        elif uploads and status != 200:  # refused by Gradio (queue full, invalid data): nothing will read them
            for path in uploads:
                ledger().discard(path)
        elif uploads:
            event_id = _event_id(response)
            if event_id:
                ledger().claim(event_id, uploads)


def _file_paths(payload: Any) -> Iterator[Any]:
    """The ``path`` of every file input (a JSON object with a ``path`` key) anywhere in the payload."""
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


async def _refuse(message: str, scope: Scope, receive: Receive, send: Send) -> None:
    detail = [{"__type__": "validate", "is_valid": False, "parameter_name": "request", "message": message}]
    await JSONResponse({"detail": detail}, status_code=422)(scope, receive, send)


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
