#!/usr/bin/env python3
"""Reads what an audit repository received and reports it as JSON, for the audit tests.

Each line of RECEIVED is one syslog message as the repository received it (rsyslog's %rawmsg%, or
the node's own audit file). It is parsed by an RFC 5424 parser of its own (syslog-rfc5424-parser,
not the node's code); its MSG (the XML audit message, after the UTF-8 BOM) is written to
XML_DIR/<line>.xml for jing to validate, and read with ElementTree into a summary:

  {"line", "facility", "severity", "hostname", "appname", "procid", "msgid", "sequence",
   "bom": whether MSG started with the BOM, "xml": the file,
   "event_id", "event_types": [codes], "action", "outcome", "outcome_description",
   "participants": [{"user_id", "requestor", "address", "address_type", "roles": [codes]}],
   "source_id", "objects": [{"id", "type", "role", "id_type", "name", "query"}]}

usage: audit_check.py RECEIVED XML_DIR   (prints a JSON list; exits 1 on a line it cannot parse)
"""

import base64
import json
import os
import sys
import xml.etree.ElementTree as ET

from syslog_rfc5424_parser import SyslogMessage

BOM = "\ufeff"


def summary(number, line, xml_dir):
    message = SyslogMessage.parse(line)
    fields = message.as_dict()
    text = fields["msg"]
    bom = text.startswith(BOM)
    text = text[1:] if bom else text
    path = os.path.join(xml_dir, f"{number}.xml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    root = ET.fromstring(text.encode("utf-8"))
    event = root.find("EventIdentification")
    description = event.find("EventOutcomeDescription")
    participants = [
        {
            "user_id": p.get("UserID"),
            "requestor": p.get("UserIsRequestor"),
            "address": p.get("NetworkAccessPointID"),
            "address_type": p.get("NetworkAccessPointTypeCode"),
            "roles": [r.get("csd-code") for r in p.findall("RoleIDCode")],
        }
        for p in root.findall("ActiveParticipant")
    ]
    objects = []
    for o in root.findall("ParticipantObjectIdentification"):
        query = o.find("ParticipantObjectQuery")
        objects.append(
            {
                "id": o.get("ParticipantObjectID"),
                "type": o.get("ParticipantObjectTypeCode"),
                "role": o.get("ParticipantObjectTypeCodeRole"),
                "id_type": o.find("ParticipantObjectIDTypeCode").get("csd-code"),
                "name": o.findtext("ParticipantObjectName"),
                "query": base64.b64decode(query.text or "").decode("utf-8") if query is not None else None,
            }
        )
    return {
        "line": number,
        "facility": fields["facility"],
        "severity": fields["severity"],
        "hostname": fields["hostname"],
        "appname": fields["appname"],
        "procid": fields["procid"],
        "msgid": fields["msgid"],
        "sequence": int(fields["sd"]["meta"]["sequenceId"]),
        "bom": bom,
        "xml": path,
        "event_id": event.find("EventID").get("csd-code"),
        "event_types": [t.get("csd-code") for t in event.findall("EventTypeCode")],
        "action": event.get("EventActionCode"),
        "outcome": event.get("EventOutcomeIndicator"),
        "outcome_description": description.text if description is not None else None,
        "participants": participants,
        "source_id": root.find("AuditSourceIdentification").get("AuditSourceID"),
        "objects": objects,
    }


def main():
    received, xml_dir = sys.argv[1], sys.argv[2]
    os.makedirs(xml_dir, exist_ok=True)
    out = []
    with open(received, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            try:
                out.append(summary(number, line, xml_dir))
            except Exception as e:  # noqa: BLE001 - the test shows which line and why
                print(f"line {number}: {e!r}: {line[:300]!r}", file=sys.stderr)
                sys.exit(1)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
