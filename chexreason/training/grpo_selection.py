"""GRPO's best-checkpoint selection (the paper's Table 4): the policy adapter saved alone, scored greedily on a
validation set at every save, and the best kept — across kills and resumes (`BestPolicyCallback`). Re-exported by
`chexreason.training.grpo`, whose docstring says why it is shaped this way."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datasets import Dataset
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from chexreason import atomic
from chexreason.data.build import head
from chexreason.decoding import GenerationSettings
from chexreason.faults import fault_point
from chexreason.metrics import score
from chexreason.model_set import ModelSet
from chexreason.parsing import parse_completion
from chexreason.prompts import PromptVariant

if TYPE_CHECKING:
    from peft import PeftModel

logger = logging.getLogger(__name__)

POLICY = "default"  # PEFT's name for the adapter loaded by from_pretrained: the policy being trained
BEST_ADAPTER = "best_adapter"
BEST_JSON = "best.json"
VALIDATION_JSON = "grpo_validation.json"  # the validation history: in each checkpoint, and the run's beside them


def save_policy(model: PeftModel, folder: str | Path, processor: Any | None = None) -> Path:
    """Save the policy adapter alone (never TRL's ``"ref"`` copy) as a standalone PEFT adapter, and the processor
    (with its chat template, ``chat_template.jinja``, which inference then prompts with: `chexreason.loading`)."""
    folder = Path(folder)
    model.save_pretrained(str(folder), selected_adapters=[POLICY])
    if processor is not None:
        processor.save_pretrained(str(folder))
    return folder


def checkpoint_folder(args: TrainingArguments, state: TrainerState) -> Path:
    """The folder the Trainer has just written for this step's checkpoint."""
    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"


def validate_policy(
    model: PeftModel,
    processor: Any,
    images: Sequence[Any],
    truth: Sequence[Sequence[str]],
    label_set: str,
    prompt: PromptVariant,
    max_new_tokens: int,
    batch_size: int = 8,
) -> dict:
    """Score the policy adapter on `images` with greedy generation: `chexreason.metrics.score` of its labels.

    Generation goes through `ModelSet.generate_batch` on the live model, naming the policy adapter per row (PEFT's
    mixed-batch path), so the result does not depend on which adapter TRL left active. `processor` must pad on
    the left. The model's training mode is restored afterwards.
    """
    policy = ModelSet.from_model(model, processor, checkpoint="policy", prompt=prompt.key, adapter=POLICY)
    was_training = model.training
    model.eval()  # PEFT refuses per-row adapters in training mode; no dropout when scoring
    try:
        texts = policy.generate_batch(
            list(images), batch_size=batch_size, progress=False, settings=GenerationSettings(max_new_tokens)
        )
    finally:
        model.train(was_training)
    parsed = [parse_completion(row[0], prompt.protocol) for row in texts]
    return score(list(truth), [p.labels if p.parseable else None for p in parsed], label_set)


@dataclass
class ValidationSet:
    """What the best-checkpoint callback scores: images, their true labels, the label set and the prompt."""

    images: list
    truth: list[list[str]]
    label_set: str
    prompt: PromptVariant

    @classmethod
    def from_dataset(cls, dataset: Dataset, prompt: PromptVariant, limit: int) -> ValidationSet:
        rows = head(dataset, limit)
        return cls(list(rows["image"]), list(rows["ground_truth"]), rows[0]["label_set"], prompt)


class BestPolicyCallback(TrainerCallback):
    """At every save, scores the policy on a validation set and keeps the adapter with the best macro-F1.

    Writes ``<output_dir>/best_adapter`` (the adapter, the processor and ``best.json`` with the step and the
    scores; installed whole, `chexreason.atomic`), the validation history into each checkpoint and beside them
    (``grpo_validation.json``). `restore` picks the history up on resume; a resumed checkpoint whose validation
    a kill interrupted is validated when training begins, before any step. Runs on the main process only.
    """

    def __init__(
        self,
        validation: ValidationSet,
        processor: Any,
        output_dir: str | Path,
        max_new_tokens: int,
        batch_size: int,
        main_process: bool = True,
    ) -> None:
        self.validation = validation
        self.main_process = main_process  # the one that validates and writes
        self.processor = copy.deepcopy(processor)  # left padding for generation, without touching the trainer's
        self.processor.tokenizer.padding_side = "left"
        self.output_dir = Path(output_dir)
        self.best_dir = self.output_dir / BEST_ADAPTER
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.history: list[dict] = []
        self.unvalidated: Path | None = None  # a resumed checkpoint whose validation did not complete

    @property
    def best(self) -> dict | None:
        """The best validation so far (highest macro-F1, the earliest on ties)."""
        return max(self.history, key=lambda entry: entry["macro_f1"], default=None)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if state.is_world_process_zero:
            self.validate(kwargs["model"], state.global_step, checkpoint_folder(args, state))

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if self.unvalidated is not None and state.is_world_process_zero:  # the checkpoint's weights are loaded
            logger.warning("validating %s first: a kill interrupted its validation", self.unvalidated)
            self.validate(kwargs["model"], state.global_step, self.unvalidated)
        self.unvalidated = None

    def validate(self, model: PeftModel, step: int, checkpoint: Path) -> dict:
        """Score the policy at `step`, keep it if it is the best so far, and record the validation in `checkpoint`."""
        fault_point("validation-started")
        v = self.validation
        result = validate_policy(
            model, self.processor, v.images, v.truth, v.label_set, v.prompt, self.max_new_tokens, self.batch_size
        )
        entry = {"step": step, **{k: result[k] for k in _SUMMARY}}
        previous = self.best
        self.history.append(entry)
        logger.info(
            "validation at step %d: macro-F1 %.3f, micro-F1 %.3f, fail rate %.3f",
            entry["step"],
            entry["macro_f1"],
            entry["micro_f1"],
            entry["fail_rate"],
        )
        if previous is None or entry["macro_f1"] > previous["macro_f1"]:
            staged = atomic.staging_folder(self.best_dir)
            save_policy(model, staged, self.processor)
            best = {**entry, "per_label": result["per_label"], "label_set": v.label_set, "n": result["n"]}
            (staged / BEST_JSON).write_text(json.dumps(best, indent=1) + "\n")
            fault_point("best-adapter-staged")
            atomic.install_folder(staged, self.best_dir)
            logger.info("new best policy (macro-F1 %.3f) saved to %s", entry["macro_f1"], self.best_dir)
        history = json.dumps(self.history, indent=1) + "\n"
        atomic.write_text(self.output_dir / VALIDATION_JSON, history)
        atomic.write_text(checkpoint / VALIDATION_JSON, history)  # last: the checkpoint's validation is complete
        return entry

    def restore(self, checkpoint: str | Path | None) -> list[dict]:
        """Restore the validation history saved in `checkpoint` and return it.

        A checkpoint whose validation a kill interrupted lacks it: the history is then the run's validations
        before that step (``<output_dir>/grpo_validation.json``), and the checkpoint is validated when training
        begins (`on_train_begin`).
        """
        self.history, self.unvalidated = [], None
        if self.main_process:
            atomic.recover_folder(self.best_dir)  # a best adapter a kill left half-installed
        if checkpoint is None:
            return self.history
        checkpoint = Path(checkpoint)
        path, run = checkpoint / VALIDATION_JSON, self.output_dir / VALIDATION_JSON
        if path.is_file():
            self.history = json.loads(path.read_text())
            return self.history
        step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
        if run.is_file():
            self.history = [entry for entry in json.loads(run.read_text()) if entry["step"] < step]
        elif (best := self.best_dir / BEST_JSON).is_file():  # a run from before the run's history was kept
            entry = json.loads(best.read_text())
            self.history = [{key: entry[key] for key in ("step", *_SUMMARY)}] if entry["step"] < step else []
        self.unvalidated = checkpoint
        return self.history


_SUMMARY = ("micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1", "fail_rate")
