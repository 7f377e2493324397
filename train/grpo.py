"""GRPO from the SFT checkpoint: the paper's second stage.

    python -m train.grpo --config train/recipes/tiny/grpo.yaml      # 2-core CPU, no GPU (measured there)

Starts the policy from the SFT adapter (``sft_adapter``; when it does not exist, `train.recipe` runs
``sft_recipe`` first, which builds the data and, for the tiny recipe, the base model), samples 4 completions
per RL prompt and optimises the paper's rewards with TRL's GRPOTrainer. The KL reference is a frozen copy of
the SFT adapter (see `chexreason.training.grpo`). Writes the final policy adapter to ``<output_dir>/adapter``,
the policy with the best validation macro-F1 (scored at every save on ``sft_validation``, greedy) to
``<output_dir>/best_adapter`` with ``best.json``, and the training log (reward and its parts, KL, completion
lengths, fail rate) with every validation to ``<output_dir>/grpo_log.json``. An interrupted run resumes from
its last checkpoint, with the nuanced reward's window. With ``export_dir`` set, `train.recipe` then bundles the
model set there and, with ``evaluate_after``, evaluates it.

Paper (MedGemma-4B, one A100): Dr. GRPO loss, no std scaling of advantages, beta 0.15 against the SFT policy,
clipping [0.15, 0.22], token-level importance ratio, 4 completions at temperature 0.8 / top-p 0.95, the hard
(250-token threshold) or the nuanced reward, 1,000 RL prompts; the best checkpoint by validation F1 (Table 4).
Departures of the tiny recipe (``train/recipes/tiny/grpo.yaml``), for CPU time or the tiny model's scale:

- the tiny Gemma3 (1.2 M parameters, ``python -m train.base``) instead of MedGemma-4B; float32, no gradient
  checkpointing;
- learning rate 5e-4 and 16 completions per optimizer step in one micro-batch (the paper recipe: 4 accumulated
  micro-batches of 4); both sample 64 at a time for 4 optimizer steps (clipped off-policy: `train/parity.py`);
- the hard reward's length threshold 54 tokens instead of 250 (the 10th percentile of the tiny SFT answers, which
  are 39-177 tokens long) and max_completion_length 192;
- the best checkpoint chosen on 64 of the 200 validation images, every 48 of the 248 steps and at the last.

Measured on 2 idle CPU cores (2026-11-26, before the constant learning rate): the 248 steps (3,968 completions,
6 validations) took 3 min 39 s within ``python -m benchmarks.tiny_recipe``. Every run prints how it differs from
its paper recipe (`train.parity`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from chexreason import atomic
from chexreason.data.build import build_datasets, load_built
from chexreason.prompts import get_answer_format
from chexreason.training import last_checkpoint
from chexreason.training.grpo import ADAPTER_CONFIG, build_grpo_run
from train import recipe
from train.configs import GRPOStageConfig, ModelArguments

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> Path:
    model_args, config, data = recipe.start_training_stage("train.grpo", (ModelArguments, GRPOStageConfig), argv)
    out = Path(config.output_dir)
    with config.main_process_first(desc="recovering an interrupted save"):  # DDP: one process at a time
        adapter = atomic.recover_folder(out / "adapter")  # a final save a kill interrupted: finished or undone
    command = sys.argv[1:] if argv is None else argv
    if (adapter / ADAPTER_CONFIG).exists():
        logger.info("GRPO adapter already trained at %s", adapter)
    else:
        for name, (ours, paper) in () if config.paper_recipe else config.paper_departures().items():  # else: parity
            logger.warning("%s is %r here; the paper's is %r", name, ours, paper)
        recipe.ensure_sft(config)
    with config.main_process_first(desc="building the datasets"):  # DDP: rank 0 builds, the rest reuse
        manifest = build_datasets(data)
    if not (adapter / ADAPTER_CONFIG).exists():
        try:
            built = load_built(data.output_dir)
            run = build_grpo_run(model_args, config, built, get_answer_format(data.answer_format))
        except OSError as error:  # also a Hub id this machine cannot resolve (offline, gated)
            sys.exit(f"train.grpo: {' '.join(str(error).split())}")
        run.train(resume_from_checkpoint=last_checkpoint(out, required=run.checkpoint_files))
        run.save(out)
    # Also after a rerun: an export, evaluation or model card a kill left missing or stale is made again; by the
    # main process alone (under DDP the other ranks are done once the adapter is saved).
    if config.process_index == 0:
        recipe.after_grpo(model_args, config, data.answer_format, command, data_fingerprint=manifest["fingerprint"])
    return adapter


if __name__ == "__main__":
    main()
