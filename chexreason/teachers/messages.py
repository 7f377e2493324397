"""What the API teacher is shown: its instructions, the image and the ground-truth findings."""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from chexreason.images import to_grayscale
from chexreason.labels import CHEXPERT_LABELS, in_canonical_order
from chexreason.prompts import AnswerFormat
from chexreason.teachers.base import TeacherCase

# The user-message line the ground truth is given on (the test server reads it back).
FINDINGS_PREFIX = "Findings present: "


def system_prompt(answer_format: AnswerFormat) -> str:
    """The teacher's instructions for one answer format (the same for every case, so servers can cache it)."""
    if answer_format.trace_style is None:
        raise ValueError(
            f"answer format {answer_format.key!r} has no reasoning: there is nothing for a teacher to write"
        )
    return "\n\n".join(
        (
            "You are an expert chest radiologist writing the reasoning part of a training example for a model "
            "that learns to read chest X-rays.",
            "You are shown a chest X-ray together with its correct CheXpert findings. Write the reasoning a "
            "radiologist would write when reading this image independently: describe the image evidence and "
            "reason from it towards exactly the findings given, no more and no fewer.",
            "Write as if you reached the conclusion yourself from the image. Never mention that the findings "
            "were given to you, and never refer to labels, a reference reading, a ground truth or an answer key.",
            f"Reasoning style: {answer_format.trace_style}",
            "The CheXpert findings are: " + ", ".join(CHEXPERT_LABELS) + ". No Finding means that none of the "
            "others is present.",
            "Output exactly <think>your reasoning</think><solution>Label, Label</solution>: the reasoning, then "
            "the findings given, comma-separated, spelled as given. Write nothing before, between or after the "
            "two blocks.",
        )
    )


def teacher_messages(
    case: TeacherCase, answer_format: AnswerFormat, max_image_side: int | None = 1024
) -> list[dict[str, Any]]:
    """The chat messages for one case: the instructions, then the image and its ground-truth findings."""
    if case.image is None:
        raise ValueError(f"case {case.id!r} has no image: the API teacher must be shown the image")
    lines = [FINDINGS_PREFIX + ", ".join(in_canonical_order(case.labels))]
    if case.view:
        lines.append(f"View: {case.view}")
    lines.append("Write the reasoning and the solution for this image.")
    image_url = "data:image/png;base64," + _png_base64(case.image, max_image_side)
    user = [{"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": "\n".join(lines)}]
    return [{"role": "system", "content": system_prompt(answer_format)}, {"role": "user", "content": user}]


def _png_base64(image: Image.Image, max_side: int | None) -> str:
    """PNG-encode an image (greyscale unless it is RGB) at no more than max_side pixels a side."""
    if image.mode not in ("L", "RGB"):
        image = to_grayscale(image)
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
