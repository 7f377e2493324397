"""Gradio's HTTP API spoken by hand, as an attacker or a script would: uploads, REST calls, a tab's heartbeat."""

from __future__ import annotations

import json

import httpx


def upload(url: str, name: str, data: bytes) -> str:
    """POST one file to the app's upload route; the server path it returns."""
    response = httpx.post(f"{url}gradio_api/upload", files=[("files", (name, data))], timeout=60)
    response.raise_for_status()
    return response.json()[0]


def file_input(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def call(url: str, api: str, data: list, session: str | None = None) -> tuple[str, object]:
    """A REST call (``/gradio_api/call/<api>``): ("complete" | "error" | "refused", what came back)."""
    response = httpx.post(f"{url}gradio_api/call/{api}", json={"data": data, "session_hash": session}, timeout=30)
    if response.status_code != 200:
        return "refused", response.json()
    event_id = response.json()["event_id"]
    event = None
    with httpx.stream("GET", f"{url}gradio_api/call/{api}/{event_id}", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event in ("complete", "error"):
                return event, json.loads(line.removeprefix("data: "))
    raise AssertionError(f"no result for /{api}")


def open_and_close_tab(url: str, session: str) -> None:
    """What a browser tab does for its session: hold the heartbeat stream open, then drop it (the tab closes)."""
    with httpx.stream("GET", f"{url}gradio_api/heartbeat/{session}", timeout=30) as stream:
        next(stream.iter_lines())  # "data: ALIVE": the server knows the tab
