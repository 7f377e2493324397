"""The one label vocabulary of the project: CheXpert-14, NIH ChestX-ray14, and the map between them.

Every other module takes its label names from here. Label *values* in dataset records follow the
CheXpert convention: 1.0 present, 0.0 negative (or not mentioned), -1.0 uncertain, and NaN for a
label the dataset does not annotate at all (e.g. Support Devices in NIH ChestX-ray14).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

# CheXpert's canonical order: the column order of CheXpert's train.csv / valid.csv.
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
_CHEXPERT_INDEX = {label: i for i, label in enumerate(CHEXPERT_LABELS)}

# NIH ChestX-ray14's 14 findings (spelled as in Data_Entry_2017.csv) plus its "No Finding".
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
    "No Finding",
)

# NIH name -> CheXpert name; None = no CheXpert equivalent (dropped).
NIH_TO_CHEXPERT: dict[str, str | None] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",  # recorded; evaluated only in the ten-label set
    "Emphysema": None,
    "Fibrosis": None,
    "Hernia": None,
    "Infiltration": None,
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "No Finding": "No Finding",
}

# The paper's nine NIH evaluation categories (its Table 6), in canonical order.
_NIH9 = (
    "No Finding",
    "Cardiomegaly",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Other",
)


def in_canonical_order(labels: Iterable[str]) -> tuple[str, ...]:
    """Sort CheXpert label names into CHEXPERT_LABELS order and drop duplicates."""
    return tuple(sorted(set(labels), key=_CHEXPERT_INDEX.__getitem__))


EVAL_LABEL_SETS: dict[str, tuple[str, ...]] = {
    "chexpert14": CHEXPERT_LABELS,
    "nih9": in_canonical_order(_NIH9),
    "nih10": in_canonical_order((*_NIH9, "Pleural Effusion")),
}


def resolve_label_set(label_set: str | Sequence[str]) -> tuple[str, ...]:
    """Return the labels of a named evaluation set, or check and order an explicit sequence of labels."""
    if isinstance(label_set, str):
        try:
            return EVAL_LABEL_SETS[label_set]
        except KeyError:
            raise ValueError(f"unknown label set {label_set!r}; choose one of {sorted(EVAL_LABEL_SETS)}") from None
    unknown = [label for label in label_set if label not in _CHEXPERT_INDEX]
    if unknown:
        raise ValueError(f"not CheXpert labels: {unknown}")
    if not label_set:
        raise ValueError("a label set needs at least one label")
    return in_canonical_order(label_set)


def nih_to_chexpert(nih_labels: str | Iterable[str], label_set: str | Sequence[str] | None = "nih9") -> frozenset[str]:
    """Map NIH findings to CheXpert labels, keeping only those in `label_set`.

    Args:
        nih_labels: NIH names, or a `Finding Labels` cell such as ``"Effusion|Mass"``.
        label_set: the evaluation label set to keep (default the paper's nine), or None for every
            CheXpert label an NIH finding maps to.

    Findings without a CheXpert equivalent (Infiltration, Emphysema, Fibrosis, Hernia) are dropped; an
    image whose findings are all dropped maps to the empty set, *not* to No Finding.

    >>> sorted(nih_to_chexpert("Effusion|Mass|Infiltration"))
    ['Lung Lesion']
    >>> sorted(nih_to_chexpert("Effusion|Mass", label_set="nih10"))
    ['Lung Lesion', 'Pleural Effusion']
    """
    if isinstance(nih_labels, str):
        nih_labels = [part for part in nih_labels.split("|") if part.strip()]
    keep = None if label_set is None else set(resolve_label_set(label_set))
    mapped = set()
    for name in nih_labels:
        name = name.strip()
        if name not in NIH_TO_CHEXPERT:
            raise ValueError(f"unknown NIH finding {name!r}; NIH findings are {list(NIH_LABELS)}")
        target = NIH_TO_CHEXPERT[name]
        if target is not None and (keep is None or target in keep):
            mapped.add(target)
    return frozenset(mapped)


def _key(text: str) -> str:
    """Lower-case, accents and punctuation removed, underscores/hyphens as spaces, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[_\-/]+", " ", text)
    text = re.sub(r"[^\w\s]+", "", text)
    return " ".join(text.split())


# Plain-language variants a model or a report may write, keyed by _key(variant).
_SYNONYMS: dict[str, str] = {
    # "No Finding": only explicit statements that the study is normal.
    "no finding": "No Finding",
    "no findings": "No Finding",
    "normal": "No Finding",
    "normal study": "No Finding",
    "normal chest": "No Finding",
    "normal chest x ray": "No Finding",
    "no acute findings": "No Finding",
    "no abnormality": "No Finding",
    "no abnormalities": "No Finding",
    "enlarged cardiomediastinum": "Enlarged Cardiomediastinum",
    "enlarged cardiomediastinal silhouette": "Enlarged Cardiomediastinum",
    "widened mediastinum": "Enlarged Cardiomediastinum",
    "mediastinal widening": "Enlarged Cardiomediastinum",
    "cardiomegaly": "Cardiomegaly",
    "enlarged heart": "Cardiomegaly",
    "cardiac enlargement": "Cardiomegaly",
    "lung opacity": "Lung Opacity",
    "lung opacities": "Lung Opacity",
    "opacity": "Lung Opacity",
    "opacities": "Lung Opacity",
    "airspace opacity": "Lung Opacity",
    "pulmonary opacity": "Lung Opacity",
    "lung lesion": "Lung Lesion",
    "lung lesions": "Lung Lesion",
    "nodule": "Lung Lesion",
    "nodules": "Lung Lesion",
    "lung nodule": "Lung Lesion",
    "pulmonary nodule": "Lung Lesion",
    "mass": "Lung Lesion",
    "lung mass": "Lung Lesion",
    "edema": "Edema",
    "oedema": "Edema",
    "pulmonary edema": "Edema",
    "pulmonary oedema": "Edema",
    "consolidation": "Consolidation",
    "consolidations": "Consolidation",
    "pneumonia": "Pneumonia",
    "atelectasis": "Atelectasis",
    "atelectases": "Atelectasis",
    "pneumothorax": "Pneumothorax",
    "pleural effusion": "Pleural Effusion",
    "pleural effusions": "Pleural Effusion",
    "effusion": "Pleural Effusion",
    "effusions": "Pleural Effusion",
    "pleural other": "Pleural Other",
    "pleural thickening": "Pleural Other",
    "pleural plaque": "Pleural Other",
    "pleural plaques": "Pleural Other",
    "fracture": "Fracture",
    "fractures": "Fracture",
    "rib fracture": "Fracture",
    "rib fractures": "Fracture",
    "support devices": "Support Devices",
    "support device": "Support Devices",
    "devices": "Support Devices",
    "lines and tubes": "Support Devices",
}
# Read-only view for callers that must cover every variant (the parser's round-trip test). A variant may contain
# the word "and" ("lines and tubes"): the parser splits on "and" only where the joined words name no label.
LABEL_SYNONYMS: Mapping[str, str] = MappingProxyType(_SYNONYMS)


def normalize_label(text: str) -> str | None:
    """Return the canonical CheXpert name a label string means, or None if it names no CheXpert label.

    Case, spacing, underscores, hyphens, surrounding punctuation and plain variants are accepted.

    >>> normalize_label("pleural_effusion")
    'Pleural Effusion'
    >>> normalize_label("  Lung opacities. ")
    'Lung Opacity'
    >>> normalize_label("Hernia") is None
    True
    """
    return _SYNONYMS.get(_key(text))
