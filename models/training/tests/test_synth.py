"""The synthetic radiograph generator, its DICOM writer and the SIIM-ACR-style set writer."""

from __future__ import annotations

import csv
import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pneumotriage_models import DEMO_NOTICE
from pneumotriage_models.dicomio import (
    CR_IMAGE_STORAGE,
    DX_PRESENTATION_STORAGE,
    case_uids,
    stored_pixels,
    write_dicom,
)
from pneumotriage_models.generate import generate, main
from pneumotriage_models.rle import decode
from pneumotriage_models.synth import POSITIVE_FRACTION, Case, make_case

DCIODVFY = "/usr/bin/dciodvfy"


def _same_case(a: Case, b: Case) -> None:
    assert a.image.dtype == np.float32 and a.image.ndim == 2
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.mask, b.mask)
    assert np.array_equal(a.lungs, b.lungs)
    for f in dataclasses.fields(Case):
        if f.name not in ("image", "mask", "lungs"):
            assert getattr(a, f.name) == getattr(b, f.name), f.name


# ---- determinism -----------------------------------------------------------------------------


def test_same_seed_and_index_give_identical_arrays():
    _same_case(make_case(7, 3, size=192), make_case(7, 3, size=192))
    _same_case(make_case(7, 4, positive=True, size=160), make_case(7, 4, positive=True, size=160))


def test_full_size_case_is_deterministic_and_well_formed():
    a, b = make_case(11, 0, positive=True), make_case(11, 0, positive=True)
    _same_case(a, b)
    rows, cols = a.size
    assert 768 <= rows <= 1400 and 768 <= cols <= 1400
    assert a.image.min() >= 0.0 and a.image.max() <= 1.0
    assert a.mask.dtype == bool and a.lungs.dtype == bool
    assert a.mask.any() and not (a.mask & ~a.lungs).any()


def test_different_seeds_or_indices_differ():
    a = make_case(1, 0, size=128)
    assert not np.array_equal(a.image, make_case(2, 0, size=128).image)
    assert not np.array_equal(a.image, make_case(1, 1, size=128).image)


def test_forcing_the_label_keeps_the_anatomy():
    neg = make_case(5, 9, positive=False, size=192)
    pos = make_case(5, 9, positive=True, size=192)
    assert not neg.positive and pos.positive
    assert np.array_equal(neg.lungs, pos.lungs)
    assert (neg.modality, neg.photometric, neg.bits_stored, neg.view) == (
        pos.modality,
        pos.photometric,
        pos.bits_stored,
        pos.view,
    )
    # the images differ in and around the pneumothorax, hardly anywhere else
    diff = np.abs(neg.image - pos.image) > 0.02
    near = pos.lungs.copy()  # the lung fields and a few pixels round them (soft edges)
    for _ in range(6):
        grown = near.copy()
        grown[1:] |= near[:-1]
        grown[:-1] |= near[1:]
        grown[:, 1:] |= near[:, :-1]
        grown[:, :-1] |= near[:, 1:]
        near = grown
    assert diff[pos.mask].mean() > 0.5
    assert diff[~near].mean() < 0.002


def test_same_case_gives_identical_dicom_bytes(tmp_path):
    case = make_case(3, 2, size=128)
    p1 = write_dicom(case, tmp_path / "a.dcm")
    p2 = write_dicom(make_case(3, 2, size=128), tmp_path / "b.dcm")
    assert p1.read_bytes() == p2.read_bytes()
    # and another case's file differs, UIDs included
    p3 = write_dicom(make_case(3, 3, size=128), tmp_path / "c.dcm")
    assert p3.read_bytes() != p1.read_bytes()
    assert pydicom.dcmread(p3).SOPInstanceUID != pydicom.dcmread(p1).SOPInstanceUID


def test_uids_are_deterministic_valid_and_distinct():
    u = case_uids(4, 17)
    assert u == case_uids(4, 17)
    assert len(set(u.values())) == 3
    assert u != case_uids(4, 18) and u != case_uids(5, 17)
    for uid in u.values():
        assert uid.startswith("2.25.") and len(uid) <= 64 and uid.is_valid


# ---- labels ----------------------------------------------------------------------------------


def test_masks_lie_inside_the_lung_on_their_side():
    for i in range(30):
        c = make_case(21, i, positive=True, size=192)
        assert c.positive and c.side in ("left", "right") and c.kind in ("apical", "lateral")
        assert c.mask.any(), i
        assert not (c.mask & ~c.lungs).any(), i
        # patient's left is the image's right
        cols = np.nonzero(c.mask)[1]
        if c.side == "left":
            assert cols.min() > c.columns * 0.4, i
        else:
            assert cols.max() < c.columns * 0.6, i
        # the lungs are two sizeable fields, one on each half of the image
        assert c.lungs[:, : c.columns // 2].sum() > 0.05 * c.lungs.size
        assert c.lungs[:, c.columns // 2 :].sum() > 0.05 * c.lungs.size


def test_negatives_have_empty_masks():
    for i in range(12):
        c = make_case(22, i, positive=False, size=128)
        assert not c.positive and c.side is None and c.kind is None
        assert not c.mask.any()
        assert c.lungs.any()


def test_positive_fraction_is_as_intended():
    cases = [make_case(23, i, size=64) for i in range(100)]
    frac = np.mean([c.positive for c in cases])
    assert 0.30 <= frac <= 0.55, frac
    assert 0.35 <= POSITIVE_FRACTION <= 0.5
    for c in cases:
        assert c.positive == bool(c.mask.any())


def test_pneumothoraces_vary_in_size_side_and_kind():
    cases = [make_case(24, i, positive=True, size=160) for i in range(40)]
    share = np.array([c.mask.sum() / c.lungs.sum() for c in cases])
    assert share.min() < 0.04, share.min()  # small ones
    assert share.max() > 0.12, share.max()  # large ones
    assert {c.side for c in cases} == {"left", "right"}
    assert {c.kind for c in cases} == {"apical", "lateral"}


def test_acquisition_parameters_vary():
    cases = [make_case(25, i, size=64) for i in range(80)]
    assert {c.modality for c in cases} == {"CR", "DX"}
    assert {c.photometric for c in cases} == {"MONOCHROME1", "MONOCHROME2"}
    assert {c.view for c in cases} == {"PA", "AP"}
    bits = {c.bits_stored for c in cases}
    assert min(bits) == 8 and max(bits) == 16 and len(bits) >= 4
    for c in cases:
        lo, hi = c.stored_range
        assert 0 <= lo < hi <= c.max_stored
    sizes = {make_case(25, i).size for i in range(3)}  # drawn sizes (no override)
    assert len(sizes) > 1


# ---- DICOM -----------------------------------------------------------------------------------


def _variants() -> list[Case]:
    """One small case per modality x photometric x bits combination."""
    base = make_case(31, 1, positive=True, size=96)
    out = []
    for modality in ("CR", "DX"):
        for photometric in ("MONOCHROME1", "MONOCHROME2"):
            for bits in (8, 12, 16):
                maxv = (1 << bits) - 1
                lo, hi = (3, 250) if bits == 8 else (int(maxv * 0.05), int(maxv * 0.93))
                for view in ("PA", "AP") if (photometric, bits) == ("MONOCHROME2", 12) else ("PA",):
                    out.append(
                        dataclasses.replace(
                            base,
                            modality=modality,
                            photometric=photometric,
                            bits_stored=bits,
                            stored_range=(lo, hi),
                            view=view,
                        )
                    )
    return out


@pytest.mark.skipif(
    not Path(DCIODVFY).exists(),
    reason="dicom3tools' dciodvfy is not installed at /usr/bin/dciodvfy",
)
def test_dciodvfy_reports_no_errors(tmp_path):
    for n, case in enumerate(_variants()):
        path = write_dicom(case, tmp_path / f"{n}.dcm", index=n)
        out = subprocess.run(
            [DCIODVFY, str(path)], check=False, capture_output=True, text=True, timeout=60
        )
        lines = (out.stdout + out.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, (case.modality, case.photometric, case.bits_stored, errors)
        iod = "DXImageForPresentation" if case.modality == "DX" else "CRImage"
        assert iod in lines, lines


def test_generated_files_read_back_consistently(tmp_path):
    for n, case in enumerate(_variants()):
        path = write_dicom(case, tmp_path / f"{n}.dcm", index=n)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == (
            DX_PRESENTATION_STORAGE if case.modality == "DX" else CR_IMAGE_STORAGE
        )
        assert ds.Modality == case.modality
        assert ds.PhotometricInterpretation == case.photometric
        assert ds.BitsStored == case.bits_stored and ds.HighBit == case.bits_stored - 1
        assert ds.BitsAllocated == (8 if case.bits_stored == 8 else 16)
        assert ds.PixelRepresentation == 0
        assert (ds.Rows, ds.Columns) == case.size
        assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition == case.view
        assert list(ds.PatientOrientation) == ["L", "F"]
        assert ds.ImageComments == DEMO_NOTICE and DEMO_NOTICE in ds.DerivationDescription
        assert ds.Manufacturer == "pneumotriage synthetic"
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == 0.0
        assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx(
            list(case.pixel_spacing), abs=1e-4
        )
        if case.modality == "DX":
            assert ds.RescaleType == "US"
            assert ds.PresentationLUTShape == (
                "INVERSE" if case.photometric == "MONOCHROME1" else "IDENTITY"
            )

        arr = ds.pixel_array
        maxv = (1 << case.bits_stored) - 1
        assert arr.dtype == (np.uint8 if case.bits_stored == 8 else np.uint16)
        assert int(arr.max()) <= maxv
        expected, centre, width = stored_pixels(case)
        assert np.array_equal(arr, expected)
        # undo MONOCHROME1's inversion and the linear mapping: the case's image comes back
        v = arr.astype(np.float64)
        if case.photometric == "MONOCHROME1":
            v = maxv - v
        lo, hi = case.stored_range
        back = (v - lo) / (hi - lo)
        assert np.abs(back - case.image).max() <= 0.5 / (hi - lo) + 1e-6
        # MONOCHROME1: dense (bright on display) is stored low
        dense = case.image > np.percentile(case.image, 90)
        air = case.image < np.percentile(case.image, 10)
        if case.photometric == "MONOCHROME1":
            assert arr[dense].mean() < arr[air].mean()
        else:
            assert arr[dense].mean() > arr[air].mean()
        # the window lies within the stored range and shows the lungs
        assert float(ds.WindowCenter) == centre and float(ds.WindowWidth) == width
        assert 0 <= centre <= maxv and 1 < width <= maxv + 1
        lung_vals = arr[case.lungs & ~case.mask]
        lo_w, hi_w = centre - width / 2, centre + width / 2
        inside = ((lung_vals >= lo_w) & (lung_vals <= hi_w)).mean()
        assert inside > 0.95


def test_patient_index_groups_images_under_one_patient(tmp_path):
    a = pydicom.dcmread(write_dicom(make_case(8, 1, size=64), tmp_path / "a.dcm", patient_index=42))
    b = pydicom.dcmread(write_dicom(make_case(8, 2, size=64), tmp_path / "b.dcm", patient_index=42))
    c = pydicom.dcmread(write_dicom(make_case(8, 3, size=64), tmp_path / "c.dcm"))
    assert a.PatientID == b.PatientID != c.PatientID
    assert a.StudyInstanceUID != b.StudyInstanceUID


# ---- the SIIM-ACR-style set ------------------------------------------------------------------


def test_generate_writes_the_siim_layout(tmp_path):
    n, seed = 8, 41
    records = generate(tmp_path / "set", n, seed, size=96)
    root = tmp_path / "set"
    files = sorted((root / "dicom-images-train").rglob("*.dcm"))
    assert len(files) == n == len(records)
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        rel = f.relative_to(root / "dicom-images-train").parts
        assert rel == (ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")

    text = (root / "train-rle.csv").read_text()
    lines = text.splitlines()
    assert lines[0] == "ImageId, EncodedPixels"
    rows = list(csv.reader(lines[1:]))
    assert len(rows) == n  # one row per image
    ids = [r[0] for r in rows]
    assert len(set(ids)) == n and set(ids) == {f.stem for f in files}
    by_id = dict(rows)
    for i, rec in enumerate(records):
        case = make_case(seed, i, size=96)
        value = by_id[rec.image_id]
        assert value.startswith(" ")  # as the Kaggle file writes it
        if case.positive:
            assert value.strip() != "-1"
            assert np.array_equal(decode(value, case.rows, case.columns), case.mask)
        else:
            assert value == " -1"
    assert any(r.positive for r in records) and not all(r.positive for r in records)

    cases_csv = list(csv.DictReader((root / "synth-cases.csv").open()))
    assert [r["ImageId"] for r in cases_csv] == [r.image_id for r in records]


def test_generate_is_reproducible(tmp_path):
    generate(tmp_path / "a", 3, 42, size=64)
    main([str(tmp_path / "b"), "3", "--seed", "42", "--size", "64"])
    for name in ("train-rle.csv", "synth-cases.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    fa = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.dcm"))
    fb = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.dcm"))
    assert fa == fb and len(fa) == 3
    for rel in fa:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    shutil.rmtree(tmp_path / "b")
