"""Decoding: how to decode (`GenerationSettings`), and how generated token ids become completion text.

- `GenerationSettings` is the one way decoding settings travel, from the CLI, the app and evaluation down to
  the ``generate`` call; its defaults are the paper's sampling values (temperature 0.8, top-p 0.95), and its
  token budget defaults to each checkpoint's own (the model set records it: the GRPO recipe's
  ``max_completion_length``).
- `RowBudget` ends each row of a batch at its own budget, so checkpoints with different budgets still share
  one ``generate`` call.
- `CompletionDecoder` keeps the reasoning protocol's tags (``<think>``, ``<solution>``, ``<answer>``): the tiny
  tokenizer registers them as special tokens, which ``skip_special_tokens=True`` would silently drop, and
  every output would then be unparseable.
- `RowSampler` draws each row of a batch from its own seeded ``torch.Generator`` (seed, checkpoint, image
  index), so a seeded row gives the same completion alone or in any batch, and concurrent requests cannot
  disturb each other's random state.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation import BaseStreamer
from transformers.generation.logits_process import TopPLogitsWarper

from chexreason.model_set_spec import DEFAULT_MAX_NEW_TOKENS as DEFAULT_MAX_NEW_TOKENS  # re-exported
from chexreason.prompts import TAGS

DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.8, 0.95  # the paper's GRPO sampling values


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode: greedy by default; sampling settings apply only with ``do_sample=True``.

    ``max_new_tokens=None`` (the default) gives every checkpoint its own budget, as its model set records it;
    a number is the budget of every row.
    """

    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")

    @property
    def decoding(self) -> str:
        """How results files name the decoding: ``greedy`` or ``sampling``."""
        return "sampling" if self.do_sample else "greedy"


@dataclass(frozen=True)
class Completion:
    """One generated answer.

    Attributes:
        text: the decoded completion, tags kept (see `CompletionDecoder`).
        n_tokens: tokens generated before the first stop token.
        truncated: generation ended without a stop token (the token budget ran out, or a stream was closed).
    """

    text: str
    n_tokens: int
    truncated: bool


class CompletionDecoder:
    """Turns generated token ids into completion text, keeping the reasoning protocol's tags.

    The ids are cut at the first stop token (EOS, end of turn: everything after is padding), the
    tokenizer's special tokens are dropped *except* the tags in `chexreason.prompts.TAGS`, and the rest is
    decoded without ``skip_special_tokens`` (which would drop the tags where they are special tokens).
    """

    def __init__(self, tokenizer: Any, stop_token_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        self.stop_ids = frozenset(int(i) for i in stop_token_ids)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special = {int(i) for i, token in added.items() if getattr(token, "special", False)}
        special |= set(tokenizer.all_special_ids)
        keep = {i for i in special if tokenizer.convert_ids_to_tokens(i) in TAGS}
        self.drop_ids = frozenset(special - keep)

    def cut(self, ids: Iterable[int]) -> list[int]:
        """The ids before the first stop token."""
        kept = []
        for token in ids:
            if int(token) in self.stop_ids:
                break
            kept.append(int(token))
        return kept

    def complete(self, ids: Iterable[int], budget: int | None = None) -> Completion:
        """One row of ``generate``'s new ids as a `Completion`: a row without a stop token was cut off.

        `budget`: the row's own token budget, when the batch ran longer for other rows (what follows it is padding).
        """
        ids = [int(i) for i in ids][:budget]
        kept = self.cut(ids)
        return Completion(self.decode(kept), len(kept), truncated=len(kept) == len(ids))

    def decode(self, ids: Iterable[int], partial: bool = False) -> str:
        """Decode one row of generated ids; `partial` hides a character still waiting for its next bytes."""
        text = self.tokenizer.decode([i for i in self.cut(ids) if i not in self.drop_ids], skip_special_tokens=False)
        return text.rstrip("\ufffd") if partial else text


class BatchTextStreamer(BaseStreamer):
    """A streamer for batched ``generate``: keeps every row's decoded text and posts it after each step.

    transformers' `TextIteratorStreamer` takes batch size 1. ``generate`` calls `put` first with the prompt
    ids (batch × prompt length), which are skipped, then once per step with one new id per row. A row that
    has emitted a stop token keeps its text while ``generate`` pads it. After each step the streamer puts
    ``(tag, texts)`` on `output` when one is given.
    """

    def __init__(self, decoder: CompletionDecoder, output: queue.Queue | None = None, tag: Any = None) -> None:
        self.decoder = decoder
        self.output = output
        self.tag = tag
        self.token_ids: list[list[int]] = []
        self.finished: list[bool] = []
        self.texts: list[str] = []
        self.ended = False
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            rows = value.shape[0] if value.dim() > 1 else 1
            self.token_ids = [[] for _ in range(rows)]
            self.finished = [False] * rows
            self.texts = [""] * rows
            return
        for row, new_ids in enumerate(value.reshape(len(self.token_ids), -1).tolist()):
            if self.finished[row]:
                continue
            for token in new_ids:
                if token in self.decoder.stop_ids:
                    self.finished[row] = True
                    break
                self.token_ids[row].append(token)
            self.texts[row] = self.decoder.decode(self.token_ids[row], partial=not self.finished[row])
        if self.output is not None:
            self.output.put((self.tag, tuple(self.texts)))

    def end(self) -> None:
        self.texts = [self.decoder.decode(ids) for ids in self.token_ids]
        self.ended = True


def row_seed(seed: int, checkpoint: str, image_index: int) -> int:
    """The sampling seed of one row: fixed by (seed, checkpoint, image), whatever else shares its batch.

    >>> row_seed(0, "sft", 3) == row_seed(0, "sft", 3) != row_seed(0, "grpo", 3)
    True
    """
    digest = hashlib.sha256(f"{seed}\0{checkpoint}\0{image_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RowSampler(LogitsProcessor):
    """Samples each row with its own generator, then leaves only the drawn token for greedy selection.

    Used with ``do_sample=False`` so transformers' own sampling (the global RNG, shared by every thread
    and every row of the batch) never runs.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        self.seeds = list(seeds)
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1 else None
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        probs = torch.softmax(scores, dim=-1)
        drawn = [torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(self.generators)]
        chosen = torch.cat(drawn)[:, None]
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)


class StopWhenSet(StoppingCriteria):
    """Ends generation early when a stream's consumer has gone away or another worker failed."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class RowBudget(StoppingCriteria):
    """Ends each row when it has generated its own budget of new tokens (``generate`` pads it afterwards)."""

    def __init__(self, budgets: Sequence[int], prompt_length: int) -> None:
        self.budgets = list(budgets)
        self.prompt_length = prompt_length
        self._limits: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if self._limits is None:
            self._limits = torch.tensor(self.budgets, device=input_ids.device) + self.prompt_length
        return input_ids.shape[1] >= self._limits


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The ids that end a completion: the model's generation EOS ids and the tokenizer's EOS."""
    eos = model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
