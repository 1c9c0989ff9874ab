//! How a message reaches a messaging destination: the format its kind calls for, sent over
//! MLLP (HL7) or HTTP(S) (FHIR, webhook). Blocking: the outbox calls it from `spawn_blocking`.

use std::time::Duration;

use super::{http, mllp, MessageError};
use crate::config::{Config, Destination, FhirSettings, Hl7Settings};
use crate::domain::{DestinationKind, StudyMessage};
use crate::messages::{fhir, hl7, webhook};
use crate::tls::TlsSetupError;

/// A messaging destination, ready to send to.
pub enum MessageTransport {
    Hl7 { target: mllp::Hl7Target, settings: Hl7Settings },
    Fhir { target: http::HttpTarget, settings: FhirSettings },
    Webhook { target: http::HttpTarget, secret: Vec<u8> },
}

/// Why a messaging destination cannot be used (its TLS files, its URL).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Http(#[from] http::HttpSetupError),
    #[error("a DICOM destination takes objects, not messages")]
    NotMessaging,
}

impl MessageTransport {
    /// The transport of a messaging destination (not `dicom`), its TLS files read.
    pub fn of(config: &Config, d: &Destination) -> Result<MessageTransport, TransportError> {
        Ok(match d.kind {
            DestinationKind::Hl7 => {
                let tls = crate::tls::destination_client(config, d)?;
                let timeout = Duration::from_secs(d.timeout_secs);
                let target = mllp::Hl7Target { host: d.host.clone(), port: d.port, tls, timeout };
                MessageTransport::Hl7 { target, settings: d.hl7.clone().unwrap_or_default() }
            }
            DestinationKind::Fhir => MessageTransport::Fhir {
                target: http::HttpTarget::for_destination(config, d)?,
                settings: d.fhir.clone().unwrap_or_default(),
            },
            DestinationKind::Webhook => MessageTransport::Webhook {
                target: http::HttpTarget::for_destination(config, d)?,
                secret: d.webhook.as_ref().map(|w| w.secret.as_bytes().to_vec()).unwrap_or_default(),
            },
            DestinationKind::Dicom | DestinationKind::Dicomweb => return Err(TransportError::NotMessaging),
        })
    }

    /// Makes the message in the destination's format and sends it; the receiver's answer.
    pub fn send(&self, message: &StudyMessage) -> Result<(), MessageError> {
        match self {
            MessageTransport::Hl7 { target, settings } => {
                mllp::send(target, &hl7::oru_r01(message, settings), &message.control_id)
            }
            MessageTransport::Fhir { target, settings } => {
                let body = fhir::bundle(message, settings).to_string();
                target.post_json(None, body.as_bytes(), &fhir::headers(message))
            }
            MessageTransport::Webhook { target, secret } => {
                let body = webhook::body(message).to_string();
                target.post_json(None, body.as_bytes(), &webhook::headers(message, secret, body.as_bytes()))
            }
        }
    }
}
