//! The numbers a site's physicist asks for after a month: how a shadow version compares with
//! production on the same images (`shadow-report`), and what radiologists' verdicts say of each
//! classifier version (`verdict-report`). Computed here from the rows the store reads.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::{Agreement, ShadowOutcome};
use crate::store::{ReviewedResult, ShadowPair};

/// A shadow version against production over a period.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShadowComparison {
    pub shadow: String,
    /// "name version" of production's classifier and of the shadow's.
    pub production_model: String,
    pub shadow_model: String,
    /// Images both analysed.
    pub compared: usize,
    /// Images production analysed and the shadow skipped (its checks) or failed on.
    pub shadow_skipped: usize,
    pub shadow_failed: usize,
    /// Images with the same decision.
    pub agreed: usize,
    /// Negative in production, positive in the shadow; and the other way.
    pub flips_to_positive: usize,
    pub flips_to_negative: usize,
    /// Images the shadow gives a higher priority, and a lower one.
    pub priority_raised: usize,
    pub priority_lowered: usize,
    /// The shadow's probability minus production's: mean, mean of its size, largest size.
    pub mean_probability_shift: f64,
    pub mean_absolute_shift: f64,
    pub largest_absolute_shift: f64,
    /// Inference per image, ms.
    pub production_inference_ms: f64,
    pub shadow_inference_ms: f64,
}

impl ShadowComparison {
    /// One comparison per shadow and pair of model versions, in the order first met.
    pub fn of(pairs: &[ShadowPair]) -> Vec<ShadowComparison> {
        let mut groups: Vec<ShadowComparison> = Vec::new();
        for pair in pairs {
            let key = |c: &ShadowComparison| {
                c.shadow == pair.shadow
                    && c.production_model == pair.production_model
                    && c.shadow_model == pair.shadow_model
            };
            let c = match groups.iter().position(key) {
                Some(i) => &mut groups[i],
                None => {
                    groups.push(ShadowComparison {
                        shadow: pair.shadow.clone(),
                        production_model: pair.production_model.clone(),
                        shadow_model: pair.shadow_model.clone(),
                        ..Default::default()
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            let (decision, priority, probability) = match (pair.outcome, pair.shadow_decision) {
                (ShadowOutcome::Analysed, Some(decision)) => {
                    (decision, pair.shadow_priority, pair.shadow_probability.unwrap_or(f64::NAN))
                }
                (ShadowOutcome::Skipped, _) => {
                    c.shadow_skipped += 1;
                    continue;
                }
                _ => {
                    c.shadow_failed += 1;
                    continue;
                }
            };
            c.compared += 1;
            c.agreed += usize::from(decision == pair.production_decision);
            match (pair.production_decision.is_positive(), decision.is_positive()) {
                (false, true) => c.flips_to_positive += 1,
                (true, false) => c.flips_to_negative += 1,
                _ => {}
            }
            match priority.map(|p| p.cmp(&pair.production_priority)) {
                Some(std::cmp::Ordering::Greater) => c.priority_raised += 1,
                Some(std::cmp::Ordering::Less) => c.priority_lowered += 1,
                _ => {}
            }
            let shift = probability - pair.production_probability;
            c.mean_probability_shift += shift;
            c.mean_absolute_shift += shift.abs();
            c.largest_absolute_shift = c.largest_absolute_shift.max(shift.abs());
            c.production_inference_ms += pair.production_inference_ms;
            c.shadow_inference_ms += pair.shadow_inference_ms.unwrap_or(0.0);
        }
        for c in &mut groups {
            let n = c.compared.max(1) as f64;
            c.mean_probability_shift /= n;
            c.mean_absolute_shift /= n;
            c.production_inference_ms /= n;
            c.shadow_inference_ms /= n;
        }
        groups
    }

    /// The share of compared images with the same decision (`None` before any).
    pub fn agreement(&self) -> Option<f64> {
        ratio(self.agreed, self.compared)
    }
}

/// What radiologists' verdicts say of one classifier version over a period.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VerdictSummary {
    /// "name version".
    pub model: String,
    /// Its results in the period, and those with a verdict.
    pub results: usize,
    pub reviewed: usize,
    /// Reviewed positives the radiologist agreed with (true positives) and did not (false).
    pub positives_agreed: usize,
    pub positives_disagreed: usize,
    /// Reviewed negatives the radiologist agreed with (true negatives) and did not (missed).
    pub negatives_agreed: usize,
    pub negatives_disagreed: usize,
    /// True positives among the reviewed positives.
    pub ppv: Option<f64>,
    /// The share of reviewed positives the radiologist turned negative, and of reviewed
    /// negatives turned positive.
    pub flip_rate_positive_to_negative: Option<f64>,
    pub flip_rate_negative_to_positive: Option<f64>,
    /// Only where negatives were reviewed too: the pneumothoraces found among those reviewed.
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
}

impl VerdictSummary {
    /// One summary per classifier version, by name.
    pub fn of(rows: &[ReviewedResult]) -> Vec<VerdictSummary> {
        let mut by_model: BTreeMap<&str, VerdictSummary> = BTreeMap::new();
        for row in rows {
            let s = by_model
                .entry(row.model.as_str())
                .or_insert_with(|| VerdictSummary { model: row.model.clone(), ..Default::default() });
            s.results += 1;
            let Some(verdict) = row.verdict else { continue };
            s.reviewed += 1;
            match (row.decision.is_positive(), verdict) {
                (true, Agreement::Agree) => s.positives_agreed += 1,
                (true, Agreement::Disagree) => s.positives_disagreed += 1,
                (false, Agreement::Agree) => s.negatives_agreed += 1,
                (false, Agreement::Disagree) => s.negatives_disagreed += 1,
            }
        }
        by_model
            .into_values()
            .map(|mut s| {
                let positives = s.positives_agreed + s.positives_disagreed;
                let negatives = s.negatives_agreed + s.negatives_disagreed;
                s.ppv = ratio(s.positives_agreed, positives);
                s.flip_rate_positive_to_negative = ratio(s.positives_disagreed, positives);
                s.flip_rate_negative_to_positive = ratio(s.negatives_disagreed, negatives);
                if negatives > 0 {
                    s.sensitivity = ratio(s.positives_agreed, s.positives_agreed + s.negatives_disagreed);
                    s.specificity = ratio(s.negatives_agreed, s.negatives_agreed + s.positives_disagreed);
                }
                s
            })
            .collect()
    }
}

fn ratio(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Decision, Priority};

    fn pair(production: (Decision, Priority, f64), shadow: Option<(Decision, Priority, f64)>) -> ShadowPair {
        ShadowPair {
            shadow: "lower".into(),
            production_model: "demo 1".into(),
            shadow_model: "demo 1".into(),
            outcome: if shadow.is_some() { ShadowOutcome::Analysed } else { ShadowOutcome::Skipped },
            reason: None,
            production_decision: production.0,
            production_priority: production.1,
            production_probability: production.2,
            production_inference_ms: 30.0,
            shadow_decision: shadow.map(|s| s.0),
            shadow_priority: shadow.map(|s| s.1),
            shadow_probability: shadow.map(|s| s.2),
            shadow_inference_ms: shadow.map(|_| 40.0),
        }
    }

    #[test]
    fn a_shadow_is_compared_image_by_image() {
        use Decision::*;
        use Priority::*;
        let pairs = [
            pair((Negative, Routine, 0.2), Some((Positive, Urgent, 0.6))),
            pair((Positive, Urgent, 0.9), Some((Positive, Urgent, 0.8))),
            pair((Positive, Review, 0.6), Some((Negative, Routine, 0.4))),
            pair((Negative, Routine, 0.1), Some((Negative, Routine, 0.1))),
            pair((Negative, Routine, 0.1), None),
        ];
        let [c] = ShadowComparison::of(&pairs).try_into().unwrap();
        assert_eq!((c.compared, c.shadow_skipped, c.agreed), (4, 1, 2));
        assert_eq!((c.flips_to_positive, c.flips_to_negative), (1, 1));
        assert_eq!((c.priority_raised, c.priority_lowered), (1, 1));
        assert!((c.mean_probability_shift - (0.4 - 0.1 - 0.2) / 4.0).abs() < 1e-9, "{c:?}");
        assert!((c.mean_absolute_shift - 0.7 / 4.0).abs() < 1e-9, "{c:?}");
        assert!((c.largest_absolute_shift - 0.4).abs() < 1e-9);
        assert_eq!((c.production_inference_ms, c.shadow_inference_ms), (30.0, 40.0));
        assert_eq!(c.agreement(), Some(0.5));
    }

    #[test]
    fn verdicts_give_ppv_flip_rates_and_sensitivity_only_with_reviewed_negatives() {
        let row = |model: &str, decision, verdict| ReviewedResult { model: model.into(), decision, verdict };
        use Agreement::*;
        use Decision::*;
        let rows = [
            row("a 1", Positive, Some(Agree)),
            row("a 1", Positive, Some(Agree)),
            row("a 1", PositiveWithoutMask, Some(Agree)),
            row("a 1", Positive, Some(Disagree)),
            row("a 1", Negative, Some(Agree)),
            row("a 1", Negative, Some(Disagree)),
            row("a 1", Negative, None),
            row("b 2", Positive, Some(Disagree)),
            row("b 2", Negative, None),
        ];
        let [a, b] = VerdictSummary::of(&rows).try_into().unwrap();
        assert_eq!((a.results, a.reviewed), (7, 6));
        assert_eq!(a.ppv, Some(0.75));
        assert_eq!(a.flip_rate_positive_to_negative, Some(0.25));
        assert_eq!(a.flip_rate_negative_to_positive, Some(0.5));
        assert_eq!(a.sensitivity, Some(0.75), "3 found of the 3 + 1 missed");
        assert_eq!(a.specificity, Some(0.5));
        assert_eq!(
            (b.model.as_str(), b.ppv, b.sensitivity, b.flip_rate_negative_to_positive),
            ("b 2", Some(0.0), None, None)
        );
    }
}
