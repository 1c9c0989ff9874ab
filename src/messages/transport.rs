//! How a message reaches a messaging destination: the format its kind calls for, sent over
//! MLLP (HL7) or HTTP(S) (FHIR, webhook). Blocking: the outbox calls it from `spawn_blocking`.

use std::time::Duration;

use super::{fhir, hl7, http, webhook, MessageError, StudyMessage};
use crate::config::{Config, Destination, FhirSettings, Hl7Settings};
use crate::dicom::tls::TlsSetupError;
use crate::domain::DestinationKind;

/// A messaging destination, ready to send to.
pub enum Transport {
    Hl7 { target: hl7::Hl7Target, settings: Hl7Settings },
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

impl Transport {
    /// The transport of a messaging destination (not `dicom`), its TLS files read.
    pub fn of(config: &Config, d: &Destination) -> Result<Transport, TransportError> {
        Ok(match d.kind {
            DestinationKind::Hl7 => {
                let tls = crate::dicom::tls::destination_client(config, d)?;
                let timeout = Duration::from_secs(d.timeout_secs);
                let target = hl7::Hl7Target { host: d.host.clone(), port: d.port, tls, timeout };
                Transport::Hl7 { target, settings: d.hl7.clone().unwrap_or_default() }
            }
            DestinationKind::Fhir => Transport::Fhir {
                target: http::HttpTarget::for_destination(config, d)?,
                settings: d.fhir.clone().unwrap_or_default(),
            },
            DestinationKind::Webhook => Transport::Webhook {
                target: http::HttpTarget::for_destination(config, d)?,
                secret: d.webhook.as_ref().map(|w| w.secret.as_bytes().to_vec()).unwrap_or_default(),
            },
            DestinationKind::Dicom => return Err(TransportError::NotMessaging),
        })
    }

    /// Makes the message in the destination's format and sends it; the receiver's answer.
    pub fn send(&self, message: &StudyMessage) -> Result<(), MessageError> {
        match self {
            Transport::Hl7 { target, settings } => {
                hl7::send(target, &hl7::oru_r01(message, settings), &message.control_id)
            }
            Transport::Fhir { target, settings } => {
                let body = fhir::bundle(message, settings).to_string();
                target.post_json(None, body.as_bytes(), &fhir::headers(message))
            }
            Transport::Webhook { target, secret } => {
                let body = webhook::body(message).to_string();
                target.post_json(None, body.as_bytes(), &webhook::headers(message, secret, body.as_bytes()))
            }
        }
    }
}
