//! STOW-RS of one object to a `dicomweb` destination (PS3.18 10.5): the Part-10 file as the one
//! application/dicom part of a multipart/related POST to `{url}/studies`, the answer classified
//! for the outbox as a C-STORE's status is (`dicom::scu`):
//!
//! - **200**, or **202** without a failure for the object: delivered.
//! - **409** or **202** with the object in the Failed SOP Sequence: its Failure Reason decides,
//!   0xA7xx (out of resources) transient, anything else permanent.
//! - **408, 429, 5xx**, no connection, timeouts: transient; **other 4xx, 3xx**, TLS refused:
//!   permanent (as `outbox::http` classifies them).
//!
//! Blocking: the outbox calls it from `spawn_blocking`.

use std::path::Path;

use serde_json::Value;

use super::http::{classify, detail, HttpTarget};
use super::MessageError;
use crate::dicom::scu::SendError;

/// Sends the file at `path` (the object `sop_instance`); the status its answer implies.
pub fn store_file(target: &HttpTarget, path: &Path, sop_instance: &str) -> Result<u16, SendError> {
    let object =
        std::fs::read(path).map_err(|e| SendError::Transient(format!("cannot read {}: {e}", path.display())))?;
    let boundary = boundary();
    let mut body = Vec::with_capacity(object.len() + 256);
    body.extend_from_slice(format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
    body.extend_from_slice(&object);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let content_type = format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    let headers = [("Content-Type", content_type), ("Accept", "application/dicom+json".to_string())];
    let url = target.url(Some("studies"));
    let (status, answer, location) = target.post(Some("studies"), &body, &headers).map_err(|e| match e {
        MessageError::Transient(m) => SendError::Transient(m),
        MessageError::Permanent(m) => SendError::Permanent(m),
    })?;
    verdict(status, &answer, location.as_deref(), sop_instance).map_err(|e| match e {
        SendError::Transient(m) => SendError::Transient(format!("{url}: {m}")),
        SendError::Permanent(m) => SendError::Permanent(format!("{url}: {m}")),
    })
}

/// A boundary no object holds by chance: 128 random bits.
fn boundary() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("pneumotriage-{hex}")
}

/// The outbox's verdict on a Store Instances Response.
fn verdict(status: u16, answer: &[u8], location: Option<&str>, sop_instance: &str) -> Result<u16, SendError> {
    match status {
        200 | 202 | 409 => match failure_reason(answer, sop_instance) {
            None if status == 409 => Err(SendError::Permanent(format!("HTTP 409: {}", detail(answer)))),
            None => Ok(0x0000),
            Some(reason @ 0xA700..=0xA7FF) => {
                Err(SendError::Transient(format!("HTTP {status}: out of resources (Failure Reason {reason:#06X})")))
            }
            Some(reason) => Err(SendError::Permanent(format!(
                "HTTP {status}: the object was refused (Failure Reason {reason:#06X})"
            ))),
        },
        _ => match classify(status, answer, location) {
            Ok(()) => Ok(0x0000),
            Err(MessageError::Transient(m)) => Err(SendError::Transient(m)),
            Err(MessageError::Permanent(m)) => Err(SendError::Permanent(m)),
        },
    }
}

/// The Failure Reason (0008,1197) the response gives `sop_instance` in its Failed SOP Sequence
/// (0008,1198); one without an instance UID counts for it (the only object sent).
fn failure_reason(answer: &[u8], sop_instance: &str) -> Option<u16> {
    let response: Value = serde_json::from_slice(answer).ok()?;
    let failed = response.pointer("/00081198/Value")?.as_array()?;
    failed.iter().find_map(|item| {
        let instance = item.pointer("/00081155/Value/0").and_then(Value::as_str);
        if instance.is_some_and(|i| i != sop_instance) {
            return None;
        }
        let reason = item.pointer("/00081197/Value/0").and_then(Value::as_u64).unwrap_or(0x0110);
        Some(u16::try_from(reason).unwrap_or(0x0110))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(instance: &str, reason: u16) -> Vec<u8> {
        format!(r#"{{"00081198":{{"vr":"SQ","Value":[{{"00081155":{{"vr":"UI","Value":["{instance}"]}},"00081197":{{"vr":"US","Value":[{reason}]}}}}]}}}}"#)
            .into_bytes()
    }

    #[test]
    fn stored_is_delivered_and_failures_follow_their_reason() {
        assert_eq!(verdict(200, b"{}", None, "1.2.3"), Ok(0));
        assert_eq!(verdict(202, &failed("9.9", 0xC000), None, "1.2.3"), Ok(0), "another object's failure");
        assert!(matches!(verdict(409, &failed("1.2.3", 0xA700), None, "1.2.3"), Err(SendError::Transient(_))));
        match verdict(409, &failed("1.2.3", 0xA900), None, "1.2.3") {
            Err(SendError::Permanent(m)) => assert!(m.contains("0xA900"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(verdict(202, &failed("1.2.3", 0x0122), None, "1.2.3"), Err(SendError::Permanent(_))));
        assert!(matches!(verdict(409, b"<html>", None, "1.2.3"), Err(SendError::Permanent(_))));
        assert!(matches!(verdict(503, b"", None, "1.2.3"), Err(SendError::Transient(_))));
        assert!(matches!(verdict(401, b"", None, "1.2.3"), Err(SendError::Permanent(_))));
    }

    #[test]
    fn boundaries_differ() {
        assert_ne!(boundary(), boundary());
        assert!(boundary().len() <= 70, "RFC 2046 limits a boundary to 70 characters");
    }
}
