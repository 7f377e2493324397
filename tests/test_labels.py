"""Label vocabulary, the NIH -> CheXpert map and label normalisation."""

import pytest

from chexreason.labels import (
    CHEXPERT_LABELS,
    EVAL_LABEL_SETS,
    NIH_LABELS,
    NIH_TO_CHEXPERT,
    nih_to_chexpert,
    normalize_label,
    resolve_label_set,
)


def test_vocabularies():
    assert len(CHEXPERT_LABELS) == 14 and len(set(CHEXPERT_LABELS)) == 14
    assert len(NIH_LABELS) == 15 and "No Finding" in NIH_LABELS
    assert set(NIH_TO_CHEXPERT) == set(NIH_LABELS)


def test_eval_label_sets():
    assert EVAL_LABEL_SETS["chexpert14"] == CHEXPERT_LABELS
    # The paper's Table 6: nine categories, Pleural Effusion not among them.
    assert set(EVAL_LABEL_SETS["nih9"]) == {
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Lung Lesion",
        "No Finding",
        "Pleural Other",
        "Pneumonia",
        "Pneumothorax",
    }
    assert set(EVAL_LABEL_SETS["nih10"]) == set(EVAL_LABEL_SETS["nih9"]) | {"Pleural Effusion"}
    for labels in EVAL_LABEL_SETS.values():  # every set is in canonical order
        assert list(labels) == [label for label in CHEXPERT_LABELS if label in labels]


@pytest.mark.parametrize(
    ("nih", "label_set", "expected"),
    [
        ("Mass|Nodule", "nih9", {"Lung Lesion"}),  # both map to Lung Lesion
        ("Pleural_Thickening", "nih9", {"Pleural Other"}),
        ("Effusion", "nih9", set()),  # Effusion is outside the paper's nine
        ("Effusion", "nih10", {"Pleural Effusion"}),  # ... and inside the ten-label option
        ("Infiltration|Hernia", "nih9", set()),  # dropped findings: negative everywhere, NOT No Finding
        ("No Finding", "nih9", {"No Finding"}),
        (["Cardiomegaly", "Emphysema"], "nih9", {"Cardiomegaly"}),
        ("Effusion|Fibrosis", None, {"Pleural Effusion"}),  # None: everything that maps
    ],
)
def test_nih_to_chexpert(nih, label_set, expected):
    assert nih_to_chexpert(nih, label_set) == frozenset(expected)


def test_nih_to_chexpert_rejects_unknown_findings():
    with pytest.raises(ValueError, match="unknown NIH finding"):
        nih_to_chexpert("Pneumonitis")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Pleural Effusion", "Pleural Effusion"),
        ("pleural effusion", "Pleural Effusion"),
        ("Pleural_Effusion", "Pleural Effusion"),
        ("  PLEURAL   EFFUSION. ", "Pleural Effusion"),
        ("lung opacities", "Lung Opacity"),
        ("Enlarged-Cardiomediastinum", "Enlarged Cardiomediastinum"),
        ("support device", "Support Devices"),
        ("Pleural_Thickening", "Pleural Other"),
        ("nodule", "Lung Lesion"),
        ("No Findings", "No Finding"),
        ("Hernia", None),  # an NIH finding with no CheXpert equivalent
        ("Infiltration", None),
        ("cardio", None),  # no partial matches
        ("", None),
    ],
)
def test_normalize_label(text, expected):
    assert normalize_label(text) == expected


def test_every_canonical_name_normalises_to_itself():
    for label in CHEXPERT_LABELS:
        assert normalize_label(label) == label


def test_resolve_label_set():
    assert resolve_label_set(["Edema", "Cardiomegaly"]) == ("Cardiomegaly", "Edema")
    with pytest.raises(ValueError, match="unknown label set"):
        resolve_label_set("nih14")
    with pytest.raises(ValueError, match="not CheXpert labels"):
        resolve_label_set(["Hernia"])


def test_every_synonym_is_reachable_and_names_a_chexpert_label():
    # The table is keyed by normalised text: an entry whose key is not normalised could never be looked up.
    from chexreason.labels import LABEL_SYNONYMS

    assert set(LABEL_SYNONYMS.values()) == set(CHEXPERT_LABELS)
    for variant, label in LABEL_SYNONYMS.items():
        assert normalize_label(variant) == label == normalize_label(variant.upper())
    with pytest.raises(TypeError):
        LABEL_SYNONYMS["tubes"] = "Support Devices"  # read-only: the parser's vocabulary is fixed here
