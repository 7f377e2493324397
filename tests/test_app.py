"""The app over real HTTP, driven by gradio_client: examples, real X-rays, streaming, bad input, the layout."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from dicom_files import make_dicom
from gradio_client import Client, handle_file
from PIL import Image

from chexreason.app import build_demo
from chexreason.app.examples import EXAMPLE_IDS, draw_examples, load_examples
from chexreason.app.rendering import agreement_html, labels_html
from chexreason.parsing import parse_completion

REPO = Path(__file__).resolve().parents[1]
REAL_CXR = REPO.parent / "shared" / "data" / "real-cxr"
CHECKPOINTS = ("base", "sft", "grpo")


@pytest.fixture(scope="module")
def served(app_url):
    return Client(app_url, verbose=False, download_files=False)


def _compare(client: Client, path: Path) -> tuple[list, list]:
    """Submit one comparison; returns every streamed update and the final outputs."""
    job = client.submit(handle_file(str(path)), api_name="/compare")
    updates = list(job)
    return updates, job.result()


def _check_three_answers(final: list) -> dict:
    summary = final[-1]
    assert list(summary["checkpoints"]) == list(CHECKPOINTS)
    for i, name in enumerate(CHECKPOINTS):
        text, chips = final[2 + 2 * i], final[3 + 2 * i]
        assert text and text == summary["checkpoints"][name]["text"]
        assert summary["checkpoints"][name]["parseable"], text  # the bundled checkpoints answer in their format
        assert 'class="chips"' in chips
    assert "<table" in final[-2]
    return summary


def test_example_is_marked_against_its_ground_truth(served, tmp_path):
    example = load_examples()[0]
    upload = tmp_path / "my-upload.png"  # another name: ground truth follows the bytes, not the file name
    upload.write_bytes(example.path.read_bytes())
    _, final = _compare(served, upload)
    summary = _check_three_answers(final)
    assert summary["ground_truth"] == list(example.truth) and summary["example"] == example.id
    assert "<img" in final[0] and "Bundled example" in final[1]
    assert any(kind in final[3 + 2 * 2] for kind in ('chip hit"', 'chip false-positive"', 'chip missed"'))


def test_an_upload_that_is_not_an_example_has_no_ground_truth(served, tmp_path):
    image = Image.open(load_examples()[0].path)
    image.putpixel((0, 0), 255 - image.getpixel((0, 0)))  # one pixel changed: no longer the bundled file
    image.save(tmp_path / "changed.png")
    _, final = _compare(served, tmp_path / "changed.png")
    assert _check_three_answers(final)["ground_truth"] is None
    assert 'chip hit"' not in "".join(map(str, final))


@pytest.mark.parametrize(
    "name", ["00000001_000.png", "00027426_000.png", "siim_pa_monochrome1.dcm", "siim_pa_monochrome2.dcm"]
)
def test_real_chest_xrays(served, name):
    if not REAL_CXR.is_dir():
        pytest.skip(f"real X-rays not found at {REAL_CXR} (../shared is not checked out)")
    _, final = _compare(served, REAL_CXR / name)
    summary = _check_three_answers(final)
    assert summary["image"]["format"] == ("DICOM" if name.endswith(".dcm") else "PNG")
    assert "lateral" not in final[1]


def test_answers_stream(served):
    updates, final = _compare(served, load_examples()[3].path)
    texts = [u[2 + 2 * 2] for u in updates if isinstance(u[2 + 2 * 2], str)]
    partial = [t for t in texts if t and t != final[2 + 2 * 2]]
    assert len(partial) >= 3, "the GRPO column should fill in over several updates"
    assert all(final[2 + 2 * 2].startswith(t.rstrip()) for t in partial[-3:])  # prefixes of the final answer


def test_lateral_dicom_is_warned_about(served, tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 256, dtype=np.uint16), (256, 1))
    path = tmp_path / "lateral.dcm"
    path.write_bytes(make_dicom(ramp, ViewPosition="LL"))
    _, final = _compare(served, path)
    assert "lateral (LL)" in final[1]
    _check_three_answers(final)


def _bad_inputs() -> dict[str, tuple[bytes, str]]:
    png = load_examples()[0].path.read_bytes()
    small = io.BytesIO()
    Image.new("L", (8, 8)).save(small, format="PNG")
    colour = make_dicom(np.zeros((64, 64, 3), np.uint8), "RGB", 8)
    frames = make_dicom(np.zeros((2, 64, 64), np.uint16), NumberOfFrames=2)
    return {
        "empty.png": (b"", "empty"),
        "notes.png": (b"these are my notes, not an image\n" * 10, "not a png, jpeg or dicom"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "tiny.png": (small.getvalue(), "at least 32"),
        "colour.dcm": (colour, "not greyscale"),
        "frames.dcm": (frames, "frames"),
    }


def test_bad_inputs_get_a_readable_error_and_the_app_keeps_serving(served, tmp_path):
    for name, (data, words) in _bad_inputs().items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(Exception) as caught:
            served.predict(handle_file(str(path)), api_name="/compare")
        message = str(caught.value)
        assert words in message.lower(), f"{name}: {message}"
        assert "Traceback" not in message
    _check_three_answers(_compare(served, load_examples()[1].path)[1])


def test_bad_settings_are_refused(served):
    with pytest.raises(Exception, match="max_new_tokens must be a whole number between 1 and 1024"):
        served.predict(handle_file(str(load_examples()[0].path)), max_new_tokens=0, api_name="/compare")
    example = handle_file(str(load_examples()[0].path))
    with pytest.raises(Exception, match="Unknown prompt 'nonsense'"):
        served.predict(example, prompt="nonsense", api_name="/compare")
    # Malformed API calls: each a message naming the setting, a long value not echoed back in full.
    with pytest.raises(Exception, match=r"Unknown prompt 'x{40}…'") as caught:
        served.predict(example, prompt="x" * 10_000, api_name="/compare")
    assert len(str(caught.value)) < 1000
    with pytest.raises(Exception, match="The request is larger than 64 KB") as caught:
        served.predict(example, prompt="x" * 100_000, api_name="/compare")
    assert len(str(caught.value)) < 1000
    with pytest.raises(Exception, match="sampling must be true or false"):
        served.predict(example, sampling="false", api_name="/compare")
    with pytest.raises(Exception, match="needs a click on one of the 6 gallery examples"):
        served.predict(api_name="/example")


def test_uploads_are_deleted_after_the_request(served, tmp_path):
    import gradio.utils

    path = tmp_path / f"probe-{uuid.uuid4().hex}.png"
    Image.new("L", (64, 64), 90).save(path)  # not a bundled example (those are kept: the gallery shares them)
    stored = Path(gradio.utils.get_upload_folder()).glob  # where the app stores uploads (other runs' too)
    before = set(stored("upload-*/*"))
    _compare(served, path)
    leftovers = set(stored("upload-*/*")) - before
    assert not leftovers, f"upload kept at {leftovers}"


def test_rejected_uploads_are_deleted_at_once(served, tmp_path):
    import gradio.utils

    path = tmp_path / f"rejected-{uuid.uuid4().hex}.png"
    path.write_bytes(b"not an image at all")
    stored = Path(gradio.utils.get_upload_folder()).glob
    before = set(stored("upload-*/*"))
    with pytest.raises(Exception, match="not a PNG"):
        served.predict(handle_file(str(path)), api_name="/check")  # the page's first step
    assert not set(stored("upload-*/*")) - before


def test_a_closed_tabs_image_is_dropped_at_once(app_url, tmp_path):
    """Gradio calls the app's unload handler when a tab's heartbeat stream ends: its session's image goes then, long
    before the 15-minute time to live (this server's)."""
    import raw_api

    path = raw_api.upload(app_url, "tab.png", load_examples()[3].path.read_bytes())
    settings = ["own", False, 0.7, 0.9, 16]
    assert raw_api.call(app_url, "check", [raw_api.file_input(path), *settings], "tab")[0] == "complete"
    assert raw_api.call(app_url, "compare", [raw_api.file_input(path), *settings], "tab")[0] == "complete"  # held
    raw_api.open_and_close_tab(app_url, "tab")
    deadline = time.monotonic() + 20
    while (answer := raw_api.call(app_url, "compare", [raw_api.file_input(path), *settings], "tab"))[0] == "complete":
        assert time.monotonic() < deadline, "the closed tab's image was still held"
        time.sleep(0.5)
    assert "no longer on the server" in str(answer[1])


def test_the_app_writes_nothing_beside_its_modules(served):
    # Gradio writes a .pyi stub beside any module that subclasses one of its components: the app subclasses none.
    assert not list((Path(__file__).parents[1] / "chexreason").rglob("*.pyi"))


def test_sampling_settings_reach_the_models(served):
    final = served.predict(
        handle_file(str(load_examples()[0].path)), "free_reasoning", True, 1.5, 1.0, 64, api_name="/compare"
    )
    assert all(final[2 + 2 * i] for i in range(3))


def test_layout_follows_the_model_set(tiny_set):
    """A two-checkpoint set gets two columns (built from the set, not hard-coded for base/SFT/GRPO)."""
    spec = yaml.safe_load(tiny_set.read_text())
    spec["checkpoints"] = spec["checkpoints"][:2]
    two = tiny_set.parent / "two_checkpoints.yaml"  # beside the set, so its relative paths resolve
    two.write_text(yaml.safe_dump(spec))
    config = json.dumps(build_demo(two).get_config_file(), default=str)
    shown = [c["name"] for c in spec["checkpoints"]]
    left_out = next(c for c in CHECKPOINTS if c not in shown)
    assert all(f"column-{name}" in config for name in shown) and f"column-{left_out}" not in config


def test_labels_and_agreement_rendering():
    unparseable = parse_completion("I am not sure what this is.")
    assert 'class="unparseable"' in labels_html(unparseable, truth=None)
    sft = parse_completion("<think>x</think><solution>Edema, Cardiomegaly</solution>")
    grpo = parse_completion("<think>x</think><solution>Edema</solution>")
    chips = labels_html(grpo, truth=("Edema", "Pleural Effusion"))
    assert 'chip hit" title="hit">Edema' in chips and 'chip missed" title="missed">Pleural Effusion' in chips
    table = agreement_html({"sft": "SFT", "grpo": "GRPO"}, {"sft": sft, "grpo": grpo}, truth=None)
    rows = table.split("<tr")
    assert any('class="disagree"' in row and "Cardiomegaly" in row for row in rows)
    assert not any('class="disagree"' in row and "Edema" in row for row in rows)
    injected = parse_completion("<think>x</think><solution><script>alert(1)</script></solution>")
    assert "<script>" not in labels_html(injected, truth=None)


def test_bundled_examples_are_the_first_test_phantoms_redrawn():
    for (_, png), example in zip(draw_examples(), load_examples(), strict=True):
        bundled = np.asarray(Image.open(example.path))
        assert np.array_equal(bundled, np.asarray(Image.open(io.BytesIO(png)))), example.id
    summary = json.loads((REPO / "checkpoints" / "tiny" / "eval.json").read_text())
    with (REPO / "checkpoints" / "tiny" / summary["records"]["file"]).open() as lines:
        records = [json.loads(line) for line in lines]  # one per (split, checkpoint, image)
    firsts = [r["source"] for r in records if r["checkpoint"] == "base" and r["index"] < 3]
    assert sorted(firsts) == sorted(EXAMPLE_IDS)
    truths = {r["source"]: r["truth"] for r in records}
    assert all(sorted(truths[e.id]) == sorted(e.truth) for e in load_examples())


def test_unloadable_model_set_is_a_message_not_a_traceback(tmp_path):
    run = subprocess.run(
        [sys.executable, "app.py", "--models", str(tmp_path / "missing.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "cannot load model set" in run.stderr and "Traceback" not in run.stderr


def test_no_public_tunnel_even_when_the_environment_asks(tiny_set, monkeypatch):
    import socket

    from chexreason.app import launch_options

    monkeypatch.setenv("GRADIO_SHARE", "true")  # Gradio reads this when `share` is not given
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo(tiny_set)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, **launch_options())
    try:
        assert demo.share is False and demo.share_url is None
    finally:
        demo.close()


def test_results_of_other_weights_are_flagged(tmp_path):
    """eval.json records the fingerprints of the weights it scored: a set whose weights changed since shows a
    warning on its Results tab (and only then)."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "tiny"
    shutil.copytree("checkpoints/tiny", copy)
    assert "results-stale" not in json.dumps(build_demo(copy / "model_set.yaml").get_config_file(), default=str)
    weights = copy / "grpo" / "adapter_model.safetensors"
    tensors = load_file(weights)
    first = next(iter(tensors))
    tensors[first] = tensors[first] + 1e-3  # GRPO trained again, say, and the set not evaluated again
    save_file(tensors, weights, metadata={"format": "pt"})
    config = json.dumps(build_demo(copy / "model_set.yaml").get_config_file(), default=str)
    assert "results-stale" in config and "scored other weights for grpo" in config
