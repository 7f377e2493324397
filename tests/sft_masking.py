"""What SFT trains on: shared by the Gemma3 and Qwen2.5-VL assistant-only-loss tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def labelled_texts(model: Any, processor: Any, rows: Any, **sft_args) -> list[str]:
    """The decoded tokens TRL's SFTTrainer computes the loss on for `rows` (conversational `messages` + `images`;
    a list or a Dataset), all in one padded batch, in the batch's (shuffled) order. TRL's own machinery, as
    `python -m train.sft` runs it: ``chat_template_path``, the training-template swap, the vision collator."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir="/tmp/unused",
        assistant_only_loss=True,
        report_to="none",
        use_cpu=True,
        max_length=None,
        per_device_train_batch_size=len(rows),
        **sft_args,
    )
    rows = Dataset.from_list(rows) if isinstance(rows, list) else rows
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor)
    batch = next(iter(trainer.get_train_dataloader()))
    pairs = zip(batch["input_ids"], batch["labels"], strict=True)
    return [processor.tokenizer.decode(ids[labels != -100]) for ids, labels in pairs]


def trained_text(model_path: Path, data_recipe: Path, **model_args) -> tuple[str, str]:
    """The decoded tokens SFTTrainer computes the loss on for the first SFT example, and that example's answer."""
    from chexreason.data.build import build_datasets, load_built
    from chexreason.prompts import get_answer_format
    from chexreason.training import load_model, sft_rows
    from train.configs import ModelArguments, read_data_config

    data = read_data_config(str(data_recipe))
    build_datasets(data)
    built = load_built(data.output_dir)["sft_train"]
    model, processor = load_model(ModelArguments(model_name_or_path=str(model_path), **model_args))
    dataset = sft_rows(built, get_answer_format("free_reasoning"), limit=1)
    (trained,) = labelled_texts(model, processor, dataset)
    return trained, built[0]["answer"]
