//! `evaluate`: the models' metrics on a labelled set, through the node's own analysis.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use pneumotriage::config::Config;
use pneumotriage::inference::analyse::Analyser;

/// `pneumotriage evaluate`: the metrics of the models through the node's own code path.
pub fn evaluate(config: &Config, images: &Path, masks: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut analyser = Analyser::open(config).with_context(|| format!("inference in {}", config.source))?;
    let report = pneumotriage::evaluate::evaluate(&mut analyser, images, masks, |done, total| {
        if done % 50 == 0 || done == total {
            eprintln!("{done}/{total} images");
        }
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let f = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
    let c = &report.classifier;
    println!("models: {}", report.notice);
    println!("{} images, {} positive", report.images, report.positives);
    if !report.missing.is_empty() {
        println!("{} labelled images without a DICOM file (first: {})", report.missing.len(), report.missing[0]);
    }
    for failure in &report.failed {
        println!("failed: {failure}");
    }
    println!(
        "classifier at {:.2}: recall {}, precision {}, specificity {}, AUC {}",
        c.threshold,
        f(c.recall),
        f(c.precision),
        f(c.specificity),
        f(report.auc)
    );
    for row in &report.threshold_sweep {
        println!(
            "  threshold {:.1}: recall {}, precision {}, specificity {}",
            row.threshold,
            f(row.recall),
            f(row.precision),
            f(row.specificity)
        );
    }
    println!("segmenter on positives: Dice {}, IoU {}", f(report.mean_dice_positives), f(report.mean_iou_positives));
    println!("cascade Kaggle metric (mean Dice, empty-empty = 1): {}", f(report.kaggle_mean_dice));
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
