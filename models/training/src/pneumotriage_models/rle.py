"""Run-length encoding of masks, exactly as in the SIIM-ACR Pneumothorax Segmentation data.

The convention is the one of the competition's ``mask_functions.py`` (``rle2mask`` and
``mask2rle``):

* the image is flattened in **column-major** order (down the first column, then down the
  second, ...): pixel ``(row, col)`` of an ``height x width`` image has flat index
  ``col * height + row``; ``rle2mask`` builds the flat array, reshapes it to
  ``(width, height)`` and callers transpose it;
* the string is a list of ``offset length`` pairs in which each **offset is relative to the
  end of the previous run** (the first one to pixel 0), not an absolute start;
* ``-1`` (the original file writes `` -1`` after its ``ImageId,`` column) or an empty string
  means an empty mask.

``encode`` writes the canonical form, which is what ``mask2rle`` writes: runs are maximal, so
every length is at least 1 and every offset after the first is at least 1; an empty mask is
``"-1"``. (``mask2rle`` has one bug that ``encode`` does not copy: it drops a run that reaches
the last pixel of the image.) ``decode`` also accepts non-canonical strings (zero offsets,
i.e. adjacent runs, and zero-length runs), so ``encode(decode(s))`` canonicalises ``s``.
All 12,954 rows of the SIIM-ACR ``train-rle.csv`` are canonical: ``encode(decode(s)) == s``
for every row (see ``tests/test_rle.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "EMPTY",
    "canonicalize",
    "decode",
    "encode",
    "is_canonical",
    "is_empty",
    "merge",
    "runs",
]

EMPTY = "-1"


def is_empty(rle: str | None) -> bool:
    """True for the strings that mean "no mask": ``-1`` (with any surrounding spaces), empty."""
    if rle is None:
        return True
    s = rle.strip()
    return s == "" or s == EMPTY


def runs(rle: str | None, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Absolute ``(starts, ends)`` (end exclusive) of the runs of ``rle``, in column-major flat
    indices, validated against an image of ``height x width`` pixels."""
    n = _size(height, width)
    if is_empty(rle):
        z = np.zeros(0, dtype=np.int64)
        return z, z
    try:
        values = np.array(rle.split(), dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"RLE is not a list of integers: {_short(rle)!r}") from exc
    if values.size % 2:
        raise ValueError(f"RLE has an odd number of values ({values.size}): {_short(rle)!r}")
    if (values < 0).any():
        raise ValueError(f"RLE has a negative offset or length: {_short(rle)!r}")
    # cumsum over the interleaved (offset, length, offset, length, ...) list: element 2i is the
    # absolute start of run i, element 2i+1 its (exclusive) end.
    cum = np.cumsum(values)
    starts, ends = cum[0::2], cum[1::2]
    if ends.size and ends[-1] > n:
        raise ValueError(
            f"RLE runs past the end of a {height}x{width} image "
            f"(ends at pixel {int(ends[-1])} of {n}): {_short(rle)!r}"
        )
    return starts, ends


def decode(rle: str | None, height: int, width: int) -> np.ndarray:
    """Decode one SIIM-ACR RLE string into a boolean mask of shape ``(height, width)``.

    ``"-1"``, ``" -1"``, ``""`` and ``None`` give an empty mask. Raises ``ValueError`` for
    malformed strings (odd count, negative or non-integer values, runs past the image).
    """
    mask = np.zeros((height, width), dtype=bool)
    _paint(mask, rle)
    return mask


def merge(rles: Iterable[str | None], height: int, width: int) -> np.ndarray:
    """OR the masks of several RLE rows of one image (SIIM-ACR writes one row per region)."""
    mask = np.zeros((height, width), dtype=bool)
    for rle in rles:
        _paint(mask, rle)
    return mask


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (``(height, width)``; nonzero = inside) as a canonical SIIM-ACR RLE
    string; an empty mask gives ``"-1"``."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {m.shape}")
    if m.dtype != bool:
        m = m != 0
    height = m.shape[0]
    # Only the columns between the first and the last one with a pixel set need scanning: the
    # ones outside are all background, so the runs inside them are the runs of the whole image.
    used = np.flatnonzero(m.any(axis=0))
    if used.size == 0:
        return EMPTY
    first, last = int(used[0]), int(used[-1]) + 1
    # Column-major flattening of those columns, padded with a background pixel on each side so
    # that every run has a rising and a falling edge.
    flat = np.zeros((last - first) * height + 2, dtype=np.int8)
    flat[1:-1] = m[:, first:last].T.reshape(-1)
    # Absolute edges in the whole image: alternating starts and (exclusive) ends.
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + first * height
    # Relative form: offset_i = start_i - end_{i-1}, length_i = end_i - start_i, i.e. the
    # successive differences of [0, s0, e0, s1, e1, ...].
    rel = np.diff(edges, prepend=0)
    return " ".join(map(str, rel.tolist()))


def is_canonical(rle: str | None) -> bool:
    """True if ``rle`` is in the form ``encode`` writes: ``"-1"``, or single-space separated
    non-negative integers in pairs with every length >= 1 and every offset after the first
    >= 1 (runs are maximal: no empty runs, no two runs touching). Leading or trailing spaces,
    as the original Kaggle file has after its comma, are ignored; bounds are not checked."""
    if is_empty(rle):
        return rle is not None and rle.strip() == EMPTY
    s = rle.strip()
    parts = s.split(" ")
    if len(parts) % 2:
        return False
    for p in parts:
        if not (p.isascii() and p.isdigit()) or (p[0] == "0" and p != "0"):
            return False
    values = [int(p) for p in parts]
    return all(v >= 1 for v in values[1:])


def canonicalize(rle: str | None, height: int, width: int) -> str:
    """The canonical form of ``rle`` (``encode(decode(rle))``)."""
    return encode(decode(rle, height, width))


def _paint(mask: np.ndarray, rle: str | None) -> None:
    height, width = mask.shape
    starts, ends = runs(rle, height, width)
    if starts.size == 0:
        return
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return
    # Every covered flat index, built without a Python loop: for run i, start_i + 0..len_i-1.
    before = np.cumsum(lengths) - lengths  # pixels in the runs before run i
    flat = np.arange(total, dtype=np.int64) + np.repeat(starts - before, lengths)
    # column-major flat index -> (row, col)
    cols, rows = np.divmod(flat, height)
    mask[rows, cols] = True


def _size(height: int, width: int) -> int:
    if int(height) != height or int(width) != width or height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive integers, got {height}x{width}")
    return int(height) * int(width)


def _short(s: str, limit: int = 80) -> str:
    return s if len(s) <= limit else s[:limit] + "..."
