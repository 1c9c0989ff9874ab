#!/usr/bin/env python3
"""Writes the regression inputs of the crashes the fuzzers found, into fuzz/corpus/ (replayed by
every `cargo test`; src/fuzz.rs also checks each is refused for the right reason). Each is made
from a seed of make_seeds.py. Run from the repository root: .venv/bin/python fuzz/make_regressions.py

- pixels/regression-rle-short-segment.bin: an RLE segment that decodes to fewer bytes than
  Rows x Columns (dicom-rs's RLE decoder indexed past it and panicked);
- pixels/regression-jpeg-zero-samples.bin: Samples per Pixel 0 (dicom-rs sized its output from
  it and wrote past it);
- pixels/regression-jpeg-bits-allocated-below-precision.bin: 12-bit JPEG samples, Bits
  Allocated 8 (the same overrun);
- pixels/regression-j2k-repeated-rows.bin: Rows twice, the one dicom-rs keeps disagreeing with
  the codestream;
- command/regression-non-ascii-uid.bin: a non-ASCII Affected SOP Instance UID (the response
  could not be encoded and the association's task panicked).
"""
import io, struct, sys
from pathlib import Path
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.filebase import DicomBytesIO
from pydicom.encaps import encapsulate, generate_fragments
corpus = Path("fuzz/corpus")

def load(name):
    raw = (corpus / "pixels" / name).read_bytes()
    sel, body = raw[0], raw[1:]
    ds = read_dataset(io.BytesIO(body), is_implicit_VR=(sel == 0), is_little_endian=True)
    return sel, ds

def save(sel, ds, name):
    buf = DicomBytesIO(); buf.is_little_endian = True; buf.is_implicit_VR = (sel == 0)
    write_dataset(buf, ds)
    (corpus / "pixels" / name).write_bytes(bytes([sel]) + buf.getvalue())
    print("wrote", name, len(buf.getvalue()) + 1)

# RLE: the first segment cut to a few bytes (dicom-rs indexed past it)
sel, ds = load("rle-cr-64-12bit.bin")
frags = list(generate_fragments(ds.PixelData))
frame = bytearray(frags[1])  # the first item is the Basic Offset Table
nseg = struct.unpack_from("<I", frame, 0)[0]
offs = list(struct.unpack_from("<%dI" % nseg, frame, 4))
# keep the header, make segment 0 four bytes long, then the rest
short = frame[:offs[0]] + frame[offs[0]:offs[0] + 4]
shift = (offs[1] - offs[0]) - 4 if nseg > 1 else 0
rest = frame[offs[1]:] if nseg > 1 else b""
short = bytearray(short + rest)
for i in range(1, nseg):
    struct.pack_into("<I", short, 4 + 4 * i, offs[i] - shift)
ds.PixelData = encapsulate([bytes(short)])
save(sel, ds, "regression-rle-short-segment.bin")

# JPEG: Samples per Pixel 0 (dicom-rs sized its buffer from it and wrote past it)
sel, ds = load("jpeg-lossless-cr-64-12bit.bin")
ds.SamplesPerPixel = 0
save(sel, ds, "regression-jpeg-zero-samples.bin")

# JPEG: 12-bit samples in a data set that says 8 bits allocated
sel, ds = load("jpeg-lossless-cr-64-12bit.bin")
ds.BitsAllocated = 8; ds.BitsStored = 8; ds.HighBit = 7
save(sel, ds, "regression-jpeg-bits-allocated-below-precision.bin")

# Rows repeated: the second one (which dicom-rs keeps) disagrees with the codestream
sel, ds = load("j2k-lossless-cr-64-15bit.bin")
buf = DicomBytesIO(); buf.is_little_endian = True; buf.is_implicit_VR = False
write_dataset(buf, ds)
body = buf.getvalue()
rows = b"\x28\x00\x10\x00US\x02\x00"
at = body.index(rows)
body = body[:at + 10] + rows + struct.pack("<H", 1) + body[at + 10:]
(corpus / "pixels" / "regression-j2k-repeated-rows.bin").write_bytes(bytes([sel]) + body)
print("wrote regression-j2k-repeated-rows.bin")

# command: an Affected SOP Instance UID that is not ASCII (the response could not be encoded)
def element(group, elem, value):
    return struct.pack("<HHI", group, elem, len(value)) + value
body = (element(0, 0x0002, b"1.2.840.10008.5.1.4.1.1.1\x00") + element(0, 0x0100, struct.pack("<H", 1))
        + element(0, 0x0110, struct.pack("<H", 7)) + element(0, 0x0800, struct.pack("<H", 0))
        + element(0, 0x1000, "1.2.\u00e9\u00e9\u00e9".encode() + b"\x00"))
cmd = element(0, 0x0000, struct.pack("<I", len(body))) + body
(corpus / "command" / "regression-non-ascii-uid.bin").write_bytes(cmd)
print("wrote regression-non-ascii-uid.bin")
