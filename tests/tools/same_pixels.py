#!/usr/bin/env python3
"""Exit 0 when two DICOM files decode to the same pixels (pydicom + pylibjpeg), else 1.

Usage: same_pixels.py SENT STORED [--same-dataset-bytes]

--same-dataset-bytes also requires the data sets (everything after the file meta group) to be
byte-identical, which holds when the node stored what it received in the file's own syntax.
"""
import sys

import numpy as np
import pydicom


def dataset_bytes(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[128:132] == b"DICM", f"{path}: no DICM magic"
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length:]


def main():
    sent, stored = sys.argv[1], sys.argv[2]
    a, b = pydicom.dcmread(sent), pydicom.dcmread(stored)
    pa, pb = a.pixel_array, b.pixel_array
    if pa.shape != pb.shape or not np.array_equal(pa, pb):
        print(f"pixels differ: {pa.shape} {pa.dtype} vs {pb.shape} {pb.dtype}")
        return 1
    if "--same-dataset-bytes" in sys.argv and dataset_bytes(sent) != dataset_bytes(stored):
        print("data set bytes differ")
        return 1
    print(f"same pixels: {pa.shape} {pa.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
