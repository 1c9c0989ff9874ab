#!/usr/bin/env python3
"""Writes an 8-bit MONOCHROME2 copy of a grayscale image (new SOP Instance UID), for the JPEG
Baseline test: JPEG Baseline holds 8-bit samples only.

Usage: to_8bit.py SOURCE.dcm OUT.dcm
"""
import sys

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

source, out = sys.argv[1:]
ds = pydicom.dcmread(source)
values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
values = (values - values.min()) / max(values.max() - values.min(), 1)
if ds.PhotometricInterpretation == "MONOCHROME1":
    values = 1 - values
for keyword in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope", "VOILUTSequence", "ModalityLUTSequence"):
    if keyword in ds:
        delattr(ds, keyword)
ds.PhotometricInterpretation = "MONOCHROME2"
ds.BitsAllocated = ds.BitsStored = 8
ds.HighBit = 7
ds.PixelRepresentation = 0
ds.PixelData = np.round(values * 255).astype(np.uint8).tobytes()
ds.SOPInstanceUID = generate_uid()
ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.save_as(out, enforce_file_format=True)
