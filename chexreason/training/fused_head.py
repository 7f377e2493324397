"""Make TRL's fused LM head score only the labelled positions on CPU, as it already does on GPUs.

TRL 1.16 gives every trainer's model a chunked log-prob head (`trl.trainer.utils.add_fused_lm_head`): the loss
and the GRPO log-probs come from it, never from full logits. On CUDA and XPU it projects only the positions whose
label is not -100; on any other device it projects every position (prompt, image tokens, padding), so that
compilers such as Neuron's see one tile shape (``trl/trainer/utils.py:1640-1642``). A CPU has no such compiler,
and there the wasted projections are a large share of the tiny recipe's time: the tiny model's 3,000-token head
costs about as much per position as its two decoder layers, and only ~20% (base language stage) to ~40% (SFT,
GRPO) of the positions carry a label.

The labelled positions get the same computation either way and the others come out 0 either way, so the loss,
its gradients and the log-probs are unchanged up to floating-point rounding (`tests/test_fused_head.py`).
"""

from __future__ import annotations

import logging

import torch
import trl.trainer.utils as trl_utils

logger = logging.getLogger(__name__)

_TRL_CHOICE = getattr(trl_utils, "_use_triton", None)  # TRL's own rule: compact only on CUDA/XPU with Triton


def _compact(device: torch.device) -> bool:
    return device.type == "cpu" or bool(_TRL_CHOICE(device))


def score_labelled_positions_only() -> bool:
    """Patch TRL's fused head to skip unlabelled positions on CPU too; returns whether it is now patched.

    Idempotent. Call it before training. With a TRL that no longer has the hook, it logs and changes nothing.
    """
    if _TRL_CHOICE is None:
        logger.warning("trl.trainer.utils has no _use_triton: the fused head projects every position on CPU")
        return False
    trl_utils._use_triton = _compact
    return True
