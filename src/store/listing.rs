//! Read-only views for the CLI (`studies`, `instances`); the worklist has its own (`worklist.rs`).

use serde::Serialize;

use super::{Result, Store};
use crate::domain::{JobState, Priority};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StudyRow {
    pub study_instance_uid: String,
    pub patient_id: Option<String>,
    pub accession_number: Option<String>,
    pub study_date: Option<String>,
    pub priority: Option<Priority>,
    pub instance_count: i64,
    pub first_received_at: i64,
    pub last_received_at: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InstanceRow {
    pub id: i64,
    pub sop_instance_uid: String,
    pub version: i64,
    pub study_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub modality: Option<String>,
    pub calling_ae: String,
    pub path: String,
    pub size_bytes: i64,
    pub received_at: i64,
    pub job_state: Option<JobState>,
    pub job_reason: Option<String>,
}

impl Store {
    /// Studies, most recently received first.
    pub async fn list_studies(&self, limit: i64) -> Result<Vec<StudyRow>> {
        Ok(sqlx::query_as(
            "SELECT study_instance_uid, patient_id, accession_number, study_date, priority, instance_count, \
                    first_received_at, last_received_at \
             FROM studies ORDER BY last_received_at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Instances, most recent first, optionally of one study.
    pub async fn list_instances(&self, study: Option<&str>, limit: i64) -> Result<Vec<InstanceRow>> {
        Ok(sqlx::query_as(
            "SELECT i.id, i.sop_instance_uid, i.version, s.study_instance_uid, i.sop_class_uid, \
                    i.transfer_syntax_uid, i.modality, i.calling_ae, i.path, i.size_bytes, i.received_at, \
                    j.state AS job_state, j.reason AS job_reason \
             FROM instances i JOIN studies s ON s.id = i.study_id LEFT JOIN jobs j ON j.instance_id = i.id \
             WHERE ($1 IS NULL OR s.study_instance_uid = $1) \
             ORDER BY i.received_at DESC, i.id DESC LIMIT $2",
        )
        .bind(study)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}
