"""Training: what the `train` stages run on top of the inference core (`chexreason.model_set` and friends).

- `common`: loading the model a stage starts from, the paper's LoRA, built datasets → TRL rows, resuming.
- `tiny_model`: the tiny random-initialised Gemma3 and its tokenizer (the tiny recipe's stand-in for MedGemma).
- `pretrain`: the tiny recipe's base stage (vision warm-up, lay captions, off-image format answers).
- `grpo`: GRPO from the SFT adapter: rewards wired to TRL, resumable reward state.
- `grpo_selection`: GRPO's best checkpoint by validation macro-F1, kept across kills and resumes.
- `resume`: exact resume from the newest complete checkpoint, and final artefacts written whole.
- `fused_head`: on CPU, TRL's loss head scores only the labelled positions, as it does on GPUs.
- `export`: a finished run as a model set (what `checkpoints/tiny/` holds) and its model card.

The inference side (`import app`, `chexreason.model_set`) never imports this package: it loads TRL.
`chexreason.training` itself re-exports `common`, as the module of that name did before it became a package.
"""

from chexreason.training.common import LM_PROJECTIONS, grpo_rows, last_checkpoint, load_model, lora_config, sft_rows

__all__ = ["LM_PROJECTIONS", "grpo_rows", "last_checkpoint", "load_model", "lora_config", "sft_rows"]
