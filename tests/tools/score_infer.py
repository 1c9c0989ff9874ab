#!/usr/bin/env python3
"""Scores `pneumotriage infer --out DIR` against a SIIM-style train-rle.csv: prints JSON with,
per image, the truth, the node's decision and the Dice of its mask.

Usage: score_infer.py OUTDIR TRAIN_RLE_CSV
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "models", "training", "src"))
from pneumotriage_models import metrics, rle, siim  # noqa: E402

out_dir, csv = Path(sys.argv[1]), sys.argv[2]
truth = siim.read_rle_csv(csv).rles
rows = []
for result_file in sorted(out_dir.glob("*.json")):
    data = json.loads(result_file.read_text())
    image_id = Path(data["file"]).stem
    r = data.get("result")
    if r is None or image_id not in truth:
        rows.append({"image_id": image_id, "decision": None, "skipped": data.get("skipped")})
        continue
    h, w = r["height"], r["width"]
    expected = rle.merge(truth[image_id], h, w)
    predicted = rle.decode(r["mask_rle"], h, w)
    rows.append(
        {
            "image_id": image_id,
            "positive": bool(expected.any()),
            "decision": r["decision"],
            "dice": metrics.dice(predicted, expected),
        }
    )
print(json.dumps(rows))
