#!/usr/bin/env python3
"""Rewrites DICOM files into one study, for the tests of per-study messages.

Usage: restudy.py OUTDIR STUDY_UID FILE... [--patient-name PN] [--patient-id ID] [--issuer I]
       [--accession A] [--description D] [--birth-date YYYYMMDD] [--sex M|F|O]

Each file keeps its SOP Instance UID and pixels; it gets the Study Instance UID and the patient
and study attributes given, and is written as OUTDIR/<n>.dcm (n from 1, in the order given).
Text is written in UTF-8 (Specific Character Set ISO_IR 192), so names like Müller^Jörg and the
HL7 delimiters | ^ ~ \\ & travel as they are.
"""
import argparse
import os

import pydicom


def main():
    p = argparse.ArgumentParser()
    p.add_argument("outdir")
    p.add_argument("study_uid")
    p.add_argument("files", nargs="+")
    p.add_argument("--patient-name")
    p.add_argument("--patient-id")
    p.add_argument("--issuer")
    p.add_argument("--accession")
    p.add_argument("--description")
    p.add_argument("--birth-date")
    p.add_argument("--sex")
    a = p.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    for n, path in enumerate(a.files, 1):
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.StudyInstanceUID = a.study_uid
        for keyword, value in [
            ("PatientName", a.patient_name),
            ("PatientID", a.patient_id),
            ("IssuerOfPatientID", a.issuer),
            ("AccessionNumber", a.accession),
            ("StudyDescription", a.description),
            ("PatientBirthDate", a.birth_date),
            ("PatientSex", a.sex),
        ]:
            if value is not None:
                setattr(ds, keyword, value)
        ds.save_as(os.path.join(a.outdir, f"{n}.dcm"), enforce_file_format=True)


if __name__ == "__main__":
    main()
