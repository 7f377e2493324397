"""GRPO rewards: the paper's hard and nuanced rewards, and a format reward.

Every reward has TRL's signature, ``reward(completions, ground_truth, **kwargs) -> list[float]``, where
`ground_truth` is the dataset column of the same name (one list of CheXpert labels per completion), and is
callable outside a trainer. Each is built from a scalar per-sample core that reuses the one parser
(`chexreason.parsing`), so the rewards read outputs exactly as evaluation does. Choose them by name with
`get_reward`, or import the stateless ones, built with the recipe defaults: ``from chexreason.rewards import
hard_reward, format_reward``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from chexreason.labels import CHEXPERT_LABELS, normalize_label
from chexreason.parsing import OUTSIDE_TEXT, ParsedCompletion, completion_text, parse_completion
from chexreason.prompts import THINK_SOLUTION

logger = logging.getLogger(__name__)

RewardFunc = Callable[..., list[float]]

# Share of CheXpert train frontal images positive for each label (135,601 images in the 300 most common
# label combinations; counted from train.csv). The nuanced reward's default false-positive weights, for a reward
# built outside a run; a GRPO run derives its own from the split it trains on (`label_prevalence`, called by
# `chexreason.training.grpo.build_rewards`).
CHEXPERT_PREVALENCE: dict[str, float] = {
    "Support Devices": 0.591,
    "Lung Opacity": 0.474,
    "Pleural Effusion": 0.410,
    "Edema": 0.269,
    "Atelectasis": 0.131,
    "No Finding": 0.125,
    "Cardiomegaly": 0.098,
    "Pneumothorax": 0.079,
    "Consolidation": 0.033,
    "Enlarged Cardiomediastinum": 0.024,
    "Fracture": 0.018,
    "Lung Lesion": 0.014,
    "Pneumonia": 0.009,
    "Pleural Other": 0.001,
}

_TOKEN = re.compile(r"\w+|[^\w\s]")


def approx_token_count(text: str) -> int:
    """Fallback token count when the trainer passes no `completion_ids`: words and punctuation marks.

    Sub-word tokenizers split rare words further, so this undercounts a little; it only decides the hard
    reward's short-output penalty when no tokenizer output is at hand.

    >>> approx_token_count("<think>CTR 0.62.</think>")
    12
    """
    return len(_TOKEN.findall(text))


def jaccard(truth: Iterable[str], predicted: Iterable[str]) -> float:
    """|Y ∩ Ŷ| / |Y ∪ Ŷ|; 1.0 when both are empty.

    >>> jaccard(["Edema", "Cardiomegaly"], ["Edema"])
    0.5
    """
    truth, predicted = set(truth), set(predicted)
    union = truth | predicted
    return len(truth & predicted) / len(union) if union else 1.0


def canonical_truth(labels: Iterable[str]) -> frozenset[str]:
    """Ground-truth labels as canonical CheXpert names; raises ValueError on a name that is not one."""
    out = set()
    for label in labels:
        canonical = normalize_label(label)
        if canonical is None:
            raise ValueError(f"ground truth {label!r} is not a CheXpert label")
        out.add(canonical)
    return frozenset(out)


def _check_lengths(completions: Sequence, ground_truth: Sequence) -> None:
    if len(completions) != len(ground_truth):
        raise ValueError(f"{len(completions)} completions but {len(ground_truth)} ground_truth entries")


# ---------------------------------------------------------------------------------------------- hard


def hard_reward_score(
    parsed: ParsedCompletion, truth: Iterable[str], n_tokens: int, length_threshold: int, length_penalty: float
) -> float:
    """The paper's hard reward for one output: J − λ_len if valid and shorter than the threshold, J if valid
    and at least the threshold, 0 if invalid. (The penalty pushes the policy to keep reasoning.)"""
    if not parsed.valid:
        return 0.0
    score = jaccard(truth, parsed.labels)
    return score - length_penalty if n_tokens < length_threshold else score


def make_hard_reward(
    length_threshold: int = 250, length_penalty: float = 0.1, protocol: str = THINK_SOLUTION
) -> RewardFunc:
    """Build the hard reward with its recipe constants.

    Args:
        length_threshold: outputs shorter than this many tokens pay `length_penalty` (paper: 250).
        length_penalty: λ_len. The paper does not publish it; 0.1 (a tenth of a perfect Jaccard) is ours.
        protocol: the output protocol that decides validity.
    """

    def hard_reward(completions: Sequence, ground_truth: Sequence[Sequence[str]], **kwargs) -> list[float]:
        """Jaccard of predicted and true labels, 0 for invalid outputs, minus λ_len for short ones.

        Token counts come from `completion_ids` when the trainer passes them, else `approx_token_count`.

        >>> long = "<think>" + "the lungs are clear " * 70 + "</think><solution>No Finding</solution>"
        >>> hard_reward([long, "<solution>No Finding</solution>"], [["No Finding"], ["No Finding"]])
        [1.0, 0.0]
        """
        _check_lengths(completions, ground_truth)
        ids = kwargs.get("completion_ids")
        rewards = []
        for i, (completion, truth) in enumerate(zip(completions, ground_truth, strict=True)):
            parsed = parse_completion(completion, protocol)
            n_tokens = len(ids[i]) if ids is not None else approx_token_count(completion_text(completion))
            rewards.append(
                hard_reward_score(parsed, canonical_truth(truth), n_tokens, length_threshold, length_penalty)
            )
        return rewards

    return hard_reward


# ------------------------------------------------------------------------------------------- format


def make_format_reward(protocol: str = THINK_SOLUTION) -> RewardFunc:
    """Build a reward of 1.0 for an output valid under `protocol`, else 0.0."""

    def format_reward(completions: Sequence, **kwargs) -> list[float]:
        """1.0 if the output follows the strict format, else 0.0.

        >>> format_reward(["<think>ok</think><solution>Edema</solution>", "Edema"])
        [1.0, 0.0]
        """
        return [float(parse_completion(c, protocol).valid) for c in completions]

    return format_reward


# The stateless rewards with the recipe defaults (`train.configs.GRPOStageConfig`: 250 tokens, λ_len 0.1; the
# think_solution protocol), importable by name as in TRL's examples. There is deliberately no module-level nuanced
# reward: it keeps a sliding window of recent predictions, so one shared instance would mix the windows of every
# caller (and of successive runs in one process), and a run gives it weights from its own RL split. Build one per
# run with ``get_reward("nuanced")``.
hard_reward: RewardFunc = make_hard_reward()
format_reward: RewardFunc = make_format_reward()


# ------------------------------------------------------------------------------------------ nuanced

PREVALENCE_SMOOTHING = 1.0  # α of `label_prevalence`: add-one (Laplace)
NUANCED_WEIGHTS_JSON = "nuanced_reward_weights.json"  # where a GRPO run records the weights it derived


def count_labels(ground_truth: Iterable[Iterable[str]]) -> tuple[dict[str, int], int]:
    """Positives per CheXpert label (all 14, zeros included) in a split's ``ground_truth`` column, and its rows.

    >>> counts, n_rows = count_labels([["Edema"], ["edema", "Cardiomegaly"]])
    >>> counts["Edema"], counts["Fracture"], n_rows
    (2, 0, 2)
    """
    counts: Counter[str] = Counter()
    n_rows = 0
    for labels in ground_truth:
        counts.update(canonical_truth(labels))  # a set: a row counts each label once
        n_rows += 1
    return {label: counts[label] for label in CHEXPERT_LABELS}, n_rows


def label_prevalence(
    counts: Mapping[str, int], n_rows: int, smoothing: float = PREVALENCE_SMOOTHING
) -> dict[str, float]:
    """Share of rows positive for each CheXpert label, smoothed: ``(count + α) / (n_rows + 2α)``.

    The nuanced reward weights a wrong label by its prevalence in the split the policy trains on (the paper
    makes the common labels, such as No Finding and Support Devices, the expensive mistakes). Each label is a
    yes/no per image, so add-α smoothing is the posterior mean under a Beta(α, α) prior: a label the split never
    shows still gets a small, non-zero prevalence (its mistakes cost a little more than ``false_positive_min``),
    and the prior fades as the split grows (α = 1 moves a 100,000-row split by at most 1e-5).

    Args:
        counts: positives per label, e.g. from `count_labels` or a ``label_counts`` entry of the data build's
            ``manifest.json`` (which leaves out labels never seen: they count 0).
        n_rows: rows in the split (the manifest's ``splits[name]["size"]``).
        smoothing: α > 0.

    >>> prevalence = label_prevalence({"Edema": 3}, n_rows=8)
    >>> prevalence["Edema"], prevalence["Fracture"]
    (0.4, 0.1)
    """
    unknown = sorted(set(counts) - set(CHEXPERT_LABELS))
    if unknown:
        raise ValueError(f"label counts name labels that are not CheXpert labels: {unknown}")
    if n_rows < 0:
        raise ValueError(f"n_rows must be at least 0, not {n_rows}")
    out_of_range = {label: count for label, count in counts.items() if not 0 <= count <= n_rows}
    if out_of_range:
        raise ValueError(f"a label cannot have fewer than 0 or more positives than rows ({n_rows}): {out_of_range}")
    if not smoothing > 0:
        raise ValueError(f"smoothing must be positive (got {smoothing}): a label never seen needs a prevalence")
    return {label: (counts.get(label, 0) + smoothing) / (n_rows + 2 * smoothing) for label in CHEXPERT_LABELS}


@dataclass(frozen=True)
class NuancedRewardConfig:
    """Constants of the nuanced reward, in points. The paper fixes the ones marked (paper); the rest it
    leaves open, and these values are ours."""

    exact_match: float = 100.0  # (paper) exact label-set match
    recall_credit: float = 30.0  # (paper) × correct / |truth|
    precision_credit: float = 20.0  # (paper) × correct / |predicted|
    false_positive_min: float = 5.0  # penalty for a wrong prediction of a label of prevalence 0
    false_positive_max: float = 25.0  # ... and of the most frequent label; linear in prevalence between
    # A run passes its RL split's (`label_prevalence`); CheXpert's train prevalence is the default outside one.
    label_prevalence: Mapping[str, float] = field(default_factory=lambda: dict(CHEXPERT_PREVALENCE))
    window_size: int = 100  # (paper) sliding window of recent predictions
    min_window: int = 20  # repetition/collapse are judged only once the window holds this many
    repetition_margin: float = 0.2  # a label is over-repeated when its predicted share exceeds its true share by this
    repetition_penalty: float = 30.0  # (paper) per over-repeated label in the prediction
    collapse_share: float = 0.7  # (paper) a label predicted in more than this share of the window ...
    collapse_penalty: float = 50.0  # (paper) ... costs this, once, when the prediction contains it
    invalid_label_penalty: float = 100.0  # (paper) per item that names no CheXpert label
    duplicate_penalty: float = 25.0  # (paper) per repeated label
    outside_text_penalty: float = 20.0  # text outside the blocks
    malformed_penalty: float = 50.0  # parseable but not the strict format (missing/repeated/misordered tags)
    unparseable_penalty: float = 100.0  # no labels could be read at all

    def __post_init__(self) -> None:
        missing = set(CHEXPERT_LABELS) - set(self.label_prevalence)
        if missing:
            raise ValueError(f"label_prevalence lacks {sorted(missing)}")
        if not 0 < self.min_window <= self.window_size:
            raise ValueError("need 0 < min_window <= window_size")

    def false_positive_cost(self, label: str) -> float:
        top = max(self.label_prevalence.values()) or 1.0
        share = self.label_prevalence[label] / top
        return self.false_positive_min + (self.false_positive_max - self.false_positive_min) * share


def nuanced_reward_weights(
    config: NuancedRewardConfig, counts: Mapping[str, int], n_rows: int, smoothing: float = PREVALENCE_SMOOTHING
) -> dict:
    """The nuanced reward's false-positive weights with what they came from, JSON-ready, for a run's records:
    per label (canonical order) its count, prevalence and false-positive cost."""
    labels = {
        label: {
            "count": int(counts.get(label, 0)),
            "prevalence": config.label_prevalence[label],
            "false_positive_cost": config.false_positive_cost(label),
        }
        for label in CHEXPERT_LABELS
    }
    return {
        "n_rows": n_rows,
        "smoothing": smoothing,
        "false_positive_min": config.false_positive_min,
        "false_positive_max": config.false_positive_max,
        "labels": labels,
    }


@dataclass(frozen=True)
class NuancedParts:
    """One output's nuanced reward, by part: total = match + partial − false_positive − collapse − format."""

    match: float = 0.0
    partial: float = 0.0
    false_positive: float = 0.0
    collapse: float = 0.0
    format: float = 0.0

    @property
    def total(self) -> float:
        return self.match + self.partial - self.false_positive - self.collapse - self.format


class NuancedReward:
    """The paper's nuanced reward. Owns its sliding window of recent predictions, so build one per run
    (``get_reward("nuanced")``) and save `state_dict()` with checkpoints to resume.

    Each training process keeps its own window over the completions it scores: with N processes the
    window spans the last 100 predictions *of that process*. The window is updated after each output is
    scored, in order.

    >>> reward = NuancedReward()
    >>> reward(["<think>Enlarged heart.</think><solution>Cardiomegaly</solution>"], [["Cardiomegaly"]])
    [150.0]
    """

    __name__ = "nuanced_reward"  # TRL logs rewards under their function's __name__

    def __init__(
        self,
        config: NuancedRewardConfig | None = None,
        protocol: str = THINK_SOLUTION,
        label_prevalence: Mapping[str, float] | None = None,
    ) -> None:
        """`label_prevalence`, when given, replaces the config's: a run passes its RL split's (see the module-level
        `label_prevalence`), so `reward_from_recipe` hands it to this reward alone."""
        config = config or NuancedRewardConfig()
        if label_prevalence is not None:
            config = dataclasses.replace(config, label_prevalence=dict(label_prevalence))
        self.config = config
        self.protocol = protocol
        self.window: deque[tuple[frozenset[str], frozenset[str]]] = deque(maxlen=self.config.window_size)

    def score(self, parsed: ParsedCompletion, truth: frozenset[str]) -> NuancedParts:
        """Score one parsed output against its truth, using (not updating) the window."""
        cfg = self.config
        if not parsed.parseable:
            return NuancedParts(format=cfg.unparseable_penalty)
        predicted = set(parsed.labels)
        correct = len(predicted & truth)
        partial = (cfg.recall_credit * correct / len(truth) if truth else 0.0) + (
            cfg.precision_credit * correct / len(predicted) if predicted else 0.0
        )
        fmt = (
            cfg.invalid_label_penalty * len(parsed.invalid_labels)
            + cfg.duplicate_penalty * len(parsed.duplicate_labels)
            + (cfg.outside_text_penalty if parsed.outside_text else 0.0)
            + (cfg.malformed_penalty if not parsed.valid and parsed.error != OUTSIDE_TEXT else 0.0)
        )
        return NuancedParts(
            match=cfg.exact_match if predicted == truth else 0.0,
            partial=partial,
            false_positive=sum(cfg.false_positive_cost(label) for label in predicted - truth),
            collapse=self._collapse_penalty(predicted),
            format=fmt,
        )

    def _collapse_penalty(self, predicted: set[str]) -> float:
        cfg = self.config
        if len(self.window) < cfg.min_window or not predicted:
            return 0.0
        n = len(self.window)
        penalty = 0.0
        for label in predicted:
            predicted_share = sum(label in p for p, _ in self.window) / n
            true_share = sum(label in t for _, t in self.window) / n
            if predicted_share - true_share > cfg.repetition_margin:
                penalty += cfg.repetition_penalty
        if any(sum(label in p for p, _ in self.window) / n > cfg.collapse_share for label in predicted):
            penalty += cfg.collapse_penalty
        return penalty

    def __call__(self, completions: Sequence, ground_truth: Sequence[Sequence[str]], **kwargs) -> list[float]:
        _check_lengths(completions, ground_truth)
        parts = []
        for completion, truth in zip(completions, ground_truth, strict=True):
            parsed = parse_completion(completion, self.protocol)
            truth = canonical_truth(truth)
            parts.append(self.score(parsed, truth))
            self.window.append((frozenset(parsed.labels), truth))
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and parts:
            for name in ("match", "partial", "false_positive", "collapse", "format"):
                log_metric(f"nuanced/{name}", sum(getattr(p, name) for p in parts) / len(parts))
        return [p.total for p in parts]

    def state_dict(self) -> dict:
        """The window, JSON-serialisable, for checkpoints, with the prevalence the weights came from."""
        return {
            "config": {k: v for k, v in asdict(self.config).items() if k != "label_prevalence"},
            "label_prevalence": dict(self.config.label_prevalence),
            "window": [[sorted(p), sorted(t)] for p, t in self.window],
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the window saved by `state_dict`.

        The weights are not restored: a resumed run rebuilds them from the same RL split, so they match. If they
        do not (the data were rebuilt in between), this reward keeps the weights of the data it now trains on
        and warns, naming the labels, so the run does not silently change its weights halfway.
        """
        self.window.clear()
        for predicted, truth in state["window"]:
            self.window.append((frozenset(predicted), frozenset(truth)))
        saved = state.get("label_prevalence")
        if saved is None:  # a checkpoint written before the weights were saved with the window
            return
        current = self.config.label_prevalence
        changed = sorted(label for label, p in current.items() if not math.isclose(saved.get(label, math.nan), p))
        if changed:
            logger.warning(
                "the nuanced reward's false-positive weights differ from the checkpoint's (prevalence of %s); "
                "keeping the ones derived from this run's RL split",
                ", ".join(changed),
            )


# ---------------------------------------------------------------------------------------- registry

REWARD_FACTORIES: dict[str, Callable[..., RewardFunc]] = {
    "hard": make_hard_reward,
    "nuanced": NuancedReward,
    "format": make_format_reward,
}


def get_reward(name: str, **options) -> RewardFunc:
    """Build a reward by name ("hard", "nuanced", "format"); `options` go to its factory.

    >>> get_reward("hard", length_threshold=40).__name__
    'hard_reward'
    """
    try:
        factory = REWARD_FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r}; choose one of {sorted(REWARD_FACTORIES)}") from None
    return factory(**options)


def reward_from_recipe(name: str, **recipe_options) -> RewardFunc:
    """Build a reward by name from all of a recipe's reward options: each factory takes the ones it names (the
    hard reward its length threshold and λ_len, every reward the protocol), so no caller special-cases a reward.

    >>> reward_from_recipe("format", protocol="think_solution", length_threshold=54).__name__
    'format_reward'
    """
    if name not in REWARD_FACTORIES:
        get_reward(name)  # raises, naming the known rewards
    accepted = inspect.signature(REWARD_FACTORIES[name]).parameters
    return get_reward(name, **{key: value for key, value in recipe_options.items() if key in accepted})
