//! The analysis queue (one job per received instance version) and the results it produces.
//!
//! A job is claimed with a lease; only its claimant may finish it, so a job taken over after its
//! lease expired (a node died) is never finished twice. PostgreSQL claims with
//! `FOR UPDATE SKIP LOCKED`, so several nodes share one queue without blocking each other;
//! SQLite has one writer, so its single UPDATE is already atomic.

use std::time::Duration;

use sqlx::Acquire;

use super::ingest::insert_event;
use super::{now_ms, Backend, Event, Result, Store};

/// A job this node has claimed, with what the worker needs to find the instance.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: i64,
    pub instance_id: i64,
    /// Counting this one.
    pub attempts: i64,
    /// The spool file, relative to the spool directory.
    pub path: String,
    pub sop_instance_uid: String,
    pub study_id: i64,
}

/// How a job ends without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    /// Not analysable (not applicable, color, ...): recorded, not an error.
    Skipped,
    /// Cannot be analysed (corrupt pixel data, unreadable file) or gave up after retries.
    Failed,
}

/// A DICOM object made of a result, already written under `<data_dir>/outputs`.
#[derive(Debug, Clone)]
pub struct NewOutput {
    /// `seg`, `sr` or `overlay`.
    pub kind: &'static str,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// Relative to `<data_dir>/outputs`.
    pub path: String,
    pub size_bytes: i64,
    /// The destinations it is to be sent to: a delivery row each, in the same transaction.
    pub destinations: Vec<String>,
}

/// A result row: the analysis, the models that made it and where it ran.
#[derive(Debug, Clone)]
pub struct NewResult {
    pub policy: &'static str,
    pub decision: &'static str,
    pub priority: &'static str,
    pub probability: f64,
    pub width: i64,
    pub height: i64,
    pub mask_rle: String,
    pub mask_area_px: i64,
    pub mask_area_mm2: Option<f64>,
    /// Name, version and sha256 of the classifier, then of the segmenter.
    pub classifier: [String; 3],
    pub segmenter: [String; 3],
    pub execution_provider: &'static str,
    /// Decode, preprocess, inference and post-processing, in ms.
    pub timings_ms: [f64; 4],
}

const CLAIM_POSTGRES: &str = "UPDATE jobs SET state = 'running', claimed_by = $1, lease_expires_at = $2, \
            attempts = attempts + 1, updated_at = $3 \
     WHERE id = (SELECT id FROM jobs \
                 WHERE (state = 'queued' AND (not_before IS NULL OR not_before <= $3)) \
                    OR (state = 'running' AND lease_expires_at < $3) \
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
     RETURNING id, attempts";

const CLAIM_SQLITE: &str = "UPDATE jobs SET state = 'running', claimed_by = $1, lease_expires_at = $2, \
            attempts = attempts + 1, updated_at = $3 \
     WHERE id = (SELECT id FROM jobs \
                 WHERE (state = 'queued' AND (not_before IS NULL OR not_before <= $3)) \
                    OR (state = 'running' AND lease_expires_at < $3) \
                 ORDER BY id LIMIT 1) \
     RETURNING id, attempts";

/// A study's priority: the highest of its images' results.
const STUDY_PRIORITY: &str = "UPDATE studies SET priority = ( \
         SELECT CASE MAX(CASE r.priority WHEN 'urgent' THEN 3 WHEN 'review' THEN 2 ELSE 1 END) \
                WHEN 3 THEN 'urgent' WHEN 2 THEN 'review' WHEN 1 THEN 'routine' END \
         FROM results r JOIN instances i ON i.id = r.instance_id WHERE i.study_id = $1) \
     WHERE id = $1";

impl Store {
    /// Claims the oldest job that is due (queued, or running under an expired lease) for `lease`.
    pub async fn claim_job(&self, lease: Duration) -> Result<Option<ClaimedJob>> {
        let now = now_ms();
        let sql = match self.backend() {
            Backend::Postgres => CLAIM_POSTGRES,
            Backend::Sqlite => CLAIM_SQLITE,
        };
        let claimed: Option<(i64, i64)> = sqlx::query_as(sql)
            .bind(self.node())
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .fetch_optional(self.pool())
            .await?;
        let Some((id, _attempts)) = claimed else { return Ok(None) };
        let job = sqlx::query_as(
            "SELECT j.id, j.instance_id, j.attempts, i.path, i.sop_instance_uid, i.study_id \
             FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE j.id = $1",
        )
        .bind(id)
        .fetch_one(self.pool())
        .await?;
        Ok(Some(job))
    }

    /// Writes a job's result and the objects made of it, marks the job done and raises its
    /// study's priority, in one transaction. Returns false (and writes nothing) when the job is
    /// no longer this node's.
    pub async fn record_result(&self, job: &ClaimedJob, result: &NewResult, outputs: &[NewOutput]) -> Result<bool> {
        let mut conn = self.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        let now = now_ms();
        if !finish(&mut *tx, self.node(), job.id, "done", None, now).await? {
            return Ok(false);
        }
        let [cn, cv, cs] = &result.classifier;
        let [sn, sv, ss] = &result.segmenter;
        let [decode, preprocess, inference, postprocess] = result.timings_ms;
        let (result_id,): (i64,) = sqlx::query_as(
            "INSERT INTO results (instance_id, job_id, policy, decision, priority, probability, width, height, \
                 mask_rle, mask_area_px, mask_area_mm2, classifier_name, classifier_version, classifier_sha256, \
                 segmenter_name, segmenter_version, segmenter_sha256, execution_provider, decode_ms, \
                 preprocess_ms, inference_ms, postprocess_ms, node, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
                 $21, $22, $23, $24) RETURNING id",
        )
        .bind(job.instance_id)
        .bind(job.id)
        .bind(result.policy)
        .bind(result.decision)
        .bind(result.priority)
        .bind(result.probability)
        .bind(result.width)
        .bind(result.height)
        .bind(&result.mask_rle)
        .bind(result.mask_area_px)
        .bind(result.mask_area_mm2)
        .bind(cn)
        .bind(cv)
        .bind(cs)
        .bind(sn)
        .bind(sv)
        .bind(ss)
        .bind(result.execution_provider)
        .bind(decode)
        .bind(preprocess)
        .bind(inference)
        .bind(postprocess)
        .bind(self.node())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        for output in outputs {
            let (output_id,): (i64,) = sqlx::query_as(
                "INSERT INTO outputs (result_id, kind, sop_class_uid, sop_instance_uid, path, size_bytes, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(result_id)
            .bind(output.kind)
            .bind(&output.sop_class_uid)
            .bind(&output.sop_instance_uid)
            .bind(&output.path)
            .bind(output.size_bytes)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            for destination in &output.destinations {
                sqlx::query(
                    "INSERT INTO deliveries (output_id, destination, state, next_attempt_at, created_at, updated_at) \
                     VALUES ($1, $2, 'pending', $3, $3, $3)",
                )
                .bind(output_id)
                .bind(destination)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query(STUDY_PRIORITY).bind(job.study_id).execute(&mut *tx).await?;
        tx.commit().await?;
        if outputs.iter().any(|o| !o.destinations.is_empty()) {
            self.signal_deliveries();
        }
        Ok(true)
    }

    /// Ends a job without a result, with its reason (failures also go to the audit trail).
    /// Returns false when the job is no longer this node's.
    pub async fn end_job(&self, job: &ClaimedJob, end: JobEnd, reason: &str) -> Result<bool> {
        let mut conn = self.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        let state = match end {
            JobEnd::Skipped => "skipped",
            JobEnd::Failed => "failed",
        };
        if !finish(&mut *tx, self.node(), job.id, state, Some(reason), now_ms()).await? {
            return Ok(false);
        }
        if end == JobEnd::Failed {
            let event = Event {
                kind: "analysis_failed",
                sop_instance_uid: Some(&job.sop_instance_uid),
                detail: Some(reason),
                ..Default::default()
            };
            insert_event(&mut *tx, self.node(), &event).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Puts a job back in the queue after a transient error, not to be claimed before `delay`.
    pub async fn retry_job(&self, job: &ClaimedJob, reason: &str, delay: Duration) -> Result<bool> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', reason = $1, not_before = $2, claimed_by = NULL, \
                 lease_expires_at = NULL, updated_at = $3 \
             WHERE id = $4 AND state = 'running' AND claimed_by = $5",
        )
        .bind(reason)
        .bind(now + delay.as_millis() as i64)
        .bind(now)
        .bind(job.id)
        .bind(self.node())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Puts back in the queue the jobs that were left `running`: those claimed by this node (it
    /// was stopped or crashed while analysing) and those whose lease has expired (another node died).
    /// Returns how many were re-queued.
    pub async fn requeue_abandoned_jobs(&self) -> Result<u64> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', claimed_by = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE state = 'running' AND (claimed_by = $2 OR claimed_by IS NULL \
                                          OR lease_expires_at IS NULL OR lease_expires_at < $1)",
        )
        .bind(now)
        .bind(self.node())
        .execute(self.pool())
        .await?;
        let n = done.rows_affected();
        if n > 0 {
            let detail = format!("{n} job(s) left running were re-queued");
            self.record_event(&Event { kind: "jobs_requeued", detail: Some(&detail), ..Default::default() }).await?;
        }
        Ok(n)
    }

    /// Counts jobs by state, for `status` and tests.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state")
            .fetch_all(self.pool())
            .await?)
    }
}

/// Moves a job this node holds to a final state; false when it is not (or no longer) ours.
async fn finish<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    executor: E,
    node: &str,
    job_id: i64,
    state: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET state = $1, reason = $2, claimed_by = NULL, lease_expires_at = NULL, updated_at = $3 \
         WHERE id = $4 AND state = 'running' AND claimed_by = $5",
    )
    .bind(state)
    .bind(reason)
    .bind(now)
    .bind(job_id)
    .bind(node)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}
