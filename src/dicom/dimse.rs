//! DIMSE command sets: parsing requests, encoding responses, and the status codes we answer with.
//!
//! Command sets are always Implicit VR Little Endian (PS3.7 6.3.1).

use dicom_core::{DataElement, PrimitiveValue, VR};
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

/// Parses a complete command set (all command PDV fragments joined).
pub fn parse_command(bytes: &[u8]) -> Result<Command, DimseError> {
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, implicit_vr_le())
        .map_err(|e| DimseError::Malformed(e.to_string()))?;
    let u16_of = |tag| -> Result<u16, DimseError> {
        obj.element(tag)
            .map_err(|_| DimseError::Malformed(format!("{tag} is missing")))?
            .to_int::<u16>()
            .map_err(|e| DimseError::Malformed(format!("{tag}: {e}")))
    };
    let uid_of = |tag| -> Option<String> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
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
    if let Some(uid) = &request.affected_sop_class_uid {
        elements.push(DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uid.as_str())));
    }
    if let Some(uid) = &request.affected_sop_instance_uid {
        elements.push(DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(uid.as_str())));
    }
    if let Some(comment) = error_comment {
        // LO: at most 64 characters, no backslash.
        let comment: String = comment.chars().filter(|c| *c != '\\').take(64).collect();
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
    }
}
