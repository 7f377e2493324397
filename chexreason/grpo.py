"""Moved to `chexreason.training.grpo`; this old name stays importable: every name is looked up there."""

from typing import Any

from chexreason.training import grpo as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
