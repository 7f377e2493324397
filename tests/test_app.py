"""The app starts and serves its page over HTTP."""

import socket
import urllib.request

import pytest

import app


@pytest.fixture(scope="module")
def served():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}"
    app.demo.close()


def test_page_is_served(served):
    with urllib.request.urlopen(served + "/config", timeout=30) as response:
        config = response.read().decode()
    assert "ChexReason" in config
    assert "Per-label F1, NIH ChestX-ray14" in config  # the paper table is rendered from chexreason.results
