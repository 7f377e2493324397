"""Build the SFT, RL and evaluation datasets of a recipe.

    python -m train.data --config train/recipes/tiny/data.yaml          # phantom benchmark, ~30 s on 2 CPU cores
    python -m train.data --config train/recipes/paper/data.yaml \\
        --mimic_root /data/mimic-cxr-jpg/2.1.0 --chexpert_test_csv /data/chexpert/test_labels.csv \\
        --chexpert_valid_csv /data/chexpert/CheXpert-v1.0-small/valid.csv \\
        --chexpert_root /data/chexpert --nih_csv /data/nih/Data_Entry_2017_v2020.csv \\
        --nih_images /data/nih/images --nih_split_list /data/nih/test_list.txt

Any field of `chexreason.data.config.DataConfig` can be overridden on the command line (``--help`` lists them).
A second run with the same config reuses what the first built. Departures from the paper: the paper used
Gemini 2.5 as teacher; the default here is the offline template teacher (``--teacher api`` for any
OpenAI-compatible endpoint), and the uncertainty policy (u-zeros) and NIH subset (test_list.txt, frontal)
are our choices where the paper is silent.
"""

from __future__ import annotations

import json
import sys

from chexreason.data.build import build_datasets
from chexreason.data.config import DataConfig
from chexreason.data.readers import DatasetError
from chexreason.teachers.report import TeacherError
from train import log_to_console
from train.configs import parse_recipe


def main(argv: list[str] | None = None) -> dict:
    log_to_console()
    (config,) = parse_recipe("train.data", (DataConfig,), argv)  # mistakes, bad YAML, unwritable output: a message
    missing = config.missing_real_paths()
    if missing:  # said before any work, in the command line's own terms
        sys.exit(f"train.data: data config: source 'real' needs {', '.join('--' + name for name in missing)}")
    try:
        manifest = build_datasets(config)
    except (DatasetError, TeacherError, FileNotFoundError) as error:  # bad paths, data or endpoint: say what
        sys.exit(f"train.data: {error}")
    summary = ("splits", "label_counts", "dropped", "teacher", "seconds")
    print(json.dumps({k: manifest[k] for k in summary if k in manifest}, indent=1))
    return manifest


if __name__ == "__main__":
    main()
