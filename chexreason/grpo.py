"""Moved to `chexreason.training.grpo`; the old name stays importable (it is the same module object)."""

import sys

from chexreason.training import grpo as _moved

sys.modules[__name__] = _moved
