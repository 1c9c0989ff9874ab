//! Notifications of a study's priority to the systems radiologists read from: HL7 v2 ORU^R01
//! over MLLP (`hl7`), a FHIR R4 transaction Bundle (`fhir`) and a signed JSON webhook
//! (`webhook`). The unit is the study: a message is made when its priority is first set and each
//! time it rises, never when it would fall (`store::messages`). Each format is made here from one
//! [`StudyMessage`](crate::domain::StudyMessage), which the sender reads from the database when
//! it sends, so a resend carries the same control ID and the study as it stands.

pub mod fhir;
pub mod hl7;
pub mod webhook;

/// A time in ms since the epoch as RFC 3339 in UTC with milliseconds (a FHIR instant, the
/// webhook's times); none before 1970.
pub(crate) fn rfc3339_ms(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok()?;
    Some(humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string())
}

/// Lowercase hexadecimal (the webhook's signature, the FHIR resources' ids).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}
