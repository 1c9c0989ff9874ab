"""The equivalent Python pipeline (pydicom + numpy + onnxruntime) that a Rust benchmark times
in the same run, on the same files, with the same models and the same number of threads.

Usage: pipeline_reference.py --manifest models/manifest.toml --threads N --repeat R FILE...

For each FILE the whole pipeline runs once as a warm-up and then R times; each stage is timed
with time.perf_counter and the median of each is reported:

* decode: pydicom.dcmread and ds.pixel_array (the stored values, decompressed if need be);
* preprocess: display_image (Modality LUT, VOI, MONOCHROME1) and to_tensor for each model (one
  tensor, reused, when the two models' preprocessing is the same, as the Rust node does);
* inference: classifier then segmenter, always both (also below the classifier's threshold, so
  that both sides do the same work), sigmoid on logits;
* postprocess: as the node does it: when the mask at the model's resolution is not empty and
  covers the minimum area, the segmenter's probabilities resized to the source size (Pillow
  bilinear) and thresholded at the manifest's mask threshold; then the area counted and the
  mask RLE-encoded (SIIM-ACR).

The preprocessing is the project's reference one (models/training/src/pneumotriage_models).
Stdout gets one JSON object and nothing else; warnings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models/training/src"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pydicom  # noqa: E402
from pneumotriage_models import manifest as manifest_mod  # noqa: E402
from pneumotriage_models.preprocess import Preprocess, display_image, resize, sigmoid, to_tensor  # noqa: E402
from pneumotriage_models.rle import encode  # noqa: E402

STAGES = ("decode", "preprocess", "inference", "postprocess")


class Model:
    """One ONNX model of the manifest, with its preprocessing."""

    def __init__(self, spec: manifest_mod.Model, base: Path, threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.spec = spec
        self.pre = Preprocess(spec.height, spec.width, spec.channels, spec.mean, spec.std)
        self.session = ort.InferenceSession(str(spec.path(base)), options, providers=["CPUExecutionProvider"])

    def probabilities(self, tensor: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.spec.output], {self.spec.input: tensor})
        return out if self.spec.output_kind == "probabilities" else sigmoid(out)


def pipeline(path: str, classifier: Model, segmenter: Model, thresholds) -> tuple[dict, dict]:
    """Runs the pipeline once on one file: (stage timings in ms, results)."""
    t0 = time.perf_counter()
    ds = pydicom.dcmread(path)
    ds.pixel_array  # decoded here; pydicom caches it, so display_image below does not decode again
    t1 = time.perf_counter()
    image = display_image(ds)
    classifier_input = to_tensor(image, classifier.pre)
    segmenter_input = classifier_input if segmenter.pre == classifier.pre else to_tensor(image, segmenter.pre)
    t2 = time.perf_counter()
    probability = float(classifier.probabilities(classifier_input).reshape(-1)[0])
    prob_map = segmenter.probabilities(segmenter_input)[0, 0]
    t3 = time.perf_counter()
    small_area = int((prob_map >= thresholds.mask).sum())
    if small_area > 0 and small_area >= thresholds.min_mask_area_px:
        mask = resize(prob_map, *image.shape) >= thresholds.mask
        area, rle = int(mask.sum()), encode(mask)
    else:
        area, rle = 0, "-1"

    t4 = time.perf_counter()
    times = [t0, t1, t2, t3, t4]
    stages = {s: (times[i + 1] - times[i]) * 1000.0 for i, s in enumerate(STAGES)}
    stages["total"] = (t4 - t0) * 1000.0
    height, width = image.shape
    return stages, {"width": width, "height": height, "probability": probability, "mask_area_px": area, "rle": rle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    if args.threads < 1 or args.repeat < 1:
        parser.error("--threads and --repeat must be at least 1")

    manifest = manifest_mod.load(args.manifest)
    base = manifest.path.parent
    classifier = Model(manifest.model("classifier"), base, args.threads)
    segmenter = Model(manifest.model("segmenter"), base, args.threads)

    files = []
    for path in args.files:
        pipeline(path, classifier, segmenter, manifest.thresholds)  # warm-up
        runs = [pipeline(path, classifier, segmenter, manifest.thresholds) for _ in range(args.repeat)]
        result = runs[-1][1]
        entry = {"file": Path(path).name, "width": result["width"], "height": result["height"]}
        for stage in (*STAGES, "total"):
            entry[f"{stage}_ms"] = statistics.median(r[0][stage] for r in runs)
        # What the run found, to check that both sides did the same work (not timed figures).
        entry["probability"] = result["probability"]
        entry["mask_area_px"] = result["mask_area_px"]
        files.append(entry)
    json.dump({"threads": args.threads, "repeat": args.repeat, "files": files}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
