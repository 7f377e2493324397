"""The tiny model and the training stages, a few steps each: what changes, what must not, resume, configs."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sft_masking import trained_text

from chexreason.training.tiny_model import TAGS, TinySpec

SMALL_DATA = ["--sft_samples", "20", "--rl_samples", "4", "--test_samples_per_site", "4", "--image_size", "96",
              "--workers", "1"]  # fmt: skip


def test_tiny_model_files_and_loading(tiny):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert all(f.stat().st_size < 10 * 2**20 for f in tiny.iterdir())  # each file fits the Hub without LFS
    model = AutoModelForImageTextToText.from_pretrained(tiny, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(tiny)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    for tag in TAGS:  # the protocol's tags are single tokens
        assert len(processor.tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    from PIL import Image

    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}], add_generation_prompt=True
    )
    inputs = processor(text=[text], images=[[Image.new("RGB", (50, 70))]], return_tensors="pt")
    n_image_tokens = (inputs["input_ids"] == model.config.image_token_index).sum().item()
    assert n_image_tokens == TinySpec().image_tokens == model.config.mm_tokens_per_image


def test_tiny_spec_is_validated():
    with pytest.raises(ValueError, match="divisible"):
        TinySpec(image_size=224, patch_size=14, image_tokens=49)  # 16 patches a side is not divisible by 7


def _sft_args(tiny: Path, data_recipe: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", "train/recipes/tiny/sft.yaml", "--model_name_or_path", str(tiny), "--data_config",
            str(data_recipe), "--output_dir", str(out), "--base_recipe", "", "--num_train_epochs", "2",
            "--max_train_samples", "16", "--max_eval_samples", "2", *extra]  # fmt: skip


@pytest.fixture(scope="session")
def sft_run(tiny, data_recipe, tmp_path_factory):
    from train import sft

    out = tmp_path_factory.mktemp("sft")
    adapter = sft.main(_sft_args(tiny, data_recipe, out))
    return out, adapter


def test_sft_trains_only_lora_on_the_language_model(tiny, sft_run):
    out, adapter = sft_run
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_" in name for name in weights)
    assert all("language_model" in name for name in weights)  # never the vision tower or the projector
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 32, 0.1)
    assert any(torch.count_nonzero(w) for name, w in weights.items() if "lora_B" in name)  # it learnt something
    log = json.loads((out / "sft_log.json").read_text())
    assert any("eval_loss" in entry for entry in log)


def test_sft_leaves_the_base_weights_untouched(tiny, sft_run):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny, use_safetensors=True)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    after = PeftModel.from_pretrained(model, sft_run[1]).merge_and_unload().state_dict()
    vision = [name for name in before if "vision_tower" in name or "multi_modal_projector" in name]
    assert vision and all(torch.equal(before[name], after[name]) for name in vision)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all("language_model" in name and name.endswith("proj.weight") for name in changed)


def test_assistant_only_loss_covers_exactly_the_answer(tiny, data_recipe):
    trained, answer = trained_text(tiny, data_recipe)
    # The answer and the turn's end marker are trained; the prompt, the image tokens and padding are not.
    assert trained == answer + "<end_of_turn>\n"


def test_sft_resumes_from_its_last_checkpoint(tiny, data_recipe, tmp_path):
    from train import sft

    out = tmp_path / "sft"
    common = ["--eval_strategy", "steps", "--save_strategy", "steps", "--save_steps", "1", "--eval_steps", "1"]
    sft.main(_sft_args(tiny, data_recipe, out, *common, "--max_steps", "1"))
    (out / "adapter" / "adapter_config.json").unlink()  # as if the run had been interrupted after step 1
    assert (out / "checkpoint-1").is_dir()
    sft.main(_sft_args(tiny, data_recipe, out, *common, "--max_steps", "2"))
    steps = [entry["step"] for entry in json.loads((out / "sft_log.json").read_text()) if "loss" in entry]
    assert (out / "checkpoint-2").is_dir() and 1 not in steps  # step 1 was not trained again


def test_resume_skips_checkpoints_a_kill_cut_short(tiny, data_recipe, tmp_path, caplog):
    """transformers writes trainer_state.json last: a checkpoint without it (killed while saving) or with a cut
    state or cut weights is skipped, with a warning, for the newest complete one; before, it failed every rerun."""
    from chexreason.training.common import incomplete_checkpoint, last_checkpoint
    from train import sft

    out = tmp_path / "sft"
    common = ["--eval_strategy", "steps", "--save_strategy", "steps", "--save_steps", "1", "--eval_steps", "1"]
    sft.main(_sft_args(tiny, data_recipe, out, *common, "--max_steps", "2", "--save_total_limit", "5"))
    (out / "adapter" / "adapter_config.json").unlink()  # as if the run had been interrupted
    state = out / "checkpoint-2" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # killed while writing the state
    (out / "checkpoint-3").mkdir()  # killed just after creating the folder
    weights = next((out / "checkpoint-1").glob("*.safetensors"))
    cut = out / "checkpoint-4"
    shutil.copytree(out / "checkpoint-1", cut)
    (cut / weights.name).write_bytes(weights.read_bytes()[:10])  # a weights file cut short
    assert incomplete_checkpoint(out / "checkpoint-1") is None
    assert "cut short" in incomplete_checkpoint(cut) and "cut short" in incomplete_checkpoint(out / "checkpoint-2")
    with caplog.at_level("WARNING"):
        assert last_checkpoint(out) == str(out / "checkpoint-1")
    assert [f"checkpoint-{n}" in caplog.text for n in (4, 3, 2)] == [True, True, True]
    shutil.rmtree(cut)
    kept = out / "checkpoint-1" / "trainer_state.json"  # a mark only a run resumed from checkpoint-1 carries on
    kept.write_text(json.dumps({**json.loads(kept.read_text()), "log_history": [{"step": 1, "resumed_from": 1}]}))
    sft.main(_sft_args(tiny, data_recipe, out, *common, "--max_steps", "3", "--save_total_limit", "5"))
    log = json.loads((out / "sft_log.json").read_text())
    assert log[0] == {"step": 1, "resumed_from": 1} and {entry["step"] for entry in log} >= {2, 3}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--eval_strategy", "no"], "early stopping needs"),
        (["--early_stopping_patience", "0"], "early_stopping_patience"),
        (["--dtype", "float8"], "dtype must be"),
        (["--lora_dropout", "1.5"], "lora_dropout"),
        (["--data_config", "nope.yaml"], "does not exist"),
    ],
)
def test_sft_config_errors_are_messages(tmp_path, override, message):
    from train import sft

    with pytest.raises(SystemExit) as exit_info:
        sft.main(["--config", "train/recipes/tiny/sft.yaml", "--output_dir", str(tmp_path), *override])
    assert message in str(exit_info.value)


def test_base_stage_runs_and_saves(data_recipe, tmp_path):
    from train import base

    final = base.main(["--config", "train/recipes/tiny/base.yaml", "--data_config", str(data_recipe),
                       "--output_dir", str(tmp_path), "--vision_samples", "12", "--caption_samples", "6",
                       "--format_samples", "4", "--vision_batch_size", "4", "--vision_epochs", "2",
                       "--max_steps", "2"])  # fmt: skip
    assert (final / "model.safetensors").exists() and (final / "processor_config.json").exists()
    log = json.loads((tmp_path / "base_log.json").read_text())
    assert len(log["vision_warm_up"]) == 2 * 3 and log["language"]  # 2 epochs × 12/4 batches


@pytest.mark.parametrize("frozen", [True, False])
def test_the_language_stage_keeps_the_warmed_up_vision_tower_when_asked(data_recipe, tmp_path, monkeypatch, frozen):
    from transformers import AutoModelForImageTextToText

    from train import base

    after_warm_up = {}

    def warm_up_then_copy(model, *args):
        log = warm_up_vision(model, *args)
        after_warm_up.update({k: v.clone() for k, v in model.model.vision_tower.state_dict().items()})
        return log

    warm_up_vision = base.warm_up_vision
    monkeypatch.setattr(base, "warm_up_vision", warm_up_then_copy)
    final = base.main(["--config", "train/recipes/tiny/base.yaml", "--data_config", str(data_recipe),
                       "--output_dir", str(tmp_path), "--vision_samples", "12", "--caption_samples", "6",
                       "--format_samples", "4", "--vision_batch_size", "4", "--vision_epochs", "1",
                       "--max_steps", "2", "--freeze_vision_tower", str(frozen).lower()])  # fmt: skip
    tower = AutoModelForImageTextToText.from_pretrained(final).model.vision_tower.state_dict()
    same = all(torch.equal(tower[k], v) for k, v in after_warm_up.items())
    assert same is frozen  # frozen: the warm-up's tower exactly; else the language stage moved it


# --------------------------------------------------------------- attention kernel, chat template (paper recipes)

GEMMA3_TEMPLATE = Path("train/recipes/chat_templates/gemma3_training.jinja")  # what the MedGemma SFT recipes name
QWEN_TEMPLATE = Path("train/recipes/chat_templates/qwen2_5_vl_training.jinja")  # ... and the Qwen2.5-VL ones


@pytest.mark.parametrize("kernel", [None, "eager", "sdpa"])
def test_attn_implementation_reaches_from_pretrained(tiny, kernel):
    from chexreason.training import load_model
    from train.configs import ModelArguments

    model, _ = load_model(ModelArguments(model_name_or_path=str(tiny), attn_implementation=kernel))
    chosen = model.config._attn_implementation
    assert chosen == (kernel or "sdpa")  # unset: transformers' own choice, sdpa for Gemma3
    assert model.config.text_config._attn_implementation == chosen  # the language model too


def test_attn_implementation_is_validated():
    from train.configs import ModelArguments

    with pytest.raises(ValueError, match=r"attn_implementation must be eager, sdpa, .* or unset, not 'flash'"):
        ModelArguments(attn_implementation="flash")


def _gemma_conversation(answer: str, image) -> dict:
    """A MedGemma-format SFT row: system + user (image, question) + the assistant's answer."""
    return {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are an expert radiologist."}]},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which findings are present?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "images": [image],
    }


def test_the_recipes_gemma3_training_template_masks_exactly_the_answer(tiny):
    """The template the MedGemma recipes name, applied by TRL's SFTTrainer (`chat_template_path`) to a processor with
    the real Gemma3 processor and special tokens (the tiny model's; MedGemma's own tokenizer is not available
    offline): the loss covers each answer and its end of turn, never the system text, prompt, image or padding."""
    from PIL import Image
    from sft_masking import labelled_texts
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(tiny)
    answers = ["<think>A large heart.</think><solution>Cardiomegaly</solution>",
               "<think>Clear lungs, nothing else to see.</think><solution>No Finding</solution>"]  # fmt: skip
    rows = [_gemma_conversation(answer, Image.new("RGB", (64, 64))) for answer in answers]
    trained = labelled_texts(model, processor, rows, chat_template_path=str(GEMMA3_TEMPLATE))
    assert sorted(trained) == sorted(answer + "<end_of_turn>\n" for answer in answers)  # 2 lengths: padding masked
    assert processor.chat_template == GEMMA3_TEMPLATE.read_text()  # what train.sft then saves with the adapter


def test_the_recipes_qwen_training_template_masks_exactly_the_answer(tiny):
    """The Qwen2.5-VL recipes' template, tokenizer-level: no Qwen processor without torchvision (tests/qwen runs
    the full path), so a byte-level BPE tokenizer (the tiny one) renders it and spells out Qwen's markers."""
    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(tiny).tokenizer
    answer = "<think>A large heart.</think><solution>Cardiomegaly</solution>"
    messages = _gemma_conversation(answer, None)["messages"]
    out = tokenizer.apply_chat_template(messages, chat_template=QWEN_TEMPLATE.read_text(), tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)  # fmt: skip
    ids = [i for i, keep in zip(out["input_ids"], out["assistant_masks"], strict=True) if keep]
    assert tokenizer.decode(ids) == answer + "<|im_end|>\n"


def test_named_training_templates_are_trls(tiny):
    """The recipes' templates are byte copies of TRL's training variants, of the templates TRL recognises as the
    models' own (the tiny model ships TRL's Gemma 3 one); a model with another template gets a warning."""
    import trl
    from transformers import AutoProcessor

    from chexreason.training.common import named_template_matches

    bundled = Path(trl.__file__).parent / "chat_templates"
    for copy in (GEMMA3_TEMPLATE, QWEN_TEMPLATE):
        assert copy.read_bytes() == (bundled / copy.name).read_bytes()
    processor = AutoProcessor.from_pretrained(tiny)
    assert named_template_matches(processor, GEMMA3_TEMPLATE)
    assert not named_template_matches(processor, QWEN_TEMPLATE)


def test_sft_saves_its_training_template_and_grpo_samples_with_it(tiny, sft_run, tmp_path):
    from chexreason.training.grpo import load_policy, save_policy
    from train.configs import ModelArguments

    _, adapter = sft_run  # trained by train/recipes/tiny/sft.yaml, which names the Gemma 3 training template
    assert (adapter / "chat_template.jinja").read_text() == GEMMA3_TEMPLATE.read_text()
    policy, processor = load_policy(ModelArguments(model_name_or_path=str(tiny), attn_implementation="eager"), adapter)
    assert processor.chat_template == GEMMA3_TEMPLATE.read_text()  # GRPO prompts as SFT trained
    assert policy.get_base_model().config._attn_implementation == "eager"  # the kernel reaches GRPO's policy too
    save_policy(policy, tmp_path / "grpo", processor)
    assert (tmp_path / "grpo" / "chat_template.jinja").read_text() == GEMMA3_TEMPLATE.read_text()
