"""The paper recipe's SFT and GRPO step time and peak GPU memory on a random-initialised full-size MedGemma-4B.

    python -m benchmarks.paper_step              # on one GPU: 4 SFT, then 4 GRPO optimizer steps (not yet run)
    python -m benchmarks.paper_step --smoke      # on a CPU: every paper recipe, small (benchmarks.paper_rehearsal)

No weights are needed or downloaded. The model is MedGemma-4B's published architecture
(`train/recipes/medgemma-4b/architecture.yaml`: Gemma 3 4B text with its 262,208-token vocabulary, SigLIP-400M
vision at 896 px, 256 image tokens; 4.30 B parameters), random-initialised in bf16. Its tokenizer is the tiny
recipe's (offline; the special-token ids are mapped onto it): it decides how the phantom prompts and answers are
split into tokens, not what a token costs. The training is the repository's own commands with the paper recipes
unchanged — `python -m train.sft` with `sft_free_reasoning.yaml` (LoRA r 16, bf16, gradient checkpointing,
effective batch 1 x 8) and `python -m train.grpo` with `grpo_hard.yaml` (4 completions of up to 1,024 tokens,
16 per optimizer step, sampled 64 at a time for 4 optimizer steps, the SFT adapter as KL reference) — on
phantoms drawn at 896 px, stopped after ``--steps`` optimizer steps (4: one sampling). A random model seldom
samples an end-of-turn token, so its GRPO completions run to the full 1,024 tokens: the GRPO time is an upper
bound. Prints seconds per optimizer step and peak GPU memory (``torch.cuda.max_memory_allocated``), with the card,
against the paper's one A100 (40 or 80 GB).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from chexreason.training.tiny_model import TinySpec, build_tokenizer, save_random_gemma3

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "train" / "recipes" / "medgemma-4b"


def architecture() -> dict:
    """MedGemma-4B's architecture (``train/recipes/medgemma-4b/architecture.yaml``)."""
    return yaml.safe_load((RECIPES / "architecture.yaml").read_text())


def build_random_model(
    folder: Path, config: dict, device: str, dtype: torch.dtype, fit_vocabulary: bool = False
) -> Path:
    """Save a random-initialised Gemma3 VLM of `config` with the tiny recipe's tokenizer and a processor;
    `fit_vocabulary`: its embedding sized to that tokenizer, not to the config's (MedGemma's 262,208)."""
    tokenizer = build_tokenizer(TinySpec().vocab_size)
    text, vision = dict(config["text_config"]), config["vision_config"]
    if fit_vocabulary:
        text["vocab_size"] = len(tokenizer)
    n = save_random_gemma3(folder, tokenizer, text, vision, config["mm_tokens_per_image"], 0, device, dtype)
    print(f"random model: {n / 1e9:.2f} B parameters, {dtype}, saved to {folder}", flush=True)
    return folder


def data_recipe(folder: Path, image_size: int) -> Path:
    """A small phantom data recipe (the tiny recipe's, Free Reasoning answers) drawn at `image_size` px."""
    recipe = yaml.safe_load((REPO / "train" / "recipes" / "tiny" / "data.yaml").read_text())
    small = {"sft_samples": 80, "rl_samples": 32, "test_samples_per_site": 4}
    recipe.update(output_dir=str(folder / "data"), image_size=image_size, **small)
    path = folder / "data.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def peak_memory_gb() -> float:
    """Peak GPU memory allocated since the last reset."""
    return torch.cuda.max_memory_allocated() / 2**30


def free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def run_stage(main, argv: list[str], log: Path, steps: int) -> dict:
    """Run one training command in this process; its seconds per optimizer step and peak memory."""
    free_memory()
    main(argv)
    history = json.loads(log.read_text())
    history = history["log_history"] if isinstance(history, dict) else history
    runtime = next(entry["train_runtime"] for entry in history if "train_runtime" in entry)
    step_times = [entry["step_time"] for entry in history if "step_time" in entry]  # GRPO logs its own
    return {
        "steps": steps,
        "seconds_per_step": runtime / steps,
        "median_step_time": statistics.median(step_times) if step_times else None,
        "peak_memory_gb": peak_memory_gb(),
    }


def main(argv: list[str] | None = None) -> list | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per stage (default 4: one sampling)")
    parser.add_argument("--smoke", action="store_true", help="on a CPU: every paper recipe at small scale instead")
    parser.add_argument("--workdir", help="keep the model, data and logs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.smoke:  # on a CPU: every paper recipe at small scale (benchmarks.paper_rehearsal)
        from benchmarks import paper_rehearsal

        return paper_rehearsal.main(["--workdir", args.workdir] if args.workdir else [])
    if not torch.cuda.is_available():
        sys.exit("benchmarks.paper_step: needs a CUDA GPU (--smoke rehearses every paper recipe on a CPU)")

    from train import grpo, sft

    config = architecture()
    device = f"{torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
    with tempfile.TemporaryDirectory(prefix="paper-step-") as scratch:
        work = Path(args.workdir or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        model = build_random_model(work / "model", config, "cuda", torch.bfloat16)
        data = data_recipe(work, config["vision_config"]["image_size"])
        common = ["--model_name_or_path", str(model), "--data_config", str(data), "--max_steps", str(args.steps)]
        common += ["--logging_steps", "1", "--report_to", "none"]
        never = str(10**6)  # SFT's early stopping needs an eval/save strategy; neither comes within --steps
        sft_args = ["--config", str(RECIPES / "sft_free_reasoning.yaml"), "--output_dir", str(work / "sft")]
        sft_args += ["--eval_strategy", "steps", "--save_strategy", "steps", "--eval_steps", never]
        sft_args += ["--save_steps", never, "--max_eval_samples", "2", *common]  # the final evaluation: 2 images
        grpo_args = ["--config", str(RECIPES / "grpo_hard.yaml"), "--output_dir", str(work / "grpo")]
        grpo_args += ["--sft_adapter", str(work / "sft" / "adapter"), "--sft_recipe", "", "--export_dir", ""]
        grpo_args += ["--validation_samples", "0", "--save_strategy", "no", *common]
        results = {
            "SFT (sft_free_reasoning.yaml)": run_stage(sft.main, sft_args, work / "sft" / "sft_log.json", args.steps),
            "GRPO (grpo_hard.yaml)": run_stage(grpo.main, grpo_args, work / "grpo" / "grpo_log.json", args.steps),
        }

    print(f"\ndevice: {device}; torch {torch.__version__}; paper: one A100 (40 or 80 GB)")
    print("| stage | optimizer steps | s / optimizer step | GRPO's logged step time (median) | peak memory |")
    print("| --- | ---: | ---: | ---: | ---: |")
    memory = "GPU memory"
    for name, r in results.items():
        median = "" if r["median_step_time"] is None else f"{r['median_step_time']:.1f} s"
        print(
            f"| {name} | {r['steps']} | {r['seconds_per_step']:.1f} s | {median} | "
            f"{r['peak_memory_gb']:.1f} GiB {memory} |"
        )


if __name__ == "__main__":
    main()
