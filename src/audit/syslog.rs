//! Audit messages as syslog (RFC 5424), as IHE ATNA (ITI-20) sends them: facility 10
//! (security/authorization), APP-NAME `pneumotriage`, MSGID `IHE+RFC-3881`, the sequence of
//! the record in RFC 5424's `meta` structured data, and the XML as a UTF-8 MSG (with its BOM).

use super::timestamp;

/// The facility of security and authorization messages.
const FACILITY: u8 = 10;

const MSGID: &str = "IHE+RFC-3881";

/// One syslog message (without transport framing).
pub fn format(at_ms: i64, severity: u8, host: &str, process_id: u32, sequence: i64, xml: &str) -> String {
    let pri = FACILITY * 8 + severity.min(7);
    // RFC 5424's sequenceId runs from 1 to 2147483647
    let sequence = (sequence - 1).rem_euclid(2_147_483_647) + 1;
    format!(
        "<{pri}>1 {} {} pneumotriage {process_id} {MSGID} [meta sequenceId=\"{sequence}\"] \u{FEFF}{xml}",
        timestamp(at_ms),
        header_field(host),
    )
}

/// A header field as RFC 5424 allows it: printable US-ASCII without spaces, at most 255
/// characters, `-` when empty.
fn header_field(value: &str) -> String {
    let field: String = value.chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    if field.is_empty() {
        "-".into()
    } else {
        field
    }
}

/// RFC 5425's octet-counting frame: the length in bytes, a space, the message.
pub fn octet_counted(message: &str) -> Vec<u8> {
    let mut frame = format!("{} ", message.len()).into_bytes();
    frame.extend_from_slice(message.as_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_rfc_5424_as_ihe_atna_wants_it() {
        let m = format(1_764_900_000_123, 5, "triage 01", 42, 7, "<AuditMessage/>");
        assert_eq!(
            m,
            "<85>1 2025-12-05T02:00:00.123Z triage01 pneumotriage 42 IHE+RFC-3881 [meta sequenceId=\"7\"] \u{FEFF}<AuditMessage/>"
        );
        assert!(format(0, 4, "", 1, 2_147_483_648, "x")
            .starts_with("<84>1 1970-01-01T00:00:00.000Z - pneumotriage 1 IHE+RFC-3881 [meta sequenceId=\"1\"]"));
    }

    #[test]
    fn a_frame_counts_bytes_not_characters() {
        assert_eq!(octet_counted("é"), b"2 \xc3\xa9".to_vec());
    }
}
