//! The manifest's models under ONNX Runtime (load-dynamic, the library from PyPI's onnxruntime
//! wheel): checked at load, and giving what Python's onnxruntime gives on the same tensor.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{pydicom_data, python, text, tool};
use pneumotriage::imaging::{display_image, to_tensor};
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
        let mut model = Model::open(&library(), &manifest, role, CPU).unwrap();
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

#[test]
fn a_configured_library_path_comes_first_and_a_missing_one_is_explained() {
    let found = library();
    assert_eq!(find_onnxruntime(Some(&found)).unwrap(), found);
    let message = RuntimeError::NotFound { looked: "/nowhere".into() }.to_string();
    assert!(message.contains("pip install onnxruntime==") && message.contains("ORT_DYLIB_PATH"), "{message}");
}
