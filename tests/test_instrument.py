"""`benchmarks.tiny_instrument`: the rule that says which findings the tiny benchmark tells apart, and its
development split (its own phantoms, never a data build's). Fast: no model is trained or run."""

import pytest

from benchmarks import tiny_instrument as instrument
from chexreason.labels import CHEXPERT_LABELS


def _measured(f1: dict[str, list[float]], positives: dict[str, int], n: int = 1000) -> dict:
    return {"n": n, "positives": {label: positives.get(label, 0) for label in CHEXPERT_LABELS},
            "f1": {"sft": {label: f1.get(label, [0.0]) for label in CHEXPERT_LABELS}}}  # fmt: skip


def test_a_finding_is_told_apart_above_both_bars_and_only_when_measured():
    measured = _measured(
        f1={"Edema": [0.30, 0.40], "Support Devices": [0.70], "Fracture": [0.90], "Atelectasis": [0.18, 0.21]},
        # Support Devices: p 0.6, so always predicting it scores 0.75 > 0.70; Fracture: too few positives.
        positives={"Edema": 100, "Support Devices": 600, "Fracture": 29, "Atelectasis": 50},
    )
    text, told = instrument.table(measured)
    assert told == 1  # Edema (mean 0.35): Atelectasis averages 0.195, under 0.2
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()[2:]}
    assert rows["Edema"].endswith("| yes |") and "0.35 (0.30, 0.40)" in rows["Edema"]
    assert rows["Support Devices"].endswith("| no |") and "| 0.75 |" in rows["Support Devices"]
    assert "not measured" in rows["Fracture"] and rows["Atelectasis"].endswith("| no |")


def test_overrides_read_as_yaml_and_a_malformed_one_is_a_message():
    assert instrument.parse_sets(["sft.num_train_epochs=4", "base.lr_scheduler_type=cosine"]) == {
        "sft": {"num_train_epochs": 4}, "base": {"lr_scheduler_type": "cosine"}}  # fmt: skip
    with pytest.raises(SystemExit, match=r"expected stage\.field=value"):
        instrument.parse_sets(["num_train_epochs=4"])


def test_the_development_split_is_its_own_site_a_phantoms():
    split = instrument.development_split(12, 64, "u-zeros")
    assert len(split) == 12 and all(i.startswith(f"phantom-a-{instrument.DEV_SEED}-") for i in split["id"])
    assert all(truth for truth in split["ground_truth"])  # kept as the test split is: at least one positive
    assert set(split["label_set"]) == {"chexpert14"}


def test_the_probe_scores_every_finding_it_can_or_says_why_not(tiny):
    text = instrument.probe(tiny, 45)  # a random tiny model: the table's shape, not its numbers
    rows = text.splitlines()[2:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(CHEXPERT_LABELS)
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2] == "too few" or (0 <= float(cells[2]) <= 1 and 0 <= float(cells[3]) <= 1), row


def test_the_command_measures_the_sets_it_is_given_and_refuses_a_wrong_call(tmp_path, capsys, monkeypatch):
    asked = {}

    def measure(model_sets, checkpoints, n):  # the evaluation itself is train.evaluate's, tested there
        asked.update(model_sets=model_sets, checkpoints=checkpoints, n=n)
        return _measured({"Edema": [0.5]}, {"Edema": 100}, n)

    monkeypatch.setattr(instrument, "measure", measure)
    sets = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    assert instrument.main(["--models", *map(str, sets), "--n", "1000", "--checkpoints", "sft"]) == 1
    assert asked == {"model_sets": sets, "checkpoints": ["sft"], "n": 1000}
    out = capsys.readouterr().out
    assert "1000 development phantoms of site a" in out and "2 run(s)" in out
    assert "findings told apart by SFT: 1 (target: at least 10)" in out
    with pytest.raises(SystemExit, match="give --models, or --train"):
        instrument.main([])
