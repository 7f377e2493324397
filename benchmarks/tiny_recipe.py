"""The whole tiny recipe from nothing, timed stage by stage (target: at most 10 minutes on 2 cores).

    python -m benchmarks.tiny_recipe              # ~9 min on 2 idle cores; run it on an idle machine
    python -m benchmarks.tiny_recipe --seed 1     # the same with another training seed (the data stay the same)
    python -m benchmarks.tiny_recipe --smoke      # a few samples per stage (~1-2 min): checks the mechanics only
    python -m benchmarks.tiny_recipe --dry-run    # write the recipes and print what would run

Runs ``python -m train.grpo`` on the tiny recipes relocated into a temporary folder (`train.tiny_recipes`), so
nothing in outputs/ or checkpoints/tiny is read or overwritten. Each stage ends when it writes its last file
(the vision warm-up: when it logs its summary); a stage's time runs from the previous stage's end, Python's
start-up included in the first. Prints a table, the machine and the run's results (its model card's tables).
With other jobs on the cores, torch's intra-op threads slow every stage down many times over: check the load
average it prints.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from train.tiny_recipes import recipes_in

REPO = Path(__file__).resolve().parents[1]
# (stage, what marks its end: a file relative to the run folder, or the start of a log line)
STAGES = (
    ("data", "data/manifest.json"),
    ("base: tiny model + vision warm-up", "log:INFO chexreason.training.pretrain: vision warm-up:"),
    ("base: language stage", "base/base_log.json"),
    ("SFT", "sft/sft_log.json"),
    ("GRPO", "grpo/grpo_log.json"),
    ("export", "tiny/model_set.yaml"),
    ("evaluation", "tiny/README.md"),
)
# --smoke: every stage on a handful of samples, to check the run and this script, not to time the recipe.
SMOKE = {
    "data": {"sft_samples": 40, "rl_samples": 8, "test_samples_per_site": 8, "image_size": 112, "workers": 1},
    "base": {"vision_samples": 64, "vision_epochs": 1, "caption_samples": 32, "format_samples": 16},
    "sft": {"num_train_epochs": 1},
    "grpo": {"per_device_train_batch_size": 4, "max_completion_length": 32, "validation_samples": 8, "save_steps": 4},
}


def machine() -> str:
    """Cores, CPU model, torch threads and load: what the timings depend on."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"machine: {os.cpu_count()} cores ({model}), {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}, Python {platform.python_version()}; load average (1/5/15 min) before the run: {load}"
    )


def run_recipe(recipe: Path, log_path: Path, echo: bool) -> tuple[int, float, float, dict[str, float]]:
    """Run the GRPO recipe from nothing; returns (exit code, start, end, {log marker: time it was printed})."""
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    markers = [end[4:] for _, end in STAGES if end.startswith("log:")]
    seen: dict[str, float] = {}
    command = [sys.executable, "-m", "train.grpo", "--config", str(recipe)]
    start = time.time()
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process,
    ):
        for line in process.stdout:
            log.write(line)
            if echo:
                print(line, end="", flush=True)
            for marker in markers:
                if line.startswith(marker):
                    seen.setdefault(marker, time.time())
    return process.returncode, start, time.time(), seen


def stage_times(folder: Path, start: float, seen: dict[str, float]) -> list[tuple[str, float | None]]:
    """Seconds per stage, from each stage's end mark to the next; None where a mark is missing."""
    times, previous = [], start
    for name, end in STAGES:
        if end.startswith("log:"):
            at = seen.get(end[4:])
        else:
            at = (folder / end).stat().st_mtime if (folder / end).exists() else None
        times.append((name, None if at is None else at - previous))
        previous = at if at is not None else previous
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="run in this (new or empty) folder and keep it (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true", help="a few samples per stage: checks the mechanics only")
    parser.add_argument("--dry-run", action="store_true", help="write the recipes, print the command, run nothing")
    parser.add_argument("--echo", action="store_true", help="print the run's log as it goes")
    parser.add_argument("--seed", type=int, help="training seed of base, SFT and GRPO (default: the recipes' 0)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tiny-recipe-") as scratch:
        folder = Path(args.workdir or scratch).resolve()
        if folder.exists() and any(folder.iterdir()) and args.workdir:
            sys.exit(f"benchmarks.tiny_recipe: {folder} is not empty; the recipe must start from nothing")
        overrides = {stage: dict(values) for stage, values in (SMOKE if args.smoke else {}).items()}
        if args.seed is not None:  # model init, shuffling and sampling of the training stages; the data stay fixed
            for stage in ("base", "sft", "grpo"):
                overrides.setdefault(stage, {})["seed"] = args.seed
        recipe = recipes_in(folder, overrides)
        print(machine())
        print(f"running: python -m train.grpo --config {recipe}" + (" (smoke: not the recipe's timing)" * args.smoke))
        if args.dry_run:
            return
        code, start, end, seen = run_recipe(recipe, folder / "run.log", args.echo)
        if code != 0:
            print((folder / "run.log").read_text()[-4000:], file=sys.stderr)
            sys.exit(f"benchmarks.tiny_recipe: the run failed with exit code {code} (log: {folder / 'run.log'})")
        total = end - start
        print("\n| stage | time | share |\n| --- | ---: | ---: |")
        for name, seconds in stage_times(folder, start, seen):
            cells = ("n/a", "") if seconds is None else (f"{seconds:.0f} s", f"{100 * seconds / total:.0f}%")
            print(f"| {name} | {cells[0]} | {cells[1]} |")
        print(f"| **total** | **{int(total // 60)} min {total % 60:.0f} s** | 100% |")
        card = (folder / "tiny" / "README.md").read_text().splitlines()  # the run's results: its model card's tables
        rows = [i for i, line in enumerate(card) if line.startswith("|")]
        print("\n" + "\n".join(card[rows[0] : rows[-1] + 1]))
        if args.workdir:
            print(f"outputs and run.log kept in {folder}")


if __name__ == "__main__":
    main()
