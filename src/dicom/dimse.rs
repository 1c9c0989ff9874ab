//! DIMSE command sets: parsing requests, encoding responses, and the status codes we answer with.
//!
//! Command sets are always Implicit VR Little Endian (PS3.7 6.3.1).

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// Command Field values (PS3.7 E.1).
pub mod command_field {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_ECHO_RQ: u16 = 0x0030;
    /// A response's command field is the request's with this bit set.
    pub const RESPONSE_BIT: u16 = 0x8000;
}

/// Status codes the SCP answers with (PS3.4 B.2.3 and PS3.7 C).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Out of resources: disk below the floor, database unreachable.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// The data set does not match the SOP class (or the command's UIDs).
    pub const DATA_SET_MISMATCH: u16 = 0xA900;
    /// The data set cannot be parsed.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Referenced Transfer Syntax not supported (PS3.18 10.5.3, a STOW-RS part's syntax).
    pub const TRANSFER_SYNTAX_NOT_SUPPORTED: u16 = 0xC122;
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
}

/// Command Data Set Type value meaning "no data set follows".
const NO_DATA_SET: u16 = 0x0101;

/// The parts of a request command set the SCP acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub field: u16,
    /// Message ID of a request; Message ID Being Responded To of a response.
    pub message_id: u16,
    pub affected_sop_class_uid: Option<String>,
    pub affected_sop_instance_uid: Option<String>,
    pub has_data_set: bool,
    /// Present in responses only.
    pub status: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum DimseError {
    #[error("malformed command set: {0}")]
    Malformed(String),
}

fn implicit_vr_le() -> &'static dicom_encoding::TransferSyntax {
    TransferSyntaxRegistry
        .get(dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN)
        .expect("Implicit VR Little Endian is always registered")
}

/// The largest command set accepted (all its PDV fragments together). Real ones are a few
/// hundred bytes; a peer that sends more without marking the last fragment is aborted.
pub const MAX_COMMAND_SET: usize = 16 * 1024;

/// Parses a complete command set (all command PDV fragments joined).
///
/// A command set is a flat list of group 0000 elements with defined lengths, so it is read here
/// element by element, every length checked against the bytes present: no sequence, no
/// recursion, nothing allocated on the peer's say-so.
pub fn parse_command(bytes: &[u8]) -> Result<Command, DimseError> {
    if bytes.len() > MAX_COMMAND_SET {
        return Err(DimseError::Malformed(format!("command set of {} bytes (limit {MAX_COMMAND_SET})", bytes.len())));
    }
    let mut values: Vec<(Tag, &[u8])> = Vec::with_capacity(8);
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((head, after)) = rest.split_first_chunk::<8>() else {
            return Err(DimseError::Malformed(format!("{} stray bytes after the last element", rest.len())));
        };
        let tag = Tag(u16::from_le_bytes([head[0], head[1]]), u16::from_le_bytes([head[2], head[3]]));
        let length = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if tag.group() != 0x0000 {
            return Err(DimseError::Malformed(format!("element {tag} outside the command group")));
        }
        if length > after.len() {
            return Err(DimseError::Malformed(format!(
                "element {tag} declares {length} bytes, {} follow",
                after.len()
            )));
        }
        let (value, next) = after.split_at(length);
        values.push((tag, value));
        rest = next;
    }
    let value = |tag: Tag| values.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
    let u16_of = |tag: Tag| -> Result<u16, DimseError> {
        match value(tag) {
            Some(&[a, b]) => Ok(u16::from_le_bytes([a, b])),
            Some(other) => Err(DimseError::Malformed(format!("{tag} has {} bytes, not 2", other.len()))),
            None => Err(DimseError::Malformed(format!("{tag} is missing"))),
        }
    };
    let uid_of = |tag: Tag| -> Option<String> {
        value(tag).map(|v| String::from_utf8_lossy(v).trim_end_matches(['\0', ' ']).to_string())
    };
    Ok(Command {
        field: u16_of(tags::COMMAND_FIELD)?,
        // requests carry a Message ID, responses the ID they respond to
        message_id: u16_of(tags::MESSAGE_ID).or_else(|_| u16_of(tags::MESSAGE_ID_BEING_RESPONDED_TO))?,
        affected_sop_class_uid: uid_of(tags::AFFECTED_SOP_CLASS_UID),
        affected_sop_instance_uid: uid_of(tags::AFFECTED_SOP_INSTANCE_UID),
        has_data_set: u16_of(tags::COMMAND_DATA_SET_TYPE)? != NO_DATA_SET,
        status: u16_of(tags::STATUS).ok(),
    })
}

/// Encodes the response to `request` with `status`; failures may carry an Error Comment.
pub fn encode_response(request: &Command, status: u16, error_comment: Option<&str>) -> Vec<u8> {
    let mut elements = vec![
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            PrimitiveValue::from(request.field | command_field::RESPONSE_BIT),
        ),
        DataElement::new(tags::MESSAGE_ID_BEING_RESPONDED_TO, VR::US, PrimitiveValue::from(request.message_id)),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(NO_DATA_SET)),
        DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)),
    ];
    // The request's UIDs are echoed only when they are UIDs: a peer's bytes go back to it only
    // in a form the response can carry.
    let is_uid = |uid: &&String| uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if let Some(uid) = request.affected_sop_class_uid.as_ref().filter(is_uid) {
        elements.push(DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uid.as_str())));
    }
    if let Some(uid) = request.affected_sop_instance_uid.as_ref().filter(is_uid) {
        elements.push(DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(uid.as_str())));
    }
    if let Some(comment) = error_comment {
        // LO in the default character set: at most 64 printable ASCII characters, no backslash.
        let comment: String = comment
            .chars()
            .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
            .filter(|c| *c != '\\')
            .take(64)
            .collect();
        elements.push(DataElement::new(tags::ERROR_COMMENT, VR::LO, PrimitiveValue::from(comment)));
    }
    let obj = InMemDicomObject::command_from_element_iter(elements);
    let mut out = Vec::with_capacity(256);
    obj.write_dataset_with_ts(&mut out, implicit_vr_le()).expect("writing a command set to memory cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_round_trips_through_the_parser() {
        let request = Command {
            field: command_field::C_STORE_RQ,
            message_id: 7,
            affected_sop_class_uid: Some("1.2.840.10008.5.1.4.1.1.1".into()),
            affected_sop_instance_uid: Some("1.2.3.4".into()),
            has_data_set: true,
            status: None,
        };
        let bytes = encode_response(&request, status::OUT_OF_RESOURCES, Some("disk full"));
        let back = parse_command(&bytes).unwrap();
        assert_eq!(back.field, 0x8001);
        assert_eq!(back.affected_sop_instance_uid.as_deref(), Some("1.2.3.4"));
        assert!(!back.has_data_set);
        assert_eq!(back.status, Some(status::OUT_OF_RESOURCES));
        // the status and the message id being responded to
        let obj = InMemDicomObject::read_dataset_with_ts(&bytes[..], implicit_vr_le()).unwrap();
        assert_eq!(obj.element(tags::STATUS).unwrap().to_int::<u16>().unwrap(), 0xA700);
        assert_eq!(obj.element(tags::MESSAGE_ID_BEING_RESPONDED_TO).unwrap().to_int::<u16>().unwrap(), 7);
        let group_length = obj.element(tags::COMMAND_GROUP_LENGTH).unwrap().to_int::<u32>().unwrap();
        assert_eq!(group_length as usize, bytes.len() - 12);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(parse_command(&[1, 2, 3]).is_err());
        // a length beyond the bytes present, a data set element, an oversized command set
        let lying = [0x00, 0x00, 0x00, 0x01, 0xF0, 0xFF, 0xFF, 0xFF, 1, 0];
        assert!(parse_command(&lying).unwrap_err().to_string().contains("declares 4294967280 bytes"));
        let data_element = [0x08, 0x00, 0x18, 0x00, 0x02, 0x00, 0x00, 0x00, b'1', 0];
        assert!(parse_command(&data_element).unwrap_err().to_string().contains("outside the command group"));
        assert!(parse_command(&vec![0u8; MAX_COMMAND_SET + 8]).is_err());
    }
}
