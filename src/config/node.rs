//! `[node]`, `[database]` and `[object_store]`: where the node keeps what it receives and makes.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::files::{read_named_file, TEXT_FILE_LIMIT};
use super::{check_uid_root, Config, Number, Report};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Spool, SQLite file and outputs live under here unless told otherwise.
    pub data_dir: PathBuf,
    /// Root for the UIDs of the objects the node creates.
    pub uid_root: String,
    /// Below this much free space in the spool's file system, C-STORE answers 0xA700.
    pub min_free_disk_mb: u64,
    /// A name for this node in the database (job claims, events); the host name by default.
    pub name: Option<String>,
    /// Every node sharing the database reads this same spool directory (shared storage), so any
    /// of them may analyse any image; otherwise a node analyses only the images it received.
    pub shared_spool: bool,
    /// How long a claimed job or delivery is this node's: another node takes over the work of a
    /// node that died once its leases expire. Longer than the slowest analysis and send.
    pub lease_secs: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("var"),
            uid_root: "2.25".into(),
            min_free_disk_mb: 1024,
            name: None,
            shared_spool: false,
            lease_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://...`; SQLite under `node.data_dir` when unset.
    pub url: Option<String>,
    pub max_connections: u32,
    /// PostgreSQL over TLS, the server verified (`[database.tls]`).
    pub tls: Option<DatabaseTls>,
}

/// `[database.tls]`: TLS to PostgreSQL with libpq's `verify-full`: the server's certificate
/// must be signed by `ca_file` and name the URL's host.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseTls {
    pub ca_file: PathBuf,
    /// Our certificate and key (PEM), for a server that asks for one (`hostssl ... cert`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: None, max_connections: 8, tls: None }
    }
}

/// `[object_store]`: the bucket (S3, MinIO, Ceph RGW) that keeps the spool and the outputs.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// `s3://<bucket>` or `s3://<bucket>/<prefix>`: several sites (or test runs) may share a
    /// bucket under prefixes of their own.
    pub url: String,
    /// The S3 endpoint of a store other than AWS (`https://rgw.hospital.org:7480`); `http://`
    /// only where the link is otherwise protected.
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    /// The credentials; unset, they come from the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, e.g. in `/etc/pneumotriage/environment`, which the unit reads)
    /// or the instance profile.
    pub access_key_id: Option<String>,
    #[serde(serialize_with = "redacted")]
    pub secret_access_key: Option<String>,
    /// The authority (PEM) that signed the endpoint's certificate, if not a system one.
    pub ca_file: Option<PathBuf>,
    /// How long one request may take, retries included, before the operation fails (a C-STORE
    /// is then refused with Out of Resources and its sender retries).
    #[serde(default = "default_object_store_timeout")]
    pub timeout_secs: u64,
    /// The node's local copies (its data directory) are a cache of the bucket: above this many
    /// MiB, the copies of finished items are removed, least recently written first (the bucket
    /// keeps them; whoever needs one fetches it again). 0 keeps no copy once its work ended.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_object_store_timeout() -> u64 {
    20
}

/// 20 GiB: a few days of a busy site's images.
fn default_cache_mb() -> u64 {
    20 * 1024
}

impl fmt::Debug for ObjectStoreConfig {
    // the secret never reaches a log or an error message
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .field("timeout_secs", &self.timeout_secs)
            .field("cache_mb", &self.cache_mb)
            .finish()
    }
}

impl ObjectStoreConfig {
    /// The bucket and the prefix (without slashes at either end) of `url`.
    pub fn bucket_and_prefix(&self) -> Result<(&str, &str), String> {
        let rest = self.url.strip_prefix("s3://").ok_or("must start with s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules: 3 to 63 lowercase letters, digits, dots and hyphens
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !valid_bucket {
            return Err(format!("`{bucket}` is not a bucket name (3 to 63 lowercase letters, digits, `.` and `-`)"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == "." || part == "..") || prefix.contains("//") {
            return Err(format!("the prefix `{prefix}` has an empty, `.` or `..` part"));
        }
        Ok((bucket, prefix))
    }
}

/// A secret as it may be shown: that it is set, never what it is.
pub(super) fn redacted<S: serde::Serializer>(secret: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    secret.as_ref().map(|_| "***").serialize(serializer)
}

impl NodeConfig {
    pub(super) fn numbers(&self) -> Vec<Number> {
        vec![
            Number::new("node.min_free_disk_mb", self.min_free_disk_mb, 0..=1 << 30, "MiB"),
            Number::new("node.lease_secs", self.lease_secs, 2..=super::DAY, "seconds"),
        ]
    }

    pub(super) fn check(&self, report: &mut Report) {
        if let Err(m) = check_uid_root(&self.uid_root) {
            report("node.uid_root", m);
        }
    }
}

impl DatabaseConfig {
    pub(super) fn numbers(&self) -> Vec<Number> {
        vec![Number::new("database.max_connections", self.max_connections as u64, 1..=1000, "")]
    }

    pub(super) fn check(&self, config: &Config, report: &mut Report) {
        if let Some(url) = &self.url {
            if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                report("database.url", format!("`{url}` is neither sqlite://PATH nor postgres://..."));
            }
        }
        let Some(tls) = &self.tls else { return };
        if !self.url.as_deref().is_some_and(|u| u.starts_with("postgres")) {
            report("database.tls", "is for a PostgreSQL database.url".into());
        }
        if self.url.as_deref().is_some_and(|u| u.contains("sslmode=") || u.contains("sslrootcert=")) {
            report("database.tls", "and sslmode or sslrootcert in database.url: say it once, here".into());
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            report("database.tls", "cert_file and key_file go together".into());
        }
        for (key, file) in [
            ("database.tls.ca_file", Some(&tls.ca_file)),
            ("database.tls.cert_file", tls.cert_file.as_ref()),
            ("database.tls.key_file", tls.key_file.as_ref()),
        ] {
            let Some(file) = file else { continue };
            if let Err(e) = super::read_named_file(&config.resolve(file), super::TEXT_FILE_LIMIT) {
                report(key, format!("{}: {e}", config.resolve(file).display()));
            }
        }
    }
}

impl ObjectStoreConfig {
    pub(super) fn numbers(&self) -> Vec<Number> {
        vec![
            Number::new("object_store.timeout_secs", self.timeout_secs, 1..=3600, "seconds"),
            Number::new("object_store.cache_mb", self.cache_mb, 0..=1 << 30, "MiB"),
        ]
    }

    pub(super) fn check(&self, config: &Config, report: &mut Report) {
        if let Err(m) = self.bucket_and_prefix() {
            report("object_store.url", m);
        }
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                report("object_store.endpoint", "must start with https:// (or http://)".into());
            }
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            report("object_store", "access_key_id and secret_access_key go together".into());
        }
        if let Some(file) = &self.ca_file {
            if let Err(e) = read_named_file(&config.resolve(file), TEXT_FILE_LIMIT) {
                report("object_store.ca_file", format!("{}: {e}", config.resolve(file).display()));
            }
        }
    }
}
