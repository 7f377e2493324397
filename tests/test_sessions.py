"""What the app holds per visitor (`HeldImages`) and the uploads on disk (`UploadLedger`), without a server."""

from __future__ import annotations

import gc
import io
import time
import weakref

import numpy as np
import pytest
from PIL import Image

from chexreason.app import uploads
from chexreason.app.sessions import HeldImages, held_seconds


class Held:
    """A stand-in for a held image (weak-referenceable, so a test sees when it is really gone)."""


def test_a_held_value_is_dropped_from_memory_after_its_time_to_live_without_any_request():
    held = HeldImages(ttl=0.2)
    value = Held()
    gone = weakref.ref(value)
    held.put("tab-closed", value)
    del value
    assert held.get("tab-closed") is not None
    time.sleep(0.2 * 1.25 + 0.2)  # the sweeper's period is a quarter of the time to live
    gc.collect()
    assert gone() is None, "the sweeper did not drop an expired session's image"
    held.close()


def test_the_oldest_sessions_are_dropped_beyond_the_cap():
    held = HeldImages(ttl=60, max_sessions=3)
    for session in "abcd":
        held.put(session, Held())
    assert held.get("a") is None and all(held.get(s) is not None for s in "bcd")
    held.put("b", Held())  # storing again makes it the newest
    held.put("e", Held())
    assert held.get("c") is None and held.get("b") is not None
    held.forget("b")
    assert held.get("b") is None and len(held) == 2
    held.put(None, Held())  # no session id: nothing held
    assert len(held) == 2
    held.close()


@pytest.mark.parametrize("value", ["0", "-5", "nan", "ten", "901"])
def test_a_bad_session_time_to_live_is_refused(monkeypatch, value):
    monkeypatch.setenv("CHEXREASON_SESSION_TTL", value)
    with pytest.raises(ValueError, match="CHEXREASON_SESSION_TTL"):
        held_seconds()


def test_uploads_get_their_own_folders_and_go_when_discarded_or_overdue(tmp_path, monkeypatch):
    ledger = uploads.UploadLedger(tmp_path)
    first = ledger.store("film.png", io.BytesIO(b"same bytes"))
    second = ledger.store("film.png", io.BytesIO(b"same bytes"))
    assert first != second and first.read_bytes() == second.read_bytes() == b"same bytes"
    hidden = ledger.store("../../.bashrc", io.BytesIO(b"x"))
    assert hidden.parent.parent == tmp_path and hidden.name == "upload"
    named = ledger.store("Doe^Jane 1962-03-04.DCM", io.BytesIO(b"x"))  # a file name kept nowhere, its extension kept
    assert named.name == "upload.dcm"
    ledger.discard(first)
    assert not first.exists() and not first.parent.exists() and ledger.issued(first) and not ledger.on_disk(first)
    ledger.claim("event-1", [str(second)])
    ledger.release("event-1")  # cancelled
    assert not second.exists()
    monkeypatch.setattr(uploads, "GRACE_SECONDS", 0.0)
    unread = ledger.store("unread.png", io.BytesIO(b"y"))
    ledger.sweep()
    assert not unread.exists()
    assert not ledger.issued(tmp_path / "never-uploaded.png")
    ledger.close()


def test_the_model_resolution_image_gives_the_processor_the_same_pixels(models):
    """The app holds only the image at `input_resolution()`: the models must see exactly what the original gives."""
    width, height, resample = models.input_resolution()
    processor = models.processor_of(models.checkpoints[0]).image_processor
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (700, 530), dtype=np.uint8), "L")
    held = original.resize((width, height), Image.Resampling(resample))
    pixels = [processor(images=[im.convert("RGB")], return_tensors="np")["pixel_values"] for im in (original, held)]
    np.testing.assert_array_equal(*pixels)


def test_an_events_uploads_go_when_its_result_stream_says_it_ended_or_closes(tmp_path, monkeypatch):
    import asyncio

    from chexreason.app import http_guard

    ledger = uploads.UploadLedger(tmp_path)
    monkeypatch.setattr(uploads, "_ledger", ledger)
    done, dropped = (ledger.store(name, io.BytesIO(b"z")) for name in ("done.png", "dropped.png"))
    ledger.claim("event-done", [str(done)], "visitor")
    ledger.claim("event-dropped", [str(dropped)], "visitor")

    async def nowhere(message):
        pass

    scope = {"path": "/gradio_api/queue/data", "query_string": b"session_hash=visitor"}
    watch = http_guard._CompletionWatch(scope, nowhere)
    message = b'data: {"msg": "process_completed", "event_id": "event-done", "success": false}\n\n'
    for chunk in (message[:20], message[20:]):  # a line split across chunks
        asyncio.run(watch({"type": "http.response.body", "body": chunk, "more_body": True}))
    assert not done.exists() and dropped.exists()
    asyncio.run(watch({"type": "http.response.body", "body": b"", "more_body": False}))  # the stream closed
    assert not dropped.exists()
    ledger.close()
