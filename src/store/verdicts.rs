//! Radiologists' verdicts on AI findings: recorded through the worklist page or the API, read
//! back per classifier version for `verdict-report`.

use serde::Serialize;

use super::{Result, Store};
use crate::domain::{Agreement, Decision};

/// A verdict as recorded.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct VerdictRow {
    pub id: i64,
    pub result_id: i64,
    pub verdict: Agreement,
    pub note: Option<String>,
    /// The name of the HTTP token it came with.
    pub reviewer: String,
    pub created_at: i64,
}

/// A result of a period with its latest verdict, if any.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReviewedResult {
    /// "name version" of the classifier.
    pub model: String,
    pub decision: Decision,
    pub verdict: Option<Agreement>,
}

impl Store {
    /// Records `reviewer`'s verdict on result `result_id`; `None` when there is no such result.
    pub async fn record_verdict(
        &self,
        result_id: i64,
        verdict: Agreement,
        note: Option<&str>,
        reviewer: &str,
    ) -> Result<Option<VerdictRow>> {
        let mut tx = self.begin_write().await?;
        let exists: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM results WHERE id = $1").bind(result_id).fetch_optional(&mut *tx).await?;
        if exists.is_none() {
            return Ok(None);
        }
        let row = sqlx::query_as(
            "INSERT INTO verdicts (result_id, verdict, note, reviewer, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id, result_id, verdict, note, reviewer, created_at",
        )
        .bind(result_id)
        .bind(verdict)
        .bind(note.map(crate::domain::storable_text))
        .bind(reviewer)
        .bind(self.now())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(row))
    }

    /// Every result analysed in `[since, until)` (ms since the epoch) with its latest verdict.
    pub async fn reviewed_results(&self, since: i64, until: i64) -> Result<Vec<ReviewedResult>> {
        Ok(sqlx::query_as(
            "SELECT r.classifier_name || ' ' || r.classifier_version AS model, r.decision, v.verdict \
             FROM results r LEFT JOIN verdicts v \
               ON v.id = (SELECT MAX(l.id) FROM verdicts l WHERE l.result_id = r.id) \
             WHERE r.created_at >= $1 AND r.created_at < $2 ORDER BY r.id",
        )
        .bind(since)
        .bind(until)
        .fetch_all(self.pool())
        .await?)
    }
}
