//! The analysis queue (one job per received instance version) and the results it produces.
//!
//! A job is claimed with a lease; only its claimant may finish it, so a job taken over after its
//! lease expired (a node died) is never finished twice. PostgreSQL claims with
//! `FOR UPDATE SKIP LOCKED`, so several nodes share one queue without blocking each other;
//! SQLite has one writer, so its single UPDATE is already atomic.

use std::time::Duration;

use sqlx::AnyConnection;

use super::ingest::insert_event;
use super::messages::{make_messages, not_analysed_control_id};
use super::{Backend, Event, Result, Store};
use crate::config::Config;
use crate::domain::{storable_text, Decision, EventKind, JobState, MessageRule, ObjectKind, Policy, Priority};

/// A job this node has claimed, with what the worker needs to find the instance.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: i64,
    pub instance_id: i64,
    /// Counting this one.
    pub attempts: i64,
    /// How often the node stopped while this job was being analysed (this claim included when it
    /// took the job over from an expired lease).
    pub interruptions: i64,
    /// The spool file, relative to the spool directory.
    pub path: String,
    pub sop_instance_uid: String,
    pub study_id: i64,
    /// The calling AE title it came from (the selection rules may name it).
    pub calling_ae: String,
}

/// How a job ends without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    /// Not analysable (not applicable, color, ...): recorded, not an error.
    Skipped,
    /// Cannot be analysed (corrupt pixel data, unreadable file) or gave up after retries.
    Failed,
    /// The node stopped too often while analysing it: failed, and marked so that the worklist
    /// says why (see [`Store::recover_interrupted_jobs`]).
    Quarantined,
}

impl JobEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            JobEnd::Skipped => "skipped",
            JobEnd::Failed => "failed",
            JobEnd::Quarantined => "quarantined",
        }
    }
}

/// What start-up recovery did with the jobs a stopped node had left running.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InterruptedJobs {
    pub requeued: u64,
    /// The SOP Instance UIDs of those among them interrupted as often as allowed: the worker
    /// that takes each quarantines it.
    pub to_quarantine: Vec<String>,
}

/// A DICOM object made of a result, already written under `<data_dir>/outputs`.
#[derive(Debug, Clone)]
pub struct NewOutput {
    pub kind: ObjectKind,
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
    pub policy: Policy,
    pub decision: Decision,
    pub priority: Priority,
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

/// A job's analysis, ready to be recorded.
pub struct Finished<'a> {
    pub job: &'a ClaimedJob,
    pub result: &'a NewResult,
    pub outputs: &'a [NewOutput],
}

/// The jobs (`j`, of instances `i`) due at `$now` that node `$node` may claim (`$any` = 1: any
/// spool), one text for the claim and [`Store::due_job`].
macro_rules! due_jobs {
    ($node:literal, $now:literal, $any:literal) => {
        concat!(
            "((j.state = 'queued' AND (j.not_before IS NULL OR j.not_before <= ",
            $now,
            ")) \
               OR (j.state = 'running' AND j.lease_expires_at < ",
            $now,
            ")) \
             AND (",
            $any,
            " = 1 OR i.node IS NULL OR i.node = ",
            $node,
            ")"
        )
    };
}

/// Whether a job is one a node died analysing: interrupted before, or running under an
/// expired lease.
macro_rules! interrupted {
    () => {
        "(j.interruptions > 0 OR j.state = 'running')"
    };
}

/// The claim: one statement for both backends but for the row lock, which only PostgreSQL has
/// (SQLite has one writer, so its single UPDATE is already atomic).
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE jobs SET state = 'running', claimed_by = $1, lease_expires_at = $2, \
                attempts = attempts + 1, updated_at = $3, \
                interruptions = interruptions + CASE WHEN state = 'running' THEN 1 ELSE 0 END \
             WHERE id = (SELECT j.id FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE ",
            due_jobs!("$1", "$3", "$4"),
            " AND ($5 = 2 OR ",
            interrupted!(),
            " = ($5 = 1)) ORDER BY j.id LIMIT 1 ",
            $lock,
            ") RETURNING id, attempts"
        )
    };
}

const CLAIM_POSTGRES: &str = claim_sql!("FOR UPDATE OF j SKIP LOCKED");
const CLAIM_SQLITE: &str = claim_sql!("");

/// What an admin's `requeue` of an analysis did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    Queued,
    /// The instance has no failed job.
    NotFailed,
    /// Retention let the image go: there is nothing left to analyse.
    Released,
}

/// Which jobs a node may claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobScope {
    /// Those of the instances it keeps itself (`node.shared_spool = false`): another node's
    /// spool is not readable here, so its jobs wait for it.
    OwnSpool,
    /// Any job: every node reads the same spool (`node.shared_spool = true`, or a bucket).
    AnySpool,
}

impl JobScope {
    /// The scope of a node with this configuration ([`Config::spool_is_shared`]).
    pub fn of(config: &Config) -> JobScope {
        if config.spool_is_shared() {
            JobScope::AnySpool
        } else {
            JobScope::OwnSpool
        }
    }
}

/// A study's priority: the highest of its images' results.
const STUDY_PRIORITY: &str = "UPDATE studies SET priority = ( \
         SELECT CASE MAX(CASE r.priority WHEN 'urgent' THEN 3 WHEN 'review' THEN 2 ELSE 1 END) \
                WHEN 3 THEN 'urgent' WHEN 2 THEN 'review' WHEN 1 THEN 'routine' END \
         FROM results r JOIN instances i ON i.id = r.instance_id WHERE i.study_id = $1) \
     WHERE id = $1";

/// Holds a study's row until the transaction ends and returns its UID. A result reads and
/// sets its study's priority, and decides the study's messages, only once every other
/// transaction doing so for the study has ended: under PostgreSQL's READ COMMITTED two results
/// recorded at once (two workers, two nodes) would each read the priority before the other's
/// commit, each make a message, and the later UPDATE could lower the priority to its own
/// snapshot's. SQLite runs one write transaction at a time already.
async fn lock_study(conn: &mut AnyConnection, backend: Backend, study_id: i64) -> Result<String> {
    let sql = match backend {
        Backend::Postgres => "SELECT study_instance_uid FROM studies WHERE id = $1 FOR UPDATE",
        Backend::Sqlite => "SELECT study_instance_uid FROM studies WHERE id = $1",
    };
    let (uid,): (String,) = sqlx::query_as(sql).bind(study_id).fetch_one(conn).await?;
    Ok(uid)
}

/// A study's UID and priority.
async fn study_priority(conn: &mut AnyConnection, study_id: i64) -> Result<(String, Option<Priority>)> {
    Ok(sqlx::query_as("SELECT study_instance_uid, priority FROM studies WHERE id = $1")
        .bind(study_id)
        .fetch_one(conn)
        .await?)
}

impl Store {
    /// Claims the oldest job that is due (queued, or running under an expired lease) within
    /// `scope`, for `lease`.
    pub async fn claim_job(&self, lease: Duration, scope: JobScope) -> Result<Option<ClaimedJob>> {
        self.claim_job_of(lease, scope, None).await
    }

    /// Whether a job is due within `scope`, and if so whether one a node died analysing is
    /// (those come first): `Some(true)`, `Some(false)` or `None`.
    pub async fn due_job(&self, scope: JobScope) -> Result<Option<bool>> {
        let due: Option<(i64,)> = sqlx::query_as(concat!(
            "SELECT CAST(CASE WHEN ",
            interrupted!(),
            " THEN 1 ELSE 0 END AS BIGINT) AS interrupted \
             FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE ",
            due_jobs!("$1", "$2", "$3"),
            " ORDER BY interrupted DESC, j.id LIMIT 1"
        ))
        .bind(self.node())
        .bind(self.now())
        .bind(i64::from(scope == JobScope::AnySpool))
        .fetch_optional(self.pool())
        .await?;
        Ok(due.map(|d| d.0 == 1))
    }

    /// [`Store::claim_job`] among the jobs a node died analysing (`Some(true)`: interrupted
    /// before, or running under an expired lease), the others (`Some(false)`), or any (`None`).
    pub async fn claim_job_of(
        &self,
        lease: Duration,
        scope: JobScope,
        interrupted: Option<bool>,
    ) -> Result<Option<ClaimedJob>> {
        let now = self.now();
        let sql = match self.backend() {
            Backend::Postgres => CLAIM_POSTGRES,
            Backend::Sqlite => CLAIM_SQLITE,
        };
        // One transaction: a connection lost between the claim and its read rolls the claim
        // back, rather than leaving the job this node's, unknown to it, until the lease expires.
        let mut tx = self.begin_write().await?;
        let claimed: Option<(i64, i64)> = sqlx::query_as(sql)
            .bind(self.node())
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .bind(i64::from(scope == JobScope::AnySpool))
            .bind(match interrupted {
                Some(false) => 0i64,
                Some(true) => 1,
                None => 2,
            })
            .fetch_optional(&mut *tx)
            .await?;
        let Some((id, _attempts)) = claimed else { return Ok(None) };
        let job = sqlx::query_as(
            "SELECT j.id, j.instance_id, j.attempts, j.interruptions, i.path, i.sop_instance_uid, i.study_id, \
                    i.calling_ae \
             FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE j.id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(job))
    }

    /// Writes a job's result and the objects made of it, marks the job done and raises its
    /// study's priority, in one transaction. Returns false (and writes nothing) when the job is
    /// no longer this node's.
    ///
    /// When the result sets or raises the study's priority, the messages `rules` call for are
    /// made in the same transaction (`store::messages`).
    pub async fn record_result(
        &self,
        job: &ClaimedJob,
        result: &NewResult,
        outputs: &[NewOutput],
        rules: &[MessageRule],
    ) -> Result<bool> {
        Ok(self.record_results(&[Finished { job, result, outputs }], rules).await?[0])
    }

    /// [`Store::record_result`] for a batch, in one transaction: one commit (one fsync) for
    /// all of it. Says of each job whether it was recorded (false: no longer this node's, and
    /// nothing of it written).
    pub async fn record_results(&self, batch: &[Finished<'_>], rules: &[MessageRule]) -> Result<Vec<bool>> {
        let mut tx = self.begin_write().await?;
        let now = self.now();
        // in one order, so that two batches never wait on each other in a circle
        let mut studies: Vec<i64> = batch.iter().map(|f| f.job.study_id).collect();
        studies.sort_unstable();
        studies.dedup();
        for study_id in studies {
            lock_study(&mut tx, self.backend(), study_id).await?;
        }
        let mut recorded = Vec::with_capacity(batch.len());
        let mut signal = false;
        for finished in batch {
            let written = self.insert_result(&mut tx, finished, rules, now).await?;
            signal |= written.is_some_and(|deliveries| deliveries);
            recorded.push(written.is_some());
        }
        tx.commit().await?;
        if signal {
            self.signal_deliveries();
        }
        Ok(recorded)
    }

    /// One job's result in the transaction: `None` when the job is no longer this node's, else
    /// whether something is now due for a destination.
    async fn insert_result(
        &self,
        tx: &mut AnyConnection,
        Finished { job, result, outputs }: &Finished<'_>,
        rules: &[MessageRule],
        now: i64,
    ) -> Result<Option<bool>> {
        if !finish(&mut *tx, self.node(), job.id, JobState::Done, None, now).await? {
            return Ok(None);
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
        insert_outputs(&mut *tx, self.node(), Source::Result(result_id), outputs, now).await?;
        // the study's priority around the result decides the messages (read only when some
        // destination takes messages)
        let messages = if rules.is_empty() {
            sqlx::query(STUDY_PRIORITY).bind(job.study_id).execute(&mut *tx).await?;
            0
        } else {
            let before = study_priority(&mut *tx, job.study_id).await?.1;
            sqlx::query(STUDY_PRIORITY).bind(job.study_id).execute(&mut *tx).await?;
            let (study_uid, after) = study_priority(&mut *tx, job.study_id).await?;
            make_messages(&mut *tx, job.study_id, &study_uid, (before, after), rules, now).await?
        };
        Ok(Some(messages > 0 || outputs.iter().any(|o| !o.destinations.is_empty())))
    }

    /// Ends a job without a result, with its reason (failures also go to the audit trail).
    /// Returns false when the job is no longer this node's.
    pub async fn end_job(&self, job: &ClaimedJob, end: JobEnd, reason: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        if !self.end_job_in(&mut tx, job, end, reason, self.now()).await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The ending of [`Store::end_job`], inside the caller's transaction.
    async fn end_job_in(
        &self,
        tx: &mut AnyConnection,
        job: &ClaimedJob,
        end: JobEnd,
        reason: &str,
        now: i64,
    ) -> Result<bool> {
        let state = match end {
            JobEnd::Skipped => JobState::Skipped,
            JobEnd::Failed | JobEnd::Quarantined => JobState::Failed,
        };
        if !finish(&mut *tx, self.node(), job.id, state, Some(reason), now).await? {
            return Ok(false);
        }
        if end == JobEnd::Quarantined {
            sqlx::query("UPDATE jobs SET quarantined_at = $1 WHERE id = $2")
                .bind(now)
                .bind(job.id)
                .execute(&mut *tx)
                .await?;
        }
        if end != JobEnd::Skipped {
            let kind = if end == JobEnd::Quarantined { EventKind::JobQuarantined } else { EventKind::AnalysisFailed };
            let event = Event::new(kind).instance(&job.sop_instance_uid).detail(reason);
            insert_event(&mut *tx, self.node(), self.now(), &event).await?;
        }
        Ok(true)
    }

    /// Ends the job of an image the selection rules chose and the node could not analyse, and
    /// reports it, in one transaction: the job's ending (as [`Store::end_job`]), a notice with
    /// the reason, the rows of its "not analysed" objects (`outputs`, written already) with
    /// their deliveries, and, while the study has no result, a "not analysed" message for each
    /// messaging destination that takes one (due after its settling wait, so that a result of
    /// another image of the study supersedes it). An image reported before (analysed again after
    /// a `requeue`) is not reported twice. False when the job is no longer this node's.
    pub async fn record_not_analysed(
        &self,
        job: &ClaimedJob,
        end: JobEnd,
        reason: &str,
        outputs: &[NewOutput],
        rules: &[MessageRule],
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let now = self.now();
        // the study first, as a result takes it
        let study_uid = lock_study(&mut tx, self.backend(), job.study_id).await?;
        if !self.end_job_in(&mut tx, job, end, reason, now).await? {
            return Ok(false);
        }
        let reported: Option<(i64,)> = sqlx::query_as("SELECT id FROM notices WHERE instance_id = $1")
            .bind(job.instance_id)
            .fetch_optional(&mut *tx)
            .await?;
        if reported.is_some() {
            tx.commit().await?;
            return Ok(true);
        }
        let (notice_id,): (i64,) = sqlx::query_as(
            "INSERT INTO notices (instance_id, job_id, reason, node, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
        )
        .bind(job.instance_id)
        .bind(job.id)
        .bind(storable_text(reason))
        .bind(self.node())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        insert_outputs(&mut tx, self.node(), Source::Notice(notice_id), outputs, now).await?;
        let mut messages = 0;
        for rule in rules.iter().filter(|r| r.not_analysed) {
            messages += sqlx::query(
                "INSERT INTO messages (study_id, destination, kind, priority, control_id, state, next_attempt_at, \
                                       created_at, updated_at) \
                 SELECT $1, $2, $3, NULL, $4, 'pending', $5, $6, $6 \
                 WHERE NOT EXISTS (SELECT 1 FROM results r JOIN instances i ON i.id = r.instance_id \
                                   WHERE i.study_id = $1) \
                 ON CONFLICT (study_id, destination) WHERE priority IS NULL DO NOTHING",
            )
            .bind(job.study_id)
            .bind(&rule.destination)
            .bind(rule.kind)
            .bind(not_analysed_control_id(&rule.destination, &study_uid))
            .bind(now + rule.settle.as_millis() as i64)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        if messages > 0 || outputs.iter().any(|o| !o.destinations.is_empty()) {
            self.signal_deliveries();
        }
        Ok(true)
    }

    /// Puts a job back in the queue after a transient error, not to be claimed before `delay`.
    pub async fn retry_job(&self, job: &ClaimedJob, reason: &str, delay: Duration) -> Result<bool> {
        let now = self.now();
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', reason = $1, not_before = $2, claimed_by = NULL, \
                 lease_expires_at = NULL, updated_at = $3 \
             WHERE id = $4 AND state = 'running' AND claimed_by = $5",
        )
        .bind(storable_text(reason))
        .bind(now + delay.as_millis() as i64)
        .bind(now)
        .bind(job.id)
        .bind(self.node())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Start-up recovery of the jobs left `running`: those claimed by this node (it died while
    /// analysing them) and those whose lease has expired (another node died). Each counts an
    /// interruption and goes back in the queue. One interrupted `quarantine_after` times is
    /// quarantined by the worker that takes it next, without opening its image, and reported
    /// "not analysed" like any image the node could not analyse, so that an image that kills the
    /// node cannot do so at every restart and is still never silent.
    pub async fn recover_interrupted_jobs(&self, quarantine_after: u32) -> Result<InterruptedJobs> {
        let now = self.now();
        let mut tx = self.begin_write().await?;
        let recovered: Vec<(i64, i64)> = sqlx::query_as(
            "UPDATE jobs SET interruptions = interruptions + 1, state = 'queued', \
                 claimed_by = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE state = 'running' AND (claimed_by = $2 OR claimed_by IS NULL \
                                          OR lease_expires_at IS NULL OR lease_expires_at < $1) \
             RETURNING id, interruptions",
        )
        .bind(now)
        .bind(self.node())
        .fetch_all(&mut *tx)
        .await?;
        let mut report = InterruptedJobs::default();
        for (id, interruptions) in recovered {
            report.requeued += 1;
            if interruptions < i64::from(quarantine_after) {
                continue;
            }
            let (sop,): (String,) = sqlx::query_as(
                "SELECT i.sop_instance_uid FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE j.id = $1",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            report.to_quarantine.push(sop);
        }
        if report.requeued > 0 {
            let detail = format!("{} job(s) left running were re-queued", report.requeued);
            insert_event(&mut *tx, self.node(), self.now(), &Event::new(EventKind::JobsRequeued).detail(&detail))
                .await?;
        }
        tx.commit().await?;
        Ok(report)
    }

    /// At a clean stop: puts back in the queue the jobs this node claimed but did not start (no
    /// interruption is counted: nothing was being analysed). Returns how many.
    pub async fn requeue_unstarted_jobs(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', claimed_by = NULL, lease_expires_at = NULL, updated_at = $1 \
             WHERE state = 'running' AND claimed_by = $2",
        )
        .bind(self.now())
        .bind(self.node())
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// An admin's second chance for an instance whose job failed (or was quarantined): queued
    /// again, its interruptions forgotten, unless retention let its image go.
    pub async fn requeue_failed_job(&self, instance_id: i64) -> Result<Requeue> {
        let mut tx = self.begin_write().await?;
        // the instance row first: pruning marks it in its transaction, so one of the two waits
        // for the other and sees what it did
        let kept = sqlx::query("UPDATE instances SET released_at = NULL WHERE id = $1 AND released_at IS NULL")
            .bind(instance_id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !kept {
            let exists: Option<(i64,)> = sqlx::query_as("SELECT id FROM instances WHERE id = $1")
                .bind(instance_id)
                .fetch_optional(&mut *tx)
                .await?;
            return Ok(if exists.is_some() { Requeue::Released } else { Requeue::NotFailed });
        }
        let done = sqlx::query(
            "UPDATE jobs SET state = 'queued', reason = NULL, interruptions = 0, quarantined_at = NULL, \
                 not_before = NULL, attempts = 0, updated_at = $1 WHERE instance_id = $2 AND state = 'failed'",
        )
        .bind(self.now())
        .bind(instance_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(Requeue::NotFailed);
        }
        let detail = format!("the analysis of instance {instance_id} re-queued by an admin");
        insert_event(&mut *tx, self.node(), self.now(), &Event::new(EventKind::JobRequeued).detail(&detail)).await?;
        tx.commit().await?;
        self.jobs_queued().notify_one();
        Ok(Requeue::Queued)
    }

    /// Unfinished jobs whose instances another node keeps, by node: they wait for that node.
    pub async fn jobs_kept_elsewhere(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT i.node, COUNT(*) FROM jobs j JOIN instances i ON i.id = j.instance_id \
             WHERE j.state IN ('queued', 'running') AND i.node IS NOT NULL AND i.node <> $1 \
             GROUP BY i.node ORDER BY i.node",
        )
        .bind(self.node())
        .fetch_all(self.pool())
        .await?)
    }

    /// An admin's `handover --from A --to B`: the instances node `from` kept are now node `to`'s
    /// (the same spool under a new node name, or moved there). Returns how many.
    pub async fn hand_over_instances(&self, from: &str, to: &str) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let done =
            sqlx::query("UPDATE instances SET node = $1 WHERE node = $2").bind(to).bind(from).execute(&mut *tx).await?;
        // the objects made of them are kept in the same data directory
        sqlx::query("UPDATE outputs SET node = $1 WHERE node = $2").bind(to).bind(from).execute(&mut *tx).await?;
        tx.commit().await?;
        let n = done.rows_affected();
        if n > 0 {
            let detail = format!("{n} instance(s) kept by node {from} handed over to node {to}");
            self.record_event(&Event::new(EventKind::InstancesHandedOver).detail(&detail)).await?;
        }
        Ok(n)
    }

    /// An admin's `handover --from A --fail`: node `from` is gone with its spool, so its
    /// unfinished jobs fail with that reason instead of waiting for ever, and so do the
    /// deliveries of the objects it kept. Returns how many jobs.
    pub async fn fail_jobs_kept_by(&self, from: &str) -> Result<u64> {
        let reason = format!("spool unavailable: node {from} kept this image and is gone (pneumotriage handover)");
        let done = sqlx::query(
            "UPDATE jobs SET state = 'failed', reason = $1, claimed_by = NULL, lease_expires_at = NULL, \
                 updated_at = $2 \
             WHERE state IN ('queued', 'running') \
               AND instance_id IN (SELECT id FROM instances WHERE node = $3)",
        )
        .bind(&reason)
        .bind(self.now())
        .bind(from)
        .execute(self.pool())
        .await?;
        // the objects it made and had not sent are gone with it too
        let unsent = format!("outputs unavailable: node {from} kept this object and is gone (pneumotriage handover)");
        sqlx::query(
            "UPDATE deliveries SET state = 'failed', last_error = $1, claimed_by = NULL, lease_expires_at = NULL, \
                 updated_at = $2 \
             WHERE state IN ('pending', 'sending') AND output_id IN (SELECT id FROM outputs WHERE node = $3)",
        )
        .bind(&unsent)
        .bind(self.now())
        .bind(from)
        .execute(self.pool())
        .await?;
        let n = done.rows_affected();
        if n > 0 {
            let detail = format!("{n} job(s) failed: {reason}");
            self.record_event(&Event::new(EventKind::JobsAbandoned).detail(&detail)).await?;
        }
        Ok(n)
    }
}

/// Moves a job this node holds to a final state; false when it is not (or no longer) ours.
/// What an object is made of: a result, or a notice (a "not analysed" report).
#[derive(Debug, Clone, Copy)]
enum Source {
    Result(i64),
    Notice(i64),
}

/// The rows of objects written under `<data_dir>/outputs`, and a delivery for each of their
/// destinations, inside the caller's transaction.
async fn insert_outputs(
    conn: &mut AnyConnection,
    node: &str,
    source: Source,
    outputs: &[NewOutput],
    now: i64,
) -> Result<()> {
    let (result_id, notice_id) = match source {
        Source::Result(id) => (Some(id), None),
        Source::Notice(id) => (None, Some(id)),
    };
    for output in outputs {
        let (output_id,): (i64,) = sqlx::query_as(
            "INSERT INTO outputs (result_id, notice_id, kind, sop_class_uid, sop_instance_uid, path, size_bytes, \
                                  created_at, node) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(result_id)
        .bind(notice_id)
        .bind(output.kind)
        .bind(&output.sop_class_uid)
        .bind(&output.sop_instance_uid)
        .bind(&output.path)
        .bind(output.size_bytes)
        .bind(now)
        .bind(node)
        .fetch_one(&mut *conn)
        .await?;
        for destination in &output.destinations {
            sqlx::query(
                "INSERT INTO deliveries (output_id, destination, state, next_attempt_at, created_at, updated_at) \
                 VALUES ($1, $2, 'pending', $3, $3, $3)",
            )
            .bind(output_id)
            .bind(destination)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn finish<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    executor: E,
    node: &str,
    job_id: i64,
    state: JobState,
    reason: Option<&str>,
    now: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE jobs SET state = $1, reason = $2, claimed_by = NULL, lease_expires_at = NULL, updated_at = $3 \
         WHERE id = $4 AND state = 'running' AND claimed_by = $5",
    )
    .bind(state)
    .bind(reason.map(storable_text))
    .bind(now)
    .bind(job_id)
    .bind(node)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}
