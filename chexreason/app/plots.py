"""Plotly figures and tables for the Results and Training tabs.

Every figure says where its numbers come from: our evaluation run (the results JSON beside the model set,
written by `python -m train.evaluate`) or the paper's tables (`chexreason/paper_results.json`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from chexreason.labels import CHEXPERT_LABELS
from chexreason.results import EvalResults, PaperTable

# Which evaluation is in- and which is cross-dataset follows the label set: the models are trained on
# CheXpert-vocabulary data (site a / CheXpert) and tested across on NIH's label set (site b / NIH).
DISTRIBUTION = {"chexpert14": "in-distribution", "nih9": "cross-dataset", "nih10": "cross-dataset"}
COLOURS = ("#7f7f7f", "#1f77b4", "#d62728", "#2ca02c")  # base grey, SFT blue, GRPO red, a fourth green
_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 60, "b": 60}, "height": 420}


def dataset_title(dataset: str, label_set: str) -> str:
    """``test_phantom_a`` + chexpert14 → "phantom_a · in-distribution (chexpert14)"."""
    short = dataset.removeprefix("test_")
    return f"{short} · {DISTRIBUTION.get(label_set, label_set)} ({label_set})"


def _datasets(results: EvalResults) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for run in results.runs:
        seen.setdefault(run.dataset, run.label_set)
    return sorted(seen.items(), key=lambda item: (DISTRIBUTION.get(item[1]) != "in-distribution", item[0]))


def macro_f1_figure(results: EvalResults, titles: Mapping[str, str], source: str) -> go.Figure:
    """Macro-F1 of each checkpoint on each dataset, with its bootstrap interval."""
    figure = go.Figure()
    datasets = _datasets(results)
    for i, (name, title) in enumerate(titles.items()):
        runs = [_run_or_none(results, name, dataset) for dataset, _ in datasets]
        values = [run.metrics["macro_f1"] if run else None for run in runs]
        cis = [run.macro_f1_ci if run else None for run in runs]
        figure.add_bar(
            name=title,
            x=[dataset_title(d, s) for d, s in datasets],
            y=values,
            marker_color=COLOURS[i % len(COLOURS)],
            text=[f"{v:.3f}" if v is not None else "" for v in values],
            # Inside the bar, clear of the interval's caps; outside only where the bar is too short to hold it.
            textposition=["inside" if v is not None and v > 0.05 else "outside" for v in values],
            insidetextanchor="middle",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [ci["high"] - v if ci and v is not None else 0 for ci, v in zip(cis, values, strict=True)],
                "arrayminus": [
                    v - ci["low"] if ci and v is not None else 0 for ci, v in zip(cis, values, strict=True)
                ],
            },
        )
    n = {run.dataset: run.metrics["n"] for run in results.runs}
    sizes = ", ".join(f"{d.removeprefix('test_')} n={n[d]}" for d, _ in datasets)
    figure.update_layout(
        title=f"Macro-F1 per dataset, 95% bootstrap intervals — our evaluation ({sizes})",
        yaxis_title="macro-F1",
        barmode="group",
        legend_title="checkpoint",
        **_LAYOUT,
    )
    figure.add_annotation(text=source, showarrow=False, xref="paper", yref="paper", x=0, y=-0.2, font={"size": 10})
    return figure


def _run_or_none(results: EvalResults, checkpoint: str, dataset: str):
    try:
        return results.run(checkpoint, dataset)
    except KeyError:
        return None


def per_label_figure(results: EvalResults, titles: Mapping[str, str]) -> go.Figure:
    """Per-label F1 as a heatmap: labels down, checkpoint × dataset across; blank where a set has no such label."""
    columns, z = [], []
    for dataset, _ in _datasets(results):
        for name, title in titles.items():
            run = _run_or_none(results, name, dataset)
            if run is None:
                continue
            columns.append(f"{title}<br>{dataset.removeprefix('test_')}")
            per_label = run.metrics["per_label"]
            z.append([per_label[label]["f1"] if label in per_label else None for label in CHEXPERT_LABELS])
    rows = [list(values) for values in zip(*z, strict=True)] if z else []
    figure = go.Figure(
        go.Heatmap(
            z=rows,
            x=columns,
            y=list(CHEXPERT_LABELS),
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            text=[[f"{v:.2f}" if v is not None else "" for v in row] for row in rows],
            texttemplate="%{text}",
            hovertemplate="%{y} · %{x}<br>F1 %{z:.3f}<extra></extra>",
            colorbar={"title": "F1"},
        )
    )
    figure.update_layout(
        title="Per-label F1 — our evaluation (blank: label not in that dataset's label set)",
        **{**_LAYOUT, "height": 520},
    )
    figure.update_yaxes(autorange="reversed")
    return figure


def paper_figure(tables: Sequence[PaperTable]) -> go.Figure:
    """The paper's per-label F1 tables (5 and 6) as heatmaps, side by side."""
    figure = make_subplots(rows=1, cols=len(tables), subplot_titles=[t.title for t in tables], horizontal_spacing=0.15)
    for col, table in enumerate(tables, start=1):
        labels = [label for label in CHEXPERT_LABELS if label in table.per_label_f1]
        z = [list(table.per_label_f1[label]) for label in labels] + [list(table.macro_f1)]
        figure.add_trace(
            go.Heatmap(
                z=z,
                x=list(table.models),
                y=[*labels, "Macro-F1"],
                zmin=0,
                zmax=1,
                colorscale="Viridis",
                showscale=col == len(tables),
                text=[[f"{v:.2f}" for v in row] for row in z],
                texttemplate="%{text}",
                hovertemplate="%{y} · %{x}<br>F1 %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        figure.update_yaxes(autorange="reversed", row=1, col=col)
    figure.update_layout(
        title="Reported by the paper (arXiv 2512.23090), not measured by us: per-label F1",
        **{**_LAYOUT, "height": 560},
    )
    return figure


def metrics_rows(results: EvalResults, titles: Mapping[str, str]) -> list[list]:
    """One row per run: checkpoint, dataset, n, micro/macro P/R/F1, fail rate, truncation rate ("—": not
    recorded, a v1 results file)."""
    rows = []
    for dataset, _ in _datasets(results):
        for name, title in titles.items():
            run = _run_or_none(results, name, dataset)
            if run is None:
                continue
            m = run.metrics
            keys = ("micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1")
            truncated = "—" if run.truncation_rate is None else round(run.truncation_rate, 3)
            rows.append([title, dataset.removeprefix("test_"), m["n"], *(round(m[k], 3) for k in keys),
                         round(m["fail_rate"], 3), truncated])  # fmt: skip
    return rows


METRICS_HEADERS = ["Checkpoint", "Dataset", "n", "micro P", "micro R", "micro F1", "macro P", "macro R", "macro F1",
                   "fail rate", "truncation rate"]  # fmt: skip


def comparison_rows(results: EvalResults, titles: Mapping[str, str]) -> list[list]:
    """Paired bootstrap differences of macro-F1 (candidate − baseline) with their 95% intervals."""
    rows = []
    for c in results.comparisons:
        d = c.macro_f1_difference
        excludes_zero = d["low"] > 0 or d["high"] < 0
        rows.append([
            c.dataset.removeprefix("test_"),
            f"{titles.get(c.candidate, c.candidate)} − {titles.get(c.baseline, c.baseline)}",
            f"{d['estimate']:+.3f}",
            f"[{d['low']:+.3f}, {d['high']:+.3f}]",
            "yes" if excludes_zero else "no",
        ])  # fmt: skip
    return rows


COMPARISON_HEADERS = ["Dataset", "Difference", "macro-F1 Δ", "95% interval", "excludes 0"]


def paper_rows(table: PaperTable) -> tuple[list[str], list[list]]:
    """Headers and rows of one of the paper's Tables 1–4."""
    return ["Row", *table.metrics], [[row, *values] for row, values in table.rows.items()]


# ------------------------------------------------------------------------------------------- training


def _series(entries: Sequence[Mapping], key: str) -> tuple[list, list]:
    points = [(e["step"], e[key]) for e in entries if key in e and "step" in e and _finite(e[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _line_figure(title: str, xaxis: str, yaxis: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, **{**_LAYOUT, "height": 360})
    return figure


def sft_figure(log: Sequence[Mapping]) -> go.Figure:
    """SFT training and validation loss per optimiser step."""
    figure = _line_figure("SFT: loss (assistant tokens only)", "step", "loss")
    figure.add_scatter(name="training loss", mode="lines", x=_series(log, "loss")[0], y=_series(log, "loss")[1])
    x, y = _series(log, "eval_loss")
    figure.add_scatter(name="validation loss", mode="lines+markers", x=x, y=y)
    return figure


def grpo_reward_figure(log: Mapping) -> go.Figure:
    """GRPO reward and its parts per step, and validation macro-F1 (the paper's Figures 1–2)."""
    history = log.get("log_history", [])
    figure = _line_figure("GRPO: reward per step, validation macro-F1", "step", "value")
    parts = sorted({k for e in history for k in e if k.startswith("rewards/") and k.endswith("/mean")})
    for key in ["reward", *parts] if len(parts) > 1 else ["reward"]:  # a single part is the total: draw it once
        x, y = _series(history, key)
        name = key.removeprefix("rewards/").removesuffix("/mean").replace("_", " ") if key != "reward" else "reward"
        figure.add_scatter(name=name, mode="lines", x=x, y=y)
    x, y = _series(log.get("validation", []), "macro_f1")
    figure.add_scatter(name="validation macro-F1", mode="lines+markers", x=x, y=y)
    x, y = _series(history, "fail_rate")
    figure.add_scatter(name="fail rate", mode="lines", x=x, y=y, line={"dash": "dot"})
    return figure


def grpo_kl_figure(log: Mapping) -> go.Figure:
    """KL divergence from the reference (the SFT policy) per step."""
    figure = _line_figure("GRPO: KL to the SFT reference policy", "step", "KL")
    x, y = _series(log.get("log_history", []), "kl")
    figure.add_scatter(name="KL", mode="lines", x=x, y=y)
    return figure


def grpo_length_figure(log: Mapping) -> go.Figure:
    """Completion length per step: mean, min and max over the step's completions (the paper's Figure 3)."""
    figure = _line_figure("GRPO: completion length (tokens)", "step", "tokens")
    for key in ("mean", "min", "max"):
        x, y = _series(log.get("log_history", []), f"completions/{key}_length")
        figure.add_scatter(name=key, mode="lines", x=x, y=y)
    return figure


# What a reward-hacking study watches: each series' log key and its name in the legend.
CLIPPING_SERIES = {
    "clip_ratio/region_mean": "tokens with the importance ratio clipped",
    "completions/clipped_ratio": "completions cut off at max_completion_length",
    "grad_clip_rate": "optimizer steps with the gradient norm clipped",
}


def grpo_clipping_figure(log: Mapping) -> go.Figure:
    """What was clipped, per logging step: the PPO ratio (TRL's ``clip_ratio``; 0 on-policy, where the ratio is
    1), completions at the length limit, and the gradient norm (`chexreason.training.grpo_logs`)."""
    figure = _line_figure("GRPO: what was clipped (share)", "step", "share")
    for key, name in CLIPPING_SERIES.items():
        x, y = _series(log.get("log_history", []), key)
        if x:  # grad_clip_rate is missing from logs written before it was logged
            figure.add_scatter(name=name, mode="lines", x=x, y=y)
    return figure
