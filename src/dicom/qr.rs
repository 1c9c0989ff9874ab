//! The query/retrieve SCU (PS3.4 C): C-FIND at study and series level in the Study Root model,
//! and C-MOVE of a series to an AE title (this node's, whose SCP then receives it as any
//! C-STORE).
//! Blocking (dicom-ul's client), as the storage SCU; failures classified the same way.
//!
//! What a source answers is bounded: each identifier at most [`MAX_IDENTIFIER`] bytes, at most
//! the caller's `limit` matches, a response's status read before anything else of it.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociationOptions, Pdu};

use super::dimse;
use super::scu::{associate, Association, SendError, StoreScp};

/// Study Root Query/Retrieve Information Model, FIND and MOVE.
const FIND: &str = uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND;
const MOVE: &str = uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE;

const C_FIND_RQ: u16 = 0x0020;
const C_MOVE_RQ: u16 = 0x0021;
/// A C-FIND or C-MOVE response that more follow.
const PENDING: [u16; 2] = [0xFF00, 0xFF01];
/// The largest identifier (a C-FIND match) read; real ones are a few hundred bytes.
pub const MAX_IDENTIFIER: usize = 256 * 1024;

/// Which studies to look for; empty keys match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StudyQuery {
    pub study_instance_uid: Option<String>,
    pub accession_number: Option<String>,
    /// A DICOM date range, `YYYYMMDD-YYYYMMDD` (either end may be open).
    pub study_date: Option<String>,
    /// One modality (Modalities in Study); a query per modality when several are wanted.
    pub modality: Option<String>,
}

/// A study a source holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyMatch {
    pub study_instance_uid: String,
    pub study_date: String,
    pub modalities: Vec<String>,
    /// Number of Study Related Instances, when the source says.
    pub instances: Option<u32>,
}

/// A series of a study a source holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesMatch {
    pub series_instance_uid: String,
    pub modality: String,
    /// Number of Series Related Instances, when the source says.
    pub instances: Option<u32>,
}

/// How a C-MOVE ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Moved {
    pub status: u16,
    pub completed: u32,
    pub failed: u32,
    pub warning: u32,
}

/// The studies `scp` holds that match `query`, at most `limit` of them.
pub fn find_studies(scp: &StoreScp, query: &StudyQuery, limit: usize) -> Result<Vec<StudyMatch>, SendError> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let keys = [
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "STUDY".to_string()),
        (tags::STUDY_INSTANCE_UID, VR::UI, text(&query.study_instance_uid)),
        (tags::ACCESSION_NUMBER, VR::SH, text(&query.accession_number)),
        (tags::STUDY_DATE, VR::DA, text(&query.study_date)),
        (tags::MODALITIES_IN_STUDY, VR::CS, text(&query.modality)),
        (tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS, String::new()),
    ];
    let matches = find(scp, &keys, limit, "studies")?;
    Ok(matches
        .iter()
        .filter_map(|object| {
            let study = value(object, tags::STUDY_INSTANCE_UID);
            // a match without a usable UID cannot be moved
            crate::spool::sanitize_uid(&study)?;
            Some(StudyMatch {
                study_instance_uid: study,
                study_date: value(object, tags::STUDY_DATE),
                modalities: value(object, tags::MODALITIES_IN_STUDY)
                    .split('\\')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
                instances: value(object, tags::NUMBER_OF_STUDY_RELATED_INSTANCES).parse().ok(),
            })
        })
        .collect())
}

/// The series of a study.
pub fn find_series(scp: &StoreScp, study_instance_uid: &str, limit: usize) -> Result<Vec<SeriesMatch>, SendError> {
    let keys = [
        (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "SERIES".to_string()),
        (tags::STUDY_INSTANCE_UID, VR::UI, study_instance_uid.to_string()),
        (tags::SERIES_INSTANCE_UID, VR::UI, String::new()),
        (tags::MODALITY, VR::CS, String::new()),
        (tags::NUMBER_OF_SERIES_RELATED_INSTANCES, VR::IS, String::new()),
    ];
    let matches = find(scp, &keys, limit, "series")?;
    Ok(matches
        .iter()
        .filter_map(|object| {
            let series = value(object, tags::SERIES_INSTANCE_UID);
            crate::spool::sanitize_uid(&series)?;
            Some(SeriesMatch {
                series_instance_uid: series,
                modality: value(object, tags::MODALITY),
                instances: value(object, tags::NUMBER_OF_SERIES_RELATED_INSTANCES).parse().ok(),
            })
        })
        .collect())
}

/// A text value of a match, trimmed; empty when absent.
fn value(object: &InMemDicomObject, tag: Tag) -> String {
    object.element(tag).ok().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// One C-FIND with these keys: its matches, at most `limit` (`what` names them in the refusal).
fn find(
    scp: &StoreScp,
    keys: &[(Tag, VR, String)],
    limit: usize,
    what: &str,
) -> Result<Vec<InMemDicomObject>, SendError> {
    let mut assoc = associate(scp, options(FIND), "C-FIND")?;
    let context = accepted(&*assoc, FIND)?;
    let ts = syntax(&context.1)?;
    let identifier = encode(keys, ts);
    let result = (|| {
        send_request(&mut *assoc, context.0, &request(C_FIND_RQ, FIND, None), &identifier)?;
        let mut matches = Vec::new();
        loop {
            let Response { status, data, .. } = receive_response(&mut *assoc, true)?;
            if !PENDING.contains(&status) {
                return finished(status, "C-FIND").map(|()| matches);
            }
            let Some(data) = data else { continue };
            if matches.len() >= limit {
                return Err(SendError::Permanent(format!(
                    "the source found more than {limit} {what}; narrow the query"
                )));
            }
            let object = InMemDicomObject::read_dataset_with_ts(&data[..], ts)
                .map_err(|e| SendError::Permanent(format!("an unreadable C-FIND match: {e}")))?;
            matches.push(object);
        }
    })();
    close(assoc, &result);
    result
}

/// Asks `scp` to send every instance of the series to `destination` (an AE title it knows);
/// returns when it says it is done, with its counts.
pub fn move_series(scp: &StoreScp, study: &str, series: &str, destination: &str) -> Result<Moved, SendError> {
    let mut assoc = associate(scp, options(MOVE), "C-MOVE")?;
    let context = accepted(&*assoc, MOVE)?;
    let ts = syntax(&context.1)?;
    let identifier = encode(
        &[
            (tags::QUERY_RETRIEVE_LEVEL, VR::CS, "SERIES".to_string()),
            (tags::STUDY_INSTANCE_UID, VR::UI, study.to_string()),
            (tags::SERIES_INSTANCE_UID, VR::UI, series.to_string()),
        ],
        ts,
    );
    let result = (|| {
        send_request(&mut *assoc, context.0, &request(C_MOVE_RQ, MOVE, Some(destination)), &identifier)?;
        loop {
            let Response { status, moved, .. } = receive_response(&mut *assoc, false)?;
            if PENDING.contains(&status) {
                continue;
            }
            let moved = Moved { status, ..moved };
            return match status {
                // success, or warning: some sub-operations failed (the counts say which)
                0x0000 | 0xB000 => Ok(moved),
                // Orthanc answers 0xC000 where the standard has 0xA801 (destination unknown)
                0xA801 | 0xC000..=0xCFFF => Err(SendError::Permanent(format!(
                    "C-MOVE: the source refused ({status:#06X}): does it know the move destination {destination:?} with this node's host and port?"
                ))),
                _ => finished(status, "C-MOVE").map(|()| moved),
            };
        }
    })();
    close(assoc, &result);
    result
}

fn options(abstract_syntax: &str) -> ClientAssociationOptions<'static> {
    ClientAssociationOptions::new().with_presentation_context(
        abstract_syntax.to_string(),
        vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string(), uids::IMPLICIT_VR_LITTLE_ENDIAN.to_string()],
    )
}

/// The accepted context for `abstract_syntax`: its id and transfer syntax.
fn accepted(assoc: &dyn Association, abstract_syntax: &str) -> Result<(u8, String), SendError> {
    assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_string()))
        .ok_or_else(|| {
            SendError::Permanent(format!("the source accepts no presentation context for {abstract_syntax}"))
        })
}

fn syntax(uid: &str) -> Result<&'static dicom_encoding::TransferSyntax, SendError> {
    TransferSyntaxRegistry
        .get(uid)
        .ok_or_else(|| SendError::Permanent(format!("the source chose an unknown syntax {uid}")))
}

fn encode(elements: &[(Tag, VR, String)], ts: &dicom_encoding::TransferSyntax) -> Vec<u8> {
    let object = InMemDicomObject::from_element_iter(
        elements.iter().map(|(tag, vr, value)| DataElement::new(*tag, *vr, PrimitiveValue::from(value.as_str()))),
    );
    let mut out = Vec::new();
    object.write_dataset_with_ts(&mut out, ts).expect("an identifier of text values encodes");
    out
}

fn request(field: u16, sop_class: &str, move_destination: Option<&str>) -> Vec<u8> {
    let mut elements = vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(sop_class)),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(field)),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(0x0000u16)),
    ];
    if let Some(destination) = move_destination {
        elements.push(DataElement::new(tags::MOVE_DESTINATION, VR::AE, PrimitiveValue::from(destination)));
    }
    let ts = TransferSyntaxRegistry.get(uids::IMPLICIT_VR_LITTLE_ENDIAN).expect("implicit VR LE is built in");
    let mut out = Vec::new();
    InMemDicomObject::command_from_element_iter(elements)
        .write_dataset_with_ts(&mut out, ts)
        .expect("a command set encodes");
    out
}

fn send_request(assoc: &mut dyn Association, context: u8, command: &[u8], identifier: &[u8]) -> Result<(), SendError> {
    let pdv = |value_type, data: &[u8]| Pdu::PData {
        data: vec![PDataValue { presentation_context_id: context, value_type, is_last: true, data: data.to_vec() }],
    };
    let failed = |e: dicom_ul::association::Error| SendError::Transient(format!("the request could not be sent: {e}"));
    assoc.send(&pdv(PDataValueType::Command, command)).map_err(failed)?;
    assoc.send(&pdv(PDataValueType::Data, identifier)).map_err(failed)
}

/// A C-FIND or C-MOVE response.
struct Response {
    status: u16,
    /// A C-MOVE response's sub-operation counts (zero where absent).
    moved: Moved,
    /// Its identifier, when it has one and it was asked for.
    data: Option<Vec<u8>>,
}

/// The next response.
fn receive_response(assoc: &mut dyn Association, with_data: bool) -> Result<Response, SendError> {
    let mut command = Vec::new();
    let mut data = Vec::new();
    let mut parsed: Option<(u16, Moved)> = None;
    let no_status = || SendError::Permanent("a response without a status".into());
    loop {
        let pdu = assoc.receive().map_err(|e| SendError::Transient(format!("no answer from the source: {e}")))?;
        let Pdu::PData { data: values } = pdu else {
            return Err(SendError::Transient(format!(
                "the source ended the association ({})",
                pdu.short_description()
            )));
        };
        for v in values {
            match v.value_type {
                PDataValueType::Command => {
                    if command.len() + v.data.len() > dimse::MAX_COMMAND_SET {
                        return Err(SendError::Permanent("the source's command set is too large".into()));
                    }
                    command.extend_from_slice(&v.data);
                    if v.is_last {
                        let c = dimse::parse_command(&command)
                            .map_err(|e| SendError::Permanent(format!("the source's response: {e}")))?;
                        let (status, moved) = (c.status.ok_or_else(no_status)?, counts(&command));
                        if !c.has_data_set {
                            return Ok(Response { status, moved, data: None });
                        }
                        parsed = Some((status, moved));
                    }
                }
                PDataValueType::Data => {
                    if parsed.is_none() {
                        return Err(SendError::Permanent("the source sent data before its response".into()));
                    }
                    if data.len() + v.data.len() > MAX_IDENTIFIER {
                        return Err(SendError::Permanent(format!("a match larger than {MAX_IDENTIFIER} bytes")));
                    }
                    data.extend_from_slice(&v.data);
                    if v.is_last {
                        let (status, moved) = parsed.take().expect("checked above");
                        return Ok(Response { status, moved, data: with_data.then_some(data) });
                    }
                }
            }
        }
    }
}

/// A C-MOVE response's Number of Completed, Failed and Warning Sub-operations.
fn counts(command: &[u8]) -> Moved {
    let value = |element: u16| -> u32 {
        // group 0000 elements, implicit VR: tag (4), length (4), value
        let mut rest = command;
        while rest.len() >= 8 {
            let (g, e) = (u16::from_le_bytes([rest[0], rest[1]]), u16::from_le_bytes([rest[2], rest[3]]));
            let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            let Some(v) = rest.get(8..8 + len) else { return 0 };
            if g == 0 && e == element && len == 2 {
                return u32::from(u16::from_le_bytes([v[0], v[1]]));
            }
            rest = &rest[8 + len..];
        }
        0
    };
    Moved { status: 0, completed: value(0x1021), failed: value(0x1022), warning: value(0x1023) }
}

/// A final status other than success, classified: out of resources is transient.
fn finished(status: u16, what: &str) -> Result<(), SendError> {
    match status {
        0x0000 => Ok(()),
        0xA700..=0xA7FF => Err(SendError::Transient(format!("{what}: the source is out of resources ({status:#06X})"))),
        0xFE00 => Err(SendError::Transient(format!("{what}: cancelled by the source ({status:#06X})"))),
        _ => Err(SendError::Permanent(format!("{what}: the source refused ({status:#06X})"))),
    }
}

/// Releases after a clean exchange, aborts after a failure (the source may be mid-answer).
fn close<T>(assoc: Box<dyn Association>, result: &Result<T, SendError>) {
    match result {
        Ok(_) => assoc.release(),
        Err(_) => assoc.abort(),
    }
}
