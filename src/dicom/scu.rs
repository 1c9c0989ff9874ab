//! The storage SCU: one C-STORE of one object to one destination, with the failure classified
//! for the outbox. Blocking (dicom-ul's client); the delivery task runs it off the async runtime.
//!
//! Transient (retried with backoff): the connection cannot be made or drops, timeouts, an
//! association rejected as transient, status 0xA7xx (out of resources). Permanent (flagged, no
//! more attempts until an admin re-queues it): an association rejected as permanent, no
//! presentation context accepted, status 0xA9xx, 0xCxxx or any other failure.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::CloseSocket;
use dicom_ul::pdu::{AssociationRJResult, PDataValue, PDataValueType, PresentationContextResultReason};
use dicom_ul::{ClientAssociation, ClientAssociationOptions, Pdu};

use super::dimse;

/// Why a C-STORE did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

/// The Storage SCP a destination is: where and as whom to send.
#[derive(Debug, Clone)]
pub struct StoreScp {
    pub host: String,
    pub port: u16,
    pub called_ae_title: String,
    pub calling_ae_title: String,
    pub timeout: Duration,
    /// DICOM over TLS: the client configuration and the name the server's certificate must carry.
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
}

/// Sends the Part-10 file at `path` (its class and instance given) by C-STORE; Ok on success
/// or warning statuses.
pub fn store_file(
    scp: &StoreScp,
    path: &std::path::Path,
    sop_class: &str,
    sop_instance: &str,
) -> Result<u16, SendError> {
    let file = dicom_object::open_file(path)
        .map_err(|e| SendError::Permanent(format!("cannot read {}: {e}", path.display())))?;
    let stored_ts = file.meta().transfer_syntax().trim_end_matches('\0').to_string();
    // What we have first, then the uncompressed syntaxes every SCP takes (we re-encode to them).
    let mut proposed = vec![stored_ts.clone()];
    for ts in [uids::EXPLICIT_VR_LITTLE_ENDIAN, uids::IMPLICIT_VR_LITTLE_ENDIAN] {
        if !proposed.iter().any(|p| p == ts) {
            proposed.push(ts.to_string());
        }
    }
    let options = ClientAssociationOptions::new().with_presentation_context(sop_class.to_string(), proposed);
    let assoc = associate(scp, options, sop_class)?;
    transfer(assoc, &file, path, &stored_ts, sop_class, sop_instance)
}

/// An established association, plain or over TLS.
pub(crate) trait Association {
    fn send(&mut self, pdu: &Pdu) -> Result<(), dicom_ul::association::Error>;
    fn receive(&mut self) -> Result<Pdu, dicom_ul::association::Error>;
    fn presentation_contexts(&self) -> &[dicom_ul::pdu::PresentationContextNegotiated];
    fn acceptor_max_pdu_length(&self) -> u32;
    fn release(self: Box<Self>);
    fn abort(self: Box<Self>);
}

impl<S: CloseSocket + std::io::Read + std::io::Write> Association for ClientAssociation<S> {
    fn send(&mut self, pdu: &Pdu) -> Result<(), dicom_ul::association::Error> {
        ClientAssociation::send(self, pdu)
    }
    fn receive(&mut self) -> Result<Pdu, dicom_ul::association::Error> {
        ClientAssociation::receive(self)
    }
    fn presentation_contexts(&self) -> &[dicom_ul::pdu::PresentationContextNegotiated] {
        ClientAssociation::presentation_contexts(self)
    }
    fn acceptor_max_pdu_length(&self) -> u32 {
        ClientAssociation::acceptor_max_pdu_length(self)
    }
    fn release(self: Box<Self>) {
        let _ = ClientAssociation::release(*self);
    }
    fn abort(self: Box<Self>) {
        let _ = ClientAssociation::abort(*self);
    }
}

/// Associates with `scp` as `options` propose (its AE titles, timeouts and TLS added here);
/// `what` names the service in a refusal.
pub(crate) fn associate(
    scp: &StoreScp,
    options: ClientAssociationOptions<'_>,
    what: &str,
) -> Result<Box<dyn Association>, SendError> {
    let options = options
        .calling_ae_title(scp.calling_ae_title.clone())
        .called_ae_title(scp.called_ae_title.clone())
        .connection_timeout(scp.timeout)
        .read_timeout(scp.timeout)
        .write_timeout(scp.timeout);
    let address = (scp.host.as_str(), scp.port);
    match &scp.tls {
        // Without TCP_NODELAY the data set's first PDU waits behind the command's until the peer
        // acknowledges it, which a delayed ACK holds back up to 40 ms: per object.
        None => {
            let mut assoc = options.establish(address).map_err(|e| association_error(e, what))?;
            let _ = assoc.inner_stream().set_nodelay(true);
            Ok(Box::new(assoc))
        }
        Some((tls, server_name)) => {
            let options = options.tls_config(tls.clone()).server_name(server_name);
            let mut assoc = options.establish_tls(address).map_err(|e| association_error(e, what))?;
            let _ = assoc.inner_stream().sock.set_nodelay(true);
            Ok(Box::new(assoc))
        }
    }
}

/// A failure to associate, classified.
fn association_error(e: dicom_ul::association::Error, sop_class: &str) -> SendError {
    use dicom_ul::association::Error;
    match e {
        Error::Rejected { association_rj, .. } => {
            let message = format!("association rejected ({:?}, {:?})", association_rj.result, association_rj.source);
            match association_rj.result {
                AssociationRJResult::Permanent => SendError::Permanent(message),
                AssociationRJResult::Transient => SendError::Transient(message),
            }
        }
        Error::NoAcceptedPresentationContexts { .. } => {
            SendError::Permanent(format!("the destination accepts no presentation context for {sop_class}"))
        }
        // a certificate that does not verify will not verify next time either
        Error::TlsHandshake { source, .. } if source.kind() == std::io::ErrorKind::InvalidData => {
            SendError::Permanent(format!("TLS handshake failed: {source}"))
        }
        e => SendError::Transient(format!("cannot associate: {e}")),
    }
}

/// The C-STORE over an established association, then the release.
fn transfer(
    mut assoc: Box<dyn Association>,
    file: &dicom_object::DefaultDicomObject,
    path: &Path,
    stored_ts: &str,
    sop_class: &str,
    sop_instance: &str,
) -> Result<u16, SendError> {
    let transient = |what: &str, e: &dyn std::fmt::Display| SendError::Transient(format!("{what}: {e}"));
    let Some(context) = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .cloned()
    else {
        assoc.abort();
        return Err(SendError::Permanent(format!("the destination accepts no presentation context for {sop_class}")));
    };
    let accepted_ts = context.transfer_syntax.trim_end_matches('\0').to_string();
    let data = if accepted_ts == stored_ts {
        data_set_bytes(path).map_err(|e| transient("cannot read the file", &e))?
    } else {
        let ts = TransferSyntaxRegistry
            .get(&accepted_ts)
            .ok_or_else(|| SendError::Permanent(format!("the destination chose an unknown syntax {accepted_ts}")))?;
        let mut out = Vec::new();
        file.write_dataset_with_ts(&mut out, ts).map_err(|e| SendError::Permanent(format!("cannot re-encode: {e}")))?;
        out
    };

    let command = store_command(sop_class, sop_instance);
    let pdv = |value_type, is_last, data: &[u8]| Pdu::PData {
        data: vec![PDataValue { presentation_context_id: context.id, value_type, is_last, data: data.to_vec() }],
    };
    let chunk = (assoc.acceptor_max_pdu_length() as usize).saturating_sub(12).clamp(1024, 1 << 20);
    let sent = (|| {
        assoc.send(&pdv(PDataValueType::Command, true, &command))?;
        let pieces: Vec<&[u8]> = data.chunks(chunk).collect();
        for (i, piece) in pieces.iter().enumerate() {
            assoc.send(&pdv(PDataValueType::Data, i + 1 == pieces.len(), piece))?;
        }
        let mut response = Vec::new();
        loop {
            match assoc.receive()? {
                Pdu::PData { data } => {
                    for v in data {
                        response.extend_from_slice(&v.data);
                        if v.is_last && v.value_type == PDataValueType::Command {
                            return Ok(Some(response));
                        }
                    }
                }
                _ => return Ok(None),
            }
        }
    })();
    let response: Result<Option<Vec<u8>>, dicom_ul::association::Error> = sent;
    let status = match response {
        Ok(Some(bytes)) => dimse::parse_command(&bytes)
            .ok()
            .and_then(|c| c.status)
            .ok_or_else(|| SendError::Transient("the destination's response has no status".into()))?,
        Ok(None) => {
            return Err(SendError::Transient("the destination ended the association without a response".into()))
        }
        Err(e) => return Err(transient("the transfer failed", &e)),
    };
    assoc.release();
    match status {
        0x0000 | 0x0001 | 0xB000..=0xBFFF => Ok(status),
        0xA700..=0xA7FF => {
            Err(SendError::Transient(format!("the destination is out of resources (status {status:#06X})")))
        }
        _ => Err(SendError::Permanent(format!("the destination refused the object (status {status:#06X})"))),
    }
}

/// The data set bytes of a Part-10 file, as stored (everything after the file meta group).
fn data_set_bytes(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    if bytes.len() < 144 || &bytes[128..132] != b"DICM" {
        return Err(std::io::Error::other("not a Part-10 file"));
    }
    let group_length = u32::from_le_bytes([bytes[140], bytes[141], bytes[142], bytes[143]]) as usize;
    Ok(bytes.split_off((144 + group_length).min(bytes.len())))
}

fn store_command(sop_class: &str, sop_instance: &str) -> Vec<u8> {
    let obj = InMemDicomObject::command_from_element_iter([
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(sop_class)),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(dimse::command_field::C_STORE_RQ)),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(1u16)),
        DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(0x0000u16)),
        DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop_instance)),
    ]);
    let ts = TransferSyntaxRegistry.get(uids::IMPLICIT_VR_LITTLE_ENDIAN).expect("implicit VR LE is built in");
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts).expect("a command set encodes");
    out
}
