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
