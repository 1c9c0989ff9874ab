//! One image through the cascade: applicability, pixels, models, decision, and the mask back
//! at the source image's size. Used by `pneumotriage infer` (and by the pipeline workers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use serde::Serialize;

use super::checks::{InputStatistics, Skip};
use super::decision::{self, Decision, Priority, Rules};
use super::manifest::{Manifest, ModelSpec};
use super::runtime::{find_onnxruntime, Model, Run, RuntimeError, SessionSettings};
use super::selection::{Selection, Selector, Tags};
use super::Role;
use crate::config::InputChecks;
use crate::config::{Config, PriorityConfig, ShadowConfig};
use crate::domain::{Policy, SkipCause};
use crate::imaging::{self, DisplayImage, Preprocess};
use rayon::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum AnalyseError {
    #[error(transparent)]
    Imaging(#[from] imaging::ImagingError),
    /// An input check's reason: the image is not one to analyse.
    #[error("{0}")]
    Skipped(Skip),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The selection rules cannot be compiled.
    #[error("{0}")]
    Selection(String),
}

/// Milliseconds spent in each stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub inference_ms: f64,
    pub postprocess_ms: f64,
}

/// The result of one image.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub decision: Decision,
    pub priority: Priority,
    pub probability: f32,
    pub width: u32,
    pub height: u32,
    /// The mask at the source image's size, as SIIM-ACR run-length encoding ("-1" when empty).
    pub mask_rle: String,
    pub mask_area_px: usize,
    /// When the pixel spacing is known (Imager Pixel Spacing, else Pixel Spacing; 0\0 is unknown).
    pub mask_area_mm2: Option<f64>,
    pub timings: Timings,
    /// The displayed image's mean and spread (the drift metrics).
    pub input: InputStatistics,
    /// The mask at the source image's size, row-major.
    #[serde(skip)]
    pub mask: Option<Vec<bool>>,
    /// What the first model saw and the displayed image, kept only when asked (`infer --out`).
    #[serde(skip)]
    pub views: Option<Views>,
    /// The segmenter's own mask at the source size whatever the classifier said (the
    /// segmenter's metrics in `evaluate`); only with [`Analyser::segment_always`].
    #[serde(skip)]
    pub segmenter_mask: Option<Vec<bool>>,
}

/// The images behind an analysis, for inspection.
#[derive(Debug, Clone)]
pub struct Views {
    /// The model's input as the model saw it, de-normalised to 0..1 (first channel).
    pub model_input: DisplayImage,
    /// The source image after Modality LUT, VOI and MONOCHROME1 inversion.
    pub display: DisplayImage,
}

/// The smallest image analysed, in pixels per side.
pub const MIN_SIDE: u32 = 64;

/// Why a selected image is not one the models can take (several frames, not grayscale, too
/// small), or `None` when it is. Which images are chest films is the selection rules' to say
/// ([`super::selection`]).
pub fn not_analysable(obj: &InMemDicomObject) -> Option<String> {
    let text = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_uppercase());
    let number = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u32>().ok());
    if let Some(frames) = text(tags::NUMBER_OF_FRAMES).and_then(|s| s.parse::<u32>().ok()) {
        if frames > 1 {
            return Some(format!("{frames} frames (one is analysed)"));
        }
    }
    let photometric = text(tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    if number(tags::SAMPLES_PER_PIXEL).is_some_and(|n| n != 1)
        || !(photometric == "MONOCHROME1" || photometric == "MONOCHROME2")
    {
        return Some(format!("not a grayscale image (photometric interpretation {photometric})"));
    }
    if let (Some(rows), Some(columns)) = (number(tags::ROWS), number(tags::COLUMNS)) {
        if rows < MIN_SIDE || columns < MIN_SIDE {
            return Some(format!("{columns}x{rows} pixels is smaller than {MIN_SIDE}x{MIN_SIDE}"));
        }
    }
    None
}

pub struct Analyser {
    pub manifest: Manifest,
    classifier: Model,
    segmenter: Model,
    /// Where a batch's inputs are put together for a model, kept from batch to batch.
    staging: Vec<f32>,
    rules: Rules,
    policy: Policy,
    priority_rules: PriorityConfig,
    tta_hflip: bool,
    /// `inference.batch_size`: the most images [`Analyser::analyse_batch`] is given at once.
    pub batch_size: usize,
    /// Keep the model input and the displayed image in each [`Analysis`] (`infer --out`).
    pub keep_views: bool,
    /// Run the segmenter on every image, also below the classifier's threshold (`evaluate`);
    /// the decision is the same.
    pub segment_always: bool,
    /// `inference.checks`.
    pub checks: InputChecks,
    /// `[[selection.rules]]`, compiled.
    pub selector: Arc<Selector>,
}

impl Analyser {
    /// The production models: `inference.models` with the configured thresholds.
    pub fn open(config: &Config) -> Result<Analyser, AnalyseError> {
        let i = &config.inference;
        Analyser::load(config, &i.models, [i.classifier_threshold, i.mask_threshold], i.min_mask_area_px)
    }

    /// A shadow version: its own manifest and thresholds, production's other settings.
    pub fn open_shadow(config: &Config, shadow: &ShadowConfig) -> Result<Analyser, AnalyseError> {
        let thresholds = [shadow.classifier_threshold, shadow.mask_threshold];
        Analyser::load(config, &shadow.models, thresholds, shadow.min_mask_area_px)
    }

    fn load(
        config: &Config,
        models: &std::path::Path,
        [classifier_threshold, mask_threshold]: [Option<f32>; 2],
        min_mask_area_px: Option<u32>,
    ) -> Result<Analyser, AnalyseError> {
        let inference = &config.inference;
        let manifest = Manifest::load(&config.resolve(models)).map_err(RuntimeError::from)?;
        let configured = inference.onnxruntime.as_ref().map(|p| config.resolve(p));
        let library = find_onnxruntime(configured.as_deref())?;
        let settings = SessionSettings {
            threads: inference.threads,
            device: inference.device,
            require_gpu: inference.require_gpu,
        };
        let classifier = Model::open(&library, &manifest, Role::Classifier, settings)?;
        let segmenter = Model::open(&library, &manifest, Role::Segmenter, settings)?;
        let rules = manifest.thresholds.with_overrides(classifier_threshold, mask_threshold, min_mask_area_px);
        Ok(Analyser {
            manifest,
            classifier,
            segmenter,
            staging: Vec::new(),
            rules,
            policy: inference.policy,
            priority_rules: config.priority,
            tta_hflip: inference.tta_hflip,
            batch_size: inference.batch_size,
            keep_views: false,
            segment_always: false,
            checks: inference.checks,
            selector: Arc::new(Selector::new(&config.selection).map_err(AnalyseError::Selection)?),
        })
    }

    /// The same models on the same sessions, with the same settings: what a GPU's second worker
    /// runs. Its batches take turns with the first's on the device (one copy of the models on
    /// it), and each reads, prepares and finishes its batch while the other's runs.
    pub fn share(&self) -> Analyser {
        Analyser {
            manifest: self.manifest.clone(),
            classifier: self.classifier.share(),
            segmenter: self.segmenter.share(),
            staging: Vec::new(),
            rules: self.rules,
            policy: self.policy,
            priority_rules: self.priority_rules,
            tta_hflip: self.tta_hflip,
            batch_size: self.batch_size,
            keep_views: self.keep_views,
            segment_always: self.segment_always,
            checks: self.checks,
            selector: self.selector.clone(),
        }
    }

    pub fn classifier(&self) -> &ModelSpec {
        &self.classifier.spec
    }

    pub fn segmenter(&self) -> &ModelSpec {
        &self.segmenter.spec
    }

    /// The thresholds in force (the manifest's with the config's overrides).
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The execution provider the models run on (CPU when CUDA fell back).
    pub fn execution_provider(&self) -> &'static str {
        self.segmenter.execution_provider
    }

    /// Whether the models run on a GPU (CUDA did not fall back to the CPU).
    pub fn on_gpu(&self) -> bool {
        self.execution_provider() != super::runtime::CPU_PROVIDER
    }

    /// Runs both models once on blank images at each batch size an image can meet, so that the
    /// first real image pays neither the session's first-run setup nor, on CUDA, cuDNN's search
    /// for the fastest convolution algorithms (per input shape). Returns the time it took.
    pub fn warm_up(&mut self) -> Result<std::time::Duration, AnalyseError> {
        let started = Instant::now();
        for model in [&self.classifier, &self.segmenter] {
            let (c, h, w) = model.input_shape();
            let blank = vec![0f32; c * h * w];
            // the padded shapes batches of 1 to batch_size run as (on the CPU: 1 is enough)
            let mut sizes: Vec<usize> = (1..=self.batch_size).map(|n| model.padded_batch(n)).collect();
            sizes.dedup();
            if model.execution_provider == super::runtime::CPU_PROVIDER {
                sizes.truncate(1);
            }
            for n in sizes {
                model.run(&vec![blank.as_slice(); n], &mut self.staging)?;
            }
        }
        Ok(started.elapsed())
    }

    /// How images are made ready for the models; a plain value, so that a batch's images can
    /// be prepared on several threads while the sessions stay with the worker.
    pub fn preparation(&self) -> Preparation {
        Preparation {
            classifier: self.classifier.spec.preprocess(),
            segmenter: self.segmenter.spec.preprocess(),
            keep_views: self.keep_views,
            checks: self.checks,
            selector: self.selector.clone(),
        }
    }

    /// One image through the cascade (a batch of one).
    pub fn analyse(&mut self, obj: &FileDicomObject<InMemDicomObject>) -> Result<Analysis, AnalyseError> {
        let preparation = self.preparation();
        let selection = preparation.select(obj, "").map_err(AnalyseError::Skipped)?;
        let prepared = preparation.prepare(obj, &selection)?;
        Ok(self.analyse_batch(vec![prepared])?.pop().expect("one analysis per prepared image"))
    }

    /// Prepared images through the cascade together: one classifier run for the batch, one
    /// segmenter run for those it sends on, then each image's decision and full-size mask.
    /// The results are those of each image alone (the models see the same tensors); each
    /// image's inference time is its share of the batch's.
    pub fn analyse_batch(&mut self, batch: Vec<Prepared>) -> Result<Vec<Analysis>, AnalyseError> {
        let n = batch.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        // the wait for the sessions (another worker's batch on them) is not the models' time
        let mut waited = Duration::ZERO;
        let segmenter_inputs = |wanted: &[usize]| -> Vec<&[f32]> {
            wanted.iter().map(|&i| batch[i].segmenter_input.as_deref().unwrap_or(&batch[i].classifier_input)).collect()
        };
        let mut probabilities: Vec<Option<Vec<f32>>> = vec![None; n];
        let outcomes: Vec<decision::Outcome> = match self.policy {
            Policy::Cascade => {
                let inputs: Vec<&[f32]> = batch.iter().map(|p| p.classifier_input.as_slice()).collect();
                let classified = run(&self.classifier, &inputs, self.tta_hflip, &mut self.staging)?;
                waited += classified.waited;
                let p: Vec<f32> = classified.probabilities.iter().map(|v| v[0]).collect();
                let wanted: Vec<usize> =
                    (0..n).filter(|&i| p[i] >= self.rules.classifier || self.segment_always).collect();
                let segmented = run(&self.segmenter, &segmenter_inputs(&wanted), self.tta_hflip, &mut self.staging)?;
                waited += segmented.waited;
                for (i, map) in wanted.into_iter().zip(segmented.probabilities) {
                    probabilities[i] = Some(map);
                }
                (0..n).map(|i| decision::cascade(&self.rules, p[i], probabilities[i].as_deref())).collect()
            }
            Policy::Segmentation => {
                let all: Vec<usize> = (0..n).collect();
                let segmented = run(&self.segmenter, &segmenter_inputs(&all), self.tta_hflip, &mut self.staging)?;
                waited += segmented.waited;
                let maps = segmented.probabilities;
                let outcomes = maps.iter().map(|map| decision::triplet(&self.rules, map)).collect();
                probabilities = maps.into_iter().map(Some).collect();
                outcomes
            }
        };
        let inference_ms = (ms(started) - waited.as_secs_f64() * 1000.0) / n as f64;
        // the rest is per image and runs on every core (the resize of the mask is most of it)
        let finish = Finish {
            preparation: self.preparation(),
            rules: &self.rules,
            policy: self.policy,
            priority_rules: &self.priority_rules,
            segmenter: &self.segmenter.spec,
            segment_always: self.segment_always,
        };
        batch
            .into_par_iter()
            .zip(outcomes)
            .zip(probabilities)
            .map(|((prepared, outcome), probabilities)| finish.analysis(prepared, outcome, probabilities, inference_ms))
            .collect()
    }
}

/// How an image becomes the models' inputs (`Analyser::preparation`).
#[derive(Clone)]
pub struct Preparation {
    classifier: Preprocess,
    segmenter: Preprocess,
    keep_views: bool,
    checks: InputChecks,
    selector: Arc<Selector>,
}

/// An image decoded and made into the models' inputs, waiting for its batch.
pub struct Prepared {
    /// The source image's size in pixels.
    width: u32,
    height: u32,
    /// The displayed image, kept only for [`Views`].
    display: Option<DisplayImage>,
    input: InputStatistics,
    classifier_input: Vec<f32>,
    /// `None` when the segmenter takes the classifier's input.
    segmenter_input: Option<Vec<f32>>,
    spacing: Option<(f64, f64)>,
    timings: Timings,
}

impl Preparation {
    /// Whether the image is one to analyse: selected by the rules (`calling_ae` is where it came
    /// from; empty offline), one the models can take, and passing the input checks on its tags.
    /// The selection, or why not.
    pub fn select(&self, obj: &InMemDicomObject, calling_ae: &str) -> Result<Selection, Skip> {
        let selection = self.selector.decide(&Tags::of(obj, calling_ae));
        crate::metrics::selection(selection.rule.as_deref(), selection.selected);
        if !selection.selected {
            return Err(Skip::new(SkipCause::Selection, format!("not selected: {}", selection.reason)));
        }
        if let Some(why) = not_analysable(obj) {
            return Err(Skip::new(SkipCause::Applicability, format!("not analysable: {why}")));
        }
        self.checks.tags(obj).map_or(Ok(selection), Err)
    }

    /// Whether the selection rules choose the image (asked again of an image that failed later;
    /// not counted in the selection metrics twice).
    pub fn selected(&self, obj: &InMemDicomObject, calling_ae: &str) -> bool {
        self.selector.decide(&Tags::of(obj, calling_ae)).selected
    }

    /// Decodes the pixels (Modality LUT, VOI, MONOCHROME1 inverted) and makes each model's input.
    /// Where the tags said too little (`selection.content_decides`), the content checks decide
    /// whatever `inference.checks.image_statistics` says, and a skip says why they were asked.
    pub fn prepare(
        &self,
        obj: &FileDicomObject<InMemDicomObject>,
        selection: &Selection,
    ) -> Result<Prepared, AnalyseError> {
        let mut timings = Timings::default();
        let started = Instant::now();
        let models: &[Preprocess] =
            if self.segmenter == self.classifier { &[self.classifier] } else { &[self.classifier, self.segmenter] };
        // where the displayed image is kept anyway (the overlay, infer --out), from it: one decode
        let (inputs, display) = if self.keep_views {
            let display = imaging::display_image(obj)?;
            (imaging::model_inputs_of(&display, models, started.elapsed()), Some(display))
        } else {
            (imaging::model_inputs(obj, models)?, None)
        };
        // one pass: decoding is getting the samples, preprocessing all the rest (the LUTs too)
        timings.decode_ms = inputs.decoded_in.as_secs_f64() * 1000.0;
        timings.preprocess_ms = ms(started) - timings.decode_ms;
        let input = InputStatistics { mean: inputs.mean, deviation: inputs.deviation };
        let checks =
            InputChecks { image_statistics: self.checks.image_statistics || selection.content_decides, ..self.checks };
        if let Some(skip) = checks.pixels((inputs.width, inputs.height), input) {
            // Where the content stood in for tags that said too little, it is the selection
            // that turned the image away: no "not analysed" report for it.
            let skip = if selection.content_decides {
                let reason = format!("not selected: {} ({}: the content checks decide)", skip.reason, selection.reason);
                Skip::new(SkipCause::Selection, reason)
            } else {
                skip
            };
            return Err(AnalyseError::Skipped(skip));
        }
        let mut tensors = inputs.tensors.into_iter();
        let classifier_input = tensors.next().expect("a tensor per model");
        let segmenter_input = tensors.next();
        Ok(Prepared {
            width: inputs.width,
            height: inputs.height,
            display,
            input,
            classifier_input,
            segmenter_input,
            spacing: pixel_spacing(obj),
            timings,
        })
    }
}

/// What the per-image end of a batch needs of the analyser (no sessions: it runs in parallel).
struct Finish<'a> {
    /// How the batch was prepared: what the classifier's input means, whether to keep views.
    preparation: Preparation,
    rules: &'a Rules,
    policy: Policy,
    priority_rules: &'a PriorityConfig,
    segmenter: &'a ModelSpec,
    segment_always: bool,
}

impl Finish<'_> {
    /// The decision's mask at the source size, its area and the priority.
    fn analysis(
        &self,
        prepared: Prepared,
        outcome: decision::Outcome,
        probabilities: Option<Vec<f32>>,
        inference_ms: f64,
    ) -> Result<Analysis, AnalyseError> {
        let Prepared { width, height, display, input, classifier_input, spacing, mut timings, .. } = prepared;
        let classifier = self.preparation.classifier;
        timings.inference_ms = inference_ms;
        let stage = Instant::now();
        // The segmenter alone has a mask when the rules' area test passes whatever the classifier said.
        let segmenter_has_mask = match (self.policy, &probabilities) {
            (Policy::Cascade, Some(p)) => decision::cascade(self.rules, 1.0, Some(p)).mask.is_some(),
            _ => outcome.mask.is_some(),
        };
        let full = match probabilities {
            Some(p) if outcome.mask.is_some() || (self.segment_always && segmenter_has_mask) => {
                Some(self.full_size_mask(p, width, height)?)
            }
            _ => None,
        };
        // one full-size mask serves both where both are wanted; a copy only then
        let (mask, segmenter_mask) = match (outcome.mask.is_some(), self.segment_always && segmenter_has_mask) {
            (true, true) => (full.clone(), full),
            (true, false) => (full, None),
            (false, true) => (None, full),
            (false, false) => (None, None),
        };
        let mask_area_px = mask.as_ref().map_or(0, |m| m.iter().filter(|&&b| b).count());
        let mask_rle = mask.as_ref().map_or_else(|| "-1".to_string(), |m| super::rle::siim_rle(m, width, height));
        let mask_area_mm2 = spacing.map(|(r, c)| mask_area_px as f64 * r * c);
        let priority = decision::priority(self.priority_rules, outcome.decision, outcome.probability, mask_area_mm2);
        timings.postprocess_ms = ms(stage);
        let views = display.map(|display| {
            let (w, h) = (classifier.width, classifier.height);
            let plane = &classifier_input[..(w * h) as usize];
            Views {
                model_input: DisplayImage {
                    width: w,
                    height: h,
                    pixels: plane.iter().map(|v| v * classifier.std + classifier.mean).collect(),
                },
                display,
            }
        });
        Ok(Analysis {
            decision: outcome.decision,
            priority,
            probability: outcome.probability,
            width,
            height,
            mask_rle,
            mask_area_px,
            mask_area_mm2,
            timings,
            input,
            mask,
            views,
            segmenter_mask,
        })
    }

    /// The segmenter's probabilities brought back to the source size with the same filter, then
    /// thresholded (the mask threshold, or the triplet rule's bottom one).
    fn full_size_mask(&self, probabilities: Vec<f32>, width: u32, height: u32) -> Result<Vec<bool>, AnalyseError> {
        let cut = match self.policy {
            Policy::Cascade => self.rules.mask,
            Policy::Segmentation => self.rules.triplet_bottom,
        };
        let small = DisplayImage { width: self.segmenter.width, height: self.segmenter.height, pixels: probabilities };
        Ok(imaging::mask_at_size(&small, width, height, cut)?)
    }
}

/// Runs a model on a batch of inputs, and with `hflip` on their mirror images too, averaging
/// the two (a mirrored map flipped back first). One output per input.
fn run(model: &Model, inputs: &[&[f32]], hflip: bool, staging: &mut Vec<f32>) -> Result<Run, RuntimeError> {
    let direct = model.run(inputs, staging)?;
    if !hflip || inputs.is_empty() {
        return Ok(direct);
    }
    let (_, _, width) = model.input_shape();
    let flipped: Vec<Vec<f32>> = inputs.iter().map(|input| flip_rows(input, width)).collect();
    let mirrored = model.run(&flipped.iter().map(Vec::as_slice).collect::<Vec<_>>(), staging)?;
    let probabilities = direct
        .probabilities
        .into_iter()
        .zip(mirrored.probabilities)
        .map(|(direct, mut mirrored)| {
            if mirrored.len() > 1 {
                mirrored = flip_rows(&mirrored, width);
            }
            direct.iter().zip(&mirrored).map(|(a, b)| (a + b) / 2.0).collect()
        })
        .collect();
    Ok(Run { probabilities, waited: direct.waited + mirrored.waited })
}

/// Mirrors every row of width `width` (a (C,) H, W tensor).
fn flip_rows(values: &[f32], width: usize) -> Vec<f32> {
    values.chunks_exact(width).flat_map(|row| row.iter().rev().copied()).collect()
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Row and column spacing in mm: Imager Pixel Spacing, else Pixel Spacing; 0\0 means unknown.
pub fn pixel_spacing(obj: &InMemDicomObject) -> Option<(f64, f64)> {
    [tags::IMAGER_PIXEL_SPACING, tags::PIXEL_SPACING].into_iter().find_map(|tag| {
        let v = obj.element_opt(tag).ok().flatten()?.to_multi_float64().ok()?;
        match v[..] {
            [r, c] if r > 0.0 && c > 0.0 => Some((r, c)),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flip_mirrors_each_row() {
        assert_eq!(flip_rows(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3), [3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    }
}
