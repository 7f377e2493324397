"""Training entry points: `python -m train.data|base|sft|grpo|evaluate`; the shared logic lives in `chexreason`.

TRL's trainers send usage telemetry to the Hugging Face Hub when they start. These commands turn that off
(unless HF_HUB_DISABLE_TELEMETRY is already set): a training run reaches the network only when asked to.
"""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # read when huggingface_hub is first imported: set it first


def log_to_console() -> None:
    """What every command prints: INFO and up, with the logger's name."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
