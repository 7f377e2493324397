"""MedGemma-4B's architecture as written for the GPU benchmark (`train/recipes/medgemma-4b/architecture.yaml`)."""

import torch
from transformers import AutoModelForImageTextToText, Gemma3Config

from benchmarks.paper_step import architecture


def test_architecture_builds_medgemma_4b_sized_model():
    config = Gemma3Config(**architecture())
    with torch.device("meta"):  # shapes only: no memory, no weights
        model = AutoModelForImageTextToText.from_config(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 4.30  # Gemma 3 4B's published size
    assert model.get_input_embeddings().num_embeddings == 262208
    assert config.vision_config.image_size // config.vision_config.patch_size == 64  # 64 x 64 patches at 896 px
    assert config.mm_tokens_per_image == 256


def test_the_gpu_benchmark_says_it_needs_a_gpu_and_writes_a_valid_data_recipe(tmp_path, monkeypatch):
    import pytest

    from benchmarks import paper_step
    from chexreason.data.config import read_data_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        paper_step.main([])
    recipe = read_data_config(str(paper_step.data_recipe(tmp_path, 896)))  # the phantoms it trains on, at 896 px
    assert recipe.image_size == 896 and recipe.sft_samples == 80 and recipe.output_dir == str(tmp_path / "data")
