"""Moved to `chexreason.training.fused_head`; this old name stays importable: every name is looked up there."""

from typing import Any

from chexreason.training import fused_head as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
