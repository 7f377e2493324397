"""What a study of reward hacking needs to see beyond TRL's own logs: sampled completions as our rewards read them,
and how often the gradient was clipped.

- **Completions, as scored.** TRL's ``log_completions`` decodes with ``skip_special_tokens=True``, which deletes
  our protocol tags where the tokenizer registers them as special tokens (the tiny one does), so its samples
  would not show what the rewards scored. `CompletionSamples` keeps the last batch our rewards saw (the text
  re-decoded from the token ids, `chexreason.training.grpo.TrainerReward`), and `CompletionSampleCallback`
  appends a few of them at every logging step to ``<output_dir>/completions.jsonl``, each with its ground
  truth, its parsed labels, its length and every reward's value (the total reward is their sum weighted by
  ``reward_weights``; the hard reward's Jaccard part is given beside it, so the length penalty is the difference).
- **Gradient clipping.** transformers logs ``grad_norm`` of the logging step only. `ClipRateTrainer` records the
  pre-clip norm of every optimizer step and logs ``grad_clip_rate``: the share of steps since the last log
  whose norm exceeded ``max_grad_norm``.

TRL itself logs ``clip_ratio/*`` (tokens whose importance ratio was clipped) and ``completions/clipped_ratio``
(completions cut off at ``max_completion_length``); the app's Training tab draws all three.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from trl import GRPOTrainer

from chexreason.parsing import parse_completion
from chexreason.rewards import jaccard
from chexreason.training.resume import ExactResume

COMPLETIONS_JSONL = "completions.jsonl"  # beside the run: a few scored completions per logging step
SAMPLES_PER_LOG = 4
GRAD_CLIP_RATE = "grad_clip_rate"


class CompletionSamples:
    """The last batch of completions the rewards scored: texts, token counts, ground truths, each reward's values.

    TRL calls every reward function on the same batch in turn; the first one (`start`) begins a new batch.
    """

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.texts: list[str] = []
        self.n_tokens: list[int | None] = []
        self.ground_truth: list[list[str]] = []
        self.rewards: dict[str, list[float | None]] = {}

    def start(self, texts: Sequence[str], n_tokens: Sequence[int] | None, ground_truth: Sequence) -> None:
        self.texts = list(texts)
        self.n_tokens = list(n_tokens) if n_tokens is not None else [None] * len(self.texts)
        self.ground_truth = [list(truth) for truth in ground_truth] if ground_truth else [[] for _ in self.texts]
        self.rewards = {}

    def add(self, name: str, values: Sequence[float | None]) -> None:
        self.rewards[name] = list(values)

    def rows(self, step: int, limit: int = SAMPLES_PER_LOG) -> list[dict[str, Any]]:
        """Up to `limit` completions of the last batch as JSON-ready rows."""
        rows = []
        for i, text in enumerate(self.texts[:limit]):
            parsed = parse_completion(text, self.protocol)
            labels = list(parsed.labels) if parsed.parseable else None
            rows.append(
                {
                    "step": step,
                    "ground_truth": self.ground_truth[i],
                    "completion": text,
                    "parseable": parsed.parseable,
                    "labels": labels,
                    "n_tokens": self.n_tokens[i],
                    "jaccard": jaccard(self.ground_truth[i], labels) if labels is not None else 0.0,
                    "rewards": {name: values[i] for name, values in self.rewards.items()},
                }
            )
        return rows


class CompletionSampleCallback(TrainerCallback):
    """At every logging step, appends a few of the last batch's scored completions to ``completions.jsonl``
    (main process only; a resumed run appends after what the killed one wrote, so steps may repeat)."""

    def __init__(self, samples: CompletionSamples, output_dir: str | Path, limit: int = SAMPLES_PER_LOG) -> None:
        self.samples = samples
        self.path = Path(output_dir) / COMPLETIONS_JSONL
        self.limit = limit

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if not state.is_world_process_zero or not self.samples.texts:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as stream:
            for row in self.samples.rows(state.global_step, self.limit):
                stream.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.samples.texts = []  # each batch is written once, however many logs follow it


class ClipRateTrainer(ExactResume, GRPOTrainer):
    """TRL's GRPOTrainer, also logging ``grad_clip_rate``: the share of optimizer steps since the last log whose
    gradient norm before clipping exceeded ``max_grad_norm``; resumed exactly (`ExactResume`)."""

    def _clip_grad_norm(self, model: Any) -> Any:
        # transformers 5.23 calls this once per optimizer step (when max_grad_norm > 0); it returns the norm before
        # clipping, the same on every process.
        norm = super()._clip_grad_norm(model)
        if norm is not None:  # DeepSpeed may not report one
            steps = self.__dict__.setdefault("_clip_steps", [])
            steps.append(float(norm) > self.args.max_grad_norm)
        return norm

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        steps = self.__dict__.get("_clip_steps")
        if steps and "loss" in logs:  # a training log, after at least one clipped-or-not step
            logs[GRAD_CLIP_RATE] = sum(steps) / len(steps)
            steps.clear()
        super().log(logs, start_time)
