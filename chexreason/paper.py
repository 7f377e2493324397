"""The paper's reported numbers (arXiv 2512.23090, Tables 1-6), from ``paper_results.json`` beside this module.

They are reported figures, never ours: the app and README show them beside our evaluation (`chexreason.results`),
always labelled as the paper's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from chexreason.labels import resolve_label_set

_PAPER_FILE = Path(__file__).with_name("paper_results.json")


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's tables, as reported.

    Tables 1-4 have `rows` (row key → values in `metrics` order); Tables 5-6 have `models`,
    `per_label_f1` (label → one F1 per model) and `macro_f1` (one per model).
    """

    key: str
    title: str
    dataset: str
    label_set: str
    metrics: tuple[str, ...] = ()
    rows: dict[str, tuple[float, ...]] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    per_label_f1: dict[str, tuple[float, ...]] = field(default_factory=dict)
    macro_f1: tuple[float, ...] = ()

    def row(self, key: str) -> dict[str, float]:
        """A row of Tables 1-4 as metric → value."""
        return dict(zip(self.metrics, self.rows[key], strict=True))


@cache
def load_paper_tables() -> dict[str, PaperTable]:
    """The paper's Tables 1-6 (``"table1"`` … ``"table6"``), checked for shape on load."""
    data = json.loads(_PAPER_FILE.read_text())
    tables = {}
    for key, t in data["tables"].items():
        tuples = {k: tuple(t.get(k, ())) for k in ("metrics", "models", "macro_f1")}
        nested = {k: {r: tuple(v) for r, v in t.get(k, {}).items()} for k in ("rows", "per_label_f1")}
        table = PaperTable(key, t["title"], t["dataset"], t["label_set"], **tuples, **nested)
        for row, values in table.rows.items():
            if len(values) != len(table.metrics):
                raise ValueError(f"paper {key} row {row!r}: {len(values)} values for {len(table.metrics)} metrics")
        if table.per_label_f1:
            if set(table.per_label_f1) != set(resolve_label_set(table.label_set)):
                raise ValueError(f"paper {key}: labels are not the {table.label_set} set")
            if any(len(v) != len(table.models) for v in (*table.per_label_f1.values(), table.macro_f1)):
                raise ValueError(f"paper {key}: a row does not have one value per model")
        tables[key] = table
    return tables


def paper_source() -> str:
    """How to cite the paper's numbers in the app and README."""
    data = json.loads(_PAPER_FILE.read_text())
    return f"{data['paper']} (arXiv {data['arxiv']}) — {data['note']}"
