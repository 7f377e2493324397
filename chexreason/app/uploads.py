"""Where uploaded files live on the server, and when they go.

Every upload is written by `UploadLedger.store` (called by the app's HTTP guard, `chexreason.app.http_guard`, which
serves Gradio's upload route) to a folder of its own with an unguessable name inside Gradio's upload folder — so two
visitors uploading the same bytes under the same name get two files, and one visitor cannot name another's. A file
is deleted by the request that reads it (`discard`); by the guard when its request is refused, cancelled, ends
(`release`) or is dropped with its visitor's result stream (`release_session`); otherwise by the ledger's sweeper:
`GRACE_SECONDS` after its upload when no request named it, `QUEUED_SECONDS` after a request named it. At most
`MAX_STORED_BYTES` are on disk at once. The names of deleted uploads are remembered for the
day (as digests: no file name is kept), so a request naming one is told the file is gone rather than refused as
foreign.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

import gradio as gr
from gradio.data_classes import ListFiles
from gradio_client.utils import strip_invalid_filename_characters

from chexreason.app.examples import load_examples

MAX_STORED_BYTES = 2**30  # uploads on disk at once, all visitors together: ten of the largest
GRACE_SECONDS = 60.0  # from upload to the request that reads it: the page and gradio_client send it at once
QUEUED_SECONDS = 30 * 60.0  # the longest a request may wait in the queue (16 places × a long generation)
SWEEP_SECONDS = 5.0
REMEMBER_SECONDS = 24 * 3600.0  # how long a deleted upload's path is recognised (a page left open overnight)
MAX_REMEMBERED = 100_000  # digests of deleted uploads' paths kept (about 100 bytes each)
EXAMPLE_BYTES = 2**20  # the bundled examples are ~35 KB: a larger file is never one


def upload_folder() -> Path:
    """Gradio's upload folder ($GRADIO_TEMP_DIR, else the system temp folder's ``gradio``)."""
    return Path(gr.utils.get_upload_folder()).resolve()


class UploadLedgerFull(Exception):
    """The uploads on disk already take `MAX_STORED_BYTES`: the message is for the visitor."""


class UploadLedger:
    """The uploads on disk and the names of those already deleted."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or upload_folder()
        self._on_disk: dict[Path, float] = {}  # upload → when it may be deleted unread
        self._events: dict[str, list[Path]] = {}  # queued request id → the uploads it names
        self._sessions: dict[str, set[str]] = {}  # session → its queued requests' ids
        self._bytes: dict[Path, int] = {}
        self._gone: OrderedDict[str, float] = OrderedDict()  # digest of a deleted upload's path → when forgotten
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._sweep_until_stopped, name="upload-sweeper", daemon=True).start()

    def store(self, name: str | None, source: BinaryIO) -> Path:
        """Write an upload to a new folder of its own; returns its path.

        Raises:
            UploadLedgerFull: the uploads on disk would take more than `MAX_STORED_BYTES`.
        """
        size = source.seek(0, 2)
        source.seek(0)
        with self._lock:
            if sum(self._bytes.values()) + size > MAX_STORED_BYTES:
                raise UploadLedgerFull("The server holds too many uploads right now; please try again in a minute.")
        # Stored as upload.<extension>: a visitor's file name (often a patient's name) is kept nowhere, not even in
        # Gradio's memory of served paths; the extension alone tells a preamble-less .dcm apart.
        suffix = Path(strip_invalid_filename_characters(Path(name or "").name)).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
        folder = self.folder / f"upload-{secrets.token_hex(16)}"
        folder.mkdir(parents=True)
        path = folder / f"upload{suffix}"
        with path.open("xb") as out:
            shutil.copyfileobj(source, out, 2**20)
        with self._lock:
            self._on_disk[path] = time.monotonic() + GRACE_SECONDS
            self._bytes[path] = size
        return path

    def issued(self, path: str | Path) -> bool:
        """Whether `path` names an upload this server wrote (on disk or already deleted)."""
        key = _key(path)
        with self._lock:
            return key in self._on_disk or _digest(key) in self._gone

    def on_disk(self, path: str | Path) -> bool:
        with self._lock:
            return _key(path) in self._on_disk

    def claim(self, event_id: str, paths: list[str], session: str | None = None) -> None:
        """A queued request named these uploads: keep them until it ends (or `QUEUED_SECONDS`)."""
        keys = [_key(path) for path in paths]
        deadline = time.monotonic() + QUEUED_SECONDS
        with self._lock:
            for key in keys:
                if key in self._on_disk:
                    self._on_disk[key] = max(self._on_disk[key], deadline)
            self._events[event_id] = keys
            if session:
                self._sessions.setdefault(session, set()).add(event_id)

    def release(self, event_id: str) -> None:
        """The request ended (completed, failed or cancelled): delete the uploads it named."""
        with self._lock:
            keys = self._events.pop(event_id, [])
        for key in keys:
            self.discard(key)

    def release_session(self, session: str) -> None:
        """The session's result stream closed, and Gradio dropped its queued requests: delete their uploads."""
        with self._lock:
            events = self._sessions.pop(session, set())
        for event_id in events:
            self.release(event_id)

    def discard(self, path: str | Path | None) -> None:
        """Delete an upload now (its folder too); a path that is not an upload is left alone."""
        if not path:
            return
        key = _key(path)
        with self._lock:
            if self._on_disk.pop(key, None) is None:
                return
            self._bytes.pop(key, None)
            self._gone[_digest(key)] = time.monotonic() + REMEMBER_SECONDS
            while len(self._gone) > MAX_REMEMBERED:
                self._gone.popitem(last=False)
        key.unlink(missing_ok=True)
        shutil.rmtree(key.parent, ignore_errors=True)

    def files(self) -> list[Path]:
        with self._lock:
            return list(self._on_disk)

    def sweep(self) -> None:
        now = time.monotonic()
        with self._lock:
            overdue = [path for path, deadline in self._on_disk.items() if deadline <= now]
            while self._gone and next(iter(self._gone.values())) <= now:
                self._gone.popitem(last=False)
            self._events = {
                event: keys for event, keys in self._events.items() if any(key in self._on_disk for key in keys)
            }
            self._sessions = {
                session: live for session, events in self._sessions.items() if (live := events & self._events.keys())
            }
        for path in overdue:
            self.discard(path)

    def close(self) -> None:
        self._stopped.set()
        for path in self.files():
            self.discard(path)

    def _sweep_until_stopped(self) -> None:
        while not self._stopped.wait(SWEEP_SECONDS):
            self.sweep()


def _key(path: str | Path) -> Path:
    return Path(path).absolute()


def _digest(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()


def is_example_copy(path: str | Path) -> bool:
    """Whether `path` is Gradio's cached copy of a bundled example (the gallery's files), by content."""
    file = Path(path)
    try:
        if not file.resolve().is_relative_to(upload_folder()) or not file.is_file():
            return False
        if file.stat().st_size > EXAMPLE_BYTES:
            return False
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
    except OSError:
        return False
    return any(example.sha256 == digest for example in load_examples())


_ledger: UploadLedger | None = None
_ledger_lock = threading.Lock()


def ledger() -> UploadLedger:
    """The server's one ledger, made on first use (in Gradio's upload folder as configured then)."""
    global _ledger
    with _ledger_lock:
        if _ledger is None:
            _ledger = UploadLedger()
        return _ledger


def upload_input(**kwargs: Any) -> gr.File:
    """The upload widget: a `gr.File` whose event gets the upload's path as it is. Gradio 6.31's own
    ``File.preprocess`` opens an empty named temporary file in the upload folder for every event and never removes
    it. (Replaced on the instance, not in a subclass: Gradio writes a ``.pyi`` stub beside any module that
    subclasses a component.)"""
    file = gr.File(type="filepath", **kwargs)
    file.preprocess = _upload_path  # type: ignore[method-assign]
    return file


def _upload_path(payload: Any) -> str | list[str] | None:
    if payload is None:
        return None
    if isinstance(payload, ListFiles):  # an API caller sent several: the check refuses a list
        paths = [file.path for file in payload.root]
        return paths[0] if len(paths) == 1 else paths
    return payload.path
