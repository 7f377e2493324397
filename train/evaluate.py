"""Evaluate every checkpoint of a model set on the evaluation sets of a data build.

    python -m train.evaluate --config train/recipes/tiny/evaluate.yaml    # the bundled set on both phantom sites
    python -m train.evaluate --models checkpoints/tiny/model_set.yaml --data_config train/recipes/tiny/data.yaml
    python -m train.evaluate --models tiny --checkpoint base --prompts reasoning_a reasoning_e   # Table 1-style sweep

Greedy, batched generation (all checkpoints sharing a base in one batch), scored with `chexreason.metrics` on
each set's label set (chexpert14 for site a / CheXpert, nih9 for site b / NIH), with bootstrap intervals for
each macro-F1 and paired intervals for each consecutive difference (SFT − base, GRPO − SFT). Writes the results
(schema `chexreason.eval/2`: the summary JSON and its per-image records, ``eval.records.jsonl``, beside it) next
to the model set unless ``--out`` says otherwise. Ran on a 2-core CPU.

Without ``--datasets`` it reports on every ``test_*`` split. A sweep (``--prompts``) is selection — its output
chooses a prompt — so it runs on the build's validation split (``valid_chexpert`` for real data built with
``chexpert_valid_csv``, else ``sft_validation``) and refuses a test split (`chexreason.data.build.split_role`).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from chexreason.data.build import (
    MANIFEST,
    build_datasets,
    head,
    load_built,
    report_splits,
    selection_splits,
    split_role,
)
from chexreason.evaluation import SourceError, write_evaluation
from chexreason.modeling import GenerationSettings, ModelSetError, load_model_set, resolve_model_set_path
from train import log_to_console
from train.configs import DataConfig, EvaluateConfig, parse_stage

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> Path:
    log_to_console()
    config, data = parse_stage("train.evaluate", (EvaluateConfig,), argv)
    try:
        model_path = resolve_model_set_path(config.models)
        model_set = load_model_set(model_path)
        if config.checkpoint and config.checkpoint not in model_set.checkpoints:
            raise ValueError(f"no checkpoint {config.checkpoint!r} in the set; it has {list(model_set.checkpoints)}")
    except (ValueError, ModelSetError, FileNotFoundError) as error:
        sys.exit(f"train.evaluate: {error}")
    build_datasets(data)
    built = load_built(data.output_dir)
    # Reporting defaults to every test split; a sweep chooses a prompt, so it runs on validation splits only.
    names = config.datasets or (selection_splits(built) if config.prompts else report_splits(built))
    unknown = sorted(set(names) - set(built))
    if unknown:
        sys.exit(f"train.evaluate: no split {unknown} in {data.output_dir}; there are {sorted(built)}")
    on_test = [name for name in names if split_role(name) == "test"] if config.prompts else []
    if on_test:
        sys.exit(
            f"train.evaluate: --prompts chooses a prompt, and choosing it on {', '.join(on_test)} is selection on test"
            " (it biases the test numbers); sweep on a validation split:"
            f" --datasets {' '.join(selection_splits(built))} (the default with --prompts)"
        )
    on_training = [name for name in names if split_role(name) == "training"] if config.prompts else []
    if on_training:  # no leak into test, but the images were trained on: a prompt chosen there may not transfer
        logger.warning("sweeping prompts on training split(s) %s; the validation split(s) are %s",
                       on_training, selection_splits(built))  # fmt: skip
    datasets = {name: head(built[name], config.limit) for name in names}
    manifest = json.loads((Path(data.output_dir) / MANIFEST).read_text())
    out = Path(config.out) if config.out else model_path.parent / ("prompts.json" if config.prompts else "eval.json")
    try:
        results = write_evaluation(
            out,
            model_set,
            datasets,
            keep_records=not config.no_predictions,
            data_fingerprint=manifest["fingerprint"],
            settings=GenerationSettings(max_new_tokens=config.max_new_tokens),
            batch_size=config.batch_size,
            n_resamples=config.n_resamples,
            seed=config.seed,
            image_roots=image_roots(data),
            sweep=(config.checkpoint or model_set.checkpoints[0], config.prompts) if config.prompts else None,
        )
    except SourceError as error:  # said before any generation
        sys.exit(f"train.evaluate: {error}")
    for run in results.runs:
        ci = run.macro_f1_ci
        print(
            f"{run.dataset:>16} {run.checkpoint:>8}  macro-F1 {ci['estimate']:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]"
            f"  fail {run.metrics['fail_rate']:.3f}  truncated {run.truncation_rate:.3f}"
        )
    for c in results.comparisons:
        d = c.macro_f1_difference
        print(
            f"{c.dataset:>16} {c.candidate} - {c.baseline}: {d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
        )
    return out


def image_roots(data: DataConfig) -> dict[str, str | None]:
    """The image folder of each real dataset, that records name their images relative to (phantoms: by id)."""
    chexpert = data.chexpert_root or (
        str(Path(data.chexpert_test_csv).parent.parent) if data.chexpert_test_csv else None
    )
    return {"mimic-cxr": data.mimic_root, "chexpert": chexpert, "nih": data.nih_images}


if __name__ == "__main__":
    main()
