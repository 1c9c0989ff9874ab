//! A small C-STORE SCU built on dicom-ul's client, for what dcmtk cannot be made to send:
//! exact bytes, malformed data sets, commands split over several PDVs, aborts mid-transfer.

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociation, ClientAssociationOptions, Pdu};
use pneumotriage::dicom::dimse;

pub type Association = ClientAssociation<TcpStream>;

/// Associates as TESTSCU proposing one context per (abstract syntax, transfer syntax).
pub fn associate(port: u16, contexts: &[(&str, &str)]) -> Result<Association, dicom_ul::association::Error> {
    associate_as(port, "TESTSCU", "PNEUMOTRIAGE", contexts)
}

pub fn associate_as(
    port: u16,
    calling: &str,
    called: &str,
    contexts: &[(&str, &str)],
) -> Result<Association, dicom_ul::association::Error> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling.to_string())
        .called_ae_title(called.to_string())
        .read_timeout(Duration::from_secs(30));
    for (abstract_syntax, ts) in contexts {
        options = options.with_presentation_context(abstract_syntax.to_string(), vec![ts.to_string()]);
    }
    options.establish(("127.0.0.1", port))
}

/// The id of the accepted context for an abstract syntax.
pub fn context_id(assoc: &Association, abstract_syntax: &str) -> u8 {
    assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.abstract_syntax == abstract_syntax && pc.reason == PresentationContextResultReason::Acceptance)
        .unwrap_or_else(|| panic!("no accepted context for {abstract_syntax}"))
        .id
}

/// A C-STORE-RQ command set.
pub fn store_command(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    let obj = InMemDicomObject::command_from_element_iter([
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(sop_class)),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(0x0001u16)),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id)),
        DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(0x0000u16)),
        DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop_instance)),
    ]);
    let ts = TransferSyntaxRegistry.get(uids::IMPLICIT_VR_LITTLE_ENDIAN).unwrap();
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts).unwrap();
    out
}

fn pdv(context: u8, value_type: PDataValueType, is_last: bool, data: &[u8]) -> Pdu {
    Pdu::PData { data: vec![PDataValue { presentation_context_id: context, value_type, is_last, data: data.to_vec() }] }
}

/// Sends a command, optionally split into two PDVs in two PDUs.
pub fn send_command(assoc: &mut Association, context: u8, command: &[u8], split: bool) {
    if split {
        let (a, b) = command.split_at(command.len() / 2);
        assoc.send(&pdv(context, PDataValueType::Command, false, a)).unwrap();
        assoc.send(&pdv(context, PDataValueType::Command, true, b)).unwrap();
    } else {
        assoc.send(&pdv(context, PDataValueType::Command, true, command)).unwrap();
    }
}

/// Sends data set bytes in fragments that fit the acceptor's maximum PDU; the last one is
/// marked last only when `complete`.
pub fn send_data(assoc: &mut Association, context: u8, data: &[u8], complete: bool) {
    let chunk = (assoc.acceptor_max_pdu_length() as usize).saturating_sub(12).clamp(1024, 64 * 1024);
    let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let last = complete && i + 1 == pieces.len();
        assoc.send(&pdv(context, PDataValueType::Data, last, piece)).unwrap();
    }
}

/// Reads the response command set and returns its status and the parsed command.
pub fn read_response(assoc: &mut Association) -> dimse::Command {
    dimse::parse_command(&read_response_bytes(assoc)).expect("a well-formed response")
}

/// Reads a response's status and its Error Comment, if any.
pub fn read_response_with_comment(assoc: &mut Association) -> (u16, Option<String>) {
    let bytes = read_response_bytes(assoc);
    let ts = TransferSyntaxRegistry.get(uids::IMPLICIT_VR_LITTLE_ENDIAN).unwrap();
    let obj = InMemDicomObject::read_dataset_with_ts(&bytes[..], ts).expect("a well-formed response");
    let status = obj.element(tags::STATUS).unwrap().to_int::<u16>().unwrap();
    let comment = obj.element_opt(tags::ERROR_COMMENT).unwrap().map(|e| e.to_str().unwrap().trim().to_string());
    (status, comment)
}

fn read_response_bytes(assoc: &mut Association) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        match assoc.receive().expect("a response") {
            Pdu::PData { data } => {
                for v in data {
                    assert_eq!(v.value_type, PDataValueType::Command, "responses carry no data set");
                    bytes.extend_from_slice(&v.data);
                    if v.is_last {
                        return bytes;
                    }
                }
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// One complete C-STORE; returns the response status.
pub fn store(assoc: &mut Association, context: u8, sop_class: &str, sop_instance: &str, data: &[u8]) -> u16 {
    send_command(assoc, context, &store_command(1, sop_class, sop_instance), false);
    send_data(assoc, context, data, true);
    read_response(assoc).status.expect("a status")
}

/// The data set bytes of a Part-10 file (everything after the file meta group) and its transfer syntax.
pub fn dataset_of(path: &Path) -> (Vec<u8>, String) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[128..132], b"DICM");
    let group_length = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    let meta = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .unwrap()
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    (bytes[144 + group_length..].to_vec(), meta)
}
