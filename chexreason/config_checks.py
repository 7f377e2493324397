"""The one way a config's ``__post_init__`` refuses a value: a ValueError naming the config and the field.

The command lines turn that ValueError into a one-line message (`train.configs.parse_stage`, `train.data`).
"""

from __future__ import annotations

from collections.abc import Callable


def requirement(where: str) -> Callable[[bool, str], None]:
    """``need = requirement("data config")``; then ``need(condition, message)`` raises unless `condition` holds.

    >>> need = requirement("data config")
    >>> need(1 < 2, "fine")
    >>> need(False, "rl_samples must be at least 1")
    Traceback (most recent call last):
    ...
    ValueError: data config: rl_samples must be at least 1
    """

    def need(condition: bool, message: str) -> None:
        if not condition:
            raise ValueError(f"{where}: {message}")

    return need
