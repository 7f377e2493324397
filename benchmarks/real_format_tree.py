"""A small tree in the real datasets' on-disk formats (DESIGN §4): MIMIC-CXR-JPG, the CheXpert test set and its
``valid.csv``, NIH ChestX-ray14 with ``test_list.txt``. Flat grey JPEG/PNG images, made-up labels: for running the
paper's data recipes without the credentialed data (`benchmarks.paper_rehearsal`, tests/test_build.py).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from chexreason.labels import CHEXPERT_LABELS

ALPHABETICAL = sorted(CHEXPERT_LABELS)  # MIMIC's label table orders its columns alphabetically
VALID_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS)  # CheXpert-v1.0 train/valid.csv


def _jpg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (64, 64), shade).save(path)


def real_format_tree(root: Path, patients: int = 20) -> list[str]:
    """MIMIC-CXR-JPG (`patients` × 2 frontal studies + 1 lateral, all in its train split), the CheXpert test set
    (4 images), NIH (4 images, 3 in test_list.txt) under `root`; returns the data recipe's path arguments
    (``--mimic_root …``)."""
    mimic = root / "mimic"
    meta = [
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime"
    ]
    labels = ["subject_id,study_id," + ",".join(ALPHABETICAL)]
    splits = ["dicom_id,study_id,subject_id,split"]  # MIMIC's official split: every study here is in train
    for p in range(patients):
        subject = 10000000 + p
        for s in range(2):
            study, dicom = 50000000 + 10 * p + s, f"d{p}-{s}"
            view = "PA" if s == 0 else "AP"
            meta.append(f"{dicom},{subject},{study},CHEST (PA AND LAT),{view},64,64,21800101,120000")
            splits.append(f"{dicom},{study},{subject},train")
            values = {"Edema": "1.0", "Cardiomegaly": "-1.0" if p % 3 else "1.0", "Pneumonia": "" if p % 2 else "0.0"}
            labels.append(f"{subject},{study}," + ",".join(values.get(label, "") for label in ALPHABETICAL))
            _jpg(mimic / f"files/p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg", 100 + p)
        meta.append(f"lat{p},{subject},{50000000 + 10 * p},CHEST (PA AND LAT),LATERAL,64,64,21800101,120000")
        _jpg(mimic / f"files/p{str(subject)[:2]}/p{subject}/s{50000000 + 10 * p}/lat{p}.jpg", 90)
    (mimic / "mimic-cxr-2.0.0-metadata.csv").write_text("\n".join(meta) + "\n")
    (mimic / "mimic-cxr-2.0.0-chexpert.csv").write_text("\n".join(labels) + "\n")
    (mimic / "mimic-cxr-2.0.0-split.csv").write_text("\n".join(splits) + "\n")

    chexpert = root / "chexpert"
    rows = ["Path," + ",".join(CHEXPERT_LABELS)]
    for i in range(4):
        rel = f"test/patient6474{i}/study1/view1_frontal.jpg"
        _jpg(chexpert / rel, 120)
        positive = {"Edema", *(("No Finding",) if i == 0 else ())}
        rows.append(rel + "," + ",".join("1" if label in positive else "0" for label in CHEXPERT_LABELS))
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


def chexpert_valid_csv(chexpert: Path) -> Path:
    """CheXpert's valid.csv inside CheXpert-v1.0-small/ (3 frontal images, 1 lateral), images under chexpert/Path."""
    rows = []
    for i, (view, ap_pa, values) in enumerate([
        ("Frontal", "AP", {"Cardiomegaly": "1.0", "Edema": "-1.0"}),  # uncertain: the recipe's policy decides
        ("Frontal", "PA", {"No Finding": "1.0"}),
        ("Frontal", "AP", {"Pleural Effusion": "1.0", "Support Devices": ""}),  # blank: not mentioned
        ("Lateral", "", {"Cardiomegaly": "1.0"}),
    ]):  # fmt: skip
        name = "view2_lateral.jpg" if view == "Lateral" else "view1_frontal.jpg"
        rel = f"CheXpert-v1.0-small/valid/patient6454{i}/study1/{name}"
        _jpg(chexpert / rel, 140)
        cells = [values.get(label, "0.0") for label in CHEXPERT_LABELS]
        rows.append(",".join([rel, "Female", "70", view, ap_pa, *cells]))
    path = chexpert / "CheXpert-v1.0-small" / "valid.csv"
    path.write_text("\n".join([VALID_HEADER, *rows]) + "\n")
    return path
