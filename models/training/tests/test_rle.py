"""RLE codec: hand-made masks with known strings, and the round trip over every row of the real
SIIM-ACR train-rle.csv (see siim_csv.py for where it comes from)."""

from __future__ import annotations

import csv
import io
import time

import numpy as np
import pytest
import siim_csv

from pneumotriage_models import rle


def reference_mask2rle(mask: np.ndarray) -> str:
    """A per-pixel transcription of the competition's mask2rle (column-major scan, offsets
    relative to the end of the previous run), without its bug of dropping a run that reaches
    the last pixel."""
    h, w = mask.shape
    out: list[int] = []
    since_last_run = 0
    run_start = run_len = -1
    for col in range(w):
        for row in range(h):
            if mask[row, col]:
                if run_len < 0:
                    run_start, run_len = since_last_run, 0
                run_len += 1
                since_last_run = 0
            else:
                if run_len >= 0:
                    out += [run_start, run_len]
                    run_len = -1
                since_last_run += 1
    if run_len >= 0:
        out += [run_start, run_len]
    return " ".join(map(str, out)) if out else "-1"


def reference_rle2mask(s: str, h: int, w: int) -> np.ndarray:
    """The competition's rle2mask: a flat array reshaped (width, height), then transposed."""
    flat = np.zeros(w * h, dtype=bool)
    values = [int(x) for x in s.split()] if s.strip() != "-1" else []
    pos = 0
    for start, length in zip(values[0::2], values[1::2], strict=True):
        pos += start
        flat[pos : pos + length] = True
        pos += length
    return flat.reshape(w, h).T


# A 5 (rows) x 4 (columns) mask. Column-major flat index = col * 5 + row.
#   (0,0)->0 (1,0)->1 | (4,0)->4 (0,1)->5 | (2,3)->17 (3,3)->18 (4,3)->19 (the last pixel)
# Runs: [0,2) [4,6) [17,20) -> "0 2" then offset 4-2=2 "2 2", then offset 17-6=11 "11 3".
KNOWN_PIXELS = [(0, 0), (1, 0), (4, 0), (0, 1), (2, 3), (3, 3), (4, 3)]
KNOWN_RLE = "0 2 2 2 11 3"


def known_mask() -> np.ndarray:
    m = np.zeros((5, 4), dtype=bool)
    for r, c in KNOWN_PIXELS:
        m[r, c] = True
    return m


def test_known_mask_encodes_column_major_relative():
    assert rle.encode(known_mask()) == KNOWN_RLE
    # Scanning row by row instead (what encoding the transpose does) gives another string.
    assert rle.encode(known_mask().T) != KNOWN_RLE


def test_known_string_decodes_to_known_pixels():
    m = rle.decode(KNOWN_RLE, 5, 4)
    assert m.shape == (5, 4) and m.dtype == bool
    assert sorted(zip(*np.nonzero(m), strict=True)) == sorted(KNOWN_PIXELS)
    np.testing.assert_array_equal(m, reference_rle2mask(KNOWN_RLE, 5, 4))


def test_offsets_are_relative_not_absolute():
    # Two single pixels at flat 3 and 7 of a 4x3 image: absolute starts would be "3 1 7 1".
    m = rle.decode("3 1 3 1", 4, 3)
    flat = m.T.reshape(-1)
    assert np.flatnonzero(flat).tolist() == [3, 7]
    assert (m[3, 0], m[3, 1]) == (True, True)  # flat 3 = (row 3, col 0); 7 = (row 3, col 1)
    assert rle.encode(m) == "3 1 3 1"


def test_single_pixels_and_non_square():
    h, w = 3, 7
    m = np.zeros((h, w), dtype=bool)
    m[2, 6] = True  # last pixel: flat 6*3+2 = 20 = h*w-1
    assert rle.encode(m) == "20 1"
    m = np.zeros((h, w), dtype=bool)
    m[0, 0] = True
    assert rle.encode(m) == "0 1"
    m = np.zeros((h, w), dtype=bool)
    m[0, 1] = True  # flat 3
    assert rle.encode(m) == "3 1"
    m = np.zeros((h, w), dtype=bool)
    m[1, 0] = True  # flat 1
    assert rle.encode(m) == "1 1"
    expected = np.zeros((h, w), dtype=bool)
    expected[0, 1] = True
    np.testing.assert_array_equal(rle.decode("3 1", h, w), expected)


def test_run_wraps_from_one_column_into_the_next():
    m = rle.decode("3 3", 4, 2)  # flat 3,4,5 = (3,0), (0,1), (1,1)
    assert sorted(zip(*np.nonzero(m), strict=True)) == [(0, 1), (1, 1), (3, 0)]


def test_full_and_empty_masks():
    assert rle.encode(np.ones((5, 4), dtype=bool)) == "0 20"
    assert rle.decode("0 20", 5, 4).all()
    assert rle.encode(np.zeros((5, 4), dtype=bool)) == "-1"
    for empty in ("-1", " -1", "-1 ", "", "  ", None):
        m = rle.decode(empty, 5, 4)
        assert m.shape == (5, 4) and not m.any()
        assert rle.is_empty(empty)


def test_encode_accepts_integer_masks():
    m = known_mask().astype(np.uint8) * 255
    assert rle.encode(m) == KNOWN_RLE
    assert rle.encode(known_mask().astype(np.float32)) == KNOWN_RLE


def test_random_masks_match_reference():
    rng = np.random.default_rng(1234)
    for _ in range(500):
        h, w = (int(x) for x in rng.integers(1, 12, size=2))
        m = rng.random((h, w)) < rng.random()
        s = rle.encode(m)
        assert s == reference_mask2rle(m)
        assert rle.is_canonical(s)
        np.testing.assert_array_equal(rle.decode(s, h, w), m)
        np.testing.assert_array_equal(reference_rle2mask(s, h, w), m)


def test_non_canonical_strings_decode_and_canonicalise():
    # adjacent runs (offset 0) and a zero-length run
    assert not rle.is_canonical("0 2 0 2")
    assert not rle.is_canonical("3 0 2 1")
    assert not rle.is_canonical("01 2")
    assert not rle.is_canonical("")
    assert rle.is_canonical("-1") and rle.is_canonical(" 0 2 2 2") and rle.is_canonical("0 2")
    np.testing.assert_array_equal(rle.decode("0 2 0 2", 5, 4), rle.decode("0 4", 5, 4))
    assert rle.canonicalize("0 2 0 2", 5, 4) == "0 4"
    assert rle.canonicalize("3 0 2 1", 5, 4) == "5 1"
    assert rle.canonicalize("", 5, 4) == "-1"


@pytest.mark.parametrize("bad", ["1 2 3", "a b", "1 -2", "-3 2", "0 21", "19 2", "1.5 2"])
def test_malformed_strings_are_errors(bad):
    with pytest.raises(ValueError):
        rle.decode(bad, 5, 4)


def test_merge_ors_rows():
    a = rle.decode("0 3", 5, 4)  # flat 0..2
    b = rle.decode("2 3", 5, 4)  # flat 2..4, overlapping at 2
    merged = rle.merge(["0 3", " -1", "2 3"], 5, 4)
    np.testing.assert_array_equal(merged, a | b)
    assert rle.encode(merged) == "0 5"
    assert not rle.merge([], 5, 4).any()


def test_round_trip_every_row_of_siim_train_rle_csv():
    path = siim_csv.require_csv()
    pinned = siim_csv.is_pinned(path)
    text = siim_csv.read_bytes(path).decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    assert [h.strip() for h in header] == ["ImageId", "EncodedPixels"]
    if pinned:
        assert header == ["ImageId", " EncodedPixels"]  # "ImageId, EncodedPixels"
    rows = [r for r in reader if r]
    assert len(rows) == siim_csv.ROWS
    assert len({r[0].strip() for r in rows}) == siim_csv.IMAGES

    t0 = time.perf_counter()
    mismatched: list[str] = []
    non_canonical = 0
    positive_rows = 0
    for image_id, value in rows:
        s = value.strip()  # the original Kaggle file has a space after the comma
        m = rle.decode(s, siim_csv.HEIGHT, siim_csv.WIDTH)
        positive_rows += bool(m.any())
        again = rle.encode(m)
        if rle.is_canonical(s):
            if again != s:
                mismatched.append(image_id)
        else:
            # A non-canonical row cannot come back as the same string; it must give the same mask.
            non_canonical += 1
            if not np.array_equal(rle.decode(again, siim_csv.HEIGHT, siim_csv.WIDTH), m):
                mismatched.append(image_id)
    elapsed = time.perf_counter() - t0
    print(
        f"\nSIIM-ACR RLE round trip: {len(rows)} rows ({positive_rows} with a mask), "
        f"{non_canonical} non-canonical, {len(mismatched)} mismatched, {elapsed:.1f} s"
    )
    assert not mismatched, f"{len(mismatched)} rows do not round-trip, e.g. {mismatched[:5]}"
    if pinned:
        # Every row of the torchxrayvision 1.5.7 file is in mask2rle's canonical form, so the
        # round trip reproduces each string exactly.
        assert non_canonical == 0
        assert positive_rows == 3_576
