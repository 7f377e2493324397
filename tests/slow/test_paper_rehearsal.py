"""The paper path rehearsed (`python -m benchmarks.paper_rehearsal`, also `python -m benchmarks.paper_step --smoke`):
every MedGemma-4B recipe with only declared scale, hardware and plumbing overrides, on a shrunk random MedGemma —
the four data builds on real-format files, SFT in the four formats, GRPO hard and nuanced, the evaluation of the
paper's model set and the app on it."""

import json

import pytest

from benchmarks import paper_step
from chexreason.results import load_results
from train import parity

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # ~2 min on 2 cores

STAGES = [
    *[f"{stage} ({fmt})" for fmt in ("free_reasoning", "only_label", "reasoning_a", "reasoning_narrative")
      for stage in ("data", "SFT")],
    "GRPO (hard)", "GRPO (nuanced)", "evaluate",
]  # fmt: skip


def test_every_paper_recipe_runs_at_small_scale(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    done = paper_step.main(["--smoke", "--workdir", str(tmp_path)])
    runs = {label: found for label, found, _ in done}
    assert [label for label in runs if label in STAGES] == STAGES  # every recipe, in order
    for label in STAGES:  # only declared knobs changed (the run refuses others; checked here again)
        assert runs[label] and all(d.kind in parity.KINDS for d in runs[label]), label
    assert {d.field for d in runs["GRPO (hard)"] if d.kind == "scale"} >= {"max_completion_length"}
    assert "| **total** |" in capsys.readouterr().out

    for fmt in ("free_reasoning", "only_label", "reasoning_a", "reasoning_narrative"):
        manifest = json.loads((tmp_path / f"data_{fmt}" / "manifest.json").read_text())
        assert set(manifest["splits"]) >= {"sft_train", "sft_validation", "rl", "valid_chexpert", "test_chexpert",
                                           "test_nih"}  # fmt: skip
        assert (tmp_path / f"sft_{fmt}" / "adapter" / "adapter_config.json").exists()
    for reward in ("hard", "nuanced"):
        grpo = tmp_path / f"grpo_{reward}"
        assert (grpo / "adapter" / "adapter_config.json").exists() and (grpo / "best_adapter" / "best.json").exists()
        log = json.loads((grpo / "grpo_log.json").read_text())
        history = log["log_history"] if isinstance(log, dict) else log
        assert max(entry.get("step", 0) for entry in history) == 8  # 32 prompts x 4: 2 samplings, 8 steps
        validations = json.loads((grpo / "grpo_validation.json").read_text())
        assert [v["step"] for v in validations] == [4, 8]  # a best-checkpoint candidate after each sampling

    results = load_results(tmp_path / "paper_set" / "eval.json")
    assert set(results.checkpoints) == {"base", "sft", "grpo"}
    assert {r.dataset for r in results.runs} == {"test_chexpert", "test_nih"}
    assert all(r.max_new_tokens == 16 for r in results.runs)
