"""ChexReason demo app. Run: `python app.py` (or `make app`), then open http://127.0.0.1:7860.

This first version shows the paper's reported results; the side-by-side base / SFT / GRPO comparison on
an uploaded X-ray arrives with the bundled tiny checkpoints (see README, "Roadmap").
"""

from __future__ import annotations

import argparse
import os

# No analytics or telemetry requests leave the machine. (Offline mode is not forced: a user's model
# sets may name Hub ids.)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr

from chexreason.results import load_paper_tables, paper_source


def paper_per_label_table(key: str) -> list[list]:
    """Rows of the paper's Table 5 or 6: label, then one F1 per model, then the macro-F1 row."""
    table = load_paper_tables()[key]
    rows = [[label, *values] for label, values in sorted(table.per_label_f1.items())]
    return [*rows, ["Macro-F1 (reported)", *table.macro_f1]]


def build_demo() -> gr.Blocks:
    tables = load_paper_tables()
    with gr.Blocks(title="ChexReason") as demo:
        gr.Markdown(
            "# ChexReason\n"
            "R1-style (SFT → GRPO) chest X-ray labelling, after *Benchmark Success, Clinical Failure* "
            "(arXiv 2512.23090).\n\n"
            "**Coming next:** upload a chest X-ray (PNG, JPEG or DICOM) and compare the base, SFT and GRPO "
            "checkpoints side by side. Until the tiny checkpoints are trained, this page shows the paper's "
            "reported numbers only.\n\n"
            "*Research demonstration — not for diagnosis.*"
        )
        for key in ("table5", "table6"):
            table = tables[key]
            gr.Markdown(f"### Paper, {table.title} — reported, not measured by us")
            gr.Dataframe(
                value=paper_per_label_table(key),
                headers=["Label", *table.models],
                interactive=False,
            )
        gr.Markdown(f"Source: {paper_source()}")
    return demo


demo = build_demo()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    demo.queue().launch(server_name=args.host, server_port=args.port)
