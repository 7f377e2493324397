"""Evaluation results: schema v2 (``chexreason.eval/2``), validated with pydantic, and its loader and writers.

An evaluation of a model set is two files side by side. The **summary** (``eval.json``; `EvalResults`, see its
fields) says what was scored and how — generation budget and decoding, bootstrap seeds, the data's and each
checkpoint's weights' fingerprints (`chexreason.fingerprints`) — and the numbers: per run `chexreason.metrics`
scores, the ``truncation_rate`` (share of answers that hit ``max_new_tokens`` without a stop token, beside
``metrics.fail_rate``, the share not parseable), the macro-F1 interval and ``timings`` (``seconds`` and
``images_per_second`` of the batched call that served the run, shared by the checkpoints of one pass); and the
paired comparisons. Unknown keys, wrong types and values out of range are errors naming the file and field.

The **records** (``eval.records.jsonl`` beside it, named with its count and sha256 in ``records``) hold one JSON
object (`Record`) per line and per (dataset, checkpoint, prompt, image), image by image:

    {"dataset": "test_phantom_a", "checkpoint": "sft", "prompt": "free_reasoning", "index": 0,
     "source": "phantom-a-0-003104", "truth": ["Edema"], "output": "<think>…", "predicted": ["Edema"],
     "parseable": true, "truncated": false, "n_tokens": 87}

``source`` is a phantom id (redrawn by `chexreason.data.phantom`) or a path relative to the image folder of
the split's ``data.splits[…].images`` dataset — never absolute. `iter_records` / `page_records` stream them a
line at a time; `RecordWriter` appends (all in `chexreason.records`). `load_results` also reads v1 files (runs
with embedded ``predictions``), upgrading them in memory. The paper's reported numbers are in `chexreason.paper`.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from typing_extensions import TypedDict

from chexreason import atomic
from chexreason.fingerprints import STRICT, CheckpointWeights, DataFingerprint, Strict, sha256_file
from chexreason.fingerprints import fingerprint as fingerprint  # re-exported: its home was here
from chexreason.labels import resolve_label_set
from chexreason.paper import PaperTable as PaperTable  # re-exported: the paper's numbers lived here
from chexreason.paper import load_paper_tables as load_paper_tables
from chexreason.paper import paper_source as paper_source
from chexreason.records import Count, Record, RecordsFile, RecordWriter, page_of, read_json, validated
from chexreason.records import ResultsError as ResultsError  # re-exported: the records API lived here
from chexreason.records import iter_records as iter_records
from chexreason.records import page_records as page_records
from chexreason.records import records_path as records_path

SCHEMA = "chexreason.eval/2"
SCHEMA_V1 = "chexreason.eval/1"


# ------------------------------------------------------------------------------------------ values

Unit = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[int, Field(ge=1)]


class LabelScore(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    precision: Unit
    recall: Unit
    f1: Unit
    support: Count


class Metrics(TypedDict):
    """`chexreason.metrics.score` output (a plain dict once validated)."""

    __pydantic_config__ = STRICT  # type: ignore[misc]
    n: Positive
    labels: list[str]
    micro_precision: Unit
    micro_recall: Unit
    micro_f1: Unit
    macro_precision: Unit
    macro_recall: Unit
    macro_f1: Unit
    per_label: dict[str, LabelScore]
    fail_rate: Unit


class _Interval(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    estimate: float
    low: float
    high: float
    confidence: Annotated[float, Field(gt=0, lt=1)]
    n_resamples: Positive
    seed: int


def _interval_in(bottom: float, top: float):
    def check(interval: dict) -> dict:
        for key in ("estimate", "low", "high"):
            if not bottom <= interval[key] <= top:
                raise ValueError(f"{key} {interval[key]} is outside [{bottom}, {top}]")
        if not interval["low"] <= interval["estimate"] <= interval["high"]:
            raise ValueError(f"estimate {interval['estimate']} is outside [{interval['low']}, {interval['high']}]")
        return interval

    return AfterValidator(check)


Interval = Annotated[_Interval, _interval_in(0, 1)]  # a macro-F1 and its bootstrap interval
Difference = Annotated[_Interval, _interval_in(-1, 1)]  # candidate − baseline, paired


class Timings(TypedDict):
    __pydantic_config__ = STRICT  # type: ignore[misc]
    seconds: Annotated[float, Field(ge=0)]
    images_per_second: Annotated[float, Field(ge=0)]


# ------------------------------------------------------------------------------------------ summary


class Generation(Strict):
    """How the answers were generated (`chexreason.modeling.GenerationSettings`, plus the batch size)."""

    max_new_tokens: Positive | None = None  # the budget of every run; null: budgets differ (see each run's)
    decoding: Literal["greedy", "sampling"]
    temperature: Annotated[float, Field(gt=0)] | None = None  # sampling only
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None  # sampling only
    seed: int | None = None  # sampling only
    batch_size: Positive | None = None

    def describe(self) -> str:
        """E.g. ``greedy, at most 192 new tokens``."""
        budget = f"at most {self.max_new_tokens}" if self.max_new_tokens else "each checkpoint's own budget of"
        return f"{self.decoding}, {budget} new tokens"

    @model_validator(mode="after")
    def _sampling_fields(self) -> Generation:
        sampling = (self.temperature, self.top_p)
        if (self.decoding == "greedy") != all(value is None for value in sampling):
            raise ValueError("temperature and top_p are set exactly when decoding is 'sampling'")
        return self


class Bootstrap(Strict):
    n_resamples: Positive
    seed: int
    confidence: Annotated[float, Field(gt=0, lt=1)]


def _known_label_set(name: str) -> str:
    resolve_label_set(name)  # ValueError: unknown label set
    return name


class EvalRun(Strict):
    """One checkpoint scored on one dataset with one prompt."""

    checkpoint: str
    dataset: str
    label_set: Annotated[str, AfterValidator(_known_label_set)]
    prompt: str
    metrics: Metrics
    truncation_rate: Unit | None = None  # null: not recorded (v1 files)
    max_new_tokens: Positive | None = None  # the budget its answers had; null: not recorded (older files)
    macro_f1_ci: Interval | None = None
    timings: Timings | None = None

    @field_validator("metrics")
    @classmethod
    def _labels_of_the_set(cls, metrics: dict, info: ValidationInfo) -> dict:
        if "label_set" not in info.data:  # an unknown label set: that error is reported
            return metrics
        labels = set(resolve_label_set(info.data["label_set"]))
        if set(metrics["per_label"]) != labels or set(metrics["labels"]) != labels:
            raise ValueError(f"per_label: {sorted(metrics['per_label'])} are not the {info.data['label_set']} labels")
        return metrics


class Comparison(Strict):
    """A paired bootstrap comparison of two checkpoints on the same images: candidate − baseline."""

    dataset: str
    label_set: str
    baseline: str
    candidate: str
    macro_f1_difference: Difference


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class EvalResults(Strict):
    """The summary of one evaluation of a model set; its per-image records are read with `iter_records`."""

    model_config = ConfigDict(**STRICT, populate_by_name=True)
    schema_id: Literal["chexreason.eval/2"] = Field(default=SCHEMA, alias="schema")
    model_set: str
    created: str = Field(default_factory=_now)
    generation: Generation | None = None  # null: not recorded (v1 files without a run config)
    bootstrap: Bootstrap | None = None
    data: DataFingerprint = Field(default_factory=lambda: DataFingerprint(manifest=None))
    checkpoints: dict[str, CheckpointWeights] = Field(default_factory=dict)  # weights scored; {}: not recorded
    runs: list[EvalRun]
    comparisons: list[Comparison] = Field(default_factory=list)
    records: RecordsFile | None = None
    _folder: Path | None = PrivateAttr(default=None)  # where the records file is, once loaded
    _memory: list[Record] | None = PrivateAttr(default=None)  # a v1 file's predictions, upgraded

    @model_validator(mode="after")
    def _references(self) -> EvalResults:
        keys = {(r.checkpoint, r.dataset) for r in self.runs}
        for i, run in enumerate(self.runs):
            split = self.data.splits.get(run.dataset)
            if self.data.splits and split is None:
                raise ValueError(f"runs[{i}]: dataset {run.dataset!r} is not among data.splits")
            if split is not None and (split.n, split.label_set) != (run.metrics["n"], run.label_set):
                raise ValueError(f"runs[{i}]: n and label_set differ from data.splits[{run.dataset!r}]")
            if self.checkpoints and run.checkpoint not in self.checkpoints:
                raise ValueError(f"runs[{i}]: checkpoint {run.checkpoint!r} has no fingerprint in checkpoints")
        for i, c in enumerate(self.comparisons):
            if not {(c.baseline, c.dataset), (c.candidate, c.dataset)} <= keys:
                raise ValueError(f"comparisons[{i}]: no runs of {c.baseline!r} and {c.candidate!r} on {c.dataset!r}")
        return self

    def run(self, checkpoint: str, dataset: str, prompt: str | None = None) -> EvalRun:
        """The run of `checkpoint` on `dataset` (with `prompt`, for a prompt sweep; else the first)."""
        for run in self.runs:
            if run.checkpoint == checkpoint and run.dataset == dataset and prompt in (None, run.prompt):
                return run
        raise KeyError(f"no run of {checkpoint!r} on {dataset!r}" + (f" with {prompt!r}" if prompt else ""))

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)

    @property
    def records_file(self) -> Path | None:
        """The records file of a loaded summary (None: not loaded from disk, or saved without records)."""
        return self._folder / self.records.file if self._folder is not None and self.records else None

    def iter_records(
        self, dataset: str | None = None, checkpoint: str | None = None, prompt: str | None = None
    ) -> Iterator[Record]:
        """This evaluation's records, streamed from its records file (or from memory, for a v1 file)."""
        if self._memory is not None:
            filters = {"dataset": dataset, "checkpoint": checkpoint, "prompt": prompt}
            return (r for r in self._memory if all(v is None or getattr(r, k) == v for k, v in filters.items()))
        if self.records_file is None:
            raise ResultsError(f"results of {self.model_set!r}: no records file (evaluated with --no_predictions?)")
        return iter_records(self.records_file, dataset, checkpoint, prompt, expect=self.records)

    def page_records(self, offset: int = 0, limit: int | None = None, **filters: str | None) -> list[Record]:
        """One page of `iter_records(**filters)`."""
        return page_of(self.iter_records(**filters), offset, limit)


# ------------------------------------------------------------------------------------------ files


def _check_records(path: Path, results: EvalResults, name: str) -> RecordsFile:
    """Every line a valid record, one per image of each run: the file's entry in the summary."""
    counts = Counter((r.dataset, r.checkpoint, r.prompt) for r in iter_records(path))
    expected = Counter({(r.dataset, r.checkpoint, r.prompt): r.metrics["n"] for r in results.runs})
    if counts != expected:
        raise ResultsError(f"{path}: records per (dataset, checkpoint, prompt) {dict(counts)} differ from the runs' n")
    return RecordsFile(file=name, n=sum(counts.values()), sha256=sha256_file(path))


def save_results(results: EvalResults, path: str | Path, records: str | Path | Iterable[Record] | None = None) -> None:
    """Write the summary to `path` with its records beside it; both are checked first, then replaced atomically.

    `records` is a finished JSON Lines file (moved beside the summary, e.g. the `RecordWriter` file of an
    evaluation) or the records themselves (``results.iter_records()`` of a v1 file converts it); they are
    checked against the runs (one per image and run), hashed and named in ``results.records``. With None the
    summary keeps the ``records`` it has.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = records_path(path)
    written = None  # a records file this call wrote, removed again if the check fails
    if records is not None and not isinstance(records, str | Path):
        with RecordWriter(target.with_name(f".{target.name}.partial")) as writer:
            writer.write(records)
        records = written = writer.path
    try:
        entry = results.records if records is None else _check_records(Path(records), results, target.name)
        data = results.model_copy(update={"records": entry}).to_dict()
        validated(EvalResults, data, str(path))  # a bad summary is never written, nor its records installed
    except ResultsError:
        if written is not None:
            written.unlink(missing_ok=True)
        raise
    if records is not None:
        os.replace(records, target)
    atomic.write_text(path, json.dumps(data, indent=1) + "\n")
    results.records, results._folder = entry, path.parent


def scored_other_weights(results: EvalResults, checkpoints: Iterable) -> list[str]:
    """The checkpoints (`chexreason.model_set_spec.CheckpointSpec`) whose weights are not those `results` scored:
    fingerprinted now (`chexreason.fingerprints.model_set_fingerprints`) and compared with the recorded digests.
    A checkpoint the results never scored, or results that recorded no fingerprints (v1), count as other."""
    from chexreason.fingerprints import model_set_fingerprints

    checkpoints = list(checkpoints)
    try:
        now = model_set_fingerprints(checkpoints)
    except (OSError, ValueError) as error:  # weights gone or unreadable: not what was scored
        return [f"{c.name} ({error})" for c in checkpoints]
    scored = results.checkpoints
    return [name for name, weights in now.items() if name not in scored or scored[name].digest != weights["digest"]]


def _upgrade_v1(obj: dict, where: str) -> tuple[dict, list[tuple[str, dict]]]:
    """A v1 file as a v2 summary, and its embedded predictions as records (truncated and n_tokens unknown)."""
    if not isinstance(obj.get("runs"), list) or not all(isinstance(run, dict) for run in obj["runs"]):
        raise ResultsError(f"{where}: runs: expected a list of objects")
    runs, records, config, interval = [], [], None, None
    for i, run in enumerate(obj["runs"]):
        run = dict(run)
        run_config, _ = run.pop("config", None), run.pop("fingerprints", None)
        config = config or run_config
        interval = interval or run.get("macro_f1_ci")
        timings = run.pop("timings", None)
        if isinstance(timings, dict) and timings:  # v1 documented samples_per_second but wrote images_per_second
            speed = timings.get("images_per_second", timings.get("samples_per_second"))
            run["timings"] = {"seconds": timings.get("seconds"), "images_per_second": speed}
        keys = {k: run.get(k) for k in ("dataset", "checkpoint", "prompt")}
        predictions = run.pop("predictions", None) or []
        if not isinstance(predictions, list):
            raise ResultsError(f"{where}: runs[{i}].predictions: expected a list")
        for j, p in enumerate(predictions):
            p = p if isinstance(p, dict) else {}
            predicted = p.get("predicted")
            record = {**keys, "index": j, "source": _v1_source(p.get("id")), "truth": p.get("truth"),
                      "predicted": predicted,
                      "output": p.get("output", ""), "parseable": predicted is not None,
                      "truncated": None}  # fmt: skip
            records.append((f"runs[{i}].predictions[{j}]", record))
        runs.append(run)
    summary = {k: v for k, v in obj.items() if k not in ("schema", "runs")}
    summary.update(schema=SCHEMA, runs=runs, data={"manifest": None, "splits": {}})
    if isinstance(config, dict):
        summary["generation"] = {k: config.get(k) for k in ("max_new_tokens", "decoding", "batch_size")}
    if isinstance(interval, dict):
        summary["bootstrap"] = {k: interval.get(k) for k in ("n_resamples", "seed", "confidence")}
    return summary, records


def _v1_source(image_id: Any) -> Any:
    """v1 named real images by their absolute local path, which v2 never records: such a source is unknown."""
    if isinstance(image_id, str) and (PurePosixPath(image_id).is_absolute() or PureWindowsPath(image_id).anchor):
        return None
    return image_id


def load_results(path: str | Path) -> EvalResults:
    """Read and validate a results summary (v2, or v1 upgraded in memory); raises ResultsError naming the file
    and the field. Records are read on demand with ``results.iter_records()``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read results JSON: {e}") from None
    obj = read_json(text, f"{path}: cannot read results JSON")
    schema = obj.get("schema") if isinstance(obj, dict) else None
    if schema == SCHEMA_V1:
        obj, memory = _upgrade_v1(obj, str(path))
        results = validated(EvalResults, obj, str(path))
        results._memory = [validated(Record, record, f"{path}: {where}") for where, record in memory]
        return results
    if schema != SCHEMA:
        raise ResultsError(f"{path}: schema {schema!r} is not {SCHEMA!r}; re-run `python -m train.evaluate`")
    results = validated(EvalResults, obj, str(path))
    results._folder = path.parent
    return results
