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

/// Why a messaging destination cannot be used (its TLS files).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("{0}")]
    Http(String),
    #[error("a DICOM destination takes objects, not messages")]
    NotMessaging,
}

impl Transport {
    /// The transport of a messaging destination (not `dicom`), its TLS files read.
    pub fn of(config: &Config, d: &Destination) -> Result<Transport, TransportError> {
        let timeout = Duration::from_secs(d.timeout_secs);
        let ca_file = d.tls.as_ref().map(|t| config.resolve(&t.ca_file));
        let identity = d.tls.as_ref().and_then(|t| {
            let (cert, key) = t.cert_file.as_ref().zip(t.key_file.as_ref())?;
            Some((config.resolve(cert), config.resolve(key)))
        });
        let identity = identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
        let http = |bearer: Option<String>| {
            http::HttpTarget::new(d.url.as_deref().unwrap_or_default(), ca_file.as_deref(), identity, bearer, timeout)
        };
        Ok(match d.kind {
            DestinationKind::Hl7 => {
                let tls = match (&d.tls, &ca_file) {
                    (Some(tls), Some(ca)) => Some((
                        crate::dicom::tls::client_config(ca, identity)?,
                        tls.server_name.clone().unwrap_or_else(|| d.host.clone()),
                    )),
                    _ => None,
                };
                let target = hl7::Hl7Target { host: d.host.clone(), port: d.port, tls, timeout };
                Transport::Hl7 { target, settings: d.hl7.clone().unwrap_or_default() }
            }
            DestinationKind::Fhir => {
                let settings = d.fhir.clone().unwrap_or_default();
                Transport::Fhir { target: http(settings.bearer_token.clone())?, settings }
            }
            DestinationKind::Webhook => Transport::Webhook {
                target: http(None)?,
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
                target.post_json(None, body.as_bytes(), &[("Content-Type", "application/fhir+json".into())])
            }
            Transport::Webhook { target, secret } => {
                let body = webhook::body(message).to_string();
                let headers = [
                    ("Content-Type", "application/json".to_string()),
                    (webhook::SIGNATURE_HEADER, webhook::signature(secret, body.as_bytes())),
                    (webhook::MESSAGE_ID_HEADER, message.control_id.clone()),
                ];
                target.post_json(None, body.as_bytes(), &headers)
            }
        }
    }
}
