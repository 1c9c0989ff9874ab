//! The objects the node makes of an analysis and where they go: what to make (`[outputs]`,
//! `node.uid_root`, the destinations), and the SEG, SR and secondary capture of one result,
//! as bytes with the UIDs their rows need.

use std::path::PathBuf;

use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use tracing::warn;

use super::{sc, seg, sr};
use crate::config::{Config, OutputsConfig, SrPolicy};
use crate::inference::analyze::{Analysis, Analyzer};
use crate::inference::decision::Decision;

/// What the pipeline makes of a result besides its row (`[outputs]`, `node.uid_root`).
#[derive(Debug, Clone)]
pub struct OutputSettings {
    /// What to make, and the series it goes in.
    pub outputs: OutputsConfig,
    /// This node's name: the SR's device observer.
    pub node_name: String,
    pub uid_root: String,
    /// `<data_dir>/outputs`.
    pub dir: PathBuf,
    /// Each destination's name and the kinds of objects it takes.
    pub destinations: Vec<(String, Vec<String>)>,
}

impl OutputSettings {
    pub fn of(config: &Config) -> OutputSettings {
        OutputSettings {
            outputs: config.outputs.clone(),
            node_name: config.node_name(),
            uid_root: config.node.uid_root.clone(),
            dir: config.outputs_dir(),
            destinations: config.destinations.iter().map(|d| (d.name.clone(), d.objects.clone())).collect(),
        }
    }
}

/// A DICOM object made of a result, not yet written.
#[derive(Debug)]
pub struct MadeObject {
    pub kind: &'static str,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
    pub bytes: Vec<u8>,
}

/// The objects made of an analysis: the SEG of a positive with a mask (when `outputs.seg`),
/// the SR (as `outputs.sr` says) and the secondary capture of a positive with a mask (when
/// `outputs.overlay` and the analyzer kept its views). One that cannot be made is logged and left out; the
/// result is recorded all the same.
pub fn make_objects(
    analyzer: &Analyzer,
    obj: &FileDicomObject<InMemDicomObject>,
    analysis: &Analysis,
    settings: &OutputSettings,
    source_key: &str,
) -> Vec<MadeObject> {
    let mut made = Vec::new();
    let outputs = &settings.outputs;
    if let (true, Some(mask)) = (outputs.seg, analysis.mask.as_deref()) {
        let (date, time) = dicom_now();
        let request = seg::SegRequest {
            source: obj,
            source_key,
            mask,
            width: analysis.width,
            height: analysis.height,
            segmenter: analyzer.segmenter(),
            uid_root: &settings.uid_root,
            series_number: outputs.seg_series_number,
            series_description: &outputs.seg_series_description,
            notice: &analyzer.manifest.notice,
            date: &date,
            time: &time,
        };
        match seg::build(&request).map_err(|e| e.to_string()).and_then(|obj| made_object("seg", obj)) {
            Ok(object) => made.push(object),
            Err(e) => warn!(error = %e, "no SEG for this result"),
        }
    }
    let wanted = match outputs.sr {
        SrPolicy::All => true,
        SrPolicy::Positive => analysis.decision != Decision::Negative,
        SrPolicy::None => false,
    };
    if wanted {
        let (date, time) = dicom_now();
        let seg = made.iter().find(|o| o.kind == "seg");
        let request = sr::SrRequest {
            source: obj,
            source_key,
            decision: analysis.decision,
            probability: analysis.probability,
            priority: analysis.priority,
            classifier: analyzer.classifier(),
            segmenter: analyzer.segmenter(),
            seg: seg.map(|s| sr::SegReference {
                sop_instance_uid: &s.sop_instance_uid,
                series_instance_uid: &s.series_instance_uid,
            }),
            uid_root: &settings.uid_root,
            node_name: &settings.node_name,
            series_number: outputs.sr_series_number,
            series_description: &outputs.sr_series_description,
            date: &date,
            time: &time,
        };
        match sr::build(&request).map_err(|e| e.to_string()).and_then(|obj| made_object("sr", obj)) {
            Ok(object) => made.push(object),
            Err(e) => warn!(error = %e, "no SR for this result"),
        }
    }
    let display = analysis.views.as_ref().map(|v| &v.display);
    if let (true, Some(mask), Some(display)) = (outputs.overlay, analysis.mask.as_deref(), display) {
        let (date, time) = dicom_now();
        let request = sc::ScRequest {
            source: obj,
            source_key,
            display,
            mask,
            probability: analysis.probability,
            classifier: analyzer.classifier(),
            segmenter: analyzer.segmenter(),
            uid_root: &settings.uid_root,
            series_number: outputs.overlay_series_number,
            series_description: &outputs.overlay_series_description,
            date: &date,
            time: &time,
        };
        match sc::build(&request).map_err(|e| e.to_string()).and_then(|obj| made_object("overlay", obj)) {
            Ok(object) => made.push(object),
            Err(e) => warn!(error = %e, "no secondary capture for this result"),
        }
    }
    made
}

/// A built object as bytes, with the UIDs its rows and references need.
fn made_object(kind: &'static str, obj: FileDicomObject<InMemDicomObject>) -> Result<MadeObject, String> {
    let mut bytes = Vec::new();
    obj.write_all(&mut bytes).map_err(|e| e.to_string())?;
    let uid = |tag| obj.element(tag).ok().and_then(|e| e.to_str().ok()).map(|s| s.trim_end_matches('\0').to_string());
    Ok(MadeObject {
        kind,
        sop_class_uid: uid(tags::SOP_CLASS_UID).unwrap_or_default(),
        sop_instance_uid: uid(tags::SOP_INSTANCE_UID).unwrap_or_default(),
        series_instance_uid: uid(tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        study_instance_uid: uid(tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        bytes,
    })
}

/// Now as DICOM DA and TM, in UTC.
pub fn dicom_now() -> (String, String) {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    (digits[..8].to_string(), digits[8..14].to_string())
}
