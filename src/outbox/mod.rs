//! The outbox: sends what the pipeline made to the destinations, the DICOM objects by C-STORE
//! (the rows of `store::deliveries`, up to `max_associations` at a time per destination) and the
//! messages to the RIS and EHR (`store::messages`) over their transports (`transport`: MLLP in
//! `mllp`, HTTP(S) in `http`), with exponential backoff and jitter for transient failures and a
//! flag for permanent ones. Everything it does is a row update, so a restart resumes where it
//! stopped; a delivery left `sending` by a crash is taken up again when its lease expires (at
//! once for this node, see `Store::requeue_abandoned_deliveries`).

pub mod http;
pub mod mllp;
pub mod stow;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::bucket::{Area, Bucket, BucketError};
use crate::config::{Config, Destination};
use crate::dicom::scu::{self, SendError, StoreScp};
use crate::shutdown::Shutdown;
use crate::store::{ClaimedDelivery, ClaimedMessage, JobScope, Store};
use crate::tls::TlsSetupError;
use transport::{MessageTransport, TransportError};

/// How often the outbox is polled when nothing signals work (retries falling due).
const POLL: Duration = Duration::from_secs(1);

/// The running senders: they stop when their [`Shutdown`] fires, after the sends in progress.
pub struct Outbox {
    senders: Vec<tokio::task::JoinHandle<()>>,
}

impl Outbox {
    /// Starts `max_associations` senders per DICOM destination and one per messaging
    /// destination (so that a study's messages go in the order they were made). `notice` is the
    /// models' notice, which messages carry. Fails, naming the key, when a destination's TLS
    /// files cannot be used.
    pub fn start(
        store: Store,
        config: &Config,
        bucket: Option<Arc<Bucket>>,
        notice: &str,
        shutdown: &Shutdown,
    ) -> Result<Outbox, DestinationError> {
        let mut senders = Vec::new();
        for (i, d) in config.destinations.iter().enumerate() {
            match target(config, i)? {
                Target::Objects(target) => {
                    let scope = JobScope::of(config);
                    let destination = d.clone();
                    let (dir, bucket, lease) = (config.outputs_dir(), bucket.clone(), config.lease());
                    let objects = Arc::new(ObjectSender { destination, target, dir, bucket, scope, lease });
                    for _ in 0..d.max_associations {
                        senders.push(tokio::spawn(run(store.clone(), objects.clone(), shutdown.clone())));
                    }
                }
                Target::Messages(transport) => {
                    let messages = Arc::new(MessageSender {
                        destination: d.clone(),
                        transport: Arc::new(transport),
                        notice: notice.to_string(),
                        public_url: config.http.public_url.clone(),
                        lease: config.lease(),
                    });
                    senders.push(tokio::spawn(run(store.clone(), messages, shutdown.clone())));
                }
            }
        }
        Ok(Outbox { senders })
    }

    /// Waits for the senders to stop (after the shutdown fired).
    pub async fn join(self) {
        for sender in self.senders {
            let _ = sender.await;
        }
    }
}

/// How a receiver answered a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Worth trying again later (no answer, a timeout, AE/CE, HTTP 408/429/5xx).
    #[error("{0}")]
    Transient(String),
    /// The receiver refused it (AR/CR, other HTTP 4xx): failed at once, `retry` sends it again.
    #[error("{0}")]
    Permanent(String),
}

/// A destination that cannot be used: the key at fault (`tls` for its files, `url` for its
/// address) and why.
#[derive(Debug, thiserror::Error)]
#[error("{config}: destinations[{index}].{key}: {source}")]
pub struct DestinationError {
    /// The configuration file.
    pub config: String,
    pub index: usize,
    pub key: &'static str,
    #[source]
    pub source: Box<TargetError>,
}

/// Why a destination cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

impl TargetError {
    /// The key of `[[destinations]]` the problem is in.
    fn key(&self) -> &'static str {
        use http::HttpSetupError;
        match self {
            TargetError::Transport(TransportError::Http(
                HttpSetupError::Url(_) | HttpSetupError::NoCa(_) | HttpSetupError::TlsWithoutHttps(_),
            )) => "url",
            TargetError::Transport(TransportError::NotMessaging) => "kind",
            _ => "tls",
        }
    }
}

/// How a destination is reached.
pub enum Target {
    /// A DICOM node or DICOMweb server, sent the objects.
    Objects(ObjectTarget),
    /// An HL7, FHIR or webhook receiver, sent a message per study and priority.
    Messages(MessageTransport),
}

/// How to reach `destinations[i]`, its TLS files read; an error names the file and the key.
pub fn target(config: &Config, i: usize) -> Result<Target, DestinationError> {
    let d = &config.destinations[i];
    let error = |source: TargetError| DestinationError {
        config: config.source.clone(),
        index: i,
        key: source.key(),
        source: Box::new(source),
    };
    if d.takes_messages() {
        return MessageTransport::of(config, d).map(Target::Messages).map_err(|e| error(e.into()));
    }
    if d.kind == crate::domain::DestinationKind::Dicomweb {
        let target = http::HttpTarget::for_destination(config, d).map_err(|e| error(TransportError::from(e).into()))?;
        return Ok(Target::Objects(ObjectTarget::Stow(Arc::new(target))));
    }
    let tls = crate::tls::destination_client(config, d).map_err(|e| error(e.into()))?;
    Ok(Target::Objects(ObjectTarget::Dimse(StoreScp {
        host: d.host.clone(),
        port: d.port,
        called_ae_title: d.ae_title.clone(),
        calling_ae_title: d.calling_ae_title.clone().unwrap_or_else(|| config.dicom.ae_title.clone()),
        timeout: Duration::from_secs(d.timeout_secs),
        tls,
    })))
}

/// How the objects reach a destination.
#[derive(Clone)]
pub enum ObjectTarget {
    /// C-STORE to a DICOM node.
    Dimse(StoreScp),
    /// STOW-RS to a DICOMweb server.
    Stow(Arc<http::HttpTarget>),
}

impl ObjectTarget {
    /// Sends one object (blocking); the status it was taken with.
    fn send(&self, path: &std::path::Path, sop_class: &str, sop_instance: &str) -> Result<u16, SendError> {
        match self {
            ObjectTarget::Dimse(scp) => scu::store_file(scp, path, sop_class, sop_instance),
            ObjectTarget::Stow(target) => stow::store_file(target, path, sop_instance),
        }
    }
}

/// What one sender claims from the outbox and how it sends it.
trait Sender: Send + Sync + 'static {
    type Claimed: Send;
    async fn claim(&self, store: &Store) -> crate::store::Result<Option<Self::Claimed>>;
    async fn send(&self, store: &Store, claimed: Self::Claimed);
}

/// One sender: claims its destination's due rows one after another.
async fn run<S: Sender>(store: Store, sender: Arc<S>, shutdown: Shutdown) {
    let mut queued = store.deliveries_queued();
    loop {
        if shutdown.is_triggered() {
            return;
        }
        queued.mark_unchanged();
        let claimed = match sender.claim(&store).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "cannot claim deliveries");
                None
            }
        };
        let Some(claimed) = claimed else {
            tokio::select! {
                _ = queued.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.triggered() => return,
            }
            continue;
        };
        sender.send(&store, claimed).await;
    }
}

/// Sends the DICOM objects made of results to a DICOM or DICOMweb destination.
struct ObjectSender {
    destination: Destination,
    target: ObjectTarget,
    dir: std::path::PathBuf,
    /// Where the objects are kept when `dir` only caches them.
    bucket: Option<Arc<Bucket>>,
    /// Whose objects it may send: its own, unless every node reads the same outputs.
    scope: JobScope,
    /// `node.lease_secs`.
    lease: Duration,
}

impl Sender for ObjectSender {
    type Claimed = ClaimedDelivery;

    async fn claim(&self, store: &Store) -> crate::store::Result<Option<ClaimedDelivery>> {
        store.claim_delivery(&self.destination.name, self.lease, self.scope).await
    }

    async fn send(&self, store: &Store, d: ClaimedDelivery) {
        let (destination, target, path) = (&self.destination, self.target.clone(), self.dir.join(&d.path));
        let (class, instance) = (d.sop_class_uid.clone(), d.sop_instance_uid.clone());
        let started = std::time::Instant::now();
        // an object made on another node is fetched from the bucket first
        let fetched = match &self.bucket {
            Some(bucket) => bucket.fetch(Area::Outputs, &d.path, &path).await.map_err(|e| match e {
                BucketError::Missing { .. } => SendError::Permanent(e.to_string()),
                e => SendError::Transient(e.to_string()),
            }),
            None => Ok(()),
        };
        let outcome = match fetched {
            Ok(()) => tokio::task::spawn_blocking(move || target.send(&path, &class, &instance))
                .await
                .unwrap_or_else(|e| Err(SendError::Transient(format!("the sending task failed: {e}")))),
            Err(e) => Err(e),
        };
        let written = match outcome {
            Ok(status) => {
                info!(
                    delivery = d.id,
                    destination = %d.destination,
                    object = %d.kind,
                    sop_instance = %d.sop_instance_uid,
                    status = format_args!("{status:#06X}"),
                    attempt = d.attempts,
                    "delivered"
                );
                crate::metrics::delivery("delivered", started.elapsed());
                // a DICOMweb server is named by its URL, with no AE title
                let address = destination.url.as_deref().unwrap_or(destination.host.as_str());
                store.delivery_done(&d, crate::audit::Peer { ae_title: &destination.ae_title, address }).await
            }
            Err(SendError::Transient(reason)) => {
                let delay = backoff(destination, d.attempts, d.id);
                warn!(delivery = d.id, destination = %d.destination, attempt = d.attempts, %reason, "delivery will be retried in {delay:?}");
                crate::metrics::delivery("retry", started.elapsed());
                store.delivery_retry(&d, &reason, delay).await
            }
            Err(SendError::Permanent(reason)) => {
                error!(delivery = d.id, destination = %d.destination, %reason, "delivery failed; `pneumotriage retry` sends it again");
                crate::metrics::delivery("failed", started.elapsed());
                store.delivery_failed(&d, &reason).await
            }
        };
        record(written, d.id);
    }
}

/// Sends a message per study and priority to an HL7, FHIR or webhook destination.
struct MessageSender {
    destination: Destination,
    transport: Arc<MessageTransport>,
    notice: String,
    /// `http.public_url`: messages link to the study's worklist page with it.
    public_url: Option<String>,
    /// `node.lease_secs`.
    lease: Duration,
}

impl Sender for MessageSender {
    type Claimed = ClaimedMessage;

    async fn claim(&self, store: &Store) -> crate::store::Result<Option<ClaimedMessage>> {
        store.claim_message(&self.destination.name, self.lease).await
    }

    async fn send(&self, store: &Store, m: ClaimedMessage) {
        let started = std::time::Instant::now();
        let outcome = match store.study_message(&m, &self.notice).await {
            Ok(mut message) => {
                message.link =
                    self.public_url.as_deref().map(|base| study_link(base, &message.study.study_instance_uid));
                // the transport blocks (a socket, TLS): on the blocking pool, the sender waiting
                let transport = self.transport.clone();
                tokio::task::spawn_blocking(move || transport.send(&message))
                    .await
                    .unwrap_or_else(|e| Err(MessageError::Transient(format!("the sending task failed: {e}"))))
            }
            Err(e) => Err(MessageError::Transient(format!("cannot read the study: {e}"))),
        };
        let destination = &self.destination;
        let written = match outcome {
            Ok(()) => {
                info!(
                    message = m.id,
                    destination = %m.destination,
                    kind = %m.kind,
                    control_id = %m.control_id,
                    priority = %m.priority.map_or_else(|| "not analysed".to_string(), |p| p.to_string()),
                    attempt = m.attempts,
                    "message delivered"
                );
                crate::metrics::delivery("delivered", started.elapsed());
                let address = match &destination.url {
                    Some(url) => url.clone(),
                    None => format!("{}:{}", destination.host, destination.port),
                };
                store.message_done(&m, &address).await
            }
            Err(MessageError::Transient(reason)) => {
                let delay = backoff(destination, m.attempts, m.id);
                warn!(message = m.id, destination = %m.destination, control_id = %m.control_id, attempt = m.attempts, %reason, "message will be sent again in {delay:?}");
                crate::metrics::delivery("retry", started.elapsed());
                store.message_retry(&m, &reason, delay).await
            }
            Err(MessageError::Permanent(reason)) => {
                error!(message = m.id, destination = %m.destination, control_id = %m.control_id, %reason, "message refused; `pneumotriage retry m{}` sends it again", m.id);
                crate::metrics::delivery("failed", started.elapsed());
                store.message_failed(&m, &reason).await
            }
        };
        record(written, m.id);
    }
}

/// The study's page on the worklist, under `http.public_url`.
fn study_link(base: &str, study_instance_uid: &str) -> String {
    format!("{}/#study={study_instance_uid}", base.trim_end_matches('/'))
}

fn record(written: crate::store::Result<bool>, id: i64) {
    match written {
        Ok(true) => {}
        Ok(false) => warn!(delivery = id, "the delivery was taken over by another node"),
        Err(e) => {
            error!(delivery = id, error = %e, "cannot record the delivery's outcome; it is retried when its lease expires")
        }
    }
}

/// The wait before attempt `attempts + 1`: the destination's initial delay doubled per attempt,
/// capped, with ±20 % jitter so that many deliveries do not retry in step.
pub fn backoff(destination: &Destination, attempts: i64, salt: i64) -> Duration {
    let base = destination.retry_initial_secs as f64 * 2f64.powi((attempts - 1).clamp(0, 30) as i32);
    let capped = base.min(destination.retry_max_secs as f64);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let unit = ((nanos as i64 ^ salt.wrapping_mul(0x9E37_79B9)) & 0xFFFF) as f64 / 65535.0; // 0..1
    Duration::from_secs_f64(capped * (0.8 + 0.4 * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let d = Destination {
            name: "pacs".into(),
            kind: crate::domain::DestinationKind::Dicom,
            ae_title: "PACS".into(),
            host: "127.0.0.1".into(),
            port: 104,
            url: None,
            objects: vec![],
            priorities: vec![],
            settle_secs: 0,
            not_analysed: true,
            hl7: None,
            fhir: None,
            webhook: None,
            dicomweb: None,
            calling_ae_title: None,
            retry_initial_secs: 5,
            retry_max_secs: 60,
            timeout_secs: 30,
            max_associations: 1,
            tls: None,
        };
        for (attempts, nominal) in [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (5, 60.0), (40, 60.0)] {
            let wait = backoff(&d, attempts, 7).as_secs_f64();
            assert!((nominal * 0.8..=nominal * 1.2).contains(&wait), "attempt {attempts}: {wait}");
        }
    }
}
