"""The app's page: `build_demo(models)` lays out one column per checkpoint of the model set, plus the Results,
Training and About tabs. `launch_options()` holds what Gradio 6 takes at launch (theme, css, upload limit).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gradio as gr
from fastapi.exceptions import RequestValidationError
from starlette.middleware import Middleware

from chexreason import decode_pool
from chexreason.app import plots, rendering
from chexreason.app.compare import MAX_UPLOAD_BYTES, Comparer, refusal
from chexreason.app.examples import SITE_NAMES, load_examples
from chexreason.app.http_guard import UploadGuard, validation_error
from chexreason.app.sessions import held_seconds
from chexreason.app.uploads import upload_input
from chexreason.modeling import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    ModelSet,
    is_hub_id,
    load_model_set,
    resolve_model_set_path,
)
from chexreason.results import ResultsError, load_paper_tables, load_results, paper_source, scored_other_weights

logger = logging.getLogger(__name__)

DEFAULT_MODELS = "tiny"
RESULTS_FILE, LOGS_DIR, MODEL_CARD = "eval.json", "logs", "README.md"
PAPER_URL = "https://arxiv.org/abs/2512.23090"
DISCLAIMER = (
    "**Research demonstration — not for diagnosis.** (The bundled tiny set was trained on synthetic phantoms and "
    "says nothing about real patients.)"
)
# System fonts only: Gradio's default theme fetches Google Fonts, and nothing may leave the machine.
THEME = gr.themes.Soft(
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)


def configure_logging() -> None:
    """The served app's log: one line per comparison and per refusal (chexreason's loggers, at INFO), none per HTTP
    request (httpx's). Leaves an already configured root logger alone."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


def launch_options() -> dict:
    """Keyword arguments for `demo.launch` (Gradio 6 takes theme and css there, not in `gr.Blocks`). ``share`` is
    False explicitly: Gradio would otherwise read ``GRADIO_SHARE`` and open a public tunnel off the machine; so is
    ``run_history``. The
    `UploadGuard` middleware serves uploads and checks every request's file inputs (`chexreason.app.http_guard`)."""
    return {
        "app_kwargs": {
            "middleware": [Middleware(UploadGuard, max_upload_bytes=MAX_UPLOAD_BYTES)],
            "exception_handlers": {RequestValidationError: validation_error},
        },
        "theme": THEME,
        "css": rendering.CSS,
        "max_file_size": MAX_UPLOAD_BYTES,
        "show_error": True,
        "share": False,
        # Gradio 6's run history would save each run's inputs and outputs (the X-ray among them) in the visitor's
        # browser, or, if a client names a Hugging Face bucket, upload them there from this server.
        "run_history": False,
    }


def build_demo(models: str | Path | ModelSet = DEFAULT_MODELS) -> gr.Blocks:
    """The page for a model set: a bare name (``tiny``), a model-set YAML file, or an already loaded `ModelSet`."""
    model_set = models if isinstance(models, ModelSet) else load_model_set(models)
    folder = _set_folder(model_set, models)
    comparer = Comparer(model_set)
    # delete_cache: a backstop for files Gradio itself writes; the compare handler deletes its upload at once.
    with gr.Blocks(title="ChexReason", delete_cache=(600, 1800), analytics_enabled=False) as demo:
        gr.Markdown(
            f"# ChexReason — {' vs '.join(comparer.titles.values())} on a chest X-ray\n"
            f"R1-style (SFT → GRPO) chest X-ray labelling after *Benchmark Success, Clinical Failure* "
            f"([arXiv 2512.23090]({PAPER_URL})). Model set: **{model_set.spec.name}**. {DISCLAIMER}"
        )
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                _compare_tab(comparer)
            with gr.Tab("Results", id="results"):
                _results_tab(comparer, folder)
            with gr.Tab("Training", id="training"):
                _training_tab(folder)
            with gr.Tab("About", id="about"):
                _about_tab(model_set, folder)
        demo.unload(comparer.forget)  # a closed tab's image goes now, not at the end of its time to live
    demo.queue(default_concurrency_limit=1, max_size=16)  # one generation at a time; a burst waits or is refused
    return demo


def _set_folder(model_set: ModelSet, models: str | Path | ModelSet) -> Path | None:
    """The folder of the model-set file: its results JSON, logs and model card live beside it."""
    if model_set.spec.source is not None:
        return Path(model_set.spec.source).parent
    return None if isinstance(models, ModelSet) else resolve_model_set_path(models).parent


# ------------------------------------------------------------------------------------------ Compare


def _compare_tab(comparer: Comparer) -> None:
    spec = comparer.model_set.spec
    examples = load_examples()
    gallery = gr.Gallery(
        [(str(e.path), f"{e.id.split('-')[1]}: {', '.join(e.truth) or 'no finding labelled'}") for e in examples],
        label="Try an example: held-out test phantoms of "
        + " and ".join(SITE_NAMES.values())
        + ". Click one to compare; the caption is its ground truth.",
        columns=len(examples),
        height=210,
        allow_preview=False,
        object_fit="contain",
        elem_id="examples",
    )
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            upload = upload_input(label="PNG, JPEG or DICOM", elem_id="upload")
            compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
            preview = gr.HTML(elem_id="preview")
            notice = gr.Markdown(elem_id="notice")
            with gr.Accordion("Prompt and decoding", open=False):
                prompt = gr.Dropdown(
                    comparer.prompt_choices(),
                    value=comparer.default_prompt,
                    label="Prompt variant (the paper's Table 1; default: the one the checkpoints were trained with)",
                    elem_id="prompt",
                    allow_custom_value=True,  # so an unknown value reaches Comparer's check, which does not echo it
                )
                sampling = gr.Checkbox(False, label="Sample (off: greedy, as in the evaluation)", elem_id="sampling")
                temperature = setting_slider(
                    0.05, 2.0, DEFAULT_TEMPERATURE, step=0.05, label="Temperature", elem_id="temperature"
                )
                top_p = setting_slider(0.05, 1.0, DEFAULT_TOP_P, step=0.05, label="Top-p", elem_id="top-p")
                max_new_tokens = setting_slider(
                    min(16, comparer.default_budget), comparer.token_limit, comparer.default_budget, step=16,
                    elem_id="max-new-tokens",
                    label=f"Max new tokens (default {comparer.default_budget}: the budget the set was evaluated with)",
                )  # fmt: skip
        with gr.Column(scale=3):
            columns = []
            with gr.Row(equal_height=False):
                for name in comparer.names:
                    checkpoint = spec.checkpoint(name)
                    with gr.Column(elem_id=f"column-{name}", min_width=220):
                        gr.Markdown(f"### {checkpoint.display_title}\n{_describe(checkpoint)}")
                        reasoning = gr.Textbox(
                            label="Output (streamed)", lines=12, max_lines=12, interactive=False,
                            elem_id=f"reasoning-{name}", autoscroll=False,
                        )  # fmt: skip
                        labels = gr.HTML(elem_id=f"labels-{name}")
                        columns += [reasoning, labels]
            gr.HTML(rendering.LEGEND)
            agreement = gr.HTML(elem_id="agreement")
            with gr.Accordion("Result as JSON", open=False):
                result = gr.JSON(elem_id="result")
    inputs = [upload, prompt, sampling, temperature, top_p, max_new_tokens]
    outputs = [preview, notice, *columns, agreement, result]
    # An upload is decoded into the session (and its file deleted) as soon as it arrives; the page checks the
    # settings before each comparison (a bad one is a single message); API users' calls to /compare do both.
    # Both generating events share one slot: one generation at a time, and the queue's positions say so.
    generate = {"concurrency_limit": 1, "concurrency_id": "generate"}
    checked = {"show_progress": "hidden", "concurrency_limit": decode_pool.WORKERS, "concurrency_id": "decode"}
    private = {"api_visibility": "private"}  # the page's own steps, not API endpoints
    upload.upload(comparer.prepare, upload, [preview, notice], api_name="on_upload", **private, **checked)
    upload.clear(comparer.forget, None, None, api_name="on_clear", **private)
    compare_button.click(comparer.check, inputs, [preview, notice], api_name="check", **checked).success(
        comparer.run, inputs, outputs, api_name="compare", **generate
    )
    gallery.select(_pick_example, None, upload, api_name="example").then(
        comparer.run, inputs, outputs, api_name="compare_example", **generate
    )


def setting_slider(*args: Any, **kwargs: Any) -> gr.Slider:
    """A `gr.Slider` whose value reaches the handler as sent: `Comparer` checks every setting and names the one that
    is wrong, where Gradio's own check answers a missing or non-numeric value from an API caller with raw Python text.
    (Replaced on the instance: Gradio writes a ``.pyi`` stub beside any module that subclasses a component.)"""
    slider = gr.Slider(*args, **kwargs)
    slider.preprocess = lambda payload: payload  # type: ignore[method-assign]
    return slider


def _pick_example(event: gr.EventData) -> str:
    """The clicked example's file. `gr.EventData`, not `gr.SelectData`: Gradio builds the latter from the request
    before this runs, and an API call without a gallery click (no event data) would fail there with a raw error."""
    examples = load_examples()
    data = event._data if isinstance(getattr(event, "_data", None), dict) else {}
    index = data.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(examples):
        raise refusal(f"/example needs a click on one of the {len(examples)} gallery examples; call /compare instead.")
    return str(examples[index].path)


def _describe(checkpoint) -> str:
    def short(reference: str) -> str:
        return reference if is_hub_id(reference) else Path(reference).name

    adapter = f" + LoRA `{short(checkpoint.adapter)}`" if checkpoint.adapter else ""
    return f"`{short(checkpoint.model)}`{adapter} · prompt `{checkpoint.prompt}`"


# ------------------------------------------------------------------------------------------ Results


def _results_tab(comparer: Comparer, folder: Path | None) -> None:
    results_path = folder / RESULTS_FILE if folder else None
    if results_path is None or not results_path.is_file():
        gr.Markdown(
            "No evaluation results beside this model set yet. Run "
            f"`python -m train.evaluate --models {comparer.model_set.spec.source or '<set.yaml>'}` to write them."
        )
    else:
        _our_results(comparer, results_path)
    _paper_results()


def _our_results(comparer: Comparer, path: Path) -> None:
    try:
        results = load_results(path)
    except (ResultsError, OSError, json.JSONDecodeError) as err:
        gr.Markdown(f"The results file `{path.name}` could not be read: {err}")
        return
    titles = {name: comparer.titles[name] for name in comparer.names}
    other = scored_other_weights(results, comparer.model_set.spec.checkpoints)
    if other:  # e.g. a set re-exported, or trained again, without evaluating it again
        logger.warning("%s scored other weights than the set has now for %s", path, ", ".join(other))
        gr.Markdown(
            f"⚠️ **These results are not of the weights this app serves**: `{path.name}` scored other weights for "
            f"{', '.join(other)} (by their fingerprints). Re-run `python -m train.evaluate --models <this set>`.",
            elem_id="results-stale",
        )
    decoding = results.generation.describe() if results.generation else "decoding not recorded"
    source = f"Source: {path.name} ({results.created}), `python -m train.evaluate`, {decoding}"
    gr.Markdown(
        "## Our evaluation\nIn-distribution (the training data's site and labels) against cross-dataset (the "
        "other site, scored on its own label set). Intervals: 95% bootstrap over images; differences are paired. "
        f"{source}."
    )
    gr.Plot(plots.macro_f1_figure(results, titles, source), elem_id="plot-macro-f1", show_label=False)
    gr.Dataframe(plots.metrics_rows(results, titles), headers=plots.METRICS_HEADERS, interactive=False,
                 label="Micro / macro precision, recall, F1, fail rate (unparseable outputs) and truncation rate "
                       "(outputs that hit the token budget without a stop token)")  # fmt: skip
    if results.comparisons:
        gr.Dataframe(plots.comparison_rows(results, titles), headers=plots.COMPARISON_HEADERS, interactive=False,
                     label="Paired bootstrap differences of macro-F1")  # fmt: skip
    gr.Plot(plots.per_label_figure(results, titles), elem_id="plot-per-label", show_label=False)


def _paper_results() -> None:
    tables = load_paper_tables()
    gr.Markdown(f"## The paper's numbers — reported, not measured by us\nSource: {paper_source()}")
    gr.Plot(plots.paper_figure([tables["table5"], tables["table6"]]), elem_id="plot-paper", show_label=False)
    with gr.Accordion("The paper's Tables 1–4", open=False):
        for key in ("table1", "table2", "table3", "table4"):
            table = tables[key]
            headers, rows = plots.paper_rows(table)
            label = f"Paper Table {key.removeprefix('table')}: {table.title} ({table.dataset})"
            gr.Dataframe(rows, headers=headers, interactive=False, label=label)


# ----------------------------------------------------------------------------------------- Training


def _training_tab(folder: Path | None) -> None:
    logs = folder / LOGS_DIR if folder else None
    if logs is None or not logs.is_dir():
        gr.Markdown(
            "This model set has no training logs beside it (a `logs/` folder with sft_log.json, grpo_log.json)."
        )
        return
    gr.Markdown(f"Training logs from `{logs.name}/` beside the model set, as written by `python -m train.grpo`.")
    sft, grpo = _read_log(logs / "sft_log.json"), _read_log(logs / "grpo_log.json")
    if sft is not None:
        gr.Plot(plots.sft_figure(sft), elem_id="plot-sft", show_label=False)
    if grpo is not None:
        with gr.Row():
            gr.Plot(plots.grpo_reward_figure(grpo), elem_id="plot-grpo-reward", show_label=False)
            gr.Plot(plots.grpo_kl_figure(grpo), elem_id="plot-grpo-kl", show_label=False)
        with gr.Row():
            gr.Plot(plots.grpo_length_figure(grpo), elem_id="plot-grpo-length", show_label=False)
            gr.Plot(plots.grpo_clipping_figure(grpo), elem_id="plot-grpo-clipping", show_label=False)
        best = grpo.get("best")
        if best:
            gr.Markdown(
                f"Best validation macro-F1 {best['macro_f1']:.3f} at step {best['step']}: the GRPO checkpoint."
            )


def _read_log(path: Path):
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError) as err:
        gr.Markdown(f"`{path.name}` could not be read: {err}")
        return None


# -------------------------------------------------------------------------------------------- About


def _shown_path(reference: str | Path) -> str:
    """A Hub id as it is; a local path relative to the working directory when it is inside it."""
    if isinstance(reference, str) and is_hub_id(reference):
        return reference
    path = Path(reference).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def _about_tab(model_set: ModelSet, folder: Path | None) -> None:
    spec = model_set.spec
    rows = "\n".join(
        f"| {c.display_title} | `{_shown_path(c.model)}` | {f'`{_shown_path(c.adapter)}`' if c.adapter else '—'} "
        f"| `{c.prompt}` |"
        for c in spec.checkpoints
    )
    source = _shown_path(spec.source) if spec.source else "built in code"
    held_minutes = held_seconds() / 60
    gr.Markdown(
        f"""## About
{DISCLAIMER}

**Model set `{spec.name}`** — {spec.description or "no description"} (file: `{source}`)

| Checkpoint | Model | LoRA adapter | Prompt |
|---|---|---|---|
{rows}

**How it was made.** The bundled set is regenerated from nothing by
`python -m train.grpo --config train/recipes/tiny/grpo.yaml` (data → base → SFT → GRPO → evaluation, ~10 minutes
on 2 CPU cores); the paper-scale recipes are in `train/recipes/medgemma-4b/`. Evaluate any set with
`python -m train.evaluate --models <set.yaml>`.

**The paper.** *Benchmark Success, Clinical Failure: When Reinforcement Learning Optimizes for Benchmarks, Not
Patients* ([arXiv 2512.23090]({PAPER_URL})): SFT on 2,000 teacher reasoning traces, then GRPO on 1,000 samples;
GRPO gains in-distribution (CheXpert) and loses cross-dataset (NIH).

**Privacy.** *Your file* is deleted as soon as the server has read it (on this page: the moment it arrives),
and whenever a request is refused, cancelled or turned away; an upload no request reads goes after a minute.
*The image* the models see — greyscale, at their input resolution, no metadata — is kept in the server's memory
for your session, so you can compare again: until you close this tab or clear the upload, and at most
{held_minutes:g} minutes after the upload. DICOM metadata is neither kept, shown nor logged, except the view
position (to warn about lateral films). The log has one line per comparison or refusal, never your data. Gradio
itself keeps the public example images and, while a request waits or runs, its values in memory. Nothing leaves
this machine: no analytics, no fonts from the web, no URL fetched for you. The hosting platform's own request
logs are outside this app.
"""
    )
    card = folder / MODEL_CARD if folder else None
    if card is not None and card.is_file():
        with gr.Accordion("Model card", open=False):
            gr.Markdown(card.read_text())
