"""`python -m train.evaluate`: every checkpoint on every test split, results that validate and re-score."""

import json

import pytest

from chexreason.evaluation import SourceError
from chexreason.metrics import score
from chexreason.results import load_results, records_path
from train import evaluate


@pytest.fixture(scope="module")
def results(tiny_set, data_recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    argv = ["--models", str(tiny_set), "--data_config", str(data_recipe), "--limit", "3", "--n_resamples", "50",
            "--max_new_tokens", "12", "--out", str(out)]  # fmt: skip
    evaluate.main(argv)
    return load_results(out)  # the loader validates the schema


def test_every_checkpoint_on_every_test_split(results):
    assert {(r.checkpoint, r.dataset) for r in results.runs} == {
        (c, d) for c in ("base", "sft", "grpo") for d in ("test_phantom_a", "test_phantom_b")
    }
    labels = {r.dataset: r.label_set for r in results.runs}
    assert labels == {"test_phantom_a": "chexpert14", "test_phantom_b": "nih9"}
    pairs = {(c.dataset, c.baseline, c.candidate) for c in results.comparisons}
    assert ("test_phantom_a", "sft", "grpo") in pairs and ("test_phantom_b", "base", "sft") in pairs


def test_stored_metrics_rescore_from_stored_predictions(results):
    for run in results.runs:
        records = sorted(results.iter_records(run.dataset, run.checkpoint), key=lambda r: r.index)
        truth = [r.truth for r in records]
        predicted = [r.predicted for r in records]
        assert len(truth) == 3
        assert score(truth, predicted, run.label_set)["macro_f1"] == pytest.approx(run.metrics["macro_f1"])


def test_summary_records_what_it_scored(results):
    # Schema v2: the budget, the data and the weights scored, and the truncation rate from the records' flags.
    assert results.records_file == records_path(results.records_file.parent / "eval.json")
    assert results.generation.max_new_tokens == 12 and results.generation.decoding == "greedy"
    assert set(results.data.splits) == {"test_phantom_a", "test_phantom_b"} and results.data.manifest
    assert results.data.splits["test_phantom_a"].images == "phantom-a"
    weights = results.checkpoints
    assert weights["base"].adapter is None and weights["base"].base == weights["sft"].base
    assert weights["sft"].adapter.kind == "sha256" and weights["sft"].digest != weights["grpo"].digest
    for run in results.runs:
        flags = [r.truncated for r in results.iter_records(run.dataset, run.checkpoint)]
        assert run.truncation_rate == pytest.approx(sum(flags) / len(flags))
    assert any(r.truncated for r in results.iter_records()), "12 tokens cut every random-model answer off"
    assert all(r.source.startswith("phantom-") for r in results.iter_records())
    assert set(results.runs[0].timings) == {"seconds", "images_per_second"}


def test_truncation_rate_is_the_share_of_truncated_records(tiny_set, data_recipe, tmp_path, monkeypatch):
    # The records' truncated flags come from the model set's completions; a mixed pass gives a fraction.
    from chexreason.modeling import Completion, ModelSet

    real = ModelSet.complete_batch

    def some_cut(self, *args, **kwargs):
        rows = real(self, *args, **kwargs)
        return [[Completion(c.text, c.n_tokens, truncated=i % 3 == 0) for c in row] for i, row in enumerate(rows)]

    monkeypatch.setattr(ModelSet, "complete_batch", some_cut)
    out = tmp_path / "eval.json"
    evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--datasets", "test_phantom_a",
                   "--limit", "3", "--n_resamples", "20", "--max_new_tokens", "4", "--out", str(out)])  # fmt: skip
    results = load_results(out)
    assert [run.truncation_rate for run in results.runs] == [pytest.approx(1 / 3)] * 3
    assert [r.truncated for r in results.iter_records(checkpoint="sft")] == [True, False, False]
    summary = json.loads(out.read_text())
    assert summary["records"]["file"] == "eval.records.jsonl" and summary["records"]["n"] == 9


def test_unknown_split_is_a_message(tiny_set, data_recipe):
    with pytest.raises(SystemExit, match="no split"):
        evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--datasets", "test_mars"])


def test_prompt_sweep_on_one_checkpoint(tiny_set, data_recipe, tmp_path):
    # The paper's Table 1: one checkpoint under several prompt variants; no checkpoint comparisons.
    out = tmp_path / "prompts.json"
    evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--datasets", "sft_validation",
                   "--limit", "2", "--n_resamples", "20", "--max_new_tokens", "8", "--checkpoint", "sft",
                   "--prompts", "reasoning_a", "reasoning_narrative", "--out", str(out)])  # fmt: skip
    results = load_results(out)
    assert [(r.checkpoint, r.prompt) for r in results.runs] == [("sft", "reasoning_a"), ("sft", "reasoning_narrative")]
    assert results.comparisons == []
    assert results.run("sft", "sft_validation", "reasoning_narrative").prompt == "reasoning_narrative"
    assert len(list(results.iter_records(prompt="reasoning_a"))) == 2
    assert (tmp_path / "prompts.records.jsonl").is_file()


def test_unknown_prompt_or_checkpoint_is_a_message(tiny_set, data_recipe):
    with pytest.raises(SystemExit, match="unknown prompt"):
        evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--prompts", "reasoning_z"])
    with pytest.raises(SystemExit, match="no checkpoint"):
        evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--checkpoint", "rlhf",
                       "--prompts", "reasoning_a"])  # fmt: skip


def test_real_images_are_recorded_relative_to_their_image_folder(tmp_path):
    from datasets import Dataset

    from chexreason.evaluation import image_sources

    rows = {"id": [str(tmp_path / "CheXpert-v1.0" / "valid" / "p1" / "view1.jpg"), "phantom-a-0-000001"],
            "dataset": ["chexpert", "phantom-a"]}  # fmt: skip
    assert image_sources(Dataset.from_dict(rows), {"chexpert": tmp_path}) == [
        "CheXpert-v1.0/valid/p1/view1.jpg",
        "phantom-a-0-000001",
    ]
    with pytest.raises(ValueError, match="absolute path"):
        image_sources(Dataset.from_dict(rows))  # no image folder known: never an absolute path in the records
    with pytest.raises(ValueError, match="not inside the chexpert image folder"):
        image_sources(Dataset.from_dict(rows), {"chexpert": tmp_path / "elsewhere"})
    for escape in ("~/x.png", "../x.png"):  # a dataset id that would leave its folder: refused before generating
        with pytest.raises(SourceError):
            image_sources(Dataset.from_dict({"id": [escape], "dataset": ["nih"]}))


def test_an_image_named_by_an_absolute_path_is_a_message(tiny_set, data_recipe, monkeypatch):
    from chexreason import evaluation

    def absolute(dataset, roots=None):
        raise evaluation.SourceError("image /data/x.png (nih): absolute paths are refused; name its image folder")

    monkeypatch.setattr(evaluation, "image_sources", absolute)
    with pytest.raises(SystemExit, match=r"train\.evaluate: image /data/x\.png"):
        evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--limit", "1"])


def test_a_prompt_sweep_defaults_to_the_validation_split(tiny_set, data_recipe, tmp_path):
    # Choosing a prompt is selection: the sweep runs on the build's validation split, never on test by default.
    out = tmp_path / "prompts.json"
    evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--limit", "2", "--n_resamples",
                   "20", "--max_new_tokens", "4", "--prompts", "reasoning_a", "--out", str(out)])  # fmt: skip
    results = load_results(out)
    assert {r.dataset for r in results.runs} == {"sft_validation"} and set(results.data.splits) == {"sft_validation"}


@pytest.mark.parametrize("datasets", [["test_phantom_a"], ["sft_validation", "test_phantom_b"]])
def test_a_prompt_sweep_on_a_test_split_is_refused(tiny_set, data_recipe, monkeypatch, datasets):
    from chexreason.modeling import ModelSet

    def never(*args, **kwargs):
        raise AssertionError("generated before refusing a sweep on a test split")

    monkeypatch.setattr(ModelSet, "complete_batch", never)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--models", str(tiny_set), "--data_config", str(data_recipe), "--prompts", "reasoning_a",
                       "--datasets", *datasets])  # fmt: skip
    message = str(exit_info.value)
    assert message.startswith("train.evaluate: ") and "\n" not in message
    assert datasets[-1] in message and "selection on test" in message and "--datasets sft_validation" in message


def test_a_resumed_evaluation_keeps_whole_batches_and_survives_a_cut_character(tmp_path):
    """What a kill left: three complete images of a batch-2 pass, then a line cut inside a multi-byte character.
    The rerun keeps the first whole batch only (so the rest is batched as before), and no decoding error."""
    from chexreason.evaluation import RecordLog
    from chexreason.records import Record

    pairs = (("base", "free_reasoning"), ("sft", "free_reasoning"))
    passes, identity = [(("test", pairs), 4)], {"what": "a test evaluation"}
    log = RecordLog(tmp_path / ".eval.records.jsonl.partial")
    assert log.open(identity, passes, batch_size=2) == {}

    def record(i: int, checkpoint: str) -> Record:
        fields = {"dataset": "test", "checkpoint": checkpoint, "prompt": "free_reasoning", "index": i}
        return Record(**fields, source=f"img-{i}", truth=[], output=f"é {i}", predicted=None, parseable=False,
                      truncated=True, n_tokens=3)  # fmt: skip

    log.write(record(i, c) for i in range(3) for c, _ in pairs)
    log.close()
    cut = record(3, "base").model_dump_json().encode()
    with log.path.open("ab") as f:
        f.write(cut[: cut.index("é".encode()) + 1])  # half of the "é"
    kept = RecordLog(log.path).open(identity, passes, batch_size=2)
    assert [[c.text for c in row] for row in kept["test", pairs]] == [["é 0", "é 0"], ["é 1", "é 1"]]
    assert len(log.path.read_text().splitlines()) == 4  # the file holds exactly what was kept
    assert RecordLog(log.path).open({"what": "another"}, passes, batch_size=2) == {}  # another plan: fresh
    assert log.path.read_text() == ""
