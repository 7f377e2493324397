"""`python -m train.data`: phantom and real-format builds, idempotence, clear config errors."""

import json

import pytest
from PIL import Image

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

ALPHABETICAL = sorted(CHEXPERT_LABELS)


def _jpg(path, shade):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (64, 64), shade).save(path)


def _real_tree(root):
    """MIMIC-CXR-JPG (20 patients × 2 frontal studies + 1 lateral), CheXpert test set, NIH with test_list."""
    mimic = root / "mimic"
    meta = [
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime"
    ]
    labels = ["subject_id,study_id," + ",".join(ALPHABETICAL)]
    for p in range(20):
        subject = 10000000 + p
        for s in range(2):
            study, dicom = 50000000 + 10 * p + s, f"d{p}-{s}"
            view = "PA" if s == 0 else "AP"
            meta.append(f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},64,64,21800101,120000")
            values = {"Edema": "1.0", "Cardiomegaly": "-1.0" if p % 3 else "1.0", "Pneumonia": "" if p % 2 else "0.0"}
            labels.append(f"{subject},{study}," + ",".join(values.get(label, "") for label in ALPHABETICAL))
            _jpg(mimic / f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg", 100 + p)
        meta.append(f"lat{p},{subject},{50000000 + 10 * p},CHEST (PA AND LAT),LATERAL,64,64,21800101,120000")
        _jpg(mimic / f"files/p{str(subject)[:2]}/p{subject}/s{50000000 + 10 * p}/lat{p}.jpg", 90)
    (mimic / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(meta) + "\n")
    (mimic / "mimic-cxr-2.0.0-chexpert.csv").write_text("\n".join(labels) + "\n")

    chexpert = root / "chexpert"
    rows = ["Path," + ",".join(CHEXPERT_LABELS)]
    for i in range(4):
        rel = f"test/patient6474{i}/study1/view1_frontal.jpg"
        _jpg(chexpert / rel, 120)
        rows.append(
            rel
            + ","
            + ",".join(
                "1" if label == "Edema" or (i == 0 and label == "No Finding") else "0" for label in CHEXPERT_LABELS
            )
        )
    (chexpert / "test_labels.csv").write_text("\n".join(rows) + "\n")

    nih = root / "nih"
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    entries = [("00000001_000.png", "Cardiomegaly", "PA"), ("00000002_000.png", "Infiltration", "AP"),
               ("00000003_000.png", "No Finding", "PA"), ("00000004_000.png", "Mass|Effusion", "PA")]  # fmt: skip
    lines = [header] + [f"{n},{f},0,{i + 1},50,M,{v},1024,1024,0.14,0.14" for i, (n, f, v) in enumerate(entries)]
    (nih / "images").mkdir(parents=True)
    for name, _, _ in entries:
        Image.new("L", (64, 64), 80).save(nih / "images" / name)
    (nih / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    (nih / "test_list.txt").write_text("\n".join(n for n, _, _ in entries[:3]) + "\n")
    return [
        "--mimic_root", str(mimic), "--chexpert_test_csv", str(chexpert / "test_labels.csv"),
        "--chexpert_root", str(chexpert), "--nih_csv", str(nih / "Data_Entry_2017_v2020.csv"),
        "--nih_images", str(nih / "images"), "--nih_split_list", str(nih / "test_list.txt"),
    ]  # fmt: skip


def test_real_format_build(tmp_path):
    paths = _real_tree(tmp_path / "raw")
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
