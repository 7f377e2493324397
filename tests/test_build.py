"""`python -m train.data`: phantom and real-format builds, idempotence, clear config errors."""

import json
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.real_format_tree import VALID_HEADER, chexpert_valid_csv, real_format_tree
from chexreason.data.build import load_built
from chexreason.labels import CHEXPERT_LABELS
from chexreason.parsing import parse_completion
from train import data as train_data

SMALL = ["--sft_samples", "20", "--rl_samples", "6", "--test_samples_per_site", "8", "--image_size", "96"]


@pytest.fixture(scope="module")
def phantom_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    argv = ["--config", "train/recipes/tiny/data.yaml", "--output_dir", str(out), "--workers", "1", *SMALL]
    return out, argv, train_data.main(argv)


def test_phantom_build_splits(phantom_build):
    out, _, manifest = phantom_build
    built = load_built(out)
    assert {name: len(built[name]) for name in built} == {
        "sft_train": 18, "sft_validation": 2, "rl": 6, "test_phantom_a": 8, "test_phantom_b": 8,
    }  # fmt: skip
    ids = [set(built[name]["id"]) for name in built]
    assert sum(map(len, ids)) == len(set().union(*ids))  # no image in two splits
    assert set(built["test_phantom_b"]["label_set"]) == {"nih9"}
    assert set(built["sft_train"]["dataset"]) == {"phantom-a"}
    row = built["sft_train"][0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (96, 96)
    assert json.loads(row["params"])["anatomy"]["ctr"] > 0
    assert manifest["splits"]["rl"]["size"] == 6


def test_sft_answers_are_valid_and_teach_the_ground_truth(phantom_build):
    built = load_built(phantom_build[0])
    for row in built["sft_train"]:
        parsed = parse_completion(row["answer"])
        assert parsed.valid and set(parsed.labels) == set(row["ground_truth"]) != set()
        assert row["reasoning"] in row["answer"]
        assert set(row["ground_truth"]) <= set(CHEXPERT_LABELS)


def test_second_run_reuses(phantom_build, caplog):
    out, argv, _ = phantom_build
    before = (out / "datasets").stat().st_mtime_ns
    manifest = train_data.main(argv)
    assert manifest["reused"] and (out / "datasets").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--uncertainty_policy", "u-maybe"], "uncertainty_policy must be one of"),
        (["--answer_format", "prose"], "answer_format must be one of"),
        (["--teacher", "api"], "needs teacher_base_url"),
        (["--source", "real"], "source 'real' needs --mimic_root"),
    ],
)
def test_bad_config_is_a_message_not_a_traceback(tmp_path, override, message):
    with pytest.raises(SystemExit) as exit_info:
        train_data.main(["--config", "train/recipes/tiny/data.yaml", "--output_dir", str(tmp_path), *override])
    assert message in str(exit_info.value)


# ------------------------------------------------------------------------------ real formats, tiny tree


def test_real_format_build(tmp_path):
    paths = real_format_tree(tmp_path / "raw")
    out = tmp_path / "built"
    sizes = ["--sft_samples", "20", "--rl_samples", "10"]
    manifest = train_data.main(["--config", "train/recipes/paper/data.yaml", "--output_dir", str(out), *paths, *sizes])
    built = load_built(out)
    patients = [set(built[name]["patient_id"]) for name in ("sft_train", "sft_validation", "rl")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert "LATERAL" not in set(built["sft_train"]["view"])  # frontal only
    # u-zeros: uncertain Cardiomegaly becomes negative; Edema is positive everywhere in this tree.
    for row in built["sft_train"]:
        assert "Edema" in row["ground_truth"]
    assert len(built["test_chexpert"]) == 4 and len(built["test_nih"]) == 3  # test_list.txt picks 3 of 4
    nih = {row["id"].rsplit("/", 1)[-1]: row["ground_truth"] for row in built["test_nih"]}
    assert nih["00000002_000.png"] == []  # Infiltration only: no CheXpert label, and not No Finding
    assert built["test_nih"][0]["image"].size == (64, 64)  # images are read from the user's folder
    assert manifest["splits"]["test_nih"]["label_set"] == "nih9"


# ------------------------------------------------------------------------- validation and test splits

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_split_roles_are_one_rule():
    from chexreason.data.build import report_splits, selection_splits, split_role

    real = ["sft_train", "sft_validation", "rl", "valid_chexpert", "test_chexpert", "test_nih"]
    assert [split_role(name) for name in real] == ["training", "validation", "training", "validation", "test", "test"]
    assert selection_splits(real) == ["valid_chexpert"]  # the paper's Tables 1-4: CheXpert validation
    assert report_splits(real) == ["test_chexpert", "test_nih"]
    phantom = ["sft_train", "sft_validation", "rl", "test_phantom_a", "test_phantom_b"]
    assert selection_splits(phantom) == ["sft_validation"] and report_splits(phantom) == phantom[3:]


@pytest.mark.parametrize(("policy", "edema"), [("u-zeros", False), ("u-ones", True)])
def test_real_build_has_a_chexpert_validation_split(tmp_path, policy, edema):
    paths = real_format_tree(tmp_path / "raw")
    valid = chexpert_valid_csv(tmp_path / "raw" / "chexpert")
    out = tmp_path / "built"
    argv = ["--config", "train/recipes/paper/data.yaml", "--output_dir", str(out), *paths, "--sft_samples", "20",
            "--rl_samples", "10", "--chexpert_valid_csv", str(valid), "--uncertainty_policy", policy]  # fmt: skip
    manifest = train_data.main(argv)
    built = load_built(out)
    assert list(built) == ["sft_train", "sft_validation", "rl", "valid_chexpert", "test_chexpert", "test_nih"]
    rows = built["valid_chexpert"]
    assert len(rows) == 3 and "LATERAL" not in set(rows["view"])  # frontal only, as the test split
    assert manifest["splits"]["valid_chexpert"] == {"size": 3, "label_set": "chexpert14"}
    truth = {row["patient_id"]: row["ground_truth"] for row in rows}
    assert truth["chexpert:patient64540"] == (["Cardiomegaly", "Edema"] if edema else ["Cardiomegaly"])
    assert truth["chexpert:patient64541"] == ["No Finding"] and set(rows["dataset"]) == {"chexpert"}
    assert not set(rows["patient_id"]) & set(built["test_chexpert"]["patient_id"])


def test_a_named_but_absent_validation_csv_is_a_message_before_any_work(tmp_path, monkeypatch):
    from chexreason.data import build

    def never(*args, **kwargs):
        raise AssertionError("a dataset was read before the paths were checked")

    monkeypatch.setattr(build, "read_mimic", never)
    paths = real_format_tree(tmp_path / "raw")
    absent = tmp_path / "raw" / "chexpert" / "valid.csv"
    with pytest.raises(SystemExit) as exit_info:
        train_data.main(["--config", "train/recipes/paper/data.yaml", "--output_dir", str(tmp_path / "built"),
                         *paths, "--chexpert_valid_csv", str(absent)])  # fmt: skip
    message = str(exit_info.value)
    assert f"chexpert_valid_csv {absent} does not exist" in message and "\n" not in message
    assert not (tmp_path / "built" / "datasets").exists()


def test_the_test_csv_is_not_a_validation_csv(tmp_path):
    paths = real_format_tree(tmp_path / "raw")
    test_csv = paths[paths.index("--chexpert_test_csv") + 1]
    with pytest.raises(SystemExit, match="chexpert_valid_csv is the chexpert_test_csv"):
        train_data.main(["--config", "train/recipes/paper/data.yaml", "--output_dir", str(tmp_path / "built"),
                         *paths, "--chexpert_valid_csv", test_csv])  # fmt: skip


def test_a_validation_csv_sharing_test_patients_is_refused(tmp_path):
    paths = real_format_tree(tmp_path / "raw")
    chexpert = tmp_path / "raw" / "chexpert"
    leaky = chexpert / "valid.csv"  # one row: an image of the test set's patient64740
    leaky.write_text(VALID_HEADER + "\ntest/patient64740/study1/view1_frontal.jpg,Male,60,Frontal,PA" + ",0.0" * 14)
    with pytest.raises(SystemExit, match="valid_chexpert and test_chexpert share 1 patient"):
        train_data.main(["--config", "train/recipes/paper/data.yaml", "--output_dir", str(tmp_path / "built"), *paths,
                         "--sft_samples", "20", "--rl_samples", "10", "--chexpert_valid_csv", str(leaky)])  # fmt: skip


def _shared_valid_csv():
    found = sorted(SHARED_DATA.glob("**/valid.csv")) if SHARED_DATA.is_dir() else []
    return found[0] if found else None


@pytest.mark.skipif(_shared_valid_csv() is None, reason=f"no CheXpert valid.csv under {SHARED_DATA}")
def test_shared_chexpert_valid_csv_reads_as_a_validation_split():
    from chexreason.data import read_chexpert
    from chexreason.data.splits import example_from_record

    result = read_chexpert(_shared_valid_csv(), check_files=False)  # the tables alone; images may be absent
    assert len(result) > 0 and len(result) == result.summary.rows_read - result.summary.rows_dropped
    examples = [example_from_record(record, "u-zeros") for record in result]
    assert all(not isinstance(e, str) and set(e.truth) <= set(CHEXPERT_LABELS) for e in examples)


def test_an_unset_validation_csv_keeps_the_data_fingerprint(phantom_build):
    # The field came after builds and bundled results (checkpoints/tiny/eval.json) recorded their data fingerprint:
    # unset, it leaves the key what it was before the field existed.
    from chexreason.results import fingerprint

    manifest = phantom_build[2]
    assert manifest["config"]["chexpert_valid_csv"] is None
    # paper_recipe (train/parity.py) names the recipe this one is a small copy of: no part of the data, no key.
    assert manifest["config"]["paper_recipe"] == "train/recipes/medgemma-4b/data_free_reasoning.yaml"
    leave_out = ("output_dir", "workers", "chexpert_valid_csv", "paper_recipe")
    small = {k: v for k, v in manifest["config"].items() if k not in leave_out}
    assert manifest["fingerprint"] == fingerprint(small)
