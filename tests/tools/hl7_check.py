#!/usr/bin/env python3
"""Reads an HL7 v2 ORU^R01 with two independent parsers and says what each read.

  hl7_check.py FILE

hl7apy parses it against the v2.5.1 structures (strict validation, groups found) and validates
it; python-hl7 parses it too. Prints one JSON object:

  {"valid": true|false, "errors": [...], "hl7apy": {FIELDS}, "hl7": {FIELDS}}

FIELDS: control_id, patient_id, issuer, name ([family, given, middle, suffix, prefix]),
birth_date, sex, placer, filler, procedure, priority_obr27, priority_tq1, priority_obx,
finding, finding_status (its OBX-11), probability, area, models ([[name, version], ...]),
study_uid, sr_uids, seg_uids, notice (the first NTE), notes (every NTE); every value unescaped. Exits 1 when hl7apy finds the message invalid, 2 when a parser
cannot read it at all.
"""

import json
import re
import sys

import hl7
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message


def unescape(text: str) -> str:
    """HL7 v2 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh..\\ \\.br\\) for hl7apy,
    which keeps values as written."""

    def one(match):
        seq = match.group(1)
        simple = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\", ".br": "\r"}
        if seq in simple:
            return simple[seq]
        if seq.startswith("X") and len(seq) % 2 == 1:
            return bytes.fromhex(seq[1:]).decode("utf-8", errors="replace")
        return match.group(0)

    return re.sub(r"\\([^\\]*)\\", one, text)


def decode_hex(text: str) -> str:
    """The \\Xhh..\\ sequences still in a value that hl7apy read: hl7apy 1.3.5 knows only
    \\H\\ \\N\\ \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ and keeps a hex sequence as text (its backslashes
    escaped), so after unescaping a line break still reads \\X0D\\. (A literal "\\X0D\\" in the
    original text would be decoded too; the tests send none.)"""
    return re.sub(r"\\X((?:[0-9A-Fa-f]{2})+)\\", lambda m: bytes.fromhex(m.group(1)).decode("utf-8", "replace"), text)


def apy(leaf) -> str:
    """A leaf's text as hl7apy read it, unescaped."""
    value = leaf.value if leaf is not None else None
    # Some leaves (IS, ID) hold a base data type object rather than the string.
    value = getattr(value, "value", value)
    return decode_hex(unescape(value)) if value else ""


def observations_from(rows):
    """FIELDS from the observation rows: (identifier code, sub-id, OBX-5's components unescaped,
    OBX-11)."""
    out = {"finding": None, "finding_status": None, "probability": None, "area": None, "priority_obx": None, "study_uid": None}
    models, srs, segs = {}, [], []
    for code, sub_id, value, status in rows:
        if code == "36118008":
            # No value where the result could not be obtained (OBX-11 X).
            out["finding"] = value[0] if value else ""
            out["finding_status"] = status
        elif code == "122157":
            out["probability"] = float(value[0])
        elif code == "42798000":
            out["area"] = float(value[0])
        elif code == "260870009":
            out["priority_obx"] = value[0]
        elif code == "111001":
            models.setdefault(sub_id, ["", ""])[0] = value[0]
        elif code == "111003":
            models.setdefault(sub_id, ["", ""])[1] = value[0]
        elif code == "113014":
            out["study_uid"] = value[0]
        elif code == "SR":
            srs.append(value[0])
        elif code == "SEG":
            segs.append(value[0])
    out["models"] = [models[k] for k in sorted(models, key=int)]
    out["sr_uids"], out["seg_uids"] = srs, segs
    return out


def absent_as_empty(read) -> str:
    """What read() returns, or "" where the segment is absent (hl7apy raises for it)."""
    try:
        return read()
    except (KeyError, IndexError, AttributeError):
        return ""


def with_hl7apy(text: str):
    errors = []
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    try:
        if not message.validate():
            errors.append("hl7apy: validate() returned False")
    except Exception as e:  # hl7apy reports what is wrong by raising
        errors.append(f"hl7apy: {type(e).__name__}: {e}")
    result = message.oru_r01_patient_result
    pid = result.oru_r01_patient.pid
    order = result.oru_r01_order_observation
    obr = order.obr
    name = pid.pid_5
    rows = [
        (g.obx.obx_3.ce_1.value, g.obx.obx_4.to_er7(), [apy(c) for c in g.obx.obx_5.children], g.obx.obx_11.to_er7())
        for g in order.oru_r01_observation
    ]
    fields = {
        "control_id": apy(message.msh.msh_10),
        "patient_id": apy(pid.pid_3.cx_1),
        "issuer": apy(pid.pid_3.cx_4.hd_1),
        "name": [apy(name.xpn_1.fn_1), apy(name.xpn_2), apy(name.xpn_3), apy(name.xpn_4), apy(name.xpn_5)],
        "birth_date": pid.pid_7.to_er7(),
        "sex": pid.pid_8.to_er7(),
        "placer": apy(order.orc.orc_2.ei_1),
        "filler": apy(obr.obr_3.ei_1),
        "procedure": apy(obr.obr_4.ce_2),
        "priority_obr27": obr.obr_27.tq_6.to_er7(),
        "priority_tq1": absent_as_empty(lambda: order.oru_r01_timing_qty.tq1.tq1_9.cwe_1.to_er7()),
        "notice": apy(order.nte.nte_3),
        "notes": [apy(c.nte_3) for c in order.children if c.name == "NTE"],
    }
    fields.update(observations_from(rows))
    return fields, errors


def with_python_hl7(text: str):
    message = hl7.parse(text)

    def get(segment, field, component=1, repeat=1):
        # extract_field unescapes; it raises for a component of a field that has none, and for
        # a segment the message has not (TQ1 where there is no priority).
        try:
            return message.extract_field(segment, 1, field, repeat, component) or ""
        except (IndexError, KeyError):
            return ""

    def value(obx):
        if len(obx) <= 5:
            return []
        return [message.unescape(str(c)) for c in obx[5][0]] if isinstance(obx[5][0], hl7.Repetition) else [message.unescape(str(obx[5][0]))]

    rows = [
        (str(obx[3][0][0]), str(obx[4]) if len(obx) > 4 else "", value(obx), str(obx[11]) if len(obx) > 11 else "")
        for obx in message.segments("OBX")
    ]
    fields = {
        "control_id": get("MSH", 10),
        "patient_id": get("PID", 3),
        "issuer": get("PID", 3, 4),
        "name": [get("PID", 5, c) for c in range(1, 6)],
        "birth_date": get("PID", 7),
        "sex": get("PID", 8),
        "placer": get("ORC", 2),
        "filler": get("OBR", 3),
        "procedure": get("OBR", 4, 2),
        "priority_obr27": get("OBR", 27, 6),
        "priority_tq1": get("TQ1", 9),
        "notice": get("NTE", 3),
        "notes": [message.unescape(str(s[3])) for s in message.segments("NTE")],
    }
    fields.update(observations_from(rows))
    return fields


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], "rb") as f:
        text = f.read().decode("utf-8")
    try:
        apy, errors = with_hl7apy(text)
        other = with_python_hl7(text)
    except Exception as e:
        print(json.dumps({"valid": False, "errors": [f"{type(e).__name__}: {e}"]}))
        return 2
    print(json.dumps({"valid": not errors, "errors": errors, "hl7apy": apy, "hl7": other}, ensure_ascii=False))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
