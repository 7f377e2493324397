"""The README names only what is there: every module, name and path it quotes resolves, and its Layout table
lists every module of `chexreason/` and `train/` (so a new module gets a line, a moved one a new line)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
QUOTED = re.findall(r"`([^`\n]+)`", README)
# Dotted words in backticks that are not Python names, with why.
NOT_NAMES = {
    "chexreason.eval": "the results schema's id, chexreason.eval/2",
    "train.csv": "CheXpert's label table",
}
# The old module names kept importable; the Layout table names them in words.
ALIASES = {f"chexreason/{name}.py" for name in ("grpo", "pretrain", "fused_head", "export", "tiny_model")}


def _dotted_names() -> list[str]:
    pattern = r"(?<![\w/.-])((?:chexreason|train|benchmarks)(?:\.[A-Za-z_]\w*)+)"
    return sorted({m for text in QUOTED for m in re.findall(pattern, text)} - set(NOT_NAMES))


def _paths() -> list[str]:
    pattern = r"(?<![\w.-])((?:chexreason|train|tests|checkpoints|benchmarks|docs)/[\w./-]*)"
    return sorted({m for text in QUOTED for m in re.findall(pattern, text)})


def test_the_readme_quotes_names_and_paths():
    """Guards the tests below: a pattern that matched nothing would pass them all."""
    assert len(_dotted_names()) > 20 and len(_paths()) > 20


@pytest.mark.parametrize("name", _dotted_names())
def test_every_quoted_name_imports(name: str):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return
    pytest.fail(f"{name} does not import")


@pytest.mark.parametrize("path", _paths())
def test_every_quoted_path_exists(path: str):
    assert (REPO / path).exists(), f"the README names {path}, which is not there"


def _layout_modules() -> set[str]:
    """The files the Layout table lists, as repository paths."""
    section = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = set()
    for row in re.findall(r"^\| (.+?) \| (.+?) \| .+ \|$", section, flags=re.MULTILINE):
        where, modules = row
        folder = where.strip("`") if where.startswith("`") else ""  # "core", "model sets", ...: the package itself
        folder = folder if folder.startswith("train/") else f"chexreason/{folder}"
        listed |= {f"{folder}{name}" for name in re.findall(r"`([\w./-]+)`", modules)}
    return listed


def test_the_layout_table_lists_every_module_and_only_what_exists():
    listed = _layout_modules()
    assert {p for p in listed if not (REPO / p).exists()} == set()
    modules = {
        str(p.relative_to(REPO))
        for package in ("chexreason", "train")
        for p in (REPO / package).rglob("*.py")
        if p.name != "__init__.py"
    }
    assert modules - ALIASES - listed == set()
