//! `infer`: analyses files offline (no network, no database), a line each, and with `--out` the
//! objects and pictures the node would make of each.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use pneumotriage::config::Config;
use pneumotriage::imaging;
use pneumotriage::inference::analyze::{not_applicable, Analyzer};
use pneumotriage::results::{make_objects, overlay, OutputSettings};

/// `pneumotriage infer`: every file through the cascade, a line each.
pub fn infer(config: &Config, out: Option<&Path>, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut analyzer = Analyzer::open(config).with_context(|| format!("inference in {}", config.source))?;
    analyzer.keep_views = out.is_some();
    let mut outputs = OutputSettings::of(config);
    // for inspection, the secondary capture too, whether or not the node sends it
    outputs.outputs.overlay = true;
    println!(
        "models: {} {} and {} {} on {} ({})",
        analyzer.classifier().name,
        analyzer.classifier().version,
        analyzer.segmenter().name,
        analyzer.segmenter().version,
        analyzer.execution_provider(),
        analyzer.manifest.notice
    );
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut failed = 0;
    for file in &expand_directories(files)? {
        let name = file.display();
        // checked as the pipeline checks what it receives: a file can be as hostile as a peer
        let obj = match imaging::open_checked(file, config.dicom.max_dataset_bytes()) {
            Ok(obj) => obj,
            Err(e) => {
                println!("{name}: failed: {e}");
                failed += 1;
                continue;
            }
        };
        let reason = not_applicable(&obj);
        if let (None, Err(e)) = (&reason, imaging::check_pixels(&obj, config.inference.max_pixels)) {
            println!("{name}: failed: {e}");
            failed += 1;
            continue;
        }
        let result = match reason {
            Some(reason) => {
                println!("{name}: skipped: {reason}");
                serde_json::json!({ "file": file, "skipped": reason })
            }
            None => match analyzer.analyze(&obj) {
                Ok(a) => {
                    let area = a
                        .mask_area_mm2
                        .filter(|_| a.mask_area_px > 0)
                        .map(|mm2| format!(" ({mm2:.0} mm²)"))
                        .unwrap_or_default();
                    let t = &a.timings;
                    println!(
                        "{name}: {:?} p={:.3}, priority {}, mask {} px{area}; decode {:.0} ms, preprocess {:.0} ms, inference {:.0} ms, post {:.0} ms",
                        a.decision, a.probability, a.priority.as_str(), a.mask_area_px, t.decode_ms, t.preprocess_ms, t.inference_ms, t.postprocess_ms
                    );
                    if let Some(dir) = out {
                        // the SEG, SR and secondary capture the node would send
                        for made in make_objects(&analyzer, &obj, &a, &outputs, "") {
                            let name = format!("{}.{}.dcm", output_stem(file), made.kind);
                            std::fs::write(dir.join(name), &made.bytes)?;
                        }
                    }
                    if let (Some(dir), Some(views)) = (out, &a.views) {
                        let stem = output_stem(file);
                        let input = overlay::grey_png(&views.model_input)?;
                        std::fs::write(dir.join(format!("{stem}.input.png")), input)?;
                        let outlined = overlay::outline_png(&views.display, a.mask.as_deref())?;
                        std::fs::write(dir.join(format!("{stem}.overlay.png")), outlined)?;
                    }
                    serde_json::json!({ "file": file, "result": a, "models": {
                        "classifier": analyzer.classifier().name, "classifier_version": analyzer.classifier().version,
                        "segmenter": analyzer.segmenter().name, "segmenter_version": analyzer.segmenter().version,
                        "execution_provider": analyzer.execution_provider() }, "notice": analyzer.manifest.notice })
                }
                Err(e) => {
                    println!("{name}: failed: {e}");
                    failed += 1;
                    serde_json::json!({ "file": file, "failed": e.to_string() })
                }
            },
        };
        if let Some(dir) = out {
            std::fs::write(dir.join(format!("{}.json", output_stem(file))), serde_json::to_string_pretty(&result)?)?;
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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
