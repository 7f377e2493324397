"""Export a finished recipe run as a model set: base weights, SFT and GRPO adapters, training logs, the
evaluation results and a model card — what `checkpoints/tiny/` holds and `app.py` loads.

The set is written whole into a staged folder and installed in one rename (`chexreason.atomic`), so a kill during
an export leaves the old set or the new one, and never the new weights beside the old results: a fresh export
holds no ``eval.json`` until the new weights are evaluated. `export_is_current` tells a rerun whether the set
already holds exactly its sources' files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from chexreason import atomic
from chexreason.faults import fault_point
from chexreason.fingerprints import fingerprint_folder
from chexreason.results import EvalResults

# The files a checkpoint needs to load; trainer state, optimizer and TRL's frozen reference stay behind.
_KEEP = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.model")


def _copy_files(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in _KEEP:
        for path in source.glob(pattern):
            if path.name not in ("best.json", "trainer_state.json", "training_args.bin"):
                shutil.copy2(path, dest / path.name)


def export_model_set(
    dest: str | Path,
    name: str,
    description: str,
    base_model: str | Path,
    sft_adapter: str | Path,
    grpo_adapter: str | Path,
    prompt: str,
    logs: dict[str, Path],
    max_new_tokens: int,
) -> Path:
    """Copy base, SFT and GRPO into `dest` with a `model_set.yaml` naming them; returns the YAML's path. Whatever
    `dest` held before (results, model card) is replaced: they described other weights.

    `max_new_tokens` is recorded as every checkpoint's generation budget: the GRPO run's max_completion_length,
    which its validation used, so evaluation, ``predict`` and the app answer within it too.
    """
    dest = Path(dest)
    staged = atomic.staging_folder(dest)
    fault_point("export-started")
    for folder, source in (("base", base_model), ("sft", sft_adapter), ("grpo", grpo_adapter)):
        _copy_files(Path(source), staged / folder)
    (staged / "logs").mkdir(parents=True, exist_ok=True)
    for log_name, path in logs.items():
        if Path(path).exists():
            shutil.copy2(path, staged / "logs" / log_name)
    (staged / "model_set.yaml").write_text(model_set_text(name, description, prompt, max_new_tokens))
    atomic.install_folder(staged, dest)
    return dest / "model_set.yaml"


def model_set_text(name: str, description: str, prompt: str, max_new_tokens: int) -> str:
    """The ``model_set.yaml`` of an export: base, SFT and GRPO, each with the prompt and the generation budget."""
    spec = {
        "name": name,
        "description": description,
        "checkpoints": [
            {"name": "base", "title": "Base", "model": "base"},
            {"name": "sft", "title": "SFT", "model": "base", "adapter": "sft"},
            {"name": "grpo", "title": "GRPO", "model": "base", "adapter": "grpo"},
        ],
    }
    for checkpoint in spec["checkpoints"]:
        checkpoint.update(prompt=prompt, max_new_tokens=max_new_tokens)
    return yaml.safe_dump(spec, sort_keys=False)


def export_is_current(
    dest: str | Path, sources: dict[str, str | Path], logs: dict[str, Path], spec_text: str | None = None
) -> bool:
    """Whether `dest` holds an export of exactly these sources (``{"base": …, "sft": …, "grpo": …}``, their files
    by `chexreason.fingerprints.fingerprint_folder`), logs (byte for byte) and, given, this `model_set.yaml` text
    (`model_set_text`: prompt, budget, description)."""
    dest = atomic.recover_folder(dest)
    if not (dest / "model_set.yaml").is_file():
        return False
    if spec_text is not None and (dest / "model_set.yaml").read_text() != spec_text:
        return False
    try:
        if any(fingerprint_folder(dest / folder) != fingerprint_folder(source) for folder, source in sources.items()):
            return False
    except FileNotFoundError:
        return False
    for log_name, path in logs.items():
        copy = dest / "logs" / log_name
        if Path(path).exists() != copy.exists() or (copy.exists() and copy.read_bytes() != Path(path).read_bytes()):
            return False
    return True


def model_card(results: EvalResults, command: str, description: str = "") -> str:
    """A README for an exported model set: what it is (its `description`), how it was made, its measured numbers."""
    generation = results.generation
    budget = f"{generation.max_new_tokens}-token" if generation and generation.max_new_tokens else "token"
    splits = results.data.splits.values() if results.data else ()
    on_phantoms = any((split.images or "").startswith("phantom") for split in splits)
    warning = (
        "**Synthetic phantoms only — a research demonstration, not for diagnosis.** Its numbers come from "
        "procedurally drawn chest radiograph phantoms (see the repository README) and say nothing about "
        "real X-rays."
        if on_phantoms
        else "**Research software — a research demonstration, not for diagnosis.**"
    )
    lines = [
        f"# {results.model_set}: base, SFT and GRPO checkpoints of a ChexReason SFT → GRPO run",
        "",
        *([description.strip(), ""] if description.strip() else []),
        warning,
        "",
        f"Made by `{command}` (with every stage it needed first: data, base, LoRA SFT; see `train.recipe`), then",
        "`python -m train.evaluate` on the evaluation splits. `grpo` is the policy with the best validation",
        "macro-F1 (the paper's Table 4 selection); training logs are in `logs/`, results in `eval.json` and",
        "`eval.records.jsonl` (every answer). Fail rate: answers that could not be parsed; truncation rate:",
        f"answers that hit the {budget} budget without a stop token.",
        "",
        "| split | label set | checkpoint | macro-F1 (95% bootstrap CI) | micro-F1 | fail rate | truncation rate |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in results.runs:
        ci = run.macro_f1_ci or {"estimate": run.metrics["macro_f1"], "low": float("nan"), "high": float("nan")}
        truncated = "—" if run.truncation_rate is None else f"{run.truncation_rate:.3f}"  # None: a v1 file
        lines.append(
            f"| {run.dataset} (n={run.metrics['n']}) | {run.label_set} | {run.checkpoint} | "
            f"{ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] | {run.metrics['micro_f1']:.3f} | "
            f"{run.metrics['fail_rate']:.3f} | {truncated} |"
        )
    lines += ["", "| split | difference | estimate (95% paired bootstrap CI) |", "| --- | --- | --- |"]
    for c in results.comparisons:
        d = c.macro_f1_difference
        interval = f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        lines.append(f"| {c.dataset} | {c.candidate} − {c.baseline} | {interval} |")
    lines += ["", "Generated from `eval.json` by `chexreason.training.export.model_card`.", ""]
    return "\n".join(lines)


def write_model_card(dest: str | Path, results_path: str | Path, command: str) -> Path:
    """Write `dest`/README.md from the results file, with the description of `dest`/model_set.yaml (atomically;
    left untouched when it already says exactly that)."""
    from chexreason.model_set_spec import read_model_set
    from chexreason.results import load_results

    path = Path(dest) / "README.md"
    description = read_model_set(Path(dest) / "model_set.yaml", check_paths=False).description
    text = model_card(load_results(results_path), command, description)
    if not path.is_file() or path.read_text() != text:
        atomic.write_text(path, text)
    return path
