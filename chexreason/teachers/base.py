"""What every teacher shares: the case it is shown and the interface it implements.

A teacher writes the *reasoning* part of an SFT trace for one image, given the ground-truth labels (as
the paper's Gemini 2.5 teacher was), in the style of the recipe's answer format; the answer format then
wraps it with the ground-truth labels (`chexreason.prompts.AnswerFormat.render`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image

from chexreason.prompts import AnswerFormat


@dataclass(frozen=True)
class TeacherCase:
    """One image to write a trace for.

    Attributes:
        id: stable image id (cache key).
        labels: ground-truth CheXpert labels (positives after the uncertainty policy).
        image: the image, when the teacher looks at it (the API teacher does; the template teacher does not).
        view: PA / AP / … when known.
        params: the phantom's generating parameters, when the image is a phantom (the evidence to cite).
        credentialed: True for data under a credentialed-access agreement (MIMIC-CXR, CheXpert), which
            must not be sent to third-party online services.
    """

    id: str
    labels: tuple[str, ...]
    image: Image.Image | None = None
    view: str | None = None
    params: dict | None = field(default=None, compare=False)
    credentialed: bool = False


class Teacher(Protocol):
    """Writes reasoning text (no tags) for each case, in the answer format's trace style."""

    name: str

    def write(self, cases: Sequence[TeacherCase], answer_format: AnswerFormat) -> list[str]: ...
