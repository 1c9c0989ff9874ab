//! `[inference]` (with `[inference.checks]` and `[[inference.shadow]]`), `[priority]` and
//! `[outputs]`: which models run where, what an image must look like first, how a result sets a
//! worklist priority, and which objects are made of it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::files::{read_named_file, TEXT_FILE_LIMIT};
use super::{check_label, Config, Number, Report};
use crate::domain::{Device, Policy};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// false: receive and keep only; jobs wait in the queue until analysis is turned back on.
    pub enabled: bool,
    pub models: PathBuf,
    pub device: Device,
    pub policy: Policy,
    pub require_gpu: bool,
    /// The ONNX Runtime library (libonnxruntime.so.*); looked for in the usual places when unset.
    pub onnxruntime: Option<PathBuf>,
    /// Threads per ONNX Runtime session.
    pub threads: usize,
    /// Inference threads: batches analysed at the same time. On the CPU each has its own
    /// sessions; on a GPU they share one set and take turns on it. Unset: two on the CPU where
    /// the cores and the memory allow, else one; two on a GPU (chosen by `serve` and `infer`).
    pub workers: Option<usize>,
    /// Most images a worker analyses together: one model run per batch. A worker takes the due
    /// jobs there are, up to this many.
    pub batch_size: usize,
    /// How long a worker with fewer than `batch_size` due jobs waits for more before it starts
    /// (0: never; an idle node is then exactly as fast as with batches of one).
    pub batch_wait_ms: u64,
    /// Also run the models on the horizontally flipped image and average (test-time augmentation).
    pub tta_hflip: bool,
    /// The pixel budget of one image: Rows x Columns x frames x samples above this are not
    /// decoded (the job fails with the reason), and neither is a codestream whose own header
    /// disagrees with Rows and Columns.
    pub max_pixels: u64,
    /// A job that was being analysed when the node died this many times is quarantined (failed,
    /// and never taken again), so that an image that kills the node cannot do it at every restart.
    pub quarantine_after: u32,
    pub classifier_threshold: Option<f32>,
    pub mask_threshold: Option<f32>,
    pub min_mask_area_px: Option<u32>,
    /// What an image must look like before a model sees it (`[inference.checks]`).
    pub checks: InputChecks,
    /// Other model versions run on every image production analysed, their results recorded
    /// beside production's and never delivered (`[[inference.shadow]]`).
    pub shadow: Vec<ShadowConfig>,
}

/// A shadow version: another manifest, with the same settings as production but for its own
/// thresholds, run after production on the same images (`pneumotriage shadow-report`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// How its results are labelled: letters, digits, `.`, `_` and `-`.
    pub name: String,
    /// Its model manifest.
    pub models: PathBuf,
    pub classifier_threshold: Option<f32>,
    pub mask_threshold: Option<f32>,
    pub min_mask_area_px: Option<u32>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            enabled: true,
            models: PathBuf::from("models/manifest.toml"),
            device: Device::Cpu,
            policy: Policy::Cascade,
            require_gpu: false,
            onnxruntime: None,
            threads: 1,
            workers: None,
            batch_size: 8,
            batch_wait_ms: 0,
            tta_hflip: false,
            max_pixels: 50_000_000,
            quarantine_after: 2,
            classifier_threshold: None,
            mask_threshold: None,
            min_mask_area_px: None,
            checks: Default::default(),
            shadow: Vec::new(),
        }
    }
}

/// How an analysed image's priority on the worklist is set (see `inference::decision::priority`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorityConfig {
    /// A positive with a mask and at least this probability is `urgent`; other positives are `review`.
    pub urgent_probability: f32,
    /// A positive whose mask covers at least this many mm² is `urgent` whatever its probability.
    pub urgent_area_mm2: Option<f64>,
    /// A negative with at least this probability is `review` (a near miss); unset: negatives are `routine`.
    pub review_probability: Option<f32>,
    /// On the worklist, a routine study that has waited this long is listed with the review
    /// studies (AI triage must not stretch the longest waits); 0 turns it off.
    pub routine_aging_minutes: u64,
    /// Likewise, a review study that has waited this long is listed with the urgent ones; 0: off.
    pub review_aging_minutes: u64,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        PriorityConfig {
            urgent_probability: 0.8,
            urgent_area_mm2: None,
            review_probability: None,
            routine_aging_minutes: 120,
            review_aging_minutes: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SrPolicy {
    All,
    Positive,
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputsConfig {
    pub seg: bool,
    /// Series Number and Series Description of the SEG series.
    pub seg_series_number: i32,
    pub seg_series_description: String,
    pub sr: SrPolicy,
    /// Series Number and Series Description of the SR series.
    pub sr_series_number: i32,
    pub sr_series_description: String,
    /// A secondary capture with the outline and a banner, for each positive with a mask.
    pub overlay: bool,
    pub overlay_series_number: i32,
    pub overlay_series_description: String,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        OutputsConfig {
            seg: true,
            seg_series_number: 9901,
            seg_series_description: "AI pneumothorax segmentation".into(),
            sr: SrPolicy::All,
            sr_series_number: 9902,
            sr_series_description: "AI pneumothorax report".into(),
            overlay: false,
            overlay_series_number: 9903,
            overlay_series_description: "AI pneumothorax overlay, not for diagnosis".into(),
        }
    }
}

/// `[inference.checks]`: what an image must look like before a model sees it (the checks
/// themselves are `inference::checks`); each on by default.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputChecks {
    /// Skip a patient whose species (Patient Species Description or Code Sequence) is not human.
    pub species: bool,
    /// Skip an image whose View Position (PA or AP) its descriptions or its Patient
    /// Orientation contradict (a lateral).
    pub view_consistency: bool,
    /// Skip a patient younger than this many years (Patient's Age, else Patient's Birth Date and
    /// the Study Date); 0 turns the check off.
    pub min_age_years: u32,
    /// Skip a near-constant image (no exposure, saturated) or one whose shape no chest film has.
    pub image_statistics: bool,
}

impl Default for InputChecks {
    fn default() -> Self {
        InputChecks { species: true, view_consistency: true, min_age_years: 18, image_statistics: true }
    }
}

/// A probability's problem, if it is not one.
fn probability(value: Option<f32>) -> Option<String> {
    value.filter(|v| !(0.0..=1.0).contains(v)).map(|v| format!("{v} is not a probability between 0 and 1"))
}

impl InferenceConfig {
    pub(super) fn numbers(&self) -> Vec<Number> {
        let workers = self.workers.map(|w| Number::new("inference.workers", w as u64, 1..=64, ""));
        let numbers = vec![
            Number::new("inference.threads", self.threads as u64, 1..=1024, ""),
            Number::new("inference.batch_size", self.batch_size as u64, 1..=256, ""),
            Number::new("inference.batch_wait_ms", self.batch_wait_ms, 0..=10_000, "ms"),
            Number::new("inference.max_pixels", self.max_pixels, 64 * 64..=1 << 34, "pixels"),
            Number::new("inference.quarantine_after", self.quarantine_after as u64, 1..=100, ""),
            Number::new("inference.checks.min_age_years", self.checks.min_age_years as u64, 0..=150, "years"),
        ];
        numbers.into_iter().chain(workers).collect()
    }

    pub(super) fn check(&self, config: &Config, report: &mut Report) {
        if self.require_gpu && self.device == Device::Cpu {
            report("inference.require_gpu", "is true but inference.device is \"cpu\"".into());
        }
        for (key, value) in [
            ("inference.classifier_threshold", self.classifier_threshold),
            ("inference.mask_threshold", self.mask_threshold),
        ] {
            if let Some(m) = probability(value) {
                report(key, m);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, shadow) in self.shadow.iter().enumerate() {
            let key = |field: &str| format!("inference.shadow[{i}].{field}");
            if let Err(m) = check_label(&shadow.name) {
                report(&key("name"), m);
            } else if !seen.insert(shadow.name.as_str()) {
                report(&key("name"), format!("`{}` is the name of another shadow", shadow.name));
            }
            if let Err(e) = read_named_file(&config.resolve(&shadow.models), TEXT_FILE_LIMIT) {
                report(&key("models"), format!("{}: {e}", config.resolve(&shadow.models).display()));
            }
            for (field, value) in
                [("classifier_threshold", shadow.classifier_threshold), ("mask_threshold", shadow.mask_threshold)]
            {
                if let Some(m) = probability(value) {
                    report(&key(field), m);
                }
            }
        }
    }
}

impl PriorityConfig {
    pub(super) fn numbers(&self) -> Vec<Number> {
        vec![
            Number::new("priority.routine_aging_minutes", self.routine_aging_minutes, 0..=525_600, "minutes"),
            Number::new("priority.review_aging_minutes", self.review_aging_minutes, 0..=525_600, "minutes"),
        ]
    }

    pub(super) fn check(&self, report: &mut Report) {
        if self.urgent_area_mm2.is_some_and(|a| a.is_nan() || a < 0.0) {
            report("priority.urgent_area_mm2", "must not be negative".into());
        }
        for (key, value) in [
            ("priority.urgent_probability", Some(self.urgent_probability)),
            ("priority.review_probability", self.review_probability),
        ] {
            if let Some(m) = probability(value) {
                report(key, m);
            }
        }
    }
}

impl OutputsConfig {
    pub(super) fn check(&self, report: &mut Report) {
        for (key, value) in [
            ("outputs.seg_series_description", &self.seg_series_description),
            ("outputs.sr_series_description", &self.sr_series_description),
            ("outputs.overlay_series_description", &self.overlay_series_description),
        ] {
            if value.chars().count() > 64 {
                report(key, "is longer than 64 characters (DICOM LO)".into());
            }
        }
    }
}
