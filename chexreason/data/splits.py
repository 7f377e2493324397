"""From dataset records or phantoms to training/evaluation examples, and patient-disjoint splits.

The uncertainty policy is applied here (readers keep -1.0). An example's ground truth is its set of
positive CheXpert labels after the policy. Examples with no positive label at all (e.g. a CheXpert image
whose only labels are uncertain, under u-zeros) are dropped from *training* sets and counted: there is no
answer to teach. Evaluation keeps them, since predicting nothing of the label set is then correct.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from PIL import Image

from chexreason.data.phantom import PhantomSample
from chexreason.data.readers import DatasetError, Record, apply_uncertainty
from chexreason.labels import CHEXPERT_LABELS

NO_POSITIVE = "no positive label after the uncertainty policy"
UNCERTAIN_DROPPED = "uncertain label under the 'ignore' policy"
NOT_FRONTAL = "not a frontal view"


@dataclass(frozen=True)
class Example:
    """One image ready for a split.

    Attributes:
        id: stable id (phantom id, or the image path relative to its dataset).
        dataset: "phantom-a", "phantom-b", "mimic-cxr", "chexpert" or "nih".
        patient_id: splits never share a patient.
        view: PA / AP / … when known.
        truth: positive CheXpert labels after the uncertainty policy, canonical order.
        source_labels: the dataset's own names and raw values.
        image: the image, for phantoms; real examples carry `image_path` instead.
        params: a phantom's generating parameters.
    """

    id: str
    dataset: str
    patient_id: str
    view: str | None
    truth: tuple[str, ...]
    source_labels: Mapping[str, float | None]
    image: Image.Image | None = field(default=None, compare=False)
    image_path: str | None = None
    params: dict | None = field(default=None, compare=False)


def positives(labels: Mapping[str, float]) -> tuple[str, ...]:
    """The labels with value 1.0, in canonical order (NaN and 0.0 are not positive)."""
    return tuple(label for label in CHEXPERT_LABELS if labels.get(label) == 1.0)


def example_from_record(record: Record, policy: str) -> Example | str:
    """An Example, or the reason the record cannot become one under `policy`."""
    labels = apply_uncertainty(record.labels, policy)
    if labels is None:
        return UNCERTAIN_DROPPED
    return Example(
        id=str(record.image_path),
        dataset=record.dataset,
        patient_id=f"{record.dataset}:{record.patient_id}",
        view=record.view,
        truth=positives(labels),
        source_labels=dict(record.source_labels),
        image_path=str(record.image_path),
    )


def example_from_phantom(sample: PhantomSample, policy: str) -> Example | str:
    """An Example for a phantom (each phantom is its own patient), or the reason it cannot become one."""
    labels = apply_uncertainty(sample.chexpert_labels(), policy)
    if labels is None:
        return UNCERTAIN_DROPPED
    return Example(
        id=sample.id,
        dataset=f"phantom-{sample.site}",
        patient_id=sample.id,
        view=sample.params["view"],
        truth=positives(labels),
        source_labels=dict(sample.labels),
        image=sample.image,
        params=sample.params,
    )


@dataclass
class SplitReport:
    """Counts per split and label, and every dropped example by reason."""

    sizes: dict[str, int] = field(default_factory=dict)
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)

    def add_split(self, name: str, examples: Sequence[Example]) -> None:
        self.sizes[name] = len(examples)
        counts = Counter(label for ex in examples for label in ex.truth)
        self.label_counts[name] = {label: counts[label] for label in CHEXPERT_LABELS if counts[label]}

    def __str__(self) -> str:
        lines = ["split sizes: " + ", ".join(f"{k} {v}" for k, v in self.sizes.items())]
        for name, counts in self.label_counts.items():
            lines.append(f"  {name}: " + ", ".join(f"{label} {n}" for label, n in counts.items()))
        if self.dropped:
            lines.append("dropped: " + ", ".join(f"{n} × {reason}" for reason, n in self.dropped.most_common()))
        return "\n".join(lines)


def keep_trainable(items: Iterable[Example | str], report: SplitReport, frontal_only: bool = True) -> list[Example]:
    """Examples usable for training: frontal (if asked) and with at least one positive label."""
    kept = []
    for item in items:
        reason = item if isinstance(item, str) else None
        if reason is None and frontal_only and item.view not in (None, "PA", "AP"):
            reason = NOT_FRONTAL
        if reason is None and not item.truth:
            reason = NO_POSITIVE
        if reason is None:
            kept.append(item)
        else:
            report.dropped[reason] += 1
    return kept


def patient_disjoint_split(
    examples: Sequence[Example], sizes: Mapping[str, int], seed: int
) -> dict[str, list[Example]]:
    """Split into named sets of exactly the given sizes, no patient in two sets, reproducibly.

    Patients are shuffled with `seed` and dealt whole to the sets in order; a patient whose images would
    overshoot a set contributes only what fits, and the rest of that patient's images go unused.

    >>> exs = [Example(str(i), "x", f"p{i // 2}", "PA", ("Edema",), {}) for i in range(10)]
    >>> out = patient_disjoint_split(exs, {"train": 5, "test": 3}, seed=0)
    >>> [len(v) for v in out.values()]
    [5, 3]
    >>> {e.patient_id for e in out["train"]} & {e.patient_id for e in out["test"]}
    set()
    """
    by_patient: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_patient[example.patient_id].append(example)
    patients = sorted(by_patient)
    random.Random(seed).shuffle(patients)
    out: dict[str, list[Example]] = {name: [] for name in sizes}
    names = iter(sizes)
    current = next(names, None)
    for patient in patients:
        while current is not None and len(out[current]) >= sizes[current]:
            current = next(names, None)
        if current is None:
            break
        room = sizes[current] - len(out[current])
        out[current].extend(by_patient[patient][:room])
    short = {name: (len(out[name]), size) for name, size in sizes.items() if len(out[name]) < size}
    if short:
        detail = ", ".join(f"{name}: {have} of {want}" for name, (have, want) in short.items())
        raise DatasetError(f"not enough usable images for the requested split sizes ({detail}); lower the sizes")
    return out
