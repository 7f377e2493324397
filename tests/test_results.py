"""The results schema (v2, and v1 files read), its records and weights fingerprints; the paper's numbers."""

import json
import os
import random
import time
import tracemalloc

import pytest
from pydantic import ValidationError

from chexreason.fingerprints import checkpoint_fingerprint, fingerprint_folder
from chexreason.labels import EVAL_LABEL_SETS
from chexreason.metrics import bootstrap_macro_f1, bootstrap_macro_f1_difference, score
from chexreason.modeling import CheckpointSpec
from chexreason.results import (
    SCHEMA,
    SCHEMA_V1,
    Bootstrap,
    Comparison,
    DataFingerprint,
    EvalResults,
    EvalRun,
    Generation,
    Record,
    RecordWriter,
    ResultsError,
    fingerprint,
    iter_records,
    load_paper_tables,
    load_results,
    page_records,
    records_path,
    save_results,
)


@pytest.mark.parametrize("key", ["table5", "table6"])
def test_reported_macro_f1_is_the_mean_of_its_per_label_column(key):
    table = load_paper_tables()[key]
    assert set(table.per_label_f1) == set(EVAL_LABEL_SETS[table.label_set])
    for column, model in enumerate(table.models):
        mean = sum(values[column] for values in table.per_label_f1.values()) / len(table.per_label_f1)
        # The paper truncates to three decimals (NV-Reason's NIH column averages 0.2976, reported .297).
        assert abs(mean - table.macro_f1[column]) <= 0.001, (key, model, mean)


def test_the_papers_headline_numbers():
    t5, t6 = load_paper_tables()["table5"], load_paper_tables()["table6"]
    sft, grpo = t5.models.index("MedGemma SFT"), t5.models.index("ChexReason (SFT+GRPO)")
    # GRPO gains in-distribution (0.282 -> 0.346) and loses cross-dataset (0.299 -> 0.243).
    assert (t5.macro_f1[sft], t5.macro_f1[grpo]) == (0.282, 0.346)
    assert (t6.macro_f1[sft], t6.macro_f1[grpo]) == (0.299, 0.243)
    assert load_paper_tables()["table4"].row("hard_best_f1")["macro_f1"] == 0.258


N = 40


def _labels() -> tuple[list, dict]:
    rng = random.Random(0)
    labels = EVAL_LABEL_SETS["nih9"]
    y_true = [sorted(rng.sample(labels, 2)) for _ in range(N)]
    y_sft = [sorted(rng.sample(labels, 2)) for _ in range(N)]
    y_grpo = [None if i % 10 == 0 else t for i, t in enumerate(y_true)]
    return y_true, {"sft": y_sft, "grpo": y_grpo}


def _results() -> tuple[EvalResults, list[Record]]:
    y_true, predictions = _labels()
    runs = [
        EvalRun(
            checkpoint=name,
            dataset="test_phantom_b",
            label_set="nih9",
            prompt="free_reasoning",
            metrics=score(y_true, pred, "nih9"),
            truncation_rate=0.25 if name == "grpo" else 0.0,
            macro_f1_ci=bootstrap_macro_f1(y_true, pred, "nih9", n_resamples=100),
            timings={"seconds": 1.0, "images_per_second": 40.0},
        )
        for name, pred in predictions.items()
    ]
    diff = bootstrap_macro_f1_difference(y_true, predictions["sft"], predictions["grpo"], "nih9", n_resamples=100)
    comparison = Comparison(
        dataset="test_phantom_b", label_set="nih9", baseline="sft", candidate="grpo", macro_f1_difference=diff
    )
    records = [
        Record(
            dataset="test_phantom_b",
            checkpoint=name,
            prompt="free_reasoning",
            index=i,
            source=f"phantom-b-0-{i:06d}",
            truth=t,
            output="<think>x</think>",
            predicted=pred[i],
            parseable=pred[i] is not None,
            truncated=name == "grpo" and i % 4 == 0,
            n_tokens=7,
        )
        for i, t in enumerate(y_true)
        for name, pred in predictions.items()
    ]
    results = EvalResults(
        model_set="tiny",
        generation=Generation(max_new_tokens=64, decoding="greedy", batch_size=8),
        bootstrap=Bootstrap(n_resamples=100, seed=0, confidence=0.95),
        data=DataFingerprint(manifest="0123456789abcdef", splits={}),
        runs=runs,
        comparisons=[comparison],
    )
    return results, records


def test_round_trip(tmp_path):
    results, records = _results()
    save_results(results, tmp_path / "eval.json", records=records)
    loaded = load_results(tmp_path / "eval.json")
    assert loaded.to_dict() == results.to_dict()
    assert loaded.run("grpo", "test_phantom_b").metrics["fail_rate"] == 0.1
    assert list(loaded.iter_records()) == records
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["schema"] == SCHEMA and summary["records"]["n"] == 2 * N
    assert summary["records"]["file"] == "eval.records.jsonl" == records_path(tmp_path / "eval.json").name
    assert not list(tmp_path.glob(".*partial"))  # written atomically: no leftovers
    with pytest.raises(KeyError):
        loaded.run("base", "test_phantom_b")


def test_truncation_rate_matches_the_share_of_truncated_records():
    results, records = _results()
    for run in results.runs:
        flags = [r.truncated for r in records if r.checkpoint == run.checkpoint]
        assert run.truncation_rate == sum(flags) / len(flags)


def _v1(results: EvalResults, records: list[Record]) -> dict:
    """The same evaluation in the v1 layout (``chexreason.eval/1``): predictions embedded in each run."""
    runs = []
    for run in results.runs:
        old = run.model_dump(exclude={"truncation_rate"})
        old["timings"] = {"seconds": 1.0, "samples_per_second": 40.0}  # v1 documented this key
        old["config"] = {"batch_size": 8, "max_new_tokens": 64, "decoding": "greedy", "seed": 0}
        old["fingerprints"] = {"config": "c", "data": "d"}
        old["predictions"] = [{"id": r.source, "truth": r.truth, "predicted": r.predicted, "output": r.output}
                              for r in records if r.checkpoint == run.checkpoint]  # fmt: skip
        runs.append(old)
    comparisons = [c.model_dump() for c in results.comparisons]
    return {
        "model_set": "tiny",
        "runs": runs,
        "comparisons": comparisons,
        "created": "x",
        "schema": SCHEMA_V1,
    }


def test_v1_files_load_upgraded(tmp_path):
    results, records = _results()
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(_v1(results, records)))
    loaded = load_results(path)
    assert [r.metrics for r in loaded.runs] == [r.metrics for r in results.runs]
    assert [r.macro_f1_ci for r in loaded.runs] == [r.macro_f1_ci for r in results.runs]
    assert loaded.comparisons == results.comparisons
    assert loaded.runs[0].truncation_rate is None and loaded.runs[0].timings["images_per_second"] == 40.0
    assert loaded.generation.max_new_tokens == 64 and loaded.bootstrap.n_resamples == 100
    upgraded = list(loaded.iter_records(checkpoint="grpo"))
    assert [r.predicted for r in upgraded] == [r.predicted for r in records if r.checkpoint == "grpo"]
    assert all(r.truncated is None and r.parseable == (r.predicted is not None) for r in upgraded)
    save_results(loaded, tmp_path / "v2" / "eval.json", records=loaded.iter_records())  # converts to v2
    assert len(list(load_results(tmp_path / "v2" / "eval.json").iter_records())) == 2 * N


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda d: d.update(schema="chexreason.eval/0"), "schema"),
        (lambda d: d.pop("model_set"), "eval.json: model_set: Field required"),
        (lambda d: d.update(colour="red"), r"colour: Extra inputs are not permitted"),
        (lambda d: d["runs"][0].update(seed=3), r"runs\[0\].seed: Extra inputs are not permitted"),
        (lambda d: d["runs"][0].pop("metrics"), r"runs\[0\].metrics: Field required"),
        (
            lambda d: d["runs"][1]["metrics"].update(macro_f1=1.7),
            r"runs\[1\].metrics.macro_f1: .*less than or equal",
        ),
        (lambda d: d["runs"][0]["metrics"].update(n="40"), r"runs\[0\].metrics.n: Input should be a valid integer"),
        (lambda d: d["runs"][0].update(truncation_rate=-0.1), r"runs\[0\].truncation_rate: .*greater than or equal"),
        (lambda d: d["runs"][0]["timings"].update(samples_per_second=2.0), r"timings.samples_per_second: Extra"),
        (lambda d: d["runs"][0].update(label_set="nih14"), r"runs\[0\].label_set: unknown label set"),
        (lambda d: d["runs"][0]["metrics"]["per_label"].pop("Edema"), "are not the nih9 labels"),
        (lambda d: d["runs"][0]["macro_f1_ci"].update(low=0.99), r"macro_f1_ci: estimate .* is outside"),
        (lambda d: d["comparisons"][0].pop("baseline"), r"comparisons\[0\].baseline: Field required"),
        (lambda d: d["comparisons"][0].update(candidate="rlhf"), r"comparisons\[0\]: no runs of"),
        (lambda d: d["generation"].update(max_new_tokens=True), r"generation.max_new_tokens: .*valid integer"),
        (lambda d: d["records"].update(file="/tmp/x.jsonl"), r"records.file: String should match"),
    ],
)
def test_invalid_files_give_clear_errors(tmp_path, corrupt, message):
    results, records = _results()
    save_results(results, tmp_path / "eval.json", records=records)
    data = json.loads((tmp_path / "eval.json").read_text())
    corrupt(data)
    (tmp_path / "eval.json").write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=message) as error:
        load_results(tmp_path / "eval.json")
    assert str(tmp_path / "eval.json") in str(error.value)  # the file is named


def test_a_record_with_an_absolute_path_is_refused(tmp_path):
    _, records = _results()
    line = records[0].model_dump() | {"source": "/data/chexpert/valid/patient1/view1.jpg"}
    with pytest.raises(ValidationError, match="absolute paths are refused"):
        Record(**line)
    path = tmp_path / "eval.records.jsonl"
    path.write_text(records[1].model_dump_json() + "\n" + json.dumps(line) + "\n")
    with pytest.raises(ResultsError, match=r"eval.records.jsonl line 2: source: .*absolute paths are refused"):
        list(iter_records(path))
    for escape in ("../other/x.png", "C:\\data\\x.png", "~/x.png"):
        with pytest.raises(ValidationError):
            Record(**(line | {"source": escape}))


def test_records_must_match_the_runs(tmp_path):
    results, records = _results()
    with pytest.raises(ResultsError, match="differ from the runs' n"):
        save_results(results, tmp_path / "eval.json", records=records[:-1])
    assert not (tmp_path / "eval.json").exists()


def test_records_stream_without_reading_the_whole_file(tmp_path):
    _, records = _results()
    path = tmp_path / "big.records.jsonl"
    with RecordWriter(path) as writer:
        for start in range(0, 20_000, 1_000):
            writer.write(r.model_copy(update={"index": start + i}) for i, r in enumerate((records * 13)[:1_000]))
    size = path.stat().st_size
    tracemalloc.start()
    count = sum(1 for _ in iter_records(path, checkpoint="grpo"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 10_000 and size > 5 * 2**20
    assert peak < size / 10, (peak, size)  # one line at a time, not the file
    page = page_records(path, offset=100, limit=5, checkpoint="sft")
    assert [r.index for r in page] == [200, 202, 204, 206, 208]
    with RecordWriter(path, fresh=False) as writer:  # appending keeps what is there
        writer.write(records[:2])
    assert sum(1 for _ in iter_records(path)) == 20_002


def test_unreadable_file(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text("{not json")
    with pytest.raises(ResultsError, match="cannot read results JSON"):
        load_results(path)


def test_fingerprint_is_stable_and_order_free():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


# ------------------------------------------------------------------------------------ weights fingerprints


def _folder(path, **files: bytes):
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def test_weights_fingerprint_changes_with_one_adapter_byte(tmp_path):
    base = _folder(tmp_path / "base", **{"model.safetensors": b"w" * 1000, "config.json": b"{}"})
    adapter = _folder(tmp_path / "sft", **{"adapter_model.safetensors": b"a" * 100, "adapter_config.json": b"{}"})
    spec = CheckpointSpec(name="sft", model=str(base), adapter=str(adapter))
    before = checkpoint_fingerprint(spec)
    assert before["adapter"]["kind"] == "sha256" and set(before["adapter"]["sha256"]) == {
        "adapter_model.safetensors",
        "adapter_config.json",
    }
    assert str(tmp_path) not in json.dumps(before)  # file names only, never a local path
    data = bytearray((adapter / "adapter_model.safetensors").read_bytes())
    data[50] ^= 1
    (adapter / "adapter_model.safetensors").write_bytes(bytes(data))
    after = checkpoint_fingerprint(spec)
    assert after["digest"] != before["digest"] and after["base"] == before["base"]


def test_a_large_local_base_is_not_hashed(tmp_path):
    base = _folder(tmp_path / "base", **{"config.json": b"{}", "model.safetensors.index.json": b'{"weight_map": {}}'})
    with (base / "model-00001-of-00001.safetensors").open("wb") as f:
        f.truncate(2**30 + 1)  # sparse: 1 GB on paper, nothing on disk; hashing it would take seconds
    start = time.perf_counter()
    weights = fingerprint_folder(base)
    assert time.perf_counter() - start < 0.5
    assert weights["kind"] == "stat" and set(weights["sha256"]) == {"config.json", "model.safetensors.index.json"}
    stat = (base / "model-00001-of-00001.safetensors").stat()
    assert weights["stat"] == {"model-00001-of-00001.safetensors": {"size": 2**30 + 1, "mtime_ns": stat.st_mtime_ns}}
    os.utime(base / "model-00001-of-00001.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint_folder(base) != weights  # touched: the fingerprint says so


def test_hub_references_are_fingerprinted_by_revision():
    unpinned = checkpoint_fingerprint(CheckpointSpec(name="base", model="google/medgemma-4b-it"))
    assert unpinned["base"] == {"kind": "hub", "id": "google/medgemma-4b-it", "revision": None, "pinned": False}
    pinned = CheckpointSpec(name="base", model="google/medgemma-4b-it", revision="a" * 40)
    assert checkpoint_fingerprint(pinned)["base"]["pinned"] and checkpoint_fingerprint(pinned) != unpinned


def test_v1_files_of_real_data_load_without_their_absolute_paths(tmp_path):
    """v1 named real images by their absolute local path: the file loads, and v2 never repeats the path."""
    results, records = _results()
    old = _v1(results, records)
    for run in old["runs"]:
        for p in run["predictions"]:
            p["id"] = f"/data/chexpert/test/{p['id']}/view1_frontal.jpg"
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(old))
    loaded = load_results(path)
    assert [r.metrics for r in loaded.runs] == [r.metrics for r in results.runs]
    assert {r.source for r in loaded.iter_records()} == {None}
    save_results(loaded, tmp_path / "v2" / "eval.json", records=loaded.iter_records())
    assert "/data/" not in (tmp_path / "v2" / "eval.records.jsonl").read_text()


@pytest.mark.parametrize(
    "text",
    [
        '{"schema": "chexreason.eval/1", "model_set": "x", "runs": [{"predictions": 5}]}',  # not a list
        "[" * 100_000 + "]" * 100_000,  # deeper than the parser's recursion
        '{"schema": "chexreason.eval/2", "n": ' + "9" * 5000 + "}",  # an integer past Python's 4,300 digits
    ],
    ids=["v1 predictions not a list", "deep nesting", "huge integer"],
)
def test_hostile_files_are_results_errors(tmp_path, text):
    """What the app catches when it reads a results file is a ResultsError: nothing else may escape."""
    path = tmp_path / "eval.json"
    path.write_text(text)
    with pytest.raises(ResultsError):
        load_results(path)
    records = tmp_path / "r.jsonl"
    records.write_text(text.replace("\n", " ") + "\n")
    with pytest.raises(ResultsError):
        list(iter_records(records))


def test_records_from_another_run_beside_a_summary_are_refused(tmp_path):
    results, records = _results()
    save_results(results, tmp_path / "eval.json", records=records)
    loaded = load_results(tmp_path / "eval.json")
    lines = (tmp_path / "eval.records.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "eval.records.jsonl").write_text("".join(lines[:10]))  # e.g. a run killed and restarted
    assert len(loaded.page_records(0, 5)) == 5  # a page reads only what it shows
    with pytest.raises(ResultsError, match="are not the 80 its summary was written with"):
        list(loaded.iter_records())


def test_a_failed_save_leaves_no_partial_file(tmp_path):
    results, records = _results()
    with pytest.raises(ResultsError):
        save_results(results, tmp_path / "eval.json", records=records[:-1])
    assert list(tmp_path.iterdir()) == []


def test_pages_refuse_negative_bounds(tmp_path):
    results, records = _results()
    save_results(results, tmp_path / "eval.json", records=records)
    with pytest.raises(ResultsError, match="offset >= 0"):
        load_results(tmp_path / "eval.json").page_records(-1, 5)


def test_a_relative_or_empty_reference_is_not_fingerprinted(tmp_path, monkeypatch):
    """An empty reference once hashed the folder the command ran in; only Hub ids and absolute folders count."""
    from chexreason.fingerprints import fingerprint_reference

    monkeypatch.chdir(tmp_path)
    for reference in ("", "base", "./base"):
        with pytest.raises(ValueError, match="neither a Hub id nor an absolute local folder"):
            fingerprint_reference(reference)
    assert fingerprint_reference("google/medgemma-4b-it")["kind"] == "hub"
