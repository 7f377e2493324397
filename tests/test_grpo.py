"""The GRPO stage, a few steps on the random tiny model: the reference is the SFT policy, only the policy's LoRA
weights move, saved adapters stand alone, the nuanced reward's window survives a resume, the recipe holds the
paper's values."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from stage_runner import parity_reward

from chexreason.rewards import REWARD_FACTORIES

MAX_TOKENS = 16
PAPER_RECIPE = Path("train/recipes/tiny/grpo.yaml")


@pytest.fixture(scope="module", autouse=True)
def parity_reward_registered():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(REWARD_FACTORIES, "test_parity", lambda **options: parity_reward)
        yield


def _args(tiny: Path, sft: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(PAPER_RECIPE), "--model_name_or_path", str(tiny), "--sft_adapter", str(sft),
            "--sft_recipe", "", "--data_config", str(data), "--output_dir", str(out), "--export_dir", "",
            "--max_completion_length", str(MAX_TOKENS), "--per_device_train_batch_size", "4",  # 1 prompt x 4
            "--steps_per_generation", "1", "--lr_scheduler_type", "constant",  # a resume may extend max_steps
            "--per_device_eval_batch_size", "2", "--validation_samples", "2", "--max_train_samples", "4",
            "--logging_steps", "1", "--save_steps", "1", "--rewards", "nuanced", "test_parity", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def resumed_run(tiny, sft_adapter, data_recipe, tmp_path_factory):
    """`python -m train.grpo` for one step, interrupted, then resumed to step 2."""
    from train import grpo

    out = tmp_path_factory.mktemp("grpo")
    grpo.main(_args(tiny, sft_adapter, data_recipe, out, "--max_steps", "1"))
    first_window = _window(out / "checkpoint-1")
    (out / "adapter" / "adapter_config.json").unlink()  # as if the run had stopped after step 1
    grpo.main(_args(tiny, sft_adapter, data_recipe, out, "--max_steps", "2"))
    return out, first_window


@pytest.fixture(scope="module")
def library_run(tiny, sft_adapter, data_recipe, tmp_path_factory):
    """Two GRPO steps through `chexreason.training.grpo.build_grpo_run`, keeping the trainer for inspection."""
    from trl import TrlParser

    from chexreason.data.build import build_datasets, load_built
    from chexreason.prompts import get_answer_format
    from chexreason.training.grpo import build_grpo_run
    from train.configs import GRPOStageConfig, ModelArguments, read_data_config

    out = tmp_path_factory.mktemp("grpo-lib")
    argv = _args(tiny, sft_adapter, data_recipe, out, "--max_steps", "2", "--save_strategy", "no")
    model_args, config = TrlParser((ModelArguments, GRPOStageConfig)).parse_args_and_config(args=argv)
    data = read_data_config(config.data_config)
    build_datasets(data)
    run = build_grpo_run(model_args, config, load_built(data.output_dir), get_answer_format("free_reasoning"))
    run.train()
    return run


def _window(checkpoint: Path) -> list:
    return json.loads((checkpoint / "reward_state_rank0.json").read_text())["nuanced"]["window"]


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def _bare_base(tiny: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny, use_safetensors=True).eval()


def _as_adapter(name: str, adapter: str = "ref") -> str:
    """A key of a saved adapter file as it is named inside a PeftModel holding that adapter as `adapter`."""
    return name.replace(".weight", f".{adapter}.weight")


# ------------------------------------------------------------------------------------------------ tests


def test_reference_is_the_frozen_sft_adapter(library_run, sft_adapter, tiny):
    from peft import PeftModel
    from trl.trainer.utils import use_adapter

    from chexreason.training.grpo import POLICY, REFERENCE

    policy = library_run.policy
    assert set(policy.peft_config) == {POLICY, REFERENCE}
    sft = load_file(sft_adapter / "adapter_model.safetensors")
    parameters = dict(policy.named_parameters())
    for name, weight in sft.items():  # the reference still holds the SFT weights, after two optimizer steps
        assert torch.equal(parameters[_as_adapter(name)].detach(), weight), name
    optimized = {id(p) for group in library_run.trainer.optimizer.param_groups for p in group["params"]}
    ref_parameters = [p for name, p in parameters.items() if ".ref." in name]
    assert ref_parameters and not any(p.requires_grad or id(p) in optimized for p in ref_parameters)
    moved = [name for name, weight in sft.items() if not torch.equal(parameters[_as_adapter(name, "default")], weight)]
    assert moved  # while the policy has moved

    # The reference log-probs are those of the SFT model, not of the bare base.
    input_ids = torch.tensor([[2, 4, 100, 200, 300, 400, 5]])
    policy.eval()
    with use_adapter(policy, "ref"):  # how TRL computes the reference log-probs
        reference = _logits(policy, input_ids)
    sft_model = PeftModel.from_pretrained(_bare_base(tiny), sft_adapter).eval()
    torch.testing.assert_close(reference, _logits(sft_model, input_ids))
    assert not torch.allclose(reference, _logits(_bare_base(tiny), input_ids), atol=1e-3)
    assert not torch.allclose(reference, _logits(policy, input_ids), atol=1e-6)  # the policy is "default" again


def test_only_the_language_lora_moves(library_run, tiny):
    policy = library_run.policy
    base = _bare_base(tiny).state_dict()
    trained = {name.replace("base_layer.", ""): p for name, p in policy.get_base_model().state_dict().items()}
    frozen = {name: p for name, p in trained.items() if "lora_" not in name}
    assert set(frozen) == set(base)  # every base weight is there ...
    assert all(torch.equal(frozen[name], base[name]) for name in base)  # ... untouched, vision tower included
    assert any("vision_tower" in name for name in base)
    trainable = [name for name, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in name and "language_model" in name for name in trainable)


def test_saved_adapters_are_the_policy_alone(resumed_run, tiny):
    from peft import PeftModel

    out, _ = resumed_run
    input_ids = torch.tensor([[2, 4, 100, 200, 5]])
    for folder in (out / "adapter", out / "best_adapter"):
        weights = load_file(folder / "adapter_model.safetensors")
        assert weights and all("lora_" in name and ".ref" not in name for name in weights)
        assert not (folder / "ref").exists()
        model = PeftModel.from_pretrained(_bare_base(tiny), folder).eval()  # loads standalone
        assert list(model.peft_config) == ["default"]
        assert torch.isfinite(_logits(model, input_ids)).all()
    best = json.loads((out / "best_adapter" / "best.json").read_text())
    assert best["step"] in (1, 2) and 0 <= best["macro_f1"] <= 1 and best["label_set"] == "chexpert14"


def test_saved_final_adapter_is_the_trained_policy(library_run, tiny, tmp_path):
    from peft import PeftModel

    from chexreason.training.grpo import save_policy

    folder = save_policy(library_run.policy, tmp_path / "adapter")
    input_ids = torch.tensor([[2, 4, 100, 200, 5]])
    library_run.policy.eval()
    loaded = PeftModel.from_pretrained(_bare_base(tiny), folder).eval()
    torch.testing.assert_close(_logits(loaded, input_ids), _logits(library_run.policy, input_ids))


def test_nuanced_window_survives_resume(resumed_run, caplog):
    out, first_window = resumed_run
    assert len(first_window) == 4  # 1 prompt x 4 completions scored in step 1
    # Step 2 scored 4 more on top of the restored 4 (a fresh window would hold 4).
    assert len(_window(out / "checkpoint-2")) == len(first_window) + 4
    assert _window(out / "checkpoint-2")[:4] == first_window
    log = json.loads((out / "grpo_log.json").read_text())
    assert [entry["step"] for entry in log["validation"]] == [1, 2]  # the step-1 validation was restored too
    train_steps = [entry["step"] for entry in log["log_history"] if "reward" in entry]
    assert train_steps == [1, 2]  # restored from checkpoint-1's trainer state, step 1 not trained again
    first, second = (load_file(out / f"checkpoint-{n}" / "adapter_model.safetensors") for n in (1, 2))
    assert any(not torch.equal(first[name], second[name]) for name in first)  # training went on after resuming
    assert load_file(out / "checkpoint-2" / "ref" / "adapter_model.safetensors").keys() == first.keys()


def test_logs_hold_reward_kl_length_and_fail_rate(resumed_run):
    out, _ = resumed_run
    log = json.loads((out / "grpo_log.json").read_text())
    entry = next(e for e in log["log_history"] if e["step"] == 2 and "reward" in e)
    for key in ("reward", "kl", "completions/mean_length", "fail_rate", "rewards/nuanced_reward/mean",
                "nuanced/format", "nuanced/partial", "rewards/parity_reward/mean"):  # fmt: skip
        assert key in entry, key
    assert entry["fail_rate"] == 1.0  # a random model writes no answer block
    assert entry["nuanced/format"] == 100.0  # ... and pays the unparseable penalty
    assert log["best"]["macro_f1"] == max(v["macro_f1"] for v in log["validation"])


def test_logs_show_what_was_clipped_and_the_completions_as_scored(resumed_run):
    out, _ = resumed_run
    history = json.loads((out / "grpo_log.json").read_text())["log_history"]
    steps = [e for e in history if "loss" in e]
    assert steps and all(key in e for e in steps for key in ("clip_ratio/region_mean", "completions/clipped_ratio"))
    max_norm = yaml.safe_load(PAPER_RECIPE.read_text()).get("max_grad_norm", 1.0)  # 1.0: transformers' default
    for entry in steps:  # one step per log: the rate is whether this step's pre-clip norm exceeded max_grad_norm
        assert entry["grad_clip_rate"] == float(entry["grad_norm"] > max_norm)
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert {row["step"] for row in rows} >= {1, 2}
    for row in rows:
        assert set(row["rewards"]) == {"nuanced_reward", "parity_reward"}
        assert 0 < row["n_tokens"] <= MAX_TOKENS and row["completion"] and row["ground_truth"] is not None
        assert row["parseable"] is False and row["labels"] is None  # a random model writes no answer block


def test_rewards_read_the_tags_trl_drops(tiny):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from chexreason.training.grpo import FAIL_RATE, build_rewards, completion_decoder, trainer_rewards

    processor = AutoProcessor.from_pretrained(tiny)
    model = AutoModelForImageTextToText.from_pretrained(tiny, use_safetensors=True)
    answer = "<think>" + "x " * 10 + "</think><solution>Edema</solution>"
    ids = [processor.tokenizer(text, add_special_tokens=False)["input_ids"] for text in (answer, "no answer")]
    ids[0].append(processor.tokenizer.convert_tokens_to_ids("<end_of_turn>"))  # TRL keeps the stop token
    trl_text = processor.batch_decode(ids, skip_special_tokens=True)  # what GRPOTrainer hands the rewards
    assert "<solution>" not in trl_text[0]
    rewards = build_rewards(["hard"], "think_solution", length_threshold=50, length_penalty=0.1)
    (hard,) = trainer_rewards(rewards, completion_decoder(model, processor), "think_solution")
    logged = {}
    scores = hard(trl_text, completion_ids=ids, ground_truth=[["Edema"], ["Edema"]], log_metric=logged.__setitem__)
    assert scores == pytest.approx([0.9, 0.0])  # valid, exact, shorter than 50 tokens: 1 - λ_len
    assert hard.__name__ == "hard_reward" and logged == {FAIL_RATE: 0.5}


def test_recipe_sets_the_papers_grpo_values():
    from trl import TrlParser

    from train.configs import PAPER_GRPO, GRPOStageConfig, ModelArguments

    recipe = yaml.safe_load(PAPER_RECIPE.read_text())
    assert set(PAPER_GRPO) <= set(recipe)  # set explicitly: TRL 1.16's defaults differ
    _, config = TrlParser((ModelArguments, GRPOStageConfig)).parse_args_and_config(
        args=["--config", str(PAPER_RECIPE)]
    )
    expected = {"loss_type": "dr_grpo", "beta": 0.15, "epsilon": 0.15, "epsilon_high": 0.22,
                "importance_sampling_level": "token", "scale_rewards": "none", "num_generations": 4,
                "temperature": 0.8, "top_p": 0.95, "use_bias_correction_kl": False,
                "vllm_importance_sampling_correction": False}  # fmt: skip
    assert expected.items() <= PAPER_GRPO.items()  # and more that the paper pins (tests/test_recipes.py)
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.paper_departures() == {}
    assert config.max_completion_length is not None and config.rewards == ["hard"]
    assert config.generation_batch_size % config.num_generations == 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--rewards", "hard", "jaccard"], "unknown reward 'jaccard'; choose from ['format', 'hard', 'nuanced'"),
        (["--rewards", "hard", "hard"], "no repeats"),
        (["--reward_weights", "1.0", "2.0"], "one weight per reward"),
        (["--validation_samples", "-1"], "validation_samples"),
        (["--data_config", "nope.yaml"], "does not exist"),
        (
            ["--model_name_or_path", "checkpoints/tiny/base", "--sft_adapter", "nowhere", "--sft_recipe", ""],
            "no SFT adapter at nowhere",
        ),
    ],
)
def test_grpo_config_errors_are_messages(tmp_path, override, message, data_recipe):
    from train import grpo

    argv = ["--config", str(PAPER_RECIPE), "--output_dir", str(tmp_path), "--data_config", str(data_recipe)]
    with pytest.raises(SystemExit) as exit_info:
        grpo.main([*argv, *override])
    assert str(exit_info.value).startswith("train.grpo: ") and message in str(exit_info.value)


def test_a_checkpoint_whose_validation_was_cut_short_is_validated_before_training_on(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from chexreason.prompts import get_prompt
    from chexreason.training.grpo import VALIDATION_JSON, BestPolicyCallback, ValidationSet

    processor = SimpleNamespace(tokenizer=SimpleNamespace(padding_side="right"))
    callback = BestPolicyCallback(ValidationSet([], [], "chexpert14", get_prompt("free_reasoning")), processor,
                                  tmp_path, max_new_tokens=8, batch_size=2)  # fmt: skip
    assert callback.processor.tokenizer.padding_side == "left" and processor.tokenizer.padding_side == "right"
    scores = dict.fromkeys(("micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall",
                            "fail_rate"), 0.5)  # fmt: skip
    # The run validated steps 2 and 4 (its history beside the checkpoints); checkpoint-4's own copy never came:
    # the kill came during its validation. A step-6 entry is from nowhere this resume can reach.
    history = [{"step": step, "macro_f1": f1, **scores} for step, f1 in ((2, 0.4), (4, 0.3), (6, 0.9))]
    (tmp_path / VALIDATION_JSON).write_text(json.dumps(history))
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert callback.restore(checkpoint) == history[:1] and callback.unvalidated == checkpoint
    validated = []
    monkeypatch.setattr(callback, "validate", lambda model, step, folder: validated.append((model, step, folder)))
    state = SimpleNamespace(is_world_process_zero=True, global_step=4)
    callback.on_train_begin(None, state, None, model="policy")
    assert validated == [("policy", 4, checkpoint)] and callback.unvalidated is None
    callback.on_train_begin(None, state, None, model="policy")  # once only
    assert len(validated) == 1
    (checkpoint / VALIDATION_JSON).write_text(json.dumps(history[:2]))
    assert callback.restore(checkpoint) == history[:2] and callback.unvalidated is None


def test_missing_sft_adapter_runs_the_sft_recipe_first(tmp_path, data_recipe, monkeypatch):
    from train import grpo, sft

    calls = []

    def fake_sft(argv):
        calls.append(argv)
        raise SystemExit("sft ran")

    monkeypatch.setattr(sft, "main", fake_sft)
    argv = ["--config", str(PAPER_RECIPE), "--output_dir", str(tmp_path), "--data_config", str(data_recipe),
            "--sft_adapter", str(tmp_path / "missing"), "--sft_recipe", "my/sft.yaml"]  # fmt: skip
    with pytest.raises(SystemExit, match="sft ran"):
        grpo.main(argv)
    assert calls == [["--config", "my/sft.yaml"]]


def test_the_recipe_chain_runs_only_what_is_missing(tmp_path, monkeypatch):
    """train.recipe: SFT's base_recipe runs only when its model is missing, GRPO's sft_recipe only when the SFT
    adapter is; a recipe without them runs nothing."""
    from types import SimpleNamespace

    from train import base, recipe, sft

    calls = []
    monkeypatch.setattr(base, "main", lambda argv: calls.append(("base", argv)))
    monkeypatch.setattr(sft, "main", lambda argv: calls.append(("sft", argv)))
    (tmp_path / "model").mkdir()
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    recipe.ensure_base(
        SimpleNamespace(model_name_or_path=str(tmp_path / "model")), SimpleNamespace(base_recipe="b.yaml")
    )
    recipe.ensure_sft(SimpleNamespace(sft_adapter=str(tmp_path / "adapter"), sft_recipe="s.yaml"))
    assert calls == []
    recipe.ensure_base(SimpleNamespace(model_name_or_path=str(tmp_path / "none")), SimpleNamespace(base_recipe=None))
    recipe.ensure_base(
        SimpleNamespace(model_name_or_path=str(tmp_path / "none")), SimpleNamespace(base_recipe="b.yaml")
    )
    recipe.ensure_sft(SimpleNamespace(sft_adapter=str(tmp_path / "model"), sft_recipe="s.yaml"))  # no adapter there
    assert calls == [("base", ["--config", "b.yaml"]), ("sft", ["--config", "s.yaml"])]


def test_export_bundles_a_loadable_evaluated_model_set(tiny, sft_adapter, data_recipe, tmp_path):
    # What the tiny recipe does at its end: base + SFT + best GRPO, logs, model_set.yaml, eval.json, model card.
    from chexreason.modeling import load_model_set
    from chexreason.results import load_results
    from train import grpo

    export = tmp_path / "export"
    grpo.main([*_args(tiny, sft_adapter, data_recipe, tmp_path / "run", "--max_steps", "1"),
               "--export_dir", str(export), "--evaluate_after", "true"])  # fmt: skip
    models = load_model_set(export / "model_set.yaml")
    assert models.checkpoints == ("base", "sft", "grpo")
    # Every checkpoint answers within the budget GRPO sampled and validated with, in evaluation too.
    assert {models.spec.checkpoint(name).max_new_tokens for name in models.checkpoints} == {MAX_TOKENS}
    assert not any("ref" in p.name for p in (export / "grpo").iterdir())
    results = load_results(export / "eval.json")
    assert {r.checkpoint for r in results.runs} == set(results.checkpoints) == {"base", "sft", "grpo"}
    assert results.records_file == export / "eval.records.jsonl"
    assert results.generation.max_new_tokens == MAX_TOKENS
    card = (export / "README.md").read_text()
    assert "not for diagnosis" in card and "grpo − sft" in card and "truncation rate" in card
    assert "python -m train.grpo --config " in card and "--max_steps 1" in card  # the command that made it
    assert (export / "logs" / "grpo_log.json").exists()


def test_a_rerun_redoes_only_what_is_missing_or_stale(tiny, sft_adapter, data_recipe, tmp_path, monkeypatch):
    """After the adapter exists, a rerun still finishes the chain: nothing when all is current, the model card
    when it is missing, and the export and evaluation when the set's weights are not the run's."""
    from safetensors.torch import save_file

    from chexreason.results import load_results, save_results
    from train import grpo, recipe

    export = tmp_path / "export"
    argv = [*_args(tiny, sft_adapter, data_recipe, tmp_path / "run", "--max_steps", "1", "--validation_samples", "0"),
            "--export_dir", str(export), "--evaluate_after", "true"]  # fmt: skip
    grpo.main(argv)
    evaluations, run_stage = [], recipe.run_stage

    def spy(stage: str, args: list[str]):
        evaluations.append(stage)
        return run_stage(stage, args)

    monkeypatch.setattr(recipe, "run_stage", spy)
    results = (export / "eval.json").read_bytes()
    grpo.main(argv)
    assert evaluations == [] and (export / "eval.json").read_bytes() == results
    (export / "README.md").unlink()
    grpo.main(argv)
    assert evaluations == [] and (export / "README.md").is_file()
    scored = load_results(export / "eval.json")  # results that say they scored other GRPO weights
    scored.checkpoints["grpo"] = scored.checkpoints["grpo"].model_copy(update={"digest": "0" * 16})
    save_results(scored, export / "eval.json")
    grpo.main(argv)
    assert evaluations == ["evaluate"] and load_results(export / "eval.json").checkpoints["grpo"].digest != "0" * 16
    save_file({"x": torch.zeros(1)}, export / "grpo" / "adapter_model.safetensors")  # other weights in the set
    grpo.main(argv)
    assert evaluations == ["evaluate", "evaluate"]
    weights = "adapter_model.safetensors"
    assert (export / "grpo" / weights).read_bytes() == (tmp_path / "run" / "adapter" / weights).read_bytes()


def test_model_card_warns_of_phantoms_only_when_it_was_scored_on_phantoms():
    from chexreason.results import load_results
    from chexreason.training.export import model_card

    results = load_results("checkpoints/tiny/eval.json")
    card = model_card(results, "python -m train.grpo --config x.yaml", "MedGemma-4B, SFT and GRPO.")
    assert "Synthetic phantoms only" in card and "MedGemma-4B, SFT and GRPO." in card
    real = results.model_copy(deep=True)
    for split in real.data.splits.values():
        object.__setattr__(split, "images", "chexpert")
    card = model_card(real, "python -m train.grpo --config x.yaml")
    assert "phantoms" not in card and "not for diagnosis" in card


def _rl_split(rows: list[list[str]]):
    """An in-memory stand-in for the built RL split: only its ground_truth column matters to the rewards."""
    from datasets import Dataset

    return Dataset.from_dict({"id": [str(i) for i in range(len(rows))], "ground_truth": rows})


def test_nuanced_weights_come_from_the_rl_split(tmp_path):
    from chexreason.rewards import CHEXPERT_PREVALENCE, NUANCED_WEIGHTS_JSON, count_labels, label_prevalence
    from chexreason.training.grpo import build_rewards

    rows = [["Edema"], ["Edema", "Cardiomegaly"], ["No Finding"], ["No Finding"], ["No Finding"]]
    expected = label_prevalence(*count_labels(rows))
    rewards = build_rewards(["hard", "nuanced"], "think_solution", 250, 0.1, _rl_split(rows), weights_dir=tmp_path)
    config = rewards["nuanced"].config
    assert dict(config.label_prevalence) == expected != CHEXPERT_PREVALENCE
    # The run records the weights, with the counts they came from.
    record = json.loads((tmp_path / NUANCED_WEIGHTS_JSON).read_text())
    assert record["n_rows"] == 5 and record["labels"]["No Finding"]["count"] == 3
    for label, entry in record["labels"].items():
        assert entry["prevalence"] == pytest.approx(expected[label])
        assert entry["false_positive_cost"] == pytest.approx(config.false_positive_cost(label))
    # No Finding is the most common label here, so its false positives cost the most.
    assert record["labels"]["No Finding"]["false_positive_cost"] == pytest.approx(config.false_positive_max)


def test_nuanced_weights_are_written_only_when_asked_and_used(tmp_path):
    from chexreason.rewards import CHEXPERT_PREVALENCE, NUANCED_WEIGHTS_JSON
    from chexreason.training.grpo import build_rewards

    rl = _rl_split([["Edema"], ["Fracture"]])
    build_rewards(["hard"], "think_solution", 250, 0.1, rl, weights_dir=tmp_path)  # no nuanced reward: no record
    rewards = build_rewards(["nuanced"], "think_solution", 250, 0.1, rl)  # not the main process: no record
    assert not (tmp_path / NUANCED_WEIGHTS_JSON).exists()
    assert rewards["nuanced"].config.label_prevalence["Edema"] == pytest.approx(2 / 4)
    # Without an RL split (outside a run) the nuanced reward keeps CheXpert's train prevalence.
    assert dict(build_rewards(["nuanced"], "think_solution", 250, 0.1)["nuanced"].config.label_prevalence) == (
        CHEXPERT_PREVALENCE
    )


def test_module_level_rewards_use_the_recipe_defaults():
    import dataclasses

    from chexreason.rewards import hard_reward, make_hard_reward
    from train.configs import GRPOStageConfig

    defaults = {f.name: f.default for f in dataclasses.fields(GRPOStageConfig)}
    recipe = make_hard_reward(defaults["reward_length_threshold"], defaults["reward_length_penalty"])
    # 25, 249 and 250 approximate tokens: short, one under the 250-token threshold (pays λ_len 0.1), at it (does not).
    completions = ["<think>" + "w " * n + "</think><solution>Edema</solution>" for n in (10, 234, 235)]
    truth = [["Edema"]] * 3
    assert hard_reward(completions, truth) == recipe(completions, truth) == pytest.approx([0.9, 0.9, 1.0])


def test_the_run_records_the_nuanced_weights_of_its_rl_split(resumed_run, data_recipe):
    from chexreason.data.build import MANIFEST
    from chexreason.rewards import NUANCED_WEIGHTS_JSON
    from train.configs import read_data_config

    out, _ = resumed_run
    record = json.loads((out / NUANCED_WEIGHTS_JSON).read_text())
    manifest = json.loads((Path(read_data_config(str(data_recipe)).output_dir) / MANIFEST).read_text())
    # The counts are the RL split's, as the data build reported them (it leaves out labels never seen).
    assert record["n_rows"] == manifest["splits"]["rl"]["size"]
    seen = {label: entry["count"] for label, entry in record["labels"].items() if entry["count"]}
    assert seen == manifest["label_counts"]["rl"]


def test_the_clip_rate_is_the_share_of_clipped_steps_since_the_last_log(monkeypatch):
    # Several optimizer steps per log (the recipes log every 5 or 10): the rate averages them; an unreported
    # norm (DeepSpeed can return None) is skipped, not a crash.
    from types import SimpleNamespace

    from trl import GRPOTrainer

    from chexreason.training.grpo_logs import GRAD_CLIP_RATE, ClipRateTrainer

    norms, logged = iter([0.5, 2.0, None, 3.0, 0.1]), []
    monkeypatch.setattr(GRPOTrainer, "_clip_grad_norm", lambda self, model: next(norms))
    monkeypatch.setattr(GRPOTrainer, "log", lambda self, logs, start_time=None: logged.append(dict(logs)))
    trainer = ClipRateTrainer.__new__(ClipRateTrainer)  # only the two overridden methods are exercised
    trainer.args = SimpleNamespace(max_grad_norm=1.0)
    for _ in range(3):
        trainer._clip_grad_norm(None)
    trainer.log({"loss": 1.0})
    trainer.log({"eval_loss": 1.0})  # not a training log: no rate
    for _ in range(2):
        trainer._clip_grad_norm(None)
    trainer.log({"loss": 0.5})
    assert [entry.get(GRAD_CLIP_RATE) for entry in logged] == [0.5, None, 0.5]
