"""What SFT trains on: shared by the Gemma3 and Qwen2.5-VL assistant-only-loss tests."""

from __future__ import annotations

from pathlib import Path


def trained_text(model_path: Path, data_recipe: Path, **model_args) -> tuple[str, str]:
    """The decoded tokens SFTTrainer computes the loss on for the first SFT example, and that example's answer."""
    from trl import SFTConfig, SFTTrainer

    from chexreason.data.build import build_datasets, load_built
    from chexreason.prompts import get_answer_format
    from chexreason.training import load_model, sft_rows
    from train.configs import ModelArguments, read_data_config

    data = read_data_config(str(data_recipe))
    build_datasets(data)
    built = load_built(data.output_dir)["sft_train"]
    model, processor = load_model(ModelArguments(model_name_or_path=str(model_path), **model_args))
    args = SFTConfig(
        output_dir="/tmp/unused", assistant_only_loss=True, report_to="none", use_cpu=True, max_length=None
    )
    dataset = sft_rows(built, get_answer_format("free_reasoning"), limit=1)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    batch = next(iter(trainer.get_train_dataloader()))
    labelled = batch["input_ids"][0][batch["labels"][0] != -100]
    return processor.tokenizer.decode(labelled), built[0]["answer"]
