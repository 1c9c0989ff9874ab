//! The decision policies over the models' outputs (design.md §2): `cascade` (the classifier
//! decides, the segmenter draws) and `segmentation` (the segmenter's "triplet" rule decides).
//! Pure functions: no I/O, no models.

use super::manifest::Thresholds;
use crate::config::PriorityConfig;

pub use crate::domain::{Decision, Priority};

/// The priority rules of `[priority]`: a confident positive with a mask (or a large one) is
/// urgent; every other positive is for review; a negative is routine unless it is a near miss.
pub fn priority(rules: &PriorityConfig, decision: Decision, probability: f32, mask_area_mm2: Option<f64>) -> Priority {
    match decision {
        Decision::Positive
            if probability >= rules.urgent_probability
                || rules.urgent_area_mm2.zip(mask_area_mm2).is_some_and(|(min, area)| area >= min) =>
        {
            Priority::Urgent
        }
        Decision::Positive | Decision::PositiveWithoutMask => Priority::Review,
        Decision::Negative if rules.review_probability.is_some_and(|p| probability >= p) => Priority::Review,
        Decision::Negative => Priority::Routine,
    }
}

/// The thresholds in force: the manifest's, with the config's overrides applied
/// ([`Thresholds::with_overrides`]).
pub type Rules = Thresholds;

impl Thresholds {
    pub fn with_overrides(&self, classifier: Option<f32>, mask: Option<f32>, min_area: Option<u32>) -> Thresholds {
        Thresholds {
            classifier: classifier.unwrap_or(self.classifier),
            mask: mask.unwrap_or(self.mask),
            min_mask_area_px: min_area.unwrap_or(self.min_mask_area_px),
            ..*self
        }
    }
}

/// A decision with its mask at the segmenter's resolution (row-major), when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    /// The probability reported: the classifier's (cascade) or the highest pixel's (segmentation).
    pub probability: f32,
    pub mask: Option<Vec<bool>>,
}

impl Outcome {
    pub fn mask_area_px(&self) -> usize {
        self.mask.as_ref().map_or(0, |m| m.iter().filter(|&&b| b).count())
    }
}

/// Cascade: below the classifier threshold, negative; above it, the segmenter's pixels at or
/// above the mask threshold, unless they cover less than the minimum area.
pub fn cascade(rules: &Rules, classifier_probability: f32, segmenter: Option<&[f32]>) -> Outcome {
    if classifier_probability < rules.classifier {
        return Outcome { decision: Decision::Negative, probability: classifier_probability, mask: None };
    }
    let mask: Option<Vec<bool>> = segmenter.map(|probs| probs.iter().map(|&p| p >= rules.mask).collect());
    let area = mask.as_ref().map_or(0, |m| m.iter().filter(|&&b| b).count());
    if area == 0 || area < rules.min_mask_area_px as usize {
        return Outcome { decision: Decision::PositiveWithoutMask, probability: classifier_probability, mask: None };
    }
    Outcome { decision: Decision::Positive, probability: classifier_probability, mask }
}

/// Segmentation (the "triplet" rule of the SIIM-ACR winners): the pixels above `top` must
/// cover at least `min_area`, else the image is negative; then the mask is every pixel above
/// `bottom`.
pub fn triplet(rules: &Rules, segmenter: &[f32]) -> Outcome {
    let probability = segmenter.iter().copied().fold(0.0f32, f32::max);
    let confident = segmenter.iter().filter(|&&p| p > rules.triplet_top).count();
    if confident == 0 || confident < rules.triplet_min_area_px as usize {
        return Outcome { decision: Decision::Negative, probability, mask: None };
    }
    let mask = segmenter.iter().map(|&p| p > rules.triplet_bottom).collect();
    Outcome { decision: Decision::Positive, probability, mask: Some(mask) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Thresholds {
            classifier: 0.5,
            mask: 0.5,
            min_mask_area_px: 3,
            triplet_top: 0.75,
            triplet_min_area_px: 2,
            triplet_bottom: 0.3,
        }
    }

    #[test]
    fn cascade_follows_the_classifier_then_the_mask() {
        let seg = [0.9, 0.8, 0.6, 0.1, 0.2, 0.4];
        assert_eq!(cascade(&rules(), 0.49, Some(&seg)).decision, Decision::Negative);
        let positive = cascade(&rules(), 0.7, Some(&seg));
        assert_eq!(positive.decision, Decision::Positive);
        assert_eq!(positive.mask_area_px(), 3);
        let small = cascade(&rules(), 0.7, Some(&[0.9, 0.8, 0.1]));
        assert_eq!(small.decision, Decision::PositiveWithoutMask, "2 px is under the minimum area");
        assert!(small.mask.is_none());
    }

    #[test]
    fn triplet_needs_enough_confident_pixels() {
        assert_eq!(triplet(&rules(), &[0.8, 0.5, 0.4, 0.1]).decision, Decision::Negative, "one pixel above top");
        let positive = triplet(&rules(), &[0.8, 0.9, 0.4, 0.1]);
        assert_eq!(positive.decision, Decision::Positive);
        assert_eq!(positive.mask, Some(vec![true, true, true, false]), "then every pixel above bottom");
        assert!((positive.probability - 0.9).abs() < 1e-6);
    }

    #[test]
    fn priority_follows_the_configured_rules() {
        let rules = PriorityConfig {
            urgent_probability: 0.8,
            urgent_area_mm2: Some(1000.0),
            review_probability: None,
            ..PriorityConfig::default()
        };
        assert_eq!(priority(&rules, Decision::Positive, 0.85, None), Priority::Urgent);
        assert_eq!(priority(&rules, Decision::Positive, 0.7, Some(400.0)), Priority::Review);
        assert_eq!(priority(&rules, Decision::Positive, 0.7, Some(1200.0)), Priority::Urgent, "large mask");
        assert_eq!(priority(&rules, Decision::PositiveWithoutMask, 0.99, None), Priority::Review);
        assert_eq!(priority(&rules, Decision::Negative, 0.5, None), Priority::Routine);
        let near_miss = PriorityConfig { review_probability: Some(0.4), ..rules };
        assert_eq!(priority(&near_miss, Decision::Negative, 0.5, None), Priority::Review);
        assert_eq!(priority(&near_miss, Decision::Negative, 0.3, None), Priority::Routine);
        assert!(Priority::Urgent > Priority::Review && Priority::Review > Priority::Routine);
    }

    #[test]
    fn config_overrides_win_over_the_manifest() {
        let t = Thresholds {
            classifier: 0.3,
            mask: 0.5,
            min_mask_area_px: 10,
            triplet_top: 0.75,
            triplet_min_area_px: 40,
            triplet_bottom: 0.3,
        };
        let r = t.with_overrides(Some(0.6), None, Some(0));
        assert_eq!((r.classifier, r.mask, r.min_mask_area_px), (0.6, 0.5, 0));
    }
}
