"""Moved to `chexreason.training.pretrain`; the old name stays importable (it is the same module object)."""

import sys

from chexreason.training import pretrain as _moved

sys.modules[__name__] = _moved
