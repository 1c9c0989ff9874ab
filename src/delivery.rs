//! The delivery task: sends the objects the pipeline made to their destinations (the outbox
//! rows of `store::deliveries`), up to `max_associations` C-STOREs at a time per destination,
//! with exponential backoff and jitter for transient failures and a flag for permanent ones.
//! Everything it does is a row update, so a restart resumes where it stopped; a delivery left
//! `sending` by a crash is taken up again when its lease expires (at once for this node, see
//! `Store::requeue_abandoned_deliveries`).

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::config::{Config, Destination};
use crate::dicom::scu::{self, Peer, SendError};
use crate::dicom::tls::TlsSetupError;
use crate::shutdown::Shutdown;
use crate::store::{ClaimedDelivery, Store};

/// How long a claimed delivery is ours.
const LEASE: Duration = Duration::from_secs(300);
/// How often the outbox is polled when nothing signals work (retries falling due).
const POLL: Duration = Duration::from_secs(1);

/// The running senders: they stop when their [`Shutdown`] fires, after the sends in progress.
pub struct Outbox {
    senders: Vec<tokio::task::JoinHandle<()>>,
}

/// A destination as the senders use it.
struct Target {
    destination: Destination,
    peer: Peer,
    dir: std::path::PathBuf,
}

impl Outbox {
    /// Starts `max_associations` senders per destination. Fails, naming the key, when a
    /// destination's TLS files cannot be used.
    pub fn start(store: Store, config: &Config, shutdown: &Shutdown) -> Result<Outbox, PeerError> {
        let mut senders = Vec::new();
        for (i, d) in config.destinations.iter().enumerate() {
            let target = Arc::new(Target { destination: d.clone(), peer: peer(config, i)?, dir: config.outputs_dir() });
            for _ in 0..d.max_associations {
                senders.push(tokio::spawn(run(store.clone(), target.clone(), shutdown.clone())));
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

/// A destination whose TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{config}: destinations[{index}].tls: {source}")]
pub struct PeerError {
    /// The configuration file.
    pub config: String,
    pub index: usize,
    #[source]
    pub source: TlsSetupError,
}

/// How to reach `destinations[i]`, its TLS files read; an error names the file and the key.
pub fn peer(config: &Config, i: usize) -> Result<Peer, PeerError> {
    let d = &config.destinations[i];
    let tls = match &d.tls {
        None => None,
        Some(tls) => {
            let identity = tls.cert_file.as_ref().zip(tls.key_file.as_ref());
            let identity = identity.map(|(c, k)| (config.resolve(c), config.resolve(k)));
            let client = crate::dicom::tls::client_config(
                &config.resolve(&tls.ca_file),
                identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )
            .map_err(|source| PeerError { config: config.source.clone(), index: i, source })?;
            Some((client, tls.server_name.clone().unwrap_or_else(|| d.host.clone())))
        }
    };
    Ok(Peer {
        host: d.host.clone(),
        port: d.port,
        called_ae_title: d.ae_title.clone(),
        calling_ae_title: d.calling_ae_title.clone().unwrap_or_else(|| config.dicom.ae_title.clone()),
        timeout: Duration::from_secs(d.timeout_secs),
        tls,
    })
}

/// One sender: claims this destination's due deliveries one after another.
async fn run(store: Store, target: Arc<Target>, shutdown: Shutdown) {
    let mut queued = store.deliveries_queued();
    loop {
        if shutdown.is_triggered() {
            return;
        }
        queued.mark_unchanged();
        let delivery = match store.claim_delivery(&target.destination.name, LEASE).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "cannot claim deliveries");
                None
            }
        };
        let Some(delivery) = delivery else {
            tokio::select! {
                _ = queued.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.triggered() => return,
            }
            continue;
        };
        send(&store, &target, &delivery).await;
    }
}

async fn send(store: &Store, target: &Target, d: &ClaimedDelivery) {
    let (destination, peer, path) = (&target.destination, target.peer.clone(), target.dir.join(&d.path));
    let (class, instance) = (d.sop_class_uid.clone(), d.sop_instance_uid.clone());
    let started = std::time::Instant::now();
    let outcome = tokio::task::spawn_blocking(move || scu::store_file(&peer, &path, &class, &instance))
        .await
        .unwrap_or_else(|e| Err(SendError::Transient(format!("the sending task failed: {e}"))));
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
            store.delivery_done(d).await
        }
        Err(SendError::Transient(reason)) => {
            let delay = backoff(destination, d.attempts, d.id);
            warn!(delivery = d.id, destination = %d.destination, attempt = d.attempts, %reason, "delivery will be retried in {delay:?}");
            crate::metrics::delivery("retry", started.elapsed());
            store.delivery_retry(d, &reason, delay).await
        }
        Err(SendError::Permanent(reason)) => {
            error!(delivery = d.id, destination = %d.destination, %reason, "delivery failed; `pneumotriage retry` sends it again");
            crate::metrics::delivery("failed", started.elapsed());
            store.delivery_failed(d, &reason).await
        }
    };
    record(written, d);
}

fn record(written: crate::store::Result<bool>, d: &ClaimedDelivery) {
    match written {
        Ok(true) => {}
        Ok(false) => warn!(delivery = d.id, "the delivery was taken over by another node"),
        Err(e) => {
            error!(delivery = d.id, error = %e, "cannot record the delivery's outcome; it is retried when its lease expires")
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
            hl7: None,
            fhir: None,
            webhook: None,
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
