#!/usr/bin/env python3
"""Writes N distinct DX (for presentation) images for tests and benchmarks.

Usage: make_series.py OUTDIR N [--size PIXELS] [--seed S]

Each file has its own Study/Series/SOP Instance UIDs and its own pixels (a gradient with a
seeded pattern), so that no two are the same bytes. --size is the edge of the square image
(16-bit, so 1600 gives about 5 MB per file).
"""
import argparse
import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def make(path, index, size, rng):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = f"Test^Series{index}"
    ds.PatientID = f"PT{index:05d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20261125"
    ds.StudyTime = "120000"
    ds.AccessionNumber = f"ACC{index:05d}"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Manufacturer = "pneumotriage tests"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.2, 0.2]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PatientOrientation = ["L", "F"]
    ramp = np.linspace(0, 3000, size, dtype=np.float32)
    pixels = (ramp[None, :] + ramp[:, None] * 0.3) % 4096
    pixels = pixels.astype(np.uint16) ^ rng.integers(0, 64, size=(size, size), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir")
    parser.add_argument("n", type=int)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    os.makedirs(args.outdir, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for i in range(args.n):
        make(os.path.join(args.outdir, f"dx{i:04d}.dcm"), i, args.size, rng)


if __name__ == "__main__":
    main()
