#!/usr/bin/env python3
"""Validates a FHIR R4 (4.0.1) transaction Bundle with fhir.resources (6.4.0: R4 is its default
package) and checks what a FHIR server needs of a transaction: unique fullUrls, every entry's
request naming its resource type, every reference pointing at an entry. Prints one JSON object
(the verdict, the errors, a few fields for the caller's assertions); exits 1 when it is invalid.

usage: fhir_check.py BUNDLE.json   (or - for standard input)
"""

import json
import sys

import fhir.resources
from fhir.resources import get_fhir_model_class
from fhir.resources.bundle import Bundle


def references(value, out):
    """Every Reference.reference under value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                out.append(item)
            else:
                references(item, out)
    elif isinstance(value, list):
        for item in value:
            references(item, out)


def first(resources, kind):
    return next((r for r in resources if r.get("resourceType") == kind), {})


def fields(resources):
    """What the Rust tests assert on, read back from the validated JSON."""
    patient = first(resources, "Patient")
    observation = first(resources, "Observation")
    report = first(resources, "DiagnosticReport")
    task = first(resources, "Task")
    name = (patient.get("name") or [{}])[0]
    return {
        "patient_family": name.get("family"),
        "patient_given": name.get("given"),
        "patient_birth_date": patient.get("birthDate"),
        "patient_gender": patient.get("gender"),
        "observation_code": observation.get("code", {}).get("coding", [{}])[0].get("code"),
        "observation_value": observation.get("valueCodeableConcept", {}).get("coding", [{}])[0].get("code"),
        "observation_components": len(observation.get("component", [])),
        "probability": observation.get("component", [{}])[0].get("valueQuantity", {}).get("value"),
        "imaging_study": (report.get("imagingStudy") or [{}])[0].get("identifier", {}).get("value"),
        "accession": next(
            (i.get("value") for i in report.get("identifier", []) if i.get("type")),
            None,
        ),
        "task_priority": task.get("priority"),
        "observation_status": observation.get("status"),
        "observation_absent": observation.get("dataAbsentReason", {}).get("coding", [{}])[0].get("code"),
        "observation_notes": [n.get("text") for n in observation.get("note", [])],
        "report_status": report.get("status"),
    }


def check(bundle_json):
    errors = []
    try:
        bundle = Bundle.parse_obj(bundle_json)
    except Exception as e:  # pydantic's ValidationError, or a wrong resourceType
        return {"ok": False, "errors": [f"Bundle: {e}"]}
    if bundle.type != "transaction":
        errors.append(f"Bundle.type is {bundle.type!r}, not 'transaction'")
    entries = bundle_json.get("entry", [])
    resources = [e.get("resource", {}) for e in entries]
    for i, entry in enumerate(entries):
        resource = entry.get("resource", {})
        kind = resource.get("resourceType")
        try:
            # Each entry on its own, with its own class (the Bundle parse dispatches too).
            get_fhir_model_class(kind).parse_obj(resource)
        except Exception as e:
            errors.append(f"entry[{i}] {kind}: {e}")
        request = entry.get("request", {})
        if request.get("url") != kind:
            errors.append(f"entry[{i}].request.url {request.get('url')!r} is not {kind!r}")
    full_urls = [e.get("fullUrl") for e in entries]
    if len(set(full_urls)) != len(full_urls):
        errors.append(f"fullUrls repeat: {full_urls}")
    refs = []
    references(resources, refs)
    for ref in refs:
        if ref not in full_urls:
            errors.append(f"reference {ref} is not an entry's fullUrl")
    return {
        "ok": not errors,
        "errors": errors,
        "validator": f"fhir.resources {fhir.resources.__version__} (FHIR {fhir.resources.__fhir_version__})",
        "entries": [r.get("resourceType") for r in resources],
        "fields": fields(resources),
    }


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    source = sys.stdin if sys.argv[1] == "-" else open(sys.argv[1], encoding="utf-8")
    with source:
        verdict = check(json.load(source))
    print(json.dumps(verdict, ensure_ascii=False))
    sys.exit(0 if verdict["ok"] else 1)


if __name__ == "__main__":
    main()
