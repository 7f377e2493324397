"""Training entry points (`python -m train.data|sft|grpo|evaluate`). They arrive with the data and
training issues; the shared logic lives in `chexreason`."""
