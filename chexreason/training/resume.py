"""Resuming a Trainer run exactly where a kill stopped it, and writing a stage's results only when complete.

- **Which checkpoint.** `last_checkpoint` is the newest *complete* ``checkpoint-N``: transformers writes the
  weights, the optimizer, scheduler and random state, and ``trainer_state.json`` last, so a checkpoint is complete
  when its state parses, its weights' headers read and every file its stage adds (``required``) is there.
- **Everything the uninterrupted run would still hold.** Between two logging steps the Trainer accumulates the
  loss (``_tr_loss``), TRL its metrics (``_metrics``) and `ClipRateTrainer` its clip flags, and SFTTrainer counts
  the tokens trained on; at a resume they start empty, so the first log after a resume would average fewer steps
  and the final ``train_loss`` only the resumed ones. `ExactResume` writes them, and the model's mode, into each
  checkpoint (``resume_state_rank<i>.json``, before the trainer state that makes the checkpoint complete), with
  whatever else a stage registers (`before_state`: the nuanced reward's window), and puts them back when
  training begins.
- **Final artefacts.** `install_stage_output` writes a stage's log and then its adapter or model folder, each
  atomically (`chexreason.atomic`): a folder that exists is complete and its log is beside it.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTTrainer

from chexreason import atomic
from chexreason.faults import fault_point
from chexreason.model_set_spec import unreadable_weights

logger = logging.getLogger(__name__)

RESUME_STATE_JSON = "resume_state_rank{rank}.json"
_COUNTERS = ("_total_train_tokens",)  # TRL's SFTTrainer: tokens trained on so far, logged as num_tokens


def last_checkpoint(output_dir: str | Path, required: Iterable[str] = ()) -> str | None:
    """The newest complete `checkpoint-N` in a stage's output folder, so an interrupted run resumes there. A
    checkpoint a kill cut short is skipped, with a warning saying why; it would otherwise fail every rerun.
    `required`: files the stage writes into each of its checkpoints before the trainer state."""
    output_dir = Path(output_dir)
    numbered = [
        (int(match[1]), folder)
        for folder in (output_dir.iterdir() if output_dir.is_dir() else ())
        if folder.is_dir() and (match := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", folder.name))
    ]
    for _, folder in sorted(numbered, reverse=True):
        problem = incomplete_checkpoint(folder, required)
        if problem is None:
            logger.info("resuming from %s", folder)
            return str(folder)
        logger.warning("not resuming from %s: %s (a run killed while saving it?)", folder, problem)
    return None


def incomplete_checkpoint(folder: Path, required: Iterable[str] = ()) -> str | None:
    """Why a Trainer checkpoint cannot be resumed from, or None when it is complete (see the module docstring)."""
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())["global_step"]
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError, KeyError, TypeError):
        return "trainer_state.json is cut short or unreadable"
    if not any(folder.glob("*.safetensors")):
        return "no weights (*.safetensors)"
    if problem := unreadable_weights(folder):
        return problem
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    return None


class ExactResume:
    """A mixin for Trainer subclasses (first in the bases): checkpoints carry what a resume needs to continue
    exactly as the uninterrupted run would (see the module docstring).

    `before_state` registers writers called with each checkpoint's folder before its trainer state is written;
    `resumed_from` is the checkpoint this run resumed from (None: a fresh run).
    """

    resumed_from: str | None = None

    def before_state(self, writer: Callable[[Path], None]) -> None:
        self.__dict__.setdefault("_before_state", []).append(writer)

    def train(self, resume_from_checkpoint: str | None = None, **kwargs: Any) -> Any:
        self.resumed_from = resume_from_checkpoint
        if not any(isinstance(c, _RestoreAtTrainBegin) for c in self.callback_handler.callbacks):
            self.add_callback(_RestoreAtTrainBegin(self))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        fault_point("checkpoint-started")
        pending = {
            "training": self.model.training,
            "total_loss": self._total_loss_scalar,
            "pending_loss": float(self._tr_loss),
            "last_logged": self._globalstep_last_logged,
            "metrics": {k: list(v) for k, v in getattr(self, "_metrics", {}).get("train", {}).items()},
            "clip_steps": list(self.__dict__.get("_clip_steps", [])),
            "counters": {name: getattr(self, name) for name in _COUNTERS if hasattr(self, name)},
        }
        atomic.write_text(folder / RESUME_STATE_JSON.format(rank=self.args.process_index), json.dumps(pending) + "\n")
        for writer in self.__dict__.get("_before_state", []):
            writer(folder)
        # Every process's files are in before the main process writes the trainer state that completes the checkpoint.
        self.accelerator.wait_for_everyone()
        super()._save_checkpoint(model, trial)

    def save_model(self, *args: Any, **kwargs: Any) -> None:
        super().save_model(*args, **kwargs)
        if kwargs.get("_internal_call"):  # a checkpoint's weights, written; its optimizer and state follow
            fault_point("checkpoint-weights")

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        fault_point("checkpoint-optimizer")

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "train_loss" in logs and self.__dict__.get("_total_restored"):
            # transformers averages over this call's steps only; with the total restored, over every step
            logs["train_loss"] = self._total_loss_scalar / max(self.state.global_step, 1)
        super().log(logs, *args, **kwargs)

    def _restore_pending(self) -> None:
        if self.resumed_from is None or self.__dict__.get("_restored") == self.resumed_from:
            return
        self.__dict__["_restored"] = self.resumed_from
        path = Path(self.resumed_from) / RESUME_STATE_JSON.format(rank=self.args.process_index)
        if not path.is_file():  # a checkpoint from before this file existed: resumes, as transformers does
            logger.warning("%s has no %s: the first log after the resume averages fewer steps", path.parent, path.name)
            return
        pending = json.loads(path.read_text())
        # TRL files a log's metrics by the model's mode (an evaluation leaves it in eval mode); a resume with no step
        # left never enters a training step, so it logs in the mode the model was in at the checkpoint.
        self.model.train(pending.get("training", True))
        self._total_loss_scalar = pending["total_loss"]
        self.__dict__["_total_restored"] = True
        self._tr_loss = torch.tensor(pending["pending_loss"], device=self._tr_loss.device, dtype=self._tr_loss.dtype)
        self._globalstep_last_logged = pending["last_logged"]
        if hasattr(self, "_metrics"):
            self._metrics["train"] = defaultdict(list, pending["metrics"])
        self.__dict__["_clip_steps"] = list(pending["clip_steps"])
        for name, value in pending.get("counters", {}).items():
            setattr(self, name, value)


class ResumableSFTTrainer(ExactResume, SFTTrainer):
    """TRL's SFTTrainer, resumed exactly (`ExactResume`): the SFT stage's trainer and the tiny base stage's."""


class _RestoreAtTrainBegin(TrainerCallback):
    """Puts the pending values back once the Trainer has reset them, before the first resumed step."""

    def __init__(self, trainer: ExactResume) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.trainer._restore_pending()


def install_stage_output(
    folder: str | Path,
    save: Callable[[Path], None],
    log_path: str | Path | None = None,
    log: Any = None,
    accelerator: Any = None,
) -> Path:
    """Write a stage's final log (atomically) and then its output folder: `save` writes into a staged folder,
    installed in one rename. A kill leaves the old folder, or the new one with its log beside it.

    With an `accelerator`, every process calls `save` (FSDP and ZeRO-3 gather the weights from all of them; the
    Trainer writes on the main process only) and the main process stages, logs and installs; without, the caller
    is the one process that saves."""
    folder = Path(folder)
    main = accelerator is None or accelerator.is_main_process
    staged = atomic.staging_folder(folder) if main else folder.with_name(f"{folder.name}.partial")
    if accelerator is not None:
        accelerator.wait_for_everyone()
    save(staged)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if main:
        if log_path is not None:
            atomic.write_text(log_path, json.dumps(log, indent=1) + "\n")
        fault_point("final-log-written")
        atomic.install_folder(staged, folder)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return folder
