//! `pneumotriage evaluate`: the production analysis over a labelled set in the SIIM-ACR layout
//! (DICOM files named `<ImageId>.dcm` under a directory, masks in `train-rle.csv`), and the
//! metrics of models/training's `metrics.py`, defined the same way so that the two agree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::inference::analyse::Analyser;
// The labels' decoder lives with the encoder; named here too, where the set is read.
use crate::inference::rle::{paint_rle, read_rle_csv, RleError};

/// The classifier thresholds of the seed's sweep.
pub const SWEEP: [f32; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

#[derive(Debug, Clone, Serialize)]
pub struct ClassifierMetrics {
    pub threshold: f32,
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
    pub recall: Option<f64>,
    pub precision: Option<f64>,
    pub specificity: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub images: usize,
    pub positives: usize,
    /// ImageIds of the CSV without a readable DICOM file, and files that failed analysis.
    pub missing: Vec<String>,
    pub failed: Vec<String>,
    pub classifier: ClassifierMetrics,
    pub auc: Option<f64>,
    pub threshold_sweep: Vec<ClassifierMetrics>,
    /// The segmenter alone on the positive images (mask threshold and minimum area applied).
    pub mean_dice_positives: Option<f64>,
    pub mean_iou_positives: Option<f64>,
    /// The SIIM-ACR metric of the whole decision: mean Dice, an empty prediction of an empty truth scoring 1.
    pub kaggle_mean_dice: Option<f64>,
    pub notice: String,
}

/// Why the metrics cannot be computed (an image that cannot be analysed is not one: it is
/// listed in the report).
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error("the masks: {0}")]
    Masks(#[source] RleError),
    #[error("the mask of {id}: {source}")]
    Mask { id: String, source: RleError },
    #[error("reading {}: {source}", path.display())]
    Images { path: PathBuf, source: std::io::Error },
}

/// Every `*.dcm` under `root` by ImageId (the file name without `.dcm`); the first in sorted order wins.
fn find_dicoms(root: &Path) -> Result<HashMap<String, PathBuf>, EvaluateError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm")) {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    walk(root, &mut paths).map_err(|source| EvaluateError::Images { path: root.to_path_buf(), source })?;
    paths.sort();
    let mut found = HashMap::new();
    for path in paths {
        if let Some(stem) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) {
            found.entry(stem).or_insert(path);
        }
    }
    Ok(found)
}

/// Runs the analysis over every labelled image and computes the metrics. `progress` is told
/// each ImageId as it is done.
pub fn evaluate(
    analyser: &mut Analyser,
    images: &Path,
    masks: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report, EvaluateError> {
    analyser.segment_always = true;
    let labels = read_rle_csv(masks).map_err(EvaluateError::Masks)?;
    let files = find_dicoms(images)?;
    let (mut truth_labels, mut scores, mut dices, mut ious, mut kaggle) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut missing, mut failed) = (vec![], vec![]);
    for (n, (id, rles)) in labels.iter().enumerate() {
        progress(n + 1, labels.len());
        let Some(path) = files.get(id) else {
            missing.push(id.clone());
            continue;
        };
        let analysis = match dicom_object::open_file(path) {
            Ok(obj) => analyser.analyse(&obj).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let analysis = match analysis {
            Ok(a) => a,
            Err(e) => {
                failed.push(format!("{id}: {e}"));
                continue;
            }
        };
        let (w, h) = (analysis.width as usize, analysis.height as usize);
        let mut truth = vec![false; w * h];
        for rle in rles {
            paint_rle(&mut truth, rle, w, h).map_err(|source| EvaluateError::Mask { id: id.clone(), source })?;
        }
        let positive = truth.iter().any(|&b| b);
        truth_labels.push(positive);
        scores.push(analysis.probability);
        let empty = vec![false; w * h];
        if positive {
            let predicted = analysis.segmenter_mask.as_deref().unwrap_or(&empty);
            dices.push(dice(predicted, &truth));
            ious.push(iou(predicted, &truth));
        }
        kaggle.push(dice(analysis.mask.as_deref().unwrap_or(&empty), &truth));
    }
    let threshold = analyser_threshold(analyser);
    Ok(Report {
        images: truth_labels.len(),
        positives: truth_labels.iter().filter(|&&p| p).count(),
        missing,
        failed,
        classifier: classifier_metrics(&truth_labels, &scores, threshold),
        auc: roc_auc(&truth_labels, &scores),
        threshold_sweep: SWEEP.iter().map(|&t| classifier_metrics(&truth_labels, &scores, t)).collect(),
        mean_dice_positives: mean(&dices),
        mean_iou_positives: mean(&ious),
        kaggle_mean_dice: mean(&kaggle),
        notice: analyser.manifest.notice.clone(),
    })
}

fn analyser_threshold(analyser: &Analyser) -> f32 {
    analyser.rules().classifier
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Counts and rates calling `score >= threshold` positive.
pub fn classifier_metrics(truth: &[bool], scores: &[f32], threshold: f32) -> ClassifierMetrics {
    let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
    for (&t, &s) in truth.iter().zip(scores) {
        match (s >= threshold, t) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    ClassifierMetrics {
        threshold,
        tp,
        fp,
        tn,
        fn_,
        recall: ratio(tp, tp + fn_),
        precision: ratio(tp, tp + fp),
        specificity: ratio(tn, tn + fp),
    }
}

/// ROC AUC by ranks (Mann-Whitney U), ties counting one half; `None` with one class only.
pub fn roc_auc(truth: &[bool], scores: &[f32]) -> Option<f64> {
    let positives = truth.iter().filter(|&&t| t).count();
    let negatives = truth.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0f64; scores.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let average = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = average;
        }
        start = end;
    }
    let rank_sum: f64 = truth.iter().zip(&ranks).filter(|(&t, _)| t).map(|(_, r)| r).sum();
    let u = rank_sum - (positives * (positives + 1)) as f64 / 2.0;
    Some(u / (positives * negatives) as f64)
}

/// Dice 2|P∩T| / (|P| + |T|); 1 when both are empty (the Kaggle convention).
pub fn dice(predicted: &[bool], truth: &[bool]) -> f64 {
    let (inter, total) = predicted
        .iter()
        .zip(truth)
        .fold((0usize, 0usize), |(i, t), (&p, &q)| (i + (p && q) as usize, t + p as usize + q as usize));
    if total == 0 {
        1.0
    } else {
        2.0 * inter as f64 / total as f64
    }
}

/// Intersection over union; 1 when both are empty.
pub fn iou(predicted: &[bool], truth: &[bool]) -> f64 {
    let (inter, union) = predicted
        .iter()
        .zip(truth)
        .fold((0usize, 0usize), |(i, u), (&p, &q)| (i + (p && q) as usize, u + (p || q) as usize));
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_their_definitions() {
        let truth = [true, true, false, false, true];
        let scores = [0.9, 0.4, 0.4, 0.1, 0.7];
        let m = classifier_metrics(&truth, &scores, 0.5);
        assert_eq!((m.tp, m.fp, m.tn, m.fn_), (2, 0, 2, 1));
        assert_eq!(m.specificity, Some(1.0));
        // pairs (pos, neg): 0.9>0.4, 0.9>0.1, 0.4=0.4 (half), 0.4>0.1, 0.7>0.4, 0.7>0.1 -> 5.5 / 6
        assert!((roc_auc(&truth, &scores).unwrap() - 5.5 / 6.0).abs() < 1e-12);
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.2]), None);
        assert_eq!(dice(&[true, true, false], &[true, false, false]), 2.0 / 3.0);
        assert_eq!(iou(&[true, true, false], &[true, false, false]), 0.5);
        assert_eq!(dice(&[false; 3], &[false; 3]), 1.0);
    }
}
