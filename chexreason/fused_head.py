"""Moved to `chexreason.training.fused_head`; the old name stays importable (it is the same module object)."""

import sys

from chexreason.training import fused_head as _moved

sys.modules[__name__] = _moved
