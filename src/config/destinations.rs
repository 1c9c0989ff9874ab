//! `[[destinations]]`: where results go. A DICOM node is sent the objects; an HL7, FHIR or
//! webhook receiver a message per study and priority. Each kind takes its own keys.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::files::{read_named_file, TEXT_FILE_LIMIT};
use super::{check_ae_title, Config, Number, Report, DAY};
use crate::domain::{DestinationKind, ObjectKind, Priority};

/// A DICOM node that receives our results.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub name: String,
    /// What it receives: DICOM objects (`dicom`, the default, by C-STORE; `dicomweb` by STOW-RS)
    /// or a message per study and priority (`hl7`, `fhir`, `webhook`).
    #[serde(default = "dicom_kind")]
    pub kind: DestinationKind,
    /// The called AE title (`dicom` only).
    #[serde(default)]
    pub ae_title: String,
    /// Where to connect (`dicom` and `hl7`).
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    /// Where to POST (`fhir`, `dicomweb`: the server's base URL; `webhook`: the endpoint).
    /// https:// needs `tls.ca_file`.
    #[serde(default)]
    pub url: Option<String>,
    /// Which objects go there; all that are made by default (`dicom` and `dicomweb`).
    #[serde(default = "all_objects")]
    pub objects: Vec<ObjectKind>,
    /// Which study priorities send a message (messaging kinds); all by default.
    #[serde(default = "all_priorities")]
    pub priorities: Vec<Priority>,
    /// A message below urgent waits this long after the study's last analysed image (and while
    /// other images of the study wait for analysis), so that the images of one study (PA and
    /// lateral) give one message; urgent goes at once.
    #[serde(default = "default_settle")]
    pub settle_secs: u64,
    /// HL7 v2 identities (`hl7` only).
    #[serde(default)]
    pub hl7: Option<Hl7Settings>,
    /// FHIR settings (`fhir` only).
    #[serde(default)]
    pub fhir: Option<FhirSettings>,
    /// The signing secret (`webhook` only, required).
    #[serde(default)]
    pub webhook: Option<WebhookSettings>,
    /// DICOMweb settings (`dicomweb` only).
    #[serde(default)]
    pub dicomweb: Option<DicomwebSettings>,
    /// Our AE title towards it; `dicom.ae_title` by default.
    #[serde(default)]
    pub calling_ae_title: Option<String>,
    /// After a transient failure, the first retry waits this long, then twice as long each
    /// time (with jitter), up to `retry_max_secs`.
    #[serde(default = "default_retry_initial")]
    pub retry_initial_secs: u64,
    #[serde(default = "default_retry_max")]
    pub retry_max_secs: u64,
    /// Connecting, and waiting for each answer.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Associations open to it at once (one object each).
    #[serde(default = "default_destination_associations")]
    pub max_associations: usize,
    /// DICOM over TLS (PS3.15 B.9); plain TCP when absent.
    #[serde(default)]
    pub tls: Option<DestinationTls>,
    /// Whether an image the selection rules chose and the node could not analyse is reported to
    /// it: a "not analysed" SR (`dicom`, with the SRs), a message saying so (the others).
    #[serde(default = "yes")]
    pub not_analysed: bool,
}

fn yes() -> bool {
    true
}

/// TLS towards a destination. The server's certificate is always verified, against `ca_file`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationTls {
    /// PEM certificates of the authorities that sign the destination's certificate.
    pub ca_file: PathBuf,
    /// Our certificate chain and private key (PEM), for destinations that require one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name its certificate must carry; `host` by default.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl DestinationTls {
    /// Its files can be read, and an identity has both halves (`key`: the table's key).
    pub(super) fn check(&self, key: &str, config: &Config, report: &mut Report) {
        if self.cert_file.is_some() != self.key_file.is_some() {
            report(key, "cert_file and key_file go together".into());
        }
        for (field, file) in [
            ("ca_file", Some(&self.ca_file)),
            ("cert_file", self.cert_file.as_ref()),
            ("key_file", self.key_file.as_ref()),
        ] {
            if let Some(file) = file {
                if let Err(e) = read_named_file(&config.resolve(file), TEXT_FILE_LIMIT) {
                    report(&format!("{key}.{field}"), format!("{}: {e}", config.resolve(file).display()));
                }
            }
        }
    }
}

impl Destination {
    /// The keys that do not fit the destination's kind, or that it lacks.
    fn kind_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let kind = self.kind;
        let dicom = kind == DestinationKind::Dicom;
        let by_address = matches!(kind, DestinationKind::Dicom | DestinationKind::Hl7);
        if dicom {
            if let Err(m) = check_ae_title(&self.ae_title) {
                problems.push(("ae_title", m));
            }
        } else if !self.ae_title.is_empty() {
            problems.push(("ae_title", format!("is for kind = \"dicom\", not \"{kind}\"")));
        }
        if by_address {
            if self.host.is_empty() {
                problems.push(("host", format!("is required for kind = \"{kind}\"")));
            }
            if self.port == 0 {
                problems.push(("port", "must not be 0".into()));
            }
            if self.url.is_some() {
                problems
                    .push(("url", format!("is for kind = \"fhir\" or \"webhook\"; \"{kind}\" takes host and port")));
            }
        } else {
            match self.url.as_deref() {
                None => problems.push(("url", format!("is required for kind = \"{kind}\""))),
                Some(url) if url.starts_with("https://") => {
                    if self.tls.is_none() {
                        problems.push((
                            "tls",
                            format!("`{url}` is https: set tls.ca_file to the CA that signs its certificate"),
                        ));
                    }
                }
                Some(url) if url.starts_with("http://") => {}
                Some(url) => problems.push(("url", format!("`{url}` is neither http:// nor https://"))),
            }
            if !self.host.is_empty() || self.port != 0 {
                problems.push(("host", format!("kind = \"{kind}\" takes url, not host and port")));
            }
        }
        if self.takes_messages() && self.objects != all_objects() {
            problems.push(("objects", format!("is for kind = \"dicom\"; \"{kind}\" sends a message per study")));
        }
        if self.priorities.is_empty() {
            problems.push(("priorities", "is empty: no message would ever be sent".into()));
        }
        for (key, present, wanted) in [
            ("hl7", self.hl7.is_some(), DestinationKind::Hl7),
            ("fhir", self.fhir.is_some(), DestinationKind::Fhir),
            ("webhook", self.webhook.is_some(), DestinationKind::Webhook),
            ("dicomweb", self.dicomweb.is_some(), DestinationKind::Dicomweb),
        ] {
            if present && kind != wanted {
                problems.push((key, format!("is for kind = \"{wanted}\", not \"{kind}\"")));
            }
        }
        if kind == DestinationKind::Webhook {
            match &self.webhook {
                None => problems.push(("webhook.secret", "is required: the body is signed with it".into())),
                Some(w) if w.secret.len() < 16 => {
                    problems.push(("webhook.secret", "must be at least 16 characters".into()))
                }
                Some(_) => {}
            }
        }
        if let Some(fhir) = &self.fhir {
            for (key, code) in [
                ("fhir.urgent_priority", &fhir.urgent_priority),
                ("fhir.review_priority", &fhir.review_priority),
                ("fhir.routine_priority", &fhir.routine_priority),
            ] {
                if !["routine", "urgent", "asap", "stat"].contains(&code.as_str()) {
                    problems
                        .push((key, format!("`{code}` is not a FHIR request-priority (routine, urgent, asap, stat)")));
                }
            }
        }
        if let Some(hl7) = &self.hl7 {
            for (key, value) in [
                ("hl7.sending_application", &hl7.sending_application),
                ("hl7.sending_facility", &hl7.sending_facility),
                ("hl7.receiving_application", &hl7.receiving_application),
                ("hl7.receiving_facility", &hl7.receiving_facility),
            ] {
                if value.chars().any(|c| "|^~\\&\r\n".contains(c)) || value.chars().count() > 227 {
                    problems.push((key, "must not hold HL7 delimiters (| ^ ~ \\ &) or line breaks".into()));
                }
            }
        }
        problems
    }

    /// Whether it receives messages (not DICOM objects).
    pub fn takes_messages(&self) -> bool {
        !matches!(self.kind, DestinationKind::Dicom | DestinationKind::Dicomweb)
    }
}

/// How the node signs in at a DICOMweb server.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomwebSettings {
    /// Sent as `Authorization: Bearer` with every request.
    pub bearer_token: Option<String>,
}

/// MSH identities of an HL7 v2 destination.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hl7Settings {
    /// MSH-3 and MSH-4.
    pub sending_application: String,
    pub sending_facility: String,
    /// MSH-5 and MSH-6.
    pub receiving_application: String,
    pub receiving_facility: String,
}

impl Default for Hl7Settings {
    fn default() -> Self {
        Hl7Settings {
            sending_application: "PNEUMOTRIAGE".into(),
            sending_facility: String::new(),
            receiving_application: String::new(),
            receiving_facility: String::new(),
        }
    }
}

/// How a FHIR destination is reached and what it is told.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirSettings {
    /// `Authorization: Bearer <token>`; a client certificate goes in `tls.cert_file`/`key_file`.
    pub bearer_token: Option<String>,
    /// FHIR request-priority codes (routine, urgent, asap, stat) for each study priority.
    pub urgent_priority: String,
    pub review_priority: String,
    pub routine_priority: String,
}

impl Default for FhirSettings {
    fn default() -> Self {
        FhirSettings {
            bearer_token: None,
            urgent_priority: "stat".into(),
            review_priority: "asap".into(),
            routine_priority: "routine".into(),
        }
    }
}

impl FhirSettings {
    /// The request-priority code a study priority maps to.
    pub fn request_priority(&self, priority: Priority) -> &str {
        match priority {
            Priority::Urgent => &self.urgent_priority,
            Priority::Review => &self.review_priority,
            Priority::Routine => &self.routine_priority,
        }
    }
}

/// How a webhook's body is signed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// HMAC-SHA256 key: the body's signature goes in `X-Pneumotriage-Signature: sha256=<hex>`.
    pub secret: String,
}

fn dicom_kind() -> DestinationKind {
    DestinationKind::Dicom
}

fn all_priorities() -> Vec<Priority> {
    Priority::ALL.to_vec()
}

fn default_settle() -> u64 {
    30
}

fn default_destination_associations() -> usize {
    2
}

fn default_retry_initial() -> u64 {
    5
}

fn default_retry_max() -> u64 {
    600
}

fn default_timeout() -> u64 {
    30
}

fn all_objects() -> Vec<ObjectKind> {
    ObjectKind::ALL.to_vec()
}

impl Destination {
    pub(super) fn numbers(&self, i: usize) -> Vec<Number> {
        let key = |field: &str| format!("destinations[{i}].{field}");
        vec![
            Number::new(key("settle_secs"), self.settle_secs, 0..=DAY, "seconds"),
            Number::new(
                key("retry_initial_secs"),
                self.retry_initial_secs,
                1..=self.retry_max_secs.max(1),
                "seconds (at most retry_max_secs)",
            ),
            Number::new(key("retry_max_secs"), self.retry_max_secs, 1..=DAY, "seconds"),
            Number::new(key("timeout_secs"), self.timeout_secs, 1..=3600, "seconds"),
            Number::new(key("max_associations"), self.max_associations as u64, 1..=64, ""),
        ]
    }

    pub(super) fn check(&self, i: usize, config: &Config, report: &mut Report) {
        for (key, message) in self.kind_problems() {
            report(&format!("destinations[{i}].{key}"), message);
        }
        if let Some(Err(m)) = self.calling_ae_title.as_deref().map(check_ae_title) {
            report(&format!("destinations[{i}].calling_ae_title"), m);
        }
        if let Some(tls) = &self.tls {
            tls.check(&format!("destinations[{i}].tls"), config, report);
        }
    }
}
