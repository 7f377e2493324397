"""The one parser: validity (strict format) and parseability (labels extracted) kept apart."""

import pytest

from chexreason.parsing import OUTSIDE_TEXT, parse_completion
from chexreason.prompts import LABELS_ONLY, THINK_SOLUTION

# fmt: off
CASES = [
    # (id, text, protocol, valid, parseable, labels, error substring)
    # The canonical format: one think block, one solution block, nothing else.
    ("valid", "<think>Heart is large.</think><solution>Cardiomegaly</solution>", THINK_SOLUTION,
     True, True, ("Cardiomegaly",), None),
    # Whitespace and newlines around and between the blocks are allowed.
    ("valid_whitespace", "\n <think>\nok\n</think>\n\n<solution> Edema ,Cardiomegaly </solution>\n", THINK_SOLUTION,
     True, True, ("Cardiomegaly", "Edema"), None),
    # NV-Reason-CXR-3B writes <answer>: accepted in place of <solution>.
    ("answer_tag", "<think>x</think><answer>Pneumothorax</answer>", THINK_SOLUTION,
     True, True, ("Pneumothorax",), None),
    # No reasoning block: labels readable, format invalid.
    ("missing_think", "<solution>Edema</solution>", THINK_SOLUTION,
     False, True, ("Edema",), "missing <think>"),
    # No solution block at all: nothing to read -> a failure.
    ("missing_solution", "<think>Lungs clear.</think> No Finding", THINK_SOLUTION,
     False, False, (), "no complete <solution>"),
    # Truncated generation: the solution block never closes.
    ("unclosed_solution", "<think>a</think><solution>Edema, Card", THINK_SOLUTION,
     False, False, (), "no complete <solution>"),
    # Mismatched open/close tags do not form a block.
    ("mismatched_tags", "<think>a</think><solution>Edema</answer>", THINK_SOLUTION,
     False, False, (), "no complete <solution>"),
    # Nested think tags: readable, but not the strict format.
    ("nested_think", "<think><think>a</think></think><solution>Edema</solution>", THINK_SOLUTION,
     False, True, ("Edema",), "nested or repeated"),
    # Two solution blocks: the last one is read (what the model settled on); invalid.
    ("repeated_solution", "<think>a</think><solution>Edema</solution><solution>Fracture</solution>", THINK_SOLUTION,
     False, True, ("Fracture",), "more than one"),
    # Blocks in the wrong order.
    ("solution_first", "<solution>Edema</solution><think>a</think>", THINK_SOLUTION,
     False, True, ("Edema",), "after the <solution>"),
    # Text outside the blocks breaks validity only.
    ("outside_text", "Sure! <think>a</think><solution>Edema</solution> Hope this helps.", THINK_SOLUTION,
     False, True, ("Edema",), OUTSIDE_TEXT),
    # An empty think block is not reasoning.
    ("empty_think", "<think>  </think><solution>Edema</solution>", THINK_SOLUTION,
     False, True, ("Edema",), "empty <think>"),
    # An empty solution predicts nothing and is a failure.
    ("empty_solution", "<think>a</think><solution> </solution>", THINK_SOLUTION,
     False, False, (), "empty solution"),
    # Unknown labels are dropped from labels but kept for the nuanced reward; the format is still valid.
    ("unknown_labels", "<think>a</think><solution>Hernia, Edema, Emphysema</solution>", THINK_SOLUTION,
     True, True, ("Edema",), None),
    # Only unknown labels: parseable (filtered to CheXpert -> nothing), not a failure.
    ("only_unknown", "<think>a</think><solution>Hernia</solution>", THINK_SOLUTION,
     True, True, (), None),
    # Synonyms, case, underscores and plurals normalise to canonical names in canonical order.
    ("synonyms", "<think>a</think><solution>pleural_effusion; LUNG OPACITIES and enlarged heart</solution>",
     THINK_SOLUTION, True, True, ("Cardiomegaly", "Lung Opacity", "Pleural Effusion"), None),
    # Duplicates (including via synonyms) are de-duplicated in labels.
    ("duplicates", "<think>a</think><solution>Edema, edema, Effusion, Pleural Effusion</solution>", THINK_SOLUTION,
     True, True, ("Edema", "Pleural Effusion"), None),
    # No Finding next to a finding is kept as predicted (the metrics count it) and flagged.
    ("no_finding_conflict", "<think>a</think><solution>No Finding, Edema</solution>", THINK_SOLUTION,
     True, True, ("No Finding", "Edema"), None),
    # Bulleted list with a "Labels:" prefix.
    ("bullets", "<think>a</think><solution>Labels:\n- Edema\n- Support Devices\n</solution>", THINK_SOLUTION,
     True, True, ("Edema", "Support Devices"), None),
    # Full-width brackets and zero-width spaces are normalised away.
    ("unicode_noise", "\ufeff＜think＞a</think><solution>Ede\u200bma</solution>", THINK_SOLUTION,
     True, True, ("Edema",), None),
    # Tags are matched case-insensitively.
    ("upper_tags", "<THINK>a</THINK><SOLUTION>Edema</SOLUTION>", THINK_SOLUTION,
     True, True, ("Edema",), None),
    # Plain text with no tags at all.
    ("plain_text", "The lungs are clear.", THINK_SOLUTION,
     False, False, (), "no complete <solution>"),
    ("empty_string", "", THINK_SOLUTION, False, False, (), "no complete <solution>"),
    # Labels-only protocol: a solution block without reasoning is valid ...
    ("labels_only_block", "<solution>Edema</solution>", LABELS_ONLY, True, True, ("Edema",), None),
    # ... and so is a bare list where every item is a label ...
    ("labels_only_bare", "Edema, Cardiomegaly", LABELS_ONLY, True, True, ("Cardiomegaly", "Edema"), None),
    # ... but a bare list with prose is readable, not valid ...
    ("labels_only_prose", "Edema, probably", LABELS_ONLY, False, True, ("Edema",), "unrecognised"),
    # ... prose with no label is a failure ...
    ("labels_only_nothing", "I cannot tell.", LABELS_ONLY, False, False, (), "no labels"),
    # ... and reasoning is not part of that protocol.
    ("labels_only_think", "<think>a</think><solution>Edema</solution>", LABELS_ONLY,
     False, True, ("Edema",), "<think> block in a labels-only"),
]
# fmt: on


@pytest.mark.parametrize(
    ("text", "protocol", "valid", "parseable", "labels", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_parse_table(text, protocol, valid, parseable, labels, error):
    parsed = parse_completion(text, protocol)
    assert parsed.valid is valid
    assert parsed.parseable is parseable
    assert parsed.labels == labels
    if error is None:
        assert parsed.error is None
    else:
        assert error in parsed.error


def test_reasoning_is_returned():
    parsed = parse_completion("<think> CTR about 0.62. </think><solution>Cardiomegaly</solution>")
    assert parsed.reasoning == "CTR about 0.62."


def test_reward_inputs_are_exposed():
    parsed = parse_completion("pre <think>a</think><solution>Hernia, Edema, edema, foo</solution>")
    assert parsed.invalid_labels == ("Hernia", "foo")
    assert parsed.duplicate_labels == ("Edema",)
    assert parsed.outside_text == "pre"


def test_no_finding_conflict_flag():
    assert parse_completion("<think>a</think><solution>No Finding, Edema</solution>").contradicts_no_finding
    assert not parse_completion("<think>a</think><solution>No Finding</solution>").contradicts_no_finding


def test_conversational_completion():
    # TRL passes conversational completions as a list of messages; content may be a list of parts.
    completion = [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "<think>a</think>"},
                {"type": "text", "text": "<solution>Edema</solution>"},
            ],
        }
    ]
    parsed = parse_completion(completion)
    assert parsed.valid and parsed.labels == ("Edema",)
    assert parse_completion(
        [{"role": "assistant", "content": "<think>a</think><solution>Fracture</solution>"}]
    ).labels == ("Fracture",)


def test_very_long_output_is_parsed_quickly():
    import time

    text = "<think>" + "The left costophrenic angle is sharp. " * 50_000 + "</think><solution>No Finding</solution>"
    start = time.perf_counter()
    parsed = parse_completion(text)
    assert parsed.valid and parsed.labels == ("No Finding",)
    assert time.perf_counter() - start < 2.0  # linear-time regexes; a backtracking bug would take minutes


def test_a_long_and_joined_answer_is_parsed_quickly():
    import time

    # Rejoining "and"-separated words into a label must not try every run of a degenerate answer (cubic time).
    text = "<think>a</think><solution>" + "Edema and " * 20_000 + "lines and tubes</solution>"
    start = time.perf_counter()
    parsed = parse_completion(text)
    assert parsed.labels == ("Edema", "Support Devices") and len(parsed.duplicate_labels) == 19_999
    assert time.perf_counter() - start < 2.0


def test_unknown_protocol_is_rejected():
    with pytest.raises(ValueError, match="unknown protocol"):
        parse_completion("x", protocol="xml")


def _variants() -> list[tuple[str, str]]:
    """Every way `chexreason.labels` lets a label be written: each synonym-table entry and each canonical name."""
    from chexreason.labels import CHEXPERT_LABELS, LABEL_SYNONYMS

    return sorted({*LABEL_SYNONYMS.items(), *((label, label) for label in CHEXPERT_LABELS)})


def _neighbours(label: str) -> list[str]:
    """Two other labels to list around a variant, never its own label (that would be a duplicate)."""
    return [other for other in ("Edema", "Fracture", "Cardiomegaly") if other != label][:2]


# How a solution may list a variant {v} among other labels {a} and {b}: alone, comma-separated, "and"-joined (a
# synonym such as "lines and tubes" holds the separator word itself), first in an "and" pair, mixed separators,
# and as a bullet list.
LISTINGS = {
    "alone": "{v}",
    "commas": "{a}, {v}, {b}",
    "and_joined": "{a} and {v} and {b}",
    "and_first": "{v} AND {a}",
    "mixed": "{a}; {v} and {b}",
    "bullets": "- {a}\n- {v}\n- {b}",
}


@pytest.mark.parametrize("listing", sorted(LISTINGS))
def test_every_label_variant_round_trips(listing):
    # Generated from the whole synonym table, so any variant the parser cannot read back fails here.
    template, failures = LISTINGS[listing], []
    for variant, label in _variants():
        a, b = _neighbours(label)
        answer = template.format(v=variant, a=a, b=b)
        parsed = parse_completion(f"<think>x</think><solution>{answer}</solution>")
        expected = {label} | {n for n, slot in ((a, "{a}"), (b, "{b}")) if slot in template}
        if set(parsed.labels) != expected or parsed.invalid_labels or parsed.duplicate_labels or not parsed.valid:
            failures.append((variant, answer, parsed.labels, parsed.invalid_labels))
    assert not failures


def test_and_still_separates_genuine_lists():
    parsed = parse_completion("<think>x</think><solution>Edema and Cardiomegaly AND effusion</solution>")
    assert parsed.labels == ("Cardiomegaly", "Edema", "Pleural Effusion") and not parsed.invalid_labels
    # Words joined by "and" that name no label stay separate items, each judged on its own.
    parsed = parse_completion("<think>x</think><solution>Edema and Hernia and lines</solution>")
    assert parsed.labels == ("Edema",) and parsed.invalid_labels == ("Hernia", "lines")
