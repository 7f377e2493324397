"""Multi-label metrics as the paper reports them, and paired bootstrap confidence intervals.

`score` is computed with scikit-learn (``zero_division=0``); macro scores average over *every* label of
the evaluation set, present in the data or not. An unparseable output is passed as ``None``: it predicts
no labels and counts in the fail rate. The bootstrap recomputes the same F1 from per-label counts with
numpy, so thousands of resamples take milliseconds; tests check it against `score`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from chexreason.labels import resolve_label_set

LabelSets = Sequence[Iterable[str]]


def _indicators(label_sets: Sequence[Iterable[str] | None], labels: tuple[str, ...]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(label_sets), len(labels)), dtype=bool)
    for row, label_set in enumerate(label_sets):
        for label in label_set or ():
            if label in index:  # labels outside the evaluation set are ignored
                out[row, index[label]] = True
    return out


def _check(y_true: Sequence, *y_preds: Sequence) -> None:
    for y_pred in y_preds:
        if len(y_true) != len(y_pred):
            raise ValueError(f"{len(y_true)} true label sets but {len(y_pred)} predictions")
    if not y_true:
        raise ValueError("nothing to score: no samples")


def score(y_true: LabelSets, y_pred: Sequence[Iterable[str] | None], label_set: str | Sequence[str]) -> dict:
    """Micro/macro precision, recall and F1, per-label scores, and the fail rate.

    Args:
        y_true: one set of true labels per sample.
        y_pred: one set of predicted labels per sample, or None where the output could not be parsed.
        label_set: a name from `EVAL_LABEL_SETS` or a sequence of CheXpert labels.

    >>> s = score([{"Edema"}, {"No Finding"}], [{"Edema", "Cardiomegaly"}, None], "chexpert14")
    >>> round(s["micro_f1"], 3), s["fail_rate"], s["per_label"]["Edema"]["f1"]
    (0.5, 0.5, 1.0)
    """
    _check(y_true, y_pred)
    labels = resolve_label_set(label_set)
    truth, pred = _indicators(y_true, labels), _indicators(y_pred, labels)
    result: dict = {"n": len(y_true), "labels": list(labels)}
    for average in ("micro", "macro"):
        p, r, f, _ = precision_recall_fscore_support(truth, pred, average=average, zero_division=0)
        result.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    p, r, f, support = precision_recall_fscore_support(truth, pred, average=None, zero_division=0)
    result["per_label"] = {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, label in enumerate(labels)
    }
    result["fail_rate"] = sum(pred is None for pred in y_pred) / len(y_pred)
    return result


def _macro_f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """Per-label F1 = 2TP / (2TP + FP + FN), 0 where undefined (scikit-learn's zero_division=0), averaged."""
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(denominator, dtype=float), where=denominator > 0)
    return f1.mean(axis=-1)


def _bootstrap(n: int, n_resamples: int, seed: int, statistic) -> np.ndarray:
    """`statistic(weights)` over bootstrap resamples; weights[i, j] is how often sample j is drawn in
    resample i. Resamples are drawn in chunks to bound memory (NIH's test list has 25,596 images)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, 4_000_000 // max(n, 1)))
    out = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        out.append(statistic(rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(float)))
    return np.concatenate(out)


def _macro_f1_per_resample(truth: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    tp = weights @ (truth & pred)
    fp = weights @ (~truth & pred)
    fn = weights @ (truth & ~pred)
    return _macro_f1_from_counts(tp, fp, fn)


def _interval(estimate: float, samples: np.ndarray, confidence: float, n_resamples: int, seed: int) -> dict:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1 - alpha])
    return {
        "estimate": float(estimate),
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "n_resamples": n_resamples,
        "seed": seed,
    }


def bootstrap_macro_f1(
    y_true: LabelSets,
    y_pred: Sequence[Iterable[str] | None],
    label_set: str | Sequence[str],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Percentile bootstrap interval for macro-F1 (images resampled with replacement).

    Returns ``{"estimate", "low", "high", "confidence", "n_resamples", "seed"}``; the estimate is the
    macro-F1 of the full sample, equal to `score(...)["macro_f1"]`.
    """
    _check(y_true, y_pred)
    labels = resolve_label_set(label_set)
    truth, pred = _indicators(y_true, labels), _indicators(y_pred, labels)
    estimate = _macro_f1_per_resample(truth, pred, np.ones((1, len(truth))))[0]
    samples = _bootstrap(len(truth), n_resamples, seed, lambda w: _macro_f1_per_resample(truth, pred, w))
    return _interval(estimate, samples, confidence, n_resamples, seed)


def bootstrap_macro_f1_difference(
    y_true: LabelSets,
    y_pred_baseline: Sequence[Iterable[str] | None],
    y_pred_candidate: Sequence[Iterable[str] | None],
    label_set: str | Sequence[str],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Paired bootstrap interval for macro-F1(candidate) − macro-F1(baseline) on the same images
    (e.g. GRPO − SFT): both are scored on each resample, so image difficulty cancels out."""
    _check(y_true, y_pred_baseline, y_pred_candidate)
    labels = resolve_label_set(label_set)
    truth = _indicators(y_true, labels)
    baseline, candidate = _indicators(y_pred_baseline, labels), _indicators(y_pred_candidate, labels)
    full = np.ones((1, len(truth)))
    estimate = (_macro_f1_per_resample(truth, candidate, full) - _macro_f1_per_resample(truth, baseline, full))[0]
    samples = _bootstrap(
        len(truth),
        n_resamples,
        seed,
        lambda w: _macro_f1_per_resample(truth, candidate, w) - _macro_f1_per_resample(truth, baseline, w),
    )
    return _interval(estimate, samples, confidence, n_resamples, seed)
