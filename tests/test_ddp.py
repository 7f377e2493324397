"""Data-parallel SFT as README and train/recipes/accelerate/ddp.yaml document it: `accelerate launch` with the DDP
config, here as 2 CPU processes (gloo) on the tiny model and a few phantoms (~20 s on 2 cores)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

SAMPLES, PER_DEVICE, ACCUMULATION, PROCESSES = 16, 2, 2, 2


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_sft_runs_data_parallel_on_two_cpu_processes(tiny, data_recipe, tmp_path):
    out = tmp_path / "sft"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "train/recipes/accelerate/ddp.yaml"]
    command = [*launch, "--num_processes", str(PROCESSES), "--mixed_precision", "no", "-m", "train.sft",
               "--config", "train/recipes/tiny/sft.yaml", "--model_name_or_path", str(tiny),
               "--data_config", str(data_recipe), "--base_recipe", "", "--output_dir", str(out),
               "--max_train_samples", str(SAMPLES), "--max_eval_samples", "2", "--num_train_epochs", "1",
               "--per_device_train_batch_size", str(PER_DEVICE), "--gradient_accumulation_steps", str(ACCUMULATION),
               "--per_device_eval_batch_size", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]

    # Two processes trained: each rank saved its RNG state, and each optimizer step took PER_DEVICE samples
    # from each rank per accumulation step (one process would have taken twice as many steps).
    checkpoint = out / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] == SAMPLES // (PER_DEVICE * PROCESSES * ACCUMULATION)
    # The datasets were built once, by rank 0 (train.sft builds them under main_process_first), not raced over.
    assert log.count(f"built {data_recipe.parent / 'built'} in") <= 1
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(torch.count_nonzero(w) for name, w in weights.items() if "lora_B" in name)  # it learnt something
    assert any("eval_loss" in entry for entry in json.loads((out / "sft_log.json").read_text()))
