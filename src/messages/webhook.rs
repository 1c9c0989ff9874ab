//! The webhook form of a [`StudyMessage`]: a small JSON body, signed with HMAC-SHA256, POSTed by
//! `outbox::http`. It carries identifiers only (Study Instance UID, accession number, SOP
//! Instance UIDs), never the patient's name, ID or birth date: a chat or ticket system on the
//! other end should not become a store of patient data.
//!
//! The body (`version` 1; a field is added, never renamed or removed, without a new version):
//!
//! ```json
//! {
//!   "version": 1,
//!   "event": "study.priority",
//!   "control_id": "PT1A2B3C4D5E6F7A8B9C",
//!   "priority": "urgent",
//!   "reason": null,
//!   "study": { "study_instance_uid": "1.2.826...", "accession_number": "ACC0001" },
//!   "finding": { "system": "http://snomed.info/sct", "code": "36118008", "display": "Pneumothorax",
//!                "present": true, "probability": 0.93, "area_mm2": 1234.5 },
//!   "models": [ { "name": "pneumothorax-classifier", "version": "1.0.0" } ],
//!   "objects": [ { "kind": "sr", "sop_class_uid": "1.2.840...", "sop_instance_uid": "1.2.826..." } ],
//!   "link": "https://triage.example.org/#study=1.2.826...",
//!   "notice": "Demonstration models: not for diagnosis.",
//!   "created_at": "2025-11-24T16:00:00.000Z",
//!   "sent_at": "2025-11-24T16:00:01.234Z"
//! }
//! ```
//!
//! A study none of whose images the node could analyse (the selection rules chose them; an input
//! check, a failure or quarantine stopped them) is sent `"event": "study.not_analysed"`, with
//! `"priority": null`, `"finding": null` and the `reason` (otherwise `null`): never a negative.
//! A later result of the study is sent as `study.priority`.
//!
//! `accession_number`, `area_mm2` and `link` are `null` when unknown. `created_at` is when the
//! study's priority was set or raised; `sent_at` is this attempt, so a receiver can refuse stale
//! replays. Headers: `X-Pneumotriage-Signature: sha256=<hex>` (HMAC-SHA256 of the exact body
//! bytes with the destination's secret, as GitHub's webhooks do) and `X-Pneumotriage-Message-Id:
//! <control_id>`, the same on every resend of one message: a receiver deduplicates on it.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::codes;
use crate::domain::StudyMessage;

/// The header that carries the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Pneumotriage-Signature";
/// The header that carries the message's control ID (stable across resends).
pub const MESSAGE_ID_HEADER: &str = "X-Pneumotriage-Message-Id";
/// The body's `event`.
pub const EVENT: &str = "study.priority";
/// The body's `event` when none of the study's images could be analysed.
pub const NOT_ANALYSED_EVENT: &str = "study.not_analysed";
/// The body's `version`.
pub const VERSION: u32 = 1;

/// The body for `msg`, sent now.
pub fn body(msg: &StudyMessage) -> Value {
    body_at(msg, SystemTime::now())
}

/// The body for `msg`, sent at `sent_at`.
pub fn body_at(msg: &StudyMessage, sent_at: SystemTime) -> Value {
    let f = &msg.finding;
    let finding = msg.priority().map(|_| {
        json!({
            "system": codes::PNEUMOTHORAX.fhir_system(),
            "code": codes::PNEUMOTHORAX.value,
            "display": codes::PNEUMOTHORAX.meaning,
            "present": f.present,
            "probability": f.probability,
            "area_mm2": f.area_mm2,
        })
    });
    json!({
        "version": VERSION,
        "event": if msg.not_analysed().is_some() { NOT_ANALYSED_EVENT } else { EVENT },
        "control_id": msg.control_id,
        "priority": msg.priority().map(|p| p.as_str()),
        "reason": msg.not_analysed(),
        "study": {
            "study_instance_uid": msg.study.study_instance_uid,
            "accession_number": msg.study.accession_number,
        },
        "finding": finding,
        "models": msg.models.iter().map(|m| json!({ "name": m.name, "version": m.version })).collect::<Vec<_>>(),
        "objects": msg.objects.iter().map(|o| json!({
            "kind": o.kind.as_str(),
            "sop_class_uid": o.sop_class_uid,
            "sop_instance_uid": o.sop_instance_uid,
        })).collect::<Vec<_>>(),
        "link": msg.link,
        "notice": msg.notice,
        "created_at": super::rfc3339_ms(msg.created_at_ms),
        "sent_at": humantime::format_rfc3339_millis(sent_at).to_string(),
    })
}

/// The headers that go with a body: its signature and the message ID.
pub fn headers(msg: &StudyMessage, secret: &[u8], body: &[u8]) -> Vec<(&'static str, String)> {
    vec![(SIGNATURE_HEADER, signature(secret, body)), (MESSAGE_ID_HEADER, msg.control_id.clone())]
}

/// `sha256=<lowercase hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!("sha256={}", super::hex(ring::hmac::sign(&key, body).as_ref()))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn signature_matches_rfc_4231_test_case_2() {
        // RFC 4231 section 4.3: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn another_secret_or_body_gives_another_signature() {
        let s = signature(b"secret-one-0123456789", b"{}");
        assert_ne!(s, signature(b"secret-two-0123456789", b"{}"));
        assert_ne!(s, signature(b"secret-one-0123456789", b"{ }"));
    }

    #[test]
    fn the_body_names_the_study_and_the_finding_but_not_the_patient() {
        let msg = StudyMessage::example();
        let body = body_at(&msg, UNIX_EPOCH + Duration::from_millis(1_764_000_001_234));
        assert_eq!(body["event"], "study.priority");
        assert_eq!(body["control_id"], "PT1A2B3C4D5E6F7A8B9C");
        assert_eq!(body["priority"], "urgent");
        assert_eq!(body["study"]["accession_number"], "ACC0001");
        assert_eq!(body["finding"]["code"], "36118008");
        assert_eq!(body["finding"]["present"], true);
        assert_eq!(body["finding"]["area_mm2"], 1234.5);
        assert_eq!(body["models"][1]["name"], "pneumothorax-segmenter");
        assert_eq!(body["objects"][0]["kind"], "sr");
        assert_eq!(body["created_at"], "2025-11-24T16:00:00.000Z");
        assert_eq!(body["sent_at"], "2025-11-24T16:00:01.234Z");
        let text = body.to_string();
        for private in ["Müller", "PAT001", "19700101"] {
            assert!(!text.contains(private), "{private} in {text}");
        }
    }

    #[test]
    fn a_study_not_analysed_is_its_own_event_with_a_reason_and_no_finding() {
        let reason = "image unsuitable: Patient Age 012Y is under 18 years";
        let msg = StudyMessage { triage: crate::domain::Triage::NotAnalysed(reason.into()), ..StudyMessage::example() };
        let body = body(&msg);
        assert_eq!(body["event"], NOT_ANALYSED_EVENT);
        assert_eq!(body["reason"], reason);
        assert!(body["priority"].is_null() && body["finding"].is_null(), "{body}");
        assert_eq!(body["study"]["study_instance_uid"], msg.study.study_instance_uid);
        assert!(super::body(&StudyMessage::example())["reason"].is_null());
    }

    #[test]
    fn unknown_values_are_null() {
        let mut msg = StudyMessage::example();
        msg.study.accession_number = None;
        msg.finding.area_mm2 = None;
        msg.link = None;
        let body = body(&msg);
        assert!(body["study"]["accession_number"].is_null());
        assert!(body["finding"]["area_mm2"].is_null());
        assert!(body["link"].is_null());
    }

    #[test]
    fn headers_carry_the_signature_and_the_message_id() {
        let msg = StudyMessage::example();
        let headers = headers(&msg, b"k", b"body");
        assert_eq!(headers[0], (SIGNATURE_HEADER, signature(b"k", b"body")));
        assert_eq!(headers[1], (MESSAGE_ID_HEADER, "PT1A2B3C4D5E6F7A8B9C".to_owned()));
    }
}
