"""`python -m benchmarks.paper_step --smoke`: the GPU benchmark's code path (random model from the MedGemma-4B
architecture, SFT then GRPO through the paper recipes) on a CPU, shrunk, so it works when a GPU is lent."""

import pytest

from benchmarks import paper_step

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # ~45 s on 2 cores


def test_paper_step_smoke_runs_both_paper_recipes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    paper_step.main(["--smoke", "--steps", "1", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| SFT", "| GRPO"))]
    assert len(rows) == 2 and all("| 1 |" in row and "GiB" in row for row in rows)
    assert (tmp_path / "sft" / "adapter" / "adapter_config.json").exists()  # GRPO started from this SFT adapter
    assert (tmp_path / "grpo" / "adapter" / "adapter_config.json").exists()
