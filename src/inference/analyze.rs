//! One image through the cascade: applicability, pixels, models, decision, and the mask back
//! at the source image's size. Used by `pneumotriage infer` (and by the pipeline workers).

use std::time::Instant;

use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use serde::Serialize;

use super::decision::{self, Decision, Rules};
use super::manifest::Manifest;
use super::runtime::{find_onnxruntime, Model, RuntimeError};
use super::Role;
use crate::config::{Config, Policy};
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
    pub probability: f32,
    pub width: u32,
    pub height: u32,
    /// The mask at the source image's size, as SIIM-ACR run-length encoding ("-1" when empty).
    pub mask_rle: String,
    pub mask_area_px: usize,
    /// When the pixel spacing is known (Imager Pixel Spacing, else Pixel Spacing; 0\0 is unknown).
    pub mask_area_mm2: Option<f64>,
    pub timings: Timings,
    #[serde(skip)]
    pub mask: Option<Vec<bool>>,
}

/// Why an image is not analysed (design.md §3, "Applicability"), or `None` when it is.
pub fn not_applicable(obj: &InMemDicomObject) -> Option<String> {
    let text = |tag| obj.element_opt(tag).ok().flatten().and_then(|e| e.to_str().ok()).map(|s| s.trim().to_uppercase());
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
    None
}

pub struct Analyzer {
    pub manifest: Manifest,
    classifier: Model,
    segmenter: Model,
    rules: Rules,
    policy: Policy,
}

impl Analyzer {
    pub fn open(config: &Config) -> Result<Analyzer, AnalyzeError> {
        let inference = &config.inference;
        let manifest = Manifest::load(&config.resolve(&inference.models)).map_err(RuntimeError::from)?;
        let configured = inference.onnxruntime.as_ref().map(|p| config.resolve(p));
        let library = find_onnxruntime(configured.as_deref())?;
        let classifier = Model::open(&library, &manifest, Role::Classifier, inference.threads)?;
        let segmenter = Model::open(&library, &manifest, Role::Segmenter, inference.threads)?;
        let rules = manifest.thresholds.with_overrides(
            inference.classifier_threshold,
            inference.mask_threshold,
            inference.min_mask_area_px,
        );
        Ok(Analyzer { manifest, classifier, segmenter, rules, policy: inference.policy })
    }

    pub fn analyze(&mut self, obj: &FileDicomObject<InMemDicomObject>) -> Result<Analysis, AnalyzeError> {
        let mut timings = Timings::default();
        let started = Instant::now();
        let image = imaging::display_image(obj)?;
        timings.decode_ms = ms(started);

        let mut stage = Instant::now();
        let classifier_input = imaging::to_tensor(&image, &self.classifier.spec.preprocess())?;
        let segmenter_input = imaging::to_tensor(&image, &self.segmenter.spec.preprocess())?;
        timings.preprocess_ms = ms(stage);

        stage = Instant::now();
        let outcome = match self.policy {
            Policy::Cascade => {
                let p = self.classifier.probabilities(classifier_input)?[0];
                let seg = if p >= self.rules.classifier {
                    Some(self.segmenter.probabilities(segmenter_input)?)
                } else {
                    None
                };
                decision::cascade(&self.rules, p, seg.as_deref())
            }
            Policy::Segmentation => decision::triplet(&self.rules, &self.segmenter.probabilities(segmenter_input)?),
        };
        timings.inference_ms = ms(stage);

        stage = Instant::now();
        let mask = match &outcome.mask {
            Some(small) => Some(self.full_size_mask(small, &image)?),
            None => None,
        };
        let mask_area_px = mask.as_ref().map_or(0, |m| m.iter().filter(|&&b| b).count());
        let mask_rle = mask.as_ref().map_or_else(|| "-1".to_string(), |m| siim_rle(m, image.width, image.height));
        let mask_area_mm2 = pixel_spacing(obj).map(|(r, c)| mask_area_px as f64 * r * c);
        timings.postprocess_ms = ms(stage);
        Ok(Analysis {
            decision: outcome.decision,
            probability: outcome.probability,
            width: image.width,
            height: image.height,
            mask_rle,
            mask_area_px,
            mask_area_mm2,
            timings,
            mask,
        })
    }

    /// The model-resolution mask brought back to the source size with the same filter.
    fn full_size_mask(&self, small: &[bool], image: &DisplayImage) -> Result<Vec<bool>, AnalyzeError> {
        let spec = &self.segmenter.spec;
        let as_image = DisplayImage {
            width: spec.width,
            height: spec.height,
            pixels: small.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect(),
        };
        let big = imaging::resize(&as_image, image.width, image.height)?;
        Ok(big.pixels.iter().map(|&v| v >= 0.5).collect())
    }
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

/// A mask as SIIM-ACR run-length encoding: column-major, each start relative to the end of the
/// previous run ("-1" when empty).
pub fn siim_rle(mask: &[bool], width: u32, height: u32) -> String {
    let (w, h) = (width as usize, height as usize);
    let mut out = Vec::new();
    let (mut run_start, mut last_end) = (None, 0usize);
    for position in 0..=w * h {
        let on = position < w * h && mask[(position % h) * w + position / h];
        match (on, run_start) {
            (true, None) => run_start = Some(position),
            (false, Some(start)) => {
                out.push(format!("{} {}", start - last_end, position - start));
                last_end = position;
                run_start = None;
            }
            _ => {}
        }
    }
    if out.is_empty() {
        "-1".into()
    } else {
        out.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rle_is_column_major_with_relative_starts() {
        // 3 wide, 2 high; set (row 0, col 1), (row 1, col 1), (row 1, col 2)
        let mask = [false, true, false, false, true, true];
        // column-major order: (0,0) (1,0) (0,1) (1,1) (0,2) (1,2) -> 0 0 1 1 0 1
        assert_eq!(siim_rle(&mask, 3, 2), "2 2 1 1");
        assert_eq!(siim_rle(&[false; 6], 3, 2), "-1");
    }
}
