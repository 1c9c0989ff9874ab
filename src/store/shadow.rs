//! Shadow versions: what another manifest made of the images production analysed, recorded
//! beside production's results and read back paired with them for `shadow-report`.

use serde::Serialize;

use super::{Result, Store};
use crate::domain::{Decision, Priority, ShadowOutcome};

/// What one shadow version made of one image.
#[derive(Debug, Clone)]
pub struct NewShadowResult {
    pub instance_id: i64,
    /// `inference.shadow[].name`.
    pub shadow: String,
    pub outcome: ShadowOutcome,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    pub decision: Option<Decision>,
    pub priority: Option<Priority>,
    pub probability: Option<f64>,
    pub mask_area_px: Option<i64>,
    /// Name, version and sha256 of the shadow's classifier, then of its segmenter.
    pub classifier: [String; 3],
    pub segmenter: [String; 3],
    pub inference_ms: Option<f64>,
}

/// A production result and the shadow's on the same image.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ShadowPair {
    pub shadow: String,
    /// "name version" of production's classifier and of the shadow's.
    pub production_model: String,
    pub shadow_model: String,
    pub outcome: ShadowOutcome,
    pub reason: Option<String>,
    pub production_decision: Decision,
    pub production_priority: Priority,
    pub production_probability: f64,
    pub production_inference_ms: f64,
    pub shadow_decision: Option<Decision>,
    pub shadow_priority: Option<Priority>,
    pub shadow_probability: Option<f64>,
    pub shadow_inference_ms: Option<f64>,
}

impl Store {
    /// Records a batch's shadow results in one transaction; an image already recorded for a
    /// shadow (analysed again after a crash) keeps its first row.
    pub async fn record_shadow_results(&self, rows: &[NewShadowResult]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let now = self.now();
        for row in rows {
            let [cn, cv, cs] = &row.classifier;
            let [sn, sv, ss] = &row.segmenter;
            sqlx::query(
                "INSERT INTO shadow_results (instance_id, shadow, outcome, reason, decision, priority, probability, \
                     mask_area_px, classifier_name, classifier_version, classifier_sha256, segmenter_name, \
                     segmenter_version, segmenter_sha256, inference_ms, node, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
                 ON CONFLICT (instance_id, shadow) DO NOTHING",
            )
            .bind(row.instance_id)
            .bind(&row.shadow)
            .bind(row.outcome)
            .bind(&row.reason)
            .bind(row.decision)
            .bind(row.priority)
            .bind(row.probability)
            .bind(row.mask_area_px)
            .bind(cn)
            .bind(cv)
            .bind(cs)
            .bind(sn)
            .bind(sv)
            .bind(ss)
            .bind(row.inference_ms)
            .bind(self.node())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Production's results analysed in `[since, until)` (ms since the epoch) that a shadow
    /// (`shadow`, or every one) also saw, paired with the shadow's, oldest first.
    pub async fn shadow_pairs(&self, shadow: Option<&str>, since: i64, until: i64) -> Result<Vec<ShadowPair>> {
        Ok(sqlx::query_as(
            "SELECT s.shadow, r.classifier_name || ' ' || r.classifier_version AS production_model, \
                    s.classifier_name || ' ' || s.classifier_version AS shadow_model, s.outcome, s.reason, \
                    r.decision AS production_decision, r.priority AS production_priority, \
                    r.probability AS production_probability, r.inference_ms AS production_inference_ms, \
                    s.decision AS shadow_decision, s.priority AS shadow_priority, \
                    s.probability AS shadow_probability, s.inference_ms AS shadow_inference_ms \
             FROM shadow_results s JOIN results r ON r.instance_id = s.instance_id \
             WHERE ($1 IS NULL OR s.shadow = $1) AND r.created_at >= $2 AND r.created_at < $3 \
             ORDER BY s.shadow, r.id",
        )
        .bind(shadow)
        .bind(since)
        .bind(until)
        .fetch_all(self.pool())
        .await?)
    }
}
