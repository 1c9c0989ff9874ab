"""Loader for the SIIM-ACR Pneumothorax Segmentation data in its Kaggle layout.

The layout::

    dicom-images-train/<study UID>/<series UID>/<ImageId>.dcm   (found recursively)
    train-rle.csv                                                (ImageId, EncodedPixels)

``train-rle.csv`` has one row per pneumothorax region: a positive image with several regions
has several rows (their masks are OR-ed; regions may overlap), a negative image one row whose
``EncodedPixels`` is ``-1``. The original file's header is ``ImageId, EncodedPixels`` (with a
space) and its values carry a leading space (`` -1``); both are accepted, as are ``.csv.gz``
files. The stage-2 training file has 12,954 rows for 12,047 images (624 images with 2 to 10
rows); rows of one ImageId are merged, exact duplicate rows are dropped and counted.

The loader reads only DICOM headers (``stop_before_pixels``): PatientID for the patient-level
split, Rows and Columns for the mask size. Decoding pixels is left to the callers.
Images listed in the CSV without a DICOM file, DICOM files without a CSV row, unreadable files
and RLE rows that do not fit their image are skipped and listed in the ``SiimReport``.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from . import rle as rlecodec

__all__ = [
    "RleTable",
    "SiimDataset",
    "SiimRecord",
    "SiimReport",
    "find_dicoms",
    "load",
    "read_rle_csv",
    "split",
]

log = logging.getLogger(__name__)


@dataclass
class SiimRecord:
    """One labelled image. ``rles`` holds its non-empty RLE rows (stripped); it is empty for a
    negative image. ``height``/``width`` are the DICOM Rows/Columns (1024x1024 in SIIM-ACR)."""

    image_id: str
    path: Path
    patient_id: str
    rles: list[str]
    positive: bool
    height: int | None = None
    width: int | None = None

    def mask(self, height: int | None = None, width: int | None = None) -> np.ndarray:
        """The merged boolean mask, shape ``(height, width)``; the size defaults to the DICOM
        header's Rows and Columns."""
        h = self.height if height is None else height
        w = self.width if width is None else width
        if h is None or w is None:
            raise ValueError(f"{self.image_id}: mask size unknown, pass height and width")
        return rlecodec.merge(self.rles, h, w)


@dataclass
class SiimReport:
    """What ``load`` found and skipped; ``to_dict`` is JSON-serialisable."""

    csv_rows: int = 0
    csv_images: int = 0
    duplicate_rows: int = 0  # exact (ImageId, EncodedPixels) duplicates dropped
    multi_row_images: int = 0  # images with more than one distinct row (merged)
    conflicting_images: list[str] = field(default_factory=list)  # "-1" and RLE rows: positive
    dicom_files: int = 0
    duplicate_files: list[str] = field(default_factory=list)  # ImageId found twice: first kept
    missing_files: list[str] = field(default_factory=list)  # in the CSV, no DICOM: skipped
    unlabelled_files: list[str] = field(default_factory=list)  # DICOM, no CSV row: skipped
    unreadable_files: list[str] = field(default_factory=list)  # header unreadable: skipped
    invalid_rle: list[str] = field(default_factory=list)  # RLE does not fit the image: skipped
    missing_patient_id: list[str] = field(default_factory=list)  # grouped by ImageId instead
    records: int = 0
    positives: int = 0
    patients: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.records} images ({self.positives} positive, {self.patients} patients) from "
            f"{self.csv_rows} CSV rows for {self.csv_images} images; "
            f"{self.duplicate_rows} duplicate rows dropped, {self.multi_row_images} multi-row "
            f"images merged; skipped: {len(self.missing_files)} without a DICOM file, "
            f"{len(self.unlabelled_files)} DICOM files without a label, "
            f"{len(self.unreadable_files)} unreadable, {len(self.invalid_rle)} invalid RLE"
        )


@dataclass
class RleTable:
    """``train-rle.csv`` grouped by image, in first-appearance order."""

    rles: dict[str, list[str]]  # ImageId -> non-empty RLE rows (stripped, deduplicated)
    rows: int
    duplicate_rows: int
    multi_row_images: int
    conflicting_images: list[str]

    @property
    def positives(self) -> int:
        return sum(1 for v in self.rles.values() if v)


@dataclass
class SiimDataset:
    records: list[SiimRecord]
    report: SiimReport


def _open_text(path: str | os.PathLike) -> io.TextIOBase:
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_rle_csv(path: str | os.PathLike) -> RleTable:
    """Read a SIIM-ACR ``train-rle.csv`` (or ``.csv.gz``) and group its rows by ImageId.

    Column names are matched after stripping spaces (the original header is
    ``ImageId, EncodedPixels``). Empty and ``-1`` values mean "no pneumothorax"; an image with
    both a ``-1`` row and RLE rows is positive and listed in ``conflicting_images``.
    """
    rles: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    negative_rows: set[str] = set()
    rows = duplicates = 0
    with _open_text(path) as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty file, expected a header 'ImageId, EncodedPixels'")
        try:
            id_col, rle_col = header.index("ImageId"), header.index("EncodedPixels")
        except ValueError:
            raise ValueError(
                f"{path}: header {header!r} lacks the columns ImageId and EncodedPixels"
            ) from None
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= id_col:
                raise ValueError(f"{path}:{lineno}: row has no ImageId: {row!r}")
            image_id = row[id_col].strip()
            value = row[rle_col].strip() if len(row) > rle_col else ""
            if not image_id:
                raise ValueError(f"{path}:{lineno}: empty ImageId")
            rows += 1
            empty = rlecodec.is_empty(value)
            key = (image_id, rlecodec.EMPTY if empty else value)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            entry = rles.setdefault(image_id, [])
            if empty:
                negative_rows.add(image_id)
            else:
                entry.append(value)
    multi = sum(1 for v in rles.values() if len(v) > 1)
    conflicting = [i for i in rles if i in negative_rows and rles[i]]
    return RleTable(
        rles=rles,
        rows=rows,
        duplicate_rows=duplicates,
        multi_row_images=multi,
        conflicting_images=conflicting,
    )


def find_dicoms(root: str | os.PathLike) -> tuple[dict[str, Path], list[str]]:
    """Map ImageId (the file name without ``.dcm``) to path for every ``*.dcm`` under ``root``,
    recursively, in sorted path order. Returns the map and the ImageIds found more than once
    (the first path in sorted order is kept)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DICOM directory not found: {root}")
    found: dict[str, Path] = {}
    duplicates: list[str] = []
    paths = sorted(
        Path(d) / name
        for d, _, names in os.walk(root)
        for name in names
        if name.lower().endswith(".dcm")
    )
    for p in paths:
        image_id = p.name[: -len(".dcm")]
        if image_id in found:
            duplicates.append(image_id)
            continue
        found[image_id] = p
    return found, duplicates


def _read_header(path: Path) -> tuple[str, int | None, int | None]:
    ds = pydicom.dcmread(
        path, stop_before_pixels=True, specific_tags=["PatientID", "Rows", "Columns"]
    )
    patient_id = str(ds.get("PatientID", "") or "").strip()
    rows, cols = ds.get("Rows"), ds.get("Columns")
    height = int(rows) if rows is not None else None
    width = int(cols) if cols is not None else None
    return patient_id, height, width


def load(
    dicom_dir: str | os.PathLike,
    csv_path: str | os.PathLike,
) -> SiimDataset:
    """Load the SIIM-ACR Kaggle layout: the labels of ``csv_path`` joined with the DICOM files
    under ``dicom_dir``, one ``SiimRecord`` per image that has both, in CSV order.

    Reads each DICOM header (not its pixels) for PatientID, Rows and Columns. What is skipped
    is listed in the report and summarised in a warning.
    """
    table = read_rle_csv(csv_path)
    files, duplicate_files = find_dicoms(dicom_dir)
    report = SiimReport(
        csv_rows=table.rows,
        csv_images=len(table.rles),
        duplicate_rows=table.duplicate_rows,
        multi_row_images=table.multi_row_images,
        conflicting_images=list(table.conflicting_images),
        dicom_files=len(files) + len(duplicate_files),
        duplicate_files=duplicate_files,
    )
    report.unlabelled_files = sorted(set(files) - set(table.rles))
    records: list[SiimRecord] = []
    for image_id, rles in table.rles.items():
        path = files.get(image_id)
        if path is None:
            report.missing_files.append(image_id)
            continue
        try:
            patient_id, height, width = _read_header(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported and skipped
            log.debug("cannot read %s: %s", path, exc)
            report.unreadable_files.append(image_id)
            continue
        if not patient_id:
            report.missing_patient_id.append(image_id)
            patient_id = f"ImageId:{image_id}"
        if height is not None and width is not None:
            try:
                for r in rles:
                    rlecodec.runs(r, height, width)
            except ValueError as exc:
                log.debug("%s: %s", image_id, exc)
                report.invalid_rle.append(image_id)
                continue
        records.append(
            SiimRecord(
                image_id=image_id,
                path=path,
                patient_id=patient_id,
                rles=list(rles),
                positive=bool(rles),
                height=height,
                width=width,
            )
        )
    report.records = len(records)
    report.positives = sum(r.positive for r in records)
    report.patients = len({r.patient_id for r in records})
    skipped = (
        report.missing_files
        or report.unlabelled_files
        or report.unreadable_files
        or report.invalid_rle
        or report.duplicate_files
    )
    (log.warning if skipped else log.info)("SIIM-ACR: %s", report.summary())
    return SiimDataset(records=records, report=report)


def split(
    records: Sequence[SiimRecord],
    val_fraction: float = 0.1,
    seed: int = 0,
    *,
    stratify: bool = True,
) -> tuple[list[SiimRecord], list[SiimRecord]]:
    """Split ``records`` into (train, validation) by patient: all images of a patient go to the
    same side. About ``val_fraction`` of the images go to validation; with ``stratify`` the
    patients with a positive image and the others are split separately, so both sides keep
    the positive rate. Deterministic for a seed, whatever the order of ``records``; each side
    keeps the input order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(_patient_key(r), []).append(i)
    strata: Iterable[list[str]]
    if stratify:
        pos = sorted(p for p, idx in groups.items() if any(records[i].positive for i in idx))
        pos_set = set(pos)
        neg = sorted(p for p in groups if p not in pos_set)
        strata = (pos, neg)
    else:
        strata = (sorted(groups),)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for patients in strata:
        if not patients:
            continue
        n_images = sum(len(groups[p]) for p in patients)
        target = int(np.floor(val_fraction * n_images + 0.5))
        taken = 0
        for j in rng.permutation(len(patients)):
            if taken >= target:
                break
            p = patients[int(j)]
            val_patients.add(p)
            taken += len(groups[p])
    train = [r for r in records if _patient_key(r) not in val_patients]
    val = [r for r in records if _patient_key(r) in val_patients]
    return train, val


def _patient_key(r: SiimRecord) -> str:
    return r.patient_id if r.patient_id else f"ImageId:{r.image_id}"
