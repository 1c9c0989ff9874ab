//! The typed configuration: one TOML file, read once at start-up.
//!
//! Unknown keys are errors, every problem names the file and the key, and relative paths are
//! resolved against the directory of the config file (or the working directory for the
//! embedded default). Defaults live here and nowhere else.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{DestinationKind, Device, ObjectKind, Policy, Priority};

/// The default configuration compiled into the binary, used by `serve` without `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/pneumotriage.toml");

/// Where the embedded default is shown to come from in messages.
pub const EMBEDDED_NAME: &str = "<embedded config/pneumotriage.toml>";

#[derive(Debug, Clone, Deserialize)]
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
    #[serde(default)]
    pub destinations: Vec<Destination>,
    #[serde(default)]
    pub http: HttpConfig,
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

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
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
    pub peers: Vec<Peer>,
    /// DICOM TLS (PS3.15 BCP 195) on a port of its own.
    pub tls: Option<ListenerTls>,
}

/// `[dicom.tls]`: a TLS listener beside (or instead of) the plain one.
#[derive(Debug, Clone, Deserialize)]
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

/// One entry of the calling-AE allow-list.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub ae_title: String,
    /// When set, the association must also come from this address.
    pub host: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://...`; SQLite under `node.data_dir` when unset.
    pub url: Option<String>,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig { url: None, max_connections: 8 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// false: receive and keep only; jobs wait in the queue until analysis is turned back on.
    pub enabled: bool,
    pub models: PathBuf,
    pub device: Device,
    pub policy: Policy,
    pub require_gpu: bool,
    /// The ONNX Runtime library (libonnxruntime.so.*); looked for in the usual places when unset.
    pub onnxruntime: Option<PathBuf>,
    /// Threads per ONNX Runtime session.
    pub threads: usize,
    /// Inference threads, each with its own sessions: images analysed at the same time.
    pub workers: usize,
    /// Most images a worker analyses together: one model run per batch. A worker takes the due
    /// jobs there are, up to this many.
    pub batch_size: usize,
    /// How long a worker with fewer than `batch_size` due jobs waits for more before it starts
    /// (0: never; an idle node is then exactly as fast as with batches of one).
    pub batch_wait_ms: u64,
    /// Also run the models on the horizontally flipped image and average (test-time augmentation).
    pub tta_hflip: bool,
    /// The pixel budget of one image: Rows x Columns x frames x samples above this are not
    /// decoded (the job fails with the reason), and neither is a codestream whose own header
    /// disagrees with Rows and Columns.
    pub max_pixels: u64,
    /// A job that was being analysed when the node died this many times is quarantined (failed,
    /// and never taken again), so that an image that kills the node cannot do it at every restart.
    pub quarantine_after: u32,
    pub classifier_threshold: Option<f32>,
    pub mask_threshold: Option<f32>,
    pub min_mask_area_px: Option<u32>,
    /// What an image must look like before a model sees it (`[inference.checks]`).
    pub checks: crate::inference::checks::InputChecks,
    /// Other model versions run on every image production analysed, their results recorded
    /// beside production's and never delivered (`[[inference.shadow]]`).
    pub shadow: Vec<ShadowConfig>,
}

/// A shadow version: another manifest, with the same settings as production but for its own
/// thresholds, run after production on the same images (`pneumotriage shadow-report`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// How its results are labelled: letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// Its model manifest.
    pub models: PathBuf,
    pub classifier_threshold: Option<f32>,
    pub mask_threshold: Option<f32>,
    pub min_mask_area_px: Option<u32>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            enabled: true,
            models: PathBuf::from("models/manifest.toml"),
            device: Device::Cpu,
            policy: Policy::Cascade,
            require_gpu: false,
            onnxruntime: None,
            threads: 1,
            workers: 1,
            batch_size: 8,
            batch_wait_ms: 0,
            tta_hflip: false,
            max_pixels: 50_000_000,
            quarantine_after: 2,
            classifier_threshold: None,
            mask_threshold: None,
            min_mask_area_px: None,
            checks: Default::default(),
            shadow: Vec::new(),
        }
    }
}

/// How an analysed image's priority on the worklist is set (see `inference::decision::priority`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorityConfig {
    /// A positive with a mask and at least this probability is `urgent`; other positives are `review`.
    pub urgent_probability: f32,
    /// A positive whose mask covers at least this many mm² is `urgent` whatever its probability.
    pub urgent_area_mm2: Option<f64>,
    /// A negative with at least this probability is `review` (a near miss); unset: negatives are `routine`.
    pub review_probability: Option<f32>,
    /// On the worklist, a routine study that has waited this long is listed with the review
    /// studies (AI triage must not stretch the longest waits); 0 turns it off.
    pub routine_aging_minutes: u64,
    /// Likewise, a review study that has waited this long is listed with the urgent ones; 0: off.
    pub review_aging_minutes: u64,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        PriorityConfig {
            urgent_probability: 0.8,
            urgent_area_mm2: None,
            review_probability: None,
            routine_aging_minutes: 120,
            review_aging_minutes: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrPolicy {
    All,
    Positive,
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputsConfig {
    pub seg: bool,
    /// Series Number and Series Description of the SEG series.
    pub seg_series_number: i32,
    pub seg_series_description: String,
    pub sr: SrPolicy,
    /// Series Number and Series Description of the SR series.
    pub sr_series_number: i32,
    pub sr_series_description: String,
    /// A secondary capture with the outline and a banner, for each positive with a mask.
    pub overlay: bool,
    pub overlay_series_number: i32,
    pub overlay_series_description: String,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        OutputsConfig {
            seg: true,
            seg_series_number: 9901,
            seg_series_description: "AI pneumothorax segmentation".into(),
            sr: SrPolicy::All,
            sr_series_number: 9902,
            sr_series_description: "AI pneumothorax report".into(),
            overlay: false,
            overlay_series_number: 9903,
            overlay_series_description: "AI pneumothorax overlay, not for diagnosis".into(),
        }
    }
}

/// A DICOM node that receives our results.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub name: String,
    /// What it receives: DICOM objects (`dicom`, the default) or a message per study and
    /// priority (`hl7`, `fhir`, `webhook`).
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
    /// Where to POST (`fhir`: the server's base URL; `webhook`: the endpoint). https:// needs
    /// `tls.ca_file`.
    #[serde(default)]
    pub url: Option<String>,
    /// Which objects go there; all that are made by default (`dicom` only).
    #[serde(default = "all_objects")]
    pub objects: Vec<ObjectKind>,
    /// Which study priorities send a message (messaging kinds); all by default.
    #[serde(default = "all_priorities")]
    pub priorities: Vec<Priority>,
    /// A message below urgent waits this long after the study's last analysed image, so that
    /// the images of one study (PA and lateral) give one message; urgent goes at once.
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
}

/// TLS towards a destination. The server's certificate is always verified, against `ca_file`.
#[derive(Debug, Clone, Deserialize)]
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
        if !dicom && self.objects != all_objects() {
            problems.push(("objects", format!("is for kind = \"dicom\"; \"{kind}\" sends a message per study")));
        }
        if self.priorities.is_empty() {
            problems.push(("priorities", "is empty: no message would ever be sent".into()));
        }
        for (key, present, wanted) in [
            ("hl7", self.hl7.is_some(), DestinationKind::Hl7),
            ("fhir", self.fhir.is_some(), DestinationKind::Fhir),
            ("webhook", self.webhook.is_some(), DestinationKind::Webhook),
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
        self.kind != DestinationKind::Dicom
    }
}

/// MSH identities of an HL7 v2 destination.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
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
        }
    }
}

/// `[object_store]`: the bucket (S3, MinIO, Ceph RGW) that keeps the spool and the outputs.
#[derive(Clone, Deserialize)]
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
    pub secret_access_key: Option<String>,
    /// The authority (PEM) that signed the endpoint's certificate, if not a system one.
    pub ca_file: Option<PathBuf>,
    /// How long one request may take, retries included, before the operation fails (a C-STORE
    /// is then refused with Out of Resources and its sender retries).
    #[serde(default = "default_object_store_timeout")]
    pub timeout_secs: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_object_store_timeout() -> u64 {
    20
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

/// A person's bearer token (`[[http.tokens]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    /// Who uses it, as verdicts record it (e.g. `dr.lee`).
    pub name: String,
    pub token: String,
}

/// The most bytes read of a text file the configuration names (itself, a manifest, a PEM file).
pub const TEXT_FILE_LIMIT: u64 = 1 << 20;
/// The most bytes read of a model file (ONNX's protobuf cannot exceed 2 GiB).
pub const MODEL_FILE_LIMIT: u64 = 4 << 30;

/// Reads a file the configuration names: it must be a regular file (not a directory, a FIFO
/// that would block or a device like `/dev/zero` that never ends) of at most `limit` bytes, and
/// no more than that is ever read, whatever the file does meanwhile.
pub fn read_named_file(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a directory" } else { "a special file (a device, a FIFO or a socket)" };
        return Err(Error::new(ErrorKind::InvalidInput, format!("is {kind}, not a regular file")));
    }
    let too_large = || Error::new(ErrorKind::InvalidData, format!("is larger than {limit} bytes"));
    if meta.len() > limit {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(bytes)
}

/// [`read_named_file`] for text (UTF-8) of at most [`TEXT_FILE_LIMIT`] bytes.
pub fn read_named_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_named_file(path, TEXT_FILE_LIMIT)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "is not UTF-8 text"))
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
}

impl Uses {
    fn covers(self, key: &str) -> bool {
        let sections: &[&str] = match self {
            Uses::Everything => return true,
            Uses::Analysis => &["inference", "priority", "outputs"],
            Uses::Records => &["node", "database"],
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
    fn numbers(&self) -> Vec<(String, u64, RangeInclusive<u64>, &'static str)> {
        const DAY: u64 = 86_400;
        let (n, d, i, h) = (&self.node, &self.dicom, &self.inference, &self.http);
        let mut numbers = vec![
            ("node.min_free_disk_mb".to_string(), n.min_free_disk_mb, 0..=1 << 30, "MiB"),
            ("node.lease_secs".into(), n.lease_secs, 2..=DAY, "seconds"),
            ("dicom.max_associations".into(), d.max_associations as u64, 1..=4096, ""),
            ("dicom.max_associations_per_host".into(), d.max_associations_per_host as u64, 1..=4096, ""),
            ("dicom.max_dataset_mb".into(), d.max_dataset_mb, 1..=4096, "MiB"),
            ("dicom.max_pdu".into(), d.max_pdu as u64, 4096..=16 << 20, "bytes"),
            ("dicom.idle_timeout_secs".into(), d.idle_timeout_secs, 1..=DAY, "seconds"),
            ("dicom.artim_timeout_secs".into(), d.artim_timeout_secs, 1..=3600, "seconds"),
            ("dicom.shutdown_grace_secs".into(), d.shutdown_grace_secs, 0..=3600, "seconds"),
            ("database.max_connections".into(), self.database.max_connections as u64, 1..=1000, ""),
            ("inference.threads".into(), i.threads as u64, 1..=1024, ""),
            ("inference.workers".into(), i.workers as u64, 1..=64, ""),
            ("inference.batch_size".into(), i.batch_size as u64, 1..=256, ""),
            ("inference.batch_wait_ms".into(), i.batch_wait_ms, 0..=10_000, "ms"),
            ("inference.max_pixels".into(), i.max_pixels, 64 * 64..=1 << 34, "pixels"),
            ("inference.quarantine_after".into(), i.quarantine_after as u64, 1..=100, ""),
            ("inference.checks.min_age_years".into(), i.checks.min_age_years as u64, 0..=150, "years"),
            ("priority.routine_aging_minutes".into(), self.priority.routine_aging_minutes, 0..=525_600, "minutes"),
            ("priority.review_aging_minutes".into(), self.priority.review_aging_minutes, 0..=525_600, "minutes"),
            ("http.max_connections".into(), h.max_connections as u64, 1..=65_536, ""),
            ("http.max_connections_per_client".into(), h.max_connections_per_client as u64, 1..=65_536, ""),
            ("http.header_timeout_secs".into(), h.header_timeout_secs, 1..=600, "seconds"),
            ("http.request_timeout_secs".into(), h.request_timeout_secs, 1..=3600, "seconds"),
        ];
        for (k, dest) in self.destinations.iter().enumerate() {
            let key = |field: &str| format!("destinations[{k}].{field}");
            numbers.extend([
                (key("settle_secs"), dest.settle_secs, 0..=DAY, "seconds"),
                (
                    key("retry_initial_secs"),
                    dest.retry_initial_secs,
                    1..=dest.retry_max_secs.max(1),
                    "seconds (at most retry_max_secs)",
                ),
                (key("retry_max_secs"), dest.retry_max_secs, 1..=DAY, "seconds"),
                (key("timeout_secs"), dest.timeout_secs, 1..=3600, "seconds"),
                (key("max_associations"), dest.max_associations as u64, 1..=64, ""),
            ]);
        }
        if let Some(store) = &self.object_store {
            numbers.push(("object_store.timeout_secs".into(), store.timeout_secs, 1..=3600, "seconds"));
        }
        numbers
    }

    /// Semantic checks that types alone cannot express.
    fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| problems.push(Problem { key: key.into(), message });
        for (key, value, range, unit) in self.numbers() {
            if !range.contains(&value) {
                let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
                bad(&key, format!("{value} is out of range ({} to {}{unit})", range.start(), range.end()));
            }
        }
        if self.http.max_connections_per_client > self.http.max_connections {
            bad("http.max_connections_per_client", "is more than http.max_connections".into());
        }

        if let Err(m) = check_ae_title(&self.dicom.ae_title) {
            bad("dicom.ae_title", m);
        }
        for (i, peer) in self.dicom.peers.iter().enumerate() {
            if let Err(m) = check_ae_title(&peer.ae_title) {
                bad(&format!("dicom.peers[{i}].ae_title"), m);
            }
        }
        if !self.dicom.accept_any && self.dicom.peers.is_empty() {
            bad(
                "dicom.peers",
                "no calling AE is allowed: add [[dicom.peers]] entries or set dicom.accept_any = true".into(),
            );
        }
        if let Some(tls) = &self.dicom.tls {
            for (key, file) in [
                ("cert_file", Some(&tls.cert_file)),
                ("key_file", Some(&tls.key_file)),
                ("client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                if let Some(file) = file {
                    if let Err(e) = read_named_file(&self.resolve(file), TEXT_FILE_LIMIT) {
                        bad(&format!("dicom.tls.{key}"), format!("{}: {e}", self.resolve(file).display()));
                    }
                }
            }
            if !tls.only && tls.bind == self.dicom.bind {
                bad("dicom.tls.bind", "is the plain listener's address (dicom.bind)".into());
            }
        }
        if let Err(m) = check_uid_root(&self.node.uid_root) {
            bad("node.uid_root", m);
        }
        if let Some(url) = &self.database.url {
            if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bad("database.url", format!("`{url}` is neither sqlite://PATH nor postgres://..."));
            }
        }
        if self.inference.require_gpu && self.inference.device == Device::Cpu {
            bad("inference.require_gpu", "is true but inference.device is \"cpu\"".into());
        }
        let weak = |token: &str| token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control());
        if self.http.token.as_deref().is_some_and(weak) {
            bad("http.token", "must be at least 16 characters, without spaces".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, named) in self.http.tokens.iter().enumerate() {
            if let Err(m) = check_label(&named.name) {
                bad(&format!("http.tokens[{i}].name"), m);
            } else if !seen.insert(named.name.as_str()) {
                bad(&format!("http.tokens[{i}].name"), format!("`{}` is used by another token", named.name));
            }
            if weak(&named.token) {
                bad(&format!("http.tokens[{i}].token"), "must be at least 16 characters, without spaces".into());
            } else if self.http.token.as_deref() == Some(named.token.as_str())
                || self.http.tokens[..i].iter().any(|t| t.token == named.token)
            {
                bad(&format!("http.tokens[{i}].token"), "is another token's too: each person needs their own".into());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, shadow) in self.inference.shadow.iter().enumerate() {
            let key = |field: &str| format!("inference.shadow[{i}].{field}");
            if let Err(m) = check_label(&shadow.name) {
                bad(&key("name"), m);
            } else if !seen.insert(shadow.name.as_str()) {
                bad(&key("name"), format!("`{}` is the name of another shadow", shadow.name));
            }
            if let Err(e) = read_named_file(&self.resolve(&shadow.models), TEXT_FILE_LIMIT) {
                bad(&key("models"), format!("{}: {e}", self.resolve(&shadow.models).display()));
            }
            for (field, value) in
                [("classifier_threshold", shadow.classifier_threshold), ("mask_threshold", shadow.mask_threshold)]
            {
                if let Some(v) = value.filter(|v| !(0.0..=1.0).contains(v)) {
                    bad(&key(field), format!("{v} is not a probability between 0 and 1"));
                }
            }
        }
        if self.priority.urgent_area_mm2.is_some_and(|a| a.is_nan() || a < 0.0) {
            bad("priority.urgent_area_mm2", "must not be negative".into());
        }
        for (key, value) in [
            ("inference.classifier_threshold", self.inference.classifier_threshold),
            ("inference.mask_threshold", self.inference.mask_threshold),
            ("priority.urgent_probability", Some(self.priority.urgent_probability)),
            ("priority.review_probability", self.priority.review_probability),
        ] {
            if let Some(v) = value {
                if !(0.0..=1.0).contains(&v) {
                    bad(key, format!("{v} is not a probability between 0 and 1"));
                }
            }
        }
        for (key, value) in [
            ("outputs.seg_series_description", &self.outputs.seg_series_description),
            ("outputs.sr_series_description", &self.outputs.sr_series_description),
            ("outputs.overlay_series_description", &self.outputs.overlay_series_description),
        ] {
            if value.chars().count() > 64 {
                bad(key, "is longer than 64 characters (DICOM LO)".into());
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.destinations.iter().enumerate() {
            if !names.insert(d.name.as_str()) {
                bad(&format!("destinations[{i}].name"), format!("`{}` is used twice", d.name));
            }
            for (key, message) in d.kind_problems() {
                bad(&format!("destinations[{i}].{key}"), message);
            }
            if let Some(Err(m)) = d.calling_ae_title.as_deref().map(check_ae_title) {
                bad(&format!("destinations[{i}].calling_ae_title"), m);
            }
            if let Some(tls) = &d.tls {
                if tls.cert_file.is_some() != tls.key_file.is_some() {
                    bad(&format!("destinations[{i}].tls"), "cert_file and key_file go together".into());
                }
                for (key, file) in [
                    ("ca_file", Some(&tls.ca_file)),
                    ("cert_file", tls.cert_file.as_ref()),
                    ("key_file", tls.key_file.as_ref()),
                ] {
                    if let Some(file) = file {
                        if let Err(e) = read_named_file(&self.resolve(file), TEXT_FILE_LIMIT) {
                            bad(
                                &format!("destinations[{i}].tls.{key}"),
                                format!("{}: {e}", self.resolve(file).display()),
                            );
                        }
                    }
                }
            }
        }
        if let Some(store) = &self.object_store {
            if let Err(m) = store.bucket_and_prefix() {
                bad("object_store.url", m);
            }
            if let Some(endpoint) = &store.endpoint {
                if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                    bad("object_store.endpoint", "must start with https:// (or http://)".into());
                }
            }
            if store.access_key_id.is_some() != store.secret_access_key.is_some() {
                bad("object_store", "access_key_id and secret_access_key go together".into());
            }
            if let Some(file) = &store.ca_file {
                if let Err(e) = read_named_file(&self.resolve(file), TEXT_FILE_LIMIT) {
                    bad("object_store.ca_file", format!("{}: {e}", self.resolve(file).display()));
                }
            }
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
                None => url.clone(),
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
fn check_label(name: &str) -> Result<(), String> {
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

fn check_uid_root(root: &str) -> Result<(), String> {
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
        for (key, value, range, _) in c.numbers() {
            assert!(range.contains(&value), "{key} = {value}");
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
