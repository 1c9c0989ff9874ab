#!/usr/bin/env python3
"""Reads a Segmentation with highdicom and compares its mask with the node's result.

Usage: check_seg.py SEG.dcm RESULT.json

RESULT.json is what `pneumotriage infer --out` wrote beside the SEG (its mask as SIIM-ACR RLE).
Prints JSON: whether highdicom's mask equals the node's, the pixel counts, the segment's codes,
algorithm and the source image it references.
"""
import json
import os
import sys

import highdicom as hd

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "models", "training", "src"))
from pneumotriage_models import rle  # noqa: E402

seg_path, result_path = sys.argv[1:]
result = json.load(open(result_path))["result"]
expected = rle.decode(result["mask_rle"], result["height"], result["width"])
seg = hd.seg.segread(seg_path)
(study, series, instance), = seg.get_source_image_uids()
mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=[instance], segment_numbers=[1])[0, :, :, 0]
segment = seg.get_segment_description(1)
print(json.dumps({
    "equal": bool(mask.shape == expected.shape and (mask.astype(bool) == expected).all()),
    "pixels": int(mask.sum()),
    "expected_pixels": int(expected.sum()),
    "category": [segment.segmented_property_category.value, segment.segmented_property_category.scheme_designator],
    "type": [segment.segmented_property_type.value, segment.segmented_property_type.scheme_designator],
    "algorithm_type": segment.algorithm_type.value,
    "algorithm": segment.algorithm_identification[0].AlgorithmName,
    "family": segment.algorithm_identification[0].AlgorithmFamilyCodeSequence[0].CodeValue,
    "source_instance": instance,
    "sop_instance": seg.SOPInstanceUID,
    "series_number": int(seg.SeriesNumber),
}))
