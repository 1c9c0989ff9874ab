#!/usr/bin/env python3
"""Reads the node's structured report (TID 1500) with highdicom and prints what it says as JSON:
finding present, probability, priority code, the free-text evaluations, the source image and SEG it references, and the
models (name, version, sha256) of each measurement group.

Usage: check_sr.py REPORT.dcm...
"""
import json
import sys

import highdicom as hd
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes

PRIORITY_CONCEPT = codes.SCT.Priority          # (260870009, SCT)
PRESENCE_CONCEPT = codes.SCT.Pneumothorax      # (36118008, SCT)
PROBABILITY_CONCEPT = codes.DCM.Probability    # (122157, DCM)
# TID 1501's free-text qualitative evaluation (where a "not analysed" report says why)
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def _code(c):
    return None if c is None else {
        "value": c.value, "scheme": c.scheme_designator, "meaning": c.meaning}


def _algorithm(group):
    """TID 4019 items (HAS CONCEPT MOD TEXT) directly under the Measurement Group."""
    root = group[0]
    out = {}
    for key, concept in (("name", codes.DCM.AlgorithmName),
                         ("version", codes.DCM.AlgorithmVersion),
                         ("parameters", codes.DCM.AlgorithmParameters)):
        items = find_content_items(root, name=concept, value_type=hd.sr.ValueTypeValues.TEXT)
        vals = [i.value for i in items]
        out[key] = vals if key == "parameters" else (vals[0] if vals else None)
    sha = [p.split(":", 1)[1] for p in out["parameters"] if p.startswith("sha256:")]
    out["sha256"] = sha[0] if sha else None
    return out


def parse(path):
    sr = hd.sr.srread(path)
    report = sr.content
    if not isinstance(report, hd.sr.MeasurementReport):
        raise ValueError("not a TID 1500 Measurement Report")

    result = {
        "sop_class_uid": str(sr.SOPClassUID),
        "sop_instance_uid": str(sr.SOPInstanceUID),
        "finding_present": None,
        "probability": None,
        "priority": None,
        "source_image_sop_instance_uid": None,
        "seg_sop_instance_uid": None,
        "seg_frame_numbers": None,
        "seg_segment_number": None,
        "algorithms": [],
    }

    # ---- image-level classification group (TID 1501)
    for grp in report.get_image_measurement_groups():
        evals = grp.get_qualitative_evaluations(name=PRESENCE_CONCEPT)
        if not evals:
            continue
        value = evals[0].value
        result["finding_present"] = (
            value == codes.SCT.Present if value in (codes.SCT.Present, codes.SCT.Absent) else None
        )
        result["finding_code"] = _code(value)
        texts = find_content_items(grp[0], name=QUALITATIVE_EVALUATIONS, value_type=hd.sr.ValueTypeValues.TEXT)
        result["evaluation_text"] = [t.value for t in texts]
        meas = grp.get_measurements(name=PROBABILITY_CONCEPT)
        if meas:
            result["probability"] = float(meas[0].value)
            result["probability_unit"] = _code(meas[0].unit)
        prio = grp.get_qualitative_evaluations(name=PRIORITY_CONCEPT)
        if prio:
            result["priority"] = _code(prio[0].value)
        srcs = grp.source_images
        if srcs:
            result["source_image_sop_instance_uid"] = str(srcs[0].referenced_sop_instance_uid)
            result["source_image_sop_class_uid"] = str(srcs[0].referenced_sop_class_uid)
        result["algorithms"].append(dict(role="classifier", **_algorithm(grp)))
        break

    # ---- optional region group referencing the SEG's frame (TID 1410, as the node writes it)
    for grp in report.get_planar_roi_measurement_groups(
            finding_type=codes.SCT.Pneumothorax,
            reference_type=codes.DCM.ReferencedSegmentationFrame):
        ref = grp.referenced_segmentation_frame
        seg_item = ref[0]
        ref_sop = seg_item.ReferencedSOPSequence[0]
        result["seg_sop_instance_uid"] = str(ref_sop.ReferencedSOPInstanceUID)
        result["seg_frame_numbers"] = (
            [int(f) for f in ref_sop.ReferencedFrameNumber]
            if ref_sop.get("ReferencedFrameNumber") is not None
            and ref_sop["ReferencedFrameNumber"].VM > 1
            else ([int(ref_sop.ReferencedFrameNumber)] if "ReferencedFrameNumber" in ref_sop else None))
        if "ReferencedSegmentNumber" in ref_sop:
            result["seg_segment_number"] = int(ref_sop.ReferencedSegmentNumber)
        if result["source_image_sop_instance_uid"] is None:
            result["source_image_sop_instance_uid"] = str(ref[1].referenced_sop_instance_uid)
        result["algorithms"].append(dict(role="segmenter", **_algorithm(grp)))
        break

    # ---- document-level device observer (TID 1004)
    dev = [c for c in report.get_observer_contexts(observer_type=codes.DCM.Device)]
    if dev:
        attrs = dev[0].observer_identifying_attributes
        result["device_observer"] = {
            "uid": str(attrs.uid), "name": attrs.name,
            "manufacturer": attrs.manufacturer_name, "model": attrs.model_name,
        }
    return result


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(json.dumps(parse(p)))
