"""The app as a public Space: hostile uploads, privacy promises and malformed calls, against the served app.

The server runs in a process of its own (tests/serve_app.py) under an address-space limit, with a private upload
folder, a short session time to live and a record of its DNS lookups; these tests talk to it over HTTP only, with
`gradio_client` where a visitor would and raw requests where an attacker would. Every hostile file is generated here.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hostile_files as hostile
import httpx
import numpy as np
import pytest
import raw_api
from gradio_client import Client, handle_file
from PIL import Image

from chexreason.app.examples import load_examples

ROOT = Path(__file__).resolve().parents[1]
TTL = 3.0  # seconds a session holds its image here (the app's default is 15 minutes)
SERVER_HEADROOM = 3 * 2**30  # the server's address-space limit above its size once loaded (threads' stacks count)
TOTAL_RSS = 2500 * 2**20  # the app's processes together, with the tiny set
PER_UPLOAD_RSS = 300 * 2**20  # what one upload may add to the server's peak
LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0", "::1"}


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    uploads: Path  # its GRADIO_TEMP_DIR
    tmp: Path  # its TMPDIR
    dns_log: Path
    log: Path

    def pids(self) -> list[int]:
        """The server and its children (the decode workers)."""
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                children.append(int(stat.parent.name))
        return [self.process.pid, *children]

    def rss(self) -> int:
        return sum(_status_bytes(pid, "VmRSS:") for pid in self.pids())

    def peak_rise(self) -> int:
        """How far the server's own peak RSS rose above its RSS now, since `reset_peak`."""
        return _status_bytes(self.process.pid, "VmHWM:") - _status_bytes(self.process.pid, "VmRSS:")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def files(self) -> list[Path]:
        """Files in the upload and temporary folders other than Gradio's cached gallery examples."""
        names = {example.path.name for example in load_examples()}
        found = [*self.uploads.rglob("*"), *self.tmp.rglob("*")]
        return [p for p in found if p.is_file() and p.name not in names]

    def upload(self, name: str, data: bytes) -> str:
        return raw_api.upload(self.url, name, data)

    def call(self, api: str, data: list, session: str | None = None) -> tuple[str, object]:
        return raw_api.call(self.url, api, data, session)


def _status_bytes(pid: int, key: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith(key)), 0)


_file = raw_api.file_input


def _settings(**changes) -> list:
    settings = {"prompt": "own", "sampling": False, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": None}
    return list({**settings, **changes}.values())


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    folder = tmp_path_factory.mktemp("public-space")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log, dns_log = folder / "server.log", folder / "dns.log"
    (folder / "tmp").mkdir()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(folder / "uploads"), "TMPDIR": str(folder / "tmp"),
           "CHEXREASON_SESSION_TTL": str(TTL),
           "MALLOC_ARENA_MAX": "2",  # glibc reserves 64 MB of address space per thread arena otherwise
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    command = [sys.executable, str(ROOT / "tests" / "serve_app.py"), str(port), str(SERVER_HEADROOM), str(dns_log)]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}/", process, folder / "uploads", folder / "tmp", dns_log, log)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            pytest.fail(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}config", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield server
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def client(server) -> Client:
    return Client(server.url, verbose=False)


class ConfigWatch:
    """GET /config in a loop while a request runs: every page load must keep being answered."""

    def __init__(self, server: Server) -> None:
        self.url, self.latencies, self.failures = f"{server.url}config", [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ConfigWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                httpx.get(self.url, timeout=5).raise_for_status()
                self.latencies.append(time.monotonic() - started)
            except httpx.HTTPError as err:
                self.failures.append(repr(err))
            time.sleep(0.05)


def _big_film(width: int, height: int, value: int = 120) -> bytes:
    """A legitimate large film: a smooth gradient PNG (small file, `width × height` pixels to decode)."""
    row = np.linspace(value - 60, value + 60, width).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(row, (height, width))).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- decoding


def test_hostile_files_are_refused_in_a_worker_within_the_memory_budget(server, client, tmp_path):
    bombs = {
        "bomb.dcm": (hostile.jpeg_bomb_dicom(), "jpeg codestream says 30000 × 30000"),
        "j2k-bomb.dcm": (hostile.j2k_bomb_dicom(), "jpeg 2000 codestream says 12000 × 12000"),
        "deflated.dcm": (hostile.deflate_bomb_dicom(inflated_mib=300), "inflates to more than 256 mib"),
        "cut.jpg": (hostile.truncated_jpeg(), "cut short"),
    }
    workers = set(server.pids()[1:])
    assert len(workers) == 2, "the decode workers are the server's child processes"
    for name, (data, words) in bombs.items():
        path = tmp_path / name
        path.write_bytes(data)
        server.reset_peak()
        with ConfigWatch(server) as watch, pytest.raises(Exception) as caught:
            client.predict(handle_file(str(path)), api_name="/check")
        assert words in str(caught.value).lower(), f"{name}: {caught.value}"
        print(f"{name}: server peak +{server.peak_rise() / 2**20:.0f} MB over its RSS; "
              f"app processes {server.rss() / 2**30:.2f} GB")  # fmt: skip
        assert server.peak_rise() < PER_UPLOAD_RSS, name
        assert server.rss() < TOTAL_RSS, name
        assert watch.latencies and not watch.failures, f"{name}: page loads failed while it was refused"
    assert not server.files()


def test_a_large_film_is_decoded_in_a_worker_and_only_the_model_resolution_is_held(server, client, tmp_path):
    film = tmp_path / "large-film.png"
    film.write_bytes(_big_film(7000, 7000))  # 49 megapixels: just under the limit
    server.reset_peak()
    with ConfigWatch(server) as watch:
        preview, _ = client.predict(handle_file(str(film)), api_name="/check")
    assert "PNG, 7000×7000" in preview and "models see 112×112" in preview
    peak, total = server.peak_rise() / 2**20, server.rss() / 2**30
    workers = sum(_status_bytes(pid, "VmHWM:") for pid in server.pids()[1:])  # the decoders' peaks, together
    print(f"49 MP film: server peak +{peak:.0f} MB over its RSS; app processes {total:.2f} GB; "
          f"decode workers' peaks {workers / 2**30:.2f} GB")  # fmt: skip
    assert _status_bytes(server.process.pid, "VmRSS:") + workers < TOTAL_RSS
    assert server.peak_rise() < PER_UPLOAD_RSS  # the 49 MP decode happened in a worker
    assert server.rss() < TOTAL_RSS
    assert watch.latencies and not watch.failures and max(watch.latencies) < 5  # answered, not queued behind it


def test_many_sessions_hold_little(server, tmp_path):
    """Each session holds its image at the models' resolution: 24 visitors with 4-megapixel films add little."""
    film = tmp_path / "film.png"
    film.write_bytes(_big_film(2000, 2000))
    before = _status_bytes(server.process.pid, "VmRSS:")  # the server itself (the workers decode and let go)
    for _ in range(24):
        Client(server.url, verbose=False).predict(handle_file(str(film)), api_name="/check")
    grown = _status_bytes(server.process.pid, "VmRSS:") - before
    print(f"24 sessions holding a 4 MP film each: server RSS +{grown / 2**20:.1f} MB")
    assert grown < 24 * 4 * 2**20 / 2  # under half of what the originals (4 MB each) would need


def test_two_visitors_decode_at_once_and_each_gets_their_own_image(server, tmp_path):
    films = {"wide.png": (3000, 1500), "tall.png": (1500, 3000)}
    for name, (width, height) in films.items():
        (tmp_path / name).write_bytes(_big_film(width, height))

    def check(name: str) -> str:
        return Client(server.url, verbose=False).predict(handle_file(str(tmp_path / name)), api_name="/check")[0]

    with ThreadPoolExecutor(2) as pool:
        previews = dict(zip(films, pool.map(check, films), strict=True))
    for name, (width, height) in films.items():
        assert f"PNG, {width}×{height}" in previews[name]


def test_a_preambleless_dicom_is_read(server, client, tmp_path):
    old = tmp_path / "old-film"  # a DICOM without preamble, and without a name that says so
    old.write_bytes(hostile.preambleless_dicom(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))))
    preview, _ = client.predict(handle_file(str(old)), api_name="/check")
    assert "DICOM, 64×64" in preview


# --------------------------------------------------------------------------------------------- privacy


def test_identical_uploads_at_once_each_get_their_own_file(server, tmp_path):
    path = tmp_path / "same.png"
    Image.new("L", (64, 64), 77).save(path)

    def check(_: int) -> str:
        return Client(server.url, verbose=False).predict(handle_file(str(path)), api_name="/check")[0]

    with ThreadPoolExecutor(8) as pool:
        previews = list(pool.map(check, range(8)))
    assert all("PNG, 64×64" in preview for preview in previews)
    assert not server.files()


def test_a_sessions_image_is_gone_after_its_time_to_live(server, tmp_path):
    path = server.upload("held.png", _big_film(300, 200))
    session = "retention-probe"
    event, output = server.call("check", [_file(path), *_settings()], session)
    assert event == "complete", output
    assert not Path(path).exists()  # the file went with the check; the session holds the decoded image
    event, output = server.call("compare", [_file(path), *_settings(max_new_tokens=16)], session)
    assert event == "complete", output  # compared from what the session holds
    event, output = server.call("compare", [_file(path), *_settings(max_new_tokens=16)], "another-session")
    assert event == "error" and "no longer on the server" in str(output)  # another visitor cannot use it
    time.sleep(TTL + 0.2)  # expired: none is held past its time to live (the sweeper's test: test_sessions.py)
    event, output = server.call("compare", [_file(path), *_settings(max_new_tokens=16)], session)
    assert event == "error" and "no longer on the server" in str(output), output


def test_no_upload_outlives_its_request_whatever_the_path(server, client, tmp_path):
    image = tmp_path / "audit.png"
    Image.new("L", (64, 64), 33).save(image)
    # Refused for its settings (the page's check, and /compare).
    with pytest.raises(Exception, match="Unknown prompt"):
        client.predict(handle_file(str(image)), "nonsense", api_name="/check")
    with pytest.raises(Exception, match="Unknown prompt"):
        client.predict(handle_file(str(image)), "nonsense", api_name="/compare")
    assert not server.files()
    # Refused as not an image.
    (tmp_path / "notes.png").write_bytes(b"not an image")
    with pytest.raises(Exception, match="not a PNG"):
        client.predict(handle_file(str(tmp_path / "notes.png")), api_name="/compare")
    assert not server.files()
    # Checked and never compared.
    client.predict(handle_file(str(image)), api_name="/check")
    assert not server.files()
    # Refused by Gradio itself (a join without a session): the request's uploads go with it.
    path = server.upload("unused.png", image.read_bytes())
    answer = httpx.post(f"{server.url}gradio_api/queue/join", json={"data": [_file(path)], "fn_index": 0})
    assert answer.status_code != 200 and not Path(path).exists()
    # Cancelled while queued behind another generation.
    busy = client.submit(handle_file(str(image)), max_new_tokens=256, api_name="/compare")
    waiting = Client(server.url, verbose=False).submit(handle_file(str(image)), api_name="/compare")
    time.sleep(1.0)
    waiting.cancel()
    busy.result(timeout=120)
    _wait_until(lambda: not server.files(), "a cancelled request's upload was kept")
    # Queue full: 16 places; the requests refused at the door lose their uploads at once.
    jobs = [Client(server.url, verbose=False).submit(handle_file(str(image)), max_new_tokens=16, api_name="/compare")
            for _ in range(24)]  # fmt: skip
    outcomes = []
    for job in jobs:
        try:
            job.result(timeout=300)
            outcomes.append("done")
        except Exception as err:  # gradio_client's QueueError
            outcomes.append(type(err).__name__)
    assert "done" in outcomes and "QueueError" in outcomes, outcomes
    assert not server.files()


def _wait_until(condition, message: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def test_aborted_and_oversized_uploads_leave_nothing(server):
    before = {*server.uploads.rglob("*"), *server.tmp.rglob("*")}
    host, port = server.url.removeprefix("http://").rstrip("/").split(":")
    boundary = "probe"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="cut.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()  # fmt: skip
    with socket.create_connection((host, int(port))) as conn:  # says 5 MB, sends 1 MB, hangs up
        conn.sendall(
            f"POST /gradio_api/upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {5 * 2**20}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            + head
            + b"\0" * 2**20
        )
        time.sleep(0.5)
    time.sleep(0.5)
    assert {*server.uploads.rglob("*"), *server.tmp.rglob("*")} == before, "an aborted upload left a file behind"

    def body():  # more than the limit, whatever a Content-Length header would say
        yield head
        for _ in range(101):
            yield b"\0" * 2**20
        yield f"\r\n--{boundary}--\r\n".encode()

    answer = httpx.post(f"{server.url}gradio_api/upload", content=body(), timeout=60,
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    assert answer.status_code == 413 and "100 MB" in answer.text
    assert {*server.uploads.rglob("*"), *server.tmp.rglob("*")} == before
    # Gradio's other multipart routes would write the file where the app never looks: refused unread.
    for route in ("process_recording", "component_server", "queue/join"):
        answer = httpx.post(f"{server.url}gradio_api/{route}", files=[("video", ("v.mp4", b"\0" * 2**20))])
        assert answer.status_code == 415 and "uploaded to /gradio_api/upload only" in answer.text, route
    assert {*server.uploads.rglob("*"), *server.tmp.rglob("*")} == before


# --------------------------------------------------------------------------------------- malformed calls


def test_malformed_api_calls_are_messages(server, client):
    path = server.upload("probe.png", load_examples()[0].path.read_bytes())
    nan = httpx.post(f"{server.url}gradio_api/call/compare", timeout=30, headers={"Content-Type": "application/json"},
                     content=json.dumps({"data": [_file(path), "own", False, float("nan"), 0.9, 64]}))  # fmt: skip
    event_id = nan.json()["event_id"]
    text = httpx.get(f"{server.url}gradio_api/call/compare/{event_id}", timeout=60).text
    assert "temperature must be a finite number" in text and "NaN" not in text
    path = server.upload("probe.png", load_examples()[0].path.read_bytes())
    event, output = server.call("compare", [_file(path), ["a", "list"], False, 0.7, 0.9, 64])
    assert event == "error" and "prompt must be a prompt key" in str(output)
    for not_ours in (str(server.uploads), "/etc/passwd", "relative.png"):
        event, output = server.call("compare", [_file(not_ours), *_settings()])
        assert event == "refused" and "uploaded to this server" in json.dumps(output), not_ours
    event, output = server.call("compare", [{"path": 42, "meta": {"_type": "gradio.FileData"}}, *_settings()])
    assert event == "refused"
    huge = httpx.post(f"{server.url}gradio_api/call/compare", json={"data": [None, "x" * 2**20]}, timeout=30)
    assert huge.status_code == 422 and len(huge.text) < 500
    echo = httpx.post(f"{server.url}gradio_api/queue/join", json={"data": [], "fn_index": "Z" * 60_000})
    assert echo.status_code == 422 and "ZZZZ" not in echo.text  # FastAPI's validation answer, without the echo
    # Files where the endpoint takes none, too few values, two files, a malformed file object: messages, and the
    # uploads named are deleted with the refusal.
    for data, words in [
        (lambda p: [None, _file(p), False, 0.7, 0.9, 16], "Only the upload input takes a file"),
        (lambda p: [_file(p)], "takes 6 values"),
        (lambda p: [[_file(p), _file(p)], *_settings()], "must be one file object"),
        (lambda p: [{**_file(p), "size": "not a number"}, *_settings()], "must be one file object"),
    ]:
        path = server.upload("probe.png", load_examples()[0].path.read_bytes())
        event, output = server.call("compare", data(path))
        if words:
            assert event == "refused" and words in json.dumps(output), (words, output)
        _wait_until(lambda path=path: not Path(path).exists(), f"the upload of a refused request was kept ({words})")
    with pytest.raises(Exception, match="needs a click on one of the 6 gallery examples"):
        client.predict(api_name="/example")


def test_no_request_leaves_the_machine_for_a_url_input(server):
    urls = (
        "http://probe.invalid/film.png",
        "https://probe.invalid/film.dcm",
        "//probe.invalid/x",
        "ftp://probe.invalid/x",
    )
    for url in urls:
        event, output = server.call("compare", [_file(url), *_settings()])
        assert event == "refused" and "not fetched from URLs" in json.dumps(output), url
        join = httpx.post(f"{server.url}gradio_api/queue/join",
                          json={"data": [_file(url), *_settings()], "fn_index": 0, "session_hash": "dns"})  # fmt: skip
        assert join.status_code == 422
    for url in ("http://probe-get.invalid/x.png", "//probe-get.invalid/x.png"):  # Gradio would fetch these
        for method in ("GET", "HEAD"):
            answer = httpx.request(method, f"{server.url}gradio_api/file={url}")
            assert answer.status_code == 403 and "probe-get" not in answer.text, (method, url)
    assert httpx.get(f"{server.url}gradio_api/proxy=http://probe-get.invalid/").status_code == 403
    # Gradio's run history would upload a run to a Hugging Face bucket a client names in a header: it is off.
    assert httpx.get(f"{server.url}config").json()["run_history"] is False
    path = server.upload("history.png", load_examples()[0].path.read_bytes())
    answer = httpx.post(f"{server.url}gradio_api/call/check", headers={"x-gradio-history-bucket": "probe/bucket"},
                        json={"data": [_file(path), *_settings()]})  # fmt: skip
    assert answer.status_code == 200
    httpx.get(f"{server.url}gradio_api/call/check/{answer.json()['event_id']}", timeout=60)
    looked_up = set(server.dns_log.read_text().split()) if server.dns_log.exists() else set()
    assert looked_up <= LOCAL_HOSTS, f"the server resolved {looked_up - LOCAL_HOSTS}"


def test_the_log_has_one_line_per_refusal_and_no_traceback(server):
    log = server.log.read_text()  # every test above has run against this server (tests run in file order)
    assert "Traceback" not in log
    assert "refused: Unknown prompt" in log
    assert max(len(line) for line in log.splitlines()) < 400
