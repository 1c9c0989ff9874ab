//! Pixels as the models expect them: the node's decoding, Modality LUT, VOI and MONOCHROME1
//! handling against pydicom's (through models/training's reference preprocessing), and every
//! accepted transfer syntax decoding to the pixels of the uncompressed original.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{deid_cat, pydicom_data, python, run, text, tool};
use pneumotriage::imaging::{
    check_pixels, display_image, mean_and_deviation, model_inputs, model_inputs_of, open_checked, resize, to_tensor,
    DisplayImage, Preprocess,
};

fn node_display(path: &Path) -> DisplayImage {
    let obj = dicom_object::open_file(path).unwrap();
    display_image(&obj).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The reference image from pydicom, optionally resized to `size` x `size` with Pillow.
fn reference(path: &Path, size: Option<u32>) -> (u32, u32, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ref.f32");
    let mut cmd = Command::new(python());
    cmd.arg(tool("display_reference.py")).arg(path).arg(&out);
    if let Some(n) = size {
        cmd.args(["--size", &n.to_string()]);
    }
    let done = cmd.output().unwrap();
    assert!(done.status.success(), "{}", text(&done));
    let dims: Vec<u32> = String::from_utf8_lossy(&done.stdout).split_whitespace().map(|s| s.parse().unwrap()).collect();
    let bytes = std::fs::read(&out).unwrap();
    let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (dims[1], dims[0], values)
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn assert_matches_pydicom(path: &Path) {
    let ours = node_display(path);
    let (width, height, theirs) = reference(path, None);
    assert_eq!((ours.width, ours.height), (width, height), "{}", path.display());
    let diff = max_difference(&ours.pixels, &theirs);
    assert!(diff < 1e-4, "{}: max difference {diff}", path.display());
    // the model-size image after the antialiased bilinear resize
    let small = resize(&ours, 256, 256).unwrap();
    let (_, _, theirs_small) = reference(path, Some(256));
    let diff = max_difference(&small.pixels, &theirs_small);
    assert!(diff < 2e-3, "{} at 256: max difference {diff}", path.display());
}

#[test]
fn monochrome1_cr_matches_pydicom() {
    let path = pydicom_data("RG1_UNCR.dcm");
    assert_matches_pydicom(&path);
    // MONOCHROME1: air (dark) must come out dark, i.e. the inversion happened
    let image = node_display(&path);
    let mean: f32 = image.pixels.iter().sum::<f32>() / image.pixels.len() as f32;
    assert!(mean > 0.05 && mean < 0.95, "mean {mean}");
}

#[test]
fn monochrome2_dx_matches_pydicom() {
    assert_matches_pydicom(&deid_cat());
}

#[test]
fn modality_lut_sequence_matches_pydicom() {
    assert_matches_pydicom(&pydicom_data("mlut_18.dcm"));
}

#[test]
fn voi_lut_sequence_matches_pydicom() {
    assert_matches_pydicom(&pydicom_data("vlut_04.dcm"));
}

#[test]
fn every_accepted_syntax_decodes_to_the_uncompressed_pixels() {
    let original = pydicom_data("RG1_UNCR.dcm");
    let expected = node_display(&original);
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);
    let make = |tool: &str, flags: &[&str], from: &Path, name: &str| -> PathBuf {
        let target = path(name);
        let mut args = flags.to_vec();
        args.extend([from.to_str().unwrap(), target.to_str().unwrap()]);
        run(tool, &args);
        target
    };
    // Lossless: exactly the same display values, whatever the encoding.
    let lossless = [
        (make("dcmconv", &["+ti"], &original, "implicit.dcm"), "1.2.840.10008.1.2"),
        (make("dcmconv", &["+td"], &original, "deflated.dcm"), "1.2.840.10008.1.2.1.99"),
        (make("dcmcjpeg", &["+e1"], &original, "jpeg-sv1.dcm"), "1.2.840.10008.1.2.4.70"),
        (make("dcmcjpeg", &["+el"], &original, "jpeg-p14.dcm"), "1.2.840.10008.1.2.4.57"),
        (make("dcmcrle", &[], &original, "rle.dcm"), "1.2.840.10008.1.2.5"),
        (pydicom_data("RG1_J2KR.dcm"), "1.2.840.10008.1.2.4.90"),
        (make("dcmcjpls", &["+el"], &original, "jpeg-ls.dcm"), "1.2.840.10008.1.2.4.80"),
    ];
    for (file, syntax) in &lossless {
        assert_eq!(&transfer_syntax(file), syntax, "{}", file.display());
        let decoded = node_display(file);
        assert_eq!((decoded.width, decoded.height), (expected.width, expected.height));
        assert!(decoded.pixels == expected.pixels, "{syntax} differs from the uncompressed original");
    }
    // The analysis path: each file read as the pipeline reads it (native pixel data in place),
    // the models' inputs and the statistics made in one pass over the samples, as the displayed
    // image resized would give them.
    let models = [
        Preprocess { height: 256, width: 256, channels: 1, mean: 0.5, std: 0.25 },
        Preprocess { height: 512, width: 384, channels: 3, mean: 0.4, std: 0.2 },
    ];
    let wanted: Vec<Vec<f32>> = models.iter().map(|m| to_tensor(&expected, m).unwrap()).collect();
    let (mean, deviation) = mean_and_deviation(&expected.pixels);
    let uncompressed = (original.clone(), "1.2.840.10008.1.2.1");
    for (file, syntax) in lossless.iter().chain([&uncompressed]) {
        let obj = open_checked(file, 1 << 30).unwrap();
        check_pixels(&obj, 50_000_000).unwrap();
        let inputs = model_inputs(&obj, &models).unwrap();
        assert_eq!((inputs.width, inputs.height), (expected.width, expected.height), "{syntax}");
        assert!((inputs.mean - mean).abs() < 1e-6 && (inputs.deviation - deviation).abs() < 1e-6, "{syntax}");
        for (ours, theirs) in inputs.tensors.iter().zip(&wanted) {
            assert_eq!(ours.len(), theirs.len());
            let diff = max_difference(ours, theirs);
            assert!(diff < 1e-4, "{syntax}: the one-pass model input differs by {diff}");
        }
        // where the displayed image is kept (the overlay), the inputs made from it are the same
        let of_display = model_inputs_of(&expected, &models, std::time::Duration::ZERO);
        assert!(of_display.tensors == inputs.tensors, "{syntax}: from the displayed image, other inputs");
        assert_eq!((of_display.mean, of_display.deviation), (inputs.mean, inputs.deviation), "{syntax}");
    }
    // Lossy: close to the original. JPEG 2000 lossy is pydicom-data's RG1_J2KI; JPEG Baseline
    // holds 8 bits, so it is compared with an 8-bit copy of RG1.
    let eight_bit = path("8bit.dcm");
    let out =
        std::process::Command::new(python()).arg(tool("to_8bit.py")).arg(&original).arg(&eight_bit).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let baseline = make("dcmcjpeg", &["+eb", "+q", "95"], &eight_bit, "baseline.dcm");
    let near_lossless = make("dcmcjpls", &["+en"], &original, "jpeg-ls-near.dcm");
    for (file, reference, syntax) in [
        (near_lossless, original.clone(), "1.2.840.10008.1.2.4.81"),
        (pydicom_data("RG1_J2KI.dcm"), original.clone(), "1.2.840.10008.1.2.4.91"),
        (baseline, eight_bit.clone(), "1.2.840.10008.1.2.4.50"),
    ] {
        assert_eq!(transfer_syntax(&file), syntax, "{}", file.display());
        let (decoded, reference) = (node_display(&file), node_display(&reference));
        assert_eq!(decoded.pixels.len(), reference.pixels.len());
        let mean = decoded.pixels.iter().zip(&reference.pixels).map(|(a, b)| (a - b).abs()).sum::<f32>()
            / decoded.pixels.len() as f32;
        assert!(mean < 0.01, "{syntax}: mean difference {mean} from the original");
    }
}

fn transfer_syntax(path: &Path) -> String {
    let obj = dicom_object::open_file(path).unwrap();
    obj.meta().transfer_syntax().trim_end_matches('\0').to_string()
}
