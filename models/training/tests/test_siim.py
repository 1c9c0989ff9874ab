"""SIIM-ACR loader on a small fake Kaggle layout written with pydicom, and its CSV reader on the
real train-rle.csv."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import siim_csv
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from pneumotriage_models import rle, siim

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
H, W = 6, 8  # not square, so that a swapped height/width would show


def write_dicom(path: Path, image_id: str, patient_id: str | None, rows: int = H, cols: int = W):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = image_id
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = image_id  # SIIM-ACR's ImageId is the SOP Instance UID
    ds.StudyInstanceUID = image_id + ".1"
    ds.SeriesInstanceUID = image_id + ".2"
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(rows * cols, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def dicom_path(root: Path, image_id: str) -> Path:
    return root / f"{image_id}.1" / f"{image_id}.2" / f"{image_id}.dcm"


# ImageId -> PatientID (None: the tag is absent)
IMAGES = {
    "1.2.3.1": "P1",  # positive, two overlapping RLE rows
    "1.2.3.2": "P1",  # negative
    "1.2.3.3": "P2",  # positive, one row written twice (an exact duplicate)
    "1.2.3.4": "P3",  # negative
    "1.2.3.5": None,  # negative, no PatientID
    "1.2.3.6": "P4",  # DICOM file without a CSV row
}
ROWS_CSV = [
    ("1.2.3.1", "0 3 5 2"),  # flat 0..2, 8..9
    ("1.2.3.2", "-1"),
    ("1.2.3.1", "1 3"),  # flat 1..3: overlaps the first row
    ("1.2.3.3", "10 4"),
    ("1.2.3.4", "-1"),
    ("1.2.3.3", "10 4"),  # exact duplicate
    ("1.2.3.5", "-1"),
    ("1.2.3.9", "-1"),  # no DICOM file
]


def write_csv(path: Path, rows, header: str = "ImageId, EncodedPixels", space: bool = True):
    lines = [header] + [f"{i},{' ' if space else ''}{v}" for i, v in rows]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "dicom-images-train"
    for image_id, patient in IMAGES.items():
        write_dicom(dicom_path(root, image_id), image_id, patient)
    csv_path = tmp_path / "train-rle.csv"
    write_csv(csv_path, ROWS_CSV)
    return root, csv_path


def test_read_rle_csv_merges_and_drops_duplicates(tmp_path: Path):
    p = tmp_path / "train-rle.csv"
    write_csv(p, ROWS_CSV)
    t = siim.read_rle_csv(p)
    assert t.rows == len(ROWS_CSV) == 8
    assert list(t.rles) == ["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4", "1.2.3.5", "1.2.3.9"]
    assert t.rles["1.2.3.1"] == ["0 3 5 2", "1 3"]  # leading spaces stripped
    assert t.rles["1.2.3.3"] == ["10 4"]
    assert t.rles["1.2.3.2"] == []
    assert t.duplicate_rows == 1
    assert t.multi_row_images == 1
    assert t.positives == 2
    assert t.conflicting_images == []


@pytest.mark.parametrize("header,space,name", [
    ("ImageId,EncodedPixels", False, "train-rle.csv"),
    ("ImageId, EncodedPixels", True, "train-rle.csv.gz"),
    ("\ufeffImageId, EncodedPixels", True, "train-rle.csv"),
])  # fmt: skip
def test_read_rle_csv_header_variants(tmp_path: Path, header, space, name):
    p = tmp_path / name
    write_csv(p, ROWS_CSV, header=header, space=space)
    t = siim.read_rle_csv(p)
    assert t.rows == 8 and len(t.rles) == 6 and t.rles["1.2.3.1"] == ["0 3 5 2", "1 3"]


def test_read_rle_csv_bad_header(tmp_path: Path):
    p = tmp_path / "train-rle.csv"
    write_csv(p, ROWS_CSV, header="id,mask")
    with pytest.raises(ValueError, match="ImageId"):
        siim.read_rle_csv(p)


def test_read_rle_csv_conflicting_rows_are_positive(tmp_path: Path):
    p = tmp_path / "train-rle.csv"
    write_csv(p, [("a", "-1"), ("a", "2 2"), ("b", "-1"), ("b", "-1")])
    t = siim.read_rle_csv(p)
    assert t.rles == {"a": ["2 2"], "b": []}
    assert t.conflicting_images == ["a"]
    assert t.duplicate_rows == 1


def test_load(layout):
    root, csv_path = layout
    ds = siim.load(root, csv_path)
    rep = ds.report
    ids = [r.image_id for r in ds.records]
    assert ids == ["1.2.3.1", "1.2.3.2", "1.2.3.3", "1.2.3.4", "1.2.3.5"]  # CSV order
    assert rep.csv_rows == 8 and rep.csv_images == 6
    assert rep.duplicate_rows == 1 and rep.multi_row_images == 1
    assert rep.missing_files == ["1.2.3.9"]
    assert rep.unlabelled_files == ["1.2.3.6"]
    assert rep.missing_patient_id == ["1.2.3.5"]
    assert rep.records == 5 and rep.positives == 2 and rep.patients == 4
    assert rep.dicom_files == 6
    json.dumps(rep.to_dict())  # JSON-serialisable

    by_id = {r.image_id: r for r in ds.records}
    a = by_id["1.2.3.1"]
    assert a.positive and a.patient_id == "P1" and (a.height, a.width) == (H, W)
    assert a.path == dicom_path(root, "1.2.3.1")
    assert a.rles == ["0 3 5 2", "1 3"]
    m = a.mask()
    assert m.shape == (H, W) and m.dtype == bool
    np.testing.assert_array_equal(m, rle.decode("0 3 5 2", H, W) | rle.decode("1 3", H, W))
    # flat 0..3 and 8..9 in column-major order: rows 0-3 of column 0, rows 2-3 of column 1
    expected = np.zeros((H, W), dtype=bool)
    expected[0:4, 0] = True
    expected[2:4, 1] = True
    np.testing.assert_array_equal(m, expected)
    assert rle.encode(m) == "0 4 4 2"
    assert a.mask(H, W).shape == (H, W)

    neg = by_id["1.2.3.2"]
    assert not neg.positive and neg.rles == [] and not neg.mask().any()
    assert by_id["1.2.3.3"].rles == ["10 4"]
    assert by_id["1.2.3.5"].patient_id == "ImageId:1.2.3.5"


def test_load_reads_no_pixels(layout, monkeypatch):
    root, csv_path = layout
    calls = []
    real = pydicom.dcmread

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(siim.pydicom, "dcmread", spy)
    siim.load(root, csv_path)
    assert calls and all(c.get("stop_before_pixels") for c in calls)


def test_load_skips_unreadable_and_invalid(tmp_path: Path):
    root = tmp_path / "dicom-images-train"
    write_dicom(dicom_path(root, "1.9.1"), "1.9.1", "PA")
    write_dicom(dicom_path(root, "1.9.2"), "1.9.2", "PB")
    bad = dicom_path(root, "1.9.3")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a DICOM file")
    csv_path = tmp_path / "train-rle.csv"
    write_csv(csv_path, [("1.9.1", "2 3"), ("1.9.2", f"0 {H * W + 1}"), ("1.9.3", "-1")])
    ds = siim.load(root, csv_path)
    assert [r.image_id for r in ds.records] == ["1.9.1"]
    assert ds.report.invalid_rle == ["1.9.2"]
    assert ds.report.unreadable_files == ["1.9.3"]


def test_find_dicoms_recursive_and_duplicates(tmp_path: Path):
    write_dicom(tmp_path / "a" / "b" / "x.dcm", "1.5.1", "P")
    write_dicom(tmp_path / "c" / "x.dcm", "1.5.1", "P")
    write_dicom(tmp_path / "y.dcm", "1.5.2", "P")
    (tmp_path / "notes.txt").write_text("ignored")
    files, dups = siim.find_dicoms(tmp_path)
    assert files == {"x": tmp_path / "a" / "b" / "x.dcm", "y": tmp_path / "y.dcm"}
    assert dups == ["x"]
    with pytest.raises(FileNotFoundError):
        siim.find_dicoms(tmp_path / "missing")


def fake_records(n_patients: int = 60, seed: int = 0) -> list[siim.SiimRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        for k in range(int(rng.integers(1, 4))):
            positive = bool(rng.random() < 0.25)
            out.append(
                siim.SiimRecord(
                    image_id=f"img{p}.{k}",
                    path=Path(f"/nonexistent/img{p}.{k}.dcm"),
                    patient_id=f"patient{p}",
                    rles=["0 1"] if positive else [],
                    positive=positive,
                )
            )
    return out


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
@pytest.mark.parametrize("stratify", [True, False])
def test_split_never_shares_a_patient(seed, fraction, stratify):
    records = fake_records()
    train, val = siim.split(records, fraction, seed, stratify=stratify)
    assert len(train) + len(val) == len(records)
    assert {r.image_id for r in train}.isdisjoint(r.image_id for r in val)
    assert {r.patient_id for r in train}.isdisjoint(r.patient_id for r in val)
    assert val and train
    assert abs(len(val) - fraction * len(records)) <= 6  # within a couple of patients
    # input order kept on each side
    order = {r.image_id: i for i, r in enumerate(records)}
    assert [order[r.image_id] for r in train] == sorted(order[r.image_id] for r in train)
    if stratify:
        n_pos = sum(r.positive for r in records)
        assert abs(sum(r.positive for r in val) - fraction * n_pos) <= 4


def test_split_deterministic_and_order_independent():
    records = fake_records()
    a = siim.split(records, 0.2, 42)
    b = siim.split(list(reversed(records)), 0.2, 42)
    assert {r.image_id for r in a[1]} == {r.image_id for r in b[1]}
    c = siim.split(records, 0.2, 43)
    assert {r.image_id for r in a[1]} != {r.image_id for r in c[1]}
    assert siim.split(records, 0.0, 1)[1] == []
    with pytest.raises(ValueError):
        siim.split(records, 1.0, 0)


def test_split_loaded_layout(layout):
    root, csv_path = layout
    records = siim.load(root, csv_path).records
    for seed in range(10):
        train, val = siim.split(records, 0.4, seed)
        assert {r.patient_id for r in train}.isdisjoint(r.patient_id for r in val)
        p1 = [r for r in train + val if r.patient_id == "P1"]
        assert len(p1) == 2 and (p1[0] in train) == (p1[1] in train)


def test_read_rle_csv_on_real_siim_file():
    path = siim_csv.require_csv()
    t = siim.read_rle_csv(path)
    assert t.rows == siim_csv.ROWS
    assert len(t.rles) == siim_csv.IMAGES
    if siim_csv.is_pinned(path):
        assert t.duplicate_rows == 0  # no exact duplicate rows in the stage-2 file
        assert t.multi_row_images == 624  # 907 extra rows: the regions of multi-region images
        assert t.positives == 2_669  # 22.2% of 12,047
        assert t.conflicting_images == []
        assert sum(len(v) for v in t.rles.values()) == 3_576
