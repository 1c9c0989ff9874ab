//! `pneumotriage infer` on synthetic radiographs with known masks (models/training's generator):
//! positives found with their masks, negatives negative, a non-chest image skipped.

use std::process::Command;

use crate::common::{pydicom_data, python, synthetic_images, text, tool};

/// An offline command checks only what it uses: a file holding nothing but `[inference]` is
/// enough for `infer`, while `check-config` (what `serve` needs) still stops on the missing
/// allow-list.
#[test]
fn infer_needs_only_the_inference_settings() {
    let work = tempfile::tempdir().unwrap();
    let files = synthetic_images(&work.path().join("images"), 1, 77);
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/manifest.toml");
    let config = work.path().join("offline.toml");
    std::fs::write(&config, format!("[inference]\nmodels = {:?}\nthreads = 1\n", manifest.display().to_string()))
        .unwrap();
    let bin = env!("CARGO_BIN_EXE_pneumotriage");
    let run = Command::new(bin).arg("infer").arg("--config").arg(&config).args(&files).output().unwrap();
    let report = text(&run);
    assert!(run.status.success(), "{report}");
    assert!(report.contains(".dcm: Positive") || report.contains(".dcm: Negative"), "{report}");
    let check = Command::new(bin).arg("check-config").arg("--config").arg(&config).output().unwrap();
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(text(&check).contains("dicom.peers: no calling AE is allowed"), "{}", text(&check));
}

#[test]
fn infer_finds_synthetic_pneumothoraces_and_skips_a_tibia() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    let out = work.path().join("out");
    let files = synthetic_images(&images, 10, 4242);
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
    assert!(report.contains("RG3_UNCR.dcm: skipped: not selected: no selection rule selects it"), "{report}");
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

    // What the model saw, and the image with the mask's outline, for every analysed file.
    for row in rows.iter().filter(|r| !r["decision"].is_null()) {
        let id = row["image_id"].as_str().unwrap();
        let result: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{id}.dcm.json"))).unwrap()).unwrap();
        let (input, _) = read_png(&out.join(format!("{id}.dcm.input.png")));
        assert_eq!((input.width, input.height, input.color_type), (256, 256, png::ColorType::Grayscale));
        let (overlay, pixels) = read_png(&out.join(format!("{id}.dcm.overlay.png")));
        assert_eq!(overlay.color_type, png::ColorType::Rgb);
        assert_eq!(
            (overlay.width as u64, overlay.height as u64),
            (result["result"]["width"].as_u64().unwrap(), result["result"]["height"].as_u64().unwrap())
        );
        let outlined = pixels.chunks_exact(3).filter(|p| p[0] != p[1] || p[1] != p[2]).count();
        if row["decision"] == "positive" {
            assert!(outlined > 100, "{id}: a positive's overlay shows its outline ({outlined} coloured pixels)");
        } else {
            assert_eq!(outlined, 0, "{id}: nothing drawn on a negative");
        }
    }
}

fn read_png(path: &std::path::Path) -> (png::OutputInfo, Vec<u8>) {
    let mut reader =
        png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap())).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info, buf)
}

/// `evaluate` over the demo models' held-out set reproduces the metrics models/demo/metrics.json
/// (and the manifest) recorded with the Python reference implementation.
#[test]
fn evaluate_reproduces_the_manifest_metrics() {
    let recorded: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo/metrics.json")).unwrap(),
    )
    .unwrap();
    let (n, seed) = (recorded["heldout_n"].as_u64().unwrap(), recorded["heldout_seed"].as_u64().unwrap());
    let work = tempfile::tempdir().unwrap();
    // scripts/test generates the set once for this test and pytest; alone, the test makes its own.
    let images = match std::env::var_os("PNEUMOTRIAGE_HELDOUT").map(std::path::PathBuf::from) {
        Some(dir) if dir.join("train-rle.csv").is_file() => dir,
        _ => {
            let dir = work.path().join("heldout");
            synthetic_images(&dir, n as usize, seed);
            dir
        }
    };
    let run = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .args(["evaluate", "--json", "--images"])
        .arg(&images)
        .arg("--masks")
        .arg(images.join("train-rle.csv"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let heldout = &recorded["heldout"];
    assert_eq!(report["images"].as_u64(), Some(n));
    assert_eq!(report["positives"], heldout["classifier"]["positives"]);
    let close = |ours: &serde_json::Value, theirs: &serde_json::Value, what: &str| {
        let (a, b) = (ours.as_f64().unwrap(), theirs.as_f64().unwrap());
        assert!((a - b).abs() <= 0.005, "{what}: evaluate says {a}, the manifest {b}");
    };
    for key in ["recall", "precision", "specificity"] {
        close(&report["classifier"][key], &heldout["classifier"][key], key);
    }
    close(&report["auc"], &heldout["classifier"]["auc"], "auc");
    close(&report["mean_dice_positives"], &heldout["segmenter"]["mean_dice_positives"], "segmenter Dice");
    close(&report["mean_iou_positives"], &heldout["segmenter"]["mean_iou_positives"], "segmenter IoU");
    close(&report["kaggle_mean_dice"], &heldout["cascade"]["kaggle_mean_dice"], "Kaggle metric");
    assert_eq!(report["threshold_sweep"].as_array().unwrap().len(), 9);
}

/// Batches give each image what it gets alone: `infer` with batches of 1 and of 8 over the same
/// files (synthetic positives and negatives, a full-size CR, and a damaged file in the middle of
/// a batch, which fails alone) writes the same decisions, masks and probabilities (within 1e-5).
/// The batches of 8 go to two workers at once (the second batch, shorter, is done first), and
/// the lines still come in the files' order.
#[test]
fn a_batch_gives_each_image_what_it_gets_alone() {
    let work = tempfile::tempdir().unwrap();
    let mut files = synthetic_images(&work.path().join("images"), 10, 31);
    let bad = work.path().join("bad");
    let made = Command::new(python()).arg(tool("make_bad_images.py")).arg(&files[0]).arg(&bad).output().unwrap();
    assert!(made.status.success(), "{}", text(&made));
    files.insert(3, bad.join("short_pixels.dcm"));
    files.insert(6, pydicom_data("RG1_UNCR.dcm"));
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/manifest.toml");
    let run = |batch: usize, workers: usize| {
        let config = work.path().join(format!("batch{batch}.toml"));
        let toml = format!(
            "[inference]\nmodels = {:?}\nthreads = 1\nworkers = {workers}\nbatch_size = {batch}\n",
            manifest.display().to_string()
        );
        std::fs::write(&config, toml).unwrap();
        let out = work.path().join(format!("out{batch}"));
        let run = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
            .arg("infer")
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .args(&files)
            .output()
            .unwrap();
        let report = text(&run);
        assert_eq!(run.status.code(), Some(1), "the damaged file fails the run: {report}");
        assert!(report.contains("short_pixels.dcm: failed: pixel data inconsistent"), "{report}");
        assert!(report.contains("11 analysed, 0 skipped, 1 failed in"), "{report}");
        assert!(report.contains(&format!("batches of up to {batch}")), "{report}");
        assert!(report.contains(&format!("inference.workers = {workers}")), "{report}");
        let lines: Vec<&str> = report.lines().filter(|l| l.contains(".dcm: ")).collect();
        assert_eq!(lines.len(), files.len(), "{report}");
        for (line, file) in lines.iter().zip(&files) {
            assert!(line.starts_with(&format!("{}: ", file.display())), "{line} is not {}'s line", file.display());
        }
        out
    };
    let (alone, batched) = (run(1, 1), run(8, 2));
    let mut positives = 0;
    for file in files.iter().filter(|f| !f.ends_with("short_pixels.dcm")) {
        let name = format!("{}.json", file.file_name().unwrap().to_string_lossy());
        let read = |dir: &std::path::Path| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(dir.join(&name)).unwrap()).unwrap()
        };
        let (a, b) = (&read(&alone)["result"], &read(&batched)["result"]);
        assert_eq!(a["decision"], b["decision"], "{name}");
        assert_eq!(a["mask_rle"], b["mask_rle"], "{name}");
        let (pa, pb) = (a["probability"].as_f64().unwrap(), b["probability"].as_f64().unwrap());
        assert!((pa - pb).abs() <= 1e-5, "{name}: {pa} alone, {pb} in a batch");
        positives += usize::from(a["decision"] == "positive");
    }
    assert!(positives > 0, "some masks were compared");
}

/// The selection rules and the input checks: deid-data's cat (a DX tagged CHEST and AP, Patient
/// Species Description "Feline", series "Thorax LAT") is excluded as a lateral by its series
/// before any check; re-described as a frontal film it is skipped by the species check; a
/// synthetic frontal radiograph whose Patient Orientation runs anterior-posterior (a lateral
/// tagged PA) is skipped by the view check. Each reason names what gave it away; every
/// radiograph of the held-out set (adults' frontal chests) passes every check.
#[test]
fn input_checks_skip_a_cat_and_a_lateral_but_no_held_out_radiograph() {
    use dicom_core::{DataElement, VR};
    use dicom_dictionary_std::tags;
    let work = tempfile::tempdir().unwrap();
    let frontal = synthetic_images(&work.path().join("images"), 1, 12).remove(0);
    let mut obj = dicom_object::open_file(&frontal).unwrap();
    obj.put(DataElement::new(tags::PATIENT_ORIENTATION, VR::CS, "A\\F"));
    let lateral = work.path().join("lateral.dcm");
    obj.write_to_file(&lateral).unwrap();
    let mut cat = dicom_object::open_file(crate::common::deid_cat()).unwrap();
    cat.put(DataElement::new(tags::SERIES_DESCRIPTION, VR::LO, "Thorax VD"));
    let frontal_cat = work.path().join("frontal-cat.dcm");
    cat.write_to_file(&frontal_cat).unwrap();
    let infer = |files: &[&std::path::Path]| {
        let run = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
            .arg("infer")
            .args(files)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        (run.status.code(), text(&run))
    };
    let (code, report) = infer(&[&crate::common::deid_cat(), &frontal_cat, &lateral, &frontal]);
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains(
            r#"cat.dcm: skipped: not selected: excluded by selection rule "lateral series" (Series Description Thorax LAT)"#
        ),
        "{report}"
    );
    assert!(
        report.contains(
            "frontal-cat.dcm: skipped: input check: not a human patient (Patient Species Description \"Feline\")"
        ),
        "{report}"
    );
    assert!(
        report.lines().any(|l| l.contains("lateral.dcm: skipped: input check: View Position")
            && l.contains("but Patient Orientation rows run A (a lateral)")),
        "{report}"
    );
    assert!(report.contains("1 analysed, 3 skipped, 0 failed"), "{report}");

    // scripts/test generates the held-out set; alone, the test checks 40 of its own
    let heldout = match std::env::var_os("PNEUMOTRIAGE_HELDOUT").map(std::path::PathBuf::from) {
        Some(dir) if dir.join("dicom-images-train").is_dir() => dir,
        _ => {
            let dir = work.path().join("heldout");
            synthetic_images(&dir, 40, 1007);
            dir
        }
    };
    let n = std::fs::read_to_string(heldout.join("train-rle.csv")).unwrap().lines().skip(1).count();
    let (code, report) = infer(&[&heldout.join("dicom-images-train")]);
    assert_eq!(code, Some(0), "{report}");
    let summary = report.lines().last().unwrap();
    assert!(summary.starts_with(&format!("{n} analysed, 0 skipped, 0 failed")), "{summary}");
}

/// The node runs the models' int8 and fp16 variants (`pneumotriage-models variant`, the int8
/// one calibrated on other images) and, on synthetic radiographs, decides as with float32.
#[test]
fn the_int8_and_fp16_variants_run_in_the_node_with_the_same_decisions() {
    let work = tempfile::tempdir().unwrap();
    let files = synthetic_images(&work.path().join("images"), 12, 77);
    synthetic_images(&work.path().join("calibration"), 16, 5);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let infer = |manifest: &std::path::Path| {
        let config = work.path().join("variant.toml");
        std::fs::write(&config, format!("[inference]\nmodels = {:?}\n", manifest.display().to_string())).unwrap();
        let run = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
            .arg("infer")
            .arg("--config")
            .arg(&config)
            .args(&files)
            .output()
            .unwrap();
        let report = text(&run);
        assert!(run.status.success(), "{report}");
        let decisions: Vec<String> = report
            .lines()
            .filter_map(|l| {
                l.split_once(".dcm: ").map(|(file, rest)| format!("{file} {}", rest.split(' ').next().unwrap()))
            })
            .collect();
        assert_eq!(decisions.len(), files.len(), "{report}");
        (report.lines().next().unwrap_or_default().to_string(), decisions)
    };
    let (_, float32) = infer(&root.join("models/manifest.toml"));
    assert!(float32.iter().any(|d| d.ends_with("Positive")) && float32.iter().any(|d| d.ends_with("Negative")));
    for kind in ["int8", "fp16"] {
        let out = work.path().join(kind);
        let made = Command::new(python())
            .args(["-m", "pneumotriage_models.cli", "variant", "--to", kind, "--out"])
            .arg(&out)
            .arg("--manifest")
            .arg(root.join("models/manifest.toml"))
            .arg("--calibration")
            .arg(work.path().join("calibration"))
            .env("PYTHONPATH", root.join("models/training/src"))
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", text(&made));
        let (models, decisions) = infer(&out.join("manifest.toml"));
        assert!(models.contains(&format!("0.1.0-{kind}")), "{models}");
        assert_eq!(decisions, float32, "{kind}");
    }
}

/// A classifier that gives NaN (a broken export, an fp16 overflow) fails the image: NaN is
/// below no threshold, and taken as a probability it would call every image positive. One that
/// gives NaN for every image is stopped at the warm-up, before any image, and says why.
#[test]
fn a_model_that_gives_nan_fails_the_image_rather_than_calling_it_positive() {
    let work = tempfile::tempdir().unwrap();
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let manifest = std::fs::read_to_string(models.join("manifest.toml")).unwrap();
    let loaded = pneumotriage::inference::Manifest::load(&models.join("manifest.toml")).unwrap();
    let (classifier, segmenter) = (
        loaded.model(pneumotriage::inference::Role::Classifier),
        loaded.model(pneumotriage::inference::Role::Segmenter),
    );
    let copy = work.path().join(&segmenter.file);
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(loaded.path_of(segmenter), copy).unwrap();
    let files = synthetic_images(&work.path().join("images"), 2, 77);
    // The classifier's output times sqrt(1 - the input's brightest value): NaN for a radiograph
    // (its normalised values pass 1), finite for the warm-up's blank image; or, for every image,
    // the output taken through sqrt(-1 - |x|).
    let head = "import onnx, sys\nfrom onnx import helper, TensorProto\nm = onnx.load(sys.argv[1])\n\
                inp, out = m.graph.input[0].name, m.graph.output[0].name\nfor n in m.graph.node:\n    \
                n.output[:] = ['raw' if o == out else o for o in n.output]\n\
                one = helper.make_tensor('one', TensorProto.FLOAT, [], [1.0])\n\
                minus_one = helper.make_tensor('minus_one', TensorProto.FLOAT, [], [-1.0])\n\
                m.graph.initializer.extend([one, minus_one])\n";
    let per_image = "m.graph.node.extend([helper.make_node('GlobalMaxPool', [inp], ['max']), \
                     helper.make_node('Flatten', ['max'], ['flat'], axis=1), \
                     helper.make_node('Sub', ['one', 'flat'], ['left']), helper.make_node('Sqrt', ['left'], ['root']), \
                     helper.make_node('Mul', ['raw', 'root'], [out])])\nonnx.save(m, sys.argv[2])";
    let always = "m.graph.node.extend([helper.make_node('Abs', ['raw'], ['abs']), \
                  helper.make_node('Sub', ['minus_one', 'abs'], ['neg']), helper.make_node('Sqrt', ['neg'], [out])])\n\
                  onnx.save(m, sys.argv[2])";
    let infer_with = |name: &str, tail: &str| {
        let nan = work.path().join(format!("{name}.onnx"));
        let script = format!("{head}{tail}");
        let made = Command::new(python()).args(["-c", &script]).arg(loaded.path_of(classifier)).arg(&nan).output();
        let made = made.unwrap();
        assert!(made.status.success(), "{}", text(&made));
        let digest = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&nan).unwrap()));
        let edited = manifest
            .replace(&classifier.sha256, &digest)
            .replace(&format!("file = \"{}\"", classifier.file), &format!("file = \"{name}.onnx\""));
        std::fs::write(work.path().join(format!("{name}.toml")), edited).unwrap();
        let config = work.path().join(format!("{name}-config.toml"));
        let models = work.path().join(format!("{name}.toml")).display().to_string();
        std::fs::write(&config, format!("[inference]\nmodels = {models:?}\nthreads = 1\n")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
            .arg("infer")
            .arg("--config")
            .arg(&config)
            .args(&files)
            .output()
            .unwrap()
    };
    let run = infer_with("classifier-nan-on-radiographs", per_image);
    let report = text(&run);
    assert!(!report.contains(": Positive") && !report.contains(": Negative"), "{report}");
    assert_eq!(report.matches("gave NaN (not a number) for this image").count(), 2, "{report}");

    let run = infer_with("classifier-nan-always", always);
    let report = text(&run);
    assert!(!run.status.success(), "{report}");
    assert!(report.contains("warming up the models: model pneumotriage-demo-classifier gave NaN"), "{report}");
}
