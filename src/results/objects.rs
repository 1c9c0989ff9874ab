//! The objects the node makes of an analysis and where they go: what to make (`[outputs]`,
//! `node.uid_root`, the destinations), and the SEG, SR and secondary capture of one result,
//! as bytes with the UIDs their rows need.

use std::path::PathBuf;
use std::sync::Arc;

use dicom_object::InMemDicomObject;
use tracing::warn;

use super::common::{Built, ObjectUids, ResultsError};
use super::context::{Context, Models, Series};
use super::{sc, seg, sr};
use crate::bucket::Bucket;
use crate::config::{Config, OutputsConfig, SrPolicy};
use crate::domain::{Decision, MessageRule, ObjectKind};
use crate::inference::analyse::{Analyser, Analysis};

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
    /// The object store that keeps the durable copy of the outputs, if any (`[object_store]`).
    pub bucket: Option<Arc<Bucket>>,
    /// Each DICOM destination's name, the kinds of objects it takes, and whether it takes the
    /// "not analysed" reports.
    pub destinations: Vec<ObjectRoute>,
    /// When each messaging destination (HL7, FHIR, webhook) is sent a message.
    pub messages: Vec<MessageRule>,
}

impl OutputSettings {
    /// The settings of `config`, without the bucket (which [`Bucket::open`] opens once).
    pub fn of(config: &Config) -> OutputSettings {
        OutputSettings {
            outputs: config.outputs.clone(),
            node_name: config.node_name(),
            uid_root: config.node.uid_root.clone(),
            dir: config.outputs_dir(),
            bucket: None,
            destinations: config
                .destinations
                .iter()
                .filter(|d| !d.takes_messages())
                .map(|d| ObjectRoute { name: d.name.clone(), kinds: d.objects.clone(), not_analysed: d.not_analysed })
                .collect(),
            messages: config
                .destinations
                .iter()
                .filter(|d| d.takes_messages())
                .map(|d| MessageRule {
                    destination: d.name.clone(),
                    kind: d.kind,
                    priorities: d.priorities.clone(),
                    settle: std::time::Duration::from_secs(d.settle_secs),
                    not_analysed: d.not_analysed,
                })
                .collect(),
        }
    }
}

/// Where a DICOM destination takes objects.
#[derive(Debug, Clone)]
pub struct ObjectRoute {
    pub name: String,
    pub kinds: Vec<ObjectKind>,
    /// It takes the "not analysed" reports (SRs) too.
    pub not_analysed: bool,
}

impl ObjectRoute {
    /// Whether an object of `kind` goes there (`not_analysed`: a "not analysed" report).
    pub fn takes(&self, kind: ObjectKind, not_analysed: bool) -> bool {
        self.kinds.contains(&kind) && (!not_analysed || self.not_analysed)
    }
}

/// A DICOM object made of a result, encoded, not yet written.
#[derive(Debug)]
pub struct MadeObject {
    pub kind: ObjectKind,
    /// The UIDs its builder assigned.
    pub uids: ObjectUids,
    /// The Part-10 file.
    pub bytes: Vec<u8>,
}

impl MadeObject {
    fn encode(kind: ObjectKind, built: Built) -> Result<MadeObject, ResultsError> {
        Ok(MadeObject { kind, bytes: built.to_bytes()?, uids: built.uids })
    }
}

/// The objects made of an analysis: the SEG of a positive with a mask (when `outputs.seg`),
/// the SR (as `outputs.sr` says) and the secondary capture of a positive with a mask (when
/// `outputs.overlay` and the analyser kept its views). One that cannot be made is logged and
/// left out; the result is recorded all the same.
pub fn make_objects(
    analyser: &Analyser,
    source: &InMemDicomObject,
    analysis: &Analysis,
    settings: &OutputSettings,
    source_key: &str,
) -> Vec<MadeObject> {
    let Some(ctx) = context(analyser, source, settings, source_key, "no objects for this result") else {
        return Vec::new();
    };
    let outputs = &settings.outputs;
    let mut made = Vec::new();
    if let (true, Some(mask)) = (outputs.seg, analysis.mask.as_deref()) {
        let series = Series { number: outputs.seg_series_number, description: &outputs.seg_series_description };
        made.extend(encoded(ObjectKind::Seg, seg::build(&ctx, series, mask, analysis.width, analysis.height)));
    }
    let wanted = match outputs.sr {
        SrPolicy::All => true,
        SrPolicy::Positive => analysis.decision != Decision::Negative,
        SrPolicy::None => false,
    };
    if wanted {
        let series = Series { number: outputs.sr_series_number, description: &outputs.sr_series_description };
        let finding =
            sr::Finding { decision: analysis.decision, probability: analysis.probability, priority: analysis.priority };
        // the report points at the SEG by the UIDs its builder gave it
        let seg = made.iter().find(|o| o.kind == ObjectKind::Seg).map(|o| o.uids.clone());
        made.extend(encoded(ObjectKind::Sr, sr::build(&ctx, series, finding, seg.as_ref())));
    }
    let display = analysis.views.as_ref().map(|v| &v.display);
    if let (true, Some(mask), Some(display)) = (outputs.overlay, analysis.mask.as_deref(), display) {
        let series = Series { number: outputs.overlay_series_number, description: &outputs.overlay_series_description };
        made.extend(encoded(ObjectKind::Overlay, sc::build(&ctx, series, display, mask, analysis.probability)));
    }
    made
}

/// The "not analysed" report of an image the selection rules chose and the node could not
/// analyse: an SR saying why, unless `outputs.sr = "none"` (the reports are SRs, so a site that
/// makes none makes none of these either). Empty, logged, when the source lacks what identifies it.
pub fn make_not_analysed(
    analyser: &Analyser,
    source: &InMemDicomObject,
    reason: &str,
    settings: &OutputSettings,
    source_key: &str,
) -> Vec<MadeObject> {
    if settings.outputs.sr == SrPolicy::None {
        return Vec::new();
    }
    let Some(ctx) = context(analyser, source, settings, source_key, "no \"not analysed\" report for this image") else {
        return Vec::new();
    };
    let outputs = &settings.outputs;
    let series = Series { number: outputs.sr_series_number, description: &outputs.sr_series_description };
    encoded(ObjectKind::Sr, sr::build_not_analysed(&ctx, series, reason)).into_iter().collect()
}

/// What every object made of `source` shares; `None`, logged with `what_is_lost`, when the
/// source lacks what identifies it.
fn context<'a>(
    analyser: &'a Analyser,
    source: &'a InMemDicomObject,
    settings: &'a OutputSettings,
    source_key: &'a str,
    what_is_lost: &str,
) -> Option<Context<'a>> {
    let models = Models {
        classifier: analyser.classifier(),
        segmenter: analyser.segmenter(),
        notice: &analyser.manifest.notice,
    };
    Context::new(source, source_key, models, &settings.uid_root, &settings.node_name)
        .map_err(|e| warn!(error = %e, "{what_is_lost}"))
        .ok()
}

/// A built object as bytes; `None`, logged, when it could not be built or encoded.
fn encoded(kind: ObjectKind, built: Result<Built, ResultsError>) -> Option<MadeObject> {
    match built.and_then(|built| MadeObject::encode(kind, built)) {
        Ok(object) => Some(object),
        Err(e) => {
            warn!(object = %kind, error = %e, "an object of this result cannot be made; it is left out");
            None
        }
    }
}
