"""The stages' command lines: a recipe (default: the stage's tiny one) plus overrides, parsed and checked before any
work, every mistake one line (`parse_recipe`, `parse_stage`). `train.configs` re-exports these names."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import yaml

from chexreason.data.config import DataConfig, read_data_config
from train import parity

logger = logging.getLogger(__name__)

TINY_RECIPES = Path(__file__).resolve().parent / "recipes" / "tiny"


def with_default_recipe(prog: str, argv: list[str] | None) -> list[str]:
    """The command line, with ``--config train/recipes/tiny/<stage>.yaml`` in front when it names no recipe, so
    ``python -m train.grpo`` alone runs the tiny recipe (and regenerates checkpoints/tiny) as the README says,
    instead of TRL's GPU defaults. Fields given on the command line still override the recipe's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # TRL's parser reads only "--config PATH": split "--config=PATH", which it would silently ignore.
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if "--config" in argv:
        return argv
    recipe = TINY_RECIPES / f"{prog.removeprefix('train.')}.yaml"
    logger.info("%s: no --config, so the tiny recipe %s", prog, recipe.relative_to(recipe.parents[3]))
    return ["--config", str(recipe), *argv]


def parse_stage(prog: str, types: tuple[type, ...], argv: list[str] | None) -> tuple:
    """A stage's configs from its YAML recipe (default: its tiny recipe, `with_default_recipe`) and command line,
    followed by the DataConfig its `data_config` names. A config mistake ends the program with a message, not a
    traceback."""
    configs = parse_recipe(prog, types, argv)
    try:
        data = read_data_config(configs[-1].data_config)
    except ValueError as error:
        sys.exit(f"{prog}: {_one_line(error)}")
    _report_parity(prog, (DataConfig,), (data,))  # the data recipe this stage trains on: also the paper's, small
    return (*configs, data)


def parse_recipe(prog: str, types: tuple[type, ...], argv: list[str] | None) -> tuple:
    """The configs of `types` from a recipe and command line, checked before any work: the recipe file exists and
    parses, every value has its type and range, and every output folder can be written. Each mistake ends the
    program with one line (a wrong-typed value too: the usage line is one line, not every field)."""
    from trl import TrlParser

    args = with_default_recipe(prog, argv)
    recipe = Path(args[args.index("--config") + 1]) if args.index("--config") + 1 < len(args) else None
    if recipe is None or not recipe.is_file():
        sys.exit(f"{prog}: --config {recipe or ''}: no such recipe file")
    usage = f"python -m {prog} [--config RECIPE.yaml] [--FIELD VALUE ...]   (--help lists every field)"
    try:
        configs = TrlParser(types, usage=usage).parse_args_and_config(args=args)
    except yaml.YAMLError as error:
        sys.exit(f"{prog}: {recipe} is not valid YAML: {_one_line(error)}")
    except (ValueError, OSError) as error:
        sys.exit(f"{prog}: {_one_line(error)}")
    for config in configs:
        problem = _unworkable(config)
        if problem:
            sys.exit(f"{prog}: {problem}")
    _report_parity(prog, types, tuple(configs))
    return tuple(configs)


def _report_parity(prog: str, types: tuple[type, ...], configs: tuple) -> None:
    """How these configs differ from their paper recipe (`train.parity.report`); a broken paper_recipe is a message."""
    paper_recipe = getattr(configs[-1], "paper_recipe", None)
    if paper_recipe and not Path(paper_recipe).is_file():
        sys.exit(f"{prog}: paper_recipe {paper_recipe}: no such recipe file")
    try:
        parity.report(prog, types, configs)
    except (ValueError, yaml.YAMLError) as error:
        sys.exit(f"{prog}: paper_recipe {paper_recipe}: {_one_line(error)}")


def _unworkable(config: object) -> str | None:
    """What in a parsed config would fail only after work was done: a step count out of range, an output folder
    that cannot be written."""
    max_steps = getattr(config, "max_steps", -1)
    if max_steps == 0 or max_steps < -1:
        return f"max_steps must be a positive number of optimizer steps, or -1 for the epochs' count; got {max_steps}"
    for name in ("output_dir", "export_dir", "out"):
        value = getattr(config, name, None)
        if isinstance(value, str) and value:
            problem = unwritable(Path(value).parent if name == "out" else Path(value))  # out: a results file
            if problem:
                return f"{name} {value}: {problem}"
    return None


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be created or written, or None: a file where a folder must be, no write permission."""
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                return f"{ancestor} is a file, not a folder"
            if not os.access(ancestor, os.W_OK | os.X_OK):
                return f"{ancestor} is not writable"
            return None
    return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
