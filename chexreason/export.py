"""Moved to `chexreason.training.export`; the old name stays importable (it is the same module object)."""

import sys

from chexreason.training import export as _moved

sys.modules[__name__] = _moved
