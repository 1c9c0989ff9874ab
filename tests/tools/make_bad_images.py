#!/usr/bin/env python3
"""Writes images the pipeline must not analyse, from a good chest radiograph.

Usage: make_bad_images.py SOURCE.dcm OUTDIR

- color.dcm: the same image as 8-bit RGB (a colour DX): skipped, not grayscale;
- short_pixels.dcm: Pixel Data cut to half of what Rows x Columns needs (corrupt pixel data):
  the DICOM structure is valid, so it is received; the analysis fails.
Each gets a new SOP Instance UID.
"""
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def renamed(ds):
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def main(source, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = renamed(pydicom.dcmread(source))
    grey = ds.pixel_array.astype(np.float64)
    grey = (255 * (grey - grey.min()) / max(grey.max() - grey.min(), 1)).astype(np.uint8)
    ds.PhotometricInterpretation = "RGB"
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for keyword in ("WindowCenter", "WindowWidth", "RescaleIntercept", "RescaleSlope"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = np.repeat(grey[:, :, None], 3, axis=2).tobytes()
    ds.save_as(out / "color.dcm", enforce_file_format=True)

    ds = renamed(pydicom.dcmread(source))
    data = ds.PixelData
    ds.PixelData = data[: (len(data) // 4) * 2]
    ds.save_as(out / "short_pixels.dcm", enforce_file_format=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
