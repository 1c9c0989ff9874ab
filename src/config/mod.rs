//! The typed configuration: one TOML file, read once at start-up, a module per section (`node`
//! with `[database]` and `[object_store]`, `dicom`, `inference` with `[priority]` and
//! `[outputs]`, `destinations`, `http`), each with its keys, their defaults and their checks.
//!
//! Unknown keys are errors, every problem names the file and the key, every number is range
//! checked, every file named is a regular file read within a bound (`files`), and relative paths
//! are resolved against the directory of the config file (or the working directory for the
//! embedded default). Defaults live in these modules and nowhere else; docs/configuration.md
//! lists them, and a test holds the two together.

mod audit;
mod destinations;
mod dicom;
mod files;
mod http;
mod inference;
mod node;
mod retention;
pub mod selection;
mod sources;

use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use audit::{AuditConfig, AuditRepository, AuditTransport};
pub use destinations::{Destination, DestinationTls, DicomwebSettings, FhirSettings, Hl7Settings, WebhookSettings};
pub use dicom::{AllowedCaller, DicomConfig, ListenerTls};
pub use files::{read_named_file, read_named_text, MODEL_FILE_LIMIT, TEXT_FILE_LIMIT};
pub use http::{HttpConfig, HttpTls, NamedToken, OidcConfig, ProxyAuth};
pub use inference::{InferenceConfig, InputChecks, OutputsConfig, PriorityConfig, ShadowConfig, SrPolicy};
pub use node::{DatabaseConfig, DatabaseTls, NodeConfig, ObjectStoreConfig};
pub use retention::RetentionConfig;
pub use selection::SelectionConfig;
pub use sources::Source;

/// The default configuration compiled into the binary, used by `serve` without `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/pneumotriage.toml");

/// Where the embedded default is shown to come from in messages.
pub const EMBEDDED_NAME: &str = "<embedded config/pneumotriage.toml>";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub dicom: DicomConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    #[serde(default)]
    pub priority: PriorityConfig,
    #[serde(default)]
    pub outputs: OutputsConfig,
    /// `[[selection.rules]]`: which images the models see, by their tags.
    #[serde(default)]
    pub selection: SelectionConfig,
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// `[[sources]]`: the PACS studies may be pulled from.
    #[serde(default)]
    pub sources: Vec<Source>,
    /// `[retention]`: when received images and the objects made of them are deleted.
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// `[audit]`: IHE ATNA audit records and the repositories they go to.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[object_store]`: received instances and the objects made of them are kept in an
    /// S3-compatible bucket, `data_dir` only caching them. Unset: they are kept under `data_dir`.
    pub object_store: Option<ObjectStoreConfig>,
    /// The directory that relative paths are resolved against; not a key of the file.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where this configuration came from, for messages; not a key of the file.
    #[serde(skip)]
    pub source: String,
}

/// A day in seconds: the longest wait any setting may ask for.
const DAY: u64 = 86_400;

/// Where a section's checks report a problem: its key, and what is wrong.
type Report<'a> = dyn FnMut(&str, String) + 'a;

/// A number of the file and the range it must be in.
struct Number {
    key: String,
    value: u64,
    range: RangeInclusive<u64>,
    unit: &'static str,
}

impl Number {
    fn new(key: impl Into<String>, value: u64, range: RangeInclusive<u64>, unit: &'static str) -> Number {
        Number { key: key.into(), value, range, unit }
    }
}

/// What a command uses of the configuration, and so which of its problems stop the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uses {
    /// The node itself and `check-config`: every key.
    Everything,
    /// An offline analysis (`infer`, `evaluate`): the models, the decision and the outputs.
    Analysis,
    /// The database commands (`studies`, `status`, `retry`, ...): where the node keeps its records.
    Records,
    /// `fetch`: the records, the sources, and the listener they send to.
    Pulling,
}

impl Uses {
    fn covers(self, key: &str) -> bool {
        let sections: &[&str] = match self {
            Uses::Everything => return true,
            Uses::Analysis => &["inference", "priority", "outputs", "selection"],
            Uses::Records => &["node", "database"],
            Uses::Pulling => &["node", "database", "dicom", "sources"],
        };
        // a problem without a key (the file cannot be read or parsed) stops every command
        key.is_empty() || sections.iter().any(|s| key.split(['.', '[']).next() == Some(s))
    }
}

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Debug)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", self.source, p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.source, p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads a configuration file and validates what `uses` covers; relative paths are relative
    /// to its directory.
    pub fn load(path: &Path, uses: Uses) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = read_named_text(path).map_err(|e| ConfigError {
            source: source.clone(),
            problems: vec![Problem { key: String::new(), message: format!("cannot read: {e}") }],
        })?;
        let base_dir = path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Config::parse(&text, &source, base_dir, uses)
    }

    /// The embedded default, with paths relative to the working directory.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Config::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME, PathBuf::from("."), Uses::Everything)
    }

    pub fn parse(text: &str, source: &str, base_dir: PathBuf, uses: Uses) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError { source: source.to_string(), problems };
        let de = toml::Deserializer::parse(text).map_err(|e| fail(vec![toml_problem(text, &e, "")]))?;
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            fail(vec![toml_problem(text, e.inner(), &key)])
        })?;
        config.base_dir = base_dir;
        config.source = source.to_string();
        let problems: Vec<Problem> = config.validate().into_iter().filter(|p| uses.covers(&p.key)).collect();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// Every number of the file with the range it must be in: a number out of range is refused
    /// here, naming its key, rather than overflowing a timer or an allocation later.
    fn numbers(&self) -> Vec<Number> {
        let mut numbers = self.node.numbers();
        numbers.extend(self.database.numbers());
        numbers.extend(self.dicom.numbers());
        numbers.extend(self.inference.numbers());
        numbers.extend(self.priority.numbers());
        numbers.extend(self.http.numbers());
        numbers.extend(self.retention.numbers());
        numbers.extend(self.audit.numbers());
        for (i, s) in self.sources.iter().enumerate() {
            numbers.extend(s.numbers(i));
        }
        for (i, d) in self.destinations.iter().enumerate() {
            numbers.extend(d.numbers(i));
        }
        numbers.extend(self.object_store.iter().flat_map(ObjectStoreConfig::numbers));
        numbers
    }

    /// Every problem of the file: the numbers' ranges, then each section's own checks.
    fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut report = |key: &str, message: String| problems.push(Problem { key: key.into(), message });
        for n in self.numbers() {
            if !n.range.contains(&n.value) {
                let unit = if n.unit.is_empty() { String::new() } else { format!(" {}", n.unit) };
                report(&n.key, format!("{} is out of range ({} to {}{unit})", n.value, n.range.start(), n.range.end()));
            }
        }
        self.dicom.check(self, &mut report);
        self.node.check(&mut report);
        self.database.check(self, &mut report);
        self.http.check(self, &mut report);
        self.inference.check(self, &mut report);
        self.priority.check(&mut report);
        self.outputs.check(&mut report);
        self.selection.check(&mut report);
        self.retention.check(self.node.min_free_disk_mb, &mut report);
        self.audit.check(self, &mut report);
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            if !names.insert(d.name.as_str()) {
                report(&format!("destinations[{i}].name"), format!("`{}` is used twice", d.name));
            }
            d.check(i, self, &mut report);
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            if !names.insert(s.name.as_str()) {
                report(&format!("sources[{i}].name"), format!("`{}` is used twice", s.name));
            }
            s.check(i, self, &mut report);
        }
        if let Some(store) = &self.object_store {
            store.check(self, &mut report);
        }
        problems
    }

    /// Resolves a configured path against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.node.data_dir)
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir().join("spool")
    }

    /// `node.lease_secs`.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.node.lease_secs)
    }

    /// Whether every node reads the same spool and outputs (a shared directory or a bucket),
    /// so that any of them may analyse any image and send any object.
    pub fn spool_is_shared(&self) -> bool {
        self.node.shared_spool || self.object_store.is_some()
    }

    /// Where the objects the node makes (SEG, SR, SC) are kept until delivered (with an object
    /// store: cached).
    pub fn outputs_dir(&self) -> PathBuf {
        self.data_dir().join("outputs")
    }

    /// The database URL with a relative SQLite path resolved; SQLite under the data directory by default.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            None => format!("sqlite://{}", self.data_dir().join("pneumotriage.db").display()),
            Some(url) => match url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
                Some(rest) => {
                    let (path, query) = rest.split_once('?').map_or((rest, None), |(p, q)| (p, Some(q)));
                    let path = self.resolve(Path::new(path));
                    match query {
                        Some(q) => format!("sqlite://{}?{q}", path.display()),
                        None => format!("sqlite://{}", path.display()),
                    }
                }
                None => match &self.database.tls {
                    None => url.clone(),
                    Some(tls) => {
                        // libpq's parameters, which sqlx reads: verify-full checks the chain and the host
                        let path = |p: &PathBuf| {
                            form_urlencoded::byte_serialize(self.resolve(p).as_os_str().as_encoded_bytes())
                                .collect::<String>()
                        };
                        let mut url = format!(
                            "{url}{}sslmode=verify-full&sslrootcert={}",
                            if url.contains('?') { "&" } else { "?" },
                            path(&tls.ca_file)
                        );
                        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                            url.push_str(&format!("&sslcert={}&sslkey={}", path(cert), path(key)));
                        }
                        url
                    }
                },
            },
        }
    }

    pub fn node_name(&self) -> String {
        self.node.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "pneumotriage".into())
        })
    }

    /// A short human summary for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let peers = if self.dicom.accept_any {
            "any calling AE".to_string()
        } else {
            let names: Vec<String> = self
                .dicom
                .peers
                .iter()
                .map(|p| match p.host {
                    Some(h) => format!("{}@{h}", p.ae_title),
                    None => p.ae_title.clone(),
                })
                .collect();
            names.join(", ")
        };
        format!(
            "AE {} on {} accepting {}; data in {}; database {}; {} destination(s); HTTP {}",
            self.dicom.ae_title,
            self.dicom.bind,
            peers,
            self.data_dir().display(),
            redact_url(&self.database_url()),
            self.destinations.len(),
            if self.http.enabled { format!("on {}", self.http.bind) } else { "off".into() }
        )
    }
}

/// Hides a password in a database URL before it is printed.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _password)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

fn toml_problem(text: &str, e: &toml::de::Error, key: &str) -> Problem {
    let span = e.span().filter(|s| s.start <= s.end && s.end <= text.len());
    let line = span.clone().map(|s| text[..s.start].matches('\n').count() + 1);
    // a syntax error has no key path: name the text it points at instead
    let key = match (key, span) {
        ("", Some(s)) if s.end > s.start && !text[s.clone()].contains('\n') => text[s].trim().to_string(),
        _ => key.to_string(),
    };
    let location = line.map(|n| format!(" (line {n})")).unwrap_or_default();
    Problem { key, message: format!("{}{location}", e.message().trim_end()) }
}

/// AE titles: 1 to 16 characters of the default repertoire, no backslash or control characters, not all spaces.
/// A name people and reports use: 1 to 64 letters, digits, `.`, `_`, `-` or `@`.
pub(crate) fn check_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))) {
        Some(c) => Err(format!("`{}` has {:?}: use letters, digits, `.`, `_`, `-` or `@`", name.escape_debug(), c)),
        None => Ok(()),
    }
}

pub fn check_ae_title(ae: &str) -> Result<(), String> {
    if ae.trim().is_empty() {
        return Err("an AE title must not be empty".into());
    }
    if ae.len() > 16 {
        return Err(format!("`{ae}` is longer than 16 characters"));
    }
    if ae.chars().any(|c| !c.is_ascii() || c.is_ascii_control() || c == '\\') {
        return Err(format!("`{ae}` contains a character not allowed in an AE title"));
    }
    Ok(())
}

pub(crate) fn check_uid_root(root: &str) -> Result<(), String> {
    let valid = !root.is_empty()
        && root.len() <= 24
        && root
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0')));
    if valid {
        Ok(())
    } else {
        Err(format!("`{root}` is not a UID root (digits and dots, at most 24 characters, no leading zeros)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Priority;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", PathBuf::from("/etc/pt"), Uses::Everything)
    }

    #[test]
    fn an_offline_command_checks_only_what_it_uses() {
        let text = "[inference]\nthreads = 2\n[dicom]\nae_title = \"THIS AE TITLE IS FAR TOO LONG\"\n";
        let everything = parse(text).unwrap_err();
        let keys: Vec<&str> = everything.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"dicom.peers") && keys.contains(&"dicom.ae_title"), "{keys:?}");
        let analysis = Config::parse(text, "test.toml", PathBuf::from("."), Uses::Analysis).expect("no network keys");
        assert_eq!(analysis.inference.threads, 2);
        let bad = "[inference]\nthreads = 0\n";
        let err = Config::parse(bad, "test.toml", PathBuf::from("."), Uses::Analysis).unwrap_err();
        assert_eq!(err.problems.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(), ["inference.threads"]);
        let records = Config::parse(bad, "test.toml", PathBuf::from("."), Uses::Records).expect("no inference keys");
        assert_eq!(records.inference.threads, 0);
    }

    #[test]
    fn named_tokens_and_shadow_versions_are_checked() {
        let text = "[dicom]\naccept_any = true\n[http]\ntoken = \"shared-token-0123456789\"\n\
                    [[http.tokens]]\nname = \"dr.lee\"\ntoken = \"lee-token-0123456789\"\n\
                    [[http.tokens]]\nname = \"dr lee\"\ntoken = \"short\"\n\
                    [[http.tokens]]\nname = \"dr.lee\"\ntoken = \"shared-token-0123456789\"\n\
                    [[inference.shadow]]\nname = \"lower\"\nmodels = \"no/such/manifest.toml\"\n\
                    classifier_threshold = 1.5\n\
                    [[inference.shadow]]\nname = \"lower\"\nmodels = \"Cargo.toml\"\n";
        let e =
            Config::parse(text, "test.toml", PathBuf::from(env!("CARGO_MANIFEST_DIR")), Uses::Everything).unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.tokens[1].name",
                "http.tokens[1].token",
                "http.tokens[2].name",
                "http.tokens[2].token",
                "inference.shadow[0].models",
                "inference.shadow[0].classifier_threshold",
                "inference.shadow[1].name"
            ],
            "{e}"
        );
        assert!(e.to_string().contains("each person needs their own"), "{e}");
    }

    #[test]
    fn an_object_store_is_checked_and_its_secret_never_shown() {
        let bad = "[dicom]\naccept_any = true\n[object_store]\nurl = \"s3://Bad_Bucket/../x\"\n\
                   endpoint = \"rgw:7480\"\naccess_key_id = \"id\"\ntimeout_secs = 0\nca_file = \"no/such.pem\"\n";
        let e = parse(bad).unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "object_store.timeout_secs",
                "object_store.url",
                "object_store.endpoint",
                "object_store",
                "object_store.ca_file"
            ],
            "{e}"
        );
        let prefix = "[dicom]\naccept_any = true\n[object_store]\nurl = \"s3://pneumotriage/a/../b\"\n";
        assert!(parse(prefix).unwrap_err().to_string().contains("object_store.url: the prefix `a/../b`"));

        let good = "[dicom]\naccept_any = true\n[object_store]\nurl = \"s3://pneumotriage/site-a/\"\n\
                    access_key_id = \"id\"\nsecret_access_key = \"very-secret\"\n";
        let c = parse(good).unwrap();
        let store = c.object_store.as_ref().unwrap();
        assert_eq!(store.bucket_and_prefix(), Ok(("pneumotriage", "site-a")));
        assert!(c.spool_is_shared(), "every node reads the bucket");
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    /// Found by an adversarial pass: retry seconds at u64::MAX passed and later panicked a
    /// delivery worker (a Duration overflow); an aging rule of u64::MAX minutes overflowed too.
    #[test]
    fn every_number_is_range_checked_with_its_key() {
        let e = parse(
            "[dicom]\naccept_any = true\nidle_timeout_secs = 0\n[http]\nheader_timeout_secs = 100000\n\
             max_connections = 10\nmax_connections_per_client = 20\n\
             [priority]\nroutine_aging_minutes = 18446744073709551615\n\
             [[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"h\"\nport = 104\n\
             retry_max_secs = 18446744073709551615\nsettle_secs = 999999999\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "dicom.idle_timeout_secs",
            "http.header_timeout_secs",
            "http.max_connections_per_client",
            "priority.routine_aging_minutes",
            "destinations[0].retry_max_secs",
            "destinations[0].settle_secs",
        ] {
            assert!(keys.contains(&key), "{key} not in {keys:?}");
        }
        assert!(e.to_string().contains("18446744073709551615 is out of range (1 to 86400 seconds)"), "{e}");
        // every default is within its range
        let c = Config::embedded_default().unwrap();
        for n in c.numbers() {
            assert!(n.range.contains(&n.value), "{} = {}", n.key, n.value);
        }
    }

    #[test]
    fn a_named_file_must_be_a_regular_file_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let special = read_named_file(Path::new("/dev/zero"), TEXT_FILE_LIMIT).unwrap_err().to_string();
        assert!(special.contains("special file"), "{special}");
        let directory = read_named_file(dir.path(), TEXT_FILE_LIMIT).unwrap_err().to_string();
        assert!(directory.contains("a directory"), "{directory}");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        assert!(read_named_file(&big, 1024).unwrap_err().to_string().contains("larger than 1024 bytes"));
        assert_eq!(read_named_file(&big, 4096).unwrap().len(), 2048);
    }

    /// One of each table and array of tables, with only the keys they cannot do without: what
    /// is serialised of it is every key with its default.
    const EVERY_TABLE: &str = r#"
        [dicom]
        [[dicom.peers]]
        ae_title = "X"
        [dicom.tls]
        bind = "127.0.0.1:2762"
        cert_file = "c"
        key_file = "k"
        [[inference.shadow]]
        name = "s"
        models = "m"
        [[destinations]]
        name = "d"
        [destinations.tls]
        ca_file = "ca"
        [destinations.hl7]
        [destinations.fhir]
        [destinations.webhook]
        secret = "s"
        [destinations.dicomweb]
        [[sources]]
        name = "pacs"
        ae_title = "X"
        host = "h"
        port = 104
        [sources.tls]
        ca_file = "ca"
        [sources.dicomweb]
        [[http.tokens]]
        name = "n"
        token = "t"
        [http.tls]
        cert_file = "c"
        key_file = "k"
        [http.oidc]
        issuer = "https://idp"
        audience = "pneumotriage"
        [http.proxy_auth]
        trusted_proxies = ["10.0.0.1"]
        user_header = "X-Forwarded-User"
        [database.tls]
        ca_file = "ca"
        [object_store]
        url = "s3://b"
        [[selection.rules]]
        name = "r"
        action = "select"
        [[audit.repositories]]
        name = "a"
        transport = "tls"
        [audit.repositories.tls]
        ca_file = "ca"
    "#;

    /// A value as docs/configuration.md writes a default.
    fn render(value: &serde_json::Value) -> String {
        use serde_json::Value;
        match value {
            Value::Null => "none".into(),
            Value::String(s) => format!("{s:?}"),
            Value::Number(n) if n.is_f64() => format!("{}", n.as_f64().unwrap_or_default() as f32),
            Value::Array(items) => format!("[{}]", items.iter().map(render).collect::<Vec<_>>().join(", ")),
            other => other.to_string(),
        }
    }

    /// (table as the document heads it, key) and the default, from a serialised configuration.
    fn keys(
        path: &str,
        array: bool,
        value: &serde_json::Value,
        out: &mut std::collections::BTreeMap<(String, String), String>,
    ) {
        use serde_json::Value;
        let table = if array { format!("[[{path}]]") } else { format!("[{path}]") };
        for (key, v) in value.as_object().expect("a table") {
            let inner = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            match v {
                Value::Object(_) => keys(&inner, false, v, out),
                Value::Array(items) if items.first().is_some_and(Value::is_object) => {
                    keys(&inner, true, &items[0], out)
                }
                _ => {
                    out.insert((table.clone(), key.clone()), render(v));
                }
            }
        }
    }

    /// docs/configuration.md lists every key of every table with its default, and no other key:
    /// the reference cannot drift from the code.
    #[test]
    fn the_configuration_reference_lists_every_key_with_its_default() {
        let config: Config = toml::from_str(EVERY_TABLE).unwrap();
        let mut actual = std::collections::BTreeMap::new();
        keys("", false, &serde_json::to_value(&config).unwrap(), &mut actual);
        assert!(actual.len() > 100, "{actual:?}");
        let doc = include_str!("../../docs/configuration.md");
        let mut documented = std::collections::BTreeMap::new();
        let mut table = String::new();
        for line in doc.lines() {
            if let Some(heading) = line.strip_prefix("## ") {
                table = heading.trim_matches('`').to_string();
            } else if let Some(row) = line.strip_prefix("| `") {
                let cells: Vec<&str> = row.split(" | ").collect();
                let key = cells[0].trim_end_matches('`').to_string();
                documented.insert((table.clone(), key), cells[1].replace('`', ""));
            }
        }
        let mut wrong = Vec::new();
        for ((table, key), default) in &actual {
            match documented.get(&(table.clone(), key.clone())) {
                None => wrong.push(format!("{table} {key} (default {default}) is not documented")),
                Some(doc) if doc.starts_with("required") => {}
                Some(doc) if doc == default || doc.starts_with(&format!("{default} (")) => {}
                Some(doc) => wrong.push(format!("{table} {key}: the document says {doc}, the default is {default}")),
            }
        }
        for (table, key) in documented.keys() {
            if !actual.contains_key(&(table.clone(), key.clone())) {
                wrong.push(format!("{table} {key} is documented but is no key"));
            }
        }
        assert!(wrong.is_empty(), "docs/configuration.md:\n{}", wrong.join("\n"));
    }

    /// docs/configuration.md shows the default selection rules as the node has them.
    #[test]
    fn the_reference_shows_the_default_selection_rules() {
        let doc = include_str!("../../docs/configuration.md");
        assert!(
            doc.contains(selection::DEFAULT_RULES.trim()),
            "docs/configuration.md must show selection::DEFAULT_RULES"
        );
    }

    /// The embedded default (config/pneumotriage.toml) sets exactly the code's defaults, and
    /// allows local callers: what the README's quick start runs is what the reference says.
    #[test]
    fn the_embedded_default_sets_the_documented_defaults() {
        let embedded = serde_json::to_value(Config::embedded_default().unwrap()).unwrap();
        let defaults = serde_json::to_value(toml::from_str::<Config>("").unwrap()).unwrap();
        let mut differ = std::collections::BTreeMap::new();
        let (mut a, mut b) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
        keys("", false, &embedded, &mut a);
        keys("", false, &defaults, &mut b);
        for (key, value) in &a {
            if b.get(key) != Some(value) {
                differ.insert(key.clone(), value.clone());
            }
        }
        let peers: Vec<_> = differ.keys().map(|(table, key)| format!("{table} {key}")).collect();
        assert_eq!(peers, ["[[dicom.peers]] ae_title", "[[dicom.peers]] host"], "{differ:?}");
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default().expect("the embedded default must be valid");
        assert!(c.database_url().starts_with("sqlite://"));
        assert!(!c.dicom.peers.is_empty());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[dicom]\naccept_any = true\nmax_pdux = 3\n").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("test.toml"), "{text}");
        assert!(text.contains("max_pdux"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn duplicate_key_is_named() {
        let e = parse("[dicom]\naccept_any = true\naccept_any = false\n").unwrap_err();
        assert_eq!(e.problems[0].key, "accept_any", "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = parse("[dicom]\naccept_any = true\nmax_pdu = \"big\"\n").unwrap_err();
        assert_eq!(e.problems[0].key, "dicom.max_pdu", "{e}");
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let e = parse("[dicom]\nae_title = \"THIS_TITLE_IS_TOO_LONG\"\nmax_pdu = 10\n").unwrap_err();
        let keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"dicom.ae_title"), "{keys:?}");
        assert!(keys.contains(&"dicom.max_pdu"), "{keys:?}");
        assert!(keys.contains(&"dicom.peers"), "{keys:?}");
    }

    #[test]
    fn an_audit_repository_is_checked_against_its_transport() {
        let text = "[dicom]\naccept_any = true\n[audit]\nmax_backlog = 5\nsource_id = \" \"\n\
            [[audit.repositories]]\nname = \"siem\"\ntransport = \"tls\"\nhost = \"audit\"\nport = 6514\n\
            [[audit.repositories]]\nname = \"siem\"\ntransport = \"udp\"\npath = \"x\"\n\
            [[audit.repositories]]\nname = \"local\"\ntransport = \"file\"\nport = 1\n\
            [audit.repositories.tls]\nca_file = \"/no/such/ca.pem\"\n";
        let e = parse(text).unwrap_err();
        let mut keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "audit.max_backlog",
                "audit.repositories[0].tls.ca_file",
                "audit.repositories[1].host",
                "audit.repositories[1].name",
                "audit.repositories[1].path",
                "audit.repositories[1].port",
                "audit.repositories[2].host",
                "audit.repositories[2].path",
                "audit.repositories[2].tls",
                "audit.source_id",
            ],
            "{e}"
        );
        let ok = "[dicom]\naccept_any = true\n\
            [[audit.repositories]]\nname = \"local\"\ntransport = \"file\"\npath = \"audit.log\"\n";
        assert!(parse(ok).unwrap().audit.enabled());
        assert!(!parse("[dicom]\naccept_any = true\n").unwrap().audit.enabled());
    }

    #[test]
    fn a_destination_is_checked_against_its_kind() {
        let text = "[dicom]\naccept_any = true\n\
            [[destinations]]\nname = \"ris\"\nkind = \"hl7\"\nport = 2575\nae_title = \"RIS\"\n\
            [destinations.hl7]\nsending_facility = \"A|B\"\n\
            [[destinations]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"https://x.example/hook\"\n\
            [[destinations]]\nname = \"ehr\"\nkind = \"fhir\"\nurl = \"ftp://x\"\npriorities = []\n\
            [destinations.fhir]\nurgent_priority = \"now\"\n\
            [destinations.webhook]\nsecret = \"0123456789abcdef\"\n";
        let e = parse(text).unwrap_err();
        let mut keys: Vec<_> = e.problems.iter().map(|p| p.key.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "destinations[0].ae_title",
                "destinations[0].hl7.sending_facility",
                "destinations[0].host",
                "destinations[1].tls",
                "destinations[1].webhook.secret",
                "destinations[2].fhir.urgent_priority",
                "destinations[2].priorities",
                "destinations[2].url",
                "destinations[2].webhook",
            ],
            "{e}"
        );
        let ok = "[dicom]\naccept_any = true\n\
            [[destinations]]\nname = \"ris\"\nkind = \"hl7\"\nhost = \"ris\"\nport = 2575\n\
            [[destinations]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n\
            [destinations.webhook]\nsecret = \"0123456789abcdef\"\n";
        let c = parse(ok).unwrap();
        assert!(c.destinations.iter().all(Destination::takes_messages));
        assert_eq!(c.destinations[0].priorities, Priority::ALL);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = parse("[dicom]\naccept_any = true\n[database]\nurl = \"sqlite://db/x.db\"\n").unwrap();
        assert_eq!(c.database_url(), "sqlite:///etc/pt/db/x.db");
        assert_eq!(c.spool_dir(), PathBuf::from("/etc/pt/var/spool"));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    }
}
