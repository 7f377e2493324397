"""Worker processes that die with their parent: a stage killed with SIGKILL runs no cleanup, and its pool workers
would otherwise live on (a data build's two phantom workers hold ~380 MB each) until someone finds them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """A `ProcessPoolExecutor` initializer (``initargs=(os.getpid(),)``): on Linux the kernel sends this process
    SIGKILL when its parent dies (under the forkserver start method the parent is the fork server, which ends with
    the process that started it); a `parent_pid` that died before this ran is noticed at once. Elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        os.kill(parent_pid, 0)  # signal 0: only asks whether it still exists
    except ProcessLookupError:  # gone before prctl took hold
        os._exit(1)
