"""The paper recipes (MedGemma-4B, Qwen2.5-VL-3B) and the accelerate configs: they parse, and they carry the
paper's values (DESIGN §3). Fast: nothing loads a model or reads a dataset.

TrainingArguments rejects `bf16: true` on a machine without a GPU unless `use_cpu` is set, so the stage
recipes are parsed with `--use_cpu true` (which leaves bf16 as written) and the YAML itself is checked for
`bf16: true`.
"""

from pathlib import Path

import pytest
import yaml

from train.configs import (
    LM_PROJECTIONS,
    PAPER_GRPO,
    PAPER_SFT,
    EvaluateConfig,
    GRPOStageConfig,
    ModelArguments,
    SFTStageConfig,
    read_data_config,
)

RECIPES = Path("train/recipes")
FORMATS = ("only_label", "free_reasoning", "reasoning_narrative", "reasoning_a")  # the paper's Tables 2-3


QWEN_PIXELS = (256 * 28 * 28, 512 * 28 * 28)  # 256-512 visual tokens of 28 × 28 pixels

# (recipe, model, answer format, Qwen min/max pixels or None): the paper's Tables 2-3, both models × 4 formats.
SFT_CASES = [
    *[(f"medgemma-4b/sft_{fmt}.yaml", "google/medgemma-4b-it", fmt, None) for fmt in FORMATS],
    *[(f"qwen2.5-vl-3b/sft_{fmt}.yaml", "Qwen/Qwen2.5-VL-3B-Instruct", fmt, QWEN_PIXELS) for fmt in FORMATS],
]
# (recipe, rewards): GRPO from MedGemma's Free Reasoning SFT with either reward (Table 4).
GRPO_CASES = [("medgemma-4b/grpo_hard.yaml", ["hard"]), ("medgemma-4b/grpo_nuanced.yaml", ["nuanced"])]
# (config, distributed_type, marked as a template not yet run)
ACCELERATE_CASES = [
    ("single_gpu.yaml", "NO", False),
    ("ddp.yaml", "MULTI_GPU", False),  # run here as 2 CPU processes only
    ("zero2.yaml", "DEEPSPEED", True),
    ("zero3.yaml", "DEEPSPEED", True),
    ("fsdp.yaml", "FSDP", True),
]


def parse(types: tuple[type, ...], recipe: str) -> tuple:
    """A stage recipe as its command would parse it; `--use_cpu` only so bf16 is accepted without a GPU."""
    from trl import TrlParser

    return TrlParser(types).parse_args_and_config(args=["--config", recipe, "--use_cpu", "true"])


def raw(recipe: str) -> dict:
    return yaml.safe_load(Path(recipe).read_text())


def data_recipe(path: str, tmp_path: Path):
    """`read_data_config` of a real-data recipe: readable without the dataset paths, which only a build needs."""
    config = read_data_config(path)
    assert config.missing_real_paths()  # the user's paths go on the train.data command line
    return config


def test_every_recipe_is_tested():
    # A new paper or accelerate recipe must be added to a table above.
    tested = {RECIPES / name for name, *_ in SFT_CASES + GRPO_CASES}
    tested |= {RECIPES / "accelerate" / name for name, *_ in ACCELERATE_CASES}
    tested |= {RECIPES / "medgemma-4b" / f"data_{fmt}.yaml" for fmt in FORMATS}
    tested |= {RECIPES / "medgemma-4b" / "architecture.yaml"}  # tests/test_paper_architecture.py
    tested |= {RECIPES / "medgemma-4b" / "evaluate.yaml"}  # test_evaluate_recipes_parse below
    found = {p for d in ("medgemma-4b", "qwen2.5-vl-3b", "accelerate") for p in (RECIPES / d).glob("*.yaml")}
    assert found == tested


def test_evaluate_recipes_parse_and_name_what_exists():
    from trl import TrlParser

    from chexreason.modeling import read_model_set

    def parse_evaluate(recipe: Path) -> EvaluateConfig:
        return TrlParser(EvaluateConfig).parse_args_and_config(args=["--config", str(recipe)])[0]

    tiny = parse_evaluate(RECIPES / "tiny" / "evaluate.yaml")
    defaults = EvaluateConfig(models="x")
    assert (tiny.batch_size, tiny.max_new_tokens, tiny.n_resamples, tiny.seed) == (
        defaults.batch_size,
        defaults.max_new_tokens,
        defaults.n_resamples,
        defaults.seed,
    )  # the tiny recipe writes down what python -m train.evaluate does by default (the bundled eval.json's run)
    assert read_model_set(tiny.models).name == "tiny" and read_data_config(tiny.data_config).source == "phantom"
    paper = parse_evaluate(RECIPES / "medgemma-4b" / "evaluate.yaml")
    # No budget of its own: each checkpoint's, which the set records as the GRPO recipe's max_completion_length.
    paper_set = read_model_set(paper.models, check_paths=False)
    assert paper.max_new_tokens is None and paper_set.name == "medgemma-4b-paper"
    grpo_budget = raw(str(RECIPES / "medgemma-4b" / "grpo_hard.yaml"))["max_completion_length"]
    assert {c.max_new_tokens for c in paper_set.checkpoints} == {grpo_budget}
    assert read_data_config(paper.data_config).answer_format == "free_reasoning"


@pytest.mark.parametrize(
    ("fields", "message"),
    [({}, "models is required"), ({"models": "tiny", "limit": 0}, "limit must be at least 1"),
     ({"models": "tiny", "prompts": ["reasoning_z"]}, "unknown prompt"),
     ({"models": "tiny", "batch_size": 0}, "batch_size must be at least 1"),
     ({"models": "tiny", "max_new_tokens": 0}, "max_new_tokens must be at least 1")],
)  # fmt: skip
def test_evaluate_config_refuses_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        EvaluateConfig(**fields)


@pytest.mark.parametrize(("name", "model_id", "fmt", "pixels"), SFT_CASES)
def test_sft_recipe_has_the_papers_values(name, model_id, fmt, pixels, tmp_path):
    recipe = str(RECIPES / name)
    written = raw(recipe)
    assert written["bf16"] is True and written["gradient_checkpointing"] is True  # as written, not as parsed
    model, config = parse((ModelArguments, SFTStageConfig), recipe)

    assert model.model_name_or_path == model_id and model.dtype == "bfloat16"
    assert (model.lora_r, model.lora_alpha, model.lora_dropout) == (16, 32, 0.1)
    assert model.lora_target_modules == LM_PROJECTIONS  # the language model's projections; vision frozen
    assert (model.min_pixels, model.max_pixels) == (pixels or (None, None))

    assert config.learning_rate == 5e-5 and config.lr_scheduler_type == "cosine"
    assert config.warmup_steps == 0.05  # a ratio in transformers 5: 5% warmup
    assert config.weight_decay == 0.01 and config.max_grad_norm == 5.0 and config.optim == "adamw_torch"
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps == 8  # on one GPU
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (1, 8)
    assert config.num_train_epochs == 6 and config.early_stopping_patience == 2
    assert config.eval_strategy == config.save_strategy == "epoch"
    assert config.load_best_model_at_end and config.metric_for_best_model == "eval_loss"
    assert config.assistant_only_loss is True
    assert config.bf16 is True and config.gradient_checkpointing is True
    assert config.report_to == []  # report_to: none
    assert config.base_recipe is None  # both models arrive pretrained
    assert config.paper_departures() == {}
    # The training chat template is named, not left to TRL's swap (a byte copy of TRL's: tests/test_training.py).
    template = "gemma3_training.jinja" if "medgemma" in name else "qwen2_5_vl_training.jinja"
    assert config.chat_template_path == f"train/recipes/chat_templates/{template}"
    assert Path(config.chat_template_path).is_file()
    assert config.output_dir == f"outputs/{name.split('/')[0]}/sft_{fmt}"

    data = data_recipe(config.data_config, tmp_path)
    assert data.answer_format == fmt and data.source == "real"


@pytest.mark.parametrize("fmt", FORMATS)
def test_data_recipe_is_the_paper_data_with_its_format(fmt, tmp_path):
    # Each format's data recipe is train/recipes/paper/data.yaml with answer_format and output_dir changed.
    path = RECIPES / "medgemma-4b" / f"data_{fmt}.yaml"
    paper = raw(RECIPES / "paper" / "data.yaml")
    assert raw(path) == {**paper, "answer_format": fmt, "output_dir": f"outputs/paper/data_{fmt}"}
    config = data_recipe(str(path), tmp_path)
    assert (config.sft_samples, config.sft_validation_fraction, config.rl_samples) == (2000, 0.1, 1000)


@pytest.mark.parametrize(("name", "rewards"), GRPO_CASES)
def test_grpo_recipe_has_the_papers_values(name, rewards, tmp_path):
    recipe = str(RECIPES / name)
    written = raw(recipe)
    assert written["bf16"] is True and written["gradient_checkpointing"] is True
    assert set(PAPER_GRPO) <= set(written)  # each paper value set explicitly, not left to TRL's defaults
    model, config = parse((ModelArguments, GRPOStageConfig), recipe)

    assert config.paper_departures() == {}
    assert {key: getattr(config, key) for key in PAPER_GRPO} == PAPER_GRPO
    assert config.rewards == rewards
    assert config.reward_length_threshold == 250 and config.reward_length_penalty == 0.1
    assert config.max_completion_length == written["max_completion_length"]  # Dr. GRPO's loss normaliser
    assert config.use_vllm is False and config.export_dir is None
    assert config.bf16 is True and config.gradient_checkpointing is True
    assert config.generation_batch_size % config.num_generations == 0  # whole groups per generation batch

    # From MedGemma's Free Reasoning SFT: its adapter, and the recipe that trains it when it is missing.
    assert model.model_name_or_path == "google/medgemma-4b-it" and model.dtype == "bfloat16"
    assert config.sft_adapter == "outputs/medgemma-4b/sft_free_reasoning/adapter"
    assert config.sft_recipe == "train/recipes/medgemma-4b/sft_free_reasoning.yaml"
    sft = raw(config.sft_recipe)
    assert f"{sft['output_dir']}/adapter" == config.sft_adapter
    assert sft["model_name_or_path"] == model.model_name_or_path and sft["data_config"] == config.data_config
    assert data_recipe(config.data_config, tmp_path).answer_format == "free_reasoning"


@pytest.mark.parametrize(("name", "distributed_type", "template"), ACCELERATE_CASES)
def test_accelerate_config(name, distributed_type, template):
    from accelerate.commands.config.config_args import load_config_from_file

    path = RECIPES / "accelerate" / name
    text = path.read_text()
    assert text.startswith("#")  # a header says what it is for
    assert yaml.safe_load(text)["distributed_type"] == distributed_type
    assert load_config_from_file(str(path)).distributed_type == distributed_type  # accelerate accepts the keys
    assert ("TEMPLATE, NOT YET RUN" in text) == template


# ------------------------------------------------- every GRPO and SFT recipe against the paper (PAPER_GRPO, PAPER_SFT)

ALL_GRPO = sorted(str(path) for path in RECIPES.glob("*/grpo*.yaml"))  # the tiny recipe's too
ALL_SFT = sorted(str(path) for path in RECIPES.glob("*/sft*.yaml"))
# Departures each recipe declares in its header, field -> the words that declare it there. The GRPO recipes have none.
DECLARED_SFT = {
    "train/recipes/tiny/sft.yaml": {
        "learning_rate": "learning_rate 2e-3",
        "per_device_train_batch_size": "per-device batch 8",
        "gradient_accumulation_steps": "accumulation 1",
        "num_train_epochs": "at most 2 epochs",
        "bf16": "float32",
        "gradient_checkpointing": "no gradient",
    }
}
# TRL 1.16 defaults that are not the paper's (train/configs.py lists every field checked): why each recipe sets them.
TRL_DEFAULTS_OFF_PAPER = {
    "loss_type": "dapo", "scale_rewards": "group", "beta": 0.0, "use_bias_correction_kl": True, "epsilon": 0.2,
    "epsilon_high": None, "vllm_importance_sampling_correction": True, "num_generations": 8, "temperature": 1.0,
    "top_p": 1.0,
}  # fmt: skip


def test_paper_grpo_turns_off_trls_bias_corrected_kl_and_vllm_correction():
    assert PAPER_GRPO["use_bias_correction_kl"] is False  # the paper's plain KL, beta 0.15
    assert PAPER_GRPO["vllm_importance_sampling_correction"] is False
    assert PAPER_GRPO["mask_truncated_completions"] is False  # plain GRPO: truncated answers stay in the loss
    assert PAPER_GRPO["beta"] == 0.15 and PAPER_GRPO["loss_type"] == "dr_grpo"


def test_the_trl_defaults_the_paper_values_override():
    """TRL 1.16's GRPOConfig defaults: the PAPER_GRPO values that differ are exactly those listed above (a TRL
    upgrade that moves a default shows here), and the rest are TRL's defaults, pinned against drift."""
    import dataclasses

    from trl import GRPOConfig

    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig) if f.name in PAPER_GRPO}
    assert set(defaults) == set(PAPER_GRPO)  # every pinned name is a GRPOConfig field
    off_paper = {name: default for name, default in defaults.items() if default != PAPER_GRPO[name]}
    assert off_paper == TRL_DEFAULTS_OFF_PAPER


@pytest.mark.parametrize("recipe", ALL_GRPO)
def test_every_grpo_recipe_sets_every_paper_value(recipe):
    text = Path(recipe).read_text()
    assert set(PAPER_GRPO) <= set(yaml.safe_load(text))  # written out, not left to TRL's defaults
    _, config = parse((ModelArguments, GRPOStageConfig), recipe)
    assert config.paper_departures() == {}
    # mask_truncated_completions is a decision, and the recipe says why
    assert "mask_truncated_completions: false" in text and "# mask_truncated_completions: false keeps plain" in text


def test_a_grpo_departure_is_reported():
    _, config = parse((ModelArguments, GRPOStageConfig), ALL_GRPO[0])
    config.use_bias_correction_kl, config.top_k = True, 64
    assert config.paper_departures() == {"use_bias_correction_kl": (True, False), "top_k": (64, 0)}


@pytest.mark.parametrize("recipe", ALL_SFT)
def test_every_sft_recipe_departs_only_where_it_says(recipe):
    import dataclasses

    text = Path(recipe).read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    _, config = parse((ModelArguments, SFTStageConfig), recipe)
    declared = DECLARED_SFT.get(recipe, {})
    assert set(config.paper_departures()) == set(declared)
    assert all(words in header for words in declared.values())
    # Where SFTConfig's default is not the paper's value, the recipe writes its value out.
    defaults = {f.name: f.default for f in dataclasses.fields(SFTStageConfig) if f.name in PAPER_SFT}
    assert {name for name, default in defaults.items() if default != PAPER_SFT[name]} <= set(yaml.safe_load(text))


@pytest.mark.parametrize("recipe", ALL_GRPO)
def test_every_grpo_recipe_checkpoints_where_a_resume_samples_as_the_run_would(recipe):
    """TRL samples every steps_per_generation x num_iterations micro-batches and at once after a resume: a checkpoint
    between two samplings would make a resumed run differ. Every shipped recipe saves on a sampling boundary."""
    _, config = parse((ModelArguments, GRPOStageConfig), recipe)
    every = config.steps_per_generation * config.num_iterations
    assert (config.save_steps * config.gradient_accumulation_steps) % every == 0


def test_a_save_interval_between_samplings_is_refused_at_start():
    from train import grpo

    with pytest.raises(SystemExit, match="save_steps 50 x gradient_accumulation_steps 1 is not a multiple of "
                                         "steps_per_generation 4"):  # fmt: skip
        grpo.main(["--config", "train/recipes/tiny/grpo.yaml", "--save_steps", "50", "--use_cpu", "true"])


STAGES = ("train.data", "train.base", "train.sft", "train.grpo", "train.evaluate")


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--config", "missing/recipe.yaml"], "no such recipe file"),
        (["--config", "{broken}"], "is not valid YAML"),
        (["--output_dir", "{file}/under"], "is a file, not a folder"),
    ],
)
def test_a_bad_recipe_or_path_is_one_line_before_any_work(stage, args, words, tmp_path):
    import importlib

    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: [1, 2\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    args = [arg.format(broken=broken, file=a_file) for arg in args]
    if stage == "train.evaluate" and args[0] == "--output_dir":
        args = ["--out", f"{a_file}/under/eval.json"]
    main = importlib.import_module(stage).main
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value)
    assert words in message and "\n" not in message, message


@pytest.mark.parametrize("stage", ["train.base", "train.sft", "train.grpo"])
def test_a_nonsense_step_count_and_a_wrong_typed_value_are_short_messages(stage, capsys):
    import importlib

    main = importlib.import_module(stage).main
    with pytest.raises(SystemExit, match="max_steps must be a positive number"):
        main(["--max_steps", "-5"])
    with pytest.raises(SystemExit):
        main(["--learning_rate", "abc"])
    error = capsys.readouterr().err.strip().splitlines()
    assert "invalid float value: 'abc'" in error[-1] and len(error) <= 3, error  # not every field's usage


@pytest.fixture(scope="module")
def cut_short_set(tmp_path_factory) -> Path:
    """A copy of the bundled tiny set whose GRPO weights a copy cut short."""
    import shutil

    folder = tmp_path_factory.mktemp("cut-short") / "tiny"
    shutil.copytree("checkpoints/tiny", folder)
    weights = folder / "grpo" / "adapter_model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    return folder


def test_cut_short_weights_in_a_model_set_are_a_message_everywhere(cut_short_set, capsys, tmp_path):
    import app
    from chexreason import predict
    from train import evaluate

    spec = str(cut_short_set / "model_set.yaml")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--models", spec])
    assert "adapter_model.safetensors is cut short or unreadable" in str(exit_info.value)
    with pytest.raises(SystemExit):
        predict.main(
            ["--models", spec, "chexreason/app/examples/phantom-a-0-003104.png", "--out", str(tmp_path / "p.csv")]
        )
    assert "adapter_model.safetensors is cut short or unreadable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        app._build_or_exit(spec)
    assert "cut short or unreadable" in str(exit_info.value) and "\n" not in str(exit_info.value)


@pytest.mark.parametrize(
    ("stage", "args", "words"),
    [
        ("train.sft", ["--model_name_or_path", "/nowhere/model", "--base_recipe", ""], "neither a local folder"),
        ("train.sft", ["--max_train_samples", "-3"], "max_train_samples must be at least 1"),
        ("train.sft", ["--model_name_or_path", "{cut_base}", "--base_recipe", ""], "cut short or unreadable"),
        (
            "train.grpo",
            ["--model_name_or_path", "{cut}/base", "--sft_adapter", "{cut}/grpo", "--sft_recipe", ""],
            "cut short or unreadable",
        ),
        (
            "train.grpo",
            ["--model_name_or_path", "{cut}/base", "--sft_adapter", "/nowhere", "--sft_recipe", ""],
            "no SFT adapter at /nowhere",
        ),
        ("train.grpo", ["--data_config", "{typo}"], "invalid int value: 'two thousand'"),
        ("train.sft", ["--data_config", "{typo}"], "invalid int value: 'two thousand'"),
        ("train.evaluate", ["--data_config", "{typo}"], "invalid int value: 'two thousand'"),
    ],
)
def test_a_bad_start_is_one_line_before_any_work(stage, args, words, cut_short_set, tmp_path):
    import importlib
    import shutil

    typo = tmp_path / "data.yaml"
    typo.write_text(Path("train/recipes/tiny/data.yaml").read_text() + "sft_samples: two thousand\n")
    cut_base = tmp_path / "base"
    shutil.copytree(cut_short_set / "base", cut_base)
    with (cut_base / "model.safetensors").open("r+b") as f:
        f.truncate(1000)
    args = [arg.format(cut=cut_short_set, cut_base=cut_base, typo=typo) for arg in args]
    out = (
        ["--out", str(tmp_path / "out" / "eval.json")]
        if stage == "train.evaluate"
        else ["--output_dir", str(tmp_path / "out")]
    )
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(stage).main([*args, *out])
    message = str(exit_info.value)
    assert words in message and "\n" not in message, message
    assert not (tmp_path / "out").exists()  # no work was done


def test_a_data_recipe_reads_the_same_as_a_stage_and_as_train_data(tmp_path):
    """``seed: "0"`` is the number 0 whether `train.data` reads the recipe or a stage's ``data_config`` does: one
    config, one fingerprint, so neither rebuilds the other's data."""
    from chexreason.data.config import DataConfig
    from train.configs import parse_recipe

    recipe = tmp_path / "data.yaml"
    recipe.write_text(Path("train/recipes/tiny/data.yaml").read_text().replace("seed: 0", 'seed: "0"'))
    (by_train_data,) = parse_recipe("train.data", (DataConfig,), ["--config", str(recipe)])
    assert read_data_config(str(recipe)) == by_train_data and by_train_data.seed == 0
