"""LoRA SFT on teacher traces: the paper's first stage.

    python -m train.sft --config train/recipes/tiny/sft.yaml                   # 2-core CPU
    python -m train.sft --config train/recipes/medgemma-4b/sft_free_reasoning.yaml   # one GPU

Builds the data first if needed (and, for the tiny recipe, the base model). Writes the adapter and the
processor, with the chat template it trained with (``chat_template.jinja``; inference prompts with it), to
``<output_dir>/adapter`` and the loss log to ``<output_dir>/sft_log.json``; an interrupted run resumes from its
last checkpoint. Paper: LoRA r 16 / alpha 32 / dropout 0.1 on the language model's
projections, vision frozen, AdamW lr 5e-5, cosine, 5% warmup, weight decay 0.01, clipping 5.0, effective
batch 8, up to 6 epochs with early stopping (patience 2) on validation loss, assistant-only loss.
The tiny recipe's departures are listed in its YAML; every run logs how its values differ from the paper's
(`train.configs.PAPER_SFT`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transformers import EarlyStoppingCallback

from chexreason import atomic
from chexreason.data.build import build_datasets, load_built
from chexreason.prompts import get_answer_format
from chexreason.training import last_checkpoint, load_model, lora_config, sft_rows
from chexreason.training.common import named_template_matches
from chexreason.training.resume import ResumableSFTTrainer, install_stage_output
from train import recipe
from train.configs import ModelArguments, SFTStageConfig

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> Path:
    model_args, config, data = recipe.start_training_stage("train.sft", (ModelArguments, SFTStageConfig), argv)
    out = Path(config.output_dir)
    with config.main_process_first(desc="recovering an interrupted save"):  # DDP: one process at a time
        adapter = atomic.recover_folder(out / "adapter")  # a final save a kill interrupted: finished or undone
    if (adapter / "adapter_config.json").exists():
        logger.info("SFT adapter already trained at %s", adapter)
        return adapter
    for name, (ours, paper) in () if config.paper_recipe else config.paper_departures().items():  # else: parity
        logger.warning("%s is %r here; the paper's is %r", name, ours, paper)

    with config.main_process_first(desc="building the datasets"):  # DDP: rank 0 builds, the rest reuse
        build_datasets(data)
    recipe.ensure_base(model_args, config)
    try:
        model, processor = load_model(model_args)
    except OSError as error:  # a Hub id this machine cannot resolve (offline, gated), a folder without a model
        sys.exit(f"train.sft: cannot load {model_args.model_name_or_path}: {' '.join(str(error).split())}")
    if config.chat_template_path and config.chat_template_path.endswith(".jinja"):
        named_template_matches(processor, config.chat_template_path)  # SFTTrainer then makes it the template
    built, fmt = load_built(data.output_dir), get_answer_format(data.answer_format)
    trainer = ResumableSFTTrainer(
        model=model,
        args=config,
        train_dataset=sft_rows(built["sft_train"], fmt, config.max_train_samples),
        eval_dataset=sft_rows(built["sft_validation"], fmt, config.max_eval_samples),
        processing_class=processor,
        peft_config=lora_config(model_args),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience)],
    )
    trainer.train(resume_from_checkpoint=last_checkpoint(out))

    def save(folder: Path) -> None:  # on every process (FSDP gathers the weights); the Trainer writes on the main one
        trainer.save_model(str(folder))  # the best checkpoint by validation loss (load_best_model_at_end)
        if trainer.is_world_process_zero():
            trainer.processing_class.save_pretrained(folder)  # with the chat template it trained with

    install_stage_output(adapter, save, out / "sft_log.json", trainer.state.log_history, trainer.accelerator)
    return adapter


if __name__ == "__main__":
    main()
