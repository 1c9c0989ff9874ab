//! `infer`: analyses files offline (no network, no database), a line each, and with `--out` the
//! objects and pictures the node would make of each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::Context;
use dicom_object::{FileDicomObject, InMemDicomObject};
use pneumotriage::config::Config;
use pneumotriage::inference::analyse::{Analyser, Analysis};
use pneumotriage::inference::batch::{analyse_images, guarded, read_checked, Checked, ReadLimits, Unanalysed};
use pneumotriage::results::{make_objects, overlay, OutputSettings};
use rayon::prelude::*;

/// `pneumotriage infer`: every file through the cascade, a line each, in order. The batches go
/// to the node's workers (as many, their models opened or shared alike: `workers::count`), so
/// that its figures are the node's.
pub fn infer(config: &Config, out: Option<&Path>, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let open = || -> anyhow::Result<Analyser> {
        let mut analyser = Analyser::open(config).with_context(|| format!("inference in {}", config.source))?;
        analyser.keep_views = out.is_some();
        Ok(analyser)
    };
    let mut first = open()?;
    let mut outputs = OutputSettings::of(config);
    // for inspection, the secondary capture too, whether or not the node sends it
    outputs.outputs.overlay = true;
    println!(
        "models: {} {} and {} {} on {} ({})",
        first.classifier().name,
        first.classifier().version,
        first.segmenter().name,
        first.segmenter().version,
        first.execution_provider(),
        first.manifest.notice
    );
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut warm_up = first.warm_up().context("warming up the models")?;
    let (count, why) = super::workers::count(config, &[&first]);
    let on_gpu = first.on_gpu();
    let mut workers = super::workers::each(first, count, on_gpu, Analyser::share, || {
        let mut analyser = open()?;
        warm_up += analyser.warm_up().context("warming up the models")?;
        Ok::<_, anyhow::Error>(analyser)
    })?;
    let files = expand_directories(files)?;
    let batches: Vec<&[PathBuf]> = files.chunks(workers[0].batch_size).collect();
    let limits =
        ReadLimits { max_dataset_bytes: config.dicom.max_dataset_bytes(), max_pixels: config.inference.max_pixels };
    let started = Instant::now();
    let (mut analysed, mut skipped, mut failed) = (0, 0, 0);
    // each worker takes the next batch; the reports are printed and written in the files' order
    let next = AtomicUsize::new(0);
    let (sender, finished) = mpsc::channel::<(usize, anyhow::Result<Vec<Report>>)>();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        for analyser in &mut workers {
            let (sender, next, batches, outputs) = (sender.clone(), &next, &batches, &outputs);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(files) = batches.get(i) else { break };
                let reports = analyse_files(analyser, files, limits, out.is_some(), outputs);
                if sender.send((i, reports)).is_err() {
                    break; // the writer stopped at an error
                }
            });
        }
        drop(sender);
        // at an error the receiver is dropped: the workers stop after the batch in hand
        let (mut waiting, mut due) = (BTreeMap::new(), 0);
        for (i, reports) in finished {
            waiting.insert(i, reports);
            while let Some(reports) = waiting.remove(&due) {
                due += 1;
                let reports = reports?;
                for (file, report) in batches[due - 1].iter().zip(reports) {
                    println!("{}", report.line);
                    match report.counted {
                        Counted::Analysed => analysed += 1,
                        Counted::Skipped => skipped += 1,
                        Counted::Failed => failed += 1,
                    }
                    if let Some(dir) = out {
                        let stem = output_stem(file);
                        for (suffix, bytes) in report.files {
                            std::fs::write(dir.join(format!("{stem}.{suffix}")), bytes)?;
                        }
                        std::fs::write(dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&report.json)?)?;
                    }
                }
            }
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{analysed} analysed, {skipped} skipped, {failed} failed in {seconds:.2} s: {:.1} images/s analysed \
         (batches of up to {}, {}, {}: {why}; warm-up {} ms)",
        analysed as f64 / seconds.max(1e-9),
        workers[0].batch_size,
        workers[0].execution_provider(),
        if workers.len() == 1 { "1 worker".to_string() } else { format!("{} workers", workers.len()) },
        warm_up.as_millis()
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One batch of files: read and checked on every core, through the models once, then each
/// file's line, objects and pictures made on every core; a report per file, in order.
fn analyse_files(
    analyser: &mut Analyser,
    files: &[PathBuf],
    limits: ReadLimits,
    with_files: bool,
    outputs: &OutputSettings,
) -> anyhow::Result<Vec<Report>> {
    let preparation = analyser.preparation();
    let read: Vec<Result<Checked, Unanalysed>> =
        files.par_iter().map(|file| guarded(|| read_checked(&preparation, file, "", limits))).collect();
    let images: Vec<&Checked> = read.iter().filter_map(|r| r.as_ref().ok()).collect();
    let mut analyses = analyse_images(analyser, &images).into_iter();
    let outcomes: Vec<Outcome> = read
        .into_iter()
        .map(|read| {
            let checked = read?;
            Ok((Box::new(checked.image), Box::new(analyses.next().expect("an outcome per image")?)))
        })
        .collect();
    let analyser = &*analyser;
    files.par_iter().zip(outcomes).map(|(file, outcome)| report(analyser, file, outcome, with_files, outputs)).collect()
}

/// What became of a file: its image and analysis, or why there is none.
type Outcome = Result<(Box<FileDicomObject<InMemDicomObject>>, Box<Analysis>), Unanalysed>;

enum Counted {
    Analysed,
    Skipped,
    Failed,
}

/// A file's line, its JSON and, with `--out`, what the node would make of it (file name
/// suffix, bytes).
struct Report {
    line: String,
    counted: Counted,
    json: serde_json::Value,
    files: Vec<(String, Vec<u8>)>,
}

fn report(
    analyser: &Analyser,
    file: &Path,
    outcome: Outcome,
    with_files: bool,
    outputs: &OutputSettings,
) -> anyhow::Result<Report> {
    let name = file.display();
    let (obj, a) = match outcome {
        Err(Unanalysed::Failed(e) | Unanalysed::Transient(e)) => {
            let json = serde_json::json!({ "file": file, "failed": e });
            return Ok(Report { line: format!("{name}: failed: {e}"), counted: Counted::Failed, json, files: vec![] });
        }
        Err(Unanalysed::Skipped(skip)) => {
            let json = serde_json::json!({ "file": file, "skipped": skip.reason, "check": skip.cause });
            let line = format!("{name}: skipped: {skip}");
            return Ok(Report { line, counted: Counted::Skipped, json, files: vec![] });
        }
        Ok(analysed) => analysed,
    };
    let area = a.mask_area_mm2.filter(|_| a.mask_area_px > 0).map(|mm2| format!(" ({mm2:.0} mm²)")).unwrap_or_default();
    let t = &a.timings;
    let line = format!(
        "{name}: {:?} p={:.3}, priority {}, mask {} px{area}; decode {:.0} ms, preprocess {:.0} ms, inference {:.0} ms, post {:.0} ms",
        a.decision, a.probability, a.priority.as_str(), a.mask_area_px, t.decode_ms, t.preprocess_ms, t.inference_ms, t.postprocess_ms
    );
    let mut files = Vec::new();
    if with_files {
        // the SEG, SR and secondary capture the node would send
        for made in make_objects(analyser, &obj, &a, outputs, "") {
            files.push((format!("{}.dcm", made.kind), made.bytes));
        }
        if let Some(views) = &a.views {
            files.push(("input.png".to_string(), overlay::grey_png(&views.model_input)?));
            files.push(("overlay.png".to_string(), overlay::outline_png(&views.display, a.mask.as_deref())?));
        }
    }
    let json = serde_json::json!({ "file": file, "result": a, "models": {
        "classifier": analyser.classifier().name, "classifier_version": analyser.classifier().version,
        "segmenter": analyser.segmenter().name, "segmenter_version": analyser.segmenter().version,
        "execution_provider": analyser.execution_provider() }, "notice": analyser.manifest.notice });
    Ok(Report { line, counted: Counted::Analysed, json, files })
}

/// The files given, with each directory replaced by the files under it (recursively, sorted).
fn expand_directories(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            inside.sort();
            out.extend(expand_directories(&inside)?);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// The name `infer --out` gives a file's outputs: its own file name.
fn output_stem(file: &Path) -> String {
    file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into())
}
