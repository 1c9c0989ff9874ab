//! The workers that take a received instance from "queued" to a result (docs/architecture.md §3).
//!
//! Each inference thread, with its own model sessions, claims jobs from the database itself;
//! a burst of arrivals waits in the database, not in memory. A worker checks the spool file
//! (its structure, its pixel budget, its codestream header: `imaging::open_checked`), checks
//! applicability, runs the cascade and writes the result, or ends the job with its reason:
//! - not applicable or not grayscale: `skipped`;
//! - unreadable file, a data set over the limits, corrupt pixel data, a panic in the analysis:
//!   `failed` at once (a poisoned image fails alone and the worker goes on);
//! - a job that was being analysed when the node died `inference.quarantine_after` times:
//!   quarantined (failed, marked, never taken again), so that no image crash-loops the node;
//! - a database error while recording what became of a job: retried promptly with backoff;
//! - an ONNX Runtime error or an I/O error: retried with backoff, `failed` after
//!   [`MAX_ATTEMPTS`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tracing::{debug, error, info, warn};

use crate::imaging::{self, ImagingError};
use crate::inference::analyze::{not_applicable, Analysis, AnalyzeError, Analyzer};
use crate::results::{make_objects, MadeObject, OutputSettings};
use crate::shutdown::Shutdown;
use crate::spool::{sanitize_uid, write_durably, Spool};
use crate::store::{ClaimedJob, JobEnd, JobScope, NewOutput, NewResult, Store};

/// Attempts before a job with transient errors is failed.
pub const MAX_ATTEMPTS: i64 = 4;
/// How often the queue is polled when nothing signals new work (retries that fall due, jobs
/// queued by other nodes, expired leases).
const POLL: Duration = Duration::from_secs(2);

/// What became of one job's analysis.
#[derive(Debug)]
pub enum Verdict {
    Analysed(Box<Analysis>, Vec<MadeObject>),
    Skipped(String),
    Failed(String),
    /// Worth another attempt later.
    Transient(String),
}

/// The running pipeline: it stops when its [`Shutdown`] fires; [`Pipeline::join`] waits for that.
pub struct Pipeline {
    workers: Vec<std::thread::JoinHandle<()>>,
    store: Store,
}

/// What the workers are bound by.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `dicom.max_dataset_mb` in bytes: a stored data set (or a deflated one inflated) is no larger.
    pub max_dataset_bytes: u64,
    /// `inference.max_pixels`.
    pub max_pixels: u64,
    /// `inference.quarantine_after`.
    pub quarantine_after: u32,
    /// `node.lease_secs`: how long a claimed job is this node's before another may take it over.
    pub lease: Duration,
}

impl Pipeline {
    /// Starts one inference thread per analyzer. Each claims its own jobs, so a job is `running`
    /// only while a worker analyses it: the crash-loop breaker counts exactly the jobs that were
    /// in a worker's hands when the node died.
    pub fn start(
        store: Store,
        spool: Arc<Spool>,
        analyzers: Vec<Analyzer>,
        outputs: OutputSettings,
        limits: Limits,
        scope: JobScope,
        shutdown: Shutdown,
    ) -> Pipeline {
        let handle = Handle::current();
        let workers = analyzers
            .into_iter()
            .enumerate()
            .map(|(n, mut analyzer)| {
                // the secondary capture is drawn on the displayed source
                analyzer.keep_views |= outputs.outputs.overlay;
                let worker = Worker {
                    analyzer,
                    spool: spool.clone(),
                    store: store.clone(),
                    scope,
                    shutdown: shutdown.clone(),
                    runtime: handle.clone(),
                    outputs: outputs.clone(),
                    limits,
                };
                std::thread::Builder::new()
                    .name(format!("inference-{n}"))
                    .spawn(move || worker.run())
                    .expect("cannot start an inference thread")
            })
            .collect();
        Pipeline { workers, store }
    }

    /// After the shutdown fired: waits for each worker to finish the image in hand, then puts
    /// back the jobs claimed but not started.
    pub async fn join(self) {
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || workers.into_iter().for_each(|w| drop(w.join()))).await;
        match self.store.requeue_unstarted_jobs().await {
            Ok(n) if n > 0 => info!(requeued = n, "jobs claimed but not analysed were put back in the queue"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not re-queue claimed jobs; they return when their lease expires"),
        }
    }
}

struct Worker {
    analyzer: Analyzer,
    spool: Arc<Spool>,
    store: Store,
    /// Which jobs it may claim.
    scope: JobScope,
    shutdown: Shutdown,
    runtime: Handle,
    outputs: OutputSettings,
    limits: Limits,
}

impl Worker {
    fn run(mut self) {
        while let Some(job) = self.runtime.clone().block_on(self.next_job()) {
            if job.interruptions >= i64::from(self.limits.quarantine_after) {
                // taken over from a node that died while analysing it, as often as we allow
                let reason = format!(
                    "quarantined: a node stopped {} time(s) while analysing this image; it is not analysed again",
                    job.interruptions
                );
                error!(job = job.id, instance = job.instance_id, %reason, "job quarantined");
                let store = self.store.clone();
                self.runtime
                    .clone()
                    .block_on(self.persist(&job, "quarantine", || store.end_job(&job, JobEnd::Quarantined, &reason)));
                continue;
            }
            let verdict = analyse_job(&mut self.analyzer, &self.spool, &job, &self.outputs, &self.limits);
            self.runtime.clone().block_on(self.record(&job, verdict));
        }
    }

    /// Claims the next due job; waits for one (a queued-job signal or the poll interval), and
    /// backs off while the database is unreachable. `None` once the pipeline stops.
    async fn next_job(&mut self) -> Option<ClaimedJob> {
        let mut backoff = Duration::from_millis(500);
        loop {
            if self.shutdown.is_triggered() {
                return None;
            }
            let queued = self.store.jobs_queued().notified();
            match self.store.claim_job(self.limits.lease, self.scope).await {
                Ok(Some(job)) => {
                    debug!(job = job.id, attempt = job.attempts, "job claimed");
                    return Some(job);
                }
                Ok(None) => {
                    tokio::select! {
                        _ = queued => {}
                        _ = tokio::time::sleep(POLL) => {}
                        _ = self.shutdown.triggered() => {}
                    }
                    backoff = Duration::from_millis(500);
                }
                Err(e) => {
                    warn!(error = %e, "cannot claim analysis jobs; retrying in {backoff:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.shutdown.triggered() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    async fn record(&mut self, job: &ClaimedJob, verdict: Verdict) {
        let store = self.store.clone();
        match verdict {
            Verdict::Analysed(analysis, objects) => {
                let result = new_result(&self.analyzer, &analysis);
                let outputs = match write_objects(&self.outputs, objects) {
                    Ok(outputs) => outputs,
                    Err(e) => {
                        // The disk is full or unwritable: try again later rather than lose the objects.
                        warn!(job = job.id, error = %e, "cannot write the result's objects; will retry");
                        let reason = format!("cannot write outputs: {e}");
                        self.persist(job, "retry", || store.retry_job(job, &reason, Duration::from_secs(30))).await;
                        return;
                    }
                };
                let t = &analysis.timings;
                info!(
                    job = job.id,
                    instance = job.instance_id,
                    decision = %result.decision,
                    priority = %result.priority,
                    probability = format_args!("{:.3}", analysis.probability),
                    mask_px = analysis.mask_area_px,
                    decode_ms = t.decode_ms as u64,
                    inference_ms = t.inference_ms as u64,
                    "analysed"
                );
                let stages = [
                    ("decode", t.decode_ms),
                    ("preprocess", t.preprocess_ms),
                    ("inference", t.inference_ms),
                    ("postprocess", t.postprocess_ms),
                ];
                crate::metrics::result(result.decision, result.priority, stages);
                let rules = self.outputs.messages.clone();
                self.persist(job, "result", || store.record_result(job, &result, &outputs, &rules)).await;
            }
            Verdict::Skipped(reason) => {
                info!(job = job.id, instance = job.instance_id, %reason, "skipped");
                self.persist(job, "skip", || store.end_job(job, JobEnd::Skipped, &reason)).await;
            }
            Verdict::Failed(reason) => {
                warn!(job = job.id, instance = job.instance_id, %reason, "analysis failed");
                self.persist(job, "failure", || store.end_job(job, JobEnd::Failed, &reason)).await;
            }
            Verdict::Transient(reason) if job.attempts >= MAX_ATTEMPTS => {
                let reason = format!("gave up after {} attempts: {reason}", job.attempts);
                warn!(job = job.id, instance = job.instance_id, %reason, "analysis failed");
                self.persist(job, "failure", || store.end_job(job, JobEnd::Failed, &reason)).await;
            }
            Verdict::Transient(reason) => {
                let delay = Duration::from_secs(5 << (job.attempts.clamp(1, 6) - 1));
                warn!(job = job.id, attempt = job.attempts, %reason, "analysis will be retried in {delay:?}");
                self.persist(job, "retry", || store.retry_job(job, &reason, delay)).await;
            }
        }
    }

    /// Writes what became of a job, retrying with backoff while the database fails, so that a
    /// short outage delays the job by the outage and not by its lease. Gives up (leaving the job
    /// to its lease, or to the restart) at shutdown or when half the lease has passed.
    async fn persist<F, Fut>(&mut self, job: &ClaimedJob, what: &str, mut write: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = crate::store::Result<bool>>,
    {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            match write().await {
                Ok(true) => return,
                Ok(false) => {
                    return warn!(job = job.id, "the job was taken over by another node; its {what} is not recorded")
                }
                Err(e) if self.shutdown.is_triggered() || started.elapsed() + delay > self.limits.lease / 2 => {
                    return error!(
                        job = job.id,
                        error = %e,
                        "cannot record the job's {what}; it is taken up again when its lease expires or at restart"
                    );
                }
                Err(e) => {
                    warn!(job = job.id, error = %e, "cannot record the job's {what}; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.triggered() => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Writes made objects durably under `dir` (`<study>/<sop instance>.dcm`) and describes them
/// for their rows.
fn write_objects(settings: &OutputSettings, objects: Vec<MadeObject>) -> Result<Vec<NewOutput>, String> {
    objects
        .into_iter()
        .map(|o| {
            let (Some(study), Some(sop)) =
                (sanitize_uid(&o.uids.study_instance_uid), sanitize_uid(&o.uids.sop_instance_uid))
            else {
                return Err(format!("invalid UIDs for a {} ({})", o.kind, o.uids.sop_instance_uid));
            };
            let relative = format!("{study}/{sop}.dcm");
            write_durably(&settings.dir.join(&relative), &o.bytes).map_err(|e| e.to_string())?;
            let destinations = settings
                .destinations
                .iter()
                .filter(|(_, kinds)| kinds.contains(&o.kind))
                .map(|(name, _)| name.clone())
                .collect();
            Ok(NewOutput {
                destinations,
                kind: o.kind,
                sop_class_uid: o.uids.sop_class_uid.to_string(),
                sop_instance_uid: sop.to_string(),
                path: relative,
                size_bytes: o.bytes.len() as i64,
            })
        })
        .collect()
}

/// Reads a job's spool file and analyses it; never panics.
pub fn analyse_job(
    analyzer: &mut Analyzer,
    spool: &Spool,
    job: &ClaimedJob,
    outputs: &OutputSettings,
    limits: &Limits,
) -> Verdict {
    let path = spool.absolute(&job.path);
    match std::fs::metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Verdict::Failed(format!("the spool file {} is missing", job.path))
        }
        Err(e) => return Verdict::Transient(format!("cannot read the spool file {}: {e}", job.path)),
    }
    // Reading, decoding, the models and the objects run on untrusted bytes: a panic anywhere in
    // them fails this image alone, and the worker goes on.
    match catch_unwind(AssertUnwindSafe(|| analyse_file(analyzer, &path, job, outputs, limits))) {
        Ok(verdict) => verdict,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            Verdict::Failed(format!("internal error while analysing: {message}"))
        }
    }
}

fn analyse_file(
    analyzer: &mut Analyzer,
    path: &std::path::Path,
    job: &ClaimedJob,
    outputs: &OutputSettings,
    limits: &Limits,
) -> Verdict {
    // the structure is checked before dicom-rs parses the bytes, the pixels before a decoder does
    let obj = match imaging::open_checked(path, limits.max_dataset_bytes) {
        Ok(obj) => obj,
        Err(ImagingError::Io(e)) => return Verdict::Transient(format!("cannot read the spool file {}: {e}", job.path)),
        Err(e) => return Verdict::Failed(e.to_string()),
    };
    if let Some(reason) = not_applicable(&obj) {
        return Verdict::Skipped(format!("not applicable: {reason}"));
    }
    if let Err(e) = imaging::check_pixels(&obj, limits.max_pixels) {
        return Verdict::Failed(e.to_string());
    }
    match analyzer.analyze(&obj) {
        Ok(analysis) => {
            let made = make_objects(analyzer, &obj, &analysis, outputs, &job.path);
            Verdict::Analysed(Box::new(analysis), made)
        }
        Err(AnalyzeError::Imaging(ImagingError::NotGrayscale(why))) => {
            Verdict::Skipped(format!("not applicable: {why}"))
        }
        Err(AnalyzeError::Imaging(e)) => Verdict::Failed(e.to_string()),
        Err(AnalyzeError::Runtime(e)) => Verdict::Transient(e.to_string()),
    }
}

/// The result row of an analysis.
pub fn new_result(analyzer: &Analyzer, a: &Analysis) -> NewResult {
    let model = |m: &crate::inference::ModelSpec| [m.name.clone(), m.version.clone(), m.sha256.clone()];
    let t = &a.timings;
    NewResult {
        policy: analyzer.policy(),
        decision: a.decision,
        priority: a.priority,
        probability: a.probability as f64,
        width: a.width as i64,
        height: a.height as i64,
        mask_rle: a.mask_rle.clone(),
        mask_area_px: a.mask_area_px as i64,
        mask_area_mm2: a.mask_area_mm2,
        classifier: model(analyzer.classifier()),
        segmenter: model(analyzer.segmenter()),
        execution_provider: analyzer.execution_provider(),
        timings_ms: [t.decode_ms, t.preprocess_ms, t.inference_ms, t.postprocess_ms],
    }
}
