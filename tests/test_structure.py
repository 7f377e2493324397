"""The shape of the house: the library never imports the command line, nothing imports in a circle, inference
loads no training library, and no module grows past what one reader holds in mind.

The import graph is read from the source (AST), nothing is executed, and every import counts: module level,
inside functions, and under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("chexreason", "train")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imported(path: Path, module: str) -> set[str]:
    """The project modules `module` imports (a package's ``__init__`` counts as the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)  # `from package import module`
    # The importer's own packages are already being imported when it runs: ``from chexreason.app import
    # rendering`` inside chexreason.app.compare needs chexreason.app.rendering, not chexreason.app again.
    ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    return {name for name in names if name in MODULES and name != module and name not in ancestors}


GRAPH = {module: _imported(path, module) for module, path in MODULES.items()}


def test_the_graph_sees_the_project():
    """Guards the test itself: a parser that found nothing would pass everything below."""
    assert len(MODULES) > 40
    assert "chexreason.model_set" in GRAPH["chexreason.loading"]
    assert "chexreason.training.grpo" in GRAPH["chexreason.grpo"]  # the compatibility alias imports its target


def test_the_library_never_imports_the_command_line():
    offenders = {m: sorted(i for i in imports if i.split(".")[0] == "train") for m, imports in GRAPH.items()}
    assert {m: i for m, i in offenders.items() if i and m.startswith("chexreason")} == {}


def test_there_are_no_import_cycles():
    cycles, state = [], {}  # state: 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_inference_core_never_imports_training():
    training = {m for m in MODULES if m.startswith("chexreason.training")}
    inference = ("chexreason.model_set", "chexreason.loading", "chexreason.modeling", "chexreason.evaluation")
    reached: set[str] = set()
    stack = [*inference, *(m for m in MODULES if m.startswith("chexreason.app"))]
    while stack:
        module = stack.pop()
        if module not in reached:
            reached.add(module)
            stack.extend(GRAPH[module])
    assert reached & training == set()


def test_importing_the_app_loads_no_training_library():
    """`import app` builds the page around the bundled set; TRL (a training library) must stay unloaded."""
    code = (
        "import sys, app, chexreason.predict, chexreason.evaluation\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'trl', 'train'}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('chexreason.training')))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-2:] == ["[]", "[]"]


def test_the_tests_run_offline():
    """conftest sets HF_HUB_OFFLINE before anything imports huggingface_hub, which reads it once, at import."""
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE


@pytest.mark.parametrize("path", [p for p in MODULES.values()], ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_is_longer_than_500_lines(path: Path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(REPO)} has {lines} lines: give its jobs modules of their own"
