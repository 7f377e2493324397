"""The tiny recipe is the paper recipe at small scale (`train.parity`): each tiny recipe and its paper counterpart
differ only in declared scale, hardware and plumbing fields, the GRPO regime included; a run says how they
differ. Fast: recipes are parsed, nothing trains."""

import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from train import parity
from train.command_line import parse_recipe, parse_stage
from train.configs import (
    BaseStageConfig,
    DataConfig,
    EvaluateConfig,
    GRPOStageConfig,
    ModelArguments,
    SFTStageConfig,
)

TINY = Path("train/recipes/tiny")
# Each tiny recipe, the types its command parses, and the paper recipe it must name.
PAIRS = {
    "data.yaml": ((DataConfig,), "train/recipes/medgemma-4b/data_free_reasoning.yaml"),
    "sft.yaml": ((ModelArguments, SFTStageConfig), "train/recipes/medgemma-4b/sft_free_reasoning.yaml"),
    "grpo.yaml": ((ModelArguments, GRPOStageConfig), "train/recipes/medgemma-4b/grpo_hard.yaml"),
    "evaluate.yaml": ((EvaluateConfig,), "train/recipes/medgemma-4b/evaluate.yaml"),
}
ALL_TYPES = (DataConfig, ModelArguments, SFTStageConfig, GRPOStageConfig, EvaluateConfig, BaseStageConfig)


def test_every_tiny_recipe_but_the_base_names_its_paper_counterpart():
    # The base stage stands in for MedGemma's own pretraining: no paper recipe (its model is a scale field).
    assert {p.name for p in TINY.glob("*.yaml")} == {*PAIRS, "base.yaml"}
    for name, (_, paper) in PAIRS.items():
        assert yaml.safe_load((TINY / name).read_text())["paper_recipe"] == paper


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_a_tiny_recipe_differs_from_the_paper_recipe_only_in_declared_fields(name):
    types, paper = PAIRS[name]
    found = parity.differences(parity.parse_recipe_file(types, TINY / name), parity.parse_recipe_file(types, paper))
    undeclared = [d.line() for d in found if d.kind is None]
    assert not undeclared, "a difference in kind, not scale:\n" + "\n".join(undeclared)
    assert {d.kind for d in found} <= set(parity.KINDS) and found  # they do differ: at least in scale


def test_the_grpo_regime_is_the_same_and_off_policy():
    types, paper = PAIRS["grpo.yaml"]
    ours, theirs = parity.parse_recipe_file(types, TINY / "grpo.yaml"), parity.parse_recipe_file(types, paper)
    # 4 optimizer steps per sampling in both: the clip range acts on the last 3 (1 would be on-policy, clip inert).
    assert ours[parity.OPTIMIZER_STEPS_PER_SAMPLING] == theirs[parity.OPTIMIZER_STEPS_PER_SAMPLING] == 4
    assert ours["lr_scheduler_type"] == theirs["lr_scheduler_type"] == "constant"


def _mutated(tmp_path: Path, name: str, **changes) -> Path:
    """The tiny recipe `name` with `changes`, written to tmp_path (its paper_recipe still resolves)."""
    recipe = yaml.safe_load((TINY / name).read_text()) | changes
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize(
    ("name", "changes", "field"),
    [
        ("grpo.yaml", {"steps_per_generation": 1}, parity.OPTIMIZER_STEPS_PER_SAMPLING),  # on-policy: regime
        ("grpo.yaml", {"lr_scheduler_type": "linear"}, "lr_scheduler_type"),  # the state this issue found
        ("grpo.yaml", {"temperature": 1.0}, "temperature"),
        ("grpo.yaml", {"num_iterations": 2}, "num_iterations"),  # also the regime: 8 steps per sampling
        ("sft.yaml", {"lora_r": 8}, "lora_r"),
        ("sft.yaml", {"warmup_steps": 0.1}, "warmup_steps"),
        ("sft.yaml", {"max_length": 512}, "max_length"),  # a size, but None is "never truncate": truncation on
        ("grpo.yaml", {"save_strategy": "no"}, "save_strategy"),  # no saves: no best-checkpoint selection
        ("data.yaml", {"uncertainty_policy": "u-ones"}, "uncertainty_policy"),
        ("data.yaml", {"answer_format": "only_label"}, "answer_format"),
        ("evaluate.yaml", {"n_resamples": 100}, "n_resamples"),
    ],
)
def test_a_difference_in_kind_is_caught(tmp_path, name, changes, field):
    types, paper = PAIRS[name]
    found = parity.differences(
        parity.parse_recipe_file(types, _mutated(tmp_path, name, **changes)), parity.parse_recipe_file(types, paper)
    )
    undeclared = {d.field for d in found if d.kind is None}
    assert field in undeclared and undeclared <= {field, parity.OPTIMIZER_STEPS_PER_SAMPLING}


def test_the_declared_lists_name_real_fields_once():
    # A typo in a list would declare nothing (and leave the field it meant undeclared).
    fields = {f.name for t in ALL_TYPES for f in dataclasses.fields(t)} | {parity.OPTIMIZER_STEPS_PER_SAMPLING}
    for kind, names in parity.KINDS.items():
        assert names <= fields, f"{kind}: no such field {sorted(names - fields)}"
    assert not (parity.SCALE & parity.HARDWARE or parity.SCALE & parity.PLUMBING or parity.HARDWARE & parity.PLUMBING)
    assert parity.OPTIMIZER_STEPS_PER_SAMPLING not in parity.SCALE | parity.HARDWARE | parity.PLUMBING


def test_a_run_prints_the_declared_differences_with_both_values(caplog):
    with caplog.at_level(logging.INFO, logger="train.parity"):
        parse_recipe("train.sft", (ModelArguments, SFTStageConfig), ["--config", str(TINY / "sft.yaml")])
    text = caplog.text
    assert "differs from its paper recipe train/recipes/medgemma-4b/sft_free_reasoning.yaml" in text
    assert "learning_rate: 0.002 here, 5e-05 in the paper recipe" in text and "UNDECLARED" not in text
    assert "use_cpu: True here, False in the paper recipe" in text  # the paper's own value, though parsed on a CPU


def test_a_run_warns_of_an_undeclared_override(caplog):
    with caplog.at_level(logging.INFO, logger="train.parity"):
        parse_recipe("train.grpo", (ModelArguments, GRPOStageConfig),
                     ["--config", str(TINY / "grpo.yaml"), "--temperature", "1.0"])  # fmt: skip
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "temperature differs from the paper recipe" in warnings[0]


def test_a_paper_recipe_that_does_not_exist_is_a_message(tmp_path):
    recipe = _mutated(tmp_path, "evaluate.yaml", paper_recipe=str(tmp_path / "nowhere.yaml"))
    with pytest.raises(SystemExit, match=r"paper_recipe .*nowhere\.yaml: no such recipe file"):
        parse_recipe("train.evaluate", (EvaluateConfig,), ["--config", str(recipe)])


def test_a_paper_recipe_names_no_counterpart_and_prints_nothing(caplog):
    with caplog.at_level(logging.INFO, logger="train.parity"):
        parse_recipe("train.evaluate", (EvaluateConfig,), ["--config", "train/recipes/medgemma-4b/evaluate.yaml"])
    assert not caplog.records


def test_a_stage_also_reports_the_data_recipe_it_trains_on(caplog):
    with caplog.at_level(logging.INFO, logger="train.parity"):
        parse_stage("train.sft", (ModelArguments, SFTStageConfig), ["--config", str(TINY / "sft.yaml")])
    assert "image_size: 224 here, 256 in the paper recipe" in caplog.text  # the data recipe's differences


def test_parsing_the_paper_recipe_leaves_the_stages_process_state():
    # TrainingArguments resets accelerate's process-wide state for its own use_cpu: the paper recipe, parsed on a
    # CPU with use_cpu, must not move a GPU or DDP stage onto the CPU.
    from accelerate.state import AcceleratorState, PartialState
    from trl import TrlParser

    types, paper = PAIRS["grpo.yaml"]
    TrlParser(types).parse_args_and_config(args=["--config", str(TINY / "grpo.yaml"), "--use_cpu", "false"])
    before = dict(PartialState._shared_state), dict(AcceleratorState._shared_state)
    parity.parse_recipe_file(types, paper)
    assert (dict(PartialState._shared_state), dict(AcceleratorState._shared_state)) == before
