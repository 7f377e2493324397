"""Metrics against hand-computed values, a brute-force recomputation, and bootstrap properties."""

import random

import numpy as np
import pytest

from chexreason import metrics
from chexreason.labels import CHEXPERT_LABELS, EVAL_LABEL_SETS
from chexreason.metrics import bootstrap_macro_f1, bootstrap_macro_f1_difference, score

# Four images, three evaluated labels. "No Finding" and "Hernia" are outside the set: ignored.
Y_TRUE = [{"Edema"}, {"Edema", "Cardiomegaly"}, {"No Finding"}, {"Fracture"}]
Y_PRED = [{"Edema"}, {"Cardiomegaly"}, None, {"Edema", "Hernia"}]
LABELS = ["Fracture", "Edema", "Cardiomegaly"]


def test_hand_computed():
    s = score(Y_TRUE, Y_PRED, LABELS)
    # Cardiomegaly TP1 -> P1 R1 F1; Edema TP1 FP1 FN1 -> .5/.5/.5; Fracture FN1 -> 0/0/0 (zero_division=0).
    assert s["per_label"]["Cardiomegaly"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert s["per_label"]["Edema"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert s["per_label"]["Fracture"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["macro_f1"] == pytest.approx(0.5)
    assert s["macro_precision"] == pytest.approx(0.5) and s["macro_recall"] == pytest.approx(0.5)
    # Micro: TP 2, FP 1, FN 2 -> P 2/3, R 1/2, F1 4/7.
    assert s["micro_precision"] == pytest.approx(2 / 3)
    assert s["micro_recall"] == pytest.approx(0.5)
    assert s["micro_f1"] == pytest.approx(4 / 7)
    assert s["fail_rate"] == 0.25 and s["n"] == 4
    assert s["labels"] == ["Cardiomegaly", "Edema", "Fracture"]  # canonical order


def test_macro_averages_over_every_label_of_the_set():
    # Only Edema occurs; the 13 other chexpert14 labels count as F1 0 in the mean.
    s = score([{"Edema"}], [{"Edema"}], "chexpert14")
    assert s["macro_f1"] == pytest.approx(1 / 14)
    assert s["micro_f1"] == 1.0


def _brute_force(y_true, y_pred, labels):
    f1s, tp_all, fp_all, fn_all = [], 0, 0, 0
    for label in labels:
        tp = sum(label in t and label in (p or ()) for t, p in zip(y_true, y_pred, strict=True))
        fp = sum(label not in t and label in (p or ()) for t, p in zip(y_true, y_pred, strict=True))
        fn = sum(label in t and label not in (p or ()) for t, p in zip(y_true, y_pred, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
    micro = 2 * tp_all / (2 * tp_all + fp_all + fn_all) if tp_all + fp_all + fn_all else 0.0
    return sum(f1s) / len(f1s), micro


def _random_data(rng, n):
    y_true = [set(rng.sample(CHEXPERT_LABELS, rng.randint(1, 3))) for _ in range(n)]
    y_pred = [None if rng.random() < 0.1 else set(rng.sample(CHEXPERT_LABELS, rng.randint(0, 3))) for _ in range(n)]
    return y_true, y_pred


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("label_set", ["chexpert14", "nih9", "nih10"])
def test_matches_brute_force_on_random_data(seed, label_set):
    rng = random.Random(seed)
    y_true, y_pred = _random_data(rng, rng.randint(5, 200))
    macro, micro = _brute_force(y_true, y_pred, EVAL_LABEL_SETS[label_set])
    s = score(y_true, y_pred, label_set)
    assert s["macro_f1"] == pytest.approx(macro)
    assert s["micro_f1"] == pytest.approx(micro)
    assert s["fail_rate"] == pytest.approx(sum(p is None for p in y_pred) / len(y_pred))


def test_bootstrap_estimate_equals_score_and_is_seeded():
    y_true, y_pred = _random_data(random.Random(0), 300)
    ci = bootstrap_macro_f1(y_true, y_pred, "chexpert14", n_resamples=500, seed=3)
    assert ci["estimate"] == pytest.approx(score(y_true, y_pred, "chexpert14")["macro_f1"])
    assert ci["low"] < ci["estimate"] < ci["high"]
    assert ci == bootstrap_macro_f1(y_true, y_pred, "chexpert14", n_resamples=500, seed=3)
    assert ci != bootstrap_macro_f1(y_true, y_pred, "chexpert14", n_resamples=500, seed=4)


def test_resample_statistic_equals_score_on_the_resampled_images():
    # The count-weighted F1 of one resample must equal scikit-learn's F1 on that resample spelled out.
    y_true, y_pred = _random_data(random.Random(1), 50)
    labels = EVAL_LABEL_SETS["chexpert14"]
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 50, size=50)
    weights = np.bincount(indices, minlength=50)[None, :].astype(float)
    truth, pred = metrics._indicators(y_true, labels), metrics._indicators(y_pred, labels)
    expected = score([y_true[i] for i in indices], [y_pred[i] for i in indices], labels)["macro_f1"]
    assert metrics._macro_f1_per_resample(truth, pred, weights)[0] == pytest.approx(expected)


def test_paired_difference():
    y_true, y_pred = _random_data(random.Random(2), 300)
    same = bootstrap_macro_f1_difference(y_true, y_pred, y_pred, "chexpert14", n_resamples=200)
    assert same["estimate"] == same["low"] == same["high"] == 0.0
    # A perfect candidate beats a noisy baseline with an interval that excludes 0.
    better = bootstrap_macro_f1_difference(y_true, y_pred, y_true, "chexpert14", n_resamples=500)
    assert better["low"] > 0
    assert better["estimate"] == pytest.approx(1.0 - score(y_true, y_pred, "chexpert14")["macro_f1"])


def test_bad_input():
    with pytest.raises(ValueError, match="predictions"):
        score([{"Edema"}], [], "chexpert14")
    with pytest.raises(ValueError, match="no samples"):
        score([], [], "chexpert14")
    with pytest.raises(ValueError, match="unknown label set"):
        score([{"Edema"}], [{"Edema"}], "mimic")
