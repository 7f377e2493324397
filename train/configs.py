"""Typed recipe configuration, parsed by TRL's `TrlParser` from a YAML recipe with command-line overrides.

Every field documents itself (``python -m train.data --help``); `__post_init__` rejects bad values with a
message that names the field.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from trl import GRPOConfig, SFTConfig

from chexreason.data.readers import UNCERTAINTY_POLICIES
from chexreason.labels import EVAL_LABEL_SETS
from chexreason.prompts import ANSWER_FORMATS
from chexreason.rewards import REWARD_FACTORIES

DATA_SOURCES = ("phantom", "real")
TEACHERS = ("template", "api")


@dataclass
class DataConfig:
    """How `python -m train.data` builds the SFT, RL and evaluation sets."""

    source: str = field(
        default="phantom",
        metadata={
            "help": "'phantom' (the synthetic two-site benchmark) or 'real' (MIMIC-CXR-JPG; CheXpert, NIH tests)."
        },
    )
    output_dir: str = field(
        default="outputs/tiny/data", metadata={"help": "Where the datasets and manifest.json are written."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the phantom generator and of the patient shuffle."})
    sft_samples: int = field(default=2000, metadata={"help": "SFT examples, validation included (paper: 2,000)."})
    sft_validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the SFT examples held out for validation (paper: 10%)."}
    )
    rl_samples: int = field(default=1000, metadata={"help": "GRPO prompts (paper: 1,000)."})
    uncertainty_policy: str = field(
        default="u-zeros",
        metadata={"help": f"Uncertain (-1) labels: {UNCERTAINTY_POLICIES}. The paper does not say; u-zeros is ours."},
    )
    frontal_only: bool = field(default=True, metadata={"help": "Keep only PA/AP views."})
    answer_format: str = field(
        default="free_reasoning",
        metadata={"help": f"SFT answer format, one of {sorted(ANSWER_FORMATS)}; GRPO starts from free_reasoning."},
    )
    teacher: str = field(default="template", metadata={"help": f"Who writes the SFT traces: one of {TEACHERS}."})
    teacher_base_url: str | None = field(
        default=None, metadata={"help": "API teacher: OpenAI-compatible base URL, e.g. http://localhost:8000/v1."}
    )
    teacher_model: str | None = field(default=None, metadata={"help": "API teacher: model name."})
    teacher_api_key_env: str | None = field(
        default=None,
        metadata={"help": "API teacher: environment variable holding the API key (unset for local servers)."},
    )
    teacher_max_concurrency: int = field(default=4, metadata={"help": "API teacher: parallel requests."})
    teacher_allow_credentialed_remote: bool = field(
        default=False,
        metadata={"help": "API teacher: my data use agreement allows sending MIMIC-CXR/CheXpert images there."},
    )
    drop_teacher_mismatches: bool = field(
        default=True,
        metadata={"help": "Drop SFT examples whose API-teacher trace does not reach the ground-truth labels."},
    )
    # Phantom benchmark.
    image_size: int = field(default=256, metadata={"help": "Phantom: rendered image side in pixels."})
    test_samples_per_site: int = field(
        default=500, metadata={"help": "Phantom: evaluation images per site (a and b)."}
    )
    workers: int = field(default=2, metadata={"help": "Phantom: processes rendering images."})
    # Real datasets.
    mimic_root: str | None = field(
        default=None, metadata={"help": "Real: MIMIC-CXR-JPG folder (with files/ and the metadata CSVs)."}
    )
    mimic_labeler: str = field(
        default="chexpert", metadata={"help": "Real: MIMIC label file: 'chexpert' or 'negbio'."}
    )
    chexpert_test_csv: str | None = field(
        default=None, metadata={"help": "Real: CheXpert test_labels.csv (in-distribution evaluation)."}
    )
    chexpert_root: str | None = field(
        default=None, metadata={"help": "Real: folder the CheXpert CSV's Path column is relative to."}
    )
    nih_csv: str | None = field(
        default=None, metadata={"help": "Real: NIH Data_Entry_2017(_v2020).csv (cross-dataset evaluation)."}
    )
    nih_images: str | None = field(
        default=None, metadata={"help": "Real: NIH images folder (flat or the Kaggle images_0XX/images layout)."}
    )
    nih_split_list: str | None = field(
        default=None, metadata={"help": "Real: NIH test_list.txt; the NIH evaluation set is its frontal images."}
    )
    nih_label_set: str = field(
        default="nih9",
        metadata={"help": "Real and phantom site b: 'nih9' (paper) or 'nih10' (adds Pleural Effusion)."},
    )

    def __post_init__(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(f"data config: {message}")

        need(self.source in DATA_SOURCES, f"source must be one of {DATA_SOURCES}, not {self.source!r}")
        need(self.sft_samples >= 2, "sft_samples must be at least 2")
        need(0 < self.sft_validation_fraction < 1, "sft_validation_fraction must be in (0, 1)")
        need(self.rl_samples >= 1, "rl_samples must be at least 1")
        need(
            self.uncertainty_policy in UNCERTAINTY_POLICIES,
            f"uncertainty_policy must be one of {UNCERTAINTY_POLICIES}",
        )
        need(self.answer_format in ANSWER_FORMATS, f"answer_format must be one of {sorted(ANSWER_FORMATS)}")
        need(self.teacher in TEACHERS, f"teacher must be one of {TEACHERS}")
        if self.teacher == "api":
            need(
                bool(self.teacher_base_url and self.teacher_model),
                "the api teacher needs teacher_base_url and teacher_model",
            )
        need(
            self.nih_label_set in ("nih9", "nih10") and self.nih_label_set in EVAL_LABEL_SETS,
            "nih_label_set must be nih9 or nih10",
        )
        need(64 <= self.image_size <= 2048, "image_size must be between 64 and 2048")
        need(
            self.test_samples_per_site >= 1 and self.workers >= 1,
            "test_samples_per_site and workers must be at least 1",
        )

    def missing_real_paths(self) -> list[str]:
        """The dataset paths a 'real' build still lacks. Checked when data is built, not when a recipe is read,
        so the SFT and GRPO stages can read a paper data recipe whose datasets were built earlier."""
        if self.source != "real":
            return []
        names = ("mimic_root", "chexpert_test_csv", "nih_csv", "nih_images", "nih_split_list")
        return [name for name in names if not getattr(self, name)]

    @property
    def sft_validation_samples(self) -> int:
        return max(1, round(self.sft_samples * self.sft_validation_fraction))


# The language model's attention and MLP projections, not the vision tower's (whose q/k/v and MLP layers
# share the plain names). PEFT full-matches a string target against each module's name.
LM_PROJECTIONS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


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
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model config: dtype must be float32, bfloat16 or float16, not {self.dtype!r}")
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


def read_data_config(path: str) -> DataConfig:
    """The DataConfig of a data recipe YAML (the stages name theirs with `data_config`)."""
    from transformers import HfArgumentParser

    try:
        (config,) = HfArgumentParser(DataConfig).parse_yaml_file(path)
    except FileNotFoundError:
        raise ValueError(f"data_config {path!r} does not exist") from None
    return config


@dataclass
class BaseStageConfig(SFTConfig):
    """The tiny recipe's base stage (`python -m train.base`): vision warm-up, then full-parameter language
    training on lay captions and off-image format examples (see `chexreason.pretrain`). SFTConfig's fields
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
    "temperature": 0.8,
    "top_p": 0.95,
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

    def __post_init__(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(f"grpo config: {message}")

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
