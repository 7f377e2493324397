"""Test-wide settings and shared fixtures. Nothing reaches the network."""

import os

# Before anything imports huggingface_hub, which reads these once, at import: offline, no telemetry, no analytics,
# no progress bars in the tests' output.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["TQDM_DISABLE"] = "1"

from pathlib import Path

import pytest
import torch

from chexreason.training import LM_PROJECTIONS

ADAPTERS = ("sft", "grpo")


def _build_tiny_set(root: Path) -> Path:
    """A tiny base, two perturbed LoRA adapters on its language model, and the model_set.yaml naming them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from chexreason.training.tiny_model import build_tiny

    build_tiny(root / "base")
    for i, name in enumerate(ADAPTERS):
        model = AutoModelForImageTextToText.from_pretrained(root / "base", use_safetensors=True)
        # A regex, so the vision tower's own q/k/v and MLP projections are not adapted. The two task types
        # make PEFT wrap the base in `PeftModel` (sft first) or `PeftModelForCausalLM` (grpo first): both
        # generate through the mixed-batch hooks, and both are tested.
        task_type = "CAUSAL_LM" if name == "grpo" else None
        config = LoraConfig(r=4, lora_alpha=8, target_modules=LM_PROJECTIONS, task_type=task_type)
        peft_model = get_peft_model(model, config)
        noise = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for parameter_name, parameter in peft_model.named_parameters():
                if "lora_B" in parameter_name:  # zero at init: the adapter would equal the base
                    parameter.copy_(torch.randn(parameter.shape, generator=noise) * 0.3)
        peft_model.save_pretrained(root / name)
    path = root / "model_set.yaml"
    path.write_text(
        "name: tiny-test\n"
        "description: random tiny Gemma3 with two noise adapters (tests only)\n"
        "checkpoints:\n"
        "  - {name: base, title: Base, model: base, prompt: free_reasoning}\n"
        "  - {name: sft, title: SFT, model: base, adapter: sft, prompt: free_reasoning}\n"
        "  - {name: grpo, title: GRPO, model: base, adapter: grpo, prompt: free_reasoning}\n"
    )
    return path


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model set's YAML (random base + two noise adapters), built once per session."""
    return _build_tiny_set(tmp_path_factory.mktemp("tiny-set"))


@pytest.fixture(scope="session")
def models(tiny_set: Path):
    """The tiny model set, loaded once per session."""
    from chexreason.modeling import load_model_set

    return load_model_set(tiny_set)


@pytest.fixture(scope="session")
def tiny(tiny_set) -> Path:
    """The random tiny base model of the shared test model set (conftest.py)."""
    return tiny_set.parent / "base"


@pytest.fixture(scope="session")
def sft_adapter(tiny, tmp_path_factory) -> Path:
    """A stand-in SFT adapter: the SFT stage's LoRA (`lora_config`) with random B, so it differs from the base."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from chexreason.training import lora_config
    from train.configs import ModelArguments

    model = AutoModelForImageTextToText.from_pretrained(tiny, use_safetensors=True)
    peft_model = get_peft_model(model, lora_config(ModelArguments(lora_r=4, lora_alpha=8)))
    noise = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=noise) * 0.3)
    folder = tmp_path_factory.mktemp("sft") / "adapter"
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def data_recipe(tmp_path_factory) -> Path:
    """A small phantom data recipe (its datasets are built by the first stage that needs them)."""
    folder = tmp_path_factory.mktemp("data")
    recipe = folder / "data.yaml"
    recipe.write_text(
        Path("train/recipes/tiny/data.yaml").read_text()
        + f"\noutput_dir: {folder / 'built'}\nsft_samples: 20\nrl_samples: 16\ntest_samples_per_site: 4\n"
        + "image_size: 96\nworkers: 1\n"
    )
    return recipe


@pytest.fixture(scope="session")
def app_url():
    """The app on the bundled tiny set, served over HTTP on a free local port once per session."""
    import socket

    from chexreason.app import build_demo, launch_options

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo("tiny")
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, **launch_options())
    yield f"http://127.0.0.1:{port}/"
    demo.close()
