//! The manifest's models under ONNX Runtime (load-dynamic, the library from PyPI's onnxruntime
//! wheel): checked at load, and giving what Python's onnxruntime gives on the same tensor.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{pydicom_data, python, text, tool};
use pneumotriage::config::{Config, Uses};
use pneumotriage::imaging::{display_image, to_tensor};
use pneumotriage::inference::analyse::{Analyser, Analysis};
use pneumotriage::inference::runtime::{Device, SessionSettings};
use pneumotriage::inference::{find_onnxruntime, Manifest, Model, Role, RuntimeError};

const CPU: SessionSettings = SessionSettings { threads: 1, device: Device::Cpu, require_gpu: false };

fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/manifest.toml")
}

fn library() -> PathBuf {
    find_onnxruntime(None).expect("scripts/test installs onnxruntime into .venv")
}

/// Python's onnxruntime on exactly `tensor`.
fn python_probabilities(manifest: &Manifest, role: Role, tensor: &[f32]) -> Vec<f32> {
    let spec = manifest.model(role);
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.f32"), dir.path().join("out.f32"));
    std::fs::write(&input, tensor.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let done = Command::new(python())
        .arg(tool("ort_reference.py"))
        .arg(manifest.path_of(spec))
        .args([&spec.input, &spec.output])
        .args([spec.channels, spec.height, spec.width].map(|v| v.to_string()))
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap();
    assert!(done.status.success(), "{}", text(&done));
    std::fs::read(&output)
        .unwrap()
        .chunks_exact(4)
        .map(|c| 1.0 / (1.0 + (-f32::from_le_bytes([c[0], c[1], c[2], c[3]])).exp()))
        .collect()
}

#[test]
fn demo_models_give_what_python_onnxruntime_gives() {
    let manifest = Manifest::load(&manifest_path()).unwrap();
    assert!(manifest.notice.contains("not for clinical use"));
    let image = display_image(&dicom_object::open_file(pydicom_data("RG1_UNCR.dcm")).unwrap()).unwrap();
    for role in [Role::Classifier, Role::Segmenter] {
        let model = Model::open(&library(), &manifest, role, CPU).unwrap();
        let tensor = to_tensor(&image, &model.spec.preprocess()).unwrap();
        let ours = model.probabilities(&[&tensor]).unwrap().remove(0);
        let theirs = python_probabilities(&manifest, role, &tensor);
        let expected_len = if role == Role::Classifier { 1 } else { (model.spec.height * model.spec.width) as usize };
        assert_eq!(ours.len(), expected_len);
        let diff = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "{role:?}: max difference {diff}");
        assert!(ours.iter().all(|p| (0.0..=1.0).contains(p)));
    }
}

#[test]
fn a_model_file_that_is_not_the_manifests_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = std::fs::read_to_string(manifest_path()).unwrap();
    let manifest = Manifest::load(&manifest_path()).unwrap();
    std::fs::create_dir_all(dir.path().join("demo")).unwrap();
    for m in &manifest.models {
        std::fs::copy(manifest.path_of(m), dir.path().join(&m.file)).unwrap();
    }
    // a tampered classifier: one byte appended
    let classifier = dir.path().join(&manifest.model(Role::Classifier).file);
    let mut bytes = std::fs::read(&classifier).unwrap();
    bytes.push(0);
    std::fs::write(&classifier, bytes).unwrap();
    std::fs::write(dir.path().join("manifest.toml"), &text).unwrap();
    let tampered = Manifest::load(&dir.path().join("manifest.toml")).unwrap();
    let err = Model::open(&library(), &tampered, Role::Classifier, CPU).err().expect("refused");
    assert!(err.to_string().contains("sha256"), "{err}");

    // a manifest that lies about the input size
    text = text.replacen("height = 256", "height = 128", 1);
    std::fs::write(dir.path().join("manifest.toml"), &text).unwrap();
    std::fs::write(&classifier, std::fs::read(manifest.path_of(manifest.model(Role::Classifier))).unwrap()).unwrap();
    let lying = Manifest::load(&dir.path().join("manifest.toml")).unwrap();
    match Model::open(&library(), &lying, Role::Classifier, CPU) {
        Err(RuntimeError::Shape { message, .. }) => assert!(message.contains("input shape"), "{message}"),
        other => panic!("expected a shape error, got {:?}", other.err()),
    }
}

/// A model whose batch dimension is fixed (the demo segmenter made to take exactly 4) gets its
/// images in runs of 4, the last padded with blank images, through one staging buffer: 6 images
/// and then 1 give, in order, what each gives alone to the model with a dynamic batch.
#[test]
fn a_fixed_batch_model_gets_runs_padded_with_blank_images() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = Manifest::load(&manifest_path()).unwrap();
    let spec = manifest.model(Role::Segmenter);
    let fixed = dir.path().join("segmenter-batch4.onnx");
    let script = "import onnx, sys\nm = onnx.load(sys.argv[1])\n\
                  for v in list(m.graph.input) + list(m.graph.output):\n    v.type.tensor_type.shape.dim[0].dim_value = 4\n\
                  onnx.save(m, sys.argv[2])";
    let made = Command::new(python()).args(["-c", script]).arg(manifest.path_of(spec)).arg(&fixed).output().unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let digest = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&fixed).unwrap()));
    let text_of = std::fs::read_to_string(manifest_path())
        .unwrap()
        .replace(&spec.sha256, &digest)
        .replace(&format!("file = \"{}\"", spec.file), "file = \"segmenter-batch4.onnx\"");
    std::fs::write(dir.path().join("manifest.toml"), text_of).unwrap();
    let batch4 =
        Model::open(&library(), &Manifest::load(&dir.path().join("manifest.toml")).unwrap(), Role::Segmenter, CPU)
            .unwrap();
    let dynamic = Model::open(&library(), &manifest, Role::Segmenter, CPU).unwrap();
    assert_eq!(batch4.padded_batch(1), 4);

    let (c, h, w) = dynamic.input_shape();
    let images: Vec<Vec<f32>> =
        (0..7).map(|k| (0..c * h * w).map(|i| ((i * (k + 3)) % 251) as f32 / 125.0 - 1.0).collect()).collect();
    let alone: Vec<Vec<f32>> = images.iter().map(|image| dynamic.probabilities(&[image]).unwrap().remove(0)).collect();
    let mut staging = Vec::new();
    let six: Vec<&[f32]> = images[..6].iter().map(Vec::as_slice).collect();
    let mut got = batch4.run(&six, &mut staging).unwrap().probabilities;
    assert_eq!(got.len(), 6);
    got.extend(batch4.run(&[&images[6]], &mut staging).unwrap().probabilities);
    for (i, (ours, theirs)) in got.iter().zip(&alone).enumerate() {
        let diff = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-5, "image {i}: max difference {diff}");
    }
    assert_ne!(alone[0], alone[1], "the images differ, and so do their maps");
}

#[test]
fn a_configured_library_path_comes_first_and_a_missing_one_is_explained() {
    let found = library();
    assert_eq!(find_onnxruntime(Some(&found)).unwrap(), found);
    let message = RuntimeError::NotFound { looked: "/nowhere".into() }.to_string();
    assert!(message.contains("pip install onnxruntime==") && message.contains("ORT_DYLIB_PATH"), "{message}");
}

/// A GPU's workers share one set of sessions (`Analyser::share`); here on the CPU, the same code:
/// two analysers on the same sessions, each on its own thread, analysing the same images at the
/// same time, give exactly what one analyser gives alone, positives and their masks included.
#[test]
fn analysers_sharing_sessions_give_what_one_gives_alone() {
    let dir = tempfile::tempdir().unwrap();
    let files = crate::common::synthetic_images(&dir.path().join("images"), 6, 77);
    let toml = format!("[inference]\nmodels = {:?}\n", manifest_path().display().to_string());
    let config = Config::parse(&toml, "share.toml", dir.path().to_path_buf(), Uses::Analysis).unwrap();
    let images: Vec<_> = files.iter().map(|f| dicom_object::open_file(f).unwrap()).collect();
    let summary = |a: &Analysis| (format!("{:?}", a.decision), a.probability.to_bits(), a.mask_rle.clone());
    let mut alone = Analyser::open(&config).unwrap();
    let expected: Vec<_> = images.iter().map(|image| summary(&alone.analyse(image).unwrap())).collect();
    assert!(expected.iter().any(|(d, ..)| d == "Positive"), "the set has a positive: {expected:?}");
    assert!(expected.iter().any(|(.., rle)| rle != "-1"), "and a mask: {expected:?}");

    let first = Analyser::open(&config).unwrap();
    let second = first.share();
    std::thread::scope(|scope| {
        for mut analyser in [first, second] {
            let (images, expected) = (&images, &expected);
            scope.spawn(move || {
                for _ in 0..3 {
                    for (image, expected) in images.iter().zip(expected) {
                        assert_eq!(&summary(&analyser.analyse(image).unwrap()), expected);
                    }
                }
            });
        }
    });
}
