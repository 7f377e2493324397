"""How many findings the tiny benchmark can tell apart: per-finding F1 of tiny checkpoints on site-a development
phantoms, against the F1 of always predicting the finding.

    python -m benchmarks.tiny_instrument --models checkpoints/tiny/model_set.yaml      # the bundle
    python -m benchmarks.tiny_instrument --models W0/tiny/model_set.yaml W1/tiny/model_set.yaml ...   # seeds
    python -m benchmarks.tiny_instrument --train --seeds 0 1 2                 # data -> base -> SFT, then measure
    python -m benchmarks.tiny_instrument --train --seeds 0 --set sft.num_train_epochs=4   # a variant of the recipe
    python -m benchmarks.tiny_instrument --probe W/base/model      # what a linear probe reads off the vision tower

The development split is its own: ``--n`` site-a phantoms (default 3,600: at least 30 positives of every finding
but the rarest) from seed `DEV_SEED`, which no data build or base stage uses, at the data recipe's image size, kept
as the test split is (frontal, at least one positive).
It is never a test split: what is tuned on it says nothing about the test results. A finding is *measured* when it
has at least `MIN_POSITIVES` positives there, and *told apart* when the SFT checkpoint's F1, averaged over the runs,
is above `MIN_F1` and above ``2p / (1 + p)``, the F1 of always predicting it at prevalence p. The target (issue 14):
at least 10 findings told apart. ``--train`` runs the tiny recipes relocated into a temporary folder per seed
(`train.tiny_recipes`), as far as SFT, with ``--set stage.field=value`` overrides; ``--workdir`` keeps them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from chexreason.labels import CHEXPERT_LABELS

REPO = Path(__file__).resolve().parents[1]
DEV_SEED = 2_000_003  # data builds use small seeds; the base stage 1_000_003 + its seed
MIN_POSITIVES = 30
MIN_F1 = 0.2
TARGET = 10


def development_split(n: int, image_size: int, policy: str):
    """`n` site-a phantoms from `DEV_SEED`, as the data build keeps test images, as a dataset of evaluation rows."""
    from chexreason.data.build import to_dataset
    from chexreason.data.phantom import generate_parallel
    from chexreason.data.splits import SplitReport, example_from_phantom, keep_trainable

    kept, drawn = [], n
    while len(kept) < n:  # some films are dropped (no positive label): draw more, the same films first
        drawn = int(drawn * 1.3) + 1
        samples = generate_parallel("a", drawn, seed=DEV_SEED, size=image_size)
        kept = keep_trainable((example_from_phantom(s, policy) for s in samples), SplitReport())
    return to_dataset("dev_phantom_a", kept[:n], "chexpert14")


def measure(model_sets: list[Path], checkpoints: list[str], n: int) -> dict:
    """Per checkpoint and finding, the F1 of every model set on the development split; and each finding's positives."""
    from chexreason.data.config import read_data_config
    from chexreason.evaluation import evaluate
    from chexreason.modeling import load_model_set

    data = read_data_config(str(REPO / "train" / "recipes" / "tiny" / "data.yaml"))
    split = development_split(n, data.image_size, data.uncertainty_policy)
    positives = {label: sum(label in truth for truth in split["ground_truth"]) for label in CHEXPERT_LABELS}
    f1: dict[str, dict[str, list[float]]] = {}
    for path in model_sets:
        model_set = load_model_set(path)
        for name in checkpoints:  # one checkpoint at a time, with its own prompt (evaluate's single-checkpoint pass)
            sweep = (name, [model_set.spec.checkpoint(name).prompt])
            results = evaluate(model_set, {"dev_phantom_a": split}, n_resamples=20, sweep=sweep)  # F1: few resamples
            for run in results.runs:
                for label, scores in run.metrics["per_label"].items():
                    f1.setdefault(run.checkpoint, {}).setdefault(label, []).append(scores["f1"])
    return {"n": len(split), "positives": positives, "f1": f1}


def probe(model_path: Path, n: int) -> str:
    """Where the signal is lost: a linear probe (logistic regression) per finding on the vision tower's patch
    features of a base model, fitted on the first two thirds of `n` development phantoms and scored on the rest;
    a Markdown table of each finding's test AUC and best-threshold F1."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score, roc_auc_score
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from chexreason.data.config import read_data_config

    data = read_data_config(str(REPO / "train" / "recipes" / "tiny" / "data.yaml"))
    split = development_split(n, data.image_size, data.uncertainty_policy)
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    features = []
    with torch.no_grad():
        for start in range(0, len(split), 64):
            images = [image.convert("RGB") for image in split[start : start + 64]["image"]]
            pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            features.append(model.model.vision_tower(pixel_values=pixels).last_hidden_state.flatten(1).numpy())
    x, fit = np.concatenate(features), 2 * len(split) // 3
    lines = ["| finding | positives (fit / scored) | probe AUC | probe best F1 |", "| --- | ---: | ---: | ---: |"]
    for label in CHEXPERT_LABELS:
        y = np.array([label in truth for truth in split["ground_truth"]])
        if y[:fit].sum() < 5 or y[fit:].sum() < 5:
            lines.append(f"| {label} | {y[:fit].sum()} / {y[fit:].sum()} | too few | |")
            continue
        scores = LogisticRegression(max_iter=2000, C=0.1).fit(x[:fit], y[:fit]).predict_proba(x[fit:])[:, 1]
        best = max(f1_score(y[fit:], scores > t) for t in np.linspace(0.05, 0.95, 19))
        lines.append(f"| {label} | {y[:fit].sum()} / {y[fit:].sum()} | {roc_auc_score(y[fit:], scores):.2f} | "
                     f"{best:.2f} |")  # fmt: skip
    return "\n".join(lines)


def table(measured: dict) -> tuple[str, int]:
    """The per-finding table (Markdown) and how many findings the SFT checkpoint tells apart."""
    n, positives, f1 = measured["n"], measured["positives"], measured["f1"]
    checkpoints = list(f1)
    head = "| finding | positives | always-positive F1 | " + " | ".join(f"{c} F1" for c in checkpoints)
    lines = [head + " | told apart by SFT |", "| --- | ---: | ---: |" + " ---: |" * len(checkpoints) + " --- |"]
    told = 0
    for label in sorted(CHEXPERT_LABELS, key=lambda label: -positives[label]):
        p = positives[label] / n
        trivial = 2 * p / (1 + p)
        cells = []
        for c in checkpoints:
            values = f1[c][label]
            spread = f" ({', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.2f}{spread}")
        if positives[label] < MIN_POSITIVES:
            verdict = f"not measured (< {MIN_POSITIVES} positives)"
        else:
            sft = statistics.mean(f1["sft"][label]) if "sft" in f1 else float("nan")
            ok = sft > MIN_F1 and sft > trivial
            told += ok
            verdict = "yes" if ok else "no"
        lines.append(f"| {label} | {positives[label]} | {trivial:.2f} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines), told


def train_to_sft(folder: Path, seed: int, overrides: dict[str, dict]) -> Path:
    """data -> base -> SFT of the tiny recipes relocated into `folder` with `seed`; a model set of base and SFT."""
    from train.tiny_recipes import recipes_in

    stages = {stage: dict(values) for stage, values in overrides.items()}
    for stage in ("base", "sft", "grpo"):
        stages.setdefault(stage, {})["seed"] = seed
    recipes_in(folder, stages)
    command = [sys.executable, "-m", "train.sft", "--config", str(folder / "sft.yaml")]
    with (folder / "run.log").open("w") as log:
        env = {**os.environ, "TQDM_DISABLE": "1"}
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        sys.exit(f"benchmarks.tiny_instrument: training failed ({code}); see {folder / 'run.log'}")
    model_set = folder / "model_set.yaml"
    model, budget = str(folder / "base" / "model"), yaml.safe_load((folder / "grpo.yaml").read_text())
    common = {"model": model, "prompt": "free_reasoning", "max_new_tokens": budget["max_completion_length"]}
    checkpoints = [{"name": "base", **common}, {"name": "sft", **common, "adapter": str(folder / "sft" / "adapter")}]
    model_set.write_text(yaml.safe_dump({"name": f"tiny-seed-{seed}", "checkpoints": checkpoints}))
    return model_set


def parse_sets(pairs: list[str]) -> dict[str, dict]:
    """``stage.field=value`` overrides (the value read as YAML) -> {stage: {field: value}}."""
    overrides: dict[str, dict] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        stage, _, field = key.partition(".")
        if not (stage and field and value):
            sys.exit(f"benchmarks.tiny_instrument: --set {pair!r}: expected stage.field=value")
        overrides.setdefault(stage, {})[field] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", type=Path, help="model sets to measure (one per training seed)")
    parser.add_argument("--train", action="store_true", help="train data -> base -> SFT per --seeds first")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds for --train")
    parser.add_argument("--set", nargs="*", default=[], metavar="STAGE.FIELD=VALUE", help="recipe overrides")
    parser.add_argument("--workdir", type=Path, help="keep the --train runs here (default: temporary)")
    parser.add_argument("--n", type=int, default=3600, help="development phantoms (default 3,600)")
    parser.add_argument("--checkpoints", nargs="+", default=["sft"], help="which to measure (default: sft)")
    parser.add_argument("--probe", type=Path, help="instead: a linear probe of this base model's vision tower")
    args = parser.parse_args(argv)
    if args.probe:
        table_text = probe(args.probe, args.n)
        print(f"linear probe of {args.probe}'s vision tower on {args.n} development phantoms\n{table_text}")
        return 0
    if bool(args.models) == args.train:
        sys.exit("benchmarks.tiny_instrument: give --models, or --train (with --seeds)")
    with tempfile.TemporaryDirectory(prefix="tiny-instrument-") as scratch:
        work = (args.workdir or Path(scratch)).resolve()
        model_sets, start = list(args.models or []), time.time()
        for seed in args.seeds if args.train else ():
            started = time.time()
            model_sets.append(train_to_sft(work / f"seed-{seed}", seed, parse_sets(args.set)))
            print(f"seed {seed}: data -> base -> SFT in {time.time() - started:.0f} s", flush=True)
        measured = measure(model_sets, args.checkpoints, args.n)
    text, told = table(measured)
    print(f"\n{measured['n']} development phantoms of site a (seed {DEV_SEED}); {len(model_sets)} run(s)"
          + (f"; overrides {' '.join(args.set)}" if args.set else "") + f"; {time.time() - start:.0f} s")  # fmt: skip
    print(text)
    print(f"\nfindings told apart by SFT: {told} (target: at least {TARGET})")
    return told


if __name__ == "__main__":
    main()
