//! One image through the cascade: applicability, pixels, models, decision, and the mask back
//! at the source image's size. Used by `pneumotriage infer` (and by the pipeline workers).

use std::time::Instant;

use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use serde::Serialize;

use super::decision::{self, Decision, Priority, Rules};
use super::manifest::{Manifest, ModelSpec};
use super::runtime::{find_onnxruntime, Model, RuntimeError, SessionSettings};
use super::Role;
use crate::config::{Config, PriorityConfig};
use crate::domain::Policy;
use crate::imaging::{self, DisplayImage};

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Imaging(#[from] imaging::ImagingError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
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
    /// The mask at the source image's size, row-major.
    #[serde(skip)]
    pub mask: Option<Vec<bool>>,
    /// What the first model saw and the displayed image, kept only when asked (`infer --out`).
    #[serde(skip)]
    pub views: Option<Views>,
    /// The segmenter's own mask at the source size whatever the classifier said (the
    /// segmenter's metrics in `evaluate`); only with [`Analyzer::segment_always`].
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

/// Why an image is not analysed (docs/architecture.md §4, "Applicability"), or `None` when it is.
pub fn not_applicable(obj: &InMemDicomObject) -> Option<String> {
    let text = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_uppercase());
    let number = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_int::<u32>().ok());
    match text(tags::MODALITY).as_deref() {
        Some("CR") | Some("DX") => {}
        other => return Some(format!("modality {} is not CR or DX", other.unwrap_or("(none)"))),
    }
    if let Some(part) = text(tags::BODY_PART_EXAMINED).filter(|s| !s.is_empty()) {
        if part != "CHEST" {
            return Some(format!("body part {part} is not CHEST"));
        }
    }
    if let Some(view) = text(tags::VIEW_POSITION).filter(|s| !s.is_empty()) {
        if view != "PA" && view != "AP" {
            return Some(format!("view position {view} is not PA or AP"));
        }
    }
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

pub struct Analyzer {
    pub manifest: Manifest,
    classifier: Model,
    segmenter: Model,
    rules: Rules,
    policy: Policy,
    priority_rules: PriorityConfig,
    tta_hflip: bool,
    /// Keep the model input and the displayed image in each [`Analysis`] (`infer --out`).
    pub keep_views: bool,
    /// Run the segmenter on every image, also below the classifier's threshold (`evaluate`);
    /// the decision is the same.
    pub segment_always: bool,
}

impl Analyzer {
    pub fn open(config: &Config) -> Result<Analyzer, AnalyzeError> {
        let inference = &config.inference;
        let manifest = Manifest::load(&config.resolve(&inference.models)).map_err(RuntimeError::from)?;
        let configured = inference.onnxruntime.as_ref().map(|p| config.resolve(p));
        let library = find_onnxruntime(configured.as_deref())?;
        let settings = SessionSettings {
            threads: inference.threads,
            device: inference.device,
            require_gpu: inference.require_gpu,
        };
        let classifier = Model::open(&library, &manifest, Role::Classifier, settings)?;
        let segmenter = Model::open(&library, &manifest, Role::Segmenter, settings)?;
        let rules = manifest.thresholds.with_overrides(
            inference.classifier_threshold,
            inference.mask_threshold,
            inference.min_mask_area_px,
        );
        Ok(Analyzer {
            manifest,
            classifier,
            segmenter,
            rules,
            policy: inference.policy,
            priority_rules: config.priority,
            tta_hflip: inference.tta_hflip,
            keep_views: false,
            segment_always: false,
        })
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

    pub fn analyze(&mut self, obj: &FileDicomObject<InMemDicomObject>) -> Result<Analysis, AnalyzeError> {
        let mut timings = Timings::default();
        let started = Instant::now();
        let image = imaging::display_image(obj)?;
        timings.decode_ms = ms(started);

        let mut stage = Instant::now();
        let classifier_pre = self.classifier.spec.preprocess();
        let segmenter_pre = self.segmenter.spec.preprocess();
        let classifier_input = imaging::to_tensor(&image, &classifier_pre)?;
        let segmenter_input = if segmenter_pre == classifier_pre {
            classifier_input.clone()
        } else {
            imaging::to_tensor(&image, &segmenter_pre)?
        };
        timings.preprocess_ms = ms(stage);

        stage = Instant::now();
        let (outcome, probabilities) = match self.policy {
            Policy::Cascade => {
                let p = run(&mut self.classifier, &classifier_input, self.tta_hflip)?[0];
                let seg = if p >= self.rules.classifier || self.segment_always {
                    Some(run(&mut self.segmenter, &segmenter_input, self.tta_hflip)?)
                } else {
                    None
                };
                (decision::cascade(&self.rules, p, seg.as_deref()), seg)
            }
            Policy::Segmentation => {
                let seg = run(&mut self.segmenter, &segmenter_input, self.tta_hflip)?;
                (decision::triplet(&self.rules, &seg), Some(seg))
            }
        };
        timings.inference_ms = ms(stage);

        stage = Instant::now();
        // The segmenter alone has a mask when the rules' area test passes whatever the classifier said.
        let segmenter_has_mask = match (self.policy, &probabilities) {
            (Policy::Cascade, Some(p)) => decision::cascade(&self.rules, 1.0, Some(p)).mask.is_some(),
            _ => outcome.mask.is_some(),
        };
        let full = match probabilities {
            Some(p) if outcome.mask.is_some() || (self.segment_always && segmenter_has_mask) => {
                Some(self.full_size_mask(p, &image)?)
            }
            _ => None,
        };
        let segmenter_mask = full.clone().filter(|_| self.segment_always && segmenter_has_mask);
        let mask = full.filter(|_| outcome.mask.is_some());
        let mask_area_px = mask.as_ref().map_or(0, |m| m.iter().filter(|&&b| b).count());
        let mask_rle =
            mask.as_ref().map_or_else(|| "-1".to_string(), |m| super::rle::siim_rle(m, image.width, image.height));
        let mask_area_mm2 = pixel_spacing(obj).map(|(r, c)| mask_area_px as f64 * r * c);
        let priority = decision::priority(&self.priority_rules, outcome.decision, outcome.probability, mask_area_mm2);
        timings.postprocess_ms = ms(stage);
        let views = self.keep_views.then(|| {
            let (_, h, w) = self.classifier.input_shape();
            let plane = &classifier_input[..h * w];
            Views {
                model_input: DisplayImage {
                    width: w as u32,
                    height: h as u32,
                    pixels: plane.iter().map(|v| v * classifier_pre.std + classifier_pre.mean).collect(),
                },
                display: image.clone(),
            }
        });
        Ok(Analysis {
            decision: outcome.decision,
            priority,
            probability: outcome.probability,
            width: image.width,
            height: image.height,
            mask_rle,
            mask_area_px,
            mask_area_mm2,
            timings,
            mask,
            views,
            segmenter_mask,
        })
    }

    /// The segmenter's probabilities brought back to the source size with the same filter, then
    /// thresholded (the mask threshold, or the triplet rule's bottom one).
    fn full_size_mask(&self, probabilities: Vec<f32>, image: &DisplayImage) -> Result<Vec<bool>, AnalyzeError> {
        let spec = &self.segmenter.spec;
        let cut = match self.policy {
            Policy::Cascade => self.rules.mask,
            Policy::Segmentation => self.rules.triplet_bottom,
        };
        let small = DisplayImage { width: spec.width, height: spec.height, pixels: probabilities };
        let big = imaging::resize(&small, image.width, image.height)?;
        Ok(big.pixels.iter().map(|&v| v >= cut).collect())
    }
}

/// Runs a model on one input, and with `hflip` on its mirror image too, averaging the two (the
/// mirrored output flipped back first when it is a map).
fn run(model: &mut Model, input: &[f32], hflip: bool) -> Result<Vec<f32>, RuntimeError> {
    let direct = model.probabilities(input.to_vec())?;
    if !hflip {
        return Ok(direct);
    }
    let (_, _, width) = model.input_shape();
    let mut mirrored = model.probabilities(flip_rows(input, width))?;
    if mirrored.len() > 1 {
        mirrored = flip_rows(&mirrored, width);
    }
    Ok(direct.iter().zip(&mirrored).map(|(a, b)| (a + b) / 2.0).collect())
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
