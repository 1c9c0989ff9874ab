//! The outbox: a delivery row per object made and destination, committed with the result, then
//! claimed, sent and marked by the delivery task. Claims work as for jobs (a lease, only the
//! claimant may finish), so a delivery survives restarts and is never sent by two nodes at once.

use std::time::Duration;

use serde::Serialize;

use super::{Backend, Event, JobScope, Result, Store};
use crate::audit::{AuditEvent, Peer};
use crate::domain::{storable_text, DeliveryState, EventKind, ObjectKind};

/// A delivery this node has claimed, with what the sender needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub destination: String,
    /// Counting this one.
    pub attempts: i64,
    pub kind: ObjectKind,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// Relative to `<data_dir>/outputs`.
    pub path: String,
}

/// A delivery as `pneumotriage deliveries` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub destination: String,
    pub kind: ObjectKind,
    pub sop_instance_uid: String,
    pub state: DeliveryState,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: i64,
    pub delivered_at: Option<i64>,
}

/// The claim: one statement for both backends but for the row lock, which only PostgreSQL has.
/// With separate data directories (`$5 = 0`), a node claims only the objects it wrote itself.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE deliveries SET state = 'sending', claimed_by = $1, lease_expires_at = $2, \
                attempts = attempts + 1, updated_at = $3 \
             WHERE id = (SELECT d.id FROM deliveries d JOIN outputs o ON o.id = d.output_id \
                         WHERE d.destination = $4 AND ((d.state = 'pending' AND d.next_attempt_at <= $3) \
                            OR (d.state = 'sending' AND d.lease_expires_at < $3)) \
                           AND ($5 = 1 OR o.node IS NULL OR o.node = $1) \
                         ORDER BY d.next_attempt_at, d.id LIMIT 1 ",
            $lock,
            ") RETURNING id"
        )
    };
}

const CLAIM_POSTGRES: &str = claim_sql!("FOR UPDATE OF d SKIP LOCKED");
const CLAIM_SQLITE: &str = claim_sql!("");

/// How a claimed outbox row ends.
/// Who received what a delivery or message carried, as its audit record names them.
#[derive(Debug, Clone, Copy)]
pub enum Recipient<'a> {
    /// A DICOM destination: its AE title and host.
    Dicom(Peer<'a>),
    /// A messaging destination: its name, and its URL or host and port.
    Messages { destination: &'a str, address: &'a str },
}

pub(super) struct End<'a> {
    pub state: DeliveryState,
    pub error: Option<&'a str>,
    /// Pending again after this long (a retry).
    pub delay_ms: i64,
    pub event: EventKind,
    /// What the audit trail says it was.
    pub detail: String,
}

/// Ends a claimed row of an outbox table, only while it is the claimant's.
macro_rules! finish_sql {
    ($table:literal) => {
        concat!(
            "UPDATE ",
            $table,
            " SET state = $1, last_error = $2, next_attempt_at = $3, claimed_by = NULL, \
                 lease_expires_at = NULL, updated_at = $4, \
                 delivered_at = CASE WHEN $1 = 'delivered' THEN $4 ELSE delivered_at END \
             WHERE id = $5 AND state = 'sending' AND claimed_by = $6"
        )
    };
}
/// Puts an outbox table's failed rows (all, or the one with id `$2`) back in the queue, those
/// that `$kept` (a condition) says still have what they send.
macro_rules! requeue_failed_sql {
    ($table:literal, $kept:literal) => {
        concat!(
            "UPDATE ",
            $table,
            " SET state = 'pending', next_attempt_at = $1, updated_at = $1 \
             WHERE state = 'failed' AND ($2 IS NULL OR id = $2) AND ",
            $kept
        )
    };
}

/// Puts back an outbox table's rows left `sending` by node `$2` or whose lease expired.
macro_rules! requeue_abandoned_sql {
    ($table:literal) => {
        concat!(
            "UPDATE ",
            $table,
            " SET state = 'pending', claimed_by = NULL, lease_expires_at = NULL, \
                 next_attempt_at = $1, updated_at = $1 \
             WHERE state = 'sending' AND (claimed_by = $2 OR lease_expires_at < $1)"
        )
    };
}
pub(super) use {finish_sql, requeue_failed_sql};

const FINISH_DELIVERY: &str = finish_sql!("deliveries");
const REQUEUE_FAILED_DELIVERIES: &str =
    requeue_failed_sql!("deliveries", "output_id IN (SELECT id FROM outputs WHERE released_at IS NULL)");
/// Takes the row locks of the objects whose failed deliveries are re-queued, as pruning does
/// when it marks them released: one of the two waits for the other and sees what it did.
const LOCK_FAILED_OUTPUTS: &str = "UPDATE outputs SET released_at = NULL WHERE released_at IS NULL AND id IN \
     (SELECT output_id FROM deliveries WHERE state = 'failed' AND ($1 IS NULL OR id = $1))";
const REQUEUE_ABANDONED_DELIVERIES: &str = requeue_abandoned_sql!("deliveries");
const REQUEUE_ABANDONED_MESSAGES: &str = requeue_abandoned_sql!("messages");

impl Store {
    /// Claims the delivery that has been due longest, for `lease`: of the objects this node
    /// keeps, or of any with [`JobScope::AnySpool`] (one shared data directory).
    pub async fn claim_delivery(
        &self,
        destination: &str,
        lease: Duration,
        scope: JobScope,
    ) -> Result<Option<ClaimedDelivery>> {
        let now = self.now();
        let sql = match self.backend() {
            Backend::Postgres => CLAIM_POSTGRES,
            Backend::Sqlite => CLAIM_SQLITE,
        };
        // One transaction, as for jobs: a claim whose read is lost is rolled back.
        let mut tx = self.begin_write().await?;
        let claimed: Option<(i64,)> = sqlx::query_as(sql)
            .bind(self.node())
            .bind(now + lease.as_millis() as i64)
            .bind(now)
            .bind(destination)
            .bind(i64::from(scope == JobScope::AnySpool))
            .fetch_optional(&mut *tx)
            .await?;
        let Some((id,)) = claimed else { return Ok(None) };
        let claimed = sqlx::query_as(
            "SELECT d.id, d.destination, d.attempts, o.kind, o.sop_class_uid, o.sop_instance_uid, o.path \
             FROM deliveries d JOIN outputs o ON o.id = d.output_id WHERE d.id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(claimed))
    }

    /// The destination stored the object.
    pub async fn delivery_done(&self, d: &ClaimedDelivery, to: Peer<'_>) -> Result<bool> {
        let to = Some(Recipient::Dicom(to));
        self.finish_delivery(d, DeliveryState::Delivered, None, 0, EventKind::Delivered, to).await
    }

    /// A transient failure: try again after `delay`.
    pub async fn delivery_retry(&self, d: &ClaimedDelivery, error: &str, delay: Duration) -> Result<bool> {
        self.finish_delivery(
            d,
            DeliveryState::Pending,
            Some(error),
            delay.as_millis() as i64,
            EventKind::DeliveryDeferred,
            None,
        )
        .await
    }

    /// A permanent failure: no more attempts until an admin re-queues it (`retry`).
    pub async fn delivery_failed(&self, d: &ClaimedDelivery, error: &str) -> Result<bool> {
        self.finish_delivery(d, DeliveryState::Failed, Some(error), 0, EventKind::DeliveryFailed, None).await
    }

    async fn finish_delivery(
        &self,
        d: &ClaimedDelivery,
        state: DeliveryState,
        error: Option<&str>,
        delay_ms: i64,
        event: EventKind,
        audit: Option<Recipient<'_>>,
    ) -> Result<bool> {
        let detail = format!("{} {} to {} (attempt {})", d.kind, d.sop_instance_uid, d.destination, d.attempts);
        self.finish_claimed(FINISH_DELIVERY, d.id, End { state, error, delay_ms, event, detail }, audit).await
    }

    /// Ends a claimed outbox row (`sql`: [`FINISH_DELIVERY`] or `FINISH_MESSAGE`) if it is
    /// still this node's, and records the event.
    /// A delivery or message that ended delivered is audited (`audit`) in the same transaction.
    pub(super) async fn finish_claimed(
        &self,
        sql: &'static str,
        id: i64,
        end: End<'_>,
        audit: Option<Recipient<'_>>,
    ) -> Result<bool> {
        let now = self.now();
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(sql)
            .bind(end.state)
            .bind(end.error.map(storable_text))
            .bind(now + end.delay_ms)
            .bind(now)
            .bind(id)
            .bind(self.node())
            .execute(&mut *tx)
            .await?;
        let finished = done.rows_affected() == 1;
        if let Some(recipient) = audit.filter(|_| finished && self.auditor().is_some()) {
            match recipient {
                Recipient::Dicom(to) => {
                    if let Some(study) = Store::audited_study_of_delivery(&mut tx, id).await? {
                        self.audit_in(&mut tx, &AuditEvent::Sent { to, study: &study }).await?;
                    }
                }
                Recipient::Messages { destination, address } => {
                    if let Some(study) = Store::audited_study_of_message(&mut tx, id).await? {
                        self.audit_in(&mut tx, &AuditEvent::Exported { destination, address, study: &study }).await?;
                    }
                }
            }
        }
        let detail = format!("{}{}", end.detail, end.error.map(|e| format!(": {e}")).unwrap_or_default());
        super::ingest::insert_event(&mut *tx, self.node(), now, &Event::new(end.event).detail(&detail)).await?;
        tx.commit().await?;
        Ok(finished)
    }

    /// Puts back in the outbox the deliveries (and messages) left `sending` by this node (it stopped or
    /// crashed mid-send; the destination may have the object already, and storing the same SOP
    /// Instance UID again is harmless) and those whose lease expired. Returns how many.
    pub async fn requeue_abandoned_deliveries(&self) -> Result<u64> {
        let messages = self.requeue_abandoned(REQUEUE_ABANDONED_MESSAGES).await?;
        Ok(self.requeue_abandoned(REQUEUE_ABANDONED_DELIVERIES).await? + messages)
    }

    /// Deliveries, newest first; only the failed ones with `failed_only`.
    pub async fn list_deliveries(&self, failed_only: bool, limit: i64) -> Result<Vec<DeliveryRow>> {
        Ok(sqlx::query_as(
            "SELECT d.id, d.destination, o.kind, o.sop_instance_uid, d.state, d.attempts, d.last_error, \
                    d.next_attempt_at, d.delivered_at \
             FROM deliveries d JOIN outputs o ON o.id = d.output_id \
             WHERE ($1 = 0 OR d.state = 'failed') ORDER BY d.id DESC LIMIT $2",
        )
        .bind(failed_only as i64)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Deliveries and messages not yet done, by destination (to warn of those a configuration no longer names).
    pub async fn unfinished_deliveries_by_destination(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT destination, COUNT(*) FROM ( \
                 SELECT destination FROM deliveries WHERE state IN ('pending', 'sending') \
                 UNION ALL SELECT destination FROM messages WHERE state IN ('pending', 'sending')) waiting \
             GROUP BY destination ORDER BY destination",
        )
        .fetch_all(self.pool())
        .await?)
    }

    /// Puts failed deliveries back in the queue (one by id, or all): an admin's `retry`.
    /// Returns how many were re-queued.
    pub async fn requeue_failed_deliveries(&self, id: Option<i64>) -> Result<u64> {
        self.requeue_failed(Some(LOCK_FAILED_OUTPUTS), REQUEUE_FAILED_DELIVERIES, id, "delivery ", "deliveries").await
    }

    /// Puts failed rows of an outbox table back in the queue (`sql`: [`REQUEUE_FAILED_DELIVERIES`]
    /// or `REQUEUE_FAILED_MESSAGES`) and records it; `one` prefixes an ID, `all` names the rows.
    /// `lock` first takes the row locks of what the rows send.
    pub(super) async fn requeue_failed(
        &self,
        lock: Option<&'static str>,
        sql: &'static str,
        id: Option<i64>,
        one: &str,
        all: &str,
    ) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        if let Some(lock) = lock {
            sqlx::query(lock).bind(id).execute(&mut *tx).await?;
        }
        let n = sqlx::query(sql).bind(self.now()).bind(id).execute(&mut *tx).await?.rows_affected();
        if n > 0 {
            let detail = match id {
                Some(id) => format!("{one}{id} re-queued"),
                None => format!("{n} failed {all} re-queued"),
            };
            let event = Event::new(EventKind::DeliveriesRequeued).detail(&detail);
            super::ingest::insert_event(&mut *tx, self.node(), self.now(), &event).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Puts back the rows of an outbox table left `sending` by this node or under an expired
    /// lease (`sql`: [`REQUEUE_ABANDONED_DELIVERIES`] or `REQUEUE_ABANDONED_MESSAGES`).
    pub(super) async fn requeue_abandoned(&self, sql: &'static str) -> Result<u64> {
        Ok(sqlx::query(sql).bind(self.now()).bind(self.node()).execute(self.pool()).await?.rows_affected())
    }
}
