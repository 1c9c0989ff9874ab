//! `pneumotriage infer` on synthetic radiographs with known masks (models/training's generator):
//! positives found with their masks, negatives negative, a non-chest image skipped.

mod common;

use std::process::Command;

use common::{pydicom_data, python, text, tool};

#[test]
fn infer_finds_synthetic_pneumothoraces_and_skips_a_tibia() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    let out = work.path().join("out");
    let made = Command::new(python())
        .args(["-m", "pneumotriage_models.generate"])
        .arg(&images)
        .args(["10", "--seed", "4242"])
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/models/training/src"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let mut files: Vec<_> = walk(&images);
    files.sort();
    let tibia = pydicom_data("RG3_UNCR.dcm");
    let run = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .arg("infer")
        .arg("--out")
        .arg(&out)
        .args(&files)
        .arg(&tibia)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let report = text(&run);
    assert!(run.status.success(), "{report}");
    assert!(report.contains("demo: synthetic data, not for clinical use"), "{report}");
    assert!(report.contains("RG3_UNCR.dcm: skipped: body part"), "{report}");
    assert_eq!(
        report.lines().filter(|l| l.contains(".dcm: Positive") || l.contains(".dcm: Negative")).count(),
        10,
        "{report}"
    );

    let scored = Command::new(python())
        .arg(tool("score_infer.py"))
        .arg(&out)
        .arg(images.join("train-rle.csv"))
        .output()
        .unwrap();
    assert!(scored.status.success(), "{}", text(&scored));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&scored.stdout).unwrap();
    let scored_rows: Vec<_> = rows.iter().filter(|r| !r["decision"].is_null()).collect();
    assert_eq!(scored_rows.len(), 10);
    assert!(scored_rows.iter().any(|r| r["positive"] == true) && scored_rows.iter().any(|r| r["positive"] == false));
    for row in scored_rows {
        if row["positive"] == true {
            assert_eq!(row["decision"], "positive", "{row}");
            assert!(row["dice"].as_f64().unwrap() >= 0.7, "mask Dice below 0.7: {row}");
        } else {
            assert_eq!(row["decision"], "negative", "{row}");
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else if e.path().extension().is_some_and(|x| x == "dcm") {
            out.push(e.path());
        }
    }
    out
}
