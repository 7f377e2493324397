"""The paper path rehearsed on a CPU: every MedGemma-4B recipe, with only declared scale, hardware and plumbing
overrides, on a small random model with MedGemma's structure — the run CI makes of the recipes it cannot train.

    python -m benchmarks.paper_rehearsal            # ~2 min on 2 cores (also: python -m benchmarks.paper_step --smoke)
    python -m benchmarks.paper_rehearsal --workdir /tmp/rehearsal   # keep what it wrote

In one process, each recipe of ``train/recipes/medgemma-4b/`` as its command runs it, written with its overrides
into the work folder and checked first against `train.parity`'s lists (an override in no list stops the run):

- ``data_<format>.yaml`` for the four answer formats, on a tree in the real datasets' layouts
  (`benchmarks.real_format_tree`: MIMIC-CXR-JPG, the CheXpert test set and valid.csv, NIH with test_list.txt);
- ``sft_<format>.yaml`` for the four formats (Tables 2-3);
- ``grpo_hard.yaml`` and ``grpo_nuanced.yaml`` from the Free Reasoning SFT adapter (Table 4), in their regime
  (one sampling of 16 prompts for 4 optimizer steps; two here), with a best-checkpoint validation after each;
- ``evaluate.yaml`` on ``medgemma-4b-paper``'s model set (base, SFT, best GRPO over one base), its paths pointed at
  this run, and the app built on that set with the results.

The model is ``architecture.yaml`` shrunk (`SHRUNK`): MedGemma's 256 image tokens per image (from 256 patches:
448 px to pool 2 x 2 as MedGemma pools 4 x 4 made the rehearsal 3.6 min, over its 3), its processor's
normalisation and the training chat template, in bfloat16 with gradient checkpointing as the recipes ask; the
tiny recipe's tokenizer. Prints each stage's declared overrides and time. Checks mechanics, not learning.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from benchmarks.real_format_tree import chexpert_valid_csv, real_format_tree
from train import parity

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "train" / "recipes" / "medgemma-4b"
PAPER_SET = REPO / "chexreason" / "model_sets" / "medgemma-4b-paper.yaml"
FORMATS = ("free_reasoning", "only_label", "reasoning_a", "reasoning_narrative")  # GRPO starts from the first
# architecture.yaml at small scale: the structure (Gemma 3 text with local and global layers, SigLIP, 256 image
# tokens from 16 x 16 patches) kept, the widths, depths and vocabulary (the tokenizer's) shrunk.
SHRUNK = {
    "text_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "head_dim": 16},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "image_size": 224},  # 16 x 16 patches = 256 tokens: MedGemma pools 4 x 4 patches, this 1 x 1
}  # fmt: skip
HARDWARE = {"use_cpu": True}  # bf16, bfloat16 and gradient checkpointing stay as the recipes say
SCALE = {
    "data": {"sft_samples": 20, "rl_samples": 32},  # 18 SFT + 2 validation; 32 RL prompts = two GRPO samplings
    "sft": {"num_train_epochs": 1},  # 3 optimizer steps of 8, then the validation loss and early stopping's save
    # 32 prompts x 4 = 8 optimizer steps in one epoch, two samplings; a save (and a validation) after each.
    "grpo": {"max_completion_length": 16, "reward_length_threshold": 8, "validation_samples": 2,
             "per_device_eval_batch_size": 2, "save_steps": 4},
    "evaluate": {"max_new_tokens": 16},
}  # fmt: skip


def build_model(folder: Path) -> Path:
    """The shrunk MedGemma-4B architecture, random-initialised in bfloat16, with a processor (`SHRUNK`)."""
    import torch

    from benchmarks.paper_step import architecture, build_random_model

    config = architecture()
    for part, values in SHRUNK.items():
        config[part].update(values)
    return build_random_model(folder, config, "cpu", torch.bfloat16, fit_vocabulary=True)


def write_recipe(work: Path, types: tuple[type, ...], recipe: Path, overrides: dict) -> tuple[Path, list]:
    """`recipe` with `overrides`, written into `work`; refused unless every difference from the recipe is a declared
    scale, hardware or plumbing field. Returns the written recipe and the differences."""
    values = {**(yaml.safe_load(recipe.read_text()) or {}), **overrides}
    written = work / "recipes" / recipe.name
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(yaml.safe_dump(values, sort_keys=False))
    found = parity.differences(parity.parse_recipe_file(types, written), parity.parse_recipe_file(types, recipe))
    undeclared = [d.line() for d in found if d.kind is None]
    if undeclared:
        raise SystemExit(f"paper_rehearsal: {recipe.name}: an override is no declared knob:\n" + "\n".join(undeclared))
    return written, found


def paper_shaped_set(paper_set: Path, model: Path, stage_dirs: dict[str, Path], out: Path) -> Path:
    """`paper_set` (a model set naming the paper recipes' outputs) with its base `model` and every adapter under the
    run folder `stage_dirs` maps each paper ``output_dir`` to; written to `out`."""
    spec = yaml.safe_load(paper_set.read_text())
    for checkpoint in spec["checkpoints"]:
        checkpoint.update(model=str(model), revision=None)
        if checkpoint.get("adapter"):
            stage, folder = checkpoint["adapter"].removeprefix("../../").rsplit("/", 1)  # output_dir, (best_)adapter
            checkpoint["adapter"] = str(stage_dirs[stage] / folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def rehearse(work: Path) -> list[tuple[str, list, float]]:
    """Run every paper recipe in `work`; returns (stage, its differences from the recipe, seconds) per run."""
    from train import data, evaluate, grpo, sft
    from train.configs import DataConfig, EvaluateConfig, GRPOStageConfig, ModelArguments, SFTStageConfig

    done: list[tuple[str, list, float]] = []

    def run(label: str, main: Callable, types: tuple[type, ...], recipe: Path, overrides: dict) -> None:
        start = time.perf_counter()
        written, found = write_recipe(work, types, recipe, overrides)
        main(["--config", str(written)])
        done.append((label, found, time.perf_counter() - start))

    start = time.perf_counter()
    paths = real_format_tree(work / "raw", patients=30)  # 10 patients' images for SFT, 16 for RL
    tree = {name.removeprefix("--"): value for name, value in zip(paths[::2], paths[1::2], strict=True)}
    tree["chexpert_valid_csv"] = str(chexpert_valid_csv(Path(tree["chexpert_root"])))
    model = build_model(work / "model")
    done.append(("real-format tree and the shrunk MedGemma-4B", [], time.perf_counter() - start))

    outputs = {}  # a paper recipe's output_dir -> this run's
    for fmt in FORMATS:
        data_recipe = RECIPES / f"data_{fmt}.yaml"
        out = {"output_dir": str(work / f"data_{fmt}")}
        run(f"data ({fmt})", data.main, (DataConfig,), data_recipe, {**tree, **out, **SCALE["data"]})
        sft_recipe = RECIPES / f"sft_{fmt}.yaml"
        sft_out = work / f"sft_{fmt}"
        outputs[yaml.safe_load(sft_recipe.read_text())["output_dir"]] = sft_out
        overrides = {"model_name_or_path": str(model), "data_config": str(work / "recipes" / data_recipe.name),
                     "output_dir": str(sft_out), **HARDWARE, **SCALE["sft"]}  # fmt: skip
        run(f"SFT ({fmt})", sft.main, (ModelArguments, SFTStageConfig), sft_recipe, overrides)
    free_reasoning_data = str(work / "recipes" / "data_free_reasoning.yaml")
    for reward in ("hard", "nuanced"):
        recipe = RECIPES / f"grpo_{reward}.yaml"
        grpo_out = work / f"grpo_{reward}"
        outputs[yaml.safe_load(recipe.read_text())["output_dir"]] = grpo_out
        overrides = {"model_name_or_path": str(model), "data_config": free_reasoning_data,
                     "sft_recipe": str(work / "recipes" / "sft_free_reasoning.yaml"),
                     "sft_adapter": str(work / "sft_free_reasoning" / "adapter"), "output_dir": str(grpo_out),
                     **HARDWARE, **SCALE["grpo"]}  # fmt: skip
        run(f"GRPO ({reward})", grpo.main, (ModelArguments, GRPOStageConfig), recipe, overrides)

    model_set = paper_shaped_set(PAPER_SET, model, outputs, work / "paper_set" / "model_set.yaml")
    overrides = {"models": str(model_set), "data_config": free_reasoning_data, **SCALE["evaluate"]}
    run("evaluate", evaluate.main, (EvaluateConfig,), RECIPES / "evaluate.yaml", overrides)

    start = time.perf_counter()
    from chexreason.app import build_demo

    build_demo(model_set)  # the Compare, Results (eval.json beside the set), Training and About tabs
    done.append(("the app on the paper-shaped set", [], time.perf_counter() - start))
    return done


def main(argv: list[str] | None = None) -> list[tuple[str, list, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="run in this folder and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="paper-rehearsal-") as scratch:
        work = Path(args.workdir or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        done = rehearse(work)
    print("\n| stage | declared differences from the paper recipe | time |\n| --- | --- | ---: |")
    for label, found, seconds in done:
        shown = "; ".join(f"{d.kind} {d.field} {d.ours!r}" for d in found if d.kind != "plumbing")
        plumbing = sum(d.kind == "plumbing" for d in found)
        print(f"| {label} | {shown or '—'}{f' (+{plumbing} plumbing)' if plumbing else ''} | {seconds:.0f} s |")
    print(f"| **total** | | **{sum(s for *_, s in done):.0f} s** |")
    return done


if __name__ == "__main__":
    main()
