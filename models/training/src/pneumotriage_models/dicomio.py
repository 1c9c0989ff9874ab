"""Write synthetic radiographs (`pneumotriage_models.synth.Case`) as DICOM files.

A case becomes a CR Image Storage (1.2.840.10008.5.1.4.1.1.1) or a Digital X-Ray Image Storage -
For Presentation (1.2.840.10008.5.1.4.1.1.1.1) instance, in Explicit VR Little Endian with a
Part 10 file meta header, with the headers a real chest radiograph has (patient, study, series,
equipment, view position, patient orientation, pixel spacing, Modality LUT, VOI window) and the
ones ``dciodvfy`` requires for each IOD.

Everything is derived from ``(seed, index)`` (UIDs are ``2.25.`` + a name-based UUID; dates
and times come from the index, never from the clock), so writing the same case twice gives the
same bytes. Every file says what it is: ``ImageComments`` and ``DerivationDescription`` carry
`pneumotriage_models.DEMO_NOTICE`.

Pixel values: the case's image (0..1, 1 = dense as displayed in MONOCHROME2) is mapped linearly
onto ``case.stored_range`` (stored values for 0.0 and 1.0, MONOCHROME2 sense) and rounded;
MONOCHROME1 stores ``2**BitsStored - 1 - value``, so that after its inversion the display is the
same. `stored_pixels` gives the array and the window exactly as written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from . import DEMO_NOTICE, __version__
from .synth import Case

__all__ = [
    "CR_IMAGE_STORAGE",
    "DX_PRESENTATION_STORAGE",
    "IMPLEMENTATION_CLASS_UID",
    "build_dataset",
    "case_uids",
    "stored_pixels",
    "write_dicom",
]

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_PRESENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")

# Codes as the current standard has them (pydicom.sr.codedict agrees): CID 4009 "DX Anatomy
# Imaged" Chest, CID 4010 "DX View" postero-anterior / antero-posterior. (SCT 51185008
# "Thorax" and 43799004 "Chest" are the older, inactivated SNOMED concepts.)
_CHEST = ("816094009", "SCT", "Chest")
_VIEW_PA = ("272479007", "SCT", "postero-anterior")
_VIEW_AP = ("399348003", "SCT", "antero-posterior")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:pneumotriage:models:synth")


def _uid(*parts: object) -> UID:
    """A ``2.25`` UID from a name-based (SHA-1, version 5) UUID of ``parts``: deterministic."""
    name = "/".join(str(p) for p in parts)
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


IMPLEMENTATION_CLASS_UID = _uid("implementation", "pneumotriage-models")
IMPLEMENTATION_VERSION_NAME = ("PNEUMOTRIAGE_" + __version__.replace(".", ""))[:16]


def case_uids(seed: int, index: int) -> dict[str, UID]:
    """The study, series, instance and frame-of-reference UIDs of case ``(seed, index)``."""
    return {
        "study": _uid("study", seed, index),
        "series": _uid("series", seed, index),
        "instance": _uid("instance", seed, index),
    }


def _hash_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


def stored_pixels(case: Case) -> tuple[np.ndarray, float, float]:
    """The stored pixel values (uint8 or uint16) and the VOI window (centre, width) in stored
    values that ``write_dicom`` writes for ``case``."""
    lo, hi = case.stored_range
    maxv = case.max_stored
    img = np.clip(case.image.astype(np.float64), 0.0, 1.0)
    v = np.rint(lo + img * (hi - lo))
    # A window that shows the lungs well: from a little below the darkest lung to the
    # brightest structures (mediastinum, bone), as a chest window does.
    sub = img[::4, ::4]
    lsub = case.lungs[::4, ::4]
    dark = float(np.percentile(sub[lsub], 0.5)) if lsub.any() else float(np.percentile(sub, 2))
    bright = float(np.percentile(sub, 99.7))
    a = lo + max(0.0, dark - 0.04) * (hi - lo)
    b = lo + min(1.0, bright + 0.02) * (hi - lo)
    width = max(2.0, round(b - a))
    centre = round((a + b) / 2.0)
    if case.photometric == "MONOCHROME1":
        v = maxv - v
        centre = maxv - centre
    dtype = np.uint8 if case.bits_stored <= 8 else np.uint16
    return v.astype(dtype), float(centre), float(width)


def _date(days: int) -> str:
    return (_dt.date(2019, 1, 1) + _dt.timedelta(days=days)).strftime("%Y%m%d")


def build_dataset(
    case: Case,
    *,
    seed: int | None = None,
    index: int | None = None,
    patient_index: int | None = None,
) -> Dataset:
    """The DICOM data set (with its file meta information) of ``case``."""
    seed = case.seed if seed is None else int(seed)
    index = case.index if index is None else int(index)
    patient = index if patient_index is None else int(patient_index)
    uids = case_uids(seed, index)
    is_dx = case.modality == "DX"
    sop_class = DX_PRESENTATION_STORAGE if is_dx else CR_IMAGE_STORAGE
    pixels, centre, width = stored_pixels(case)

    # dates and times from the index: a study every few hours over about four years
    h = _hash_int("when", seed, index)
    day = (index * 7 + h % 7) % 1460
    study_date = _date(day)
    secs = 7 * 3600 + (h >> 8) % (12 * 3600)
    study_time = f"{secs // 3600:02d}{secs // 60 % 60:02d}{secs % 60:02d}"
    acq_secs = secs + 60 + (h >> 24) % 600
    acq_time = f"{acq_secs // 3600:02d}{acq_secs // 60 % 60:02d}{acq_secs % 60:02d}"
    study_year = int(study_date[:4])
    ph = _hash_int("patient", seed, patient)
    birth = _dt.date(study_year - case.patient_age, 1, 1) - _dt.timedelta(days=int(1 + ph % 364))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uids["instance"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128

    # SOP Common, General Image
    derivation = (
        f"{DEMO_NOTICE}; synthetic radiograph, pneumotriage_models.synth seed {seed} index {index}"
    )
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uids["instance"]
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.AcquisitionDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = study_time
    ds.SeriesTime = acq_time
    ds.AcquisitionTime = acq_time
    ds.ContentTime = acq_time
    ds.AccessionNumber = f"SYN{seed % 1000:03d}{index:07d}"[:16]
    ds.Modality = case.modality
    if is_dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "pneumotriage synthetic"
    ds.InstitutionName = "pneumotriage synthetic data"
    ds.ReferringPhysicianName = ""
    ds.StationName = "SYNTH"
    ds.StudyDescription = f"CHEST {case.view}"
    ds.SeriesDescription = f"view: {case.view}"
    ds.ManufacturerModelName = "pneumotriage_models.synth"
    ds.DerivationDescription = derivation[:1024]

    # Patient
    ds.PatientName = f"SYNTH^{patient:04d}"
    ds.PatientID = f"SYNTH-{seed}-{patient:06d}"
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = case.patient_sex
    ds.PatientAge = f"{case.patient_age:03d}Y"

    # Series / acquisition
    ds.BodyPartExamined = "CHEST"
    ds.SoftwareVersions = f"pneumotriage_models {__version__}"
    ds.KVP = "120" if case.view == "PA" else "90"
    ds.DistanceSourceToDetector = "1800" if case.view == "PA" else "1000"
    ds.ViewPosition = case.view
    if not is_dx:
        ds.PlateType = "SYNTHETIC"
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids["series"]
    ds.StudyID = f"S{index:07d}"[:16]
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]  # displayed as usual: patient's left on the right
    if is_dx:
        ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.ImageComments = DEMO_NOTICE

    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = case.photometric
    ds.Rows, ds.Columns = case.size
    spacing = [
        f"{case.pixel_spacing[0]:.4f}".rstrip("0").rstrip("."),
        f"{case.pixel_spacing[1]:.4f}".rstrip("0").rstrip("."),
    ]
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = spacing
    ds.BitsAllocated = 8 if case.bits_stored <= 8 else 16
    ds.BitsStored = case.bits_stored
    ds.HighBit = case.bits_stored - 1
    ds.PixelRepresentation = 0
    if is_dx:
        ds.PixelIntensityRelationship = "LOG"
        # +1: lower values = less X-ray intensity (denser); MONOCHROME1 stores dense as low
        ds.PixelIntensityRelationshipSign = 1 if case.photometric == "MONOCHROME1" else -1
    ds.WindowCenter = f"{centre:.0f}"
    ds.WindowWidth = f"{width:.0f}"
    ds.WindowCenterWidthExplanation = "LUNG"
    ds.VOILUTFunction = "LINEAR"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    if is_dx:
        ds.PresentationLUTShape = "INVERSE" if case.photometric == "MONOCHROME1" else "IDENTITY"
        ds.DetectorType = "SCINTILLATOR"
        ds.DetectorConfiguration = "AREA"
        ds.AcquisitionContextSequence = Sequence()
        ds.AnatomicRegionSequence = Sequence([_code(*_CHEST)])
        view = _code(*(_VIEW_PA if case.view == "PA" else _VIEW_AP))
        view.ViewModifierCodeSequence = Sequence()
        ds.ViewCodeSequence = Sequence([view])
        ds.PositionerType = "COLUMN" if case.view == "PA" else "NONE"

    raw = pixels.astype("<u2" if ds.BitsAllocated == 16 else "u1").tobytes()
    if len(raw) % 2:
        raw += b"\0"
    ds.PixelData = raw
    ds["PixelData"].VR = "OW" if ds.BitsAllocated == 16 else "OB"
    return ds


def write_dicom(
    case: Case,
    path: str | os.PathLike,
    *,
    seed: int | None = None,
    index: int | None = None,
    patient_index: int | None = None,
) -> Path:
    """Write ``case`` to ``path`` as a DICOM Part 10 file and return the path.

    ``seed``/``index`` default to the case's own and determine every UID, date and identifier;
    ``patient_index`` (default: ``index``) groups images under one synthetic patient.
    """
    ds = build_dataset(case, seed=seed, index=index, patient_index=patient_index)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
