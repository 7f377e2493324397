"""What the training stages share: model loading, LoRA, and turning built datasets into TRL rows."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForImageTextToText, AutoProcessor

from chexreason.data.build import head
from chexreason.loading import parse_dtype
from chexreason.model_set_spec import pixel_bounds
from chexreason.prompts import AnswerFormat, PromptVariant
from chexreason.training.resume import incomplete_checkpoint as incomplete_checkpoint  # re-exported: lived here
from chexreason.training.resume import last_checkpoint as last_checkpoint

logger = logging.getLogger(__name__)

# The language model's attention and MLP projections, not the vision tower's (whose q/k/v and MLP layers
# share the plain names). PEFT full-matches a string target against each module's name.
LM_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def load_model(model_args) -> tuple[torch.nn.Module, object]:
    """The model and processor a stage starts from (`train.configs.ModelArguments`), safetensors only."""
    kwargs = {"revision": model_args.model_revision, "trust_remote_code": False}
    model = AutoModelForImageTextToText.from_pretrained(
        model_args.model_name_or_path,
        dtype=parse_dtype(model_args.dtype),
        attn_implementation=model_args.attn_implementation,  # None: transformers' own choice
        use_safetensors=True,
        **kwargs,
    )
    # Qwen2.5-VL: 256-512 visual tokens, as the paper sets (None for MedGemma, whose processor fixes 256).
    pixels = pixel_bounds(model_args.min_pixels, model_args.max_pixels)
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, **kwargs, **pixels)
    return model, processor


def named_template_matches(processor: object, chat_template_path: str | Path) -> bool:
    """Whether a recipe's training chat template (SFTConfig ``chat_template_path``, a ``.jinja`` file) is the one TRL
    would derive from the model's own template; logs a warning when it is not.

    TRL's SFTTrainer swaps in its training template (the model's template plus ``{% generation %}`` markers, which
    ``assistant_only_loss`` needs) only when the processor's template is byte-identical to a template TRL bundles,
    and raises otherwise. The paper recipes therefore name the training template (a copy of TRL's in
    ``train/recipes/chat_templates/``); this check tells a run whose model ships a different template (a new Hub
    revision) that the named one replaces it.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    named = Path(chat_template_path).read_text(encoding="utf-8")
    own = processor.chat_template
    try:
        derived = own if has_generation_markers(own) else get_training_chat_template(processor)
    except ValueError:  # TRL knows no training variant of this template
        derived = None
    if derived == named:
        return True
    logger.warning(
        "%s is not the training variant of the model's own chat template: it replaces that template for training "
        "and, saved with the adapter, for inference; check it renders this model's prompts",
        chat_template_path,
    )
    return False


def lora_config(model_args) -> LoraConfig:
    """The paper's LoRA: the language model's attention and MLP projections only (the vision tower stays frozen)."""
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules,
        task_type="CAUSAL_LM",
    )


def sft_rows(dataset: Dataset, answer_format: AnswerFormat, limit: int | None = None) -> Dataset:
    """Built SFT rows → conversational rows TRL's SFTTrainer takes: the format's prompt, the target answer."""
    dataset = head(dataset, limit)
    prompt = answer_format.prompt.messages()

    def convert(row: dict) -> dict:
        answer = {"role": "assistant", "content": [{"type": "text", "text": row["answer"]}]}
        return {"messages": [*prompt, answer], "images": [row["image"]]}

    return dataset.map(convert, remove_columns=dataset.column_names)


def grpo_rows(dataset: Dataset, prompt: PromptVariant, limit: int | None = None) -> Dataset:
    """Built rows → GRPO prompts: the conversational prompt, the image, and `ground_truth` for the rewards."""
    dataset = head(dataset, limit)
    messages = prompt.messages()
    keep = {"image", "ground_truth", "id"}
    return dataset.map(
        lambda row: {"prompt": messages}, remove_columns=[c for c in dataset.column_names if c not in keep]
    )
