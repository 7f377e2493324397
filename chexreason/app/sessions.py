"""What the app remembers about a visitor between requests: the last upload, decoded, and nothing else.

Gradio's own `gr.State` is not used for it: once a browser tab is closed, Gradio keeps a session's state for
``STATE_TTL_WHEN_CLOSED`` (3,600 s, fixed in Gradio 6) whatever the state's own time to live, and it bounds neither
the number of sessions nor what each holds. `HeldImages` does all three: an image is dropped `ttl` seconds after it
was stored (by a sweeper thread, whether or not the visitor comes back), when the tab closes (the app's
``demo.unload`` handler calls `forget`), and, oldest first, when more than `max_sessions` visitors hold one.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from typing import Generic, TypeVar

HELD_SECONDS = 15 * 60  # the time the About tab and the README promise
MAX_SESSIONS = 128  # images held at once; a MedGemma-resolution image is 0.8 MB, the tiny set's 13 KB
SWEEP_SECONDS = 10.0  # at most; a short time to live is swept every quarter of it
TTL_VARIABLE = "CHEXREASON_SESSION_TTL"  # seconds; the tests shorten it, a host may too

Held = TypeVar("Held")


def held_seconds() -> float:
    """The time a session's image is kept: $CHEXREASON_SESSION_TTL when set (a positive number), else 15 minutes."""
    value = os.environ.get(TTL_VARIABLE)
    if value is None:
        return HELD_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds <= HELD_SECONDS:  # NaN fails too; a host may shorten the promise, never lengthen it
        raise ValueError(f"${TTL_VARIABLE} must be a number of seconds in (0, {HELD_SECONDS}], got {value!r}")
    return seconds


class HeldImages(Generic[Held]):
    """One held value per session id, each dropped `ttl` seconds after it was stored."""

    def __init__(self, ttl: float | None = None, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl = held_seconds() if ttl is None else ttl
        self.max_sessions = max_sessions
        self._items: OrderedDict[str, tuple[float, Held]] = OrderedDict()  # oldest first
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        # Swept every `period` seconds, and each value expires `period` early: none is held past `ttl`, untouched.
        self.period = min(SWEEP_SECONDS, self.ttl / 4)
        threading.Thread(target=self._sweep_until_stopped, name="held-images-sweeper", daemon=True).start()

    def put(self, session: str | None, value: Held) -> None:
        """Hold `value` for `session` (replacing what it held); without a session id, hold nothing."""
        if not session:
            return
        with self._lock:
            self._items.pop(session, None)
            self._items[session] = (time.monotonic() + self.ttl - self.period, value)
            while len(self._items) > self.max_sessions:
                self._items.popitem(last=False)

    def get(self, session: str | None) -> Held | None:
        """What `session` holds, if it has not expired."""
        if not session:
            return None
        with self._lock:
            item = self._items.get(session)
            if item is None or item[0] <= time.monotonic():
                self._items.pop(session, None)
                return None
            return item[1]

    def forget(self, session: str | None) -> None:
        with self._lock:
            self._items.pop(session or "", None)

    def __len__(self) -> int:
        self.sweep()
        return len(self._items)

    def sweep(self) -> None:
        """Drop every expired value now."""
        now = time.monotonic()
        with self._lock:
            for session in [s for s, (expires, _) in self._items.items() if expires <= now]:
                del self._items[session]

    def close(self) -> None:
        self._stopped.set()
        with self._lock:
            self._items.clear()

    def _sweep_until_stopped(self) -> None:
        while not self._stopped.wait(self.period):
            self.sweep()
