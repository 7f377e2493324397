"""The data recipe: how the SFT, RL and evaluation sets of a run are built, as a typed, validated config.

Every field documents itself (``python -m train.data --help`` lists them); `__post_init__` rejects bad values with
a message that names the field. `read_data_config` reads a data recipe YAML, as the stages do with `data_config`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from chexreason.config_checks import requirement
from chexreason.data.readers import UNCERTAINTY_POLICIES
from chexreason.labels import EVAL_LABEL_SETS
from chexreason.prompts import ANSWER_FORMATS

DATA_SOURCES = ("phantom", "real")
TEACHERS = ("template", "api")


@dataclass
class DataConfig:
    """How the SFT, RL and evaluation sets are built (`chexreason.data.build.build_datasets`; the data recipes
    `train/recipes/*/data.yaml`, and `python -m train.data`, which overrides any field on its command line)."""

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
        default=0.1, metadata={"help": "Share of the SFT examples held out for validation (paper: a tenth)."}
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
    chexpert_valid_csv: str | None = field(
        default=None,
        metadata={
            "help": "Real: CheXpert valid.csv (234 images, in CheXpert-v1.0[-small]/) -> the valid_chexpert split, "
            "which prompt sweeps run on (the paper's Tables 1-4). Optional; never derived from chexpert_test_csv, "
            "which CheXpert ships apart from valid.csv."
        },
    )
    chexpert_root: str | None = field(
        default=None,
        metadata={"help": "Real: folder the CheXpert CSVs' Path column is relative to (test and valid alike)."},
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
    paper_recipe: str | None = field(
        default=None,
        metadata={"help": "The paper data recipe this one is a small-scale copy of (train/parity.py); not data."},
    )

    def __post_init__(self) -> None:
        need = requirement("data config")
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
        need(
            not (self.chexpert_valid_csv and self.chexpert_test_csv)
            or os.path.abspath(self.chexpert_valid_csv) != os.path.abspath(self.chexpert_test_csv),
            "chexpert_valid_csv is the chexpert_test_csv: selection (prompt sweeps) would then run on the test set",
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

    def absent_optional_files(self) -> list[str]:
        """'name path does not exist' for each optional dataset file a 'real' build names but cannot find (today
        chexpert_valid_csv): checked, like `missing_real_paths`, before a build reads anything."""
        if self.source != "real" or not self.chexpert_valid_csv or os.path.isfile(self.chexpert_valid_csv):
            return []
        return [f"chexpert_valid_csv {self.chexpert_valid_csv} does not exist"]

    @property
    def sft_validation_samples(self) -> int:
        return max(1, round(self.sft_samples * self.sft_validation_fraction))


def read_data_config(path: str) -> DataConfig:
    """The DataConfig of a data recipe YAML (the stages name theirs with ``data_config``), parsed exactly as
    ``python -m train.data --config <path>`` parses it: the same types (``seed: "0"`` is the number 0 in both, so
    both compute the same fingerprint and reuse each other's build), the same checks. A mistake is a ValueError
    naming the file."""
    import argparse

    import yaml
    from trl import TrlParser

    if not Path(path).is_file():
        raise ValueError(f"data_config {path!r} does not exist")
    try:
        (config,) = TrlParser((DataConfig,), exit_on_error=False).parse_args_and_config(args=["--config", str(path)])
    except (argparse.ArgumentError, yaml.YAMLError, ValueError, TypeError) as error:
        raise ValueError(f"data_config {path}: {' '.join(str(error).split())}") from None
    return config
