//! `serve`: the node's start-up and shutdown order, in one place.
//!
//! Start-up: the checks `check-config` runs too ([`super::preflight`]), the models (a node
//! that cannot analyse says so before it accepts images), the TLS files, the spool (and its object store), the database and the recovery of an unclean stop,
//! the listeners, the HTTP server, the pipeline and the outbox; then READY=1. Shutdown: one [`Shutdown`] fires on SIGINT
//! or SIGTERM; the listener stops accepting and drains its associations, the workers finish the
//! image in hand, the senders the object in hand, the HTTP server its requests; then the
//! database closes.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pneumotriage::audit::{sender::Senders, Alert, AuditEvent};
use pneumotriage::config::Config;
use pneumotriage::dicom::scp::Scp;
use pneumotriage::http::listener::ConnectionLimits;
use pneumotriage::http::{AppState, Readiness};
use pneumotriage::inference::analyse::Analyser;
use pneumotriage::inference::Manifest;
use pneumotriage::ingest::Ingest;
use pneumotriage::outbox::Outbox;
use pneumotriage::pipeline::{Limits, Models, Pipeline};
use pneumotriage::results::OutputSettings;
use pneumotriage::retention::Retention;
use pneumotriage::shutdown::Shutdown;
use pneumotriage::spool::Spool;
use pneumotriage::store::{JobScope, Store};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::preflight::{Checked, ModelsError};

pub async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    info!(version = env!("CARGO_PKG_VERSION"), config = %config.source, "starting: {}", config.summary());
    let checked = match tokio::task::block_in_place(|| super::preflight::check(&config)) {
        Ok(checked) => checked,
        Err(problems) => {
            for problem in &problems {
                eprintln!("error: {problem}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let Checked { models, tls_acceptor, http_acceptor, bucket } = checked;
    let analysers = match models {
        Some(first) => match tokio::task::block_in_place(|| open_analysers(&config, first)) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("error: {}: {e}", config.source);
                return Ok(ExitCode::from(2));
            }
        },
        None => {
            warn!("analysis is off (inference.enabled = false): images are received and kept, their jobs wait");
            None
        }
    };

    let spool_dir = config.spool_dir();
    let (spool, removed) = Spool::open(
        &spool_dir,
        &config.node_name(),
        config.node.min_free_disk_mb * 1024 * 1024,
        config.dicom.max_dataset_bytes(),
    )
    .with_context(|| format!("opening the spool {} (node.data_dir in {})", spool_dir.display(), config.source))?;
    if removed > 0 {
        info!(removed, "removed incomplete temporary files (never acknowledged)");
    }
    if let Some(bucket) = &bucket {
        bucket.check(&config.node_name()).await.with_context(|| {
            format!("the object store {} cannot be used (object_store in {})", bucket.url(), config.source)
        })?;
        info!(url = %bucket.url(), "instances and outputs are kept in the object store; data_dir caches them");
    }
    let store = super::connect(&config).await?;
    let free_target = config.retention.free_target_mb(config.node.min_free_disk_mb).saturating_mul(1 << 20);
    let spool = Arc::new(spool.with_bucket(bucket.clone()).with_free_target(free_target));
    let ingest = Arc::new(Ingest::new(spool.clone(), store.clone()));
    recover(&config, &ingest, &store).await?;
    let audit = start_audit(&config, &store).await?;

    let plain_listener = match &config.dicom.tls {
        Some(tls) if tls.only => None,
        _ => Some(bind(config.dicom.bind, "dicom.bind", &config).await?),
    };
    let tls_listener = match (&config.dicom.tls, tls_acceptor) {
        (Some(tls), Some(acceptor)) => Some((bind(tls.bind, "dicom.tls.bind", &config).await?, acceptor)),
        _ => None,
    };

    let shutdown = Shutdown::new();
    let readiness = Arc::new(Readiness::default());
    readiness.models.store(true, Ordering::Relaxed); // loaded above, or analysis is off
    let http = if config.http.enabled {
        let listener = bind(config.http.bind, "http.bind", &config).await?;
        let scheme = if http_acceptor.is_some() { "HTTPS" } else { "HTTP" };
        info!(bind = %listener.local_addr()?, "{scheme} ready: /healthz /readyz /metrics /api/studies, worklist at /");
        let oidc = tokio::task::block_in_place(|| pneumotriage::http::oidc::Verifier::discover(&config))
            .with_context(|| format!("the OpenID provider of {} cannot be used", config.source))?;
        if let Some(oidc) = &config.http.oidc {
            info!(issuer = %oidc.issuer, audience = %oidc.audience, "the API accepts the provider's access tokens");
        }
        let state = AppState::new(&config, store.clone(), spool.clone(), readiness.clone())
            .with_oidc(oidc)
            .with_stow(ingest.clone(), config.dicom.clone());
        let limits = ConnectionLimits::new(http_connections(&config), config.http.max_connections_per_client);
        let (http_config, shutdown) = (config.http.clone(), shutdown.clone());
        Some(tokio::spawn(async move {
            pneumotriage::http::serve(listener, http_acceptor, state, &http_config, limits, shutdown).await
        }))
    } else {
        None
    };
    let limits = Limits {
        max_dataset_bytes: config.dicom.max_dataset_bytes(),
        max_pixels: config.inference.max_pixels,
        quarantine_after: config.inference.quarantine_after,
        lease: config.lease(),
        batch_size: config.inference.batch_size,
        batch_wait: Duration::from_millis(config.inference.batch_wait_ms),
    };
    let outputs = OutputSettings { bucket: bucket.clone(), ..OutputSettings::of(&config) };
    let scope = JobScope::of(&config);
    // what the models are for, which messages repeat; read from the manifest only when analysis
    // is off here (another node analyses)
    let notice = match &analysers {
        Some(a) => a[0].production.manifest.notice.clone(),
        None => Manifest::load(&config.resolve(&config.inference.models)).map(|m| m.notice).unwrap_or_default(),
    };
    let pipeline =
        analysers.map(|a| Pipeline::start(store.clone(), spool.clone(), a, outputs, limits, scope, shutdown.clone()));
    let outbox = Outbox::start(store.clone(), &config, bucket.clone(), &notice, &shutdown)?;
    let retention =
        Retention::new(&config, store.clone(), ingest.clone(), spool.clone(), bucket, super::analysed(&config))
            .start(shutdown.clone());

    let address = |l: Option<&TcpListener>| l.and_then(|l| l.local_addr().ok()).map(|a| a.to_string());
    info!(
        ae_title = %config.dicom.ae_title,
        bind = address(plain_listener.as_ref()).unwrap_or_else(|| "off".into()),
        tls_bind = address(tls_listener.as_ref().map(|(l, _)| l)).unwrap_or_else(|| "off".into()),
        "DICOM listener ready"
    );
    // the catch-up starts from the last image received before the listener opens
    let catching_up = config.sources.iter().any(|s| s.catch_up);
    let last_received = match catching_up {
        true => store.last_received_at().await.context("the catch-up's starting point")?,
        false => None,
    };
    if catching_up {
        let (config, store, ingest, shutdown) = (config.clone(), store.clone(), ingest.clone(), shutdown.clone());
        tokio::spawn(
            async move { pneumotriage::sources::catch_up(&config, store, ingest, last_received, shutdown).await },
        );
    }
    let scp =
        tokio::spawn(Scp::new(config.dicom.clone(), ingest).serve(plain_listener, tls_listener, shutdown.clone()));
    readiness.listening.store(true, Ordering::Relaxed);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let watchdog = start_watchdog();

    shutdown_signal().await;
    info!("stopping: no new associations; finishing those in progress");
    readiness.stopping.store(true, Ordering::Relaxed);
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    shutdown.trigger();

    if let Err(e) = scp.await {
        warn!(error = %e, "the DICOM listener panicked");
    }
    readiness.listening.store(false, Ordering::Relaxed);
    if let Some(pipeline) = pipeline {
        pipeline.join().await;
    }
    outbox.join().await;
    if let Err(e) = retention.await {
        warn!(error = %e, "retention panicked");
    }
    if let Some(http) = http {
        if let Err(e) = http.await {
            warn!(error = %e, "the HTTP server panicked");
        }
    }
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    if let Some(audit) = audit {
        if let Err(e) = store.audit(&AuditEvent::Stopped).await {
            warn!(error = %e, "cannot record the stop in the audit trail");
        }
        audit.finish(AUDIT_GRACE).await;
    }
    store.close().await;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The models of each inference worker (production's and the shadow versions'): the first
/// worker's as the checks opened them, the others' opened alike on the CPU, or sharing the
/// first's sessions on a GPU; all warmed up.
fn open_analysers(config: &Config, (first, mut warm_up): (Models, Duration)) -> Result<Vec<Models>, ModelsError> {
    let analysers: Vec<&Analyser> =
        std::iter::once(&first.production).chain(first.shadows.iter().map(|s| &s.analyser)).collect();
    let (count, why) = super::workers::count(config, &analysers);
    info!(workers = count, "{why}");
    let on_gpu = first.production.on_gpu();
    let workers = super::workers::each(first, count, on_gpu, Models::share, || {
        let (models, took) = super::preflight::open_models(config)?;
        warm_up += took;
        Ok(models)
    })?;
    let first = &workers[0].production;
    info!(
        classifier = %format_args!("{} {}", first.classifier().name, first.classifier().version),
        segmenter = %format_args!("{} {}", first.segmenter().name, first.segmenter().version),
        policy = %config.inference.policy,
        device = %config.inference.device,
        execution_provider = first.execution_provider(),
        workers = workers.len(),
        batch_size = config.inference.batch_size,
        warm_up_ms = warm_up.as_millis() as u64,
        "models loaded ({})",
        first.manifest.notice
    );
    for shadow in &workers[0].shadows {
        let a = &shadow.analyser;
        info!(
            shadow = %shadow.name,
            classifier = %format_args!("{} {}", a.classifier().name, a.classifier().version),
            segmenter = %format_args!("{} {}", a.segmenter().name, a.segmenter().version),
            classifier_threshold = %a.rules().classifier,
            "shadow version loaded: it sees every image production analyses; its results are recorded, never sent"
        );
    }
    Ok(workers)
}

/// What an unclean stop left: spool files without rows, jobs and deliveries left running.
/// On a shared spool, start-up recovery registers a file without rows only when it is older than
/// this: between placing a file and committing its rows a node takes milliseconds, not minutes.
const SHARED_ORPHAN_MIN_AGE: Duration = Duration::from_secs(600);

async fn recover(config: &Config, ingest: &Ingest, store: &Store) -> anyhow::Result<()> {
    let quarantine_after = config.inference.quarantine_after;
    let analysed = super::analysed(config);
    // On a shared spool, a file without rows may be one another node is committing right now
    // (with an object store, the local spool is this node's alone).
    let orphan_min_age = if config.node.shared_spool { SHARED_ORPHAN_MIN_AGE } else { Duration::ZERO };
    let recovery = ingest.recover(&*analysed, quarantine_after, orphan_min_age).await.context("start-up recovery")?;
    if recovery.left > 0 {
        info!(
            files = recovery.left,
            "spool files without rows younger than {SHARED_ORPHAN_MIN_AGE:?} are left to the node storing them (shared spool); a later start-up registers any still without rows"
        );
    }
    for sop_instance_uid in &recovery.to_quarantine {
        warn!(
            sop_instance_uid = %sop_instance_uid,
            times = quarantine_after,
            "the node stopped every time it analysed an image: it is quarantined, not analysed again"
        );
    }
    if recovery.registered > 0 || recovery.requeued_jobs > 0 || recovery.unreadable > 0 {
        warn!(
            registered = recovery.registered,
            unreadable = recovery.unreadable,
            requeued_jobs = recovery.requeued_jobs,
            "recovered from an unclean stop"
        );
    }
    let resent = store.requeue_abandoned_deliveries().await.context("start-up recovery")?;
    if resent > 0 {
        warn!(deliveries = resent, "deliveries interrupted by the last stop will be sent again");
    }
    if !config.spool_is_shared() {
        for (node, n) in store.jobs_kept_elsewhere().await.context("start-up recovery")? {
            warn!(%node, jobs = n, "images kept in another node's spool wait for it to analyse them; if it is gone for good, `pneumotriage handover --from {node}` (--to this node, or --fail)");
        }
    }
    for (destination, n) in store.unfinished_deliveries_by_destination().await.context("start-up recovery")? {
        if !config.destinations.iter().any(|d| d.name == destination) {
            warn!(%destination, deliveries = n, "deliveries wait for a destination the configuration no longer names; they are kept and go out if it returns");
        }
    }
    Ok(())
}

/// How long the audit senders may take at stop to send what waits (the stop record among it).
const AUDIT_GRACE: Duration = Duration::from_secs(5);

/// Starts the audit senders and records the start, and a changed configuration as a security
/// alert; without a repository, says that nothing is recorded.
async fn start_audit(config: &Config, store: &Store) -> anyhow::Result<Option<Senders>> {
    if store.auditor().is_none() {
        warn!("no audit repository ([[audit.repositories]]): access to patient data leaves no audit record");
        return Ok(None);
    }
    let senders = Senders::start(config, store).map_err(anyhow::Error::msg)?;
    store.audit(&AuditEvent::Started).await.context("recording the start in the audit trail")?;
    if let Some(detail) = configuration_change(config) {
        info!("{detail}");
        let event = AuditEvent::Security { alert: Alert::ConfigurationChanged, peer: None, detail: &detail };
        store.audit(&event).await.context("recording a configuration change in the audit trail")?;
    }
    let names: Vec<&str> = config.audit.repositories.iter().map(|r| r.name.as_str()).collect();
    info!(repositories = %names.join(", "), "audit records go to their repositories");
    Ok(Some(senders))
}

/// How the configuration differs from the one the node last ran with (a fingerprint of every
/// setting, kept in the data directory), if it does; the new fingerprint is kept.
fn configuration_change(config: &Config) -> Option<String> {
    use sha2::Digest;
    let settings = serde_json::to_string(config).unwrap_or_default();
    let now = format!("{:x}", sha2::Sha256::digest(settings.as_bytes()));
    let kept = config.data_dir().join("configuration.sha256");
    let before = std::fs::read_to_string(&kept).ok().map(|s| s.trim().to_string());
    if before.as_deref() == Some(now.as_str()) {
        return None;
    }
    if let Err(e) = std::fs::write(&kept, &now) {
        warn!(path = %kept.display(), error = %e, "cannot keep the configuration's fingerprint");
    }
    Some(match before {
        Some(before) => format!(
            "the configuration {} differs from the one this node last ran with (settings sha256 {before} before, {now} now)",
            config.source
        ),
        None => format!("first start with this data directory: configuration {} (settings sha256 {now})", config.source),
    })
}

async fn bind(address: std::net::SocketAddr, key: &str, config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address).await.with_context(|| format!("cannot listen on {key} = {address} ({})", config.source))
}

/// Descriptors kept for what is not a connection: the database pool, spool and output files,
/// the models, the log, the runtime's own.
const RESERVED_DESCRIPTORS: u64 = 128;

/// `http.max_connections`, or fewer where the process may not open enough files for it beside
/// everything DICOM needs: when descriptors run short, HTTP is refused first. The soft limit is
/// raised to the hard one first (systemd's default soft limit is 1024, its hard one far more).
fn http_connections(config: &Config) -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            warn!(error = %e, "cannot raise the open-file limit to its maximum");
        }
        limit = getrlimit(Resource::Nofile);
    }
    let Some(descriptors) = limit.current else { return config.http.max_connections };
    // an association holds its socket and a spool file; each sender a socket and a file
    let senders: usize = config.destinations.iter().map(|d| d.max_associations).sum();
    let dicom = (config.dicom.max_associations + senders) as u64 * 2 + config.database.max_connections as u64;
    let left = descriptors.saturating_sub(dicom + RESERVED_DESCRIPTORS) as usize;
    if left < config.http.max_connections {
        warn!(
            open_file_limit = descriptors,
            http_connections = left,
            "the open-file limit leaves room for only {left} HTTP connections beside DICOM (http.max_connections = {}); raise LimitNOFILE",
            config.http.max_connections
        );
    }
    left.min(config.http.max_connections).max(1)
}

/// Tells systemd (Type=notify) where the node stands; nothing without NOTIFY_SOCKET.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// With WatchdogSec= in the unit, pings systemd at half the interval while the runtime runs.
fn start_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = std::time::Duration::from_micros(usec / 2);
    info!("systemd watchdog every {every:?}");
    Some(tokio::spawn(async move {
        loop {
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
            tokio::time::sleep(every).await;
        }
    }))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}
