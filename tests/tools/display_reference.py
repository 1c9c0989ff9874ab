#!/usr/bin/env python3
"""Writes the reference display image (and optionally the model-size image) of a DICOM file as
raw little-endian float32, for the Rust imaging tests.

Usage: display_reference.py FILE OUT [--size N]

The reference is models/training's preprocess.py: pydicom's apply_modality_lut, then pydicom's
apply_voi_lut for a VOI LUT Sequence (scaled by the LUT's output range) or the documented window
otherwise, then the MONOCHROME1 inversion; with --size, Pillow's BILINEAR resize to N x N.
"""
import os
import sys

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "models", "training", "src"))
from pneumotriage_models import preprocess  # noqa: E402


def reference(ds):
    if "VOILUTSequence" in ds:
        values = apply_modality_lut(ds.pixel_array, ds)
        out = apply_voi_lut(values, ds, index=0).astype(np.float64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        image = (out / (2**bits - 1)).astype(np.float32)
        if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
            image = 1.0 - image
        return image
    return preprocess.display_image(ds)


def main():
    path, out = sys.argv[1], sys.argv[2]
    image = reference(pydicom.dcmread(path))
    if "--size" in sys.argv:
        n = int(sys.argv[sys.argv.index("--size") + 1])
        image = preprocess.resize(image, n, n)
    np.ascontiguousarray(image, dtype="<f4").tofile(out)
    print(f"{image.shape[0]} {image.shape[1]}")


if __name__ == "__main__":
    main()
