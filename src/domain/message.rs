//! Messages to the RIS and EHR in the domain's terms: when a destination is sent one
//! ([`MessageRule`]), and what it says about one study at one priority: the facts every message
//! format (HL7 v2, FHIR, webhook) is made from. The store reads them, the encoders write them;
//! neither owns them.

use std::time::Duration;

use super::{DestinationKind, ObjectKind, Priority};

/// When a messaging destination is sent a message (from its `[[destinations]]` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRule {
    pub destination: String,
    pub kind: DestinationKind,
    /// The study priorities that send a message.
    pub priorities: Vec<Priority>,
    /// How long a message below urgent waits after the study's last analysed image.
    pub settle: Duration,
    /// Whether a study none of whose selected images could be analysed is reported to it.
    pub not_analysed: bool,
}

/// What a message says of the study: its priority, or that the node could not analyse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage {
    /// The highest priority of the study's analysed images.
    Priority(Priority),
    /// Images of the study were selected for analysis and none could be analysed: why. Never
    /// a negative: the study has no priority from the node.
    NotAnalysed(String),
}

/// Everything a notification says about one study at one priority.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyMessage {
    /// Stable for (destination, study, priority): a receiver recognises a resend by it. At most
    /// 20 characters (HL7 MSH-10 is ST of 20), letters and digits only.
    pub control_id: String,
    /// When this message row was made (the study's priority was set or raised), ms since epoch.
    pub created_at_ms: i64,
    pub triage: Triage,
    pub study: StudyFacts,
    pub patient: PatientFacts,
    pub finding: FindingFacts,
    /// The classifier, then the segmenter.
    pub models: Vec<ModelFacts>,
    /// What the models are for and are not (the manifest's notice: "not for diagnosis ...").
    pub notice: String,
    /// The objects the node made for this study (SR and SEG), for the receiver to fetch from
    /// the PACS.
    pub objects: Vec<ObjectFacts>,
    /// The study on the node's worklist page, when `http.public_url` is set.
    pub link: Option<String>,
}

/// The study, from its DICOM attributes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StudyFacts {
    pub study_instance_uid: String,
    /// The order's number at the RIS: the placer/filler order number in HL7, basedOn in FHIR.
    pub accession_number: Option<String>,
    /// Study Description: the procedure.
    pub description: Option<String>,
    /// Study Date (DA, YYYYMMDD) as received.
    pub date: Option<String>,
    /// When the study's last analysed image was analysed, ms since epoch (observation time).
    pub observed_at_ms: i64,
}

/// The patient module of the study's images, as received (DICOM spelling).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatientFacts {
    pub id: Option<String>,
    /// Issuer of Patient ID (0010,0021).
    pub issuer: Option<String>,
    /// PN, `Family^Given^Middle^Prefix^Suffix`.
    pub name: Option<String>,
    /// DA, YYYYMMDD.
    pub birth_date: Option<String>,
    /// CS: M, F or O.
    pub sex: Option<String>,
}

/// The finding over the study's analysed images.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingFacts {
    /// Pneumothorax found (SCT 36118008 present) on any analysed image.
    pub present: bool,
    /// The highest probability over the study's analysed images, 0..1.
    pub probability: f64,
    /// The largest area found, in mm², when the pixel spacing was known.
    pub area_mm2: Option<f64>,
}

/// A model that made the finding.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    pub name: String,
    pub version: String,
}

/// A DICOM object made for the study.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectFacts {
    /// "sr" or "seg" (`ObjectKind`'s spelling).
    pub kind: ObjectKind,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

impl StudyMessage {
    /// The study's priority, when the message carries one.
    pub fn priority(&self) -> Option<Priority> {
        match self.triage {
            Triage::Priority(p) => Some(p),
            Triage::NotAnalysed(_) => None,
        }
    }

    /// Why the study was not analysed, when the message says so.
    pub fn not_analysed(&self) -> Option<&str> {
        match &self.triage {
            Triage::Priority(_) => None,
            Triage::NotAnalysed(reason) => Some(reason),
        }
    }

    /// A message for tests: an urgent positive study with every field set.
    #[doc(hidden)]
    pub fn example() -> StudyMessage {
        StudyMessage {
            control_id: "PT1A2B3C4D5E6F7A8B9C".into(),
            created_at_ms: 1_764_000_000_000,
            triage: Triage::Priority(Priority::Urgent),
            study: StudyFacts {
                study_instance_uid: "1.2.826.0.1.3680043.10.1447.9.1".into(),
                accession_number: Some("ACC0001".into()),
                description: Some("XR CHEST PA".into()),
                date: Some("20261128".into()),
                observed_at_ms: 1_764_000_000_000,
            },
            patient: PatientFacts {
                id: Some("PAT001".into()),
                issuer: Some("HOSP".into()),
                name: Some("Müller^Jörg".into()),
                birth_date: Some("19700101".into()),
                sex: Some("M".into()),
            },
            finding: FindingFacts { present: true, probability: 0.93, area_mm2: Some(1234.5) },
            models: vec![
                ModelFacts { name: "pneumothorax-classifier".into(), version: "1.0.0".into() },
                ModelFacts { name: "pneumothorax-segmenter".into(), version: "1.0.0".into() },
            ],
            notice: "Demonstration models: not for diagnosis.".into(),
            objects: vec![
                ObjectFacts {
                    kind: ObjectKind::Sr,
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.88.22".into(),
                    sop_instance_uid: "1.2.826.0.1.3680043.10.1447.9.2".into(),
                },
                ObjectFacts {
                    kind: ObjectKind::Seg,
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.66.4".into(),
                    sop_instance_uid: "1.2.826.0.1.3680043.10.1447.9.3".into(),
                },
            ],
            link: Some("https://triage.example.org/#study=1.2.826.0.1.3680043.10.1447.9.1".into()),
        }
    }
}
