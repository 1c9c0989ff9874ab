//! Files and images through the cascade the way the node analyses them, shared by the pipeline
//! (and its shadow versions) and `infer`: a file read and checked before anything decodes it, a
//! batch prepared on every core and run through the models once, and each failure kept to its
//! own image (a panic included).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use dicom_object::{FileDicomObject, InMemDicomObject};
use rayon::prelude::*;

use super::analyse::{AnalyseError, Analyser, Analysis, Preparation, Prepared};
use super::checks::Skip;
use super::runtime::RuntimeError;
use super::selection::Selection;
use crate::domain::SkipCause;
use crate::imaging::{self, ImagingError};

/// Why an image has no analysis.
#[derive(Debug, Clone, PartialEq)]
pub enum Unanalysed {
    /// Not one to analyse: applicability, an input check, not grayscale (the rule and reason).
    Skipped(Skip),
    /// Cannot be analysed: unreadable, over a limit, corrupt pixel data, a panic.
    Failed(String),
    /// Worth another try later: an I/O or ONNX Runtime error.
    Transient(String),
}

impl From<AnalyseError> for Unanalysed {
    fn from(e: AnalyseError) -> Unanalysed {
        match e {
            AnalyseError::Imaging(ImagingError::NotGrayscale(why)) => {
                Unanalysed::Skipped(Skip::new(SkipCause::Applicability, why))
            }
            AnalyseError::Imaging(e) => Unanalysed::Failed(e.to_string()),
            AnalyseError::Skipped(skip) => Unanalysed::Skipped(skip),
            // the same image would give NaN again
            AnalyseError::Runtime(e @ RuntimeError::NotANumber { .. }) => Unanalysed::Failed(e.to_string()),
            AnalyseError::Runtime(e) => Unanalysed::Transient(e.to_string()),
            AnalyseError::Selection(e) => Unanalysed::Failed(e),
        }
    }
}

/// The bounds a file is read within: `dicom.max_dataset_mb` in bytes and `inference.max_pixels`.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub max_dataset_bytes: u64,
    pub max_pixels: u64,
}

/// An image read and checked, with what the selection rules made of it.
pub struct Checked {
    pub image: FileDicomObject<InMemDicomObject>,
    pub selection: Selection,
}

/// Reads a DICOM file and checks it: its structure before dicom-rs parses the bytes
/// (`imaging::open_checked`), then the selection rules, whether the models can take it and the
/// input checks on its tags (`calling_ae`: where it came from, empty offline), then its pixels
/// before a decoder sees them. A file can be as hostile as a peer.
pub fn read_checked(
    preparation: &Preparation,
    path: &Path,
    calling_ae: &str,
    limits: ReadLimits,
) -> Result<Checked, Unanalysed> {
    let image = imaging::open_checked(path, limits.max_dataset_bytes).map_err(|e| match e {
        ImagingError::Io(e) => Unanalysed::Transient(format!("cannot read {}: {e}", path.display())),
        e => Unanalysed::Failed(e.to_string()),
    })?;
    let selection = preparation.select(&image, calling_ae).map_err(Unanalysed::Skipped)?;
    imaging::check_pixels(&image, limits.max_pixels).map_err(|e| Unanalysed::Failed(e.to_string()))?;
    Ok(Checked { image, selection })
}

/// Checked images through one analyser's models: prepared on every core, one model run for the
/// batch. An image that cannot be decoded leaves the batch before the models and fails alone;
/// when the models fail (or panic) on a batch of several, each image is tried again alone, so
/// that the one at fault fails alone. An analysis or the reason there is none, per image, in
/// order.
pub fn analyse_images(analyser: &mut Analyser, images: &[&Checked]) -> Vec<Result<Analysis, Unanalysed>> {
    let preparation = analyser.preparation();
    let prepared: Vec<Result<Prepared, Unanalysed>> = images
        .par_iter()
        .map(|checked| guarded(|| Ok(preparation.prepare(&checked.image, &checked.selection)?)))
        .collect();
    let mut out: Vec<Option<Result<Analysis, Unanalysed>>> = Vec::with_capacity(images.len());
    let (mut indices, mut batch) = (Vec::new(), Vec::new());
    for (i, p) in prepared.into_iter().enumerate() {
        match p {
            Ok(p) => {
                indices.push(i);
                batch.push(p);
                out.push(None);
            }
            Err(why) => out.push(Some(Err(why))),
        }
    }
    match guarded(|| Ok(analyser.analyse_batch(batch)?)) {
        Ok(analyses) => {
            for (i, analysis) in indices.into_iter().zip(analyses) {
                out[i] = Some(Ok(analysis));
            }
        }
        Err(_) if indices.len() > 1 => {
            for i in indices {
                out[i] = analyse_images(analyser, &[images[i]]).pop();
            }
        }
        Err(why) => {
            if let Some(&i) = indices.first() {
                out[i] = Some(Err(why));
            }
        }
    }
    out.into_iter().map(|o| o.expect("an outcome per image")).collect()
}

/// Runs `f` on untrusted bytes: a panic in it fails the image with the panic's message, and the
/// caller goes on.
pub fn guarded<T>(f: impl FnOnce() -> Result<T, Unanalysed>) -> Result<T, Unanalysed> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        Err(Unanalysed::Failed(format!("internal error while analysing: {message}")))
    })
}
