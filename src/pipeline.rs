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

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tracing::{debug, error, info, warn};

use rayon::prelude::*;

use crate::bucket::{Area, BucketError};
use crate::domain::ShadowOutcome;
use crate::domain::SkipCause;
use crate::imaging;
use crate::inference::analyse::{Analyser, Analysis, Preparation};
use crate::inference::batch::{analyse_images, guarded, read_checked, Checked, ReadLimits, Unanalysed};
use crate::inference::checks::Skip;
use crate::results::{make_not_analysed, make_objects, MadeObject, OutputSettings};
use crate::shutdown::Shutdown;
use crate::spool::{sanitize_uid, write_all_durably, Spool};
use crate::store::{ClaimedJob, Finished, JobEnd, JobScope, NewOutput, NewResult, NewShadowResult, Store};

/// Attempts before a job with transient errors is failed.
pub const MAX_ATTEMPTS: i64 = 4;
/// How often the queue is polled when nothing signals new work (retries that fall due, jobs
/// queued by other nodes, expired leases).
const POLL: Duration = Duration::from_secs(2);

/// What became of one job's analysis (not a radiologist's verdict on a result: see `reports`).
#[derive(Debug)]
pub enum JobOutcome {
    Analysed(Box<Analysis>, Vec<MadeObject>),
    Skipped(Skip),
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
    /// `inference.batch_size` and `inference.batch_wait_ms`.
    pub batch_size: usize,
    pub batch_wait: Duration,
}

impl Pipeline {
    /// Starts one inference thread per analyser. Each claims its own jobs, so a job is `running`
    /// only while a worker analyses it: the crash-loop breaker counts exactly the jobs that were
    /// in a worker's hands when the node died.
    pub fn start(
        store: Store,
        spool: Arc<Spool>,
        models: Vec<Models>,
        outputs: OutputSettings,
        limits: Limits,
        scope: JobScope,
        shutdown: Shutdown,
    ) -> Pipeline {
        let handle = Handle::current();
        let alone = Arc::new(std::sync::RwLock::new(()));
        let workers = models
            .into_iter()
            .enumerate()
            .map(|(n, mut models)| {
                // the secondary capture is drawn on the displayed source
                models.production.keep_views |= outputs.outputs.overlay;
                let worker = Worker {
                    models,
                    spool: spool.clone(),
                    store: store.clone(),
                    scope,
                    alone: alone.clone(),
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
    models: Models,
    spool: Arc<Spool>,
    store: Store,
    /// Which jobs it may claim.
    scope: JobScope,
    /// Shared by the node's workers: a job a node died analysing is claimed and analysed under
    /// its write side, every other batch under its read side, so that when an image kills the
    /// node no other worker's image is in hand to be counted against it.
    alone: Arc<std::sync::RwLock<()>>,
    shutdown: Shutdown,
    runtime: Handle,
    outputs: OutputSettings,
    limits: Limits,
}

impl Worker {
    fn run(mut self) {
        let alone = self.alone.clone();
        while let Some(interrupted) = self.runtime.clone().block_on(self.wait_for_a_job()) {
            // A job a node died analysing is analysed alone, in the node as in its batch: the
            // image that kills the node is then found, and quarantined, without another's
            // image counted with it. The other batches run side by side. The gate is held
            // until the batch is recorded.
            let (_alone, _shared);
            let jobs: Vec<ClaimedJob> = if interrupted {
                _alone = alone.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                self.runtime.clone().block_on(self.claim(Some(true))).into_iter().collect()
            } else {
                _shared = alone.read().unwrap_or_else(|poisoned| poisoned.into_inner());
                self.runtime.clone().block_on(self.claim_batch())
            };
            if jobs.is_empty() {
                continue; // another worker or node took it
            }
            let mut due = Vec::with_capacity(jobs.len());
            for job in jobs {
                if job.interruptions < i64::from(self.limits.quarantine_after) {
                    due.push(job);
                    continue;
                }
                // a node died while analysing it as often as we allow (this one, before its
                // restart, or another whose lease ran out)
                let reason = format!(
                    "quarantined: a node stopped {} time(s) while analysing this image; it is not analysed again \
                     (`pneumotriage requeue` tries once more)",
                    job.interruptions
                );
                error!(
                    job = job.id,
                    sop_instance_uid = %job.sop_instance_uid,
                    %reason,
                    "quarantined an image; it is reported \"not analysed\""
                );
                // not opened again: the report goes by message only
                self.runtime.clone().block_on(self.end_unanalysed(
                    &job,
                    JobEnd::Quarantined,
                    &reason,
                    Report::Unopened,
                ));
            }
            let due = self.runtime.clone().block_on(self.fetch_files(due));
            let (verdicts, mut images) =
                analyse_jobs(&mut self.models.production, &self.spool, &due, &self.outputs, &self.limits);
            if self.models.shadows.is_empty() {
                images.clear(); // the decoded files are not kept through the commit for nothing
            }
            let recorded = self.runtime.clone().block_on(self.record(&due, verdicts));
            if !self.models.shadows.is_empty() {
                self.shadow(&due, images, &recorded);
            }
        }
    }

    /// Fetches from the bucket the spool files of jobs that another node received (a no-op
    /// without one). A file that cannot be fetched now is retried later; one the bucket does
    /// not hold goes on, and its job fails as a missing file does.
    async fn fetch_files(&mut self, jobs: Vec<ClaimedJob>) -> Vec<ClaimedJob> {
        let fetched = futures_util::future::join_all(jobs.iter().map(|job| self.spool.fetch(&job.path))).await;
        let mut ready = Vec::with_capacity(jobs.len());
        for (job, fetched) in jobs.into_iter().zip(fetched) {
            match fetched {
                Ok(()) | Err(BucketError::Missing { .. }) => ready.push(job),
                Err(e) => self.end(&job, JobOutcome::Transient(format!("cannot fetch the spool file: {e}"))).await,
            }
        }
        ready
    }

    /// Runs the shadow versions on the images whose production result is recorded, and records
    /// what they made of them. After production's commit: a shadow delays the next batch, never
    /// this one's results.
    fn shadow(&mut self, jobs: &[ClaimedJob], images: Vec<Option<Image>>, recorded: &[bool]) {
        let (jobs, images): (Vec<&ClaimedJob>, Vec<Image>) = jobs
            .iter()
            .zip(images)
            .zip(recorded)
            .filter_map(|((job, image), recorded)| image.filter(|_| *recorded).map(|image| (job, image)))
            .unzip();
        let Some(&first) = jobs.first() else { return };
        let refs: Vec<&Checked> = images.iter().map(|image| &**image).collect();
        let rows = run_shadows(&mut self.models.shadows, &jobs, &refs);
        drop(images);
        let store = self.store.clone();
        self.runtime
            .clone()
            .block_on(self.persist_with(first, "shadow results", || store.record_shadow_results(&rows)));
    }

    /// Waits until a job is due (a queued-job signal or the poll interval), backing off while
    /// the database is unreachable: whether it is one a node died analysing. `None` once the
    /// pipeline stops. Claims nothing: the claim is made under the gate that its kind needs.
    async fn wait_for_a_job(&mut self) -> Option<bool> {
        let mut backoff = Duration::from_millis(500);
        loop {
            if self.shutdown.is_triggered() {
                return None;
            }
            let queued = self.store.jobs_queued().notified();
            match self.store.due_job(self.scope).await {
                Ok(Some(interrupted)) => return Some(interrupted),
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

    /// Claims a due job of the kind asked for (see [`Store::claim_job_of`]); `None` when there
    /// is none now, the database failing, or the pipeline stopping.
    async fn claim(&self, interrupted: Option<bool>) -> Option<ClaimedJob> {
        if self.shutdown.is_triggered() {
            return None;
        }
        match self.store.claim_job_of(self.limits.lease, self.scope, interrupted).await {
            Ok(job) => {
                if let Some(job) = &job {
                    debug!(job = job.id, attempt = job.attempts, "job claimed");
                }
                job
            }
            Err(e) => {
                warn!(error = %e, "cannot claim an analysis job; retrying in a second");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.shutdown.triggered() => {}
                }
                None
            }
        }
    }

    /// A batch of jobs no node died analysing: those due now, up to `inference.batch_size`,
    /// waiting up to `inference.batch_wait_ms` for more. Empty when none is due any more.
    async fn claim_batch(&self) -> Vec<ClaimedJob> {
        let Some(first) = self.claim(Some(false)).await else { return Vec::new() };
        let mut jobs = vec![first];
        let deadline = tokio::time::Instant::now() + self.limits.batch_wait;
        while jobs.len() < self.limits.batch_size && !self.shutdown.is_triggered() {
            let queued = self.store.jobs_queued().notified();
            match self.claim(Some(false)).await {
                Some(job) => jobs.push(job),
                None if tokio::time::Instant::now() < deadline => {
                    tokio::select! {
                        _ = queued => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = self.shutdown.triggered() => {}
                    }
                }
                // nothing more due, or the database failing: the batch in hand goes on
                None => break,
            }
        }
        jobs
    }

    /// Records a batch's verdicts: its results (their objects written durably first) in one
    /// transaction, the other endings each in its own. Whether each job's result is recorded.
    async fn record(&mut self, jobs: &[ClaimedJob], verdicts: Vec<JobOutcome>) -> Vec<bool> {
        let mut recorded = vec![false; jobs.len()];
        let mut analysed = Vec::new();
        for (job, verdict) in jobs.iter().zip(verdicts) {
            match verdict {
                JobOutcome::Analysed(analysis, objects) => analysed.push((job, analysis, objects)),
                other => self.end(job, other).await,
            }
        }
        if analysed.is_empty() {
            return recorded;
        }
        let objects: Vec<Vec<MadeObject>> =
            analysed.iter_mut().map(|(_, _, objects)| std::mem::take(objects)).collect();
        let written = match write_objects(&self.outputs, objects, false) {
            Ok(outputs) => upload_objects(&self.outputs, &outputs).await.map(|()| outputs),
            Err(e) => Err(e),
        };
        let outputs = match written {
            Ok(outputs) => outputs,
            Err(e) => {
                // The disk is full or unwritable: try again later rather than lose the objects.
                for (job, _, _) in &analysed {
                    warn!(job = job.id, error = %e, "cannot write the result's objects; will retry");
                    let reason = format!("cannot write outputs: {e}");
                    let store = self.store.clone();
                    self.persist(job, "retry", || store.retry_job(job, &reason, Duration::from_secs(30))).await;
                }
                return recorded;
            }
        };
        let results: Vec<NewResult> = analysed.iter().map(|(_, a, _)| new_result(&self.models.production, a)).collect();
        for ((job, analysis, _), result) in analysed.iter().zip(&results) {
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
                batch = analysed.len(),
                "analysed"
            );
            let stages = [
                ("decode", t.decode_ms),
                ("preprocess", t.preprocess_ms),
                ("inference", t.inference_ms),
                ("postprocess", t.postprocess_ms),
            ];
            crate::metrics::result(result.decision, result.priority, stages);
            let [name, version, _] = &result.classifier;
            crate::metrics::drift(&format!("{name} {version}"), result.decision, analysis.probability, analysis.input);
        }
        let batch: Vec<Finished> = analysed
            .iter()
            .zip(&results)
            .zip(&outputs)
            .map(|(((job, _, _), result), outputs)| Finished { job, result, outputs })
            .collect();
        let store = self.store.clone();
        let rules = self.outputs.messages.clone();
        let first = analysed[0].0;
        let what = if batch.len() == 1 { "result".to_string() } else { format!("batch of {} results", batch.len()) };
        if let Some(written) = self.persist_with(first, &what, || store.record_results(&batch, &rules)).await {
            for (finished, written) in batch.iter().zip(written) {
                if written {
                    recorded[jobs.iter().position(|j| j.id == finished.job.id).expect("a job of the batch")] = true;
                } else {
                    warn!(job = finished.job.id, "the job was taken over by another node; its result is not recorded");
                }
            }
        }
        recorded
    }

    /// Records a job's ending other than a result.
    async fn end(&mut self, job: &ClaimedJob, verdict: JobOutcome) {
        let store = self.store.clone();
        match verdict {
            JobOutcome::Analysed(..) => unreachable!("results are recorded by the batch"),
            JobOutcome::Skipped(Skip { cause: SkipCause::Selection, reason }) => {
                info!(job = job.id, instance = job.instance_id, %reason, "not selected");
                crate::metrics::skipped(SkipCause::Selection);
                self.persist(job, "skip", || store.end_job(job, JobEnd::Skipped, &reason)).await;
            }
            JobOutcome::Skipped(Skip { cause, reason }) => {
                info!(job = job.id, instance = job.instance_id, %cause, %reason, "skipped");
                crate::metrics::skipped(cause);
                self.end_unanalysed(job, JobEnd::Skipped, &reason, Report::Selected).await;
            }
            JobOutcome::Failed(reason) => {
                warn!(job = job.id, instance = job.instance_id, %reason, "analysis failed");
                self.end_unanalysed(job, JobEnd::Failed, &reason, Report::IfSelected).await;
            }
            JobOutcome::Transient(reason) if job.attempts >= MAX_ATTEMPTS => {
                let reason = format!("gave up after {} attempts: {reason}", job.attempts);
                warn!(job = job.id, instance = job.instance_id, %reason, "analysis failed");
                self.end_unanalysed(job, JobEnd::Failed, &reason, Report::IfSelected).await;
            }
            JobOutcome::Transient(reason) => {
                let delay = Duration::from_secs(5 << (job.attempts.clamp(1, 6) - 1));
                warn!(job = job.id, attempt = job.attempts, %reason, "analysis will be retried in {delay:?}");
                self.persist(job, "retry", || store.retry_job(job, &reason, delay)).await;
            }
        }
    }

    /// Ends the job of an image the node could not analyse and, when the selection rules chose
    /// it (or its file cannot say), reports it "not analysed": its SR written and uploaded before
    /// the rows (as a result's objects are), the notice and the messages with the job's ending.
    /// Where the SR cannot be written, the report goes by message alone rather than not at all.
    async fn end_unanalysed(&mut self, job: &ClaimedJob, end: JobEnd, reason: &str, report: Report) {
        let store = self.store.clone();
        let Some(objects) = self.not_analysed_objects(job, reason, report) else {
            self.persist(job, "ending", || store.end_job(job, end, reason)).await;
            return;
        };
        let written = match write_objects(&self.outputs, vec![objects], true) {
            Ok(outputs) => upload_objects(&self.outputs, &outputs).await.map(|()| outputs),
            Err(e) => Err(e),
        };
        let outputs = written.unwrap_or_else(|e| {
            warn!(job = job.id, error = %e, "cannot write the \"not analysed\" report; it goes by message only");
            Vec::new()
        });
        let outputs = outputs.into_iter().flatten().collect::<Vec<_>>();
        crate::metrics::not_analysed(end.as_str());
        let rules = self.outputs.messages.clone();
        self.persist(job, "ending", || store.record_not_analysed(job, end, reason, &outputs, &rules)).await;
    }

    /// The "not analysed" objects of a job's image, or `None` when the selection rules did not
    /// choose it (no report then). A file that cannot be opened (or `Report::Unopened`) has
    /// no objects made of it.
    fn not_analysed_objects(&self, job: &ClaimedJob, reason: &str, report: Report) -> Option<Vec<MadeObject>> {
        if report == Report::Unopened {
            return Some(Vec::new());
        }
        let path = self.spool.absolute(&job.path);
        let analyser = &self.models.production;
        let made = guarded(|| {
            let image = imaging::open_checked(&path, self.limits.max_dataset_bytes)
                .map_err(|e| Unanalysed::Failed(e.to_string()))?;
            if report == Report::IfSelected && !analyser.preparation().selected(&image, &job.calling_ae) {
                return Ok(None);
            }
            Ok(Some(make_not_analysed(analyser, &image, reason, &self.outputs, &job.path)))
        });
        made.unwrap_or_else(|why| {
            debug!(job = job.id, ?why, "the image cannot be opened for its \"not analysed\" report");
            Some(Vec::new())
        })
    }

    /// Writes what became of a job (see [`Worker::persist_with`]); false from the store means
    /// another node took the job over.
    async fn persist<F, Fut>(&mut self, job: &ClaimedJob, what: &str, write: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = crate::store::Result<bool>>,
    {
        if self.persist_with(job, what, write).await == Some(false) {
            warn!(job = job.id, "the job was taken over by another node; its {what} is not recorded");
        }
    }

    /// Writes what became of a job (or of a batch, `job` its first), retrying with backoff while
    /// the database fails, so that a short outage delays the job by the outage and not by its
    /// lease. Gives up (leaving the job to its lease, or to the restart) at shutdown or when half
    /// the lease has passed: `None`.
    async fn persist_with<T, F, Fut>(&mut self, job: &ClaimedJob, what: &str, mut write: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = crate::store::Result<T>>,
    {
        let started = std::time::Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            match write().await {
                Ok(written) => return Some(written),
                Err(e) if self.shutdown.is_triggered() || started.elapsed() + delay > self.limits.lease / 2 => {
                    error!(
                        job = job.id,
                        error = %e,
                        "cannot record the job's {what}; it is taken up again when its lease expires or at restart"
                    );
                    return None;
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

/// Whether a job ended without a result is reported "not analysed".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    /// The selection rules chose it (an input check turned it away after them).
    Selected,
    /// It failed, maybe before the rules saw it: asked again of its file.
    IfSelected,
    /// Quarantined: it is not opened again, so it is reported with no object of it.
    Unopened,
}

/// Writes each result's objects under `dir` (`<study>/<sop instance>.dcm`) durably with two
/// file-system syncs for the whole batch, not two per object, and describes them for their
/// rows (one list per result; `not_analysed`: "not analysed" reports, which only the
/// destinations that take them are sent).
fn write_objects(
    settings: &OutputSettings,
    objects: Vec<Vec<MadeObject>>,
    not_analysed: bool,
) -> Result<Vec<Vec<NewOutput>>, String> {
    let files: Vec<(String, &[u8])> = objects
        .iter()
        .flatten()
        .map(|o| match (sanitize_uid(&o.uids.study_instance_uid), sanitize_uid(&o.uids.sop_instance_uid)) {
            (Some(study), Some(sop)) => Ok((format!("{study}/{sop}.dcm"), o.bytes.as_slice())),
            _ => Err(format!("invalid UIDs for a {} ({})", o.kind, o.uids.sop_instance_uid)),
        })
        .collect::<Result<_, _>>()?;
    write_all_durably(&settings.dir, &files).map_err(|e| e.to_string())?;
    let mut paths = files.into_iter().map(|(path, _)| path).collect::<Vec<_>>().into_iter();
    Ok(objects
        .into_iter()
        .map(|made| {
            made.into_iter()
                .map(|o| {
                    let destinations = settings
                        .destinations
                        .iter()
                        .filter(|route| route.takes(o.kind, not_analysed))
                        .map(|route| route.name.clone())
                        .collect();
                    NewOutput {
                        destinations,
                        kind: o.kind,
                        sop_class_uid: o.uids.sop_class_uid.to_string(),
                        sop_instance_uid: sanitize_uid(&o.uids.sop_instance_uid).unwrap_or_default().to_string(),
                        path: paths.next().expect("a path per object"),
                        size_bytes: o.bytes.len() as i64,
                    }
                })
                .collect()
        })
        .collect())
}

/// Stores the objects just written in the bucket, if there is one, before their rows are
/// committed: a delivery row then always finds its object, on any node.
async fn upload_objects(settings: &OutputSettings, outputs: &[Vec<NewOutput>]) -> Result<(), String> {
    let Some(bucket) = &settings.bucket else { return Ok(()) };
    let uploads = outputs.iter().flatten().map(|o| async move {
        let local = settings.dir.join(&o.path);
        bucket.upload(Area::Outputs, &o.path, &local).await
    });
    futures_util::future::join_all(uploads).await.into_iter().collect::<Result<(), _>>().map_err(|e| e.to_string())
}

/// A job's image, read and checked: ready for the models.
type Image = Box<Checked>;

impl From<Unanalysed> for JobOutcome {
    fn from(why: Unanalysed) -> JobOutcome {
        match why {
            Unanalysed::Skipped(skip) => JobOutcome::Skipped(skip),
            Unanalysed::Failed(reason) => JobOutcome::Failed(reason),
            Unanalysed::Transient(reason) => JobOutcome::Transient(reason),
        }
    }
}

/// Reads and checks each job's image on every core, runs the batch through the models together
/// (`inference::batch`), then makes each one's objects; never panics. A verdict per job, in
/// order, and the image of each analysed one (the shadow versions see it next).
pub fn analyse_jobs(
    analyser: &mut Analyser,
    spool: &Spool,
    jobs: &[ClaimedJob],
    outputs: &OutputSettings,
    limits: &Limits,
) -> (Vec<JobOutcome>, Vec<Option<Image>>) {
    let preparation = analyser.preparation();
    let read: Vec<Result<Image, Unanalysed>> =
        jobs.par_iter().map(|job| guarded(|| read_job(&preparation, spool, job, limits))).collect();
    let images: Vec<&Checked> = read.iter().filter_map(|r| r.as_deref().ok()).collect();
    let mut analyses = analyse_images(analyser, &images).into_iter();
    let outcomes: Vec<Result<(Image, Analysis), Unanalysed>> = read
        .into_iter()
        .map(|read| {
            let image = read?;
            Ok((image, analyses.next().expect("an outcome per image")?))
        })
        .collect();
    let analyser = &*analyser;
    outcomes
        .into_par_iter()
        .zip(jobs)
        .map(|(outcome, job)| {
            let made = outcome.and_then(|(image, analysis)| {
                let made = guarded(|| Ok(make_objects(analyser, &image.image, &analysis, outputs, &job.path)))?;
                Ok((JobOutcome::Analysed(Box::new(analysis), made), Some(image)))
            });
            made.unwrap_or_else(|why| (why.into(), None))
        })
        .unzip()
}

/// A shadow version ([[inference.shadow]]): its name and its own sessions.
pub struct Shadow {
    pub name: String,
    pub analyser: Analyser,
}

/// What an inference worker runs: the production models, then each shadow version.
pub struct Models {
    pub production: Analyser,
    pub shadows: Vec<Shadow>,
}

impl Models {
    /// The same models on the same sessions ([`Analyser::share`]): a GPU's second worker.
    pub fn share(&self) -> Models {
        let shadows = self.shadows.iter().map(|s| Shadow { name: s.name.clone(), analyser: s.analyser.share() });
        Models { production: self.production.share(), shadows: shadows.collect() }
    }
}

/// What each shadow version makes of the images production analysed: a row per shadow and
/// image. A shadow's failure is its own; production's results are already recorded.
fn run_shadows(shadows: &mut [Shadow], jobs: &[&ClaimedJob], images: &[&Checked]) -> Vec<NewShadowResult> {
    let mut rows = Vec::with_capacity(shadows.len() * jobs.len());
    for shadow in shadows {
        let outcomes = analyse_images(&mut shadow.analyser, images);
        for (job, outcome) in jobs.iter().zip(outcomes) {
            let mut row = NewShadowResult {
                instance_id: job.instance_id,
                shadow: shadow.name.clone(),
                outcome: ShadowOutcome::Analysed,
                reason: None,
                decision: None,
                priority: None,
                probability: None,
                mask_area_px: None,
                classifier: shadow.analyser.classifier().identity(),
                segmenter: shadow.analyser.segmenter().identity(),
                inference_ms: None,
            };
            match outcome {
                Ok(a) => {
                    debug!(job = job.id, shadow = %shadow.name, decision = %a.decision, probability = a.probability, "shadow analysed");
                    row.decision = Some(a.decision);
                    row.priority = Some(a.priority);
                    row.probability = Some(a.probability as f64);
                    row.mask_area_px = Some(a.mask_area_px as i64);
                    row.inference_ms = Some(a.timings.inference_ms);
                }
                Err(Unanalysed::Skipped(skip)) => {
                    row.outcome = ShadowOutcome::Skipped;
                    row.reason = Some(skip.reason);
                }
                Err(Unanalysed::Failed(reason) | Unanalysed::Transient(reason)) => {
                    warn!(job = job.id, shadow = %shadow.name, %reason, "shadow analysis failed");
                    row.outcome = ShadowOutcome::Failed;
                    row.reason = Some(reason);
                }
            }
            rows.push(row);
        }
    }
    rows
}

/// Reads a job's spool file and checks it (`inference::batch::read_checked`).
fn read_job(preparation: &Preparation, spool: &Spool, job: &ClaimedJob, limits: &Limits) -> Result<Image, Unanalysed> {
    let path = spool.absolute(&job.path);
    std::fs::metadata(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Unanalysed::Failed(format!("the spool file {} is missing", job.path)),
        _ => Unanalysed::Transient(format!("cannot read the spool file {}: {e}", job.path)),
    })?;
    let limits = ReadLimits { max_dataset_bytes: limits.max_dataset_bytes, max_pixels: limits.max_pixels };
    Ok(Box::new(read_checked(preparation, &path, &job.calling_ae, limits)?))
}

/// The result row of an analysis.
pub fn new_result(analyser: &Analyser, a: &Analysis) -> NewResult {
    let t = &a.timings;
    NewResult {
        policy: analyser.policy(),
        decision: a.decision,
        priority: a.priority,
        probability: a.probability as f64,
        width: a.width as i64,
        height: a.height as i64,
        mask_rle: a.mask_rle.clone(),
        mask_area_px: a.mask_area_px as i64,
        mask_area_mm2: a.mask_area_mm2,
        classifier: analyser.classifier().identity(),
        segmenter: analyser.segmenter().identity(),
        execution_provider: analyser.execution_provider(),
        timings_ms: [t.decode_ms, t.preprocess_ms, t.inference_ms, t.postprocess_ms],
    }
}
