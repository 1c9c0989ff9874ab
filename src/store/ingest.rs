//! Recording what arrives: studies, instance versions, their analysis jobs, and the audit trail.

use sqlx::{Any, AnyConnection, AnyPool, Executor};
use tokio::sync::{mpsc, oneshot};

use super::{Backend, Clock, Result, Store, StoreError};
use crate::domain::{storable_text, EventKind, InstanceHeader, JobState};

/// The most instances committed in one transaction.
const MAX_BATCH: usize = 64;

/// A received instance whose spool file is in place, ready to be committed.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub header: InstanceHeader,
    pub version: i64,
    pub transfer_syntax_uid: String,
    pub calling_ae: String,
    pub peer_address: String,
    /// Relative to the spool directory.
    pub path: String,
    pub size_bytes: i64,
    /// `None`: queue the job for analysis; `Some(reason)`: record it as skipped (store-only classes).
    pub skip_reason: Option<String>,
    /// The event recorded with the rows (`instance_stored`, `instance_recovered`).
    pub event_kind: EventKind,
}

/// What the database already holds under a SOP Instance UID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousVersion {
    pub version: i64,
    pub path: String,
    /// Retention let its file go (a crash may have left it on disk, to be swept).
    pub released: bool,
}

/// The ids of the rows written for a new instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub instance_id: i64,
    pub job_id: i64,
}

/// One line of the audit trail.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub kind: EventKind,
    pub peer_ae: Option<&'a str>,
    pub peer_address: Option<&'a str>,
    pub sop_instance_uid: Option<&'a str>,
    pub detail: Option<&'a str>,
}

impl<'a> Event<'a> {
    pub fn new(kind: EventKind) -> Event<'a> {
        Event { kind, peer_ae: None, peer_address: None, sop_instance_uid: None, detail: None }
    }

    pub fn detail(self, detail: &'a str) -> Event<'a> {
        Event { detail: Some(detail), ..self }
    }

    pub fn instance(self, sop_instance_uid: &'a str) -> Event<'a> {
        Event { sop_instance_uid: Some(sop_instance_uid), ..self }
    }

    pub fn peer(self, ae_title: &'a str, address: &'a str) -> Event<'a> {
        Event { peer_ae: Some(ae_title), peer_address: Some(address), ..self }
    }
}

impl Store {
    /// The newest version stored under this SOP Instance UID, if any.
    pub async fn latest_version(&self, sop_instance_uid: &str) -> Result<Option<PreviousVersion>> {
        let row: Option<(i64, String, Option<i64>)> = sqlx::query_as(
            "SELECT version, path, released_at FROM instances WHERE sop_instance_uid = $1 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(sop_instance_uid)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|(version, path, released_at)| PreviousVersion { version, path, released: released_at.is_some() }))
    }

    /// Commits the study, instance, job and event rows of a received instance. Instances that
    /// arrive while a commit is in flight are committed together in the next transaction.
    pub async fn record_instance(&self, new: &NewInstance) -> Result<Recorded> {
        let recorded = self.committer.commit(new.clone()).await?;
        if new.skip_reason.is_none() {
            self.jobs_queued.notify_one();
        }
        Ok(recorded)
    }

    /// Appends to the audit trail.
    pub async fn record_event(&self, event: &Event<'_>) -> Result<()> {
        insert_event(self.pool(), &self.node, self.now(), event).await
    }

    /// Every spool path the database knows, for start-up reconciliation.
    pub async fn known_paths(&self) -> Result<std::collections::HashSet<String>> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT path FROM instances").fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(|(p,)| p).collect())
    }

    /// How many instances (SOP Instance UIDs) of the series the node has received, those whose
    /// files retention released included: a series pulled once is not pulled again.
    pub async fn held_instances(&self, study_instance_uid: &str, series_instance_uid: &str) -> Result<i64> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(DISTINCT i.sop_instance_uid) FROM instances i JOIN studies s ON s.id = i.study_id \
             WHERE s.study_instance_uid = $1 AND i.series_instance_uid = $2",
        )
        .bind(study_instance_uid)
        .bind(series_instance_uid)
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    /// When the last image arrived (ms since the epoch), none if none ever did.
    pub async fn last_received_at(&self) -> Result<Option<i64>> {
        let (at,): (Option<i64>,) =
            sqlx::query_as("SELECT MAX(received_at) FROM instances").fetch_one(self.pool()).await?;
        Ok(at)
    }

    /// A cheap round trip, to tell whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }
}

pub(super) async fn insert_event<'e, E: Executor<'e, Database = Any>>(
    executor: E,
    node: &str,
    at: i64,
    e: &Event<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (at, node, kind, peer_ae, peer_address, sop_instance_uid, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(at)
    .bind(node)
    .bind(e.kind)
    // peer strings may hold anything (see `storable_text`)
    .bind(e.peer_ae.map(storable_text))
    .bind(e.peer_address)
    .bind(e.sop_instance_uid.map(storable_text))
    .bind(e.detail.map(storable_text))
    .execute(executor)
    .await?;
    Ok(())
}

type Request = (NewInstance, oneshot::Sender<Result<Recorded>>);

/// The handle to the task that commits received instances (group commit).
#[derive(Clone)]
pub(super) struct Committer {
    tx: mpsc::Sender<Request>,
}

impl Committer {
    pub(super) fn spawn(pool: AnyPool, node: String, backend: Backend, clock: Clock) -> Committer {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run_committer(pool, node, backend, clock, rx));
        Committer { tx }
    }

    async fn commit(&self, new: NewInstance) -> Result<Recorded> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Sql(sqlx::Error::PoolClosed);
        self.tx.send((new, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Takes whatever has queued up since the last commit and commits it in one transaction. If
/// that transaction fails, each instance is retried alone, so one bad row fails only itself.
async fn run_committer(pool: AnyPool, node: String, backend: Backend, clock: Clock, mut rx: mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let committer = BatchCommitter { pool, node, backend, clock };
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let together = committer.commit(batch.iter().map(|(new, _)| new)).await;
        match together {
            Ok(ids) => {
                for ((_, reply), id) in batch.drain(..).zip(ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(e) if batch.len() == 1 => {
                let (_, reply) = batch.pop().expect("one request in the batch");
                let _ = reply.send(Err(e));
            }
            Err(e) => {
                tracing::debug!(instances = batch.len(), error = %e, "group commit failed; committing one by one");
                for (new, reply) in batch.drain(..) {
                    let alone = committer.commit(std::iter::once(&new)).await;
                    let _ = reply.send(alone.map(|ids| ids[0]));
                }
            }
        }
    }
}

/// Commits instances' rows in one transaction.
struct BatchCommitter {
    pool: AnyPool,
    node: String,
    backend: Backend,
    clock: Clock,
}

impl BatchCommitter {
    async fn commit<'a>(&self, instances: impl Iterator<Item = &'a NewInstance>) -> Result<Vec<Recorded>> {
        let mut tx = super::begin_write(&self.pool, self.backend).await?;
        let mut ids = Vec::new();
        for new in instances {
            ids.push(insert_instance(&mut tx, &self.node, self.clock.now_ms(), new).await?);
        }
        tx.commit().await?;
        Ok(ids)
    }
}

/// The study, instance, job and event rows of one instance, inside the caller's transaction.
/// A study whose patient attributes retention removed takes them again from a new image.
async fn insert_instance(conn: &mut AnyConnection, node: &str, now: i64, new: &NewInstance) -> Result<Recorded> {
    let h = &new.header;
    let (study_id,): (i64,) = sqlx::query_as(
        "INSERT INTO studies (study_instance_uid, patient_id, patient_name, accession_number, study_date, \
                              study_description, instance_count, first_received_at, last_received_at, \
                              issuer_of_patient_id, patient_birth_date, patient_sex) \
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7, $8, $9, $10) \
         ON CONFLICT (study_instance_uid) DO UPDATE SET \
             instance_count = studies.instance_count + 1, last_received_at = excluded.last_received_at, \
             patient_id = CASE WHEN studies.patient_data_removed_at IS NULL THEN studies.patient_id \
                 ELSE excluded.patient_id END, \
             patient_name = CASE WHEN studies.patient_data_removed_at IS NULL THEN studies.patient_name \
                 ELSE excluded.patient_name END, \
             issuer_of_patient_id = CASE WHEN studies.patient_data_removed_at IS NULL \
                 THEN studies.issuer_of_patient_id ELSE excluded.issuer_of_patient_id END, \
             patient_birth_date = CASE WHEN studies.patient_data_removed_at IS NULL \
                 THEN studies.patient_birth_date ELSE excluded.patient_birth_date END, \
             patient_sex = CASE WHEN studies.patient_data_removed_at IS NULL THEN studies.patient_sex \
                 ELSE excluded.patient_sex END, \
             patient_data_removed_at = NULL \
         RETURNING id",
    )
    .bind(&h.study_instance_uid)
    .bind(&h.patient_id)
    .bind(&h.patient_name)
    .bind(&h.accession_number)
    .bind(&h.study_date)
    .bind(&h.study_description)
    .bind(now)
    .bind(&h.issuer_of_patient_id)
    .bind(&h.patient_birth_date)
    .bind(&h.patient_sex)
    .fetch_one(&mut *conn)
    .await?;
    let (instance_id,): (i64,) = sqlx::query_as(
        "INSERT INTO instances (sop_instance_uid, version, study_id, series_instance_uid, sop_class_uid, \
                                transfer_syntax_uid, modality, body_part, view_position, calling_ae, \
                                peer_address, path, size_bytes, received_at, node) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
    )
    .bind(&h.sop_instance_uid)
    .bind(new.version)
    .bind(study_id)
    .bind(&h.series_instance_uid)
    .bind(&h.sop_class_uid)
    .bind(&new.transfer_syntax_uid)
    .bind(&h.modality)
    .bind(&h.body_part)
    .bind(&h.view_position)
    .bind(storable_text(&new.calling_ae))
    .bind(&new.peer_address)
    .bind(&new.path)
    .bind(new.size_bytes)
    .bind(now)
    .bind(node)
    .fetch_one(&mut *conn)
    .await?;
    let state = if new.skip_reason.is_some() { JobState::Skipped } else { JobState::Queued };
    let (job_id,): (i64,) = sqlx::query_as(
        "INSERT INTO jobs (instance_id, state, reason, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) RETURNING id",
    )
    .bind(instance_id)
    .bind(state)
    .bind(&new.skip_reason)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let detail = format!("version {} ({} bytes, {})", new.version, new.size_bytes, new.transfer_syntax_uid);
    let event = Event::new(new.event_kind)
        .peer(&new.calling_ae, &new.peer_address)
        .instance(&h.sop_instance_uid)
        .detail(&detail);
    insert_event(&mut *conn, node, now, &event).await?;
    Ok(Recorded { instance_id, job_id })
}
