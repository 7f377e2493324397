"""Prompt variants and SFT answer formats are complete, documented, and parse back."""

import pytest

from chexreason.labels import CHEXPERT_LABELS
from chexreason.parsing import parse_completion
from chexreason.prompts import (
    ANSWER_FORMATS,
    LABELS_ONLY,
    PROMPT_VARIANTS,
    THINK_SOLUTION,
    get_answer_format,
    get_prompt,
)
from chexreason.results import load_paper_tables


def test_the_papers_nine_variants():
    names = {p.name for p in PROMPT_VARIANTS.values()}
    assert names == {"Reasoning Narrative", "Reasoning Self-Check", "Reasoning Hypothesis"} | {
        f"Reasoning {c}" for c in "ABCDEF"
    }
    # Table 1 of the paper has one row per variant, keyed like our prompts.
    assert set(load_paper_tables()["table1"].rows) == set(PROMPT_VARIANTS)


def test_the_papers_four_answer_formats():
    assert {f.name for f in ANSWER_FORMATS.values()} == {
        "Only Label",
        "Free Reasoning",
        "Reasoning Narrative",
        "Reasoning A",
    }
    assert set(load_paper_tables()["table2"].rows) == set(ANSWER_FORMATS)
    assert ANSWER_FORMATS["only_label"].protocol == LABELS_ONLY
    assert ANSWER_FORMATS["reasoning_a"].prompt.text.count("\n12. ") == 1  # the 12-step review


@pytest.mark.parametrize("key", sorted(PROMPT_VARIANTS))
def test_prompt_text_names_every_label_and_the_protocol(key):
    prompt = PROMPT_VARIANTS[key]
    assert prompt.protocol == THINK_SOLUTION
    assert all(label in prompt.text for label in CHEXPERT_LABELS)
    assert "<think>" in prompt.text and "<solution>" in prompt.text
    message = prompt.messages()[0]
    assert message["role"] == "user" and message["content"][0] == {"type": "image"}


@pytest.mark.parametrize("key", sorted(ANSWER_FORMATS))
def test_rendered_answers_are_valid_under_their_protocol(key):
    fmt = ANSWER_FORMATS[key]
    answer = fmt.render(["Edema", "Cardiomegaly"], reasoning="Large heart; perihilar haze.")
    parsed = parse_completion(answer, fmt.protocol)
    assert parsed.valid and parsed.labels == ("Cardiomegaly", "Edema")


def test_reasoning_formats_require_reasoning():
    with pytest.raises(ValueError, match="needs reasoning"):
        ANSWER_FORMATS["free_reasoning"].render(["Edema"])


def test_lookups_name_the_choices():
    assert get_prompt("reasoning_a").name == "Reasoning A"
    assert get_answer_format("free_reasoning").name == "Free Reasoning"
    with pytest.raises(ValueError, match="choose one of"):
        get_prompt("reasoning_z")
    with pytest.raises(ValueError, match="choose one of"):
        get_answer_format("reasoning_z")
