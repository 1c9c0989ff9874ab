//! `[dicom]`: the listener, its limits and timers, who may associate, DICOM TLS.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::files::{read_named_file, TEXT_FILE_LIMIT};
use super::{check_ae_title, Config, Number, Report, DAY};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomConfig {
    pub ae_title: String,
    pub bind: SocketAddr,
    /// Any calling AE may associate (the allow-list is ignored).
    pub accept_any: bool,
    /// Reject associations whose called AE title is not ours.
    pub check_called_ae: bool,
    pub max_associations: usize,
    /// Associations at once from one address, so that one peer cannot take every slot.
    pub max_associations_per_host: usize,
    /// The largest data set one C-STORE may carry (and a deflated one may inflate to), in MiB.
    pub max_dataset_mb: u64,
    /// The largest PDU we accept, announced in A-ASSOCIATE-AC.
    pub max_pdu: u32,
    /// An association with no PDU for this long is aborted.
    pub idle_timeout_secs: u64,
    /// The ARTIM timer: how long a new connection may take to send its A-ASSOCIATE-RQ.
    pub artim_timeout_secs: u64,
    /// On SIGTERM or SIGINT, associations in progress get this long to finish before they are
    /// aborted (what they had not been answered for is not kept, and the sender knows it).
    pub shutdown_grace_secs: u64,
    /// Also accept Secondary Capture images (stored and analysed only if applicable).
    pub accept_secondary_capture: bool,
    /// Also accept every other storage SOP class, store-only.
    pub accept_all_storage: bool,
    pub peers: Vec<AllowedCaller>,
    /// DICOM TLS (PS3.15 BCP 195) on a port of its own.
    pub tls: Option<ListenerTls>,
}

/// `[dicom.tls]`: a TLS listener beside (or instead of) the plain one.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Where the TLS listener binds (2762 is DICOM's registered TLS port).
    pub bind: SocketAddr,
    /// The node's certificate chain and private key (PEM).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, every peer must present a certificate signed by one of these authorities
    /// (PEM): mutual TLS. Unset: any client may connect, and the AE allow-list still applies.
    pub client_ca_file: Option<PathBuf>,
    /// true: no plain listener; DICOM only over TLS.
    #[serde(default)]
    pub only: bool,
}

impl Default for DicomConfig {
    fn default() -> Self {
        DicomConfig {
            ae_title: "PNEUMOTRIAGE".into(),
            bind: "0.0.0.0:11112".parse().expect("literal socket address"),
            accept_any: false,
            check_called_ae: true,
            max_associations: 32,
            max_associations_per_host: 8,
            max_dataset_mb: 512,
            max_pdu: 131_072,
            idle_timeout_secs: 60,
            artim_timeout_secs: 30,
            shutdown_grace_secs: 30,
            accept_secondary_capture: false,
            accept_all_storage: false,
            peers: Vec::new(),
            tls: None,
        }
    }
}

impl DicomConfig {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn artim_timeout(&self) -> Duration {
        Duration::from_secs(self.artim_timeout_secs)
    }
    pub fn max_dataset_bytes(&self) -> u64 {
        self.max_dataset_mb * 1024 * 1024
    }
}

/// One entry of the calling-AE allow-list (`[[dicom.peers]]`): who may associate, not where
/// results go (that is a destination).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedCaller {
    pub ae_title: String,
    /// When set, the association must also come from this address.
    pub host: Option<IpAddr>,
}

impl DicomConfig {
    pub(super) fn numbers(&self) -> Vec<Number> {
        vec![
            Number::new("dicom.max_associations", self.max_associations as u64, 1..=4096, ""),
            Number::new("dicom.max_associations_per_host", self.max_associations_per_host as u64, 1..=4096, ""),
            Number::new("dicom.max_dataset_mb", self.max_dataset_mb, 1..=4096, "MiB"),
            Number::new("dicom.max_pdu", self.max_pdu as u64, 4096..=16 << 20, "bytes"),
            Number::new("dicom.idle_timeout_secs", self.idle_timeout_secs, 1..=DAY, "seconds"),
            Number::new("dicom.artim_timeout_secs", self.artim_timeout_secs, 1..=3600, "seconds"),
            Number::new("dicom.shutdown_grace_secs", self.shutdown_grace_secs, 0..=3600, "seconds"),
        ]
    }

    pub(super) fn check(&self, config: &Config, report: &mut Report) {
        if let Err(m) = check_ae_title(&self.ae_title) {
            report("dicom.ae_title", m);
        }
        for (i, peer) in self.peers.iter().enumerate() {
            if let Err(m) = check_ae_title(&peer.ae_title) {
                report(&format!("dicom.peers[{i}].ae_title"), m);
            }
        }
        if !self.accept_any && self.peers.is_empty() {
            report(
                "dicom.peers",
                "no calling AE is allowed: add [[dicom.peers]] entries or set dicom.accept_any = true".into(),
            );
        }
        if let Some(tls) = &self.tls {
            for (key, file) in [
                ("cert_file", Some(&tls.cert_file)),
                ("key_file", Some(&tls.key_file)),
                ("client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(file) = file {
                    if let Err(e) = read_named_file(&config.resolve(file), TEXT_FILE_LIMIT) {
                        report(&format!("dicom.tls.{key}"), format!("{}: {e}", config.resolve(file).display()));
                    }
                }
            }
            if !tls.only && tls.bind == self.bind {
                report("dicom.tls.bind", "is the plain listener's address (dicom.bind)".into());
            }
        }
    }
}
