"""`python -m chexreason.predict`: files found by content, batched labelling, CSV/JSONL rows, unreadable files.

Uses the session's tiny model set from test_modeling.py (built once).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from chexreason.predict import FIELDS, find_files, main

REAL_CXR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-cxr"
CHECKPOINTS = ("base", "sft", "grpo")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """As in test_modeling.py: one intra-op thread is much faster for the tiny model on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _dicom_bytes(pixels: np.ndarray) -> bytes:
    """An uncompressed MONOCHROME2 DICOM (Explicit VR Little Endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.set_pixel_data(pixels, "MONOCHROME2", 12)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 PNGs (one RGBA), a DICOM without extension two folders down, a corrupt PNG, and a hidden file."""
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(root / "a.png")
    (root / "sub" / "deep").mkdir(parents=True)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(root / "sub" / "b.png")
    ramp = np.tile(np.linspace(0, 4095, 64, dtype=np.uint16), (64, 1))
    (root / "sub" / "deep" / "scan").write_bytes(_dicom_bytes(ramp))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (root / ".DS_Store").write_bytes(b"\0" * 16)
    return root


def _run(tmp_path: Path, inputs: list[str], tiny_set: Path, out: str, *extra: str) -> Path:
    path = tmp_path / out
    argv = [*inputs, "--models", str(tiny_set), "--out", str(path), "--max-new-tokens", "8", "--batch-size", "2"]
    assert main([*argv, "--no-progress", *extra]) == 0
    return path


def test_find_files_recurses_skips_hidden_and_deduplicates(scans: Path):
    files = find_files([scans, scans / "a.png"])
    assert [f.relative_to(scans).as_posix() for f in files] == ["a.png", "broken.png", "sub/b.png", "sub/deep/scan"]


def test_csv_rows_and_the_unreadable_file(scans: Path, tiny_set: Path, tmp_path: Path, capsys):
    path = _run(tmp_path, [str(scans)], tiny_set, "preds.csv")
    with path.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == FIELDS
    names = ["a.png", "broken.png", "sub/b.png", "sub/deep/scan"]
    assert [(Path(r["file"]).relative_to(scans).as_posix(), r["checkpoint"]) for r in rows] == [
        (name, checkpoint) for name in names for checkpoint in CHECKPOINTS
    ]
    for row in rows:
        if row["file"].endswith("broken.png"):  # reported with the loader's message, not fatal
            assert row["parseable"] == row["valid"] == row["labels"] == row["output"] == ""
            assert "PNG" in row["error"]
        else:
            assert row["parseable"] in {"True", "False"} and row["valid"] in {"True", "False"}
            assert row["prompt"] == "free_reasoning"
            if row["parseable"] == "False":
                assert row["error"]
    out = capsys.readouterr().out
    assert "Read 3 of 4 files (1 unreadable)." in out
    assert all(f"  {name}: 3 outputs, fail rate" in out for name in CHECKPOINTS)


def test_jsonl_keeps_lists_and_matches_csv(scans: Path, tiny_set: Path, tmp_path: Path):
    csv_path = _run(tmp_path, [str(scans)], tiny_set, "preds.csv")
    jsonl_path = _run(tmp_path, [str(scans)], tiny_set, "out/preds.jsonl")
    records = [json.loads(line) for line in jsonl_path.read_text(encoding="utf-8").splitlines()]
    with csv_path.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert len(records) == len(rows) == 12
    for record, row in zip(records, rows, strict=True):
        assert isinstance(record["labels"], list) and "; ".join(record["labels"]) == row["labels"]
        assert record["output"] == row["output"]  # greedy: the same text twice
        if record["file"].endswith("broken.png"):
            assert record["parseable"] is None and record["valid"] is None and record["error"]
        else:
            assert isinstance(record["parseable"], bool)


def test_prompt_override_applies_to_every_checkpoint(scans: Path, tiny_set: Path, tmp_path: Path):
    path = _run(tmp_path, [str(scans / "a.png")], tiny_set, "p.jsonl", "--prompt", "only_label")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in records] == ["only_label"] * 3


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["missing-folder", "--out", "x.csv"], "no such file or folder"),
        (["{scans}", "--out", "x.txt"], "--out must end in .csv or .jsonl"),
        (["{scans}", "--out", "x.csv", "--prompt", "nope"], "unknown prompt 'nope'"),
        (["{scans}", "--out", "x.csv", "--batch-size", "0"], "at least 1"),
        (["{scans}", "--out", "x.csv", "--dtype", "float99"], "--dtype must be a torch dtype"),
        (["{scans}", "--out", "x.csv", "--models", "no-such-set"], "no model set named 'no-such-set'"),
        (["--out", "x.csv"], "the following arguments are required: inputs"),
    ],
)
def test_usage_errors_exit_2(arguments, message, scans: Path, tiny_set: Path, tmp_path: Path, capsys):
    argv = [a.format(scans=scans) for a in arguments]
    if "--models" not in argv:
        argv += ["--models", str(tiny_set)]
    argv = [str(tmp_path / a) if a.startswith("x.") else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_real_chest_xrays(tiny_set: Path, tmp_path: Path):
    if not REAL_CXR.is_dir():
        pytest.skip(f"{REAL_CXR} not present: the real-image run needs the shared real-cxr files")
    files = sorted(str(p) for p in REAL_CXR.iterdir() if p.is_file())
    assert len(files) == 4
    path = _run(tmp_path, files, tiny_set, "real.jsonl")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 4 * 3
    assert all(isinstance(r["parseable"], bool) for r in records), [r["error"] for r in records]
