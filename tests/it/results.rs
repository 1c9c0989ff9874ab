//! The DICOM objects made of a result, checked by real validators: the Segmentation and the
//! structured report of pydicom-data's RG1 (CR, MONOCHROME1), deid-data's cat.dcm (DX) and
//! synthetic positives and negatives pass dicom3tools' `dciodvfy` without errors; highdicom
//! reads back the node's mask, and the report's finding, probability, priority and references.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;
use crate::common::{deid_cat, pydicom_data, python, synthetic_images, synthetic_truth, text, tool};

/// `infer --out` with thresholds that give every image a mask, so that real radiographs get a
/// SEG from the demo models too; one selection rule that takes every image and the input checks
/// off, for the cat (a real DX, for the encoders' sake, in a series named LAT) is not a human
/// adult's frontal chest.
fn infer_with_masks(files: &[PathBuf], out: &Path) {
    let config = out.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            "[dicom]\naccept_any = true\n[inference]\nmodels = \"{}/models/manifest.toml\"\n\
             classifier_threshold = 0.0\nmask_threshold = 0.05\nmin_mask_area_px = 0\n\
             [inference.checks]\nspecies = false\nview_consistency = false\nmin_age_years = 0\n\
             [[selection.rules]]\nname = \"every image\"\naction = \"select\"\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .args(["infer", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(out)
        .args(files)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
}

#[test]
fn segmentations_pass_dciodvfy_and_read_back_in_highdicom() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    let synthetic = synthetic_images(&images, 6, 77);
    let truth = synthetic_truth(&images);
    let positives: Vec<PathBuf> = synthetic
        .into_iter()
        .filter(|f| truth[&f.file_stem().unwrap().to_string_lossy().into_owned()].iter().any(|r| r.trim() != "-1"))
        .collect();
    assert!(!positives.is_empty());
    let mut files = vec![pydicom_data("RG1_UNCR.dcm"), deid_cat()];
    files.extend(positives);
    let out = work.path().join("out");
    infer_with_masks(&files, &out);

    let mut uids = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let seg = out.join(format!("{name}.seg.dcm"));
        assert!(seg.is_file(), "no SEG for {name}");
        let check = Command::new("dciodvfy").arg("-new").arg(&seg).output().expect("dicom3tools' dciodvfy runs");
        let report = text(&check);
        assert!(check.status.success() && !report.contains("Error"), "{name}: dciodvfy says:\n{report}");
        assert!(report.contains("Segmentation"), "{report}");

        let read = Command::new(python())
            .arg(tool("check_seg.py"))
            .arg(&seg)
            .arg(out.join(format!("{name}.json")))
            .output()
            .unwrap();
        assert!(read.status.success(), "{name}: {}", text(&read));
        let got: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
        assert_eq!(got["equal"], true, "{name}: highdicom's mask differs from the node's: {got}");
        assert!(got["pixels"].as_u64().unwrap() > 0, "{got}");
        assert_eq!(got["category"], serde_json::json!(["49755003", "SCT"]));
        assert_eq!(got["type"], serde_json::json!(["36118008", "SCT"]));
        assert_eq!(got["algorithm_type"], "AUTOMATIC");
        assert_eq!(got["algorithm"], "pneumotriage-demo-segmenter");
        assert_eq!(got["family"], "123110");
        assert_eq!(got["source_instance"], common::sop_instance_uid(file).as_str());
        assert_eq!(got["series_number"], 9901);
        uids.push(got["sop_instance"].as_str().unwrap().to_string());

        let result: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{name}.json"))).unwrap()).unwrap();
        let report = check_sr(&out.join(format!("{name}.sr.dcm")));
        assert_eq!(report["finding_present"], true, "{report}");
        assert_eq!(report["seg_sop_instance_uid"], got["sop_instance"], "the SR points at the SEG: {report}");
        assert_report_matches(&report, &result, file);
        check_secondary_capture(&out, &name, file);
    }
    // The same analysis gives the same SEG: a retried delivery re-sends, never duplicates.
    let again = work.path().join("again");
    infer_with_masks(&files[..1], &again);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let first_uid = dicom_object::open_file(again.join(format!("{name}.seg.dcm"))).unwrap();
    assert_eq!(
        first_uid
            .element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0'),
        uids[0]
    );
}

/// The secondary capture passes dciodvfy, refers to its source, and below its banner holds
/// exactly the outlined image `infer` wrote as `.overlay.png`.
fn check_secondary_capture(out: &Path, name: &str, source: &Path) {
    use dicom_dictionary_std::tags;
    let path = out.join(format!("{name}.overlay.dcm"));
    let check = Command::new("dciodvfy").arg("-new").arg(&path).output().unwrap();
    let report = text(&check);
    assert!(check.status.success() && !report.contains("Error"), "{name}: dciodvfy says:\n{report}");
    assert!(report.contains("SCImage"), "{report}");
    let sc = dicom_object::open_file(&path).unwrap();
    let get = |tag| sc.element(tag).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
    assert_eq!(get(tags::PHOTOMETRIC_INTERPRETATION), "RGB");
    assert_eq!(get(tags::BURNED_IN_ANNOTATION), "YES");
    assert_eq!(get(tags::SERIES_NUMBER), "9903");
    assert_eq!(get(tags::STUDY_INSTANCE_UID), common::study_instance_uid(source));
    let item = &sc.element(tags::SOURCE_IMAGE_SEQUENCE).unwrap().items().unwrap()[0];
    let referenced = item.element(tags::REFERENCED_SOP_INSTANCE_UID).unwrap().to_str().unwrap();
    assert_eq!(referenced.trim_end_matches('\0'), common::sop_instance_uid(source));

    let png = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(out.join(format!("{name}.overlay.png"))).unwrap(),
    ));
    let mut reader = png.read_info().unwrap();
    let mut outlined = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut outlined).unwrap();
    let rows: usize = get(tags::ROWS).parse().unwrap();
    let columns: usize = get(tags::COLUMNS).parse().unwrap();
    assert_eq!(columns, info.width as usize);
    let banner = rows - info.height as usize;
    assert!(banner > 0, "a banner above the image");
    let pixels = sc.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    let image = &pixels[banner * columns * 3..rows * columns * 3];
    assert!(image == &outlined[..info.buffer_size()], "{name}: the SC's image differs from the overlay PNG");
    let strip = &pixels[..banner * columns * 3];
    assert!(strip.chunks(3).any(|p| p == [255, 255, 255]), "the banner has text");
}

/// Validates a report with dciodvfy and reads it with highdicom (tests/tools/check_sr.py).
fn check_sr(path: &Path) -> serde_json::Value {
    let check = Command::new("dciodvfy").arg("-new").arg(path).output().unwrap();
    let report = text(&check);
    assert!(check.status.success() && !report.contains("Error"), "{}: dciodvfy says:\n{report}", path.display());
    assert!(report.contains("Comprehensive3DSR"), "{report}");
    let read = Command::new(python()).arg(tool("check_sr.py")).arg(path).output().unwrap();
    assert!(read.status.success(), "{}: {}", path.display(), text(&read));
    serde_json::from_slice(&read.stdout).unwrap()
}

/// The report says what the node's result says.
fn assert_report_matches(report: &serde_json::Value, result: &serde_json::Value, source: &Path) {
    let r = &result["result"];
    let p = report["probability"].as_f64().unwrap();
    assert!((p - r["probability"].as_f64().unwrap()).abs() < 1e-4, "{report} vs {result}");
    let letter = match r["priority"].as_str().unwrap() {
        "urgent" => "S",
        "review" => "A",
        _ => "R",
    };
    assert_eq!(report["priority"]["value"], letter, "{report}");
    assert_eq!(report["source_image_sop_instance_uid"], common::sop_instance_uid(source).as_str());
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/manifest.toml")).unwrap();
    let classifier = &report["algorithms"][0];
    assert_eq!(classifier["name"], "pneumotriage-demo-classifier");
    assert!(manifest.contains(classifier["sha256"].as_str().unwrap()), "{classifier}");
}

#[test]
fn a_negative_gets_a_report_saying_absent_and_no_segmentation() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    let files = synthetic_images(&images, 6, 77);
    let truth = synthetic_truth(&images);
    let negative = files
        .into_iter()
        .find(|f| truth[&f.file_stem().unwrap().to_string_lossy().into_owned()].iter().all(|r| r.trim() == "-1"))
        .expect("the seed 77 set has a negative");
    let out = work.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .args(["infer", "--out"])
        .arg(&out)
        .arg(&negative)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    let name = negative.file_name().unwrap().to_string_lossy().into_owned();
    assert!(!out.join(format!("{name}.seg.dcm")).exists(), "no SEG for a negative");
    assert!(!out.join(format!("{name}.overlay.dcm")).exists(), "no secondary capture for a negative");
    let report = check_sr(&out.join(format!("{name}.sr.dcm")));
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(format!("{name}.json"))).unwrap()).unwrap();
    assert_eq!(result["result"]["decision"], "negative");
    assert_eq!(report["finding_present"], false, "{report}");
    assert!(report["seg_sop_instance_uid"].is_null(), "{report}");
    assert_report_matches(&report, &result, &negative);
}
