"""THE parser of model output. Rewards, evaluation and the app all call `parse_completion`.

Two notions are kept apart:

- **valid**: the output follows its protocol's strict format (see `chexreason.prompts`). For
  ``think_solution``: exactly one non-empty ``<think>…</think>`` followed by exactly one non-empty
  ``<solution>…</solution>`` (or ``<answer>…</answer>``), nothing but whitespace around them. The hard
  reward pays nothing for an invalid output.
- **parseable**: labels could be extracted at all. An unparseable output is what the paper's *fail rate*
  counts; it predicts no labels. Parsing is lenient where validity is strict: a complete answer block
  anywhere in the text is read (the last one, if several), even with text around it.

Inside the answer block, items are separated by commas, semicolons, pipes, newlines or the word "and" -- except
where words joined by "and" together name a label ("lines and tubes"), so every variant `chexreason.labels`
accepts reads back as its label; bullets and a leading "Labels:" are ignored; each item is mapped with
`chexreason.labels.normalize_label`.
Items naming no CheXpert label are kept as `invalid_labels` and dropped from `labels`. Tags are matched
case-insensitively. "No Finding" next to other findings is kept as predicted (the metrics count it) and
flagged by `ParsedCompletion.contradicts_no_finding`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chexreason.labels import LABEL_SYNONYMS, in_canonical_order, normalize_label
from chexreason.prompts import ANSWER_TAGS, LABELS_ONLY, PROTOCOLS, REASONING_TAG, TAG_NAMES, THINK_SOLUTION

_TAG = re.compile(rf"<(/?)({'|'.join(TAG_NAMES)})>", re.IGNORECASE)
_THINK_BLOCK = re.compile(rf"<{REASONING_TAG}>(.*?)</{REASONING_TAG}>", re.IGNORECASE | re.DOTALL)
_ANSWER_BLOCK = re.compile(rf"<({'|'.join(ANSWER_TAGS)})>(.*?)</\1>", re.IGNORECASE | re.DOTALL)
_ITEM_SEPARATOR = re.compile(r"[,;|\n]+")
_AND = re.compile(r"\band\b", re.IGNORECASE)  # also separates items, unless the joined words name a label
_MAX_AND_PARTS = 1 + max(len(_AND.findall(variant)) for variant in LABEL_SYNONYMS)  # longest run worth rejoining
_ITEM_PREFIX = re.compile(r"^\s*(?:[-*•]+|\d+[.)])\s*")
_LIST_PREFIX = re.compile(r"^\s*(?:labels?|findings?|answer|diagnos[ie]s)\s*:\s*", re.IGNORECASE)
OUTSIDE_TEXT = "text outside the blocks"  # the error of an output whose only fault is stray text
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


@dataclass(frozen=True)
class ParsedCompletion:
    """What one model output says, and how well it follows its protocol.

    Attributes:
        valid: the output follows its protocol's strict format.
        parseable: labels could be extracted (False is a *failure* in the paper's fail rate).
        labels: CheXpert labels predicted: normalised, de-duplicated, canonical order; empty if not parseable.
        reasoning: the text of the ``<think>`` block, if there is one.
        error: why the output is invalid or unparseable (None when valid).
        invalid_labels: answer items that name no CheXpert label, as written.
        duplicate_labels: CheXpert labels named more than once in the answer (one entry per repeat).
        outside_text: non-whitespace text outside the protocol's blocks.
    """

    valid: bool
    parseable: bool
    labels: tuple[str, ...]
    reasoning: str | None
    error: str | None
    invalid_labels: tuple[str, ...] = ()
    duplicate_labels: tuple[str, ...] = ()
    outside_text: str = ""

    @property
    def contradicts_no_finding(self) -> bool:
        """True when "No Finding" is predicted together with a finding."""
        return "No Finding" in self.labels and len(self.labels) > 1


def completion_text(completion: str | Mapping | Sequence[Mapping]) -> str:
    """The text of a completion: a string, a chat message, or a TRL conversational completion.

    A conversational completion is a list of messages; the last assistant message's text is used.
    Message content may be a string or a list of ``{"type": "text", "text": ...}`` parts.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _message_text(completion)
    messages = [m for m in completion if isinstance(m, Mapping)]
    if len(messages) != len(completion):
        raise TypeError("a conversational completion must be a list of message dicts")
    assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
    return _message_text(assistant[-1]) if assistant else ""


def _message_text(message: Mapping) -> str:
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    return "".join(
        part.get("text", "") for part in content if isinstance(part, Mapping) and part.get("type") == "text"
    )


def _clean(text: str) -> str:
    # NFKC folds full-width brackets and compatibility characters; zero-width characters are dropped.
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE)


def _read_labels(answer: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], int]:
    """Split an answer into items; return (labels, invalid items, duplicate labels, number of items)."""
    labels: list[str] = []
    invalid: list[str] = []
    duplicates: list[str] = []
    chunks = _ITEM_SEPARATOR.split(_LIST_PREFIX.sub("", answer))
    items = [item for chunk in chunks for item in _split_on_and(chunk) if item.strip(" .")]
    for item in items:
        label = normalize_label(item)
        if label is None:
            invalid.append(item)
        elif label in labels:
            duplicates.append(label)
        else:
            labels.append(label)
    return in_canonical_order(labels), tuple(invalid), tuple(duplicates), len(items)


def _split_on_and(chunk: str) -> list[str]:
    """Split one comma-free chunk on "and", rejoining the longest run of words that names a label.

    Splitting blindly would turn the synonym "lines and tubes" into two invalid items. Scanning from the left,
    each item is the longest run of and-separated parts that `normalize_label` maps to a label, else one part:
    "Edema and lines and tubes" -> "Edema", "lines and tubes"; "Edema and Cardiomegaly" -> two items. Runs
    are capped at the most parts any label variant has, so a degenerate "and and and ..." stays linear.
    """
    parts = [_ITEM_PREFIX.sub("", part).strip() for part in _AND.split(chunk)]
    items, start = [], 0
    while start < len(parts):
        longest = min(len(parts), start + _MAX_AND_PARTS)
        end = next(
            (end for end in range(longest, start + 1, -1) if normalize_label(" and ".join(parts[start:end]))),
            start + 1,
        )
        items.append(" and ".join(parts[start:end]))
        start = end
    return items


def _tag_counts(text: str) -> dict[str, int]:
    counts = {f"{slash}{name}": 0 for slash in ("", "/") for name in TAG_NAMES}
    for match in _TAG.finditer(text):
        counts[f"{match.group(1)}{match.group(2).lower()}"] += 1
    return counts


def parse_completion(
    completion: str | Mapping | Sequence[Mapping], protocol: str = THINK_SOLUTION
) -> ParsedCompletion:
    """Parse one model output under a protocol (``think_solution`` or ``labels_only``).

    >>> p = parse_completion("<think>Enlarged heart.</think><solution>Cardiomegaly</solution>")
    >>> p.valid, p.labels
    (True, ('Cardiomegaly',))
    >>> p = parse_completion("The heart is big. <solution>cardiomegaly, effusion</solution>")
    >>> p.valid, p.parseable, p.labels, p.error
    (False, True, ('Cardiomegaly', 'Pleural Effusion'), 'missing <think> block')
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    text = _clean(completion_text(completion))
    counts = _tag_counts(text)
    think = _THINK_BLOCK.search(text)
    reasoning = think.group(1).strip() if think else None
    answers = list(_ANSWER_BLOCK.finditer(text))
    answer = answers[-1] if answers else None

    if answer is None:
        if protocol == LABELS_ONLY and not any(counts.values()):
            return _parse_bare_list(text)
        error = "no complete <solution> block" if protocol == THINK_SOLUTION or any(counts.values()) else "no labels"
        return ParsedCompletion(False, False, (), reasoning, error, outside_text=text.strip())

    labels, invalid, duplicates, n_items = _read_labels(answer.group(2))
    outside = text
    for block in (answer, think if protocol == THINK_SOLUTION else None):
        if block is not None:
            outside = outside.replace(block.group(0), " ", 1)
    outside = " ".join(outside.split())

    if n_items == 0:
        error = "empty solution"
        return ParsedCompletion(False, False, (), reasoning, error, outside_text=outside)
    error = _format_error(counts, think, answer, outside, protocol)
    return ParsedCompletion(error is None, True, labels, reasoning, error, invalid, duplicates, outside)


def _format_error(
    counts: dict[str, int], think: re.Match | None, answer: re.Match, outside: str, protocol: str
) -> str | None:
    """The first way the output breaks its protocol's strict format, or None."""
    n_answer_open = counts["solution"] + counts["answer"]
    n_answer_close = counts["/solution"] + counts["/answer"]
    if n_answer_open > 1 or n_answer_close > 1:
        return "more than one <solution> block"
    if protocol == LABELS_ONLY:
        if counts["think"] or counts["/think"]:
            return "a <think> block in a labels-only answer"
    else:
        if think is None:
            return "missing <think> block"
        if counts["think"] > 1 or counts["/think"] > 1:
            return "nested or repeated <think> tags"
        if think.start() > answer.start():
            return "<think> block after the <solution> block"
        if not think.group(1).strip():
            return "empty <think> block"
    if outside:
        return OUTSIDE_TEXT
    return None


def _parse_bare_list(text: str) -> ParsedCompletion:
    """A labels-only answer written without tags: valid only if every item names a CheXpert label."""
    labels, invalid, duplicates, _ = _read_labels(text)
    if not labels:
        return ParsedCompletion(False, False, (), None, "no labels", invalid, outside_text=text.strip())
    error = f"unrecognised items: {', '.join(invalid)}" if invalid else None
    return ParsedCompletion(error is None, True, labels, None, error, invalid, duplicates)
