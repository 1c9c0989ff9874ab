//! `explain`: for each file, what the node would do with it and why, in words an admin can act
//! on: the tags the selection rules read, the rule that selected or excluded it, whether the
//! models can take it, each input check, and what the node would then send. No models run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use pneumotriage::config::{Config, InputChecks};
use pneumotriage::imaging;
use pneumotriage::inference::analyse::not_analysable;
use pneumotriage::inference::checks::InputStatistics;
use pneumotriage::inference::selection::{Selector, Tags};

/// What a selected image the node cannot analyse gets.
const NOT_ANALYSED: &str =
    "not analysed: the study's consumers are told so with this reason (a \"not analysed\" report)";

pub fn explain(config: &Config, calling_ae: &str, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let selector = Selector::new(&config.selection).map_err(anyhow::Error::msg).context("selection rules")?;
    let mut unreadable = 0;
    for file in files {
        println!("{}", file.display());
        let lines = match explain_one(config, &selector, calling_ae, file) {
            Ok(lines) => lines,
            Err(e) => {
                unreadable += 1;
                vec![format!("cannot be read: {e}"), "=> failed: the node answers a C-STORE of it 0xC000".into()]
            }
        };
        for line in lines {
            println!("  {line}");
        }
    }
    Ok(if unreadable == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The lines that explain one file.
fn explain_one(config: &Config, selector: &Selector, calling_ae: &str, file: &Path) -> Result<Vec<String>, String> {
    let obj = imaging::open_checked(file, config.dicom.max_dataset_bytes()).map_err(|e| e.to_string())?;
    let tags = Tags::of(&obj, calling_ae);
    let selection = selector.decide(&tags);
    let mut lines = vec![format!("tags: {}", tags.describe()), format!("selection: {}", selection.reason)];
    if !selection.selected {
        lines.push("=> not analysed: not a frontal chest film by its tags; recorded as skipped, nothing sent".into());
        return Ok(lines);
    }
    if let Some(why) = not_analysable(&obj) {
        lines.push(format!("the models cannot take it: {why}"));
        lines.push(format!("=> {NOT_ANALYSED}"));
        return Ok(lines);
    }
    let checks = InputChecks {
        image_statistics: config.inference.checks.image_statistics || selection.content_decides,
        ..config.inference.checks
    };
    if let Some(skip) = checks.tags(&obj) {
        lines.push(format!("skipped by an input check ({}): {}", skip.cause, skip.reason));
        lines.push(format!("=> {NOT_ANALYSED}"));
        return Ok(lines);
    }
    if let Err(e) = imaging::check_pixels(&obj, config.inference.max_pixels) {
        lines.push(format!("its pixel data cannot be decoded: {e}"));
        lines.push(format!("=> {NOT_ANALYSED}"));
        return Ok(lines);
    }
    let image = match imaging::display_image(&obj) {
        Ok(image) => image,
        Err(e) => {
            lines.push(format!("its pixel data cannot be decoded: {e}"));
            lines.push(format!("=> {NOT_ANALYSED}"));
            return Ok(lines);
        }
    };
    if let Some(skip) = checks.pixels((image.width, image.height), InputStatistics::of(&image)) {
        let why = if selection.content_decides { " (the tags said too little: the content checks decide)" } else { "" };
        lines.push(format!("skipped by an input check ({}): {}{why}", skip.cause, skip.reason));
        lines.push(format!("=> {NOT_ANALYSED}"));
        return Ok(lines);
    }
    lines.push("input checks: passed".into());
    lines.push("=> analysed by the models; its result and priority go to the destinations".into());
    Ok(lines)
}
