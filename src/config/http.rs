//! `[http]`: the HTTP side (health, metrics, the worklist API and page), its tokens, its
//! connection caps and timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_label, Number, Report};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Health, metrics, the worklist API and page; `enabled = false` serves none of it.
    pub enabled: bool,
    pub bind: SocketAddr,
    /// When set, every endpoint but /healthz and /readyz (and the page itself, which holds no
    /// data) requires `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Named tokens, one per person (`[[http.tokens]]`): each opens what `token` opens, and a
    /// radiologist's verdict is recorded with the name of the token it came with.
    pub tokens: Vec<NamedToken>,
    /// How users reach the worklist page (e.g. `https://triage.hospital.org/`): messages link
    /// to their study with it. No link when unset.
    pub public_url: Option<String>,
    /// Connections open at once; more are closed unserved, so that HTTP can never take the
    /// file descriptors the DICOM listener needs.
    pub max_connections: usize,
    /// Connections open at once from one address (a proxy in front counts as one client).
    pub max_connections_per_client: usize,
    /// A connection must send a request's whole head within this long of opening, or of the
    /// previous answer; an idle or slow one is closed.
    pub header_timeout_secs: u64,
    /// A request must be answered, its body read included, within this long (else 503).
    pub request_timeout_secs: u64,
    /// HTTPS on the listener (`[http.tls]`); plain HTTP when unset.
    pub tls: Option<HttpTls>,
}

/// `[http.tls]`: the listener speaks HTTPS only, with the same certificate rules as DICOM TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// The node's certificate chain and private key (PEM).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, every client must present a certificate signed by one of these authorities.
    pub client_ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            bind: "127.0.0.1:8080".parse().expect("literal socket address"),
            token: None,
            tokens: Vec::new(),
            public_url: None,
            max_connections: 256,
            max_connections_per_client: 64,
            header_timeout_secs: 10,
            request_timeout_secs: 60,
            tls: None,
        }
    }
}

/// A person's bearer token (`[[http.tokens]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    /// Who uses it, as verdicts record it (e.g. `dr.lee`).
    pub name: String,
    pub token: String,
}

impl HttpConfig {
    pub(super) fn numbers(&self) -> Vec<Number> {
        vec![
            Number::new("http.max_connections", self.max_connections as u64, 1..=65_536, ""),
            Number::new("http.max_connections_per_client", self.max_connections_per_client as u64, 1..=65_536, ""),
            Number::new("http.header_timeout_secs", self.header_timeout_secs, 1..=600, "seconds"),
            Number::new("http.request_timeout_secs", self.request_timeout_secs, 1..=3600, "seconds"),
        ]
    }

    pub(super) fn check(&self, config: &super::Config, report: &mut Report) {
        if let Some(tls) = &self.tls {
            for (key, file) in [
                ("http.tls.cert_file", Some(&tls.cert_file)),
                ("http.tls.key_file", Some(&tls.key_file)),
                ("http.tls.client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                let Some(file) = file else { continue };
                if let Err(e) = super::read_named_file(&config.resolve(file), super::TEXT_FILE_LIMIT) {
                    report(key, format!("{}: {e}", config.resolve(file).display()));
                }
            }
        }
        if self.max_connections_per_client > self.max_connections {
            report("http.max_connections_per_client", "is more than http.max_connections".into());
        }
        let weak = |token: &str| token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control());
        if self.token.as_deref().is_some_and(weak) {
            report("http.token", "must be at least 16 characters, without spaces".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, named) in self.tokens.iter().enumerate() {
            if let Err(m) = check_label(&named.name) {
                report(&format!("http.tokens[{i}].name"), m);
            } else if !seen.insert(named.name.as_str()) {
                report(&format!("http.tokens[{i}].name"), format!("`{}` is used by another token", named.name));
            }
            if weak(&named.token) {
                report(&format!("http.tokens[{i}].token"), "must be at least 16 characters, without spaces".into());
            } else if self.token.as_deref() == Some(named.token.as_str())
                || self.tokens[..i].iter().any(|t| t.token == named.token)
            {
                report(
                    &format!("http.tokens[{i}].token"),
                    "is another token's too: each person needs their own".into(),
                );
            }
        }
    }
}
