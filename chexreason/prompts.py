"""Prompts: the paper's nine inference prompt variants (Table 1) and its four SFT answer formats (Tables 2-3).

The paper publishes only a one-line design cue per variant; the texts below are ours, written from those
cues as a chest radiologist would structure each kind of read. Each prompt and answer format declares
its output *protocol* — what `chexreason.parsing.parse_completion` checks:

- ``think_solution``: ``<think>reasoning</think><solution>Label, Label</solution>`` and nothing else
  (``<answer>`` is accepted in place of ``<solution>``, as NV-Reason-CXR-3B writes it).
- ``labels_only``: the labels alone, as ``<solution>Label, Label</solution>`` or a bare comma-separated
  list; no reasoning block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chexreason.labels import CHEXPERT_LABELS, in_canonical_order

THINK_SOLUTION = "think_solution"
LABELS_ONLY = "labels_only"
PROTOCOLS = (THINK_SOLUTION, LABELS_ONLY)

# The protocols' block tags, once: the parser matches them, the decoder keeps them, the tiny tokenizer makes
# each a single token. ``answer`` is NV-Reason-CXR-3B's spelling of ``solution``.
REASONING_TAG = "think"
ANSWER_TAGS = ("solution", "answer")
TAG_NAMES = (REASONING_TAG, *ANSWER_TAGS)
TAGS = tuple(f"<{slash}{name}>" for name in TAG_NAMES for slash in ("", "/"))

_TASK = (
    "You are an expert chest radiologist. Read this frontal chest X-ray and decide which of the following "
    "CheXpert findings are present: " + ", ".join(CHEXPERT_LABELS) + ". "
    "Use No Finding only when none of the other findings is present."
)

_OUTPUT = {
    THINK_SOLUTION: (
        "Write your reasoning inside <think></think>, then give the findings present, comma-separated, "
        "inside <solution></solution>, using only the label names above. Write nothing outside these two blocks."
    ),
    LABELS_ONLY: (
        "Answer with the findings present, comma-separated, inside <solution></solution>, using only the "
        "label names above. Do not explain."
    ),
}


@dataclass(frozen=True)
class PromptVariant:
    """One way of asking the model to read the image.

    Attributes:
        key: identifier used in configs and on the command line.
        name: the paper's name for it.
        cue: the paper's one-line design cue (Table 1), or ours for prompts the paper does not list.
        procedure: how the model is told to reason, written by us from the cue.
        protocol: the output protocol the parser checks.
    """

    key: str
    name: str
    cue: str
    procedure: str
    protocol: str = THINK_SOLUTION

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"prompt {self.key!r}: unknown protocol {self.protocol!r}; choose one of {PROTOCOLS}")

    @property
    def text(self) -> str:
        """The full instruction: task, reasoning procedure, output protocol."""
        parts = [_TASK, self.procedure, _OUTPUT[self.protocol]]
        return "\n\n".join(part for part in parts if part)

    def messages(self) -> list[dict]:
        """The prompt as a conversational turn with one image placeholder (TRL / chat-template format)."""
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.text}]}]


PROMPT_VARIANTS: dict[str, PromptVariant] = {
    p.key: p
    for p in (
        PromptVariant(
            key="reasoning_narrative",
            name="Reasoning Narrative",
            cue="Free-form expert narrative, evidence aggregation",
            procedure=(
                "Describe the image as an experienced radiologist dictating a report: say what you see, in your "
                "own order, and let the observations build up to a conclusion. Weigh the evidence for each "
                "finding you mention before you decide on it."
            ),
        ),
        PromptVariant(
            key="reasoning_self_check",
            name="Reasoning Self-Check",
            cue="Region-wise scan, then explicit verification pass",
            procedure=(
                "First scan region by region: lines and tubes, mediastinum and heart, each lung from apex to base, "
                "pleura and costophrenic angles, diaphragm, bones and soft tissues. Then do a verification pass: "
                "for every finding you intend to report, state the image evidence that supports it, and drop any "
                "finding whose evidence you cannot point to."
            ),
        ),
        PromptVariant(
            key="reasoning_hypothesis",
            name="Reasoning Hypothesis",
            cue="Hypothesis-driven comparison of candidate findings",
            procedure=(
                "Name the candidate findings the image suggests at first look. For each candidate, state what "
                "would confirm it and what would argue against it, compare the candidates with each other "
                "(for example consolidation against atelectasis against effusion), and keep those that win."
            ),
        ),
        PromptVariant(
            key="reasoning_a",
            name="Reasoning A",
            cue="Structured 12-step checklist, strict format (baseline)",
            procedure=(
                "Follow this checklist, one numbered line per step:\n"
                "1. Technique: projection (PA or AP), rotation, inspiration, penetration.\n"
                "2. Lines, tubes and devices: endotracheal tube, central lines, nasogastric tube, pacemaker, wires.\n"
                "3. Airway: trachea midline or deviated.\n"
                "4. Mediastinum and hila: width and contour.\n"
                "5. Heart: size (cardiothoracic ratio) and borders.\n"
                "6. Right lung: opacities, nodules or masses, volume.\n"
                "7. Left lung: opacities, nodules or masses, volume.\n"
                "8. Pleura: effusion, thickening or plaques, pneumothorax.\n"
                "9. Diaphragm and costophrenic angles.\n"
                "10. Bones: ribs, clavicles, spine; fractures.\n"
                "11. Soft tissues and upper abdomen.\n"
                "12. Summary: map each abnormal step to its label."
            ),
        ),
        PromptVariant(
            key="reasoning_b",
            name="Reasoning B",
            cue="Zonal lung review with pathology differentiation",
            procedure=(
                "Review each lung in upper, middle and lower zones. For every abnormal zone, differentiate the "
                "pattern: homogeneous airspace opacity with air bronchograms (consolidation), opacity with volume "
                "loss (atelectasis), bilateral perihilar haze with septal lines (edema), a round focal opacity "
                "(lung lesion), basal density with a meniscus (pleural effusion), absent lung markings beyond a "
                "pleural line (pneumothorax). Then assess heart, mediastinum, bones and devices."
            ),
        ),
        PromptVariant(
            key="reasoning_c",
            name="Reasoning C",
            cue="Evidence-heavy report with a label-confidence matrix",
            procedure=(
                "Write a detailed report of the evidence, then a confidence matrix with one line per CheXpert "
                "label in the form 'Label: present/absent, confidence high/medium/low, evidence'. Report as "
                "present only the labels you marked present."
            ),
        ),
        PromptVariant(
            key="reasoning_d",
            name="Reasoning D",
            cue="Definition-guided labelling with strict criteria",
            procedure=(
                "Apply these definitions strictly and label a finding only when its criterion is met. "
                "Cardiomegaly: cardiothoracic ratio above 0.5 on a PA film (above about 0.55 on AP). "
                "Enlarged Cardiomediastinum: widened mediastinal silhouette. Lung Opacity: any airspace or "
                "interstitial opacity. Lung Lesion: a nodule or mass. Edema: bilateral perihilar opacity or "
                "septal lines. Consolidation: homogeneous airspace opacity without volume loss. Pneumonia: "
                "consolidation in a pattern typical of infection. Atelectasis: opacity with volume loss. "
                "Pneumothorax: a visceral pleural line with no lung markings beyond it. Pleural Effusion: "
                "blunted costophrenic angle or basal meniscus. Pleural Other: pleural thickening or plaques. "
                "Fracture: a break in a bone's cortex. Support Devices: any tube, line, wire or implanted device."
            ),
        ),
        PromptVariant(
            key="reasoning_e",
            name="Reasoning E",
            cue="Second-look pass over anatomic blind spots",
            procedure=(
                "Read the image once as usual. Then take a second look at the classic blind spots: the lung "
                "apices, behind the heart, below the diaphragm domes, the hila, the costophrenic angles, and "
                "the ribs and clavicles. Add anything the second look reveals before you conclude."
            ),
        ),
        PromptVariant(
            key="reasoning_f",
            name="Reasoning F",
            cue="Differential diagnosis for each abnormality",
            procedure=(
                "List every abnormality you see. For each one give a short differential diagnosis, then choose "
                "the most likely explanation and the CheXpert label it corresponds to."
            ),
        ),
    )
}


@dataclass(frozen=True)
class AnswerFormat:
    """An SFT answer format (the paper's Tables 2-3): the prompt used to train on it, and the trace style.

    Attributes:
        key: identifier used in recipes.
        name: the paper's name for it.
        prompt: the prompt the model is trained with, and should be asked with afterwards.
        trace_style: what the teacher is asked to write as reasoning (None: no reasoning).
    """

    key: str
    name: str
    prompt: PromptVariant
    trace_style: str | None

    @property
    def protocol(self) -> str:
        return self.prompt.protocol

    def render(self, labels: Sequence[str], reasoning: str | None = None) -> str:
        """The target answer text for SFT.

        >>> ANSWER_FORMATS["only_label"].render(["Edema", "Cardiomegaly"])
        '<solution>Cardiomegaly, Edema</solution>'
        >>> ANSWER_FORMATS["free_reasoning"].render(["No Finding"], "Clear lungs.")
        '<think>Clear lungs.</think><solution>No Finding</solution>'
        """
        solution = f"<solution>{', '.join(in_canonical_order(labels))}</solution>"
        if self.protocol == LABELS_ONLY:
            return solution
        if not reasoning or not reasoning.strip():
            raise ValueError(f"answer format {self.key!r} needs reasoning text")
        return f"<think>{reasoning.strip()}</think>{solution}"


_FREE_REASONING_PROMPT = PromptVariant(
    key="free_reasoning",
    name="Free Reasoning",
    cue="Unstructured reasoning before the answer (the paper's SFT format used for GRPO)",
    procedure="Think through what you see before you answer.",
)
_ONLY_LABEL_PROMPT = PromptVariant(
    key="only_label",
    name="Only Label",
    cue="Labels only, no reasoning",
    procedure="",
    protocol=LABELS_ONLY,
)

ANSWER_FORMATS: dict[str, AnswerFormat] = {
    f.key: f
    for f in (
        AnswerFormat("only_label", "Only Label", _ONLY_LABEL_PROMPT, trace_style=None),
        AnswerFormat(
            "free_reasoning",
            "Free Reasoning",
            _FREE_REASONING_PROMPT,
            trace_style="Concise free-form reasoning in the radiologist's own order, citing image evidence.",
        ),
        AnswerFormat(
            "reasoning_narrative",
            "Reasoning Narrative",
            PROMPT_VARIANTS["reasoning_narrative"],
            trace_style="A flowing narrative report that aggregates evidence into a conclusion.",
        ),
        AnswerFormat(
            "reasoning_a",
            "Reasoning A",
            PROMPT_VARIANTS["reasoning_a"],
            trace_style="The 12-step systematic review, one numbered line per step, ending with the summary step.",
        ),
    )
}

# Every prompt a checkpoint may be asked with: the nine inference variants and the SFT format prompts.
ALL_PROMPTS: dict[str, PromptVariant] = {
    **PROMPT_VARIANTS,
    _FREE_REASONING_PROMPT.key: _FREE_REASONING_PROMPT,
    _ONLY_LABEL_PROMPT.key: _ONLY_LABEL_PROMPT,
}


def get_prompt(key: str) -> PromptVariant:
    """Look up a prompt by key, with a clear error naming the choices."""
    try:
        return ALL_PROMPTS[key]
    except KeyError:
        raise ValueError(f"unknown prompt {key!r}; choose one of {sorted(ALL_PROMPTS)}") from None


def get_answer_format(key: str) -> AnswerFormat:
    """Look up an SFT answer format by key, with a clear error naming the choices."""
    try:
        return ANSWER_FORMATS[key]
    except KeyError:
        raise ValueError(f"unknown answer format {key!r}; choose one of {sorted(ANSWER_FORMATS)}") from None
