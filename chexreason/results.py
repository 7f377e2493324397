"""Evaluation results: a versioned JSON schema, its validating loader, and the paper's reported numbers.

A results file holds every run of one evaluation of a model set (each checkpoint on each dataset) and the
paired comparisons between checkpoints (e.g. GRPO − SFT):

    {
      "schema": "chexreason.eval/1",
      "model_set": "tiny",
      "created": "2026-11-25T18:00:00+00:00",
      "runs": [{"checkpoint": "sft", "dataset": "phantom-a/test", "label_set": "chexpert14",
                "prompt": "free_reasoning", "config": {...}, "fingerprints": {"config": "…", "data": "…"},
                "metrics": <chexreason.metrics.score output>, "macro_f1_ci": <bootstrap interval> | null,
                "timings": {"seconds": 12.3, "samples_per_second": 16.2},
                "predictions": [{"id": "…", "truth": [...], "predicted": [...] | null, "output": "…"}] | null}],
      "comparisons": [{"dataset": "phantom-a/test", "label_set": "chexpert14", "baseline": "sft",
                       "candidate": "grpo", "macro_f1_difference": <bootstrap interval>}]
    }

The paper's numbers (its Tables 1-6) live in ``paper_results.json`` beside this module and are loaded with
`load_paper_tables`; they are reported figures, never ours.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from chexreason.labels import resolve_label_set

SCHEMA = "chexreason.eval/1"
_PAPER_FILE = Path(__file__).with_name("paper_results.json")
_SCORE_KEYS = ("micro_precision", "micro_recall", "micro_f1", "macro_precision", "macro_recall", "macro_f1")
_INTERVAL_KEYS = ("estimate", "low", "high")


class ResultsError(ValueError):
    """A results file that does not follow the schema; the message says where and what."""


def fingerprint(obj: Any) -> str:
    """A short, stable hash of a JSON-serialisable object (config or data manifest)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ checks


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ResultsError(f"{where}: missing {key!r}")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ResultsError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def _unit(obj: dict, key: str, where: str) -> float:
    value = _require(obj, key, (int, float), where)
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ResultsError(f"{where}.{key}: {value} is outside [0, 1]")
    return value


def _check_metrics(metrics: Any, label_set: str, where: str) -> None:
    labels = set(resolve_label_set(label_set))
    for key in (*_SCORE_KEYS, "fail_rate"):
        _unit(metrics, key, where)
    _require(metrics, "n", int, where)
    per_label = _require(metrics, "per_label", dict, where)
    if set(per_label) != labels:
        raise ResultsError(f"{where}.per_label: labels {sorted(per_label)} are not the {label_set} set")
    for label, values in per_label.items():
        for key in ("precision", "recall", "f1"):
            _unit(values, key, f"{where}.per_label[{label!r}]")


def _check_interval(interval: Any, where: str, signed: bool = False) -> None:
    for key in _INTERVAL_KEYS:
        value = _require(interval, key, (int, float), where)
        if not signed and not 0.0 <= value <= 1.0:
            raise ResultsError(f"{where}.{key}: {value} is outside [0, 1]")
    if not interval["low"] <= interval["estimate"] <= interval["high"]:
        raise ResultsError(
            f"{where}: estimate {interval['estimate']} is outside [{interval['low']}, {interval['high']}]"
        )


# ---------------------------------------------------------------------------------------- schema


@dataclass
class EvalRun:
    """One checkpoint scored on one dataset."""

    checkpoint: str
    dataset: str
    label_set: str
    prompt: str
    metrics: dict
    config: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    macro_f1_ci: dict | None = None
    predictions: list[dict] | None = None

    @classmethod
    def from_dict(cls, obj: Any, where: str = "run") -> EvalRun:
        for key in ("checkpoint", "dataset", "label_set", "prompt"):
            _require(obj, key, str, where)
        try:
            resolve_label_set(obj["label_set"])
        except ValueError as e:
            raise ResultsError(f"{where}.label_set: {e}") from None
        _check_metrics(_require(obj, "metrics", dict, where), obj["label_set"], f"{where}.metrics")
        if obj.get("macro_f1_ci") is not None:
            _check_interval(obj["macro_f1_ci"], f"{where}.macro_f1_ci")
        predictions = obj.get("predictions")
        if predictions is not None:
            if not isinstance(predictions, list):
                raise ResultsError(f"{where}.predictions: expected a list")
            for i, p in enumerate(predictions):
                _require(p, "truth", list, f"{where}.predictions[{i}]")
                if p.get("predicted") is not None and not isinstance(p["predicted"], list):
                    raise ResultsError(f"{where}.predictions[{i}].predicted: expected a list or null")
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in obj.items() if k in known})


@dataclass
class Comparison:
    """A paired bootstrap comparison of two checkpoints on the same images: candidate − baseline."""

    dataset: str
    label_set: str
    baseline: str
    candidate: str
    macro_f1_difference: dict

    @classmethod
    def from_dict(cls, obj: Any, where: str = "comparison") -> Comparison:
        for key in ("dataset", "label_set", "baseline", "candidate"):
            _require(obj, key, str, where)
        _check_interval(_require(obj, "macro_f1_difference", dict, where), f"{where}.macro_f1_difference", True)
        return cls(**{k: obj[k] for k in cls.__dataclass_fields__})


@dataclass
class EvalResults:
    """All runs and comparisons of one evaluation of a model set."""

    model_set: str
    runs: list[EvalRun]
    comparisons: list[Comparison] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema: str = SCHEMA

    def to_dict(self) -> dict:
        return asdict(self)

    def run(self, checkpoint: str, dataset: str) -> EvalRun:
        """The run of `checkpoint` on `dataset`."""
        for run in self.runs:
            if run.checkpoint == checkpoint and run.dataset == dataset:
                return run
        raise KeyError(f"no run of {checkpoint!r} on {dataset!r}")

    @classmethod
    def from_dict(cls, obj: Any) -> EvalResults:
        if not isinstance(obj, dict):
            raise ResultsError("results: expected a JSON object")
        schema = obj.get("schema")
        if schema != SCHEMA:
            raise ResultsError(f"results: schema {schema!r} is not {SCHEMA!r}; re-run `python -m train.evaluate`")
        runs = [EvalRun.from_dict(r, f"runs[{i}]") for i, r in enumerate(_require(obj, "runs", list, "results"))]
        comparisons = [
            Comparison.from_dict(c, f"comparisons[{i}]") for i, c in enumerate(obj.get("comparisons") or [])
        ]
        return cls(
            model_set=_require(obj, "model_set", str, "results"),
            runs=runs,
            comparisons=comparisons,
            created=obj.get("created", ""),
        )


def save_results(results: EvalResults, path: str | Path) -> None:
    """Write results as indented JSON (validated first, so a bad file is never written)."""
    data = results.to_dict()
    EvalResults.from_dict(json.loads(json.dumps(data)))
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def load_results(path: str | Path) -> EvalResults:
    """Read and validate a results file; raises ResultsError with the file name and the fault."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: cannot read results JSON: {e}") from None
    try:
        return EvalResults.from_dict(obj)
    except ResultsError as e:
        raise ResultsError(f"{path}: {e}") from None


# ---------------------------------------------------------------------------------- paper numbers


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
        table = PaperTable(
            key=key,
            title=t["title"],
            dataset=t["dataset"],
            label_set=t["label_set"],
            metrics=tuple(t.get("metrics", ())),
            rows={k: tuple(v) for k, v in t.get("rows", {}).items()},
            models=tuple(t.get("models", ())),
            per_label_f1={k: tuple(v) for k, v in t.get("per_label_f1", {}).items()},
            macro_f1=tuple(t.get("macro_f1", ())),
        )
        for row, values in table.rows.items():
            if len(values) != len(table.metrics):
                raise ResultsError(f"paper {key} row {row!r}: {len(values)} values for {len(table.metrics)} metrics")
        if table.per_label_f1:
            if set(table.per_label_f1) != set(resolve_label_set(table.label_set)):
                raise ResultsError(f"paper {key}: labels are not the {table.label_set} set")
            if any(len(v) != len(table.models) for v in (*table.per_label_f1.values(), table.macro_f1)):
                raise ResultsError(f"paper {key}: a row does not have one value per model")
        tables[key] = table
    return tables


def paper_source() -> str:
    """How to cite the paper's numbers in the app and README."""
    data = json.loads(_PAPER_FILE.read_text())
    return f"{data['paper']} (arXiv {data['arxiv']}) — {data['note']}"
