"""The Qwen2.5-VL path on a tiny random Qwen2.5-VL (conftest.py): model sets, the paper recipe's SFT settings,
its visual-token budget and assistant-only loss. `make test-qwen` (a separate venv with torchvision)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from sft_masking import trained_text

from chexreason.modeling import GenerationSettings
from chexreason.training import LM_PROJECTIONS
from train.configs import ModelArguments

pytestmark = pytest.mark.qwen
RECIPE = "train/recipes/qwen2.5-vl-3b/sft_free_reasoning.yaml"
MIN_TOKENS, MAX_TOKENS = 256, 512  # the recipe's min_pixels / max_pixels, in 28 x 28 visual tokens


def _phantoms(n: int, size: int = 96):
    from chexreason.data.phantom import generate

    return [sample.image.convert("RGB") for sample in generate("a", n, seed=7, size=size)]


def _image_tokens(processor, image) -> int:
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], add_generation_prompt=True
    )
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    return int((inputs["input_ids"] == processor.image_token_id).sum())


@pytest.mark.filterwarnings("error:Passing `min_pixels`:FutureWarning")  # the bounds reach Qwen as its size
def test_the_recipe_pixel_bounds_set_qwens_visual_tokens(tiny_qwen):
    from chexreason.training import load_model

    recipe = yaml.safe_load(Path(RECIPE).read_text())
    bounds = {"min_pixels": recipe["min_pixels"], "max_pixels": recipe["max_pixels"]}
    model, processor = load_model(ModelArguments(model_name_or_path=str(tiny_qwen), dtype="float32", **bounds))
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    small, large = _phantoms(1, 96)[0], _phantoms(1, 1024)[0]
    assert _image_tokens(processor, small) == MIN_TOKENS  # 96 px scaled up to 448 x 448: 16 x 16 tokens
    assert MIN_TOKENS <= _image_tokens(processor, large) <= MAX_TOKENS  # 1024 px scaled down
    _, default = load_model(ModelArguments(model_name_or_path=str(tiny_qwen), dtype="float32"))
    assert _image_tokens(default, large) > MAX_TOKENS  # without the bounds, Qwen's own (up to 1,280 tokens)


@pytest.fixture(scope="module")
def qwen_sft(tiny_qwen, data_recipe, tmp_path_factory):
    """The Qwen2.5-VL-3B recipe (Free Reasoning) run on the tiny Qwen: only scale and device overridden."""
    from train import sft

    out = tmp_path_factory.mktemp("qwen-sft")
    adapter = sft.main(["--config", RECIPE, "--model_name_or_path", str(tiny_qwen), "--data_config", str(data_recipe),
                        "--output_dir", str(out), "--dtype", "float32", "--bf16", "false", "--use_cpu", "true",
                        "--max_train_samples", "4", "--max_eval_samples", "2", "--num_train_epochs", "1",
                        "--gradient_accumulation_steps", "2"])  # fmt: skip
    return out, adapter


def test_sft_with_the_qwen_recipe_trains_lora_on_the_language_model_only(qwen_sft):
    out, adapter = qwen_sft
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in name and "language_model" in name for name in weights)  # never `visual`
    assert any(torch.count_nonzero(w) for name, w in weights.items() if "lora_B" in name)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 32, 0.1)
    log = json.loads((out / "sft_log.json").read_text())
    assert any("eval_loss" in entry for entry in log)
    assert max(entry.get("step", 0) for entry in log) == 2  # 4 samples / (1 per device x 2 accumulation)
    # The adapter's processor keeps the recipe's visual-token bounds, so it is served as it was trained.
    size = json.loads((adapter / "processor_config.json").read_text())["image_processor"]["size"]
    assert (size["shortest_edge"], size["longest_edge"]) == (MIN_TOKENS * 28 * 28, MAX_TOKENS * 28 * 28)


def test_assistant_only_loss_covers_exactly_the_answer_with_qwens_template(tiny_qwen, data_recipe):
    trained, answer = trained_text(tiny_qwen, data_recipe, dtype="float32")
    assert trained == answer + "<|im_end|>\n"


def test_a_model_set_serves_base_and_adapters_of_a_qwen_in_one_batch(tiny_qwen, qwen_sft, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from chexreason.modeling import load_model_set

    # A noise adapter: the SFT one barely moved from a zero lora_B, so greedy outputs could equal the base's.
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen, use_safetensors=True)
    noisy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LM_PROJECTIONS))
    with torch.no_grad():
        for name, parameter in noisy.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    noisy.save_pretrained(tmp_path / "noise")
    path = tmp_path / "model_set.yaml"
    recipe = yaml.safe_load(Path(RECIPE).read_text())
    path.write_text(
        f"name: tiny-qwen\nmin_pixels: {recipe['min_pixels']}\nmax_pixels: {recipe['max_pixels']}\ncheckpoints:\n"
        f"  - {{name: base, model: {tiny_qwen}}}\n"
        f"  - {{name: sft, model: {tiny_qwen}, adapter: {qwen_sft[1]}}}\n"
        f"  - {{name: noise, model: {tiny_qwen}, adapter: {tmp_path / 'noise'}}}\n"
    )
    models = load_model_set(path)
    large = _phantoms(1, 1024)[0]  # the set's bounds reach its processor, as in training
    assert MIN_TOKENS <= _image_tokens(models.processor_of("sft"), large) <= MAX_TOKENS
    counts = models.parameter_counts()
    assert counts["base"].base == counts["sft"].base == counts["noise"].base  # one copy of the base for all three
    assert models.loaded_parameters() == counts["base"].base + counts["sft"].adapter + counts["noise"].adapter
    images = _phantoms(2)
    batched = models.generate_batch(images, progress=False, settings=GenerationSettings(max_new_tokens=12))
    alone = [
        models.generate([image], ["noise"], settings=GenerationSettings(max_new_tokens=12))[0] for image in images
    ]
    assert len(batched) == 2 and all(len(row) == 3 for row in batched)
    assert [row[2] for row in batched] == [row[0] for row in alone]  # mixed-adapter batch = each on its own
    assert [row[0] for row in batched] != [row[2] for row in batched]  # the noise adapter is applied
