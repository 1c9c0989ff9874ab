//! `[audit]`: where the node's audit records go (IHE ATNA: DICOM PS3.15 A.5 messages over
//! syslog), and how many may wait for a repository that is down.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::files::{read_named_file, TEXT_FILE_LIMIT};
use super::{check_label, Config, Number, Report, DAY};
use crate::config::DestinationTls;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The node as the records name it (AuditSourceID); `node.name` (or the host name) by default.
    pub source_id: Option<String>,
    /// The site (AuditEnterpriseSiteID), e.g. the hospital; none by default.
    pub enterprise_site_id: Option<String>,
    /// Records waiting for one repository at most; above it the oldest are dropped, counted
    /// (`pneumotriage_audit_dropped_total`) and logged as errors. About 2 KB each.
    pub max_backlog: u64,
    /// After a failed send the first retry waits this long, then twice as long each time.
    pub retry_initial_secs: u64,
    pub retry_max_secs: u64,
    /// The audit repositories (`[[audit.repositories]]`); none: no record is kept.
    pub repositories: Vec<AuditRepository>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            source_id: None,
            enterprise_site_id: None,
            max_backlog: 100_000,
            retry_initial_secs: 1,
            retry_max_secs: 60,
            repositories: Vec::new(),
        }
    }
}

/// How records reach a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditTransport {
    /// Syslog over TLS (RFC 5425): octet-counted frames, the server's certificate verified.
    Tls,
    /// Syslog over UDP (RFC 5426): one datagram per record, no acknowledgement of any kind.
    Udp,
    /// A local file, one syslog message per line, for a site without a repository.
    File,
}

impl std::fmt::Display for AuditTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuditTransport::Tls => "tls",
            AuditTransport::Udp => "udp",
            AuditTransport::File => "file",
        })
    }
}

/// One audit repository (`[[audit.repositories]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRepository {
    /// How the records are told apart per repository, and how logs and metrics name it.
    pub name: String,
    pub transport: AuditTransport,
    /// Where the repository listens (`tls`, `udp`); 6514 and 514 are the registered ports.
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    /// The file records are appended to (`file`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The server's authorities, and our certificate if it asks for one (`tls`, required).
    #[serde(default)]
    pub tls: Option<DestinationTls>,
}

impl AuditConfig {
    pub(super) fn numbers(&self) -> Vec<Number> {
        vec![
            Number::new("audit.max_backlog", self.max_backlog, 100..=100_000_000, "records"),
            Number::new(
                "audit.retry_initial_secs",
                self.retry_initial_secs,
                1..=self.retry_max_secs.max(1),
                "seconds (at most retry_max_secs)",
            ),
            Number::new("audit.retry_max_secs", self.retry_max_secs, 1..=DAY, "seconds"),
        ]
    }

    pub(super) fn check(&self, config: &Config, report: &mut Report) {
        for (key, value) in
            [("audit.source_id", &self.source_id), ("audit.enterprise_site_id", &self.enterprise_site_id)]
        {
            if let Some(v) = value.as_deref().filter(|v| v.trim().is_empty() || v.chars().any(char::is_control)) {
                report(key, format!("{v:?} must be printable and not empty"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.repositories.iter().enumerate() {
            let key = |field: &str| format!("audit.repositories[{i}].{field}");
            if let Err(m) = check_label(&r.name) {
                report(&key("name"), m);
            } else if !names.insert(r.name.as_str()) {
                report(&key("name"), format!("`{}` is used twice", r.name));
            }
            let networked = r.transport != AuditTransport::File;
            if networked {
                if r.host.is_empty() {
                    report(&key("host"), format!("is required for transport = \"{}\"", r.transport));
                }
                if r.port == 0 {
                    report(&key("port"), format!("is required for transport = \"{}\"", r.transport));
                }
                if r.path.is_some() {
                    report(&key("path"), format!("is for transport = \"file\", not \"{}\"", r.transport));
                }
            } else {
                if r.path.is_none() {
                    report(&key("path"), "is required for transport = \"file\"".into());
                }
                if !r.host.is_empty() || r.port != 0 {
                    report(&key("host"), "transport = \"file\" takes path, not host and port".into());
                }
            }
            match (&r.tls, r.transport) {
                (None, AuditTransport::Tls) => report(
                    &key("tls.ca_file"),
                    "is required for transport = \"tls\": the repository's certificate is always verified".into(),
                ),
                (Some(_), AuditTransport::Udp | AuditTransport::File) => {
                    report(&key("tls"), format!("is for transport = \"tls\", not \"{}\"", r.transport))
                }
                (Some(tls), AuditTransport::Tls) => {
                    if tls.cert_file.is_some() != tls.key_file.is_some() {
                        report(&key("tls"), "cert_file and key_file go together".into());
                    }
                    for (field, file) in [
                        ("tls.ca_file", Some(&tls.ca_file)),
                        ("tls.cert_file", tls.cert_file.as_ref()),
                        ("tls.key_file", tls.key_file.as_ref()),
                    ] {
                        let Some(file) = file else { continue };
                        if let Err(e) = read_named_file(&config.resolve(file), TEXT_FILE_LIMIT) {
                            report(&key(field), format!("{}: {e}", config.resolve(file).display()));
                        }
                    }
                }
                (None, _) => {}
            }
        }
    }

    /// Whether anything is recorded at all.
    pub fn enabled(&self) -> bool {
        !self.repositories.is_empty()
    }
}
