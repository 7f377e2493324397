"""The generation budget: one per checkpoint, recorded in its model set (the GRPO recipe's max_completion_length),
and the same for validation, evaluation, `predict` and the app unless a command asks for another."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from chexreason.app.compare import Comparer
from chexreason.data.phantom import generate
from chexreason.modeling import GenerationSettings, ModelSetError, load_model_set, read_model_set
from chexreason.results import load_results
from train import evaluate
from train.configs import EvaluateConfig

REPO = Path(__file__).resolve().parents[1]
BUDGETS = {"base": 5, "sft": 14, "grpo": 9}  # different on purpose: one generate call serves all three


def _with_budgets(tiny_set: Path, budgets: dict[str, int], name: str = "budgets.yaml") -> Path:
    spec = yaml.safe_load(tiny_set.read_text())
    for checkpoint in spec["checkpoints"]:
        checkpoint["max_new_tokens"] = budgets[checkpoint["name"]]
    path = tiny_set.parent / name  # beside the set, so its relative paths resolve
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def budgeted(tiny_set):
    return load_model_set(_with_budgets(tiny_set, BUDGETS))


def test_each_row_ends_at_its_checkpoints_budget_in_one_batch(budgeted):
    images = [phantom.image for phantom in generate("a", 2, seed=0, size=96)]
    together = budgeted.complete_batch(images, batch_size=2)
    for column, name in enumerate(budgeted.checkpoints):
        alone = budgeted.complete_batch(images, [name], settings=GenerationSettings(BUDGETS[name]))
        assert [row[column] for row in together] == [row[0] for row in alone], name
        for row in together:  # the random model never stops: every answer is cut off at exactly its budget
            assert row[column].n_tokens == BUDGETS[name] and row[column].truncated
    asked = budgeted.complete_batch(images[:1], settings=GenerationSettings(3))  # a number is every row's budget
    assert [c.n_tokens for c in asked[0]] == [3, 3, 3]


def test_budgets_are_read_and_checked(tiny_set):
    spec = read_model_set(_with_budgets(tiny_set, BUDGETS))
    assert {c.name: c.max_new_tokens for c in spec.checkpoints} == BUDGETS and spec.largest_budget == 14
    assert {c.max_new_tokens for c in read_model_set(tiny_set).checkpoints} == {1024}  # unrecorded: the paper's
    for bad in (0, "192", 1.5):
        with pytest.raises(ModelSetError, match="checkpoint 'base': 'max_new_tokens' must be a whole number"):
            read_model_set(_with_budgets(tiny_set, {**BUDGETS, "base": bad}, "bad.yaml"))


def test_evaluation_uses_each_checkpoints_recorded_budget(tiny_set, data_recipe, tmp_path):
    assert EvaluateConfig(models="tiny").max_new_tokens is None  # no fixed default that could cut answers off
    out = tmp_path / "eval.json"
    evaluate.main(["--models", str(_with_budgets(tiny_set, BUDGETS)), "--data_config", str(data_recipe),
                   "--limit", "2", "--n_resamples", "20", "--out", str(out)])  # fmt: skip
    results = load_results(out)
    assert {run.checkpoint: run.max_new_tokens for run in results.runs} == BUDGETS
    assert results.generation.max_new_tokens is None  # budgets differ: each run says its own
    assert all(r.n_tokens == BUDGETS[r.checkpoint] and r.truncated for r in results.iter_records())
    assert all(run.truncation_rate == 1.0 for run in results.runs)


def test_the_app_starts_at_the_sets_budget(budgeted):
    comparer = Comparer(budgeted)
    assert comparer.default_budget == 14
    default = comparer._decoding("own", False, 0.8, 0.95, comparer.default_budget)["settings"]
    assert default.max_new_tokens is None  # left at the default: each checkpoint its own budget, as evaluated
    assert comparer._decoding("own", False, 0.8, 0.95, 32)["settings"].max_new_tokens == 32


def test_predict_defaults_to_the_sets_budget():
    from chexreason.predict import build_parser

    args = build_parser().parse_args(["x.png", "--models", "tiny", "--out", "o.csv"])
    assert args.max_new_tokens is None


def test_the_bundled_set_records_its_grpo_recipes_budget_and_was_evaluated_with_it():
    recipe = yaml.safe_load((REPO / "train/recipes/tiny/grpo.yaml").read_text())
    spec = read_model_set(REPO / "checkpoints/tiny/model_set.yaml", check_paths=False)
    assert {c.max_new_tokens for c in spec.checkpoints} == {recipe["max_completion_length"]}
    results = load_results(REPO / "checkpoints/tiny/eval.json")
    assert results.generation.max_new_tokens == recipe["max_completion_length"]
    assert all(run.max_new_tokens == recipe["max_completion_length"] for run in results.runs)
