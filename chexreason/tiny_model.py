"""Moved to `chexreason.training.tiny_model`; the old name stays importable (it is the same module object)."""

import sys

from chexreason.training import tiny_model as _moved

sys.modules[__name__] = _moved
