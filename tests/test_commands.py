"""Every command the README names answers ``--help`` (which lists every field of its config) and exits 0."""

import importlib

import pytest

COMMANDS = ["train.data", "train.base", "train.sft", "train.grpo", "train.evaluate", "chexreason.predict"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        importlib.import_module(command).main(["--help"])
    assert done.value.code in (0, None)
    assert "--" in capsys.readouterr().out  # the options are listed


@pytest.mark.parametrize("stage", ["base", "sft", "grpo", "evaluate"])
def test_a_stage_without_config_runs_its_tiny_recipe(stage):
    # `python -m train.grpo` alone regenerates checkpoints/tiny: the tiny recipe, not TRL's GPU defaults (bf16).
    import yaml

    from train import configs

    types = {
        "base": (configs.BaseStageConfig,),
        "sft": (configs.ModelArguments, configs.SFTStageConfig),
        "grpo": (configs.ModelArguments, configs.GRPOStageConfig),
        "evaluate": (configs.EvaluateConfig,),
    }[stage]
    *parsed, data = configs.parse_stage(f"train.{stage}", types, [])
    recipe = yaml.safe_load((configs.TINY_RECIPES / f"{stage}.yaml").read_text())
    fields = {key: getattr(config, key) for config in parsed for key in recipe if hasattr(config, key)}
    assert {key: fields[key] for key in ("data_config", "output_dir", "export_dir", "models") if key in recipe} == {
        key: recipe[key] for key in ("data_config", "output_dir", "export_dir", "models") if key in recipe
    }
    assert data.output_dir == "outputs/tiny/data"
    overridden = configs.parse_stage(f"train.{stage}", types, ["--seed", "7"])  # the command line still wins
    assert overridden[-2].seed == 7
    recipe_path = str(configs.TINY_RECIPES / f"{stage}.yaml")
    for form in (["--config", recipe_path], [f"--config={recipe_path}"]):  # TRL itself reads only the first form
        named = configs.parse_stage(f"train.{stage}", types, form)
        assert [getattr(c, "output_dir", None) for c in named[:-1]] == [getattr(c, "output_dir", None) for c in parsed]


def test_data_without_config_builds_the_tiny_recipe(monkeypatch):
    from train import data

    seen = {}
    monkeypatch.setattr(data, "build_datasets", lambda config: seen.setdefault("config", config) and {})
    data.main([])
    assert seen["config"].source == "phantom" and seen["config"].output_dir == "outputs/tiny/data"
