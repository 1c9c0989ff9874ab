#!/usr/bin/env python3
"""Writes a chest CR that takes the node long to decode: 4000 x 4000 12-bit noise, JPEG 2000
lossless (one tile), so that a test can kill the node while it is being analysed.

Usage: make_slow_j2k.py OUT.dcm
"""
import sys

import numpy as np
import pydicom
from openjpeg import encode
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, generate_uid

CR = "1.2.840.10008.5.1.4.1.1.1"


def main(out):
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 4096, size=(4000, 4000), dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.file_meta.MediaStorageSOPClassUID = CR
    ds.SOPClassUID = CR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientID = "SLOW"
    ds.PatientName = "Slow^Image"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([encode(pixels, bits_stored=12)])
    ds["PixelData"].VR = "OB"
    ds.save_as(out, enforce_file_format=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
