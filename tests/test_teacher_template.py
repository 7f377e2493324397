"""The template teacher: traces agree with their labels, cite phantom evidence, never reveal the labels."""

import pytest

from chexreason.data.phantom import generate
from chexreason.parsing import parse_completion
from chexreason.prompts import ANSWER_FORMATS
from chexreason.teachers import TeacherCase, TemplateTeacher

FORMATS = ["free_reasoning", "reasoning_narrative", "reasoning_a"]


@pytest.fixture(scope="module")
def phantom_cases():
    # Films whose labels are all uncertain have no positive label under u-zeros; splits drop them.
    samples = [s for s in generate("a", 80, seed=4, size=64) if s.positive_labels]
    return [TeacherCase(s.id, s.positive_labels, view=s.params["view"], params=s.params) for s in samples]


@pytest.mark.parametrize("key", FORMATS)
def test_rendered_traces_are_valid_and_match_the_labels(phantom_cases, key):
    fmt = ANSWER_FORMATS[key]
    for case, reasoning in zip(phantom_cases, TemplateTeacher().write(phantom_cases, fmt), strict=True):
        parsed = parse_completion(fmt.render(case.labels, reasoning), fmt.protocol)
        assert parsed.valid and set(parsed.labels) == set(case.labels)
        assert "label" not in reasoning.lower()  # never "I was given the labels"


def test_reasoning_a_has_twelve_steps(phantom_cases):
    trace = TemplateTeacher().write(phantom_cases[:1], ANSWER_FORMATS["reasoning_a"])[0]
    assert [line.split(".")[0] for line in trace.splitlines()] == [str(i) for i in range(1, 13)]


def test_phantom_evidence_is_cited(phantom_cases):
    traces = TemplateTeacher().write(phantom_cases, ANSWER_FORMATS["free_reasoning"])
    for case, trace in zip(phantom_cases, traces, strict=True):
        ctr = f"{case.params['anatomy']['ctr']:.2f}"
        if "Cardiomegaly" in case.labels:
            assert f"cardiothoracic ratio about {ctr}" in trace and "enlarged" in trace
        else:
            assert f"Heart size is normal (cardiothoracic ratio about {ctr})" in trace
        if "Pleural Effusion" in case.labels and case.params["findings"]["effusion"]["form"] == "meniscus":
            assert "meniscus" in trace


def test_reproducible_and_varied():
    teacher, fmt = TemplateTeacher(), ANSWER_FORMATS["free_reasoning"]
    cases = [TeacherCase(f"img{i}", ("Edema", "Cardiomegaly"), view="PA") for i in range(20)]
    first, again = teacher.write(cases, fmt), teacher.write(cases, fmt)
    assert first == again
    assert len(set(first)) > 3  # wording varies between images


def test_only_label_has_no_reasoning():
    assert TemplateTeacher().write([TeacherCase("x", ("Edema",))], ANSWER_FORMATS["only_label"]) == [""]
