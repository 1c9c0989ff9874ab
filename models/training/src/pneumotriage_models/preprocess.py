"""The intensity preprocessing a model expects, as the manifest describes it.

This is the reference the Rust node reproduces (models/README.md, "Preprocessing"):

1. Modality LUT: Rescale Slope/Intercept, or the Modality LUT Sequence.
2. VOI: the first VOI LUT of a VOI LUT Sequence, else the first window (Window Center/Width,
   VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID), else the range of the values; the result
   scaled to 0..1.
3. MONOCHROME1 is inverted (1 - v), so that 1 is always bright (dense) as displayed.
4. Resize to the model's input with an antialiased bilinear filter (Pillow's BILINEAR, which
   fast_image_resize's convolution filter reproduces).
5. Normalise: (v - mean) / std; the grey channel is repeated when the model takes 3 channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut


@dataclass(frozen=True)
class Preprocess:
    """A model's input: size, channels and normalisation (the manifest's fields)."""

    height: int
    width: int
    channels: int = 1
    mean: float = 0.5
    std: float = 0.25


def _first(value):
    if isinstance(value, pydicom.multival.MultiValue):
        return value[0]
    return value


def voi_to_unit(ds: pydicom.Dataset, values: np.ndarray) -> np.ndarray:
    """Applies the VOI transform of `ds` to modality values and scales the result to 0..1."""
    values = values.astype(np.float64)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0:
        item = ds.VOILUTSequence[0]
        count, first, bits = (int(v) for v in item.LUTDescriptor)
        count = count or 65536
        lut = np.asarray(item.LUTData, dtype=np.float64)
        index = np.clip(np.rint(values) - first, 0, count - 1).astype(np.int64)
        return (lut[index] / float(2**bits - 1)).astype(np.float32)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth))
        function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        return window_to_unit(values, center, width, function)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def window_to_unit(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing with an output range of 0..1."""
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    elif function == "LINEAR_EXACT":
        out = (values - center) / max(width, 1e-6) + 0.5
    else:  # LINEAR: width >= 1
        width = max(width, 1.0)
        if width == 1.0:
            out = (values >= center - 0.5).astype(np.float64)
        else:
            out = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def display_image(ds: pydicom.Dataset) -> np.ndarray:
    """Steps 1-3: the image as displayed, float32 in 0..1, 1 = bright."""
    raw = ds.pixel_array
    if raw.ndim != 2:
        raise ValueError(f"expected one grayscale frame, got an array of shape {raw.shape}")
    values = apply_modality_lut(raw, ds)
    image = voi_to_unit(ds, np.asarray(values))
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        image = 1.0 - image
    return image


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Step 4: antialiased bilinear resize of a float image."""
    if image.shape == (height, width):
        return image.astype(np.float32)
    resized = Image.fromarray(image.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def to_tensor(image: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Steps 4-5: a (1, C, H, W) float32 tensor for the model."""
    small = resize(image, pre.height, pre.width)
    normalised = (small - pre.mean) / pre.std
    return np.repeat(normalised[None, None, :, :], pre.channels, axis=1).astype(np.float32)


def load(path, pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """Reads a DICOM file: (display image at source size, model tensor)."""
    ds = pydicom.dcmread(path)
    image = display_image(ds)
    return image, to_tensor(image, pre)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A boolean mask at another size (area-weighted, then > 0.5)."""
    if mask.shape == (height, width):
        return mask.astype(bool)
    resized = Image.fromarray(mask.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    return np.asarray(resized) > 0.5


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))
