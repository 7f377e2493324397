"""The tiny recipe's base stage: make a random-initialised tiny Gemma3 VLM a stand-in for a pretrained one.

    python -m train.base --config train/recipes/tiny/base.yaml

Builds the tiny model (`chexreason.training.tiny_model`) if needed, warms up its vision tower on phantoms, then
trains all its weights on lay captions and off-image answers in the recipe's format (`chexreason.training.pretrain`).
Writes ``<output_dir>/model`` (weights + processor) and ``<output_dir>/base_log.json``. Tested on a 2-core
CPU. Not part of the paper: MedGemma-4B arrives pretrained; this stage exists because ours cannot.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset
from transformers import AutoModelForImageTextToText, AutoProcessor

from chexreason import atomic
from chexreason.prompts import get_answer_format
from chexreason.training import last_checkpoint
from chexreason.training.pretrain import base_corpus, caption_conversations, format_conversations, warm_up_vision
from chexreason.training.resume import ResumableSFTTrainer, install_stage_output
from chexreason.training.tiny_model import TinySpec, build_tiny
from train import recipe
from train.configs import BaseStageConfig

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> Path:
    config, data = recipe.start_training_stage("train.base", (BaseStageConfig,), argv)
    out = Path(config.output_dir)
    final = atomic.recover_folder(out / "model")  # a final save a kill interrupted: finished or undone
    if (final / "model.safetensors").exists():
        logger.info("base model already built at %s", final)
        return final

    init = build_tiny(out / "init", TinySpec(), seed=config.seed)  # the processor resizes phantoms to its input
    model = AutoModelForImageTextToText.from_pretrained(init, use_safetensors=True)
    processor = AutoProcessor.from_pretrained(init)
    corpus = base_corpus(config.vision_samples, data.seed, data.image_size)
    vision_log = warm_up_vision(
        model,
        processor,
        corpus,
        config.vision_epochs,
        config.vision_batch_size,
        config.vision_learning_rate,
        config.seed,
    )

    # Language stage: captions and format examples on disjoint slices of the same corpus, shuffled together.
    captions = caption_conversations(corpus[: config.caption_samples])
    formats = format_conversations(
        corpus[config.caption_samples : config.caption_samples + config.format_samples],
        get_answer_format(data.answer_format),
        config.seed,
    )
    dataset = Dataset.from_list(captions + formats).shuffle(seed=config.seed)
    if config.freeze_vision_tower:  # what the warm-up learnt stays; the projector and language model learn to read it
        model.model.vision_tower.requires_grad_(False)
    trainer = ResumableSFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    trainer.train(resume_from_checkpoint=last_checkpoint(out))

    def save(folder: Path) -> None:
        trainer.save_model(str(folder))
        processor.save_pretrained(folder)

    log = {"vision_warm_up": vision_log, "language": trainer.state.log_history}
    install_stage_output(final, save, out / "base_log.json", log)  # the log first, then the model, each whole
    return final


if __name__ == "__main__":
    main()
