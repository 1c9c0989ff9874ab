//! Retention: which received images and made objects may be let go, marking them released
//! before their files are removed, and the removal of patient attributes from old studies.
//!
//! An image may go once its job ended (done; or skipped, failed or quarantined, kept longer
//! for investigation) and every delivery of the objects made from it, and every message of its
//! study, ended before the cut-off. An object may go once each of its deliveries ended before
//! its cut-off. Rows are kept: a released row is the record of what was received and said.
//!
//! Marking and removing are two steps. The mark commits first; a crash before the file is gone
//! leaves a released row beside a file that the next sweep removes ([`Store::spool_rows`]). An
//! admin who re-queues a job or a delivery takes the row lock of the instance or object first
//! (see `jobs::requeue_failed_job`), and pruning checks again after taking its own, so that one
//! of the two always sees the other.

use crate::audit::{AuditEvent, AuditedStudy};
use std::collections::{HashMap, HashSet};

use super::{JobScope, Result, Store};

/// When things ended for them to be let go now: items that ended before these times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    /// Images whose analysis is done.
    pub analysed: i64,
    /// Images that were skipped, failed or quarantined.
    pub investigated: i64,
    /// Objects the node made.
    pub outputs: i64,
}

impl Cutoffs {
    /// Everything finished, whatever its age: what disk pressure lets go, oldest first.
    pub fn everything_finished(now: i64) -> Cutoffs {
        Cutoffs { analysed: now + 1, investigated: now + 1, outputs: now + 1 }
    }
}

/// A file pruning may delete (or did mark released), and why.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Releasable {
    pub id: i64,
    /// Relative to the spool (images) or the outputs folder (objects).
    pub path: String,
    pub size_bytes: i64,
    /// The job's state (images) or the object's kind (objects).
    pub what: String,
    /// When it was received (images) or made (objects), ms since the epoch.
    pub since: i64,
    /// When what it waited for ended, ms since the epoch.
    pub ended_at: i64,
}

/// The conditions on `instances i` joined with its job `j` that let an image go, for the
/// cut-offs `$1` (analysed) and `$2` (investigated); `released_at` is checked by the caller.
/// The deliveries of what was made from it are found through its result or notice (one index
/// chain each); the messages of its study through their study. (No apostrophes in this file:
/// a store test pairs quotes across it.)
macro_rules! image_may_go {
    () => {
        "((j.state = 'done' AND j.updated_at < $1) OR (j.state IN ('skipped', 'failed') AND j.updated_at < $2)) \
         AND NOT EXISTS (SELECT 1 FROM results r CROSS JOIN outputs o CROSS JOIN deliveries d \
             WHERE r.instance_id = i.id AND o.result_id = r.id AND d.output_id = o.id \
               AND (d.state IN ('pending', 'sending') \
                    OR d.updated_at >= CASE WHEN j.state = 'done' THEN $1 ELSE $2 END)) \
         AND NOT EXISTS (SELECT 1 FROM notices n CROSS JOIN outputs o CROSS JOIN deliveries d \
             WHERE n.instance_id = i.id AND o.notice_id = n.id AND d.output_id = o.id \
               AND (d.state IN ('pending', 'sending') \
                    OR d.updated_at >= CASE WHEN j.state = 'done' THEN $1 ELSE $2 END)) \
         AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.study_id = i.study_id \
               AND (m.state IN ('pending', 'sending') \
                    OR m.updated_at >= CASE WHEN j.state = 'done' THEN $1 ELSE $2 END))"
    };
}

/// The images that may go, oldest received first: `$3` any node (1) or only `$4` own and
/// unassigned ones, at most `$5`.
macro_rules! images_that_may_go {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM instances i CROSS JOIN jobs j \
             WHERE i.released_at IS NULL AND j.instance_id = i.id \
               AND ($3 = 1 OR i.node IS NULL OR i.node = $4) AND ",
            image_may_go!(),
            " ORDER BY i.received_at, i.id LIMIT $5"
        )
    };
}

/// The conditions on `outputs o` that let an object go, for the cut-off `$1`.
macro_rules! output_may_go {
    () => {
        "o.created_at < $1 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.output_id = o.id \
             AND (d.state IN ('pending', 'sending') OR d.updated_at >= $1))"
    };
}

macro_rules! outputs_that_may_go {
    ($columns:literal) => {
        concat!(
            "SELECT ",
            $columns,
            " FROM outputs o WHERE o.released_at IS NULL AND ($2 = 1 OR o.node IS NULL OR o.node = $3) AND ",
            output_may_go!(),
            " ORDER BY o.created_at, o.id LIMIT $4"
        )
    };
}

const RELEASE_IMAGES: &str = concat!(
    "UPDATE instances SET released_at = $6 WHERE released_at IS NULL AND id IN (",
    images_that_may_go!("i.id"),
    ") RETURNING id, path, size_bytes"
);

const RELEASE_OUTPUTS: &str = concat!(
    "UPDATE outputs SET released_at = $5 WHERE released_at IS NULL AND id IN (",
    outputs_that_may_go!("o.id"),
    ") RETURNING id, path, size_bytes"
);

/// `$1, $2, ...` from `first` on, `n` of them: the only text built at run time in these
/// statements, so that every value still travels as a bound parameter.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// A study whose patient attributes are due to go: id, UID, accession number, patient ID and name.
type DueStudy = (i64, String, Option<String>, Option<String>, Option<String>);

/// A row marked released, whose file is to be removed: its id, path and size in bytes.
pub type Released = (i64, String, i64);

/// Unmarks the rows of `table` just marked released that `recheck` (a query of the ids in
/// `{ids}` that may not go, after binding `cutoffs`) names, and returns the others. A fresh
/// statement: it sees what a re-queue committed while the marking waited for a row lock.
async fn unmark_stale(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    table: &str,
    recheck: &str,
    cutoffs: &[i64],
    mut released: Vec<Released>,
) -> Result<Vec<Released>> {
    if released.is_empty() {
        return Ok(released);
    }
    let sql = recheck.replace("{ids}", &placeholders(cutoffs.len() + 1, released.len()));
    let mut query = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql.as_str()));
    for cutoff in cutoffs {
        query = query.bind(*cutoff);
    }
    for (id, _, _) in &released {
        query = query.bind(*id);
    }
    let stale: Vec<i64> = query.fetch_all(&mut **tx).await?.into_iter().map(|(id,)| id).collect();
    if !stale.is_empty() {
        let sql = format!("UPDATE {table} SET released_at = NULL WHERE id IN ({})", placeholders(1, stale.len()));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for id in &stale {
            query = query.bind(*id);
        }
        query.execute(&mut **tx).await?;
        released.retain(|(id, _, _)| !stale.contains(id));
    }
    Ok(released)
}

/// What the database says of files found on disk or in the bucket.
#[derive(Debug, Default)]
pub struct FileRows {
    /// Paths with a row, and whether that row says released.
    pub released: HashMap<String, bool>,
}

impl FileRows {
    /// Whether `path` has a row, and whether the row says its file was released.
    pub fn of(&self, path: &str) -> Option<bool> {
        self.released.get(path).copied()
    }
}

/// Bytes and files still kept, and the oldest of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kept {
    pub files: i64,
    pub bytes: i64,
    /// When the oldest kept one was received or made (ms since the epoch).
    pub oldest: Option<i64>,
}

impl Store {
    /// The images that may go for `cut` (what `prune --dry-run` lists), at most `limit`.
    pub async fn images_that_may_go(&self, cut: &Cutoffs, scope: JobScope, limit: i64) -> Result<Vec<Releasable>> {
        const SQL: &str = images_that_may_go!(
            "i.id, i.path, i.size_bytes, j.state AS what, i.received_at AS since, j.updated_at AS ended_at"
        );
        Ok(sqlx::query_as(SQL)
            .bind(cut.analysed)
            .bind(cut.investigated)
            .bind(i64::from(scope == JobScope::AnySpool))
            .bind(self.node())
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    /// The objects that may go for `cut`, at most `limit`.
    pub async fn outputs_that_may_go(&self, cut: &Cutoffs, scope: JobScope, limit: i64) -> Result<Vec<Releasable>> {
        const SQL: &str = outputs_that_may_go!(
            "o.id, o.path, o.size_bytes, o.kind AS what, o.created_at AS since, \
             COALESCE((SELECT MAX(d.updated_at) FROM deliveries d WHERE d.output_id = o.id), o.created_at) AS ended_at"
        );
        Ok(sqlx::query_as(SQL)
            .bind(cut.outputs)
            .bind(i64::from(scope == JobScope::AnySpool))
            .bind(self.node())
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    /// Marks released up to `limit` images that may go, oldest first, and returns them: their
    /// files are to be removed next. One transaction; checked again under the rows' locks.
    pub async fn release_images(&self, cut: &Cutoffs, scope: JobScope, limit: i64) -> Result<Vec<Released>> {
        let mut tx = self.begin_write().await?;
        let released = sqlx::query_as(RELEASE_IMAGES)
            .bind(cut.analysed)
            .bind(cut.investigated)
            .bind(i64::from(scope == JobScope::AnySpool))
            .bind(self.node())
            .bind(limit)
            .bind(self.now())
            .fetch_all(&mut *tx)
            .await?;
        let recheck = concat!(
            "SELECT i.id FROM instances i CROSS JOIN jobs j WHERE i.id IN ({ids}) AND j.instance_id = i.id AND NOT (",
            image_may_go!(),
            ")"
        );
        let released = unmark_stale(&mut tx, "instances", recheck, &[cut.analysed, cut.investigated], released).await?;
        self.audit_deleted(&mut tx, &released).await?;
        tx.commit().await?;
        Ok(released)
    }

    /// Records a DICOM Study Deleted per study of the released images, in their transaction.
    async fn audit_deleted(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>, released: &[Released]) -> Result<()> {
        if self.auditor().is_none() || released.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT s.study_instance_uid, s.accession_number, s.patient_id, s.patient_name, i.sop_class_uid \
             FROM instances i JOIN studies s ON s.id = i.study_id WHERE i.id IN ({})",
            placeholders(1, released.len())
        );
        let mut query = sqlx::query_as::<_, (String, Option<String>, Option<String>, Option<String>, String)>(
            sqlx::AssertSqlSafe(sql.as_str()),
        );
        for (id, _, _) in released {
            query = query.bind(*id);
        }
        let mut studies: Vec<AuditedStudy> = Vec::new();
        for (uid, accession_number, patient_id, patient_name, sop_class) in query.fetch_all(&mut **tx).await? {
            let study = AuditedStudy {
                study_instance_uid: uid,
                accession_number,
                patient_id,
                patient_name,
                sop_classes: vec![],
            };
            AuditedStudy::tally(&mut studies, study, &sop_class);
        }
        let why = "retention: the images were deleted once their work ended and their time ([retention]) passed";
        for study in &studies {
            self.audit_in(tx, &AuditEvent::Deleted { study, why }).await?;
        }
        Ok(())
    }

    /// Deletes up to `limit` of the oldest events recorded before `before` (ms since the epoch);
    /// returns how many. The trail names instances and peers: it is kept as long as the patient
    /// attributes are.
    pub async fn remove_events(&self, before: i64, limit: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 ORDER BY at, id LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// Marks released up to `limit` objects that may go, oldest first, and returns them.
    pub async fn release_outputs(&self, cut: &Cutoffs, scope: JobScope, limit: i64) -> Result<Vec<Released>> {
        let mut tx = self.begin_write().await?;
        let released = sqlx::query_as(RELEASE_OUTPUTS)
            .bind(cut.outputs)
            .bind(i64::from(scope == JobScope::AnySpool))
            .bind(self.node())
            .bind(limit)
            .bind(self.now())
            .fetch_all(&mut *tx)
            .await?;
        let recheck = concat!("SELECT o.id FROM outputs o WHERE o.id IN ({ids}) AND NOT (", output_may_go!(), ")");
        let released = unmark_stale(&mut tx, "outputs", recheck, &[cut.outputs], released).await?;
        tx.commit().await?;
        Ok(released)
    }

    /// Removes the patient attributes of up to `limit` studies whose last image arrived before
    /// `before` and whose messages have all ended (a message reads them when it is sent).
    /// Returns how many studies.
    pub async fn remove_patient_data(&self, before: i64, limit: i64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        // read first: the audit record of a removal names the patient it removes
        let due: Vec<DueStudy> = sqlx::query_as(
            "SELECT s.id, s.study_instance_uid, s.accession_number, s.patient_id, s.patient_name \
             FROM studies s WHERE s.patient_data_removed_at IS NULL AND s.last_received_at < $1 \
               AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.study_id = s.id \
                                 AND m.state IN ('pending', 'sending')) \
             ORDER BY s.last_received_at LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "UPDATE studies SET patient_id = NULL, patient_name = NULL, issuer_of_patient_id = NULL, \
                 patient_birth_date = NULL, patient_sex = NULL, patient_data_removed_at = $1 \
             WHERE patient_data_removed_at IS NULL AND id IN ({}) RETURNING id",
            placeholders(2, due.len())
        );
        let mut query = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql.as_str())).bind(self.now());
        for (id, ..) in &due {
            query = query.bind(*id);
        }
        let removed: HashSet<i64> = query.fetch_all(&mut *tx).await?.into_iter().map(|(id,)| id).collect();
        if self.auditor().is_some() {
            let why = "retention: patient attributes removed after retention.patient_data_days";
            for (id, uid, accession_number, patient_id, patient_name) in due {
                if removed.contains(&id) {
                    let study = AuditedStudy {
                        study_instance_uid: uid,
                        accession_number,
                        patient_id,
                        patient_name,
                        sop_classes: vec![],
                    };
                    self.audit_in(&mut tx, &AuditEvent::PatientDataRemoved { study: &study, why }).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(removed.len() as u64)
    }

    /// The rows of the spool paths `paths`: whether each has one and whether it was released.
    pub async fn spool_rows(&self, paths: &[String]) -> Result<FileRows> {
        self.file_rows("instances", paths).await
    }

    /// The rows of the output paths `paths`.
    pub async fn output_rows(&self, paths: &[String]) -> Result<FileRows> {
        self.file_rows("outputs", paths).await
    }

    async fn file_rows(&self, table: &str, paths: &[String]) -> Result<FileRows> {
        let mut rows = FileRows::default();
        for chunk in paths.chunks(500) {
            let sql = format!(
                "SELECT path, CAST(CASE WHEN released_at IS NULL THEN 0 ELSE 1 END AS BIGINT) FROM {table} \
                 WHERE path IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql.as_str()));
            for path in chunk {
                query = query.bind(path);
            }
            for (path, released) in query.fetch_all(self.pool()).await? {
                // an output path may have rows of several versions: kept if any is kept
                let entry = rows.released.entry(path).or_insert(true);
                *entry &= released == 1;
            }
        }
        Ok(rows)
    }

    /// Of the spool paths `paths`, those of images whose work has ended (as disk pressure
    /// judges it: the job and everything made from the image ended), so that a local copy may
    /// go while the bucket keeps the image.
    pub async fn finished_images(&self, paths: &[String]) -> Result<HashSet<String>> {
        let head = concat!(
            "SELECT i.path FROM instances i CROSS JOIN jobs j \
             WHERE j.instance_id = i.id AND i.released_at IS NULL AND ",
            image_may_go!(),
            " AND i.path IN ("
        );
        let cut = Cutoffs::everything_finished(self.now());
        self.finished(head, &[cut.analysed, cut.investigated], paths).await
    }

    /// Of the output paths `paths`, those of objects whose deliveries have all ended.
    pub async fn finished_outputs(&self, paths: &[String]) -> Result<HashSet<String>> {
        let head = concat!(
            "SELECT o.path FROM outputs o WHERE o.released_at IS NULL AND ",
            output_may_go!(),
            " AND o.path IN ("
        );
        let cut = Cutoffs::everything_finished(self.now());
        self.finished(head, &[cut.outputs], paths).await
    }

    /// The paths `head` (a query ending in `IN (`, its parameters the `cutoffs` first) selects
    /// among `paths`.
    async fn finished(&self, head: &str, cutoffs: &[i64], paths: &[String]) -> Result<HashSet<String>> {
        let mut finished = HashSet::new();
        for chunk in paths.chunks(500) {
            let sql = format!("{head}{})", placeholders(cutoffs.len() + 1, chunk.len()));
            let mut query = sqlx::query_as::<_, (String,)>(sqlx::AssertSqlSafe(sql.as_str()));
            for cutoff in cutoffs {
                query = query.bind(*cutoff);
            }
            for path in chunk {
                query = query.bind(path);
            }
            finished.extend(query.fetch_all(self.pool()).await?.into_iter().map(|(p,)| p));
        }
        Ok(finished)
    }

    /// The received images still kept, and the objects still kept.
    pub async fn kept(&self) -> Result<(Kept, Kept)> {
        let images: (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), CAST(SUM(size_bytes) AS BIGINT), MIN(received_at) FROM instances \
             WHERE released_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?;
        let outputs: (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), CAST(SUM(size_bytes) AS BIGINT), MIN(created_at) FROM outputs \
                 WHERE released_at IS NULL",
        )
        .fetch_one(self.pool())
        .await?;
        let kept =
            |(files, bytes, oldest): (i64, Option<i64>, Option<i64>)| Kept { files, bytes: bytes.unwrap_or(0), oldest };
        Ok((kept(images), kept(outputs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweep asks which files have rows by path: through an index, not a read of every
    /// output row (they are kept for as long as the results).
    #[tokio::test]
    async fn output_rows_are_found_through_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/plan.db", dir.path().display()), 1, "test").await.unwrap();
        store.migrate().await.unwrap();
        for table in ["instances", "outputs"] {
            let sql = format!("EXPLAIN QUERY PLAN SELECT path FROM {table} WHERE path IN ($1, $2)");
            let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind("1.2/1.2.3.dcm")
                .bind("1.2/1.2.4.dcm")
                .fetch_all(store.pool())
                .await
                .unwrap();
            let plan: Vec<&str> = plan.iter().map(|(_, _, _, detail)| detail.as_str()).collect();
            assert!(plan.iter().all(|d| !d.starts_with("SCAN")), "{table}: {plan:#?}");
            assert!(plan.iter().any(|d| d.contains("INDEX")), "{table}: {plan:#?}");
        }
    }
}
