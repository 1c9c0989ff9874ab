//! What the worklist and `status` read: each study with its analysis and delivery state, one
//! study's instances with their results and deliveries, and the node's counts.

use serde::Serialize;

use super::{study_outputs, Backend, JobScope, Result, Store};
use crate::domain::{Agreement, Decision, DeliveryState, DestinationKind, JobState, ObjectKind, Priority};

/// Jobs by state, results by priority, deliveries by state and messages by kind and state; a
/// value with none is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub jobs: Vec<(JobState, i64)>,
    pub results: Vec<(Priority, i64)>,
    pub deliveries: Vec<(DeliveryState, i64)>,
    pub messages: Vec<(DestinationKind, DeliveryState, i64)>,
}

impl Counts {
    pub fn jobs(&self, state: JobState) -> i64 {
        count(&self.jobs, state)
    }

    pub fn results(&self, priority: Priority) -> i64 {
        count(&self.results, priority)
    }

    pub fn deliveries(&self, state: DeliveryState) -> i64 {
        count(&self.deliveries, state)
    }

    /// Messages of every kind in `state`.
    pub fn messages(&self, state: DeliveryState) -> i64 {
        self.messages.iter().filter(|(_, s, _)| *s == state).map(|(_, _, n)| n).sum()
    }
}

/// Rows with their values spelt out, for `/metrics` and `status --json`.
pub fn by_name<T: std::fmt::Display>(rows: &[(T, i64)]) -> Vec<(String, i64)> {
    rows.iter().map(|(value, n)| (value.to_string(), *n)).collect()
}

fn count<T: PartialEq>(rows: &[(T, i64)], value: T) -> i64 {
    rows.iter().find(|(v, _)| *v == value).map_or(0, |(_, n)| *n)
}

/// A study as the worklist lists it (the ordering, which depends on the time, is the caller's).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorklistStudy {
    pub study_instance_uid: String,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub accession_number: Option<String>,
    pub study_date: Option<String>,
    pub study_description: Option<String>,
    /// The highest priority of its analysed images; none before the first result.
    pub priority: Option<Priority>,
    /// The highest probability of its analysed images.
    pub probability: Option<f64>,
    pub instance_count: i64,
    pub first_received_at: i64,
    pub last_received_at: i64,
    /// Jobs queued or running, failed, and results.
    pub jobs_pending: i64,
    pub jobs_failed: i64,
    /// Of the failed jobs, those quarantined by the crash-loop breaker.
    pub jobs_quarantined: i64,
    pub results: i64,
    /// Deliveries of its objects, by state.
    pub deliveries_pending: i64,
    pub deliveries_delivered: i64,
    pub deliveries_failed: i64,
    /// The other node that keeps images of it still to analyse: with a spool per node, they
    /// wait for that node (`pneumotriage handover` when it is gone).
    pub waiting_for_node: Option<String>,
    /// Why its latest image that ended without a result has none (skipped or failed, with the
    /// job's reason): what the worklist shows of a study none of whose images was analysed.
    pub unanalysed_reason: Option<String>,
    /// Its images whose files retention let go (rows, results and deliveries stay).
    pub images_released: i64,
    /// When retention removed its patient attributes (`retention.patient_data_days`).
    pub patient_data_removed_at: Option<i64>,
}

/// One instance of a study, with its job and result.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StudyInstance {
    pub sop_instance_uid: String,
    pub version: i64,
    pub sop_class_uid: String,
    pub modality: Option<String>,
    pub view_position: Option<String>,
    pub received_at: i64,
    pub job_state: Option<JobState>,
    pub job_reason: Option<String>,
    pub decision: Option<Decision>,
    pub priority: Option<Priority>,
    pub probability: Option<f64>,
    pub mask_area_px: Option<i64>,
    pub mask_area_mm2: Option<f64>,
    pub classifier: Option<String>,
    pub segmenter: Option<String>,
    pub analysed_at: Option<i64>,
    /// What a verdict is given on (`POST /api/results/{result_id}/verdict`).
    pub result_id: Option<i64>,
    /// The latest radiologist's verdict on the result: agree or disagree, by whom, when.
    pub verdict: Option<Agreement>,
    pub verdict_note: Option<String>,
    pub verdict_by: Option<String>,
    pub verdict_at: Option<i64>,
    /// When retention let the image go (its row and result stay; its overlay cannot be drawn).
    pub released_at: Option<i64>,
}

/// An object made of a study's result and one of its deliveries.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StudyDelivery {
    /// The source image's SOP Instance UID.
    pub source_sop_instance_uid: String,
    pub kind: ObjectKind,
    pub sop_instance_uid: String,
    pub destination: Option<String>,
    pub state: Option<DeliveryState>,
    pub attempts: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// What the overlay of an instance is drawn from.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OverlaySource {
    /// Relative to the spool.
    pub path: String,
    pub mask_rle: Option<String>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub released_at: Option<i64>,
}

/// How many deliveries of the objects made of study `s`'s images are in `$state` (an SQL
/// condition on `d.state`): from its instances through indexes, one chain for the objects of
/// results and one for those of notices, in the order the CROSS JOINs fix for SQLite.
macro_rules! deliveries_in_state {
    ($state:literal) => {
        concat!(
            "((SELECT COUNT(*) FROM instances i CROSS JOIN results r CROSS JOIN outputs o CROSS JOIN deliveries d \
               WHERE i.study_id = s.id AND r.instance_id = i.id AND o.result_id = r.id AND d.output_id = o.id \
                 AND d.state ",
            $state,
            ") \
            + (SELECT COUNT(*) FROM instances i CROSS JOIN notices n CROSS JOIN outputs o CROSS JOIN deliveries d \
               WHERE i.study_id = s.id AND n.instance_id = i.id AND o.notice_id = n.id AND d.output_id = o.id \
                 AND d.state ",
            $state,
            "))"
        )
    };
}

const STUDIES: &str = concat!(
    "SELECT s.study_instance_uid, s.patient_id, s.patient_name, s.accession_number, s.study_date, \
        s.study_description, s.priority, \
        (SELECT MAX(r.probability) FROM results r JOIN instances i ON i.id = r.instance_id \
          WHERE i.study_id = s.id) AS probability, \
        s.instance_count, s.first_received_at, s.last_received_at, \
        (SELECT COUNT(*) FROM jobs j JOIN instances i ON i.id = j.instance_id \
          WHERE i.study_id = s.id AND j.state IN ('queued', 'running')) AS jobs_pending, \
        (SELECT COUNT(*) FROM jobs j JOIN instances i ON i.id = j.instance_id \
          WHERE i.study_id = s.id AND j.state = 'failed') AS jobs_failed, \
        (SELECT COUNT(*) FROM jobs j JOIN instances i ON i.id = j.instance_id \
          WHERE i.study_id = s.id AND j.quarantined_at IS NOT NULL) AS jobs_quarantined, \
        (SELECT COUNT(*) FROM results r JOIN instances i ON i.id = r.instance_id \
          WHERE i.study_id = s.id) AS results, \
        ",
    deliveries_in_state!("IN ('pending', 'sending')"),
    " \
          AS deliveries_pending, \
        ",
    deliveries_in_state!("= 'delivered'"),
    " \
          AS deliveries_delivered, \
        ",
    deliveries_in_state!("= 'failed'"),
    " \
          AS deliveries_failed, \
        (SELECT MIN(i.node) FROM jobs j JOIN instances i ON i.id = j.instance_id \
          WHERE i.study_id = s.id AND j.state IN ('queued', 'running') AND i.node <> $3) AS waiting_for_node, \
        (SELECT j.reason FROM jobs j JOIN instances i ON i.id = j.instance_id \
          WHERE i.study_id = s.id AND j.state IN ('skipped', 'failed') \
          ORDER BY j.updated_at DESC, j.id DESC LIMIT 1) AS unanalysed_reason, \
        (SELECT COUNT(*) FROM instances i WHERE i.study_id = s.id AND i.released_at IS NOT NULL) \
          AS images_released, \
        s.patient_data_removed_at \
     FROM studies s"
);

/// The worklist's query: $1 a study's UID or NULL, $2 the limit, $3 this node with a spool of
/// its own (or NULL).
fn worklist_sql() -> String {
    format!(
        "{STUDIES} WHERE ($1 IS NULL OR s.study_instance_uid = $1) \
         ORDER BY s.last_received_at DESC, s.id DESC LIMIT $2"
    )
}

impl Store {
    /// The `limit` studies received most recently, or the one with `study_instance_uid`. With
    /// [`JobScope::OwnSpool`], a study whose images another node keeps says that it waits for it;
    /// with a shared spool any node analyses them, and none is waited for.
    pub async fn worklist(
        &self,
        study_instance_uid: Option<&str>,
        limit: i64,
        scope: JobScope,
    ) -> Result<Vec<WorklistStudy>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(worklist_sql()))
            .bind(study_instance_uid)
            .bind(limit)
            // `i.node <> NULL` holds for no row
            .bind((scope == JobScope::OwnSpool).then(|| self.node()))
            .fetch_all(self.pool())
            .await?)
    }

    /// The instances of a study, oldest first, with their jobs and results.
    pub async fn study_instances(&self, study_instance_uid: &str) -> Result<Vec<StudyInstance>> {
        Ok(sqlx::query_as(
            "SELECT i.sop_instance_uid, i.version, i.sop_class_uid, i.modality, i.view_position, i.received_at, \
                    j.state AS job_state, j.reason AS job_reason, r.decision, r.priority, r.probability, \
                    r.mask_area_px, r.mask_area_mm2, \
                    r.classifier_name || ' ' || r.classifier_version AS classifier, \
                    r.segmenter_name || ' ' || r.segmenter_version AS segmenter, r.created_at AS analysed_at, \
                    r.id AS result_id, v.verdict, v.note AS verdict_note, v.reviewer AS verdict_by, \
                    v.created_at AS verdict_at, i.released_at \
             FROM instances i JOIN studies s ON s.id = i.study_id LEFT JOIN jobs j ON j.instance_id = i.id \
             LEFT JOIN results r ON r.instance_id = i.id \
             LEFT JOIN verdicts v ON v.id = (SELECT MAX(l.id) FROM verdicts l WHERE l.result_id = r.id) \
             WHERE s.study_instance_uid = $1 ORDER BY i.received_at, i.id",
        )
        .bind(study_instance_uid)
        .fetch_all(self.pool())
        .await?)
    }

    /// The objects made of a study's results and their deliveries.
    pub async fn study_deliveries(&self, study_instance_uid: &str) -> Result<Vec<StudyDelivery>> {
        Ok(sqlx::query_as(concat!(
            "SELECT so.source_uid AS source_sop_instance_uid, so.kind, so.sop_instance_uid, d.destination, \
                    d.state, d.attempts, d.last_error, d.delivered_at \
             FROM ",
            study_outputs!("(SELECT id FROM studies WHERE study_instance_uid = $1)"),
            " so LEFT JOIN deliveries d ON d.output_id = so.id ORDER BY so.id, d.id"
        ))
        .bind(study_instance_uid)
        .fetch_all(self.pool())
        .await?)
    }

    /// The spool file and mask of the latest version of an instance.
    pub async fn overlay_source(&self, sop_instance_uid: &str) -> Result<Option<OverlaySource>> {
        Ok(sqlx::query_as(
            "SELECT i.path, r.mask_rle, r.width, r.height, i.released_at FROM instances i LEFT JOIN results r ON r.instance_id = i.id \
             WHERE i.sop_instance_uid = $1 ORDER BY i.version DESC LIMIT 1",
        )
        .bind(sop_instance_uid)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The node's work by state and priority, for `status` and `/metrics`: read from the
    /// tallies the database keeps as rows change (migration 0012), a few rows whatever the
    /// history, in one statement (one snapshot: a scrape never sees a result's messages
    /// without its deliveries).
    pub async fn counts(&self) -> Result<Counts> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT subject, kind, state, CAST(SUM(n) AS BIGINT) FROM \
                 (SELECT subject, kind, state, n FROM tallies \
                  UNION ALL SELECT subject, kind, state, n FROM tally_changes) t \
             GROUP BY subject, kind, state ORDER BY subject, kind, state",
        )
        .fetch_all(self.pool())
        .await?;
        let mut counts = Counts::default();
        for (subject, kind, state, n) in rows.into_iter().filter(|row| row.3 != 0) {
            let unknown = || sqlx::Error::Decode(format!("tally of {subject}: unknown {kind} {state}").into());
            match subject.as_str() {
                "jobs" => counts.jobs.push((state.parse().map_err(|_| unknown())?, n)),
                "results" => counts.results.push((state.parse().map_err(|_| unknown())?, n)),
                "deliveries" => counts.deliveries.push((state.parse().map_err(|_| unknown())?, n)),
                "messages" => counts.messages.push((
                    kind.parse().map_err(|_| unknown())?,
                    state.parse().map_err(|_| unknown())?,
                    n,
                )),
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Folds the changes the triggers appended into the tallies (retention does it every round),
    /// so that counting reads a few rows. PostgreSQL deletes and adds in one statement: a change
    /// committed meanwhile is either folded or left for the next time, never lost.
    pub async fn fold_tallies(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        match self.backend() {
            Backend::Postgres => {
                sqlx::query(
                    "WITH folded AS (DELETE FROM tally_changes RETURNING subject, kind, state, n) \
                     INSERT INTO tallies (subject, kind, state, n) \
                     SELECT subject, kind, state, SUM(n) FROM folded GROUP BY subject, kind, state \
                     ON CONFLICT (subject, kind, state) DO UPDATE SET n = tallies.n + excluded.n",
                )
                .execute(&mut *tx)
                .await?;
            }
            Backend::Sqlite => {
                // one writer at a time: nothing is appended between these two statements
                sqlx::query(
                    "INSERT INTO tallies (subject, kind, state, n) \
                     SELECT subject, kind, state, SUM(n) FROM tally_changes WHERE true GROUP BY subject, kind, state \
                     ON CONFLICT (subject, kind, state) DO UPDATE SET n = tallies.n + excluded.n",
                )
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM tally_changes").execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The decisions of each classifier version's first `n` results ("name version", decision,
    /// count): the baseline its positive rate is watched against for drift.
    pub async fn baseline_decisions(&self, n: i64) -> Result<Vec<(String, Decision, i64)>> {
        Ok(sqlx::query_as(
            "SELECT model, decision, COUNT(*) FROM ( \
                 SELECT classifier_name || ' ' || classifier_version AS model, decision, \
                        ROW_NUMBER() OVER (PARTITION BY classifier_name, classifier_version ORDER BY id) AS n \
                 FROM results) first \
             WHERE n <= $1 GROUP BY model, decision ORDER BY model, decision",
        )
        .bind(n)
        .fetch_all(self.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite reads the most recent studies in the index's order and stops at the limit, and
    /// reaches each study's rows through indexes: a page costs what it shows, not the history
    /// (benches/growth.rs has the figures). PostgreSQL chooses by its statistics; the bench
    /// times it.
    #[tokio::test]
    async fn the_worklist_is_read_through_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/plan.db", dir.path().display()), 1, "test").await.unwrap();
        store.migrate().await.unwrap();
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {}", worklist_sql())))
                .bind(None::<String>)
                .bind(50i64)
                .bind(None::<String>)
                .fetch_all(store.pool())
                .await
                .unwrap();
        // a sort at the top level would sort every study; a study's own few jobs may be sorted
        let top_sort = plan.iter().any(|(_, parent, _, d)| *parent == 0 && d.contains("TEMP B-TREE"));
        let plan: Vec<&str> = plan.iter().map(|(_, _, _, detail)| detail.as_str()).collect();
        assert!(plan.iter().any(|d| d.contains("studies_received")), "{plan:#?}");
        assert!(!top_sort, "no sort of every study: {plan:#?}");
        // a study's deliveries are found from its outputs, not among every delivery in a state
        assert!(!plan.iter().any(|d| d.contains("deliveries_due")), "{plan:#?}");
        // every other table through an index (a SCAN of anything but studies reads it whole)
        let scans: Vec<&&str> =
            plan.iter().filter(|d| d.starts_with("SCAN") && !d.contains("studies_received")).collect();
        assert!(scans.is_empty(), "{scans:#?}\n{plan:#?}");
    }
}
