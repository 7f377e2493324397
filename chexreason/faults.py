"""Fault injection for the kill-and-rerun tests: ``CHEXREASON_FAULT_AT=<event>[:<n>]`` makes the process SIGKILL
itself the `n`-th time (default the first) it reaches `event` — the way a preempted job dies, with no cleanup.

Every place where a kill could leave a half-written artefact names its event with `fault_point`; the tests
(``tests/test_kill_resume.py``) run a stage as a subprocess with the hook set, rerun the same command and compare
what it leaves with an uninterrupted run. Unset (every real run), `fault_point` is one dictionary lookup.

    checkpoint-started / checkpoint-weights / checkpoint-optimizer   a Trainer checkpoint being written
    reward-state-written   the nuanced reward's window written into the checkpoint, its trainer state not yet
    validation-started     GRPO's best-checkpoint validation of a checkpoint that is already complete
    best-adapter-staged    a new best adapter written, not yet installed
    final-log-written      a stage's training log written, its final adapter not yet installed
    export-started         the model set being copied
    manifest-write         a data build's datasets installed, its manifest not yet written
    data-generating        a data build drawing phantoms (its worker processes running)
    evaluate-batch         an evaluation's records appended for one batch
    results-write          an evaluation's records complete, its summary not yet written
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "CHEXREASON_FAULT_AT"
_reached: Counter[str] = Counter()


def fault_point(event: str) -> None:
    """SIGKILL this process if ``$CHEXREASON_FAULT_AT`` names `event` and this is its chosen occurrence."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != event:
        return
    _reached[event] += 1
    if _reached[event] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
