//! Pipeline benchmark: the node's analysis of one image, stage by stage, against the equivalent
//! Python pipeline (pydicom + numpy + onnxruntime, `benches/pipeline_reference.py`) with the same
//! models and threads, in the same run on the same files. The node reads each file as its
//! pipeline workers do (`imaging::open_checked`, `imaging::check_pixels`).
//!
//! Files: pydicom-data's RG1 (CR chest, 1841x1955, 15-bit MONOCHROME1) uncompressed and as JPEG
//! 2000 lossless, a 3000x3000 16-bit DX, and a synthetic 1024x1024 positive from
//! models/training's generator (so that post-processing has a mask to bring back to full size).
//! Both sides run both models on every image (the classifier's decision aside) and post-process
//! as the node does. Stages are measured where each side draws them: the node's "decode" is
//! reading and checking the file and having its samples (decompressed, or in place); its
//! "preprocess" is one pass over the samples (the Modality/VOI LUTs, the displayed image's
//! statistics, the resize to each model's size). Python's "decode" is `dcmread` and
//! `pixel_array`, its LUTs falling into "preprocess". The ratio that matters is therefore the one
//! over everything but the models' own inference: (Python total - inference) / (node total -
//! inference). Target: at least 3.
//!
//! With `PIPELINE_BENCH_FULL_SIZE=path/to/manifest.toml` it also prints the CPU latency of those
//! models (e.g. the full-size architectures of `pneumotriage-models export --full-size`), at
//! each batch size of `PIPELINE_BENCH_BATCHES` (e.g. `1,2,4`; default 1); with
//! `PIPELINE_BENCH_DEVICE=cuda` the node's side runs on the GPU (the Python side stays on CPU).
//!
//! Run: `cargo bench --bench pipeline`. Environment: `PIPELINE_BENCH_REPEAT` (default 5),
//! `PIPELINE_BENCH_THREADS` (threads per session, default 1), `PNEUMOTRIAGE_PYTHON` (default
//! the repository's `.venv/bin/python` if there is one, else `python3`). The files are cached in
//! `target/bench-data/pipeline/`. It prints figures and asserts nothing about speed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use pneumotriage::config::Config;
use pneumotriage::imaging;
use pneumotriage::inference::analyse::Analyser;
use pneumotriage::inference::runtime::{Device, SessionSettings};
use pneumotriage::inference::{find_onnxruntime, Manifest, Model, Role};
use serde::Deserialize;

mod support;
use support::Mode;

// The tests' rule for which Python runs the tools (PNEUMOTRIAGE_PYTHON, else .venv, else python3).
#[path = "../tests/it/common/python.rs"]
mod python;
use python::python;

const STAGES: [&str; 4] = ["decode", "preprocess", "inference", "postprocess"];

#[derive(Debug, Clone, Default, Deserialize)]
struct Figures {
    file: String,
    width: u32,
    height: u32,
    decode_ms: f64,
    preprocess_ms: f64,
    inference_ms: f64,
    postprocess_ms: f64,
    total_ms: f64,
    probability: f64,
    mask_area_px: u64,
}

impl Figures {
    fn stage(&self, i: usize) -> f64 {
        [self.decode_ms, self.preprocess_ms, self.inference_ms, self.postprocess_ms][i]
    }

    fn without_inference(&self) -> f64 {
        self.total_ms - self.inference_ms
    }
}

#[derive(Deserialize)]
struct PythonRun {
    files: Vec<Figures>,
}

fn run_python(args: &[&str]) -> Result<String> {
    let out = Command::new(python())
        .args(args)
        .env("PYTHONPATH", "models/training/src")
        .output()
        .with_context(|| format!("running {}", python()))?;
    ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The benchmark's files, made once.
fn dataset() -> Result<Vec<PathBuf>> {
    let dir = Path::new("target/bench-data/pipeline");
    std::fs::create_dir_all(dir)?;
    let data = run_python(&["-c", "import data_store, os; print(os.path.join(data_store.__path__[0], 'data'))"])?;
    let mut files = vec![Path::new(&data).join("RG1_UNCR.dcm"), Path::new(&data).join("RG1_J2KR.dcm")];
    let big = dir.join("dx3000");
    if !big.exists() {
        run_python(&["tests/tools/make_series.py", big.to_str().unwrap(), "1", "--size", "3000"])?;
    }
    files.push(first_dcm(&big)?);
    let synthetic = dir.join("synthetic");
    if !synthetic.exists() {
        run_python(&["-m", "pneumotriage_models.generate", synthetic.to_str().unwrap(), "6", "--seed", "77"])?;
    }
    let csv = std::fs::read_to_string(synthetic.join("train-rle.csv"))?;
    let positive = csv
        .lines()
        .skip(1)
        .find_map(|l| l.split_once(',').filter(|(_, rle)| rle.trim() != "-1").map(|(id, _)| id.trim().to_string()))
        .context("the synthetic set has no positive")?;
    files.push(find(&synthetic, &format!("{positive}.dcm"))?);
    Ok(files)
}

fn first_dcm(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?.flatten().map(|e| e.path()).collect();
    found.sort();
    found.into_iter().find(|p| p.extension().is_some_and(|e| e == "dcm")).context("no .dcm file")
}

fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Ok(p) = find(&path, name) {
                return Ok(p);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Ok(path);
        }
    }
    bail!("{name} not found under {}", dir.display())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn analyser(threads: usize, device: Device) -> Result<Analyser> {
    let mut config = Config::embedded_default()?;
    config.inference.threads = threads;
    config.inference.device = device;
    let mut analyser = Analyser::open(&config)?;
    analyser.segment_always = true;
    Ok(analyser)
}

/// The node's figures for one file: a warm-up, then the median of `repeat` runs per stage. The
/// file is read as a pipeline worker reads it: walked within the limits, parsed, its pixel
/// budget and codestream checked.
fn measure(analyser: &mut Analyser, file: &Path, repeat: usize, limits: &Config) -> Result<Figures> {
    let mut runs = Vec::new();
    for _ in 0..=repeat {
        let started = Instant::now();
        let obj = imaging::open_checked(file, limits.dicom.max_dataset_bytes())?;
        imaging::check_pixels(&obj, limits.inference.max_pixels)?;
        let opened = started.elapsed().as_secs_f64() * 1000.0;
        let a = analyser.analyse(&obj)?;
        let total = started.elapsed().as_secs_f64() * 1000.0;
        let t = &a.timings;
        runs.push((
            [opened + t.decode_ms, t.preprocess_ms, t.inference_ms, t.postprocess_ms],
            total,
            a.probability,
            a.mask_area_px,
            (a.width, a.height),
        ));
    }
    runs.remove(0);
    let last = runs.last().unwrap();
    let stage = |i: usize| median(runs.iter().map(|r| r.0[i]).collect());
    Ok(Figures {
        file: file.file_name().unwrap().to_string_lossy().into_owned(),
        width: last.4 .0,
        height: last.4 .1,
        decode_ms: stage(0),
        preprocess_ms: stage(1),
        inference_ms: stage(2),
        postprocess_ms: stage(3),
        total_ms: median(runs.iter().map(|r| r.1).collect()),
        probability: last.2 as f64,
        mask_area_px: last.3 as u64,
    })
}

fn main() -> Result<()> {
    // as `pneumotriage` does at start-up
    pneumotriage::keep_freed_memory();
    let mode = Mode::of_this_run("pipeline");
    if mode == Mode::Skip {
        return Ok(());
    }
    let repeat = mode.env_usize("PIPELINE_BENCH_REPEAT", 5, 1)?;
    let threads = mode.env_usize("PIPELINE_BENCH_THREADS", 1, 1)?;
    let device: Device = std::env::var("PIPELINE_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into()).parse()?;
    let files = dataset()?;
    println!(
        "pipeline benchmark: {} files, median of {repeat} runs after a warm-up, {threads} thread(s) per session",
        files.len()
    );

    let mut node = analyser(threads, device)?;
    println!("node: {} ({})", node.execution_provider(), node.manifest.notice);
    let limits = Config::embedded_default()?;
    let ours: Vec<Figures> = files.iter().map(|f| measure(&mut node, f, repeat, &limits)).collect::<Result<_>>()?;
    drop(node);
    let mut args: Vec<String> = vec![
        "benches/pipeline_reference.py".into(),
        "--manifest".into(),
        "models/manifest.toml".into(),
        "--threads".into(),
        threads.to_string(),
        "--repeat".into(),
        repeat.to_string(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let theirs: PythonRun = serde_json::from_str(&run_python(&args.iter().map(String::as_str).collect::<Vec<_>>())?)?;

    println!();
    println!(
        "{:<24} {:>11} | {:>23} | {:>23} | {:>23} | {:>23} | {:>7}",
        "file", "size", "decode ms", "preprocess ms", "inference ms", "postprocess ms", "ratio"
    );
    println!("{:<24} {:>11} | {:>23} | {:>23} | {:>23} | {:>23} | {:>7}", "", "", "node / python", "", "", "", "");
    let mut ratios = Vec::new();
    for (o, p) in ours.iter().zip(&theirs.files) {
        ensure!(
            (o.probability - p.probability).abs() < 0.02
                && o.mask_area_px.abs_diff(p.mask_area_px) <= o.mask_area_px / 50 + 10,
            "{}: the two pipelines disagree (p {:.3} vs {:.3}, mask {} vs {} px)",
            o.file,
            o.probability,
            p.probability,
            o.mask_area_px,
            p.mask_area_px
        );
        let ratio = p.without_inference() / o.without_inference();
        ratios.push(ratio);
        let cells: Vec<String> =
            (0..STAGES.len()).map(|i| format!("{:>10.1} / {:>10.1}", o.stage(i), p.stage(i))).collect();
        println!(
            "{:<24} {:>11} | {} | {:>6.1}x",
            o.file,
            format!("{}x{}", o.width, o.height),
            cells.join(" | "),
            ratio
        );
    }
    println!();
    for (o, p) in ours.iter().zip(&theirs.files) {
        println!(
            "{:<24} total {:>7.1} ms vs {:>7.1} ms; without inference {:>7.1} ms vs {:>7.1} ms; p = {:.3}, mask {} px",
            o.file,
            o.total_ms,
            p.total_ms,
            o.without_inference(),
            p.without_inference(),
            o.probability,
            o.mask_area_px
        );
    }
    let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "\nratio without the models' inference (python / node): {} (lowest {:.1}x; target 3x: {})",
        ratios.iter().map(|r| format!("{r:.1}x")).collect::<Vec<_>>().join(", "),
        worst,
        if worst >= 3.0 { "met" } else { "NOT met" }
    );

    if let Some(manifest) = std::env::var_os("PIPELINE_BENCH_FULL_SIZE") {
        full_size_latency(Path::new(&manifest), threads, device, repeat)?;
    }
    Ok(())
}

/// Each model of a manifest alone: the median time of a run on constant inputs, at each batch
/// size of `PIPELINE_BENCH_BATCHES` (default 1), per image.
fn full_size_latency(manifest: &Path, threads: usize, device: Device, repeat: usize) -> Result<()> {
    let manifest = Manifest::load(manifest)?;
    let library = find_onnxruntime(None)?;
    let settings = SessionSettings { threads, device, require_gpu: false };
    let batches: Vec<usize> = std::env::var("PIPELINE_BENCH_BATCHES")
        .unwrap_or_else(|_| "1".into())
        .split(',')
        .map(|b| b.trim().parse().context("PIPELINE_BENCH_BATCHES: batch sizes, e.g. 1,2,4"))
        .collect::<Result<_>>()?;
    println!();
    for role in [Role::Classifier, Role::Segmenter] {
        let model = Model::open(&library, &manifest, role, settings)?;
        let (c, h, w) = model.input_shape();
        let blank = vec![0.0; c * h * w];
        for &batch in &batches {
            let inputs = vec![blank.as_slice(); batch];
            let mut times = Vec::new();
            for _ in 0..=repeat {
                let started = Instant::now();
                model.probabilities(&inputs)?;
                times.push(started.elapsed().as_secs_f64() * 1000.0 / batch as f64);
            }
            times.remove(0);
            let per_image = median(times);
            println!(
                "{} ({}, {c}x{h}x{w}) on {}, {threads} thread(s), batch {batch}: {per_image:.0} ms per image, \
                 {:.2} images/s (median of {repeat})",
                model.spec.name,
                model.spec.architecture,
                model.execution_provider,
                1000.0 / per_image
            );
        }
    }
    Ok(())
}
