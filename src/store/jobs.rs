//! The analysis queue: one job per received instance version.

use super::{now_ms, Event, Result, Store};

impl Store {
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
