//! The messages' outbox: one row per study, messaging destination and priority.
//!
//! A row is made in the transaction that records a result, when that result sets the study's
//! priority or raises it, never when the study's priority stays or would fall (the study's
//! priority is the highest of its images', so a routine lateral after an urgent PA changes
//! nothing). Below urgent a message waits `settle_secs` after the study's last analysed image
//! and while other images of the study wait for analysis, and one that has not been tried yet
//! gives way to the higher priority a later image brings: a PA and lateral give one message. Rows are claimed with a lease and finished
//! only by their claimant, as deliveries are; the control ID is derived from (destination, study,
//! priority), so a resend after a crash carries the same one.

use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::AnyConnection;

use super::deliveries::{finish_sql, requeue_failed_sql, End, Recipient};
use super::{study_outputs, Backend, Result, Store};
use crate::domain::{Decision, DeliveryState, DestinationKind, EventKind, MessageRule, ObjectKind, Priority};
use crate::domain::{FindingFacts, ModelFacts, ObjectFacts, PatientFacts, StudyFacts, StudyMessage, Triage};

/// A message this node has claimed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedMessage {
    pub id: i64,
    pub destination: String,
    pub kind: DestinationKind,
    /// None: the study's "not analysed" message.
    pub priority: Option<Priority>,
    pub control_id: String,
    /// Counting this one.
    pub attempts: i64,
    pub study_id: i64,
    pub created_at: i64,
}

/// A message as `pneumotriage deliveries` and the worklist API show it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct MessageRow {
    pub id: i64,
    pub destination: String,
    pub kind: DestinationKind,
    /// None: the study's "not analysed" message.
    pub priority: Option<Priority>,
    pub control_id: String,
    pub study_instance_uid: String,
    pub state: DeliveryState,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    /// When the result that called for it was committed (ms since epoch).
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// The control ID of the message for (destination, study, priority): "PT" and 18 hex digits of
/// their SHA-256, 20 characters (HL7 MSH-10 is at most 20).
pub fn control_id(destination: &str, study_instance_uid: &str, priority: Priority) -> String {
    hashed_id(destination, study_instance_uid, priority.as_str())
}

/// The control ID of a study's "not analysed" message to `destination`, in the same form.
pub fn not_analysed_control_id(destination: &str, study_instance_uid: &str) -> String {
    hashed_id(destination, study_instance_uid, "not analysed")
}

fn hashed_id(destination: &str, study_instance_uid: &str, subject: &str) -> String {
    let digest = Sha256::digest(format!("{destination}\n{study_instance_uid}\n{subject}"));
    let hex: String = digest.iter().take(9).map(|b| format!("{b:02X}")).collect();
    format!("PT{hex}")
}

/// Makes the messages a result calls for, inside the result's transaction: `before` and `after`
/// are the study's priority around the result. Returns how many rows were made.
pub(super) async fn make_messages(
    conn: &mut AnyConnection,
    study_id: i64,
    study_instance_uid: &str,
    (before, after): (Option<Priority>, Option<Priority>),
    rules: &[MessageRule],
    now: i64,
) -> Result<u64> {
    let mut made = 0;
    let raised = match (before, after) {
        (_, None) => None,
        (None, Some(p)) => Some(p),
        (Some(b), Some(a)) => (a > b).then_some(a),
    };
    for rule in rules {
        let settle_until = now + rule.settle.as_millis() as i64;
        // Another image of the study was analysed: what waits to settle waits on.
        sqlx::query(
            "UPDATE messages SET next_attempt_at = $1, updated_at = $2 \
             WHERE study_id = $3 AND destination = $4 AND state = 'pending' AND attempts = 0 \
               AND priority <> 'urgent' AND next_attempt_at < $1",
        )
        .bind(settle_until)
        .bind(now)
        .bind(study_id)
        .bind(&rule.destination)
        .execute(&mut *conn)
        .await?;
        // A result supersedes the study's "not analysed" message: not sent if not sent yet, and
        // where it was, the result follows whatever priorities the destination takes.
        sqlx::query(
            "DELETE FROM messages WHERE study_id = $1 AND destination = $2 AND priority IS NULL \
               AND state = 'pending' AND attempts = 0",
        )
        .bind(study_id)
        .bind(&rule.destination)
        .execute(&mut *conn)
        .await?;
        let (told_not_analysed,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM messages WHERE study_id = $1 AND destination = $2 AND priority IS NULL",
        )
        .bind(study_id)
        .bind(&rule.destination)
        .fetch_one(&mut *conn)
        .await?;
        let Some(priority) = raised.filter(|p| rule.priorities.contains(p) || told_not_analysed > 0) else { continue };
        // Waiting and now outranked: the higher message says it all. One tried already was not
        // taken (a transient failure put it back), and sent after the higher one it would lower
        // the study on the receiver.
        sqlx::query("DELETE FROM messages WHERE study_id = $1 AND destination = $2 AND state = 'pending'")
            .bind(study_id)
            .bind(&rule.destination)
            .execute(&mut *conn)
            .await?;
        let due = if priority == Priority::Urgent { now } else { settle_until };
        made += sqlx::query(
            "INSERT INTO messages (study_id, destination, kind, priority, control_id, state, next_attempt_at, \
                                   created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $7) \
             ON CONFLICT (study_id, destination, priority) DO NOTHING",
        )
        .bind(study_id)
        .bind(&rule.destination)
        .bind(rule.kind)
        .bind(priority)
        .bind(control_id(&rule.destination, study_instance_uid, priority))
        .bind(due)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(made)
}

/// The claim: one statement for both backends but for the row lock, which only PostgreSQL has.
/// A first message below urgent also waits while other images of its study are queued or being
/// analysed: their results may raise it (a backlog, or two workers, would otherwise send the
/// lateral's routine message while the PA it came with waits its turn). A study's messages to a
/// destination go in the order they were made, which is the order of its priorities: one waits
/// while an older one is being sent (and one outranked by a newer one is not sent at all, see
/// `DROP_OUTRANKED`).
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE messages SET state = 'sending', claimed_by = $1, lease_expires_at = $2, \
                attempts = attempts + 1, updated_at = $3 \
             WHERE id = (SELECT id FROM messages \
                         WHERE destination = $4 AND ((state = 'pending' AND next_attempt_at <= $3 \
                                AND (attempts > 0 OR priority = 'urgent' OR NOT EXISTS ( \
                                    SELECT 1 FROM jobs j JOIN instances i ON i.id = j.instance_id \
                                    WHERE i.study_id = messages.study_id AND j.state IN ('queued', 'running')))) \
                            OR (state = 'sending' AND lease_expires_at < $3)) \
                           AND NOT EXISTS (SELECT 1 FROM messages o \
                                WHERE o.study_id = messages.study_id AND o.destination = messages.destination \
                                  AND o.id < messages.id AND o.state = 'sending' AND o.lease_expires_at >= $3) \
                         ORDER BY next_attempt_at, id LIMIT 1 ",
            $lock,
            ") RETURNING id"
        )
    };
}

/// Before a claim, a destination's messages that a newer one of their study outranks, waiting or
/// left by a node that died sending them: the newer one says it all, and one sent after it would
/// lower the study on the receiver. A result drops the waiting ones itself (`make_messages`);
/// these were in flight then, and came back for another try or were never finished.
const DROP_OUTRANKED: &str = "DELETE FROM messages \
     WHERE destination = $1 AND (state = 'pending' OR (state = 'sending' AND lease_expires_at < $2)) \
       AND EXISTS (SELECT 1 FROM messages n WHERE n.study_id = messages.study_id \
                     AND n.destination = messages.destination AND n.id > messages.id)";
const CLAIM_POSTGRES: &str = claim_sql!("FOR UPDATE SKIP LOCKED");
const FINISH_MESSAGE: &str = finish_sql!("messages");
/// Not one a newer message of its study outranks: sent now, it would lower the study.
const REQUEUE_FAILED_MESSAGES: &str = requeue_failed_sql!(
    "messages",
    "study_id IN (SELECT id FROM studies WHERE patient_data_removed_at IS NULL) \
     AND NOT EXISTS (SELECT 1 FROM messages n \
                     WHERE n.study_id = messages.study_id AND n.destination = messages.destination AND n.id > messages.id)"
);
const CLAIM_SQLITE: &str = claim_sql!("");

/// The study's attributes a message carries.
#[derive(sqlx::FromRow)]
struct StudyAttributes {
    study_instance_uid: String,
    accession_number: Option<String>,
    study_description: Option<String>,
    study_date: Option<String>,
    patient_id: Option<String>,
    issuer_of_patient_id: Option<String>,
    patient_name: Option<String>,
    patient_birth_date: Option<String>,
    patient_sex: Option<String>,
}

/// One analysed image of the study.
#[derive(sqlx::FromRow)]
struct ImageResult {
    decision: Decision,
    probability: f64,
    mask_area_mm2: Option<f64>,
    classifier_name: String,
    classifier_version: String,
    segmenter_name: String,
    segmenter_version: String,
    created_at: i64,
}

impl Store {
    /// Claims the message to `destination` that has been due longest, for `lease`.
    pub async fn claim_message(&self, destination: &str, lease: Duration) -> Result<Option<ClaimedMessage>> {
        let now = self.now();
        let sql = match self.backend() {
            Backend::Postgres => CLAIM_POSTGRES,
            Backend::Sqlite => CLAIM_SQLITE,
        };
        // One transaction, as for jobs: a claim whose read is lost is rolled back.
        let mut tx = self.begin_write().await?;
        sqlx::query(DROP_OUTRANKED).bind(destination).bind(now).execute(&mut *tx).await?;
        let claimed: Option<(i64,)> = sqlx::query_as(sql)
            .bind(self.node())
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .bind(destination)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((id,)) = claimed else { return Ok(None) };
        let claimed = sqlx::query_as(
            "SELECT id, destination, kind, priority, control_id, attempts, study_id, created_at \
             FROM messages WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(claimed))
    }

    /// What a claimed message says: the study as it stands now (its images analysed so far, the
    /// objects made of them). `notice` is the models' notice; the link to the worklist page is
    /// the sender's to set.
    pub async fn study_message(&self, m: &ClaimedMessage, notice: &str) -> Result<StudyMessage> {
        let study: StudyAttributes = sqlx::query_as(
            "SELECT study_instance_uid, accession_number, study_description, study_date, patient_id, \
                    issuer_of_patient_id, patient_name, patient_birth_date, patient_sex \
             FROM studies WHERE id = $1",
        )
        .bind(m.study_id)
        .fetch_one(self.pool())
        .await?;
        let results: Vec<ImageResult> = sqlx::query_as(
            "SELECT r.decision, r.probability, r.mask_area_mm2, r.classifier_name, r.classifier_version, \
                    r.segmenter_name, r.segmenter_version, r.created_at \
             FROM results r JOIN instances i ON i.id = r.instance_id WHERE i.study_id = $1 ORDER BY r.id",
        )
        .bind(m.study_id)
        .fetch_all(self.pool())
        .await?;
        let objects: Vec<(ObjectKind, String, String)> = sqlx::query_as(concat!(
            "SELECT so.kind, so.sop_class_uid, so.sop_instance_uid FROM ",
            study_outputs!("$1"),
            " so WHERE so.kind IN ('sr', 'seg') ORDER BY so.id"
        ))
        .bind(m.study_id)
        .fetch_all(self.pool())
        .await?;
        let triage = match m.priority {
            Some(priority) => Triage::Priority(priority),
            None => {
                let reason: Option<(String,)> = sqlx::query_as(
                    "SELECT n.reason FROM notices n JOIN instances i ON i.id = n.instance_id \
                     WHERE i.study_id = $1 ORDER BY n.id DESC LIMIT 1",
                )
                .bind(m.study_id)
                .fetch_optional(self.pool())
                .await?;
                Triage::NotAnalysed(reason.map_or_else(|| "not analysed".to_string(), |(r,)| r))
            }
        };

        let mut models: Vec<ModelFacts> = Vec::new();
        for r in &results {
            for (name, version) in
                [(&r.classifier_name, &r.classifier_version), (&r.segmenter_name, &r.segmenter_version)]
            {
                if !models.iter().any(|m| &m.name == name && &m.version == version) {
                    models.push(ModelFacts { name: name.clone(), version: version.clone() });
                }
            }
        }
        let finding = FindingFacts {
            present: results.iter().any(|r| r.decision != Decision::Negative),
            probability: results.iter().map(|r| r.probability).fold(0.0, f64::max),
            area_mm2: results.iter().filter_map(|r| r.mask_area_mm2).reduce(f64::max),
        };
        Ok(StudyMessage {
            control_id: m.control_id.clone(),
            created_at_ms: m.created_at,
            triage,
            study: StudyFacts {
                observed_at_ms: results.iter().map(|r| r.created_at).max().unwrap_or(m.created_at),
                study_instance_uid: study.study_instance_uid,
                accession_number: study.accession_number,
                description: study.study_description,
                date: study.study_date,
            },
            patient: PatientFacts {
                id: study.patient_id,
                issuer: study.issuer_of_patient_id,
                name: study.patient_name,
                birth_date: study.patient_birth_date,
                sex: study.patient_sex,
            },
            finding,
            models,
            notice: notice.to_string(),
            objects: objects
                .into_iter()
                .map(|(kind, sop_class_uid, sop_instance_uid)| ObjectFacts { kind, sop_class_uid, sop_instance_uid })
                .collect(),
            link: None,
        })
    }

    /// The receiver acknowledged the message.
    /// The receiver took it; `address` (its URL, or host and port) names it in the audit record.
    pub async fn message_done(&self, m: &ClaimedMessage, address: &str) -> Result<bool> {
        let to = Some(Recipient::Messages { destination: &m.destination, address });
        self.finish_message(m, DeliveryState::Delivered, None, 0, EventKind::Delivered, to).await
    }

    /// A transient failure: try again after `delay`, unless a newer message of its study
    /// outranks it meanwhile (`DROP_OUTRANKED`).
    pub async fn message_retry(&self, m: &ClaimedMessage, error: &str, delay: Duration) -> Result<bool> {
        let delay = delay.as_millis() as i64;
        self.finish_message(m, DeliveryState::Pending, Some(error), delay, EventKind::DeliveryDeferred, None).await
    }

    /// The receiver refused it: no more attempts until an admin re-queues it (`retry`).
    pub async fn message_failed(&self, m: &ClaimedMessage, error: &str) -> Result<bool> {
        self.finish_message(m, DeliveryState::Failed, Some(error), 0, EventKind::DeliveryFailed, None).await
    }

    async fn finish_message(
        &self,
        m: &ClaimedMessage,
        state: DeliveryState,
        error: Option<&str>,
        delay_ms: i64,
        event: EventKind,
        audit: Option<Recipient<'_>>,
    ) -> Result<bool> {
        let subject = m.priority.map_or_else(|| "not analysed".to_string(), |p| p.to_string());
        let detail =
            format!("{} message {} ({subject}) to {} (attempt {})", m.kind, m.control_id, m.destination, m.attempts);
        self.finish_claimed(FINISH_MESSAGE, m.id, End { state, error, delay_ms, event, detail }, audit).await
    }

    /// Messages, newest first; only the failed ones with `failed_only`; only one study's with
    /// `study`.
    pub async fn list_messages(&self, failed_only: bool, study: Option<&str>, limit: i64) -> Result<Vec<MessageRow>> {
        Ok(sqlx::query_as(
            "SELECT m.id, m.destination, m.kind, m.priority, m.control_id, s.study_instance_uid, m.state, \
                    m.attempts, m.last_error, m.next_attempt_at, m.created_at, m.delivered_at \
             FROM messages m JOIN studies s ON s.id = m.study_id \
             WHERE ($1 = 0 OR m.state = 'failed') AND ($2 IS NULL OR s.study_instance_uid = $2) \
             ORDER BY m.id DESC LIMIT $3",
        )
        .bind(failed_only as i64)
        .bind(study)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Puts failed messages back in the queue (one by id, or all): an admin's `retry`.
    pub async fn requeue_failed_messages(&self, id: Option<i64>) -> Result<u64> {
        self.requeue_failed(None, REQUEUE_FAILED_MESSAGES, id, "message m", "messages").await
    }
}
