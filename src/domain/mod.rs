//! The node's vocabulary: the values that the config, the database, the API and the logs share.
//!
//! Each is an enum with one spelling, the one the database has always stored (TEXT on both
//! backends), the API returns and the config accepts; `as_str`, `Display`, `FromStr`, serde and
//! sqlx all go through it, so no other Rust code spells these values. The SQL does, in its
//! queries and CHECK constraints: a test (`store::tests`) holds every value it spells to these.
//! What a message to the RIS or EHR says is here too (`message`): the store reads it, the
//! encoders write it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::{Any, Database};

mod message;

pub use message::{FindingFacts, MessageRule, ModelFacts, ObjectFacts, PatientFacts, StudyFacts, StudyMessage, Triage};

/// A value that is not one of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not one of {}", expected.join(", "))]
pub struct UnknownValue {
    pub value: String,
    pub expected: &'static [&'static str],
}

/// A value read from its spelling, the error naming the choices.
fn from_spelling<'de, D: serde::Deserializer<'de>, T: FromStr<Err = UnknownValue>>(
    deserializer: D,
) -> Result<T, D::Error> {
    let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// Declares a fieldless enum whose variants are spelt as the given strings everywhere.
macro_rules! spelt_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { value: s.to_string(), expected: &[$($text,)+] }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                from_spelling(deserializer)
            }
        }

        impl sqlx::Type<Any> for $name {
            fn type_info() -> <Any as Database>::TypeInfo {
                <str as sqlx::Type<Any>>::type_info()
            }
        }

        impl sqlx::Encode<'_, Any> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <Any as Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<Any>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, Any> for $name {
            fn decode(value: <Any as Database>::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<&str as sqlx::Decode<Any>>::decode(value)?.parse()?)
            }
        }
    };
}

spelt_enum! {
    /// Where an analysed image (and its study, the highest of its images) goes on the worklist.
    /// Ordered: `Routine < Review < Urgent`.
    #[derive(PartialOrd, Ord)]
    pub enum Priority {
        Routine = "routine",
        Review = "review",
        Urgent = "urgent",
    }
}

spelt_enum! {
    /// How the models' outputs decide (docs/architecture.md §1): the classifier decides and the segmenter
    /// draws, or the segmenter's "triplet" rule decides.
    pub enum Policy {
        Cascade = "cascade",
        Segmentation = "segmentation",
    }
}

spelt_enum! {
    /// What the decision policy made of the models' outputs.
    pub enum Decision {
        Positive = "positive",
        Negative = "negative",
        /// The classifier said positive but the segmenter found no region large enough.
        PositiveWithoutMask = "positive_without_mask",
    }
}

impl Decision {
    /// An AI finding of pneumothorax, with or without a mask.
    pub fn is_positive(self) -> bool {
        self != Decision::Negative
    }
}

spelt_enum! {
    /// An object the node makes for an analysed image, and what a destination may take.
    pub enum ObjectKind {
        /// DICOM Segmentation of the pneumothorax (positives with a mask).
        Seg = "seg",
        /// TID 1500 structured report with the finding and the priority (every analysed image).
        Sr = "sr",
        /// Secondary Capture of the image with the outline and a banner (when `outputs.overlay`).
        Overlay = "overlay",
    }
}

spelt_enum! {
    /// What a destination receives.
    pub enum DestinationKind {
        /// The DICOM objects (SEG, SR, secondary capture) by C-STORE.
        Dicom = "dicom",
        /// The same objects by STOW-RS to a DICOMweb server.
        Dicomweb = "dicomweb",
        /// An HL7 v2.5.1 ORU^R01 per study and priority, over MLLP.
        Hl7 = "hl7",
        /// A FHIR R4 transaction Bundle per study and priority, over HTTPS.
        Fhir = "fhir",
        /// A signed JSON POST per study and priority.
        Webhook = "webhook",
    }
}

spelt_enum! {
    /// How a source is asked for studies.
    pub enum SourceKind {
        /// C-FIND, then C-MOVE to this node's listener.
        Dicom = "dicom",
        /// QIDO-RS, then WADO-RS.
        Dicomweb = "dicomweb",
    }
}

spelt_enum! {
    /// Where an instance's analysis job stands.
    pub enum JobState {
        Queued = "queued",
        Running = "running",
        Done = "done",
        Skipped = "skipped",
        Failed = "failed",
    }
}

spelt_enum! {
    /// Which rule turned an image away before the models (`pneumotriage_skipped_total`).
    pub enum SkipCause {
        /// Excluded by the selection rules (`[[selection.rules]]`): not a frontal chest film by
        /// its tags.
        Selection = "selection",
        /// Selected, but not an image the models can take: several frames, not grayscale, too
        /// small.
        Applicability = "applicability",
        /// `inference.checks.species`.
        Species = "species",
        /// `inference.checks.view_consistency`.
        ViewConsistency = "view_consistency",
        /// `inference.checks.min_age_years`.
        MinAge = "min_age",
        /// `inference.checks.image_statistics`.
        ImageStatistics = "image_statistics",
    }
}

spelt_enum! {
    /// What a shadow version ([[inference.shadow]]) made of an image production analysed.
    pub enum ShadowOutcome {
        Analysed = "analysed",
        /// Its own applicability or input checks turned the image away.
        Skipped = "skipped",
        Failed = "failed",
    }
}

spelt_enum! {
    /// A radiologist's verdict on an AI finding.
    pub enum Agreement {
        Agree = "agree",
        Disagree = "disagree",
    }
}

spelt_enum! {
    /// Where one object's delivery to one destination stands.
    pub enum DeliveryState {
        Pending = "pending",
        Sending = "sending",
        Delivered = "delivered",
        Failed = "failed",
    }
}

spelt_enum! {
    /// What an audit event records (the `events` table).
    pub enum EventKind {
        AssociationAccepted = "association_accepted",
        AssociationRejected = "association_rejected",
        TlsRefused = "tls_refused",
        StoreFailed = "store_failed",
        InstanceStored = "instance_stored",
        InstanceRecovered = "instance_recovered",
        InstanceDuplicate = "instance_duplicate",
        AnalysisFailed = "analysis_failed",
        JobQuarantined = "job_quarantined",
        JobRequeued = "job_requeued",
        JobsRequeued = "jobs_requeued",
        InstancesHandedOver = "instances_handed_over",
        JobsAbandoned = "jobs_abandoned",
        Delivered = "delivered",
        DeliveryDeferred = "delivery_deferred",
        DeliveryFailed = "delivery_failed",
        DeliveriesRequeued = "deliveries_requeued",
        FilesReleased = "files_released",
        DiskPressure = "disk_pressure",
        PatientDataRemoved = "patient_data_removed",
        LeftoversSwept = "leftovers_swept",
    }
}

/// Text from outside the node (a peer's data set, an HTTP request) as the node keeps it.
///
/// PostgreSQL's text cannot hold U+0000 and SQLite's can, so the same value was stored on one
/// backend and refused on the other (and a refusal looked like a database outage). The one rule
/// on both: every NUL character becomes U+FFFD, which shows that something unreadable was there.
/// Padding is the caller's to trim (DICOM pads with NUL and spaces) before this is applied.
pub fn storable_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// The header attributes the node keeps for an instance (read without touching pixel data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceHeader {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: Option<String>,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub issuer_of_patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub accession_number: Option<String>,
    pub study_date: Option<String>,
    pub study_description: Option<String>,
    pub modality: Option<String>,
    pub body_part: Option<String>,
    pub view_position: Option<String>,
}

spelt_enum! {
    /// Where a study stands on the worklist.
    pub enum StudyState {
        /// Images not analysed yet.
        Waiting = "waiting",
        /// Not analysed: an image stopped the node each time it was analysed.
        Quarantined = "quarantined",
        /// An analysis failed.
        Failed = "failed",
        Analysed = "analysed",
        /// Nothing applicable (e.g. a lateral view only).
        NotAnalysed = "not_analysed",
    }
}

spelt_enum! {
    /// How far the delivery of a study's objects has got.
    pub enum DeliveryProgress {
        /// Nothing to deliver.
        None = "none",
        Pending = "pending",
        /// Any delivery failed.
        Failed = "failed",
        /// All delivered.
        Delivered = "delivered",
    }
}

/// Where the models run: `inference.device`, spelt `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU by index (`cuda` is `cuda:0`).
    Cuda(u16),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(id) => write!(f, "cuda:{id}"),
        }
    }
}

impl FromStr for Device {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| UnknownValue { value: s.to_string(), expected: &["cpu", "cuda", "cuda:N"] }),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_spelling(deserializer)
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The UTC date of a time (ms since the epoch) as a DICOM DA, `YYYYMMDD`.
pub fn dicom_date(ms: i64) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(86_400_000));
    format!("{year:04}{month:02}{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_from_its_spelling() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>(), Ok(*p));
        }
        for k in EventKind::ALL {
            assert_eq!(k.to_string().parse::<EventKind>(), Ok(*k));
        }
        for s in JobState::ALL {
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(Decision::PositiveWithoutMask.as_str(), "positive_without_mask");
    }

    #[test]
    fn an_unknown_spelling_names_the_choices() {
        let err = "URGENT".parse::<Priority>().unwrap_err();
        assert_eq!(err.to_string(), "`URGENT` is not one of routine, review, urgent");
        let err = serde_json::from_str::<ObjectKind>("\"pdf\"").unwrap_err();
        assert!(err.to_string().contains("`pdf` is not one of seg, sr, overlay"), "{err}");
    }

    #[test]
    fn priorities_are_ordered() {
        assert!(Priority::Routine < Priority::Review && Priority::Review < Priority::Urgent);
    }

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:1".parse(), Ok(Device::Cuda(1)));
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }
}
