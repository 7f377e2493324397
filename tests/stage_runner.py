"""Run `train` stages in fresh processes as their commands would, for the kill-and-rerun tests.

    python tests/stage_runner.py     # then, one JSON request per line on stdin

Importing torch, transformers and TRL takes ~12 s here, more than a small stage runs; so this process imports
them once and forks a child per request (``{"stage": "grpo", "argv": [...], "fault": "validation-started:2",
"log": "/tmp/…/run.log"}``), which runs the stage with ``$CHEXREASON_FAULT_AT`` set (`chexreason.faults`) and its
output in ``log``; the child's exit status comes back as one line (``-9``: it SIGKILLed itself). Each child is a
session leader, so a test can find the processes it left behind. Offline, like the test suite; the test-only
reward ``test_parity`` (`parity_reward`) is registered so that GRPO on the random tiny model has a gradient.
"""

import json
import os
import sys
import time
import traceback

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TQDM_DISABLE"] = "1"


def parity_reward(completions, completion_ids=None, **kwargs) -> list[float]:
    """A test-only reward that varies on a random model (whose outputs our rewards all score alike, and which
    writes to the length limit): the share of even token ids. So the policy gets a gradient."""
    return [sum(i % 2 == 0 for i in ids) / len(ids) for ids in completion_ids]


def _child(request: dict) -> None:
    """In the forked child: run the stage, exit 0, or 1 with the traceback in the log (never return)."""
    os.setsid()
    with open(request["log"], "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    if request.get("fault"):
        os.environ["CHEXREASON_FAULT_AT"] = request["fault"]
    status = 0
    try:
        from train import recipe

        recipe.run_stage(request["stage"], request["argv"])
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
        if exit_.code not in (None, 0):
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main() -> None:
    import importlib

    from chexreason.rewards import REWARD_FACTORIES

    for stage in ("base", "data", "sft", "grpo", "evaluate"):  # imported once, here, for every child
        importlib.import_module(f"train.{stage}")

    REWARD_FACTORIES["test_parity"] = lambda **options: parity_reward
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"pid": pid, "status": code, "seconds": round(time.monotonic() - start, 2)}), flush=True)


if __name__ == "__main__":
    main()
