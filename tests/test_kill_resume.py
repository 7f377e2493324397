"""Killed and rerun: each stage is run as a subprocess that SIGKILLs itself at a named moment
(``CHEXREASON_FAULT_AT``, `chexreason.faults`), rerun with the same command until it finishes, and what it leaves
is compared with an uninterrupted run of the same command: the same adapters, ``best.json``, logs (but for their
timing fields), data and results. Small runs on the random tiny model, keeping the shipped recipes' intervals
(sampling every 4 steps, saves on a sampling boundary, logs not aligned with saves) and the nuanced window."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "stage_runner.py"
TIMING = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "step_time", "created", "seconds",
          "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
          "images_per_second", "timings"}  # fmt: skip


class StageRunner:
    """`tests/stage_runner.py`: imports the stages once, then runs each in a forked child (see there)."""

    def __init__(self, log_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "CHEXREASON_FAULT_AT"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen([sys.executable, str(RUNNER)], env=env, cwd=ROOT, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert self.process.stdout.readline().strip() == "ready"
        self.log_dir, self.runs = log_dir, 0
        self.last_pid: int | None = None

    def run(self, stage: str, argv: list[str], fault: str | None = None) -> int:
        """Run `stage` with `argv`; returns its exit status (-9: killed at `fault`), raising with its log if it
        failed otherwise."""
        self.runs += 1
        log = self.log_dir / f"{self.runs:02d}-{stage}-{fault or 'to-the-end'}.log"
        request = {"stage": stage, "argv": argv, "fault": fault, "log": str(log)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        self.last_pid = answer["pid"]
        if answer["status"] not in (0, -signal.SIGKILL):
            raise AssertionError(f"{stage} failed ({answer['status']}):\n{log.read_text()[-4000:]}")
        return answer["status"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    runner = StageRunner(tmp_path_factory.mktemp("stage-logs"))
    yield runner
    runner.close()


def killed_then_rerun(runner: StageRunner, stage: str, argv: list[str], faults: list[str]) -> None:
    """Run `stage` once per fault, each run killed at its fault (asserted), then once to the end."""
    for fault in faults:
        assert runner.run(stage, argv, fault) == -signal.SIGKILL, f"{stage} was never killed at {fault}"
    assert runner.run(stage, argv) == 0


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def json_of(path: Path):
    return without_timing(json.loads(path.read_text()))


def same_files(a: Path, b: Path, pattern: str = "*.safetensors") -> None:
    names = sorted(p.name for p in a.glob(pattern))
    assert names and names == sorted(p.name for p in b.glob(pattern))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a / name} differs from {b / name}"


# ------------------------------------------------------------------------------------------------ GRPO


def _grpo_args(tiny: Path, sft: Path, data: Path, root: Path) -> list[str]:
    return ["--config", "train/recipes/tiny/grpo.yaml", "--model_name_or_path", str(tiny), "--sft_adapter", str(sft),
            "--sft_recipe", "", "--data_config", str(data), "--output_dir", str(root / "run"),
            "--export_dir", str(root / "set"), "--evaluate_after", "true",
            "--max_completion_length", "16", "--per_device_train_batch_size", "4",  # 1 prompt x 4 per step
            # the recipe's sampling interval (4 steps), a save on its boundary, logs between saves:
            "--steps_per_generation", "4", "--save_steps", "4", "--logging_steps", "3", "--max_steps", "8",
            "--per_device_eval_batch_size", "2", "--validation_samples", "2", "--max_train_samples", "4",
            "--rewards", "nuanced", "test_parity"]  # fmt: skip


@pytest.fixture(scope="module")
def grpo_reference(runner, tiny, sft_adapter, data_recipe, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grpo-uninterrupted")
    assert runner.run("grpo", _grpo_args(tiny, sft_adapter, data_recipe, root)) == 0
    return root


def test_grpo_killed_anywhere_ends_as_if_never_killed(
    runner, grpo_reference, tiny, sft_adapter, data_recipe, tmp_path
):
    """Killed after checkpoint-8's window is written but before its trainer state (resumes from checkpoint-4), then
    during checkpoint-8's validation (complete checkpoint, validation not), after the final log but before the final
    adapter, and during the export: each rerun resumes from the newest complete checkpoint, validates what was not
    validated, and the last one leaves exactly what an uninterrupted run leaves."""
    faults = ["reward-state-written:2", "validation-started:1", "final-log-written", "export-started"]
    killed_then_rerun(runner, "grpo", _grpo_args(tiny, sft_adapter, data_recipe, tmp_path), faults)
    ref, run = grpo_reference / "run", tmp_path / "run"
    same_files(run / "adapter", ref / "adapter")
    same_files(run / "best_adapter", ref / "best_adapter")
    assert json_of(run / "best_adapter" / "best.json") == json_of(ref / "best_adapter" / "best.json")
    log, ref_log = json_of(run / "grpo_log.json"), json_of(ref / "grpo_log.json")
    assert [v["step"] for v in log["validation"]] == [4, 8]  # step 8 validated after the kill
    assert log == ref_log
    for folder in ("base", "sft", "grpo"):
        same_files(tmp_path / "set" / folder, grpo_reference / "set" / folder)
    assert json_of(tmp_path / "set" / "eval.json") == json_of(grpo_reference / "set" / "eval.json")
    assert (tmp_path / "set" / "README.md").read_text().replace(str(tmp_path), "") == (
        grpo_reference / "set" / "README.md"
    ).read_text().replace(str(grpo_reference), "")


def test_the_paper_grpo_recipe_killed_resumes_exactly(runner, tiny, sft_adapter, data_recipe, tmp_path):
    """The paper's hard-reward recipe as it is (clipped off-policy: 16 prompts x 4 completions sampled for 4
    optimizer steps of 4 accumulated micro-batches; a save every 4 steps here), on the tiny model and CPU: killed
    with a checkpoint's optimizer written but not its trainer state, then during a validation; the same adapter,
    best and log."""

    def args(out: Path) -> list[str]:
        return ["--config", "train/recipes/medgemma-4b/grpo_hard.yaml", "--model_name_or_path", str(tiny),
                "--dtype", "float32", "--bf16", "false", "--use_cpu", "true", "--gradient_checkpointing", "false",
                "--sft_adapter", str(sft_adapter), "--sft_recipe", "", "--data_config", str(data_recipe),
                "--output_dir", str(out), "--max_completion_length", "16", "--max_steps", "8", "--save_steps", "4",
                "--logging_steps", "1", "--validation_samples", "2", "--per_device_eval_batch_size", "2",
                "--max_train_samples", "16", "--rewards", "hard", "test_parity"]  # fmt: skip

    assert runner.run("grpo", args(tmp_path / "reference")) == 0
    killed_then_rerun(runner, "grpo", args(tmp_path / "killed"), ["checkpoint-optimizer:2", "validation-started:1"])
    ref, run = tmp_path / "reference", tmp_path / "killed"
    same_files(run / "adapter", ref / "adapter")
    assert json_of(run / "best_adapter" / "best.json") == json_of(ref / "best_adapter" / "best.json")
    assert json_of(run / "grpo_log.json") == json_of(ref / "grpo_log.json")


# ------------------------------------------------------------------------------------------------- SFT


def _sft_args(tiny: Path, data: Path, out: Path) -> list[str]:
    # 16 examples, batch 8: 2 steps an epoch, a checkpoint at the end of each (as the recipe saves), logs every 3.
    return ["--config", "train/recipes/tiny/sft.yaml", "--model_name_or_path", str(tiny), "--data_config", str(data),
            "--output_dir", str(out), "--base_recipe", "", "--num_train_epochs", "2", "--max_train_samples", "16",
            "--max_eval_samples", "2", "--logging_steps", "3"]  # fmt: skip


def test_sft_killed_anywhere_ends_as_if_never_killed(runner, tiny, data_recipe, tmp_path):
    """Killed with checkpoint-2's weights written (nothing to resume: starts again), with checkpoint-4's optimizer
    written but not its trainer state (resumes from checkpoint-2), and after the final log but before the adapter:
    the same adapter and log (the first log after the resume and the final train_loss included) as one run."""
    assert runner.run("sft", _sft_args(tiny, data_recipe, tmp_path / "reference")) == 0
    faults = ["checkpoint-weights:1", "checkpoint-optimizer:2", "final-log-written"]
    killed_then_rerun(runner, "sft", _sft_args(tiny, data_recipe, tmp_path / "killed"), faults)
    ref, run = tmp_path / "reference", tmp_path / "killed"
    same_files(run / "adapter", ref / "adapter")
    log = json_of(run / "sft_log.json")
    assert [entry["step"] for entry in log if "loss" in entry] == [3]  # step 3's log averages steps 1-3
    assert log == json_of(ref / "sft_log.json")


# ---------------------------------------------------------------------------------------------- evaluate


def test_evaluation_killed_anywhere_keeps_the_previous_results_and_ends_as_if_never_killed(
    runner, tiny_set, data_recipe, tmp_path
):
    """Killed after a batch of the second split (resumes from its records, losing no complete batch) and after
    every record but before the summary: until the end, the previous good results stay; then the same results."""
    from chexreason.results import load_results

    def args(out: Path, *extra: str) -> list[str]:
        return ["--models", str(tiny_set), "--data_config", str(data_recipe), "--out", str(out),
                "--batch_size", "2", "--n_resamples", "50", "--max_new_tokens", "16", *extra]  # fmt: skip

    assert runner.run("evaluate", args(tmp_path / "reference" / "eval.json")) == 0
    out = tmp_path / "killed" / "eval.json"
    assert runner.run("evaluate", args(out, "--limit", "2")) == 0  # a good, older result in place
    previous = out.read_bytes()
    for fault in ("evaluate-batch:3", "results-write"):
        assert runner.run("evaluate", args(out), fault) == -signal.SIGKILL
        assert out.read_bytes() == previous and load_results(out).runs[0].metrics["n"] == 2
    log = runner.log_dir / f"{runner.runs:02d}-evaluate-results-write.log"
    assert "2 records kept" not in log.read_text() and "records kept" in log.read_text()
    assert runner.run("evaluate", args(out)) == 0
    ref = tmp_path / "reference"
    assert json_of(out) == json_of(ref / "eval.json")
    assert (out.parent / "eval.records.jsonl").read_bytes() == (ref / "eval.records.jsonl").read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json", "eval.records.jsonl"]  # nothing pending


# -------------------------------------------------------------------------------------------------- data


def _data_recipe(folder: Path, seed: int, workers: int = 1) -> Path:
    recipe = folder / f"data-seed{seed}.yaml"
    recipe.write_text(Path("train/recipes/tiny/data.yaml").read_text() + f"\noutput_dir: {folder / 'built'}\n"
                      f"seed: {seed}\nsft_samples: 20\nrl_samples: 4\ntest_samples_per_site: 4\nimage_size: 64\n"
                      f"workers: {workers}\n")  # fmt: skip
    return recipe


def _rows(folder: Path) -> dict:
    from datasets import load_from_disk

    built = load_from_disk(str(folder / "built" / "datasets"))
    return {name: (split["id"], split["ground_truth"]) for name, split in built.items()}


def test_a_data_build_killed_before_its_manifest_is_rebuilt_not_mistaken_for_another(runner, tmp_path):
    """Seed 0 built; a seed-1 build into the same folder killed between installing its datasets and writing its
    manifest; the seed-0 command then rebuilds (it must not reuse seed 1's rows as "the same config")."""
    seed0, seed1 = _data_recipe(tmp_path, 0), _data_recipe(tmp_path, 1)
    assert runner.run("data", ["--config", str(seed0)]) == 0
    rows0 = _rows(tmp_path)
    assert runner.run("data", ["--config", str(seed1)], "manifest-write") == -signal.SIGKILL
    assert _rows(tmp_path) != rows0 and not (tmp_path / "built" / "manifest.json").exists()
    assert runner.run("data", ["--config", str(seed0)]) == 0
    assert _rows(tmp_path) == rows0
    (tmp_path / "built" / "manifest.json").write_text('{"fingerprint": "cut sh')  # a manifest cut short
    assert runner.run("data", ["--config", str(seed0)]) == 0  # rebuilt, with a warning: no traceback
    assert _rows(tmp_path) == rows0 and json.loads((tmp_path / "built" / "manifest.json").read_text())["splits"]


def test_a_killed_data_build_leaves_no_worker_processes(runner, tmp_path):
    assert runner.run("data", ["--config", str(_data_recipe(tmp_path, 0, workers=2))], "data-generating") == -9
    session = runner.last_pid  # the child was its session's leader: its workers are in that session
    deadline = time.monotonic() + 10
    while (left := _in_session(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"worker processes outlived the killed build: {left}"


def _in_session(session: int) -> list[int]:
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":  # fields: state, ppid, pgrp, session
            left.append(int(stat.parent.name))
    return left
