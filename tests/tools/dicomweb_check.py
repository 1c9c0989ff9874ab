"""DICOMweb from the client's side, with PyPI's dicomweb-client (tests/it/dicomweb.rs).

    dicomweb_check.py store URL TOKEN FILE...
        Stores the files in one STOW-RS request to URL (the node's /dicomweb) with the bearer
        token; prints the Store Instances Response as JSON (the stored SOP Instance UIDs under
        "stored", the failures under "failed" with their reasons).
    dicomweb_check.py outputs URL STUDY
        Reads the study back by WADO-RS from URL (Orthanc's /dicom-web) and prints, as JSON,
        each instance pydicom read: its SOP class, modality and SOP Instance UID.
"""

import json
import sys

import pydicom
from dicomweb_client.api import DICOMwebClient


def store(url, token, files):
    client = DICOMwebClient(url=url, headers={"Authorization": f"Bearer {token}"})
    datasets = [pydicom.dcmread(f) for f in files]
    response = client.store_instances(datasets=datasets)
    stored = [item.ReferencedSOPInstanceUID for item in response.get("ReferencedSOPSequence", [])]
    failed = [
        {"uid": getattr(item, "ReferencedSOPInstanceUID", ""), "reason": int(item.FailureReason)}
        for item in response.get("FailedSOPSequence", [])
    ]
    print(json.dumps({"stored": stored, "failed": failed}))


def outputs(url, study):
    client = DICOMwebClient(url=url)
    found = []
    for ds in client.retrieve_study(study):
        # what came over the wire is a whole object pydicom reads: re-read it from its bytes
        found.append(
            {
                "sop_class": str(ds.SOPClassUID),
                "modality": str(ds.get("Modality", "")),
                "sop_instance": str(ds.SOPInstanceUID),
                "series_description": str(ds.get("SeriesDescription", "")),
            }
        )
    print(json.dumps(found))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "store":
        store(args[0], args[1], args[2:])
    elif command == "outputs":
        outputs(args[0], args[1])
    else:
        sys.exit(f"unknown command {command}")
