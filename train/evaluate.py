"""Evaluate every checkpoint of a model set on the evaluation sets of a data build.

    python -m train.evaluate --models checkpoints/tiny/model_set.yaml --data_config train/recipes/tiny/data.yaml
    python -m train.evaluate --models tiny --checkpoint base --prompts reasoning_a reasoning_e   # Table 1-style sweep

Greedy, batched generation (all checkpoints sharing a base in one batch), scored with `chexreason.metrics` on
each set's label set (chexpert14 for site a / CheXpert, nih9 for site b / NIH), with bootstrap intervals for
each macro-F1 and paired intervals for each consecutive difference (SFT − base, GRPO − SFT). Writes the results
(schema `chexreason.eval/2`: the summary JSON and its per-image records, ``eval.records.jsonl``, beside it) next
to the model set unless ``--out`` says otherwise. Ran on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from chexreason.data.build import MANIFEST, build_datasets, load_built
from chexreason.evaluation import write_evaluation
from chexreason.modeling import GenerationSettings, ModelSetError, load_model_set, resolve_model_set_path
from chexreason.prompts import get_prompt
from train.configs import DataConfig, read_data_config


def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", required=True, help="model set: a YAML path or a bundled name such as 'tiny'")
    parser.add_argument("--data_config", default="train/recipes/tiny/data.yaml", help="data recipe (built if needed)")
    parser.add_argument("--datasets", nargs="*", help="splits to score (default: every test_* split)")
    parser.add_argument("--limit", type=int, help="score only the first N images of each split")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=64,
        help="images per generate call (64: on the tiny set the same outputs as 16, 17%% faster; "
        "lower it on a small GPU)",
    )
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--n_resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_predictions", action="store_true", help="write no per-image records file")
    parser.add_argument("--prompts", nargs="+", help="sweep these prompt variants (e.g. the paper's Table 1 keys) ...")
    parser.add_argument("--checkpoint", help="... on this checkpoint of the set (default: its first)")
    parser.add_argument(
        "--out", help="results JSON (default: eval.json, or prompts.json for a sweep, next to the set)"
    )
    args = parser.parse_args(argv)
    try:
        data = read_data_config(args.data_config)
        model_path = resolve_model_set_path(args.models)
        model_set = load_model_set(model_path)
        for key in args.prompts or ():
            get_prompt(key)
        if args.checkpoint and args.checkpoint not in model_set.checkpoints:
            raise ValueError(f"no checkpoint {args.checkpoint!r} in the set; it has {list(model_set.checkpoints)}")
    except (ValueError, ModelSetError, FileNotFoundError) as error:
        sys.exit(f"train.evaluate: {error}")
    build_datasets(data)
    built = load_built(data.output_dir)
    names = args.datasets or [name for name in built if name.startswith("test_")]
    unknown = sorted(set(names) - set(built))
    if unknown:
        sys.exit(f"train.evaluate: no split {unknown} in {data.output_dir}; there are {sorted(built)}")
    datasets = {n: built[n].select(range(min(args.limit, len(built[n])))) if args.limit else built[n] for n in names}
    manifest = json.loads((Path(data.output_dir) / MANIFEST).read_text())
    out = Path(args.out) if args.out else model_path.parent / ("prompts.json" if args.prompts else "eval.json")
    results = write_evaluation(
        out,
        model_set,
        datasets,
        keep_records=not args.no_predictions,
        data_fingerprint=manifest["fingerprint"],
        settings=GenerationSettings(max_new_tokens=args.max_new_tokens),
        batch_size=args.batch_size,
        n_resamples=args.n_resamples,
        seed=args.seed,
        image_roots=image_roots(data),
        sweep=(args.checkpoint or model_set.checkpoints[0], args.prompts) if args.prompts else None,
    )
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
