"""HTML pieces of the Compare tab: the image preview, each checkpoint's labels, and the agreement table.

Everything shown is escaped: model outputs are untrusted text.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from html import escape

from PIL import Image

from chexreason.images import ImageInfo
from chexreason.labels import CHEXPERT_LABELS
from chexreason.parsing import ParsedCompletion

PREVIEW_SIDE = 512
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LLD", "RLD"})

# Styles for the pieces below; passed to launch(css=...) (Gradio 6 takes css at launch).
CSS = """
.preview img {width: 100%; height: auto; max-height: 360px; object-fit: contain; display: block; margin: auto;
              border-radius: 4px}
.preview .caption {font-size: 0.85em; opacity: 0.8; text-align: center}
.chips {display: flex; flex-wrap: wrap; gap: 4px; min-height: 2em}
.chip {border-radius: 999px; padding: 2px 10px; font-size: 0.85em; border: 1px solid #888}
.chip.hit {background: #d6f5d6; border-color: #2e7d32; color: #1b5e20}
.chip.false-positive {background: #fde0dc; border-color: #c62828; color: #8e0000}
.chip.missed {background: transparent; border-style: dashed; border-color: #c62828; color: #8e0000}
.chip.unscored {background: #eee; color: #555}
.chip.predicted {background: #e3ecfa; border-color: #1f4e9c; color: #0d2f66}
.unparseable {border: 1px solid #c62828; background: #fde0dc; color: #8e0000; padding: 6px; border-radius: 4px}
.legend {font-size: 0.8em; opacity: 0.85}
table.agreement {border-collapse: collapse; font-size: 0.9em}
table.agreement th, table.agreement td {border: 1px solid #ccc; padding: 2px 8px; text-align: center}
table.agreement td.label {text-align: left}
table.agreement tr.disagree {background: #fff4cc}
"""


def preview_html(image: Image.Image, info: ImageInfo) -> str:
    """The image as the models see it (greyscale, windowed, at their input resolution), drawn at the file's own
    aspect ratio, inline: nothing is written to disk."""
    # No larger than what the models see (the browser scales it up): upscaled pixels would only cost bytes.
    scale = min(PREVIEW_SIDE, max(image.size)) / max(info.width, info.height)
    shown = image.resize((max(1, round(info.width * scale)), max(1, round(info.height * scale))))
    buffer = io.BytesIO()
    shown.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    view = f", view {escape(info.view)}" if info.view else ""
    seen = f"models see {image.width}×{image.height}"
    caption = f"{info.format}, {info.width}×{info.height}, {info.bits}-bit{view} · {seen}"
    return (
        f'<div class="preview"><img alt="uploaded image, as the models see it" src="data:image/png;base64,{data}">'
        f'<div class="caption">{caption}</div></div>'
    )


def notice_markdown(info: ImageInfo, example_caption: str | None = None) -> str:
    """Warnings about the input and, for a bundled example, where its ground truth comes from."""
    lines = []
    if info.view and info.view.upper() in LATERAL_VIEWS:
        lines.append(
            f"⚠️ **This DICOM says its view is lateral ({escape(info.view)}).** The models were trained on frontal "
            "(PA/AP) films; their answers on a lateral view mean little."
        )
    if example_caption:
        lines.append(f"Bundled example {escape(example_caption)}: chips are marked against its ground truth.")
    else:
        lines.append("No ground truth is known for an upload: chips show what each checkpoint predicts.")
    return "\n\n".join(lines)


def labels_html(parsed: ParsedCompletion, truth: Sequence[str] | None, unscored: Sequence[str] = ()) -> str:
    """One checkpoint's labels as chips, marked against the ground truth when it is known."""
    if not parsed.parseable:
        return (
            f'<div class="unparseable"><b>Unparseable output</b> — {escape(parsed.error or "no labels found")}</div>'
        )
    chips = []
    for label in parsed.labels:
        kind = "predicted" if truth is None else _kind(label, truth, unscored)
        chips.append(f'<span class="chip {kind}" title="{kind}">{escape(label)}</span>')
    if truth is not None:
        for label in truth:
            if label not in parsed.labels:
                chips.append(f'<span class="chip missed" title="missed">{escape(label)}</span>')
    note = "" if parsed.valid else f'<div class="legend">Format problem: {escape(parsed.error or "")}</div>'
    if not chips:
        chips.append('<span class="legend">no label predicted</span>')
    return f'<div class="chips">{"".join(chips)}</div>{note}'


def _kind(label: str, truth: Sequence[str], unscored: Sequence[str]) -> str:
    if label in truth:
        return "hit"
    return "unscored" if label in unscored else "false-positive"


LEGEND = (
    '<div class="legend"><span class="chip hit">correct</span> <span class="chip false-positive">wrong</span> '
    '<span class="chip missed">missed</span> <span class="chip unscored">not annotated at this site</span> '
    '<span class="chip predicted">predicted (no ground truth)</span></div>'
)


def agreement_html(
    titles: Mapping[str, str], parsed: Mapping[str, ParsedCompletion], truth: Sequence[str] | None
) -> str:
    """Labels × checkpoints: which checkpoint predicted what; rows where the checkpoints disagree stand out."""
    named = set(truth or ())
    for result in parsed.values():
        named.update(result.labels)
    if not any(result.parseable for result in parsed.values()):
        return "<p>No checkpoint's output could be parsed.</p>"
    if not named:
        return "<p>No checkpoint predicted any label.</p>"
    head = "".join(f"<th>{escape(titles[name])}</th>" for name in parsed)
    head += "<th>Ground truth</th>" if truth is not None else ""
    rows = []
    for label in (label for label in CHEXPERT_LABELS if label in named):
        votes = [label in result.labels for result in parsed.values() if result.parseable]
        disagree = len(set(votes)) > 1
        cells = "".join(
            f"<td>{'✔' if label in result.labels else ('?' if not result.parseable else '–')}</td>"
            for result in parsed.values()
        )
        if truth is not None:
            cells += f"<td>{'✔' if label in truth else '–'}</td>"
        css = ' class="disagree"' if disagree else ""
        rows.append(f'<tr{css}><td class="label">{escape(label)}</td>{cells}</tr>')
    return (
        f'<table class="agreement"><tr><th>Label</th>{head}</tr>{"".join(rows)}</table>'
        '<div class="legend">Highlighted rows: the checkpoints disagree. ? = output could not be parsed.</div>'
    )
