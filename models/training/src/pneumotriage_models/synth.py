"""Synthetic frontal chest radiographs with exact pneumothorax masks.

`make_case(seed, index)` draws one radiograph from ``numpy.random.default_rng([seed, index])``:
the same ``(seed, index)`` always gives the same arrays (on one installation of numpy and
Pillow), and nothing else (no clock, no global state) goes in.

What is drawn, in a "chest frame" where the lung fields span ``x`` in about ``[-0.95, 0.95]``
(``x < 0`` is the image's left, the patient's right) and ``y`` from 0 (lung apices) to about 1
(costophrenic angles), mapped onto the image with jitter in position, scale and rotation:

* soft tissue: a body outline (neck, shoulders, chest wall, abdomen) whose brightness follows its
  thickness, with an exposure gradient and, for female patients, breast shadows;
* two lung fields (dark: air), darkest where the lung is thickest, with branching vessel markings
  from each hilum that thin and fade towards the periphery, and a faint parenchymal texture;
* mediastinum and heart between the lungs (bright, the heart bulging to the patient's left =
  image right, larger on AP views), trachea, spine, diaphragm domes (the right one higher) and
  sometimes a gastric air bubble under the left dome;
* posterior ribs (bright curved bands with brighter cortical edges) continuing into fainter
  anterior ribs, and clavicles;
* a tone curve (exposure, contrast, gamma), quantum-like noise and an optional collimation border.

A pneumothorax (in about 42 % of cases unless ``positive`` is given) lies in one lung, apical or
lateral, from small to large: the visceral pleura is displaced towards the hilum over part of the
chest wall (a partially collapsed lung, slightly denser), the space between the chest wall and
the visceral pleural line is air without lung markings (darker and more uniform than the lung),
and a thin bright visceral pleural line runs along the collapsed lung's edge. ``Case.mask`` is
exactly that space, and is a subset of ``Case.lungs``.

Images are float32 in ``[0, 1]`` with 1 = dense (bright as displayed in MONOCHROME2). The
anatomy is rendered on a canvas of at most 512 pixels and upsampled; the masks, the pleural line
and the noise are made at full resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["POSITIVE_FRACTION", "Case", "make_case"]

#: Probability that a case has a pneumothorax when ``positive`` is not given.
POSITIVE_FRACTION = 0.42

_LOW_RES = 512  # longest side of the canvas the anatomy is drawn on


@dataclass
class Case:
    """One synthetic radiograph, its labels and the acquisition parameters chosen for it."""

    seed: int
    index: int
    image: np.ndarray  # float32 (rows, columns) in [0, 1], 1 = dense (MONOCHROME2 display)
    mask: np.ndarray  # bool (rows, columns): the pneumothorax
    lungs: np.ndarray  # bool (rows, columns): both lung fields, pneumothorax space included
    positive: bool
    side: str | None  # "left" / "right": the patient's side (left = image right); None if negative
    kind: str | None  # "apical" / "lateral"; None if negative
    modality: str  # "CR" or "DX"
    photometric: str  # "MONOCHROME1" or "MONOCHROME2"
    bits_stored: int  # 8..16
    view: str  # "PA" or "AP"
    pixel_spacing: tuple[float, float]  # mm, (row spacing, column spacing)
    stored_range: tuple[int, int]  # stored values for image 0.0 and 1.0, MONOCHROME2 sense
    patient_sex: str  # "F" / "M"
    patient_age: int  # years
    collapse: float = 0.0  # how far the visceral pleura is displaced towards the hilum (0..1)

    @property
    def size(self) -> tuple[int, int]:
        """(rows, columns)."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def rows(self) -> int:
        return int(self.image.shape[0])

    @property
    def columns(self) -> int:
        return int(self.image.shape[1])

    @property
    def mask_area(self) -> int:
        return int(self.mask.sum())

    @property
    def max_stored(self) -> int:
        return (1 << self.bits_stored) - 1


# --------------------------------------------------------------------------------------------
# small numpy helpers


def _box(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Box mean of radius r along one axis, edges extended (cumulative sums: O(1) per pixel)."""
    if r < 1:
        return a
    n = a.shape[axis]
    pad = [(0, 0), (0, 0)]
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float64)
    if axis == 0:
        out = c[2 * r + 1 : 2 * r + 1 + n] - c[:n]
    else:
        out = c[:, 2 * r + 1 : 2 * r + 1 + n] - c[:, :n]
    return (out / (2 * r + 1)).astype(np.float32)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Approximate Gaussian blur: three box passes per axis."""
    if sigma < 0.35:
        return a.astype(np.float32, copy=False)
    r = max(1, int(round((math.sqrt(4.0 * sigma * sigma + 1.0) - 1.0) / 2.0)))
    out = a.astype(np.float32, copy=False)
    for axis in (0, 1):
        for _ in range(3):
            out = _box(out, r, axis)
    return out


def _smooth_closed(points: np.ndarray, samples: int) -> np.ndarray:
    """A closed Catmull-Rom spline through ``points`` (N, 2), ``samples`` points in all."""
    p = np.asarray(points, dtype=np.float64)
    n = len(p)
    per = max(2, samples // n)
    t = np.linspace(0.0, 1.0, per, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    out = []
    for i in range(n):
        p0, p1, p2, p3 = p[(i - 1) % n], p[i], p[(i + 1) % n], p[(i + 2) % n]
        out.append(
            0.5
            * (
                (2 * p1)
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t3
            )
        )
    return np.concatenate(out, axis=0)


def _poly_mask(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    """Boolean mask of a polygon given in pixel coordinates (x, y) with pixel centres at integers."""
    im = Image.new("1", (shape[1], shape[0]), 0)
    ImageDraw.Draw(im).polygon([(float(x), float(y)) for x, y in pts], fill=1)
    return np.asarray(im, dtype=bool)


def _poly_float(shape: tuple[int, int], polys: list[np.ndarray]) -> np.ndarray:
    im = Image.new("F", (shape[1], shape[0]), 0.0)
    d = ImageDraw.Draw(im)
    for pts in polys:
        d.polygon([(float(x), float(y)) for x, y in pts], fill=1.0)
    return np.asarray(im, dtype=np.float32).copy()


def _band(shape: tuple[int, int], pts: np.ndarray, radii: np.ndarray, mode: str) -> np.ndarray:
    """Union of discs of radius ``radii[i]`` round ``pts[i]`` (pixel coordinates), joined by
    capsules between consecutive points: a band along a curve whose width varies smoothly."""
    im = Image.new(mode, (shape[1], shape[0]), 0)
    d = ImageDraw.Draw(im)
    fill = 1.0 if mode == "F" else 1
    n = len(pts)
    for i in range(n):
        r = float(radii[i])
        if r < 0.5:
            continue
        x, y = float(pts[i][0]), float(pts[i][1])
        d.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        j = (i + 1) % n
        r2 = float(radii[j])
        if r2 >= 0.5:
            d.line(
                [(x, y), (float(pts[j][0]), float(pts[j][1]))],
                fill=fill,
                width=max(1, int(2 * min(r, r2))),
            )
    return np.asarray(im, dtype=np.float32 if mode == "F" else bool).copy()


def _sigmoid(x):
    return 0.5 + 0.5 * np.tanh(0.5 * x)


# --------------------------------------------------------------------------------------------
# geometry


class _Frame:
    """Chest frame (x, y) <-> full-resolution pixel coordinates (px, py), and the low-res canvas."""

    def __init__(self, rows, cols, cx, cy, hw, lh, rot, low_scale):
        self.rows, self.cols = rows, cols
        self.cx, self.cy, self.hw, self.lh = cx, cy, hw, lh
        self.c, self.s = math.cos(rot), math.sin(rot)
        self.k = low_scale  # low-res pixels per full-res pixel
        self.lrows = max(8, int(round(rows * low_scale)))
        self.lcols = max(8, int(round(cols * low_scale)))

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        x, y = pts[..., 0], pts[..., 1]
        dx, dy = x * self.hw, (y - 0.5) * self.lh
        return np.stack(
            [self.cx + dx * self.c - dy * self.s, self.cy + dx * self.s + dy * self.c], -1
        )

    def to_low(self, pts: np.ndarray) -> np.ndarray:
        """Chest frame -> low-res pixel coordinates (same pixel-centre convention as upsampling)."""
        return (self.to_px(pts) + 0.5) * np.array(
            [self.lcols / self.cols, self.lrows / self.rows]
        ) - 0.5

    def low_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Chest-frame coordinates of every low-res pixel centre."""
        fy = (np.arange(self.lrows, dtype=np.float32) + 0.5) * (self.rows / self.lrows) - 0.5
        fx = (np.arange(self.lcols, dtype=np.float32) + 0.5) * (self.cols / self.lcols) - 0.5
        px = fx[None, :] - self.cx
        py = fy[:, None] - self.cy
        dx = px * self.c + py * self.s
        dy = -px * self.s + py * self.c
        return (dx / self.hw).astype(np.float32), (dy / self.lh + 0.5).astype(np.float32)


def _lung_outline(rng, side: int, p: dict) -> np.ndarray:
    """Control points of one lung field in the chest frame; side -1 = image left (patient right).

    Walks from the apex down the lateral chest wall to the costophrenic angle, along the
    diaphragm dome to the cardiophrenic angle, and up the mediastinal border back to the apex.
    """
    xap, yap = p["xap"], p["yap"]
    xm = p["xm"]  # lateral wall
    ycp = p["ycp"]  # costophrenic angle
    xcard, ycard = p["xcard"], p["ycard"]  # cardiophrenic angle
    ydome = p["ydome"]  # highest point of the dome
    if side < 0:  # patient's right: right atrium, hilum, superior vena cava
        medial = [
            (xcard + 0.015, ycard - 0.10),
            (xcard + 0.01, ycard - 0.22),
            (p["hil"] - 0.01, 0.46),
            (p["hil"] - 0.05, 0.36),
            (0.13, 0.27),
            (0.12, 0.16),
            (xap - 0.12, 0.05),
        ]
    else:  # patient's left: left ventricle, left atrial appendage, pulmonary trunk, aortic knob
        medial = [
            (xcard - 0.015, ycard - 0.09),
            (xcard - 0.06, ycard - 0.20),
            (xcard - 0.13, ycard - 0.29),
            (p["hil"], 0.45),
            (p["knob"] - 0.01, 0.36),
            (p["knob"] + 0.02, 0.29),
            (p["knob"] - 0.01, 0.22),
            (0.14, 0.14),
            (xap - 0.12, 0.05),
        ]
    lateral = [
        (xap - 0.06, yap + 0.012),
        (xap, yap),
        (xap + 0.10, yap + 0.018),
        (xap + 0.20, yap + 0.065),
        (xm - 0.10, 0.20),
        (xm - 0.03, 0.38),
        (xm, 0.58),
        (xm - 0.005, 0.76),
        (xm - 0.022, ycp - 0.09),
        (xm - 0.035, ycp),
    ]
    # the dome: an arch from the costophrenic to the cardiophrenic angle
    xcp = xm - 0.045
    t = np.array([0.04, 0.16, 0.32, 0.5, 0.68, 0.84, 0.95])
    peak = p["dome_peak"]  # where along the arch the dome is highest
    xs = xcp + (xcard - xcp) * t
    base = ycp + (ycard - ycp) * t
    arch = np.where(
        t < peak,
        np.sin(0.5 * math.pi * t / peak),
        np.sin(0.5 * math.pi * (1 - t) / (1 - peak)),
    )
    lift = (ycp + (ycard - ycp) * peak) - ydome
    ys = base - lift * np.clip(arch, 0, 1) ** 0.55
    dome = list(zip(xs.tolist(), ys.tolist())) + [(xcard, ycard)]
    pts = np.array(lateral + dome + medial, dtype=np.float64)
    pts[:, 0] += rng.normal(0, 0.005, len(pts))
    pts[:, 1] += rng.normal(0, 0.005, len(pts))
    pts[:, 0] *= side
    return pts


# --------------------------------------------------------------------------------------------


def _vessel_tree(rng, hilum_low, side, scale, lung_reach, trunk_w) -> list[tuple]:
    """Branching vessel segments (in low-res pixels) from a hilum: list of (points, width, depth)."""
    n_trunks = int(rng.integers(4, 7))
    # Angles in image coordinates (y down): lateral is pi for side -1 and 0 for side +1. A
    # positive spread turns a trunk towards the apex on both sides; more trunks go down.
    base = math.pi if side < 0 else 0.0
    spread = np.linspace(-1.45, 1.2, n_trunks) + rng.normal(0, 0.12, n_trunks)
    ang = np.where(side < 0, base + spread, base - spread)
    x = np.full(n_trunks, hilum_low[0], dtype=np.float64)
    y = np.full(n_trunks, hilum_low[1], dtype=np.float64)
    length = np.full(n_trunks, lung_reach * rng.uniform(0.15, 0.20), dtype=np.float64)
    length *= rng.uniform(0.85, 1.15, n_trunks)
    # the apical and basal trunks must travel further
    length *= 1.0 + 0.25 * np.abs(spread)
    width = np.full(n_trunks, trunk_w * scale, dtype=np.float64) * rng.uniform(0.8, 1.2, n_trunks)
    segs = []
    depth_max = 7
    for depth in range(depth_max):
        n = len(x)
        # each branch: 3 sub-segments with a little wiggle
        pts = np.empty((n, 4, 2))
        pts[:, 0, 0], pts[:, 0, 1] = x, y
        a = ang.copy()
        for j in range(1, 4):
            a = a + rng.normal(0, 0.12, n)
            pts[:, j, 0] = pts[:, j - 1, 0] + np.cos(a) * length / 3
            pts[:, j, 1] = pts[:, j - 1, 1] + np.sin(a) * length / 3
        for i in range(n):
            segs.append((pts[i], width[i], depth))
        if depth == depth_max - 1:
            break
        # two children each, diverging by 15..30 degrees either way
        ex, ey = pts[:, 3, 0], pts[:, 3, 1]
        d1 = rng.uniform(0.25, 0.55, n)
        d2 = rng.uniform(0.25, 0.55, n)
        x = np.concatenate([ex, ex])
        y = np.concatenate([ey, ey])
        ang = np.concatenate([a + d1, a - d2])
        length = np.concatenate([length, length]) * rng.uniform(0.74, 0.90, 2 * n)
        width = np.concatenate([width, width]) * rng.uniform(0.66, 0.80, 2 * n)
        # prune a few branches for irregularity
        keep = rng.random(2 * n) > 0.18
        x, y, ang, length, width = x[keep], y[keep], ang[keep], length[keep], width[keep]
    return segs


def _draw_vessels(shape, segs, amp_by_depth) -> np.ndarray:
    im = Image.new("F", (shape[1], shape[0]), 0.0)
    d = ImageDraw.Draw(im)
    # deepest (thinnest) first, so the trunks are drawn on top
    for pts, w, depth in sorted(segs, key=lambda s: -s[2]):
        wi = max(1, int(round(w)))
        d.line(
            [(float(a), float(b)) for a, b in pts],
            fill=float(amp_by_depth[depth]),
            width=wi,
            joint="curve",
        )
    return np.asarray(im, dtype=np.float32).copy()


def _rib_curve(y0, a, b, phi0, phi1, side, n=40, rise=0.0):
    """A rib as part of an ellipse from the spine (phi = 0) round the lateral chest wall
    (phi = 90 degrees) to its anterior end; ``rise`` lifts the posterior arc a little."""
    phi = np.linspace(phi0, phi1, n)
    x = a * np.sin(phi)
    y = y0 + b * (1.0 - np.cos(phi)) - rise * np.sin(2.0 * phi)
    return np.stack([side * x, y], -1)


def _draw_bands(shape, bands) -> np.ndarray:
    """Bony bands: (points_low, width_px, amplitude, cortex) drawn as a bright rim and a fainter core."""
    im = Image.new("F", (shape[1], shape[0]), 0.0)
    d = ImageDraw.Draw(im)
    for pts, w, amp, cortex, _group in bands:
        xy = [(float(a), float(b)) for a, b in pts]
        wi = max(1, int(round(w)))
        d.line(xy, fill=float(amp), width=wi, joint="curve")
        inner = int(round(w * (1.0 - cortex)))
        if inner >= 1 and inner < wi:
            d.line(xy, fill=float(amp * 0.62), width=inner, joint="curve")
    return np.asarray(im, dtype=np.float32).copy()


# --------------------------------------------------------------------------------------------


def make_case(
    seed: int,
    index: int,
    positive: bool | None = None,
    *,
    size: int | tuple[int, int] | None = None,
) -> Case:
    """Draw synthetic radiograph number ``index`` of the set ``seed``.

    ``positive`` forces the presence (True) or absence (False) of a pneumothorax; the random
    stream is the same either way, so the anatomy does not change. ``size`` (an int for a square
    image, or ``(rows, columns)``) overrides the drawn image size, keeping everything else; the
    pixel spacing then follows so that the field of view stays the same.
    """
    rng = np.random.default_rng([int(seed), int(index)])

    # ---- acquisition -----------------------------------------------------------------------
    is_pos = bool(rng.random() < POSITIVE_FRACTION)
    if positive is not None:
        is_pos = bool(positive)
    base = int(rng.integers(768, 1401))
    aspect = 1.0 if rng.random() < 0.4 else float(rng.uniform(0.82, 1.22))
    rows = base
    cols = int(min(1400, max(768, round(base * aspect))))
    if size is not None:
        if isinstance(size, (int, np.integer)):
            rows = cols = int(size)
        else:
            rows, cols = int(size[0]), int(size[1])
        if rows < 64 or cols < 64:
            raise ValueError("size must be at least 64x64")
    fov_mm = float(rng.uniform(350.0, 430.0))  # longest side
    pixel_mm = round(fov_mm / max(rows, cols), 4)
    modality = "CR" if rng.random() < 0.5 else "DX"
    mono1 = rng.random() < (0.45 if modality == "CR" else 0.3)
    photometric = "MONOCHROME1" if mono1 else "MONOCHROME2"
    bits = int(rng.choice([8, 10, 12, 12, 14, 15, 16]))
    maxv = (1 << bits) - 1
    if bits == 8:
        lo, hi = int(rng.integers(0, 12)), int(rng.integers(243, 256))
    else:
        lo = int(round(maxv * rng.uniform(0.0, 0.12)))
        hi = int(round(maxv * rng.uniform(0.82, 1.0)))
    view = "PA" if rng.random() < 0.7 else "AP"
    sex = "F" if rng.random() < 0.5 else "M"
    age = int(rng.integers(18, 90))

    # ---- placement ---------------------------------------------------------------------------
    short = min(rows, cols)
    hw = short * rng.uniform(0.38, 0.45)  # chest units -> px, horizontally
    lh = hw * rng.uniform(1.45, 1.72)  # apex..costophrenic height in px
    lh = min(lh, rows * 0.74)
    hw = min(hw, cols * 0.46)
    cx = cols * (0.5 + rng.normal(0, 0.015))
    top_lo, top_hi = 0.05 * rows, max(0.06 * rows, min(0.14 * rows, rows - 1.12 * lh - 0.02 * rows))
    top = rng.uniform(top_lo, max(top_lo + 1, top_hi))
    cy = top + 0.5 * lh
    rot = math.radians(rng.normal(0, 1.6))
    k = min(1.0, _LOW_RES / max(rows, cols))
    fr = _Frame(rows, cols, cx, cy, hw, lh, rot, k)
    lshape = (fr.lrows, fr.lcols)
    lpx = hw * k  # low-res pixels per chest x unit

    # ---- anatomy parameters ------------------------------------------------------------------
    ap = view == "AP"
    heart_scale = rng.uniform(0.9, 1.1) * (1.12 if ap else 1.0)
    xap, yap = rng.uniform(0.30, 0.38), rng.uniform(-0.01, 0.02)
    xm, ycp = rng.uniform(0.86, 0.95), rng.uniform(0.95, 1.02)
    pr = {  # patient's right lung (image left)
        "xap": xap,
        "yap": yap,
        "xm": xm,
        "ycp": ycp,
        "xcard": rng.uniform(0.15, 0.21) * heart_scale,
        "ycard": rng.uniform(0.86, 0.92),
        "ydome": rng.uniform(0.70, 0.80),
        "dome_peak": rng.uniform(0.35, 0.55),
        "hil": rng.uniform(0.19, 0.24),
    }
    pl = {  # patient's left lung (image right)
        "xap": xap + rng.normal(0, 0.012),
        "yap": yap + rng.normal(0, 0.01),
        "xm": xm + rng.normal(0, 0.012),
        "ycp": ycp + rng.uniform(0.0, 0.04),
        "xcard": rng.uniform(0.40, 0.50) * heart_scale,
        "ycard": rng.uniform(0.90, 0.96),
        "ydome": pr["ydome"] + rng.uniform(0.03, 0.08),  # the left dome is lower
        "dome_peak": rng.uniform(0.40, 0.60),
        "hil": rng.uniform(0.20, 0.25),
        "knob": rng.uniform(0.17, 0.22),
    }
    right_pts = _smooth_closed(_lung_outline(rng, -1, pr), 300)  # image left
    left_pts = _smooth_closed(_lung_outline(rng, +1, pl), 300)  # image right

    # tone and body
    bg = rng.uniform(0.02, 0.10)
    tissue = rng.uniform(0.72, 0.86)
    air = rng.uniform(0.32, 0.44)  # how much the lung darkens at its thickest
    ptx_more = rng.uniform(
        -0.02, 0.05
    )  # pneumothorax: uniform air, about as dark as the darkest lung
    vessel_amp = rng.uniform(0.16, 0.24)
    texture_amp = rng.uniform(0.008, 0.016)
    rib_amp = rng.uniform(0.09, 0.16)
    shoulder = rng.uniform(1.22, 1.45)
    torso = xm + rng.uniform(0.14, 0.26)
    y_sh = rng.uniform(-0.26, -0.12)
    neck = rng.uniform(0.28, 0.38)
    gamma = float(np.exp(rng.normal(0, 0.12)))
    contrast = rng.uniform(0.9, 1.1)
    bright = rng.normal(0, 0.03)
    grad = rng.normal(0, 0.05, 2)  # exposure gradient (x, y)
    noise = rng.uniform(0.006, 0.024)
    line_amp = rng.uniform(0.06, 0.17)
    line_w = rng.uniform(0.0022, 0.0040)  # pleural line width, fraction of the image width

    # ---- pneumothorax parameters (always drawn, used only if positive) -------------------------
    ptx_left = bool(rng.random() < 0.5)  # patient's left = image right
    ptx_apical = bool(rng.random() < 0.5)
    size_u = rng.random()
    fmax = float(np.exp(np.log(0.055) + size_u * (np.log(0.55) - np.log(0.055))))
    if ptx_apical:
        centre = math.radians(rng.uniform(-115, -75))  # up (image coordinates), image-left lung
        half = math.radians(rng.uniform(40, 70) + 35 * size_u)
    else:
        centre = math.radians(rng.uniform(155, 205))  # lateral (towards the image left)
        half = math.radians(rng.uniform(35, 65) + 35 * size_u)
    flat = rng.uniform(0.25, 0.55)  # flat-top fraction of the displacement profile
    collapse_dense = rng.uniform(0.04, 0.10)

    # ---- low-res canvas ----------------------------------------------------------------------
    X, Y = fr.low_grid()
    ax = np.abs(X)
    # body outline: neck, shoulders, torso
    bw = neck + (shoulder - neck) * _sigmoid((Y - y_sh) / 0.07)
    bw = bw - (shoulder - torso) * _sigmoid((Y - 0.22) / 0.08) - 0.06 * np.clip(Y - 1.0, 0, None)
    thick = np.sqrt(np.clip(1.0 - (X / bw) ** 2, 0.0, 1.0))
    body = _sigmoid((bw - ax) / 0.012)
    D = bg + body * tissue * (0.22 + 0.78 * thick**1.1)
    # a little more density in the abdomen / over the liver
    D += body * 0.05 * _sigmoid((Y - 0.95) / 0.05)
    # humeral heads at the shoulders
    hh_y = y_sh + rng.uniform(0.10, 0.18)
    for s in (-1, 1):
        r = np.hypot((X - s * (shoulder - 0.02)) / 0.14, (Y - hh_y) / 0.09)
        D += 0.09 * _sigmoid((1.0 - r) / 0.05) * body * (0.7 + 0.3 * _sigmoid((r - 0.8) / 0.05))

    # lungs (soft) and the pneumothorax geometry
    rp_low = fr.to_low(right_pts)
    lp_low = fr.to_low(left_pts)
    side_pts = left_pts if ptx_left else right_pts
    sgn = 1 if ptx_left else -1
    hil = np.array([sgn * ((pl if ptx_left else pr)["hil"] + 0.12), 0.47])
    wall_px = radii = None
    if is_pos:
        # How far the visceral pleura comes off each point of the chest wall: a smooth bump in
        # the angle seen from the collapse centre (apical: upwards; lateral: sideways), zero on
        # the mediastinal border, as a fraction of the point's distance to the collapse centre.
        v = (side_pts - hil) * np.array([1.0, lh / hw])  # isotropic (pixel-like) frame
        th = np.arctan2(v[:, 1], v[:, 0])
        c = centre if not ptx_left else math.pi - centre
        dth = np.angle(np.exp(1j * (th - c)))
        u = np.clip((np.abs(dth) - flat * half) / ((1 - flat) * half), 0.0, 1.0)
        f = fmax * 0.5 * (1.0 + np.cos(math.pi * u))
        # nothing on the mediastinal border, and on the dome only towards the costophrenic angle
        sp = pl if ptx_left else pr
        ax_pts = np.abs(side_pts[:, 0])
        dome_w = np.clip((side_pts[:, 1] - 0.6) / 0.1, 0.0, 1.0)
        x_start = 0.25 + dome_w * (sp["xcard"] + 0.1 - 0.25 + 0.25 * (sp["xm"] - sp["xcard"]))
        f *= np.clip((ax_pts - x_start) / (0.12 + 0.18 * dome_w), 0.0, 1.0)
        wall_px = fr.to_px(side_pts)
        radii = f * np.hypot(*(wall_px - fr.to_px(hil[None, :])).T)
        # (tiny images: keep the pneumothorax at least a pixel or so thick)
        radii = np.where(f > 0.5 * fmax, np.maximum(radii, 1.5), radii)
        # The pneumothorax is the part of that lung within radii[i] of wall point i: a band
        # along the chest wall whose inner edge is the visceral pleura of the collapsed lung.

    lung_low = _poly_float(lshape, [rp_low, lp_low])
    lung_s = _blur(lung_low, 1.4)
    if is_pos:
        side_low = _poly_float(lshape, [lp_low if ptx_left else rp_low])
        band_low = _band(
            lshape,
            (wall_px + 0.5) * np.array([fr.lcols / cols, fr.lrows / rows]) - 0.5,
            radii * k,
            "F",
        )
        ptx_low = side_low * band_low
        col_low = side_low * (1.0 - band_low)
        ptx_s = _blur(ptx_low, 1.0)
        col_s = _blur(col_low, 1.0)
    else:
        ptx_s = np.zeros(lshape, np.float32)
        col_s = ptx_s
    paren_s = np.clip(lung_s - ptx_s, 0.0, 1.0)  # aerated lung
    # lung thickness: largest in the middle of each lung field
    depth = _blur(lung_low, 0.12 * lpx)
    depth = np.clip(depth / max(1e-6, float(depth.max())), 0, 1) ** 0.7
    # aeration varies smoothly over the lungs (and so, a little, does the pneumothorax's air)
    patchy = _blur(rng.standard_normal(lshape).astype(np.float32), 0.12 * lpx)
    patchy *= rng.uniform(0.02, 0.05) / max(1e-6, float(patchy.std()))
    D -= (air * (0.32 + 0.68 * depth) + patchy) * paren_s + (air + ptx_more + 0.4 * patchy) * ptx_s
    # a collapsed lung holds the same tissue in less volume: denser
    D += collapse_dense * (fmax / 0.55) * col_s

    # trachea and main bronchi (air in the mediastinum)
    tx = 0.012 * np.sin(Y * 3.0 + rng.uniform(0, 6))
    trach = _sigmoid((0.032 - np.abs(X - tx)) / 0.008) * _sigmoid((0.36 - Y) / 0.02) * body
    D -= rng.uniform(0.06, 0.12) * trach

    # heart and mediastinum density
    hx = (X - 0.5 * (pl["xcard"] - pr["xcard"])) / (0.5 * (pl["xcard"] + pr["xcard"]) + 0.04)
    hy = (Y - 0.73) / 0.24
    heart = _sigmoid((1.0 - np.sqrt(hx * hx + hy * hy)) / 0.06)
    medi = _sigmoid((0.15 - np.abs(X)) / 0.03) * _sigmoid((Y + 0.25) / 0.05)
    D += (1.0 - lung_s) * body * (0.07 * heart + 0.05 * medi)

    # spine with faint vertebral bodies
    vert_sp = rng.uniform(0.085, 0.105)
    vpat = 0.85 + 0.15 * np.cos(math.pi * (Y - rng.uniform(0, 1)) / vert_sp) ** 2
    spine = _sigmoid((0.065 - ax) / 0.01) * vpat * body
    D += 0.05 * spine * (1.0 - 0.5 * lung_s)

    # gastric air bubble under the left dome
    gx, gy = rng.uniform(0.40, 0.62), pl["ydome"] + rng.uniform(0.10, 0.16)
    gr, gamp = rng.uniform(0.08, 0.14), rng.uniform(0.04, 0.10)
    if rng.random() < 0.55:
        bubble = _sigmoid((1.0 - np.hypot((X - gx) / gr, (Y - gy) / (0.55 * gr))) / 0.15)
        D -= gamp * bubble * (1.0 - lung_s) * body

    # breast shadows
    bamp = rng.uniform(0.03, 0.08)
    bxy = rng.uniform(0.45, 0.62, 2), rng.uniform(0.80, 0.95, 2)
    if sex == "F":
        for j, s in enumerate((-1, 1)):
            bx, by = s * bxy[0][j], bxy[1][j]
            r = np.hypot((X - bx) / 0.42, (Y - by) / 0.24)
            D += bamp * _sigmoid((1.0 - r) / 0.12) * _sigmoid((Y - by + 0.06) / 0.05) * body

    # vessel markings (only in aerated lung, not in the pneumothorax space)
    lung_reach = 0.72 * lpx
    amp_by_depth = [0.8, 0.72, 0.6, 0.5, 0.41, 0.34, 0.28]
    segs = []
    hil_low = []
    for s, pp in ((-1, pr), (1, pl)):
        hp = fr.to_low(np.array([[s * (pp["hil"] + 0.03), 0.45 + rng.normal(0, 0.015)]]))[0]
        hil_low.append(hp)
        segs += _vessel_tree(rng, hp, s, lpx, lung_reach, rng.uniform(0.030, 0.040))
    V = _blur(_draw_vessels(lshape, segs, amp_by_depth), 1.0)
    gy_, gx_ = np.mgrid[0 : lshape[0], 0 : lshape[1]].astype(np.float32)
    dist = np.minimum(
        np.hypot(gx_ - hil_low[0][0], gy_ - hil_low[0][1]),
        np.hypot(gx_ - hil_low[1][0], gy_ - hil_low[1][1]),
    ) / (0.75 * lpx)
    fade = np.exp(-((dist / 0.95) ** 2)) * 0.8 + 0.2  # markings fade towards the periphery
    hilum = np.exp(-((dist / 0.09) ** 2))
    tex = _blur(rng.standard_normal(lshape).astype(np.float32), 2.2)
    tex /= max(1e-6, float(tex.std()))
    D += paren_s * (vessel_amp * V * fade + 0.07 * hilum + texture_amp * tex * (0.4 + 0.6 * fade))

    # ribs and clavicles
    bands = []
    n_ribs = 10
    y_first = rng.uniform(-0.16, -0.10)
    rib_gap = rng.uniform(0.092, 0.108)
    rib_w = rng.uniform(0.036, 0.048) * lh * k
    rise = rng.uniform(0.07, 0.11)
    for s in (-1, 1):
        for i in range(n_ribs):
            y0 = y_first + i * rib_gap + rng.normal(0, 0.006)
            b = rng.uniform(0.22, 0.27) + 0.008 * i
            lat_y = min(0.95, y0 + b)
            # lateral extent follows the lung: narrow at the apex
            a = (
                xap
                + 0.24
                + (xm + 0.05 - xap - 0.24) * min(1.0, max(0.0, (lat_y + 0.05) / 0.45)) ** 0.6
            )
            a = min(a, xm + 0.06)
            post = _rib_curve(
                y0, a, b, math.asin(min(0.9, 0.07 / a)), math.radians(100), s, rise=rise
            )
            ant = _rib_curve(y0, a, b, math.radians(100), math.radians(150 - 3 * i), s, rise=rise)
            bands.append((fr.to_low(post), rib_w, rib_amp, 0.32, 0))
            bands.append((fr.to_low(ant), rib_w * 1.15, rib_amp * 0.5, 0.25, 1))
    clav_w = rng.uniform(0.040, 0.055) * lh * k
    clav_y = rng.uniform(-0.06, 0.02)
    for s in (-1, 1):
        t = np.linspace(0, 1, 30)
        cxs = s * (0.10 + 0.95 * t)
        cys = clav_y + 0.02 * np.sin(t * 2 * math.pi) - 0.12 * t**1.3 + rng.normal(0, 0.005)
        bands.append((fr.to_low(np.stack([cxs, cys], -1)), clav_w, rib_amp * 1.3, 0.35, 2))
    B = _blur(sum(_draw_bands(lshape, [bd for bd in bands if bd[4] == g]) for g in range(3)), 0.7)
    D += B * (0.45 + 0.55 * lung_s) * body

    # mimics of a pleural line that are no pneumothorax: the medial border of the scapula over
    # the upper lateral lung (usual on AP views) and, now and then, a skin fold
    sc_off, sc_end, sc_amp = (
        rng.uniform(0.12, 0.30, 2),
        rng.uniform(0.42, 0.62, 2),
        rng.uniform(0.02, 0.045),
    )
    if rng.random() < (0.75 if ap else 0.3):
        for j, s in enumerate((-1, 1)):
            xb = xm - sc_off[j] + 0.22 * np.clip(sc_end[j] - Y, 0, None) ** 1.5
            dx = s * X - xb
            vert = _sigmoid((sc_end[j] - Y) / 0.03) * _sigmoid((Y + 0.08) / 0.03) * body
            D += sc_amp * vert * (_sigmoid(dx / 0.01) + 0.8 * np.exp(-((dx / 0.007) ** 2)))
    fold_side, fold_x, fold_amp = (
        rng.choice([-1, 1]),
        rng.uniform(0.05, 0.22),
        rng.uniform(0.02, 0.04),
    )
    if rng.random() < (0.3 if ap else 0.1):
        xf = xm - fold_x + 0.08 * np.sin(2.0 * Y + fold_x * 10)
        D += fold_amp * _sigmoid((fold_side * X - xf) / 0.006) * _sigmoid((Y - 0.25) / 0.05) * body

    # collimation border (processed images show it bright)
    bwid = rng.uniform(0.0, 0.03, 4)
    if rng.random() < 0.25:
        e = np.zeros(lshape, np.float32)
        r_, c_ = lshape
        e[: int(bwid[0] * r_)] = 1
        e[r_ - int(bwid[1] * r_) :] = 1
        e[:, : int(bwid[2] * c_)] = 1
        e[:, c_ - int(bwid[3] * c_) :] = 1
        D = D * (1 - e) + 0.92 * e

    # exposure gradient and tone curve
    ux = (np.arange(lshape[1], dtype=np.float32) / lshape[1] - 0.5)[None, :]
    uy = (np.arange(lshape[0], dtype=np.float32) / lshape[0] - 0.5)[:, None]
    D = D + grad[0] * ux + grad[1] * uy
    D = np.clip(D, 0.0, 1.0) ** gamma
    D = np.clip((D - 0.5) * contrast + 0.5 + bright, 0.0, 1.0)

    # ---- full resolution ----------------------------------------------------------------------
    img = np.asarray(
        Image.fromarray(D.astype(np.float32), "F").resize((cols, rows), Image.BILINEAR),
        dtype=np.float32,
    ).copy()
    rp_full = fr.to_px(right_pts)
    lp_full = fr.to_px(left_pts)
    lungs = _poly_mask((rows, cols), rp_full) | _poly_mask((rows, cols), lp_full)
    mask = np.zeros((rows, cols), bool)
    if is_pos:
        lung_side = _poly_mask((rows, cols), lp_full if ptx_left else rp_full)
        mask = lung_side & _band((rows, cols), wall_px, radii, "1")
        # the visceral pleural line: a thin bright line on the lung's side of the mask's edge
        w = max(1, int(round(line_w * cols)))
        ys, xs = np.nonzero(mask)
        if len(ys):
            y0, y1 = max(0, ys.min() - w - 2), min(rows, ys.max() + w + 3)
            x0, x1 = max(0, xs.min() - w - 2), min(cols, xs.max() + w + 3)
            m = mask[y0:y1, x0:x1]
            grown = m.copy()
            for _ in range(w):
                g = grown.copy()
                g[1:] |= grown[:-1]
                g[:-1] |= grown[1:]
                g[:, 1:] |= grown[:, :-1]
                g[:, :-1] |= grown[:, 1:]
                grown = g
            line = (grown & ~m & lung_side[y0:y1, x0:x1]).astype(np.float32)
            p = np.pad(line, 1, mode="edge")
            line = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] + 4 * line) / 8
            img[y0:y1, x0:x1] += line_amp * line
    # noise: quantum-like (stronger where dense, i.e. fewer photons) plus a little electronic noise
    n = rng.standard_normal((rows, cols), dtype=np.float32)
    img += n * (noise * (0.35 + 0.9 * img))
    np.clip(img, 0.0, 1.0, out=img)

    return Case(
        seed=int(seed),
        index=int(index),
        image=img,
        mask=mask,
        lungs=lungs,
        positive=is_pos,
        side=("left" if ptx_left else "right") if is_pos else None,
        kind=("apical" if ptx_apical else "lateral") if is_pos else None,
        modality=modality,
        photometric=photometric,
        bits_stored=bits,
        view=view,
        pixel_spacing=(pixel_mm, pixel_mm),
        stored_range=(lo, hi),
        patient_sex=sex,
        patient_age=age,
        collapse=fmax if is_pos else 0.0,
    )
