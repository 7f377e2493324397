"""The recipe as one chain: data → base (tiny recipe only) → SFT → GRPO → export → evaluation.

Each stage command does its one job (`train.base`, `train.sft`, `train.grpo`, `train.evaluate`); what a stage
needs and does not find is made here, by running the stage recipe its config names, so that

    python -m train.grpo --config train/recipes/tiny/grpo.yaml

still builds everything from nothing: GRPO's ``sft_recipe`` runs SFT, whose ``base_recipe`` runs the base stage;
after GRPO, ``export_dir`` bundles the model set and ``evaluate_after`` scores it.
"""

from __future__ import annotations

import importlib
import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from chexreason.model_set_spec import is_hub_id, read_model_set, unreadable_weights
from chexreason.results import ResultsError, load_results, scored_other_weights
from chexreason.training.export import export_is_current, export_model_set, model_set_text, write_model_card
from chexreason.training.fused_head import score_labelled_positions_only
from chexreason.training.grpo import ADAPTER_CONFIG, BEST_ADAPTER
from train import log_to_console
from train.configs import GRPOStageConfig, ModelArguments, SFTStageConfig, parse_stage

logger = logging.getLogger(__name__)


def start_training_stage(prog: str, types: tuple[type, ...], argv: list[str] | None) -> tuple:
    """What every training stage does first: log to the console, score only labelled positions in TRL's loss
    head on a CPU as it does on GPUs (`score_labelled_positions_only`), and read its configs — a config mistake
    ends the program with a one-line message."""
    log_to_console()
    score_labelled_positions_only()
    configs = parse_stage(prog, types, argv)
    model_args, config = configs[0], configs[-2]
    if isinstance(model_args, ModelArguments) and (problem := missing_start(model_args, config)):
        sys.exit(f"{prog}: {problem}")
    return configs


def missing_start(model_args: ModelArguments, config: SFTStageConfig | GRPOStageConfig) -> str | None:
    """What a training stage would start from and cannot, said before any work: a base model that is neither a
    local folder nor a Hub id, with no recipe to build it; unreadable weights; GRPO's SFT adapter absent, with no
    ``sft_recipe`` to train it. (A stage whose start a recipe builds is checked by that recipe's own stage.)"""
    builds_start = getattr(config, "base_recipe", None) or getattr(config, "sft_recipe", None)
    model = str(model_args.model_name_or_path)
    if Path(model).is_dir():
        if problem := unreadable_weights(Path(model)):
            return f"model_name_or_path: {problem}"
    elif not is_hub_id(model) and not builds_start:
        return f"model_name_or_path {model!r} is neither a local folder nor a Hub id (owner/name)"
    adapter = getattr(config, "sft_adapter", None)
    if adapter is not None:
        if (Path(adapter) / ADAPTER_CONFIG).is_file():
            return unreadable_weights(Path(adapter))
        if not config.sft_recipe:
            return f"no SFT adapter at {adapter}; train it with `python -m train.sft` (or set sft_recipe)"
    return None


def run_stage(stage: str, argv: list[str]) -> Any:
    """Run a stage as ``python -m train.<stage> <argv>`` would, in this process; returns what its main returns.

    By module name, as a command is called: the stages call this module, so it imports none of them back.
    """
    return importlib.import_module(f"train.{stage}").main(argv)


def ensure_base(model_args: ModelArguments, config: SFTStageConfig) -> None:
    """SFT's starting model: run ``base_recipe`` when the model is not there (the tiny recipe's random model)."""
    if not Path(model_args.model_name_or_path).exists() and config.base_recipe:
        logger.info("no model at %s: running %s first", model_args.model_name_or_path, config.base_recipe)
        run_stage("base", ["--config", config.base_recipe])


def ensure_sft(config: GRPOStageConfig) -> None:
    """GRPO's starting adapter: run ``sft_recipe`` when the SFT adapter is not there."""
    if not (Path(config.sft_adapter) / ADAPTER_CONFIG).exists() and config.sft_recipe:
        logger.info("no SFT adapter at %s: running %s first", config.sft_adapter, config.sft_recipe)
        run_stage("sft", ["--config", config.sft_recipe])


def after_grpo(
    model_args: ModelArguments,
    config: GRPOStageConfig,
    prompt: str,
    command: list[str],
    data_fingerprint: str | None = None,
) -> Path | None:
    """Bundle base + SFT + best GRPO as a model set in ``export_dir``, then evaluate it if ``evaluate_after``.

    Each step is redone only when what it would produce is missing or stale, so a rerun after a kill finishes the
    chain and never leaves results beside other weights: the export when the set's files differ from the run's
    (`export_is_current`), the evaluation when ``eval.json`` is absent or scored other weights
    (`chexreason.results.scored_other_weights`), the model card when it does not say what ``eval.json`` says.

    Args:
        prompt: the prompt key the checkpoints were trained with (the data recipe's answer format).
        command: the arguments of the GRPO command that made the run, cited by the model card.
        data_fingerprint: the data build's (its manifest's); results of other data are evaluated again.

    Returns the exported set's YAML, or None when the recipe exports nothing.
    """
    if not config.export_dir:
        return None
    base = Path(model_args.model_name_or_path)
    best = Path(config.output_dir) / BEST_ADAPTER
    sources = {
        "base": base,
        "sft": Path(config.sft_adapter),
        "grpo": best if (best / ADAPTER_CONFIG).exists() else Path(config.output_dir) / "adapter",
    }
    logs = {
        "base_log.json": base.parent / "base_log.json",
        "sft_log.json": Path(config.sft_adapter).parent / "sft_log.json",
        "grpo_log.json": Path(config.output_dir) / "grpo_log.json",
    }
    export = Path(config.export_dir)
    spec = export / "model_set.yaml"
    text = model_set_text(export.name, config.export_description, prompt, config.max_completion_length)
    if export_is_current(export, sources, logs, text):
        logger.info("the model set in %s is this run's", export)
    else:
        export_model_set(
            export,
            name=export.name,
            description=config.export_description,
            base_model=sources["base"],
            sft_adapter=sources["sft"],
            grpo_adapter=sources["grpo"],
            prompt=prompt,
            logs=logs,
            max_new_tokens=config.max_completion_length,
        )
    if config.evaluate_after:
        results = export / "eval.json"
        if not _scored_these_weights(results, spec, data_fingerprint):
            results = run_stage("evaluate", ["--models", str(spec), "--data_config", config.data_config])
        write_model_card(export, results, "python -m train.grpo " + shlex.join(command))
    return spec


def _scored_these_weights(results: Path, spec: Path, data_fingerprint: str | None) -> bool:
    """Whether `results` exists and scored exactly the weights the model set `spec` names now, on this data."""
    try:
        scored = load_results(results)
        other = scored_other_weights(scored, read_model_set(spec).checkpoints)
    except (ResultsError, OSError, ValueError):
        return False
    if data_fingerprint is not None and scored.data.manifest != data_fingerprint:
        logger.warning("%s scored other data (build %s, not %s): evaluating again", results, scored.data.manifest,
                       data_fingerprint)  # fmt: skip
        return False
    if other:
        logger.warning("%s scored other weights for %s: evaluating again", results, ", ".join(other))
    return not other
