"""Typed recipe configuration, parsed by TRL's `TrlParser` from a YAML recipe with command-line overrides.

Every field documents itself (``python -m train.sft --help``); `__post_init__` rejects bad values with a
message that names the field. The data recipe's config, `DataConfig`, is the library's
(`chexreason.data.config`); it is re-exported here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from trl import GRPOConfig, SFTConfig

from chexreason.config_checks import requirement
from chexreason.data.config import DATA_SOURCES, TEACHERS, DataConfig, read_data_config
from chexreason.decoding import DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from chexreason.evaluation import EVAL_BATCH_SIZE, EVAL_SETTINGS
from chexreason.prompts import get_prompt
from chexreason.rewards import REWARD_FACTORIES
from chexreason.training.common import LM_PROJECTIONS

# Re-exported: these lived here before the data recipe's config moved into the library.
__all__ = [
    "DATA_SOURCES",
    "LM_PROJECTIONS",
    "PAPER_GRPO",
    "TEACHERS",
    "BaseStageConfig",
    "DataConfig",
    "EvaluateConfig",
    "GRPOStageConfig",
    "ModelArguments",
    "SFTStageConfig",
    "parse_stage",
    "read_data_config",
]


DTYPES = ("float32", "bfloat16", "float16")  # what a stage trains in (chexreason.loading.parse_dtype reads it)


@dataclass
class ModelArguments:
    """Which model a stage starts from, and how LoRA adapts it."""

    model_name_or_path: str = field(
        default="outputs/tiny/base/model",
        metadata={"help": "Local path or Hub id of the model this stage starts from (e.g. google/medgemma-4b-it)."},
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision to pin (a commit hash)."})
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
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
        if self.lora_r < 1 or self.lora_alpha < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError("model config: need lora_r >= 1, lora_alpha >= 1 and 0 <= lora_dropout < 1")
        if (self.min_pixels is None) != (self.max_pixels is None) or (
            self.min_pixels is not None and self.min_pixels > self.max_pixels
        ):
            raise ValueError("model config: set both min_pixels and max_pixels, with min_pixels <= max_pixels")


def parse_stage(prog: str, types: tuple[type, ...], argv: list[str] | None) -> tuple:
    """A stage's configs from its YAML recipe and command line, followed by the DataConfig its `data_config`
    names. A config mistake ends the program with a message, not a traceback."""
    from trl import TrlParser

    try:
        configs = TrlParser(types).parse_args_and_config(args=argv)
        return (*configs, read_data_config(configs[-1].data_config))
    except ValueError as error:
        sys.exit(f"{prog}: {error}")


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

    def __post_init__(self) -> None:
        # Early stopping keeps the checkpoint with the lowest validation loss, as the paper selects.
        self.load_best_model_at_end, self.metric_for_best_model, self.greater_is_better = True, "eval_loss", False
        if self.early_stopping_patience < 1:
            raise ValueError("sft config: early_stopping_patience must be at least 1")
        if str(self.eval_strategy) == "no" or str(self.eval_strategy) != str(self.save_strategy):
            raise ValueError("sft config: early stopping needs eval_strategy == save_strategy (e.g. both 'epoch')")
        super().__post_init__()


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
        default=None, metadata={"help": "Splits to score (default: every test_* split of the build)."}
    )
    limit: int | None = field(default=None, metadata={"help": "Score only the first N images of each split."})
    batch_size: int = field(
        default=EVAL_BATCH_SIZE,
        metadata={"help": "Images per generate call (64: the same outputs as 16 on the tiny set, faster)."},
    )
    max_new_tokens: int = field(
        default=EVAL_SETTINGS.max_new_tokens, metadata={"help": "The generation budget of every answer (greedy)."}
    )
    n_resamples: int = field(default=2000, metadata={"help": "Bootstrap resamples of every interval."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap."})
    no_predictions: bool = field(default=False, metadata={"help": "Write no per-image records file."})
    prompts: list[str] | None = field(
        default=None, metadata={"help": "Sweep these prompt variants (e.g. the paper's Table 1 keys) ..."}
    )
    checkpoint: str | None = field(
        default=None, metadata={"help": "... on this checkpoint of the set (default: its first)."}
    )
    out: str | None = field(
        default=None,
        metadata={"help": "Results summary (default: eval.json, or prompts.json for a sweep, beside the set)."},
    )

    def __post_init__(self) -> None:
        need = requirement("evaluate config")
        need(bool(self.models), "models is required: a model-set YAML or a bundled name such as 'tiny'")
        need(self.batch_size >= 1 and self.max_new_tokens >= 1, "batch_size and max_new_tokens must be at least 1")
        need(self.limit is None or self.limit >= 1, "limit must be at least 1")
        need(self.n_resamples >= 1, "n_resamples must be at least 1")
        for key in self.prompts or ():
            get_prompt(key)  # its ValueError names the known prompts


# ---------------------------------------------------------------------------------------------- GRPO

# The paper's GRPO values (DESIGN §3). TRL 1.16's defaults differ for loss_type (dapo), beta (0.0) and
# scale_rewards (group), so every recipe sets each of these explicitly; `GRPOStageConfig.paper_departures`
# lists what a recipe changes.
PAPER_GRPO: dict[str, object] = {
    "loss_type": "dr_grpo",  # Dr. GRPO: the loss is normalised by the constant max_completion_length ...
    "scale_rewards": "none",  # ... and advantages are not divided by the group's standard deviation
    "beta": 0.15,  # KL penalty against the reference, the SFT policy
    "epsilon": 0.15,  # asymmetric PPO clipping [1 - 0.15, 1 + 0.22]
    "epsilon_high": 0.22,
    "importance_sampling_level": "token",
    "num_generations": 4,
    "temperature": DEFAULT_TEMPERATURE,  # 0.8, also every sampled answer's default (chexreason.decoding)
    "top_p": DEFAULT_TOP_P,  # 0.95
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
        super().__post_init__()

    def paper_departures(self) -> dict[str, tuple[object, object]]:
        """GRPO values that differ from the paper's: name -> (this config's value, the paper's)."""
        return {
            name: (getattr(self, name), paper) for name, paper in PAPER_GRPO.items() if getattr(self, name) != paper
        }
