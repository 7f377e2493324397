"""Moved to `chexreason.training.pretrain`; this old name stays importable: every name is looked up there."""

from typing import Any

from chexreason.training import pretrain as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
