"""Dataset readers, on tiny fixture tables written in the datasets' real on-disk formats.

Images are a few placeholder bytes at the real relative paths: readers never decode images, they only
find them. Every test checks that the summary accounts for every row (nothing dropped silently).
"""

from __future__ import annotations

import gzip
import logging
import math
from pathlib import Path

import pytest

from chexreason.data import DatasetError, ReadSummary, apply_uncertainty, read_chexpert, read_mimic, read_nih
from chexreason.data.readers import (
    DUPLICATE_ROW,
    MALFORMED_ROW,
    MISSING_IMAGE,
    NIH_ANNOTATED_LABELS,
    NO_LABEL_ROW,
    NO_SPLIT_ROW,
    NOT_IN_CSV,
    UNKNOWN_LABEL,
)
from chexreason.labels import CHEXPERT_LABELS, NIH_LABELS

REAL_CXR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-cxr"


def _write(path: Path, lines: list[str], gz: bool = False) -> Path:
    """Write CSV lines as the datasets ship them (LF endings), optionally gzipped beside the plain name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", newline="") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff")  # a few bytes: readers check existence, never decode


def _accounted(summary: ReadSummary) -> None:
    assert summary.rows_read == summary.records_kept + summary.rows_filtered + summary.rows_dropped, str(summary)


def _counts(summary: ReadSummary) -> dict[str, int]:
    return {kind: problem.count for kind, problem in summary.problems.items()}


# --- MIMIC-CXR-JPG ----------------------------------------------------------------------------------------

METADATA_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,"
    "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning"
)
SPLIT_HEADER = "dicom_id,study_id,subject_id,split"
MIMIC_LABEL_HEADER = (
    "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,Fracture,"
    "Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
)
D1 = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"  # PA of a labelled study
D2 = "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"  # lateral of the same study
D3 = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"  # portable film, ViewPosition blank
D4 = "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"  # its study has no label row
PA_LAT = "CHEST (PA AND LAT)"
# dicom -> (subject_id, study_id, the rest of its metadata line)
MIMIC_DICOMS = {
    D1: ("10000032", "50414267", f"{PA_LAT},PA,3056,2544,21800506,213014.531,{PA_LAT},postero-anterior,Erect"),
    D2: ("10000032", "50414267", f"{PA_LAT},LATERAL,3056,2544,21800506,213014.531,{PA_LAT},lateral,Erect"),
    D3: ("10000764", "57375967", "CHEST (PORTABLE AP),,2705,2539,21321015,55606.000,CHEST (PORTABLE AP),,"),
    D4: ("10000898", "50771383", f"{PA_LAT},PA,3056,2544,21500101,101010.000,{PA_LAT},postero-anterior,Erect"),
}
MIMIC_SPLITS = {D1: "train", D2: "train", D3: "validate", D4: "test"}


def _label_row(header: str, ids: str, values: dict[str, str]) -> str:
    """A label-table line: `ids` (every column before the labels), then raw values by name, others blank."""
    columns = header.split(",")
    cells = [values.get(name, "") for name in columns[len(ids.split(",")) :]]
    return ",".join([ids, *cells])


# Study 50414267: one of each raw value; Atelectasis and the rest blank (not mentioned).
STUDY1_VALUES = {"Edema": "1.0", "Pleural Effusion": "0.0", "Pneumonia": "-1.0"}


def _mimic_root(
    tmp_path: Path,
    gz: bool = False,
    extra_metadata: tuple[str, ...] = (),
    extra_labels: tuple[str, ...] = (),
    images: bool = True,
    split: bool = True,
) -> Path:
    root = tmp_path / "mimic-cxr-jpg"
    metadata = [f"{dicom},{subject},{study},{rest}" for dicom, (subject, study, rest) in MIMIC_DICOMS.items()]
    _write(root / "mimic-cxr-2.0.0-metadata.csv", [METADATA_HEADER, *metadata, *extra_metadata], gz)
    if split:
        splits = [f"{d},{MIMIC_DICOMS[d][1]},{MIMIC_DICOMS[d][0]},{s}" for d, s in MIMIC_SPLITS.items()]
        _write(root / "mimic-cxr-2.0.0-split.csv", [SPLIT_HEADER, *splits], gz)
    for labeler, edema in (("chexpert", "1.0"), ("negbio", "-1.0")):  # the labelers disagree on Edema
        labels = [
            _label_row(MIMIC_LABEL_HEADER, "10000032,50414267", {**STUDY1_VALUES, "Edema": edema}),
            _label_row(MIMIC_LABEL_HEADER, "10000764,57375967", {"No Finding": "1.0"}),
        ]
        _write(root / f"mimic-cxr-2.0.0-{labeler}.csv", [MIMIC_LABEL_HEADER, *labels, *extra_labels], gz)
    if images:
        for dicom, (subject, study, _) in MIMIC_DICOMS.items():
            _touch(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
    return root


@pytest.mark.parametrize("gz", [False, True])  # MIMIC ships .csv.gz; people often gunzip them
def test_mimic_joins_metadata_split_and_labels(tmp_path, gz):
    root = _mimic_root(tmp_path, gz=gz)
    result = read_mimic(root)
    by_dicom = {record.image_path.stem: record for record in result.records}
    assert set(by_dicom) == {D1, D2, D3}
    first = by_dicom[D1]
    assert first.image_path == root / "files/p10/p10000032/s50414267" / f"{D1}.jpg"
    assert (first.dataset, first.patient_id, first.study_id, first.view, first.split) == (
        "mimic-cxr",
        "10000032",
        "50414267",
        "PA",
        "train",
    )
    assert first.is_frontal and not by_dicom[D2].is_frontal and by_dicom[D2].view == "LATERAL"
    # A blank ViewPosition is None, and not frontal: we cannot know.
    assert by_dicom[D3].view is None and not by_dicom[D3].is_frontal and by_dicom[D3].split == "validate"
    # Blank, 0.0 and -1.0 stay distinct in source_labels; blank becomes 0.0 in labels; -1.0 is kept.
    assert first.source_labels["Atelectasis"] is None
    assert first.source_labels["Pleural Effusion"] == 0.0
    assert first.source_labels["Pneumonia"] == -1.0
    assert list(first.labels) == list(CHEXPERT_LABELS)
    assert first.labels["Atelectasis"] == 0.0 and first.labels["Pneumonia"] == -1.0 and first.labels["Edema"] == 1.0
    assert by_dicom[D2].labels == first.labels  # labels are per study
    summary = result.summary
    assert (summary.rows_read, summary.records_kept) == (4, 3)
    assert _counts(summary) == {NO_LABEL_ROW: 1}
    assert D4 in summary.problems[NO_LABEL_ROW].examples[0] and "line 5" in summary.problems[NO_LABEL_ROW].examples[0]
    _accounted(summary)


def test_mimic_labeler_picks_the_label_table(tmp_path):
    root = _mimic_root(tmp_path)
    negbio = {record.image_path.stem: record for record in read_mimic(root, labeler="negbio").records}
    assert negbio[D1].labels["Edema"] == -1.0
    with pytest.raises(ValueError, match="negbio"):
        read_mimic(root, labeler="chexbert")


def test_mimic_malformed_rows_are_counted_with_examples(tmp_path):
    d5 = f"{D1[:-1]}5"
    extra_metadata = (
        f"{D1[:-1]}9,10000032,50414267,{PA_LAT},PA",  # wrong field count
        f"{D1[:-1]}8,abc,50414267,{PA_LAT},PA,1,1,1,1,x,y,z",  # subject_id not a number
        f"{D1[:-1]}7,10000111,59999999,{PA_LAT},PA,1,1,1,1,x,y,z",  # its label row says "2.0"
        f"{d5},10000032,50414267,{PA_LAT},PA,1,1,1,1,x,y,z",  # good, but absent from the split table
    )
    extra_labels = (_label_row(MIMIC_LABEL_HEADER, "10000111,59999999", {"Edema": "2.0"}),)
    root = _mimic_root(tmp_path, extra_metadata=extra_metadata, extra_labels=extra_labels, gz=True)
    _touch(root / "files/p10/p10000032/s50414267" / f"{d5}.jpg")
    summary = read_mimic(root).summary
    label_note = "malformed row in mimic-cxr-2.0.0-chexpert.csv.gz"
    assert _counts(summary) == {
        label_note: 1,  # a note, not a drop: label-table rows are not records
        NO_LABEL_ROW: 2,  # D4, and the study whose label row was malformed
        MALFORMED_ROW: 2,
        NO_SPLIT_ROW: 1,  # kept with split None
    }
    assert summary.problems[MALFORMED_ROW].examples == [
        "line 6: 5 fields, expected 12",
        "line 7: ill-formed subject_id",
    ]
    assert summary.problems[label_note].examples == ["line 4: value '2.0' in column 'Edema'"]
    assert summary.problems[NO_SPLIT_ROW].examples == [f"line 9: dicom {d5}"]
    assert summary.records_kept == 4
    _accounted(summary)


def test_mimic_missing_images_are_counted_or_not_checked(tmp_path):
    root = _mimic_root(tmp_path)
    (root / "files/p10/p10000032/s50414267" / f"{D2}.jpg").unlink()
    summary = read_mimic(root).summary
    assert _counts(summary) == {NO_LABEL_ROW: 1, MISSING_IMAGE: 1}
    assert summary.problems[MISSING_IMAGE].examples == [f"line 3: files/p10/p10000032/s50414267/{D2}.jpg"]
    _accounted(summary)
    unchecked = read_mimic(root, check_files=False)
    assert len(unchecked.records) == 3 and not unchecked.records[1].image_path.exists()


def test_mimic_without_images_is_refused(tmp_path):
    # Every image missing almost always means the wrong root: refuse rather than return nothing quietly.
    root = _mimic_root(tmp_path, images=False)
    with pytest.raises(DatasetError, match=r"mimic-cxr-2\.0\.0-metadata\.csv: 4 of 4 rows.*missing image file: 3"):
        read_mimic(root)
    assert len(read_mimic(root, check_files=False).records) == 3


def test_mimic_without_split_table(tmp_path, caplog):
    root = _mimic_root(tmp_path, split=False)
    with caplog.at_level(logging.WARNING):
        records = read_mimic(root).records
    assert all(record.split is None for record in records)
    assert "split" in caplog.text
    with pytest.raises(FileNotFoundError, match="metadata"):
        read_mimic(tmp_path / "elsewhere")


# --- CheXpert ---------------------------------------------------------------------------------------------

CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,"
    "Support Devices"
)
TEST_LABELS_HEADER = "Path," + CHEXPERT_HEADER.split(",", 5)[5]  # Path + the 14 labels, nothing else


def _chexpert_row(relative: str, view: str = "Frontal,AP", values: dict[str, str] | None = None) -> str:
    return _label_row(CHEXPERT_HEADER, f"{relative},Female,68,{view}", values or {})


def _chexpert_rows(prefix: str) -> list[str]:
    return [
        # The first line of the real train.csv.
        f"{prefix}/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0",
        _chexpert_row(f"{prefix}/train/patient00002/study2/view1_frontal.jpg", "Frontal,PA", {"Edema": "-1.0"}),
        _chexpert_row(f"{prefix}/train/patient00002/study2/view2_lateral.jpg", "Lateral,", {"Edema": "-1.0"}),
    ]


def _chexpert_tree(tmp_path: Path, prefix: str, rows: list[str] | None = None) -> Path:
    """The dataset folder with train.csv inside it and the images of `rows` (all rows by default)."""
    dataset = tmp_path / prefix
    rows = _chexpert_rows(prefix) if rows is None else rows
    _write(dataset / "train.csv", [CHEXPERT_HEADER, *rows])
    for row in rows:
        if row.split(",")[0]:
            _touch(tmp_path / row.split(",")[0])
    return dataset


@pytest.mark.parametrize(
    ("prefix", "root"),
    [
        ("CheXpert-v1.0-small", None),  # default: the CSV's grandparent is what Path is relative to
        ("CheXpert-v1.0", None),  # the full-size copy has another first component, same rule
        ("CheXpert-v1.0-small", "parent"),  # root as documented: the parent of CheXpert-v1.0-small/
        ("CheXpert-v1.0-small", "dataset"),  # root = the dataset folder itself: Path minus its first component
        ("CheXpert-v1.0", "dataset"),
    ],
)
def test_chexpert_layouts(tmp_path, prefix, root):
    dataset = _chexpert_tree(tmp_path, prefix)
    roots = {None: None, "parent": tmp_path, "dataset": dataset}
    result = read_chexpert(dataset / "train.csv", root=roots[root])
    first, frontal, lateral = result.records
    assert first.image_path == dataset / "train/patient00001/study1/view1_frontal.jpg"
    assert (first.dataset, first.patient_id, first.study_id, first.view) == (
        "chexpert",
        "patient00001",
        "patient00001/study1",
        "AP",
    )
    assert first.source_labels["No Finding"] == 1.0 and first.source_labels["Pneumothorax"] == 0.0
    assert first.source_labels["Cardiomegaly"] is None and first.labels["Cardiomegaly"] == 0.0
    assert first.labels["Support Devices"] == 1.0 and list(first.labels) == list(CHEXPERT_LABELS)
    assert frontal.view == "PA" and frontal.is_frontal and frontal.labels["Edema"] == -1.0
    assert lateral.view == "LATERAL" and not lateral.is_frontal and lateral.study_id == frontal.study_id
    _accounted(result.summary)
    assert result.summary.problems == {}


def test_chexpert_test_labels_format(tmp_path):
    # test_labels.csv: Path + the 14 labels (binary), no Sex/Age/Frontal/AP-PA; it sits beside test/.
    folder = tmp_path / "chexlocalize" / "CheXpert"
    rows = [
        _label_row(TEST_LABELS_HEADER, "test/patient64741/study1/view1_frontal.jpg", {"Cardiomegaly": "1.0"}),
        _label_row(TEST_LABELS_HEADER, "test/patient64741/study1/view2_lateral.jpg", {"Cardiomegaly": "1"}),
    ]
    csv_path = _write(folder / "test_labels.csv", [TEST_LABELS_HEADER, *rows])
    for row in rows:
        _touch(folder / row.split(",")[0])
    frontal, lateral = read_chexpert(csv_path).records
    assert frontal.image_path == folder / "test/patient64741/study1/view1_frontal.jpg"
    # Frontal/lateral comes from the file name; AP vs PA is unknown.
    assert frontal.is_frontal and frontal.view is None and frontal.frontal is True
    assert not lateral.is_frontal and lateral.view == "LATERAL"
    assert frontal.labels["Cardiomegaly"] == lateral.labels["Cardiomegaly"] == 1.0  # "1" and "1.0" alike
    assert frontal.source_labels["Edema"] is None and frontal.labels["Edema"] == 0.0


GOOD_PATH = "CheXpert-v1.0-small/train/patient00009/study1/view1_frontal.jpg"


@pytest.mark.parametrize(
    ("bad_row", "kind", "example"),
    [
        # A truncated line: its values would land under the wrong columns.
        (f"{GOOD_PATH},Male,50,Frontal,PA,1.0", MALFORMED_ROW, "6 fields, expected 19"),
        # 2.0 is no CheXpert value; reading it as "present" would hide a corrupted file.
        (_chexpert_row(GOOD_PATH, values={"Edema": "2.0"}), MALFORMED_ROW, "value '2.0' in column 'Edema'"),
        # Non-numeric values: someone's hand edit or a different export.
        (_chexpert_row(GOOD_PATH, values={"Fracture": "yes"}), MALFORMED_ROW, "value 'yes' in column 'Fracture'"),
        # Frontal/Lateral decides is_frontal; guessing would put laterals among frontal-only evaluations.
        (_chexpert_row(GOOD_PATH, view="Sideways,PA"), MALFORMED_ROW, "Frontal/Lateral value 'sideways'"),
        # Without patient/study components there is no patient id to split on.
        (
            _chexpert_row("CheXpert-v1.0-small/train/view1_frontal.jpg"),
            MALFORMED_ROW,
            "Path has no patientNNNNN/studyN/ components",
        ),
        # No image to point at.
        (_chexpert_row(""), MALFORMED_ROW, "missing Path"),
        # The same image twice would count twice in training and evaluation.
        (_chexpert_rows("CheXpert-v1.0-small")[0], DUPLICATE_ROW, "Path seen before"),
        # A well-formed row whose image is not on disk; the example is the relative Path, ids only.
        (_chexpert_row(GOOD_PATH), MISSING_IMAGE, GOOD_PATH),
    ],
)
def test_chexpert_bad_rows_are_counted(tmp_path, bad_row, kind, example):
    dataset = _chexpert_tree(tmp_path, "CheXpert-v1.0-small")
    _write(dataset / "train.csv", [CHEXPERT_HEADER, *_chexpert_rows("CheXpert-v1.0-small"), bad_row])
    result = read_chexpert(dataset / "train.csv")
    assert len(result.records) == 3
    assert _counts(result.summary) == {kind: 1}
    assert result.summary.problems[kind].examples == [f"line 5: {example}"]
    _accounted(result.summary)


def test_chexpert_mostly_bad_file_is_refused(tmp_path):
    dataset = _chexpert_tree(tmp_path, "CheXpert-v1.0-small")
    bad = [_chexpert_row(GOOD_PATH, values={"Edema": "2.0"}), f"{GOOD_PATH},Male"]
    _write(dataset / "train.csv", [CHEXPERT_HEADER, _chexpert_rows("CheXpert-v1.0-small")[0], *bad])
    with pytest.raises(DatasetError) as error:
        read_chexpert(dataset / "train.csv")
    message = str(error.value)
    assert str(dataset / "train.csv") in message and "2 of 3 rows" in message and "line 3: value '2.0'" in message


def test_chexpert_wrong_table_is_refused(tmp_path):
    # Pointing the CheXpert reader at NIH's table must fail loudly, naming the missing columns.
    csv_path = _write(tmp_path / "Data_Entry_2017.csv", [NIH_HEADER.format(sex="Gender"), NIH_ROWS[0]])
    with pytest.raises(DatasetError, match="missing column"):
        read_chexpert(csv_path)


# --- NIH ChestX-ray14 -------------------------------------------------------------------------------------

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient {sex},View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
NIH_ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.14300000000000002,0.14300000000000002",
    "00000001_002.png,Cardiomegaly|Effusion,2,1,58,M,PA,2500,2048,0.168,0.168",
    "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171",
    "00000013_005.png,Emphysema|Infiltration|Pleural_Thickening|Pneumothorax,5,13,60,M,AP,3056,2544,0.139,0.139",
    "00000030_001.png,Atelectasis|Mass|Nodule,1,30,79,M,AP,2500,2048,0.168,0.168",
    "00000032_001.png,Infiltration,1,32,55,F,AP,2500,2048,0.168,0.168",
]
NIH_NAMES = [row.split(",")[0] for row in NIH_ROWS]


def _nih_csv(path: Path, rows: list[str], sex: str = "Gender", trailing: bool = True) -> Path:
    """Data_Entry_2017.csv ends every line, header included, with a comma; the v2020 copy does not."""
    end = "," if trailing else ""
    return _write(path, [NIH_HEADER.format(sex=sex) + end, *(row + end for row in rows)])


def _nih_images(images_dir: Path, names: list[str], kaggle: bool = False) -> None:
    for i, name in enumerate(names):
        folder = images_dir / f"images_{1 + i % 2:03d}" / "images" if kaggle else images_dir
        _touch(folder / name)


@pytest.mark.parametrize(
    ("sex", "trailing", "kaggle"),
    [
        ("Gender", True, False),  # Data_Entry_2017.csv: trailing empty column on every line
        ("Sex", False, False),  # Data_Entry_2017_v2020.csv: "Patient Sex", no trailing comma
        ("Sex", True, True),  # Kaggle layout: images_0XX/images/<Image Index>
        ("Gender", False, True),
    ],
)
def test_nih_formats_and_labels(tmp_path, sex, trailing, kaggle):
    csv_path = _nih_csv(tmp_path / "Data_Entry_2017.csv", NIH_ROWS, sex=sex, trailing=trailing)
    _nih_images(tmp_path / "nih", NIH_NAMES, kaggle=kaggle)
    result = read_nih(csv_path, tmp_path / "nih")
    records = {record.image_path.name: record for record in result.records}
    assert list(records) == NIH_NAMES and all(record.image_path.is_file() for record in records.values())
    first = records["00000001_000.png"]
    assert (first.dataset, first.patient_id, first.study_id, first.view) == ("nih", "1", None, "PA")
    assert first.is_frontal and records["00000013_005.png"].view == "AP"
    assert first.source_labels == {name: 1.0 if name == "Cardiomegaly" else 0.0 for name in NIH_LABELS}
    # Labels NIH cannot express are NaN; Pleural Other is expressible (Pleural_Thickening).
    for label in CHEXPERT_LABELS:
        assert math.isnan(first.labels[label]) == (label not in NIH_ANNOTATED_LABELS)
    assert {"Support Devices", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"}.isdisjoint(
        NIH_ANNOTATED_LABELS
    )
    _accounted(result.summary)
    assert result.summary.problems == {}


def _positives(labels: dict[str, float]) -> set[str]:
    return {label for label, value in labels.items() if value == 1.0}


@pytest.mark.parametrize(
    ("name", "positives"),
    [
        ("00000001_000.png", {"Cardiomegaly"}),
        ("00000001_002.png", {"Cardiomegaly", "Pleural Effusion"}),  # Effusion is recorded
        ("00000002_000.png", {"No Finding"}),
        # Emphysema and Infiltration have no CheXpert equivalent; Pleural_Thickening -> Pleural Other.
        ("00000013_005.png", {"Pleural Other", "Pneumothorax"}),
        ("00000030_001.png", {"Atelectasis", "Lung Lesion"}),  # Mass and Nodule both -> Lung Lesion
        # Only an unmappable finding: negative everywhere, and NOT No Finding.
        ("00000032_001.png", set()),
    ],
)
def test_nih_label_mapping(tmp_path, name, positives):
    csv_path = _nih_csv(tmp_path / "Data_Entry_2017_v2020.csv", NIH_ROWS, sex="Sex", trailing=False)
    _nih_images(tmp_path, NIH_NAMES)
    record = {record.image_path.name: record for record in read_nih(csv_path, tmp_path).records}[name]
    assert _positives(record.labels) == positives
    annotated = {label: value for label, value in record.labels.items() if label in NIH_ANNOTATED_LABELS}
    assert set(annotated.values()) <= {0.0, 1.0}


def test_nih_split_list_restricts_records(tmp_path):
    csv_path = _nih_csv(tmp_path / "Data_Entry_2017.csv", NIH_ROWS)
    _nih_images(tmp_path / "images", NIH_NAMES)
    split = _write(tmp_path / "test_list.txt", ["00000002_000.png", "00000030_001.png", "00099999_000.png"])
    result = read_nih(csv_path, tmp_path / "images", split_list=split)
    assert [record.image_path.name for record in result.records] == ["00000002_000.png", "00000030_001.png"]
    assert result.summary.rows_filtered == 4
    # A listed name the table lacks is a note, not a dropped row.
    assert _counts(result.summary) == {NOT_IN_CSV: 1}
    assert result.summary.problems[NOT_IN_CSV].examples == ["00099999_000.png"]
    _accounted(result.summary)


@pytest.mark.parametrize("names", [["00099999_000.png", "00099998_000.png"], []], ids=["another table's", "empty"])
def test_an_nih_split_list_that_matches_nothing_is_an_error(tmp_path, names):
    csv_path = _nih_csv(tmp_path / "Data_Entry_2017.csv", NIH_ROWS)
    _nih_images(tmp_path / "images", NIH_NAMES)
    split = _write(tmp_path / "test_list.txt", names)
    with pytest.raises(DatasetError, match=r"none of its .* file names is in"):
        read_nih(csv_path, tmp_path / "images", split_list=split)


@pytest.mark.parametrize(
    ("bad_row", "kind", "example"),
    [
        # Not in NIH's vocabulary: keeping the row would call it negative for what it does show.
        (
            "00000040_000.png,Fracture|Mass,0,40,50,M,PA,2500,2048,0.168,0.168",
            UNKNOWN_LABEL,
            "unknown finding(s) ['Fracture']",
        ),
        # A truncated line: counted, not padded, since real values are missing (only empty tails are forgiven).
        ("00000040_000.png,Mass,0,40,50,M,PA,2500", MALFORMED_ROW, "9 fields, expected 12"),
        # NIH always writes a finding or "No Finding"; a blank cell is damage, not a normal image.
        ("00000040_000.png,,0,40,50,M,PA,2500,2048,0.168,0.168", MALFORMED_ROW, "empty Finding Labels"),
        # Without a patient id, patient-level splits cannot keep this image on one side.
        ("00000040_000.png,Mass,0,,50,M,PA,2500,2048,0.168,0.168", MALFORMED_ROW, "missing Patient ID"),
        # Contradictory: normal and abnormal at once.
        (
            "00000040_000.png,No Finding|Mass,0,40,50,M,PA,2500,2048,0.168,0.168",
            MALFORMED_ROW,
            "No Finding listed together with findings",
        ),
        # Listed but not on disk (e.g. one of the twelve Kaggle archives not unpacked).
        ("00000040_000.png,Mass,0,40,50,M,PA,2500,2048,0.168,0.168", MISSING_IMAGE, "00000040_000.png"),
        # The same image twice would count twice.
        (NIH_ROWS[0], DUPLICATE_ROW, "image 00000001_000.png seen before"),
    ],
)
def test_nih_bad_rows_are_counted(tmp_path, bad_row, kind, example):
    csv_path = _nih_csv(tmp_path / "Data_Entry_2017.csv", [*NIH_ROWS, bad_row])
    _nih_images(tmp_path, NIH_NAMES)
    result = read_nih(csv_path, tmp_path)
    assert len(result.records) == len(NIH_ROWS)
    assert _counts(result.summary) == {kind: 1}
    assert result.summary.problems[kind].examples == [f"line 8: {example}"]
    _accounted(result.summary)


@pytest.mark.parametrize("where", [1, 3])  # a stray quote in the first data row, or further down
def test_a_stray_quote_is_an_error_naming_its_line_not_rows_swallowed(tmp_path, where):
    rows = list(NIH_ROWS)
    rows[where] = rows[where].replace("00000", '"00000', 1)  # an unmatched quote opens a field that never closes
    csv_path = _nih_csv(tmp_path / "Data_Entry_2017.csv", rows)
    _nih_images(tmp_path, NIH_NAMES)
    with pytest.raises(DatasetError, match=rf"line {where + 2}: an unmatched quote joins lines {where + 2}-"):
        read_nih(csv_path, tmp_path)


def test_nih_header_trailing_comma_but_row_without_it(tmp_path):
    # A hand-edited 2017 copy: the header keeps its trailing empty column, one line lost its comma.
    csv_path = _nih_csv(tmp_path / "Data_Entry_2017.csv", NIH_ROWS[:2])
    with csv_path.open("a") as handle:
        handle.write(NIH_ROWS[2] + "\n")
    _nih_images(tmp_path, NIH_NAMES)
    assert len(read_nih(csv_path, tmp_path).records) == 3


def test_nih_wrong_images_dir_is_refused(tmp_path):
    csv_path = _nih_csv(tmp_path / "Data_Entry_2017.csv", NIH_ROWS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"Data_Entry_2017\.csv: 6 of 6 rows.*image folder"):
        read_nih(csv_path, tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        read_nih(csv_path, tmp_path / "absent")
    unchecked = read_nih(csv_path, tmp_path / "absent", check_files=False)
    assert unchecked.records[0].image_path == tmp_path / "absent" / "00000001_000.png"


def test_summary_report_and_log(tmp_path, caplog):
    csv_path = _nih_csv(
        tmp_path / "Data_Entry_2017.csv", [*NIH_ROWS, "00000040_000.png,Fracture,0,40,50,M,PA,1,1,1,1"]
    )
    _nih_images(tmp_path, NIH_NAMES)
    with caplog.at_level(logging.INFO, logger="chexreason.data.tables"):  # the summary logs where it is kept
        summary = read_nih(csv_path, tmp_path).summary
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unknown label name" in warnings[0].getMessage()
    assert any("7 rows read, 6 records kept" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    report = str(summary)
    assert "7 rows read, 6 records kept" in report and "unknown label name: 1 (dropped)" in report
    assert "line 8: unknown finding(s) ['Fracture']" in report


@pytest.mark.skipif(
    not (REAL_CXR / "00000001_000.png").exists(), reason=f"real NIH images not present under {REAL_CXR}"
)
def test_nih_real_images(tmp_path):
    # The two real NIH images, read in place from ../shared (never copied into the repository).
    rows = [
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
        "00027426_000.png,No Finding,0,27426,50,F,PA,2992,2991,0.143,0.143",
    ]
    csv_path = _nih_csv(tmp_path / "Data_Entry_2017_v2020.csv", rows, sex="Sex", trailing=False)
    cardiomegaly, normal = read_nih(csv_path, REAL_CXR).records
    assert cardiomegaly.image_path == REAL_CXR / "00000001_000.png" and cardiomegaly.patient_id == "1"
    assert normal.image_path == REAL_CXR / "00027426_000.png" and normal.patient_id == "27426"
    assert _positives(cardiomegaly.labels) == {"Cardiomegaly"} and cardiomegaly.labels["No Finding"] == 0.0
    assert _positives(normal.labels) == {"No Finding"} and normal.is_frontal
    assert math.isnan(normal.labels["Support Devices"])


# --- uncertainty policies ---------------------------------------------------------------------------------

UNCERTAIN = {"Edema": -1.0, "Cardiomegaly": 1.0, "Atelectasis": 0.0, "Fracture": math.nan}


@pytest.mark.parametrize(
    ("policy", "edema"),
    [
        ("u-zeros", 0.0),  # uncertain read as negative
        ("u-ones", 1.0),  # uncertain read as positive
        ("ignore", None),  # the sample is dropped: None for the whole dict
    ],
)
def test_apply_uncertainty(policy, edema):
    resolved = apply_uncertainty(UNCERTAIN, policy)
    if edema is None:
        assert resolved is None
        assert apply_uncertainty({"Edema": 0.0}, policy) == {"Edema": 0.0}  # nothing uncertain: kept
        return
    assert resolved["Edema"] == edema and resolved["Cardiomegaly"] == 1.0 and resolved["Atelectasis"] == 0.0
    assert math.isnan(resolved["Fracture"])  # not annotated stays not annotated
    assert UNCERTAIN["Edema"] == -1.0  # the input is not modified


def test_apply_uncertainty_unknown_policy():
    with pytest.raises(ValueError, match=r"u-zeros.*u-ones.*ignore"):
        apply_uncertainty(UNCERTAIN, "u-maybe")


# --- read results ------------------------------------------------------------------------------------------


def test_read_results_are_sized_iterables_of_their_records(tmp_path):
    # Each reader's result: len() and iteration over its records (re-iterable); the row account stays `summary`.
    mimic = read_mimic(_mimic_root(tmp_path / "mimic"))
    chexpert = read_chexpert(_chexpert_tree(tmp_path / "chexpert", "CheXpert-v1.0-small") / "train.csv")
    nih_csv = _nih_csv(tmp_path / "nih" / "Data_Entry_2017.csv", NIH_ROWS)
    _nih_images(tmp_path / "nih", NIH_NAMES)
    nih = read_nih(nih_csv, tmp_path / "nih")
    for result, n in ((mimic, 3), (chexpert, 3), (nih, len(NIH_ROWS))):
        assert len(result) == n == len(result.records) == result.summary.records_kept
        assert list(result) == result.records and list(result) == result.records  # a second pass sees them all
        assert all(record.dataset in ("mimic-cxr", "chexpert", "nih") for record in result)
        assert isinstance(result.summary, ReadSummary)
        _accounted(result.summary)
