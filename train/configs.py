"""Typed recipe configuration, parsed by TRL's `TrlParser` from a YAML recipe with command-line overrides.

Every field documents itself (``python -m train.sft --help``); `__post_init__` rejects bad values with a
message that names the field. The data recipe's config, `DataConfig`, is the library's
(`chexreason.data.config`); it is re-exported here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from trl import GRPOConfig, SFTConfig

from chexreason.config_checks import requirement
from chexreason.data.config import DATA_SOURCES, TEACHERS, DataConfig, read_data_config
from chexreason.decoding import DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from chexreason.evaluation import EVAL_BATCH_SIZE
from chexreason.prompts import get_prompt
from chexreason.rewards import REWARD_FACTORIES
from chexreason.training.common import LM_PROJECTIONS
from train.command_line import TINY_RECIPES, parse_recipe, parse_stage, with_default_recipe

# Re-exported: these lived here before the data recipe's config moved into the library.
__all__ = [
    "DATA_SOURCES",
    "LM_PROJECTIONS",
    "PAPER_GRPO",
    "PAPER_SFT",
    "TEACHERS",
    "TINY_RECIPES",
    "BaseStageConfig",
    "DataConfig",
    "EvaluateConfig",
    "GRPOStageConfig",
    "ModelArguments",
    "SFTStageConfig",
    "parse_recipe",
    "parse_stage",
    "read_data_config",
    "with_default_recipe",
]

logger = logging.getLogger(__name__)


PAPER_RECIPE_HELP = (
    "The paper recipe this one is a small-scale copy of; a run prints how they differ (train/parity.py)."
)
DTYPES = ("float32", "bfloat16", "float16")  # what a stage trains in (chexreason.loading.parse_dtype reads it)
# transformers 5's attention kernels for `from_pretrained(attn_implementation=...)`; None leaves the choice to
# transformers (sdpa where the model supports it). The flash ones need their package installed (GPU only).
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


@dataclass
class ModelArguments:
    """Which model a stage starts from, and how LoRA adapts it."""

    model_name_or_path: str = field(
        default="outputs/tiny/base/model",
        metadata={"help": "Local path or Hub id of the model this stage starts from (e.g. google/medgemma-4b-it)."},
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision to pin (a commit hash)."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": f"Attention kernel: {', '.join(ATTN_IMPLEMENTATIONS)}; unset: transformers' choice (sdpa where "
            "supported). Not in the paper; a speed/memory choice."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (paper: 16)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (paper: 32)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (paper: 0.1)."})
    lora_target_modules: str = field(
        default=LM_PROJECTIONS,
        metadata={
            "help": "Regex of the modules LoRA adapts (paper: the language model's attention and MLP projections)."
        },
    )
    min_pixels: int | None = field(
        default=None, metadata={"help": "Qwen2.5-VL: processor min_pixels (paper: 256 visual tokens = 256*28*28)."}
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "Qwen2.5-VL: processor max_pixels (paper: 512 visual tokens = 512*28*28)."}
    )

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"model config: dtype must be {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.attn_implementation not in (None, *ATTN_IMPLEMENTATIONS):
            raise ValueError(
                f"model config: attn_implementation must be {', '.join(ATTN_IMPLEMENTATIONS)} or unset, "
                f"not {self.attn_implementation!r}"
            )
        if self.lora_r < 1 or self.lora_alpha < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError("model config: need lora_r >= 1, lora_alpha >= 1 and 0 <= lora_dropout < 1")
        if (self.min_pixels is None) != (self.max_pixels is None) or (
            self.min_pixels is not None and self.min_pixels > self.max_pixels
        ):
            raise ValueError("model config: set both min_pixels and max_pixels, with min_pixels <= max_pixels")


@dataclass
class BaseStageConfig(SFTConfig):
    """The tiny recipe's base stage (`python -m train.base`): vision warm-up, then full-parameter language
    training on lay captions and off-image format examples (see `chexreason.training.pretrain`). SFTConfig's fields
    (learning_rate, num_train_epochs, …) drive the language stage."""

    data_config: str = field(
        default="train/recipes/tiny/data.yaml", metadata={"help": "Data recipe (image size, seed, answer format)."}
    )
    vision_samples: int = field(
        default=3000, metadata={"help": "Phantoms for the vision warm-up (disjoint from all data splits)."}
    )
    vision_epochs: int = field(default=2, metadata={"help": "Vision warm-up epochs."})
    vision_learning_rate: float = field(
        default=1e-3, metadata={"help": "Vision warm-up peak learning rate (one-cycle)."}
    )
    vision_batch_size: int = field(default=32, metadata={"help": "Vision warm-up batch size."})
    caption_samples: int = field(default=1500, metadata={"help": "Lay-caption examples for the language stage."})
    format_samples: int = field(
        default=500, metadata={"help": "Off-image answers in the recipe's format for the language stage."}
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={"help": "Language stage: keep the warmed-up vision tower frozen (only the projector and the "
                  "language model train), as MedGemma's pretrained encoder stays fixed in the paper's SFT."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            min(
                self.vision_samples,
                self.vision_epochs,
                self.vision_batch_size,
                self.caption_samples,
                self.format_samples,
            )
            < 1
        ):
            raise ValueError("base stage: sample counts, epochs and batch size must be at least 1")
        if self.format_samples + self.caption_samples > self.vision_samples:
            raise ValueError("base stage: caption_samples + format_samples must not exceed vision_samples")


# The paper's SFT values (DESIGN §3) for the SFTConfig fields it pins; `SFTStageConfig.paper_departures` lists what
# a recipe changes, and train.sft logs it. LoRA (r 16, alpha 32, dropout 0.1 on the language model's projections)
# is ModelArguments' defaults; the data and answer format are the data recipe's.
#
# Checked against TRL 1.16 / transformers 5.23 source (trl/trainer/sft_config.py, trl/trainer/base_config.py,
# transformers/training_args.py; the masking in sft_trainer.py): field, its default -> what the paper pins.
#   learning_rate                2e-5 (TRL)  -> 5e-5
#   lr_scheduler_type            linear      -> cosine
#   warmup_steps                 0           -> 0.05 (transformers 5: a float below 1 is a ratio, 5% warmup)
#   weight_decay                 0.0         -> 0.01
#   max_grad_norm                1.0         -> 5.0
#   optim                        adamw_torch_fused (torch >= 2.8) -> adamw_torch (AdamW; the fused kernel computes
#                                               the same update)
#   per_device_train_batch_size, gradient_accumulation_steps 8, 1 -> 1, 8 (effective batch 8 on one GPU)
#   num_train_epochs             3.0         -> 6, with early stopping (ours: early_stopping_patience, 2)
#   eval_strategy                no          -> epoch: the patience counts epochs (save_strategy must match)
#   bf16                         True unless fp16 (TRL) -> True
#   gradient_checkpointing       True (TRL)  -> True
#   assistant_only_loss          False       -> True: prompt, image tokens and padding masked
#   packing, padding_free        False       -> False: padded batches (TRL refuses both for image datasets anyway)
#   max_length                   1024        -> None: the paper truncates nothing (read as whole traces); 1024
#                                               would cut a long MedGemma example (256 image tokens + prompt +
#                                               trace) at its end, end-of-turn token included
#   loss_type                    nll         -> nll: plain cross-entropy ("dft" reweights tokens)
#   neftune_noise_alpha          None        -> None: no embedding noise
#   label_smoothing_factor       0.0         -> 0.0
# Not pinned: completion_only_loss None (moot: `sft_rows` gives conversational `messages` rows, for which None
# means False and assistant_only_loss does the masking); adam_beta1/2 0.9/0.999, adam_epsilon 1e-8 (the paper
# says AdamW only); lr_scheduler_kwargs None (cosine down to 0); seed; shuffle_dataset False (the Trainer's
# sampler shuffles anyway); truncation_mode keep_start (no truncation); eos_token; pad_to_multiple_of;
# dataset_kwargs; use_liger_kernel; activation_offloading; chat_template_path None (ours: each paper recipe
# names TRL's training template, see train/recipes/chat_templates/).
PAPER_SFT: dict[str, object] = {
    "learning_rate": 5e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "weight_decay": 0.01,
    "max_grad_norm": 5.0,
    "optim": "adamw_torch",
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "num_train_epochs": 6,
    "early_stopping_patience": 2,
    "eval_strategy": "epoch",
    "bf16": True,
    "gradient_checkpointing": True,
    "assistant_only_loss": True,
    "packing": False,
    "padding_free": False,
    "max_length": None,
    "loss_type": "nll",
    "neftune_noise_alpha": None,
    "label_smoothing_factor": 0.0,
}


@dataclass
class SFTStageConfig(SFTConfig):
    """LoRA SFT on teacher traces (`python -m train.sft`). The paper's values are the recipe defaults of
    `train/recipes/medgemma-4b/sft_*.yaml`; the fields below are ours."""

    data_config: str = field(
        default="train/recipes/tiny/data.yaml", metadata={"help": "Data recipe whose SFT sets to train on."}
    )
    base_recipe: str | None = field(
        default=None,
        metadata={"help": "Recipe that builds the starting model when model_name_or_path does not exist (tiny only)."},
    )
    early_stopping_patience: int = field(
        default=2, metadata={"help": "Stop after this many evaluations without a lower validation loss (paper: 2)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training examples (smoke tests)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N validation examples (smoke tests)."}
    )
    paper_recipe: str | None = field(
        default=None,
        metadata={"help": PAPER_RECIPE_HELP},
    )

    def __post_init__(self) -> None:
        # Early stopping keeps the checkpoint with the lowest validation loss, as the paper selects.
        self.load_best_model_at_end, self.metric_for_best_model, self.greater_is_better = True, "eval_loss", False
        if self.early_stopping_patience < 1:
            raise ValueError("sft config: early_stopping_patience must be at least 1")
        if str(self.eval_strategy) == "no" or str(self.eval_strategy) != str(self.save_strategy):
            raise ValueError("sft config: early stopping needs eval_strategy == save_strategy (e.g. both 'epoch')")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"sft config: {name} must be at least 1 (or unset: every example)")
        super().__post_init__()

    def paper_departures(self) -> dict[str, tuple[object, object]]:
        """SFT values that differ from the paper's: name -> (this config's value, the paper's)."""
        return departures(self, PAPER_SFT)


@dataclass
class EvaluateConfig:
    """Scoring a model set on the evaluation splits of a data build (`python -m train.evaluate`)."""

    models: str | None = field(
        default=None, metadata={"help": "The model set: a model-set YAML, or a bundled name such as 'tiny'."}
    )
    data_config: str = field(
        default="train/recipes/tiny/data.yaml",
        metadata={"help": "Data recipe whose splits to score (built if needed)."},
    )
    datasets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Splits to score (default: every test_* split of the build; with --prompts, its validation split, "
            "valid_chexpert or sft_validation: chexreason.data.build.selection_splits). A sweep on test_* is refused."
        },
    )
    limit: int | None = field(default=None, metadata={"help": "Score only the first N images of each split."})
    batch_size: int = field(
        default=EVAL_BATCH_SIZE,
        metadata={"help": "Images per generate call (64: the same outputs as 16 on the tiny set, faster)."},
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Generation budget of every answer (greedy); default: each checkpoint's own, as its model set "
            "records it (the GRPO recipe's max_completion_length)."
        },
    )
    n_resamples: int = field(default=2000, metadata={"help": "Bootstrap resamples of every interval."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    no_predictions: bool = field(default=False, metadata={"help": "Write no per-image records file."})
    prompts: list[str] | None = field(
        default=None,
        metadata={"help": "Sweep these prompt variants (the paper's Table 1 keys; selection: on validation) ..."},
    )
    checkpoint: str | None = field(
        default=None, metadata={"help": "... on this checkpoint of the set (default: its first)."}
    )
    out: str | None = field(
        default=None,
        metadata={"help": "Results summary (default: eval.json, or prompts.json for a sweep, beside the set)."},
    )
    paper_recipe: str | None = field(
        default=None,
        metadata={"help": PAPER_RECIPE_HELP},
    )

    def __post_init__(self) -> None:
        need = requirement("evaluate config")
        need(bool(self.models), "models is required: a model-set YAML or a bundled name such as 'tiny'")
        need(self.batch_size >= 1, "batch_size must be at least 1")
        need(self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens must be at least 1")
        need(self.limit is None or self.limit >= 1, "limit must be at least 1")
        need(self.n_resamples >= 1, "n_resamples must be at least 1")
        for key in self.prompts or ():
            get_prompt(key)  # its ValueError names the known prompts


# ---------------------------------------------------------------------------------------------- GRPO

# The paper's GRPO values (DESIGN §3), each set explicitly in every GRPO recipe (tests/test_recipes.py checks it);
# `GRPOStageConfig.paper_departures` lists what a recipe changes, and train.grpo logs it.
#
# Checked against TRL 1.16 source (trl/trainer/grpo_config.py; the loss in grpo_trainer.py `_compute_loss`, the
# sampling in its `generation_kwargs`): field, TRL's default -> what the paper pins.
#   loss_type                    dapo        -> dr_grpo: summed token losses over the constant max_completion_length
#   scale_rewards                group       -> none: Dr. GRPO does not divide advantages by the group's std
#   beta                         0.0         -> 0.15, KL against the SFT policy (0.0 would load no reference at all)
#   epsilon, epsilon_high        0.2, None   -> 0.15, 0.22: asymmetric clipping of the ratio to [0.85, 1.22]
#   importance_sampling_level    token       -> token (GSPO's "sequence" is another algorithm)
#   num_generations              8           -> 4
#   temperature, top_p           1.0, 1.0    -> 0.8, 0.95
#   top_k                        0 (off)     -> 0: plain temperature / top-p sampling. Set, because transformers 5
#                                               fills only unset (None) values from the model's generation_config
#                                               (a model may ship e.g. top_k 64): an explicit 0 keeps it off
#   min_p, repetition_penalty    None, 1.0   -> None, 1.0 (plain sampling)
#   generation_kwargs            None        -> None: its keys would override every sampling value above
#   use_bias_correction_kl       True        -> False: plain KL. True multiplies each token's KL by the
#                                               differentiable ratio pi/pi_old, which changes the KL gradient even
#                                               on-policy, where the ratio's value is 1
#   vllm_importance_sampling_correction True -> False: the paper corrects no vLLM/trainer mismatch (only acts with
#                                               use_vllm: the loss is multiplied by a capped sampling ratio)
#   delta                        None        -> None: PPO's clip, not INTELLECT-2's two-sided one
#   top_entropy_quantile         1.0         -> 1.0: every completion token in the loss, not the high-entropy ones
#   off_policy_mask_threshold    None        -> None: no DeepSeek-V3.2 off-policy sequence masking
#   mask_truncated_completions   False       -> False: plain GRPO keeps a truncated completion in the loss, scored
#                                               by its reward (the hard reward: 0); see the GRPO recipes
#   sync_ref_model               False       -> False: the reference stays the frozen SFT policy
#   entropy_coef, use_adaptive_entropy 0.0, False -> 0.0, False: no entropy bonus
#   multi_objective_aggregation  sum_then_normalize -> the same: normalize_then_sum divides by a std whatever
#                                               scale_rewards says, which would undo Dr. GRPO
# Not pinned by the paper (each recipe chooses, marked "ours"): num_iterations 1 and steps_per_generation
# (default gradient_accumulation_steps), which make training on-policy: the ratio is 1 and the clipping above
# never acts unless a recipe samples ahead, as ours all do (4 optimizer steps per sampling: train/parity.py
# checks the tiny and paper recipes agree); max_completion_length 512;
# learning_rate 1e-6; max_grad_norm 1.0; disable_dropout False; cast_lm_head_to_fp32 False; shuffle_dataset
# True; reward_weights None (one reward per run); num_generations_eval; chat_template_kwargs; log_completions.
# Moot here: vllm_importance_sampling_mode / _clip_min / _clip_max (correction off), ref_model_mixup_alpha /
# ref_model_sync_steps (no sync), sapo_* and vespo_* (other loss types).
PAPER_GRPO: dict[str, object] = {
    "loss_type": "dr_grpo",  # Dr. GRPO: the loss is normalised by the constant max_completion_length ...
    "scale_rewards": "none",  # ... and advantages are not divided by the group's standard deviation
    "beta": 0.15,  # KL penalty against the reference, the SFT policy
    "use_bias_correction_kl": False,  # plain KL (TRL 1.16's default True reweights it by the ratio)
    "epsilon": 0.15,  # asymmetric PPO clipping [1 - 0.15, 1 + 0.22]
    "epsilon_high": 0.22,
    "delta": None,
    "importance_sampling_level": "token",
    "vllm_importance_sampling_correction": False,  # TRL 1.16's default True
    "off_policy_mask_threshold": None,
    "top_entropy_quantile": 1.0,
    "mask_truncated_completions": False,
    "sync_ref_model": False,
    "entropy_coef": 0.0,
    "use_adaptive_entropy": False,
    "multi_objective_aggregation": "sum_then_normalize",
    "num_generations": 4,
    "temperature": DEFAULT_TEMPERATURE,  # 0.8, also every sampled answer's default (chexreason.decoding)
    "top_p": DEFAULT_TOP_P,  # 0.95
    "top_k": 0,
    "min_p": None,
    "repetition_penalty": 1.0,
    "generation_kwargs": None,
}


@dataclass
class GRPOStageConfig(GRPOConfig):
    """GRPO from the SFT adapter (`python -m train.grpo`). GRPOConfig's fields carry the paper's values set in
    each recipe (`PAPER_GRPO`); the fields below are ours."""

    data_config: str = field(
        default="train/recipes/tiny/data.yaml", metadata={"help": "Data recipe whose RL prompts to train on."}
    )
    sft_recipe: str | None = field(
        default=None,
        metadata={"help": "SFT recipe to run first when sft_adapter does not exist (one command regenerates all)."},
    )
    sft_adapter: str = field(
        default="outputs/tiny/sft/adapter",
        metadata={"help": "The SFT LoRA adapter the policy starts from; a frozen copy of it is the KL reference."},
    )
    rewards: list[str] = field(
        default_factory=lambda: ["hard"],
        metadata={"help": f"Rewards by name (chexreason.rewards.get_reward), summed: {sorted(REWARD_FACTORIES)}."},
    )
    reward_length_threshold: int = field(
        default=250,
        metadata={"help": "Hard reward: valid outputs shorter than this many tokens pay λ_len (paper: 250)."},
    )
    reward_length_penalty: float = field(
        default=0.1, metadata={"help": "Hard reward: λ_len (the paper does not publish it; 0.1 is ours)."}
    )
    validation_samples: int = field(
        default=200,
        metadata={
            "help": "sft_validation images the best-checkpoint callback scores (greedy) at every save; 0 turns it off."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N RL prompts (smoke tests)."}
    )
    export_dir: str | None = field(
        default=None,
        metadata={"help": "When set, export base + SFT + best GRPO adapters, logs and model_set.yaml there."},
    )
    evaluate_after: bool = field(
        default=False, metadata={"help": "After exporting, evaluate the exported set (eval.json + model card)."}
    )
    export_description: str = field(
        default="Base, SFT and GRPO checkpoints of a ChexReason SFT -> GRPO run.",
        metadata={"help": "The exported model set's description (the app's About tab shows it)."},
    )
    paper_recipe: str | None = field(
        default=None,
        metadata={"help": PAPER_RECIPE_HELP},
    )

    def __post_init__(self) -> None:
        need = requirement("grpo config")
        unknown = [name for name in self.rewards if name not in REWARD_FACTORIES]
        need(not unknown, f"unknown reward {', '.join(map(repr, unknown))}; choose from {sorted(REWARD_FACTORIES)}")
        need(bool(self.rewards) and len(set(self.rewards)) == len(self.rewards), "rewards: one or more, no repeats")
        need(self.reward_length_threshold >= 0, "reward_length_threshold must be at least 0")
        need(self.reward_length_penalty >= 0, "reward_length_penalty must be at least 0")
        need(self.validation_samples >= 0, "validation_samples must be at least 0")
        need(self.max_train_samples is None or self.max_train_samples >= 1, "max_train_samples must be at least 1")
        need(
            self.reward_weights is None or len(self.reward_weights) == len(self.rewards),
            "reward_weights needs one weight per reward",
        )
        # Dr. GRPO divides the summed token losses by max_completion_length: it must be a number.
        need(
            self.loss_type != "dr_grpo" or self.max_completion_length is not None,
            "loss_type dr_grpo needs max_completion_length (its loss normaliser)",
        )
        super().__post_init__()  # fills steps_per_generation (default: gradient_accumulation_steps)
        # TRL samples afresh every steps_per_generation x num_iterations micro-batches, and at once after a resume: a
        # checkpoint between two samplings resumes with new completions where the uninterrupted run used buffered
        # ones, and the two runs part. Checkpoints must fall where a sampling would happen anyway.
        every = self.steps_per_generation * self.num_iterations
        if self.save_strategy == "steps" and self.save_steps >= 1:
            need(
                (int(self.save_steps) * self.gradient_accumulation_steps) % every == 0,
                f"save_steps {self.save_steps:g} x gradient_accumulation_steps {self.gradient_accumulation_steps} is "
                f"not a multiple of steps_per_generation {self.steps_per_generation} x num_iterations "
                f"{self.num_iterations}: a run resumed from such a checkpoint would sample anew mid-generation and "
                "differ from an uninterrupted one",
            )

    def paper_departures(self) -> dict[str, tuple[object, object]]:
        """GRPO values that differ from the paper's: name -> (this config's value, the paper's)."""
        return departures(self, PAPER_GRPO)


def departures(config: object, paper: dict[str, object]) -> dict[str, tuple[object, object]]:
    """The fields of `config` whose values differ from `paper`'s: name -> (config's value, the paper's)."""
    return {name: (getattr(config, name), value) for name, value in paper.items() if getattr(config, name) != value}
