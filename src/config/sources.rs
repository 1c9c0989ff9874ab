//! `[[sources]]`: the PACS the node may query and pull studies from (C-FIND at study level, then
//! C-MOVE to this node's own AE title; or QIDO-RS, then WADO-RS), with `pneumotriage fetch` or
//! the catch-up after a stop.

use serde::{Deserialize, Serialize};

use super::{check_ae_title, Config, DestinationTls, DicomwebSettings, Number, Report};
use crate::domain::SourceKind;

/// A PACS that answers C-FIND and C-MOVE, or QIDO-RS and WADO-RS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub name: String,
    /// `dicom` (the default): C-FIND and C-MOVE; `dicomweb`: QIDO-RS and WADO-RS at `url`.
    #[serde(default = "dicom_kind")]
    pub kind: SourceKind,
    /// Its AE title, host and port (its Query/Retrieve SCP; `dicom` only).
    #[serde(default)]
    pub ae_title: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    /// The DICOMweb base URL (`dicomweb` only); https:// needs `tls.ca_file`.
    #[serde(default)]
    pub url: Option<String>,
    /// How the node signs in at it (`dicomweb` only).
    #[serde(default)]
    pub dicomweb: Option<DicomwebSettings>,
    /// Our AE title towards it; `dicom.ae_title` by default.
    #[serde(default)]
    pub calling_ae_title: Option<String>,
    /// The AE title it knows this node's listener by, where its C-MOVE sends the images;
    /// `dicom.ae_title` by default. The source must map it to this node's host and port, and
    /// its own AE title must be in `[[dicom.peers]]` (its C-STORE is refused otherwise).
    #[serde(default)]
    pub move_destination: Option<String>,
    /// The modalities pulled when a query names none (a C-FIND per modality).
    #[serde(default = "default_modalities")]
    pub modalities: Vec<String>,
    /// Connecting, and waiting for each answer (a C-MOVE answers after each image it sends).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// At start-up, `serve` pulls the studies of `modalities` the source received since the
    /// last image this node received (at most `catch_up_max_days` back).
    #[serde(default)]
    pub catch_up: bool,
    #[serde(default = "default_catch_up_days")]
    pub catch_up_max_days: u64,
    /// Studies moved per minute at most, by `fetch` and the catch-up: the PACS serves its
    /// readers first.
    #[serde(default = "default_rate")]
    pub max_studies_per_minute: u64,
    /// DICOM over TLS, as for destinations.
    #[serde(default)]
    pub tls: Option<DestinationTls>,
}

fn dicom_kind() -> SourceKind {
    SourceKind::Dicom
}

fn default_modalities() -> Vec<String> {
    vec!["CR".into(), "DX".into()]
}

fn default_timeout() -> u64 {
    60
}

fn default_catch_up_days() -> u64 {
    7
}

fn default_rate() -> u64 {
    30
}

impl Source {
    pub(super) fn numbers(&self, i: usize) -> Vec<Number> {
        let key = |field: &str| format!("sources[{i}].{field}");
        vec![
            Number::new(key("timeout_secs"), self.timeout_secs, 1..=3600, "seconds"),
            Number::new(key("catch_up_max_days"), self.catch_up_max_days, 1..=366, "days"),
            Number::new(key("max_studies_per_minute"), self.max_studies_per_minute, 1..=6000, ""),
        ]
    }

    pub(super) fn check(&self, i: usize, config: &Config, report: &mut Report) {
        let key = |field: &str| format!("sources[{i}].{field}");
        match self.kind {
            SourceKind::Dicom => self.check_dicom(i, config, report),
            SourceKind::Dicomweb => self.check_dicomweb(i, report),
        }
        if self.modalities.is_empty() {
            report(&key("modalities"), "is empty: a query without a modality would pull nothing".into());
        }
        for m in &self.modalities {
            if m.is_empty()
                || m.len() > 16
                || !m.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                report(&key("modalities"), format!("`{m}` is not a modality code (e.g. CR, DX)"));
            }
        }
        if let Some(tls) = &self.tls {
            tls.check(&key("tls"), config, report);
        }
    }

    fn check_dicom(&self, i: usize, config: &Config, report: &mut Report) {
        let key = |field: &str| format!("sources[{i}].{field}");
        for (field, ae) in [
            ("ae_title", Some(&self.ae_title)),
            ("calling_ae_title", self.calling_ae_title.as_ref()),
            ("move_destination", self.move_destination.as_ref()),
        ] {
            if let Some(Err(m)) = ae.map(|ae| check_ae_title(ae)) {
                report(&key(field), m);
            }
        }
        if self.host.trim().is_empty() {
            report(&key("host"), "is required for kind = \"dicom\"".into());
        }
        if self.port == 0 {
            report(&key("port"), "is required for kind = \"dicom\" (1 to 65535)".into());
        }
        for (field, present) in [("url", self.url.is_some()), ("dicomweb", self.dicomweb.is_some())] {
            if present {
                report(&key(field), "is for kind = \"dicomweb\"".into());
            }
        }
        let known = config.dicom.peers.iter().any(|p| p.ae_title.trim() == self.ae_title.trim());
        if !config.dicom.accept_any && !known {
            report(
                &key("ae_title"),
                format!(
                    "`{}` is not in [[dicom.peers]]: the images it sends on C-MOVE would be refused; add it there",
                    self.ae_title
                ),
            );
        }
    }

    fn check_dicomweb(&self, i: usize, report: &mut Report) {
        let key = |field: &str| format!("sources[{i}].{field}");
        match self.url.as_deref() {
            None => report(&key("url"), "is required for kind = \"dicomweb\"".into()),
            Some(url) if url.starts_with("https://") && self.tls.is_none() => {
                report(&key("tls"), format!("`{url}` is https: set tls.ca_file to the CA that signs its certificate"))
            }
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {}
            Some(url) => report(&key("url"), format!("`{url}` is neither http:// nor https://")),
        }
        for (field, present) in [
            ("ae_title", !self.ae_title.is_empty()),
            ("host", !self.host.is_empty()),
            ("port", self.port != 0),
            ("calling_ae_title", self.calling_ae_title.is_some()),
            ("move_destination", self.move_destination.is_some()),
        ] {
            if present {
                report(&key(field), "is for kind = \"dicom\"; \"dicomweb\" takes url".into());
            }
        }
    }

    /// The AE title its C-MOVE sends to.
    pub fn move_destination<'a>(&'a self, config: &'a Config) -> &'a str {
        self.move_destination.as_deref().unwrap_or(&config.dicom.ae_title)
    }
}
