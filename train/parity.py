"""The tiny recipe is the paper recipe at small scale: each tiny recipe names its paper counterpart
(``paper_recipe``), and every field of the two parsed configs is either equal or a declared difference of
*scale*, *hardware* or *plumbing* (`differences`). Anything else — a sampling value, a loss setting, the regime —
is a difference in kind, which would let a defect of the paper path hide from the CI that runs only the tiny one:
``tests/test_parity.py`` fails on it, and a run prints it as a warning (`report`).

The regime is compared as a value of its own, `OPTIMIZER_STEPS_PER_SAMPLING`: the batch fields that set it are
scale, but how many optimizer steps one sampled batch feeds decides whether the importance ratio and its clipping
act at all (1: on-policy, never).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

# What the small scale changes: the model (the tiny base stage builds it), its input and output lengths, how long
# and in what batches it trains, how much data, and the validation size.
SCALE = frozenset(
    {
        "model_name_or_path", "model_revision", "base_recipe",  # model
        "image_size", "min_pixels", "max_pixels",  # image size (image tokens follow the model)
        "max_length", "max_completion_length", "max_new_tokens",  # sequence lengths
        "reward_length_threshold",  # the hard reward's length threshold, in the model's tokens
        "max_steps", "num_train_epochs",  # steps, epochs
        "per_device_train_batch_size", "gradient_accumulation_steps", "per_device_eval_batch_size",  # batch ...
        "steps_per_generation", "generation_batch_size", "batch_size",  # ... (the regime is checked on its own)
        "learning_rate",
        "sft_samples", "rl_samples", "test_samples_per_site", "max_train_samples", "max_eval_samples", "limit",
        "validation_samples",
    }
)  # fmt: skip
# What the machine changes: number formats, where it runs, memory-for-time trades, kernels, loader processes.
HARDWARE = frozenset(
    {
        "dtype", "bf16", "fp16", "tf32", "use_cpu", "gradient_checkpointing", "activation_checkpointing",
        "attn_implementation", "dataloader_num_workers", "dataloader_pin_memory", "workers", "use_vllm", "vllm_mode",
    }
)  # fmt: skip
# What changes where things go and what else a run does: paths, the data source, export and evaluation, how often
# it saves and logs. (Not whether: save_strategy also decides whether GRPO selects a best checkpoint.)
PLUMBING = frozenset(
    {
        "output_dir", "data_config", "sft_recipe", "sft_adapter", "models", "out", "paper_recipe", "run_name",
        "source", "mimic_root", "chexpert_test_csv", "chexpert_valid_csv", "chexpert_root",
        "nih_csv", "nih_images", "nih_split_list",
        "export_dir", "evaluate_after", "export_description", "no_predictions",
        "save_steps", "save_total_limit", "logging_steps", "logging_strategy", "report_to",
    }
)  # fmt: skip
KINDS = {"scale": SCALE, "hardware": HARDWARE, "plumbing": PLUMBING}
# Scale fields where None means "off", not a size: unset on one side only is a change in kind (truncation on).
NONE_IS_OFF = frozenset({"max_length"})
OPTIMIZER_STEPS_PER_SAMPLING = "optimizer_steps_per_sampling"  # the regime, derived (GRPO only)


@dataclass(frozen=True)
class Difference:
    """One field where a recipe and its paper counterpart differ; `kind` None: declared in no list."""

    field: str
    ours: object
    paper: object
    kind: str | None

    def line(self) -> str:
        return f"{self.kind or 'UNDECLARED':>10}  {self.field}: {self.ours!r} here, {self.paper!r} in the paper recipe"


def kind_of(name: str, ours: object, paper: object) -> str | None:
    """The declared kind of a difference in `name` between `ours` and `paper`; None: a difference in kind."""
    if name in NONE_IS_OFF and (ours is None) != (paper is None):
        return None
    return next((kind for kind, names in KINDS.items() if name in names), None)


def field_values(configs: tuple) -> dict[str, object]:
    """Every init field of the parsed configs, plus the GRPO regime (`OPTIMIZER_STEPS_PER_SAMPLING`)."""
    values = {f.name: getattr(config, f.name) for config in configs for f in dataclasses.fields(config) if f.init}
    if values.get("steps_per_generation"):  # TRL fills it (default: gradient_accumulation_steps)
        per_sampling = values["steps_per_generation"] * values.get("num_iterations", 1)
        values[OPTIMIZER_STEPS_PER_SAMPLING] = per_sampling / values["gradient_accumulation_steps"]
    return values


def differences(ours: dict[str, object], paper: dict[str, object]) -> list[Difference]:
    """The fields whose values differ, each with its declared kind (None: undeclared)."""
    return [
        Difference(name, ours.get(name), paper.get(name), kind_of(name, ours.get(name), paper.get(name)))
        for name in sorted(ours.keys() | paper.keys())
        if ours.get(name) != paper.get(name)
    ]


@contextmanager
def _process_state_kept() -> Iterator[None]:
    """Building a TrainingArguments resets accelerate's process-wide state and sets it up for its own `use_cpu`:
    parsing another recipe inside a stage must leave the stage's own state (its device, its DDP setup) as it was."""
    from accelerate.state import AcceleratorState, PartialState

    saved = [(cls._shared_state, dict(cls._shared_state)) for cls in (PartialState, AcceleratorState)]
    try:
        yield
    finally:
        for shared, values in saved:
            shared.clear()
            shared.update(values)


def parse_recipe_file(types: tuple[type, ...], recipe: str | Path) -> dict[str, object]:
    """`field_values` of a recipe as its command parses it with no overrides. A paper recipe asks for bf16, which
    TrainingArguments refuses on a machine without a GPU unless `use_cpu` is set: it is parsed with `use_cpu` and
    the values its YAML says are put back (`use_cpu`, and `dataloader_pin_memory`, which `use_cpu` turns off)."""
    from trl import TrlParser

    raw = yaml.safe_load(Path(recipe).read_text()) or {}
    args = ["--config", str(recipe)]
    trains = any("use_cpu" in {f.name for f in dataclasses.fields(t)} for t in types)
    with _process_state_kept():
        configs = TrlParser(types).parse_args_and_config(args=[*args, *(["--use_cpu", "true"] if trains else [])])
    values = field_values(tuple(configs))
    if trains:
        values["use_cpu"] = bool(raw.get("use_cpu", False))
        values["dataloader_pin_memory"] = bool(raw.get("dataloader_pin_memory", True))
    return values


def report(prog: str, types: tuple[type, ...], configs: tuple) -> list[Difference]:
    """Print how this run differs from its paper recipe (the last config's ``paper_recipe``), if it names one:
    declared differences as information, undeclared ones as warnings. Returns the differences."""
    paper_recipe = getattr(configs[-1], "paper_recipe", None)
    if not paper_recipe:
        return []
    found = differences(field_values(configs), parse_recipe_file(types, paper_recipe))
    undeclared = [d for d in found if d.kind is None]
    lines = "\n".join("  " + d.line() for d in found)
    logger.info(
        "%s: differs from its paper recipe %s in %d declared field(s) of scale, hardware or plumbing%s:\n%s",
        prog,
        paper_recipe,
        len(found) - len(undeclared),
        f" and {len(undeclared)} UNDECLARED" if undeclared else "",
        lines,
    )
    for d in undeclared:
        logger.warning("%s: %s differs from the paper recipe and is no declared scale, hardware or plumbing knob: "
                       "this run is not the paper's recipe at small scale (%r here, %r there)",
                       prog, d.field, d.ours, d.paper)  # fmt: skip
    return found
