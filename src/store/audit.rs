//! Audit records waiting for their repositories: one row per record and repository, written
//! with what it records where that writes, read in order by the sender of the repository and
//! deleted once the repository has it; the oldest dropped above the configured backlog.

use sqlx::AnyConnection;

use super::{Result, Store};
use crate::audit::{AuditEvent, AuditedStudy, Auditor};

/// A record as a sender reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub event: String,
    pub message: String,
}

/// Ids deleted in one statement: a fixed number of placeholders (the last id repeated), so
/// that every delete is the same statement.
const DELETE_CHUNK: usize = 32;
const DELETE_DELIVERED: &str = "DELETE FROM audit_records WHERE id IN ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32)";

/// The statement that finds a study and its patient, given what leads to the study (`$1`).
macro_rules! study_of {
    ($from:literal) => {
        concat!("SELECT s.study_instance_uid, s.accession_number, s.patient_id, s.patient_name FROM ", $from)
    };
}

impl Store {
    /// The store, recording audit events for the repositories of `auditor` (none: nothing recorded).
    pub fn with_auditor(mut self, auditor: Option<Auditor>) -> Store {
        self.auditor = auditor.map(std::sync::Arc::new);
        self
    }

    pub fn auditor(&self) -> Option<&Auditor> {
        self.auditor.as_deref()
    }

    /// Records `event` in a transaction of its own.
    pub async fn audit(&self, event: &AuditEvent<'_>) -> Result<()> {
        if self.auditor.is_none() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        self.audit_in(&mut tx, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records `event` on `conn`: in the transaction of what it records.
    pub(crate) async fn audit_in(&self, conn: &mut AnyConnection, event: &AuditEvent<'_>) -> Result<()> {
        let Some(auditor) = &self.auditor else { return Ok(()) };
        let at = self.now();
        let message = auditor.message(event, at);
        for repository in &auditor.repositories {
            sqlx::query("INSERT INTO audit_records (node, repository, at, event, message) VALUES ($1, $2, $3, $4, $5)")
                .bind(self.node())
                .bind(repository)
                .bind(at)
                .bind(event.label())
                .bind(&message)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// The records of this node for `repository` in order: those after `after`, and any before
    /// `below` (a record committed after later ones were read, as concurrent transactions may).
    pub async fn audit_waiting(&self, repository: &str, after: i64, below: i64, limit: i64) -> Result<Vec<AuditRow>> {
        Ok(sqlx::query_as(
            "SELECT id, at, event, message FROM audit_records \
             WHERE node = $1 AND repository = $2 AND (id > $3 OR id < $4) ORDER BY id LIMIT $5",
        )
        .bind(self.node())
        .bind(repository)
        .bind(after)
        .bind(below)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Deletes records the repository has.
    pub async fn audit_delivered(&self, ids: &[i64]) -> Result<()> {
        for chunk in ids.chunks(DELETE_CHUNK) {
            let mut query = sqlx::query(DELETE_DELIVERED);
            for i in 0..DELETE_CHUNK {
                query = query.bind(chunk[i.min(chunk.len() - 1)]);
            }
            query.execute(self.pool()).await?;
        }
        Ok(())
    }

    /// How many records of this node wait, per repository.
    pub async fn audit_backlog(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT repository, COUNT(*) FROM audit_records WHERE node = $1 GROUP BY repository ORDER BY repository",
        )
        .bind(self.node())
        .fetch_all(self.pool())
        .await?)
    }

    /// Deletes the oldest `n` records waiting for `repository`; returns how many went.
    pub async fn audit_drop_oldest(&self, repository: &str, n: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM audit_records WHERE id IN (SELECT id FROM audit_records \
             WHERE node = $1 AND repository = $2 ORDER BY id LIMIT $3)",
        )
        .bind(self.node())
        .bind(repository)
        .bind(n)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// The study (and patient) a study UID names, for a record of its reading.
    pub async fn audited_study(&self, study_instance_uid: &str) -> Result<Option<AuditedStudy>> {
        self.study_for(study_of!("studies s WHERE s.study_instance_uid = $1"), study_instance_uid).await
    }

    /// The study (and patient) of an instance, by its SOP Instance UID.
    pub async fn audited_study_of_instance(&self, sop_instance_uid: &str) -> Result<Option<AuditedStudy>> {
        self.study_for(
            study_of!("instances i JOIN studies s ON s.id = i.study_id WHERE i.sop_instance_uid = $1 LIMIT 1"),
            sop_instance_uid,
        )
        .await
    }

    async fn study_for(&self, sql: &'static str, key: &str) -> Result<Option<AuditedStudy>> {
        let row: Option<StudyColumns> = sqlx::query_as(sql).bind(key).fetch_optional(self.pool()).await?;
        Ok(row.map(StudyColumns::into_study))
    }

    /// The study of the object of a delivery, on `conn` (its transaction).
    pub(crate) async fn audited_study_of_delivery(
        conn: &mut AnyConnection,
        delivery_id: i64,
    ) -> Result<Option<AuditedStudy>> {
        let row: Option<StudyColumns> = sqlx::query_as(study_of!(
            "deliveries d JOIN outputs o ON o.id = d.output_id \
             LEFT JOIN results r ON r.id = o.result_id LEFT JOIN notices n ON n.id = o.notice_id \
             JOIN instances i ON i.id = COALESCE(r.instance_id, n.instance_id) \
             JOIN studies s ON s.id = i.study_id WHERE d.id = $1"
        ))
        .bind(delivery_id)
        .fetch_optional(&mut *conn)
        .await?;
        let sop_class: Option<(String,)> = sqlx::query_as(
            "SELECT o.sop_class_uid FROM deliveries d JOIN outputs o ON o.id = d.output_id WHERE d.id = $1",
        )
        .bind(delivery_id)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(row.map(|r| {
            let mut study = r.into_study();
            if let Some((uid,)) = sop_class {
                study.add_instance(&uid);
            }
            study
        }))
    }

    /// The study of a message, on `conn` (its transaction).
    pub(crate) async fn audited_study_of_message(
        conn: &mut AnyConnection,
        message_id: i64,
    ) -> Result<Option<AuditedStudy>> {
        let row: Option<StudyColumns> =
            sqlx::query_as(study_of!("messages m JOIN studies s ON s.id = m.study_id WHERE m.id = $1"))
                .bind(message_id)
                .fetch_optional(&mut *conn)
                .await?;
        Ok(row.map(StudyColumns::into_study))
    }
}

#[derive(sqlx::FromRow)]
struct StudyColumns {
    study_instance_uid: String,
    accession_number: Option<String>,
    patient_id: Option<String>,
    patient_name: Option<String>,
}

impl StudyColumns {
    fn into_study(self) -> AuditedStudy {
        AuditedStudy {
            study_instance_uid: self.study_instance_uid,
            accession_number: self.accession_number,
            patient_id: self.patient_id,
            patient_name: self.patient_name,
            sop_classes: Vec::new(),
        }
    }
}
