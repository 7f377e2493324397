"""`python -m train.evaluate`: every checkpoint on every test split, results that validate and re-score."""

import pytest

from chexreason.metrics import score
from chexreason.results import load_results
from train import evaluate


@pytest.fixture(scope="module")
def results(tiny_set, data_recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    argv = ["--models", str(tiny_set), "--data_config", str(data_recipe), "--limit", "3", "--n_resamples", "50",
            "--max_new_tokens", "12", "--out", str(out)]  # fmt: skip
    evaluate.main(argv)
    return load_results(out)  # the loader validates the schema


def test_every_checkpoint_on_every_test_split(results):
    assert {(r.checkpoint, r.dataset) for r in results.runs} == {
        (c, d) for c in ("base", "sft", "grpo") for d in ("test_phantom_a", "test_phantom_b")
    }
    labels = {r.dataset: r.label_set for r in results.runs}
    assert labels == {"test_phantom_a": "chexpert14", "test_phantom_b": "nih9"}
    pairs = {(c.dataset, c.baseline, c.candidate) for c in results.comparisons}
    assert ("test_phantom_a", "sft", "grpo") in pairs and ("test_phantom_b", "base", "sft") in pairs


def test_stored_metrics_rescore_from_stored_predictions(results):
    for run in results.runs:
        truth = [p["truth"] for p in run.predictions]
        predicted = [p["predicted"] for p in run.predictions]
        assert len(truth) == 3
        assert score(truth, predicted, run.label_set)["macro_f1"] == pytest.approx(run.metrics["macro_f1"])


def test_unknown_split_is_a_message(tiny_set, data_recipe):
    with pytest.raises(SystemExit, match="no split"):
        evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--datasets", "test_mars"])


def test_prompt_sweep_on_one_checkpoint(tiny_set, data_recipe, tmp_path):
    # The paper's Table 1: one checkpoint under several prompt variants; no checkpoint comparisons.
    out = tmp_path / "prompts.json"
    evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--datasets", "test_phantom_a",
                   "--limit", "2", "--n_resamples", "20", "--max_new_tokens", "8", "--checkpoint", "sft",
                   "--prompts", "reasoning_a", "reasoning_narrative", "--out", str(out)])  # fmt: skip
    results = load_results(out)
    assert [(r.checkpoint, r.prompt) for r in results.runs] == [("sft", "reasoning_a"), ("sft", "reasoning_narrative")]
    assert results.comparisons == []


def test_unknown_prompt_or_checkpoint_is_a_message(tiny_set, data_recipe):
    with pytest.raises(SystemExit, match="unknown prompt"):
        evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--prompts", "reasoning_z"])
    with pytest.raises(SystemExit, match="no checkpoint"):
        evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--checkpoint", "rlhf",
                       "--prompts", "reasoning_a"])  # fmt: skip
