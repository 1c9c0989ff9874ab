//! Whole Part-10 objects arriving over HTTP (a STOW-RS request's parts, a WADO-RS answer's):
//! the file meta group read within bounds, the object checked as the SCP checks a C-STORE
//! (class, transfer syntax, UIDs, size, room), its data set streamed into a spool file and
//! committed by `ingest` under the same rule: durable before it counts.

use std::sync::Arc;

use dicom_object::meta::FileMetaTable;

use super::conformance::{self, Service};
use crate::audit::{AuditEvent, AuditedStudy, Peer};
use crate::config::DicomConfig;
use crate::domain::EventKind;
use crate::ingest::{Ingest, Outcome, Received, Refusal};
use crate::spool::TempInstance;
use crate::store::Event;

/// Preamble and magic code: the file meta group starts after them.
const PREAMBLE: usize = 128 + 4;
/// The largest file meta group read; real ones are a few hundred bytes.
pub const MAX_META_BYTES: usize = 16 * 1024;

/// What the file meta group says an object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    /// Where the data set starts in the object's bytes.
    pub data_set_offset: usize,
}

/// The file meta of a Part-10 object from its first bytes: `Ok(None)` while more are needed.
pub fn read_meta(prefix: &[u8]) -> Result<Option<FileMeta>, String> {
    if prefix.len() < PREAMBLE + 12 {
        return Ok(None);
    }
    if &prefix[128..PREAMBLE] != b"DICM" {
        return Err("not a DICOM Part-10 object (no DICM after the preamble)".into());
    }
    // (0002,0000) UL, explicit VR: tag 4, VR 2, length 2, value 4
    let head = &prefix[PREAMBLE..PREAMBLE + 12];
    if head[..6] != [0x02, 0x00, 0x00, 0x00, b'U', b'L'] {
        return Err("the file meta group does not start with its group length".into());
    }
    let group_length = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    if group_length > MAX_META_BYTES {
        return Err(format!("a file meta group of {group_length} bytes (limit {MAX_META_BYTES})"));
    }
    let end = PREAMBLE + 12 + group_length;
    if prefix.len() < end {
        return Ok(None);
    }
    check_lengths(&prefix[PREAMBLE + 12..end])?;
    let meta = FileMetaTable::from_reader(&prefix[128..end]).map_err(|e| format!("unreadable file meta group: {e}"))?;
    let text = |s: &str| s.trim_end_matches(['\0', ' ']).to_string();
    Ok(Some(FileMeta {
        sop_class_uid: text(&meta.media_storage_sop_class_uid),
        sop_instance_uid: text(&meta.media_storage_sop_instance_uid),
        transfer_syntax_uid: text(&meta.transfer_syntax),
        data_set_offset: end,
    }))
}

/// Why a body is not one of application/dicom parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Another media type.
    Unsupported(&'static str),
    NoBoundary,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Unsupported(why) => f.write_str(why),
            BodyError::NoBoundary => f.write_str("the multipart/related body has no boundary"),
        }
    }
}

/// The boundary of a `multipart/related` body whose parts are `application/dicom` (STOW-RS
/// requests, WADO-RS answers), from its Content-Type.
pub fn multipart_boundary(content_type: &str) -> Result<String, BodyError> {
    let mut params = content_type.split(';').map(str::trim);
    let media_type = params.next().unwrap_or_default();
    if !media_type.eq_ignore_ascii_case("multipart/related") {
        return Err(BodyError::Unsupported("only multipart/related; type=\"application/dicom\" is taken"));
    }
    let mut boundary = None;
    for param in params {
        let Some((name, value)) = param.split_once('=') else { continue };
        let value = value.trim().trim_matches('"');
        match name.trim().to_ascii_lowercase().as_str() {
            "boundary" => boundary = Some(value.to_string()),
            "type" if !value.eq_ignore_ascii_case("application/dicom") => {
                return Err(BodyError::Unsupported(
                    "only application/dicom parts are taken (no metadata and bulk data)",
                ));
            }
            _ => {}
        }
    }
    // RFC 2046 says at most 70 characters; Orthanc's are 73 (two UUIDs), so some room is left
    boundary.filter(|b| !b.is_empty() && b.len() <= 200).ok_or(BodyError::NoBoundary)
}

/// Every element of the file meta group (after its group length) declares a length within the
/// group: dicom-object's reader would allocate what a length says before it finds the bytes
/// missing.
fn check_lengths(mut group: &[u8]) -> Result<(), String> {
    while !group.is_empty() {
        let Some(head) = group.get(..8) else { return Err("a file meta element cut short".into()) };
        let vr = &head[4..6];
        // the VRs with a 16-bit length (PS3.5 7.1.2); any other (an unknown one too) has 32 bits
        const SHORT: [&[u8; 2]; 21] = [
            b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
            b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
        ];
        let (value_at, length) = if SHORT.iter().any(|v| vr == *v) {
            (8, u16::from_le_bytes([head[6], head[7]]) as usize)
        } else {
            let long = group.get(8..12).ok_or("a file meta element cut short")?;
            (12, u32::from_le_bytes([long[0], long[1], long[2], long[3]]) as usize)
        };
        if length > group.len() - value_at {
            return Err(format!("a file meta element declares {length} bytes, {} follow", group.len() - value_at));
        }
        group = &group[value_at + length..];
    }
    Ok(())
}

/// Who an object came from, for its rows and the log.
#[derive(Debug, Clone)]
pub struct Origin {
    /// How it came: `STOW-RS`, `WADO-RS`.
    pub service: &'static str,
    /// In place of a calling AE title: the service and user or source (e.g. `STOW-RS admin`).
    pub name: String,
    pub address: String,
}

/// Where objects that arrive whole are kept: the node's ingest, and what its listener accepts.
#[derive(Clone)]
pub struct Receiving {
    pub ingest: Arc<Ingest>,
    pub dicom: DicomConfig,
}

impl Receiving {
    /// Receives every application/dicom part of a multipart/related body, each streamed into
    /// the spool and made durable (or refused) before the next is read, each logged, counted
    /// and recorded as a C-STORE is, and an Instances Transferred audit record per study at the
    /// end. A part of another media type is refused (0xC000). Returns what became of each part,
    /// and the error that cut the body short, if one did (nothing of the part it broke is kept).
    pub async fn receive<S, O, E>(
        &self,
        stream: S,
        boundary: String,
        expected_study: Option<String>,
        origin: &Origin,
    ) -> (Vec<Received10>, Option<multer::Error>)
    where
        S: futures_util::Stream<Item = Result<O, E>> + Send + 'static,
        O: Into<bytes::Bytes> + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        // a part may be up to twice the data set limit (the rest is read and dropped, then refused)
        let part_limit = self.dicom.max_dataset_bytes().saturating_mul(2) + MAX_META_BYTES as u64;
        let constraints = multer::Constraints::new().size_limit(multer::SizeLimit::new().per_field(part_limit));
        let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
        let mut results: Vec<Received10> = Vec::new();
        let mut studies: Vec<AuditedStudy> = Vec::new();
        let broken = loop {
            let mut field = match multipart.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) => break None,
                Err(e) => break Some(e),
            };
            let started = std::time::Instant::now();
            let is_dicom =
                field.content_type().is_none_or(|t| t.essence_str().eq_ignore_ascii_case("application/dicom"));
            let mut receiver = Part10Receiver::new(self.ingest.clone(), self.dicom.clone(), expected_study.clone());
            let read = loop {
                match field.chunk().await {
                    Ok(Some(chunk)) if is_dicom => receiver.push(&chunk),
                    Ok(Some(_)) => {}
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = read {
                // nothing of a part cut short is kept: its spool file goes with the receiver
                break Some(e);
            }
            let received = if is_dicom {
                receiver.finish(origin).await
            } else {
                let refusal = Refusal::Unreadable("a part that is not application/dicom".into());
                Received10 { meta: None, outcome: Outcome::Refused(refusal) }
            };
            report(&self.ingest, origin, &received, started).await;
            if let Outcome::Stored { header, .. } = &received.outcome {
                AuditedStudy::tally(&mut studies, AuditedStudy::of_header(header), &header.sop_class_uid);
            }
            results.push(received);
        };
        let from = Peer { ae_title: &origin.name, address: &origin.address };
        for study in &studies {
            self.ingest.audit(&AuditEvent::Received { from, study }).await;
        }
        (results, broken)
    }
}

/// The log line, metric and event of one object, as the SCP writes them for a C-STORE.
async fn report(ingest: &Ingest, origin: &Origin, received: &Received10, started: std::time::Instant) {
    let (sop_class, sop_instance) =
        received.meta.as_ref().map_or(("", ""), |m| (m.sop_class_uid.as_str(), m.sop_instance_uid.as_str()));
    let ms = started.elapsed().as_millis() as u64;
    crate::metrics::instance(received.outcome.label(), started.elapsed());
    let peer = crate::logging::escape_controls(&origin.name);
    let service = origin.service;
    match &received.outcome {
        Outcome::Stored { version, .. } => {
            tracing::info!(%peer, address = %origin.address, sop_class, sop_instance, ms, version, "instance stored ({service})")
        }
        Outcome::Duplicate { version } => {
            tracing::info!(%peer, address = %origin.address, sop_class, sop_instance, ms, version,
                "instance already stored with the same bytes ({service})")
        }
        Outcome::Refused(refusal) => {
            let status = format!("0x{:04X}", super::scp::store_status(&received.outcome));
            let reason = refusal.reason();
            tracing::warn!(%peer, address = %origin.address, sop_class, sop_instance, ms, %status, %reason,
                "instance refused ({service})");
            let detail = format!("{status}: {reason}");
            let mut event = Event::new(EventKind::StoreFailed).peer(&origin.name, &origin.address).detail(&detail);
            if !sop_instance.is_empty() {
                event = event.instance(sop_instance);
            }
            ingest.record_event(&event).await;
        }
    }
}

/// An object being received in chunks.
pub struct Part10Receiver {
    ingest: Arc<Ingest>,
    config: DicomConfig,
    /// The study the request names, which the object must belong to.
    expected_study: Option<String>,
    prefix: Vec<u8>,
    state: State,
}

enum State {
    ReadingMeta,
    Spooling {
        meta: FileMeta,
        temp: TempInstance,
        service: Service,
    },
    /// Read on and dropped; refused once it ends.
    Refused {
        meta: Option<FileMeta>,
        refusal: Refusal,
    },
}

/// What became of a received object: its identity when its meta could be read.
#[derive(Debug)]
pub struct Received10 {
    pub meta: Option<FileMeta>,
    pub outcome: Outcome,
}

impl Received10 {
    /// Kept: stored now, or the same bytes were already.
    pub fn kept(&self) -> bool {
        matches!(self.outcome, Outcome::Stored { .. } | Outcome::Duplicate { .. })
    }
}

impl Part10Receiver {
    pub fn new(ingest: Arc<Ingest>, config: DicomConfig, expected_study: Option<String>) -> Part10Receiver {
        Part10Receiver { ingest, config, expected_study, prefix: Vec::new(), state: State::ReadingMeta }
    }

    /// Takes the next bytes of the object.
    pub fn push(&mut self, chunk: &[u8]) {
        match &mut self.state {
            State::ReadingMeta => {
                self.prefix.extend_from_slice(chunk);
                match read_meta(&self.prefix) {
                    Ok(None) if self.prefix.len() > PREAMBLE + 12 + MAX_META_BYTES => {
                        self.refuse(None, Refusal::Unreadable("no file meta group".into()))
                    }
                    Ok(None) => {}
                    Ok(Some(meta)) => self.start(meta),
                    Err(why) => self.refuse(None, Refusal::Unreadable(why)),
                }
            }
            State::Spooling { .. } => self.write(chunk),
            State::Refused { .. } => {}
        }
    }

    fn refuse(&mut self, meta: Option<FileMeta>, refusal: Refusal) {
        self.prefix = Vec::new();
        self.state = State::Refused { meta, refusal };
    }

    /// The meta group is read: checks the object as a C-STORE's command is checked, then spools
    /// what came after the meta group.
    fn start(&mut self, meta: FileMeta) {
        if crate::spool::sanitize_uid(&meta.sop_instance_uid).is_none() {
            let refusal = Refusal::Unreadable("the Media Storage SOP Instance UID is not a valid UID".into());
            return self.refuse(Some(meta), refusal);
        }
        let Some(service) =
            conformance::service_for(&meta.sop_class_uid, &self.config).filter(|s| *s != Service::Verification)
        else {
            return self.refuse(Some(meta), Refusal::UnsupportedClass("SOP class not supported".into()));
        };
        if !conformance::STORAGE_TRANSFER_SYNTAXES.contains(&meta.transfer_syntax_uid.as_str()) {
            let refusal =
                Refusal::UnsupportedSyntax(format!("transfer syntax {} is not accepted", meta.transfer_syntax_uid));
            return self.refuse(Some(meta), refusal);
        }
        let ingest = &self.ingest;
        let temp = ingest
            .room()
            .and_then(|()| ingest.receive_into(&meta.sop_class_uid, &meta.sop_instance_uid, &meta.transfer_syntax_uid));
        match temp {
            Err(refusal) => self.refuse(Some(meta), refusal),
            Ok(temp) => {
                let rest = self.prefix.split_off(meta.data_set_offset);
                self.prefix = Vec::new();
                self.state = State::Spooling { meta, temp, service };
                self.write(&rest);
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let State::Spooling { meta, temp, .. } = &mut self.state else { return };
        if temp.data_bytes() + bytes.len() as u64 > self.config.max_dataset_bytes() {
            let reason = format!("data set larger than dicom.max_dataset_mb ({} MiB)", self.config.max_dataset_mb);
            let meta = meta.clone();
            return self.refuse(Some(meta), Refusal::TooLarge(reason));
        }
        if let Err(e) = temp.write(bytes) {
            let meta = meta.clone();
            self.refuse(Some(meta), Refusal::OutOfResources(e.to_string()));
        }
    }

    /// The object ended: makes it durable, or says why not.
    pub async fn finish(self, origin: &Origin) -> Received10 {
        match self.state {
            State::ReadingMeta => Received10 {
                meta: None,
                outcome: Outcome::Refused(Refusal::Unreadable("the object ends inside its file meta group".into())),
            },
            State::Refused { meta, refusal } => Received10 { meta, outcome: Outcome::Refused(refusal) },
            State::Spooling { meta, temp, service } => {
                let received = Received {
                    temp,
                    sop_class_uid: meta.sop_class_uid.clone(),
                    sop_instance_uid: meta.sop_instance_uid.clone(),
                    transfer_syntax_uid: meta.transfer_syntax_uid.clone(),
                    calling_ae: origin.name.clone(),
                    peer_address: origin.address.clone(),
                    analysed: service == Service::Analysed,
                    study_instance_uid: self.expected_study,
                };
                let outcome = self.ingest.commit(received).await;
                Received10 { meta: Some(meta), outcome }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part10(class: &str, instance: &str, ts: &str) -> Vec<u8> {
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        dicom_object::meta::FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(class)
            .media_storage_sop_instance_uid(instance)
            .transfer_syntax(ts)
            .implementation_class_uid("1.2.3")
            .build()
            .unwrap()
            .write(&mut bytes)
            .unwrap();
        bytes.extend_from_slice(&[0x08, 0x00, 0x16, 0x00]);
        bytes
    }

    #[test]
    fn the_meta_group_is_read_once_whole() {
        let bytes = part10("1.2.840.10008.5.1.4.1.1.1", "1.2.3.4", "1.2.840.10008.1.2.1");
        let meta = read_meta(&bytes).unwrap().unwrap();
        assert_eq!(meta.sop_class_uid, "1.2.840.10008.5.1.4.1.1.1");
        assert_eq!(meta.sop_instance_uid, "1.2.3.4");
        assert_eq!(meta.transfer_syntax_uid, "1.2.840.10008.1.2.1");
        assert_eq!(&bytes[meta.data_set_offset..], &[0x08, 0x00, 0x16, 0x00]);
        // every shorter prefix asks for more
        for n in 0..meta.data_set_offset {
            assert_eq!(read_meta(&bytes[..n]).unwrap(), None, "prefix of {n} bytes");
        }
    }

    #[test]
    fn the_boundary_is_read_quoted_or_not() {
        let b = multipart_boundary("multipart/related; type=\"application/dicom\"; boundary=\"a b\"");
        assert_eq!(b.as_deref(), Ok("a b"));
        let b = multipart_boundary("Multipart/Related; boundary=xyz; type=application/dicom");
        assert_eq!(b.as_deref(), Ok("xyz"));
        assert!(matches!(multipart_boundary("multipart/form-data; boundary=x"), Err(BodyError::Unsupported(_))));
        let xml = multipart_boundary("multipart/related; type=\"application/dicom+xml\"; boundary=x");
        assert!(matches!(xml, Err(BodyError::Unsupported(_))));
        let none = multipart_boundary("multipart/related; type=\"application/dicom\"");
        assert_eq!(none, Err(BodyError::NoBoundary));
    }

    #[test]
    fn a_huge_or_missing_meta_group_is_refused() {
        let mut bytes = part10("1.2.840.10008.5.1.4.1.1.1", "1.2.3.4", "1.2.840.10008.1.2.1");
        bytes[PREAMBLE + 8..PREAMBLE + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_meta(&bytes).unwrap_err().contains("limit"));
        let mut long = part10("1.2.840.10008.5.1.4.1.1.1", "1.2.3.4", "1.2.840.10008.1.2.1");
        // (0002,0001) OB: reserved, then a 32-bit length far past the group
        let at = PREAMBLE + 12 + 8;
        long[at..at + 4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert!(read_meta(&long).unwrap_err().contains("declares"), "{:?}", read_meta(&long));
        bytes[128] = b'X';
        assert!(read_meta(&bytes).unwrap_err().contains("DICM"));
    }
}
