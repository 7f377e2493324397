"""Decode untrusted images in worker processes with a memory limit and a time limit.

A hostile file that gets past every header check (`chexreason.decode_limits`) can still make a decoder
allocate or compute more than it should; in the server's own process that would stall or exhaust every
visitor's requests. `DecodePool` runs `chexreason.images.load_image_with_info` in separate, persistent
processes (``python -m chexreason.decode_pool``), each under an address-space limit (``RLIMIT_AS``) it sets
itself after importing; a decode that runs past ``seconds`` is killed, and a worker that dies or is killed is
replaced, so the next file finds a fresh one. The server only ever holds the decoded 8-bit image.

The workers speak a small protocol of their own over their standard input and output — a length-prefixed JSON
header, then raw bytes — never pickle, so a compromised worker could send the server nothing but pixels and
text.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import resource
import selectors
import subprocess
import sys
import time
from dataclasses import asdict
from typing import BinaryIO

from PIL import Image

from chexreason.images import ImageError, ImageInfo, load_image_with_info

logger = logging.getLogger(__name__)

MEMORY_BYTES = 1536 * 2**20  # per worker, above what it holds after importing: a 50-megapixel 16-bit DICOM fits
SECONDS = 20.0  # per file; the largest real films decode in about a second
WORKERS = 2  # files decoded at once; a third visitor waits for a free worker
STARTUP_SECONDS = 60.0  # for a new worker's imports, on a busy machine
_LENGTH = 8  # bytes of each message's header length

Resize = tuple[int, int, int]  # width, height, PIL resampling filter: `ModelSet.input_resolution()`


class DecodePool:
    """Worker processes that decode images (`load`), started at once and replaced when one fails."""

    def __init__(self, workers: int = WORKERS, memory_bytes: int = MEMORY_BYTES, seconds: float = SECONDS) -> None:
        if workers < 1 or memory_bytes < 2**20 or seconds <= 0:
            raise ValueError("need workers >= 1, memory_bytes >= 1 MiB and seconds > 0")
        self.memory_bytes = memory_bytes
        self.seconds = seconds
        self._idle: queue.Queue[_Worker] = queue.Queue()
        for _ in range(workers):
            self._idle.put(_Worker(memory_bytes))

    def load(
        self, data: bytes, name: str | None = None, resize: Resize | None = None, max_side: int | None = None
    ) -> tuple[Image.Image, ImageInfo]:
        """`chexreason.images.load_image_with_info` of the file's bytes, in a worker; with `resize`, the image comes
        back at that size, with `max_side`, shrunk to fit within it (either way the full-size image never reaches
        this process). `ImageInfo` keeps the file's own size.

        Raises:
            ImageError: the file is refused (the worker's message), or its decoding ran out of time or memory.
        """
        worker = self._idle.get()
        try:
            return worker.load(data, name, {"resize": resize, "max_side": max_side}, self.seconds)
        except _WorkerLost as lost:
            logger.warning("decode worker %s (%s): starting a new one", lost, f"{len(data)} bytes")
            worker.kill()
            worker = _Worker(self.memory_bytes)
            raise ImageError(str(lost)) from None
        finally:
            self._idle.put(worker)

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and monitoring)."""
        return [worker.process.pid for worker in list(self._idle.queue)]

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().kill()


class _WorkerLost(Exception):
    """The worker ran out of time, died or broke the protocol; its message is for the visitor."""


class _Worker:
    def __init__(self, memory_bytes: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chexreason.decode_pool", str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.ready = False

    def load(self, data: bytes, name: str | None, fit: dict, seconds: float) -> tuple[Image.Image, ImageInfo]:
        self._wait_until_ready()
        deadline = time.monotonic() + seconds
        try:
            _send(self.process.stdin, {"name": name, "size": len(data), **fit}, data)
            header = _read_header(self.process.stdout, deadline)
            size = (int(header["width"]), int(header["height"])) if header.get("ok") else (0, 0)
            pixels = _receive(self.process.stdout, size[0] * size[1], deadline)
            info = ImageInfo(**header["info"]) if header.get("ok") else None
        except TimeoutError:
            raise _WorkerLost(f"The file took longer than {seconds:g} s to decode and was refused.") from None
        except (OSError, EOFError, ValueError, KeyError, TypeError) as err:  # died (out of memory, a crash), garbled
            raise _WorkerLost(
                "The file could not be decoded within the memory allowed for one image and was refused."
            ) from err
        if info is None:
            raise ImageError(str(header.get("error")))
        return Image.frombytes("L", size, pixels), info

    def _wait_until_ready(self) -> None:
        """The first time: wait for the worker's "ready" (imports done, limit set), so a file's time starts then."""
        if self.ready:
            return
        try:
            if not _read_header(self.process.stdout, time.monotonic() + STARTUP_SECONDS).get("ready"):
                raise ValueError("no ready message")
        except (OSError, EOFError, ValueError, TimeoutError) as err:
            raise _WorkerLost("The image decoder could not be started; please try again.") from err
        self.ready = True

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def _send(stream: BinaryIO | None, header: dict, payload: bytes = b"") -> None:
    if stream is None:
        raise OSError("no pipe")
    encoded = json.dumps(header).encode()
    stream.write(len(encoded).to_bytes(_LENGTH, "little") + encoded + payload)
    stream.flush()


def _read_header(stream: BinaryIO | None, deadline: float | None) -> dict:
    length = int.from_bytes(_receive(stream, _LENGTH, deadline), "little")
    if length > 2**20:
        raise ValueError("oversized header")
    header = json.loads(_receive(stream, length, deadline))
    if not isinstance(header, dict):
        raise ValueError("malformed header")
    return header


def _receive(stream: BinaryIO | None, n: int, deadline: float | None = None) -> bytes:
    """Exactly `n` bytes from `stream`, waiting at most until `deadline` (None: without a limit)."""
    if stream is None:
        raise OSError("no pipe")
    chunks, missing = [], n
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while missing:
            if deadline is not None and not selector.select(max(0.0, deadline - time.monotonic())):
                raise TimeoutError
            chunk = os.read(stream.fileno(), min(missing, 2**20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            missing -= len(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------------------------------ the worker


def _limit_address_space(memory_bytes: int) -> None:
    """Cap this process's address space at what it uses now plus `memory_bytes`."""
    with open("/proc/self/status", encoding="ascii") as status:
        used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = used + memory_bytes if hard == resource.RLIM_INFINITY else min(hard, used + memory_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _serve(memory_bytes: int) -> None:
    """The worker's loop: a file in, an image or a refusal out, until its input closes."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but the protocol on the real stdout
    _limit_address_space(memory_bytes)
    _send(stdout, {"ready": True})
    while True:
        try:
            header = _read_header(stdin, None)
            data = _receive(stdin, int(header["size"]))
        except EOFError:
            return
        try:
            image, info = load_image_with_info(data if header.get("name") is None else _Named(data, header["name"]))
            if header.get("resize"):
                width, height, resample = header["resize"]
                image = image.resize((int(width), int(height)), Image.Resampling(int(resample)))
            elif header.get("max_side"):
                image.thumbnail((int(header["max_side"]), int(header["max_side"])))
            _send(stdout, {"ok": True, "width": image.width, "height": image.height, "info": asdict(info)},
                  image.tobytes())  # fmt: skip
        except ImageError as err:
            _send(stdout, {"ok": False, "error": str(err)})
        except MemoryError:
            _send(stdout, {"ok": False, "error": "The file needs more memory to decode than one image may use."})


class _Named:
    """Bytes with a file name, read like an open file (the name lets a preamble-less ``.dcm`` be recognised)."""

    def __init__(self, data: bytes, name: str) -> None:
        self._data, self.name = data, str(name)

    def read(self, _size: int = -1) -> bytes:
        return self._data


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
