//! What every object made of one analysed image shares: the source attributes it copies and
//! refers to, the models behind the result, the UIDs derived from both, when it is made, and
//! the header of a new series in the source's study. Built once per image; each builder adds
//! only what is its own.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::common::{instance_reference, seq, text, ObjectUids, ResultsError};
use super::uid;
use crate::codes;
use crate::domain::ObjectKind;
use crate::inference::ModelSpec;

/// The models behind a result, as the objects name them.
#[derive(Debug, Clone, Copy)]
pub struct Models<'a> {
    pub classifier: &'a ModelSpec,
    pub segmenter: &'a ModelSpec,
    /// What the models are for (the manifest's notice).
    pub notice: &'a str,
}

/// The series a new object goes in (`outputs.*_series_number`, `outputs.*_series_description`).
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub number: i32,
    pub description: &'a str,
}

/// The analysed image, as the objects made of it copy and refer to it.
#[derive(Debug)]
pub struct Source<'a> {
    /// Its data set (the header is enough).
    pub dataset: &'a InMemDicomObject,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    /// Optional on receipt; the SEG and the SR, which refer to the source's series, need it.
    series_instance_uid: Option<String>,
}

impl Source<'_> {
    pub fn series_instance_uid(&self) -> Result<&str, ResultsError> {
        self.series_instance_uid.as_deref().ok_or(ResultsError::MissingSource("Series Instance UID"))
    }

    /// The source as a Source Image Sequence item: its reference, for image processing.
    pub fn source_image_item(&self) -> InMemDicomObject {
        let mut item = self.reference();
        item.put(seq(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, vec![codes::SOURCE_IMAGE_FOR_PROCESSING.item()]));
        item
    }

    /// The source as a Referenced SOP item.
    pub fn reference(&self) -> InMemDicomObject {
        instance_reference(&self.sop_class_uid, &self.sop_instance_uid)
    }
}

/// What the objects made of one analysed image share.
#[derive(Debug)]
pub struct Context<'a> {
    pub source: Source<'a>,
    /// What tells this version of the source from another under the same SOP Instance UID
    /// (the spool path); part of the derived UIDs.
    pub source_key: &'a str,
    pub models: Models<'a>,
    /// `node.uid_root`.
    pub uid_root: &'a str,
    /// This node's name: the SR's device observer.
    pub node_name: &'a str,
    /// When the objects are made, as DICOM DA and TM: one time for all of an image's objects.
    pub date: String,
    pub time: String,
    /// The source's Timezone Offset From UTC, which `date` and `time` are given in and the
    /// objects carry; without one both are this host's local time, as the source's own times
    /// presumably are (PS3.3 C.12.1.1.8: one offset holds for every date and time of an object).
    pub utc_offset: Option<String>,
}

impl<'a> Context<'a> {
    /// The context of the objects made of `source` now. The source must name its SOP class,
    /// instance and study: every object copies or refers to them.
    pub fn new(
        source: &'a InMemDicomObject,
        source_key: &'a str,
        models: Models<'a>,
        uid_root: &'a str,
        node_name: &'a str,
    ) -> Result<Context<'a>, ResultsError> {
        let required = |tag, what| source_text(source, tag).ok_or(ResultsError::MissingSource(what));
        let source = Source {
            dataset: source,
            sop_class_uid: required(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            study_instance_uid: required(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_instance_uid: source_text(source, tags::SERIES_INSTANCE_UID),
        };
        let offset = source_text(source.dataset, tags::TIMEZONE_OFFSET_FROM_UTC)
            .and_then(|text| offset_of(&text).map(|offset| (text, offset)));
        let (date, time) = dicom_now(offset.as_ref().map(|(_, offset)| *offset));
        let utc_offset = offset.map(|(text, _)| text);
        Ok(Context { source, source_key, models, uid_root, node_name, date, time, utc_offset })
    }

    /// The UID for `role` ("instance", "series", ...) in the object of `kind`: a hash of the
    /// source version, the models that made the object and the role, so that the same analysis
    /// always yields the same UIDs and a retried delivery re-sends rather than duplicates.
    pub fn derive_uid(&self, kind: ObjectKind, role: &str) -> String {
        let (c, s) = (self.models.classifier, self.models.segmenter);
        let source = [self.source.sop_instance_uid.as_str(), self.source_key];
        // The SEG is the segmenter's alone; the SR and the secondary capture show both models'
        // work. The parts and the role names are those UIDs have always been derived from.
        let (models, prefix): (&[&str], _) = match kind {
            ObjectKind::Seg => (&[&s.name, &s.version, &s.sha256], "seg"),
            ObjectKind::Sr => (&[&c.sha256, &s.sha256], "sr"),
            ObjectKind::Overlay => (&[&c.sha256, &s.sha256], "sc"),
        };
        let role = format!("{prefix} {role}");
        uid::derive(self.uid_root, &[&source[..], models, &[role.as_str()]].concat())
    }

    /// The SR's Device Observer UID: this node's, whatever it reports on.
    pub fn device_observer_uid(&self) -> String {
        uid::derive(self.uid_root, &["device observer", self.node_name])
    }

    /// A new object of `kind`, alone in a new series of the source's study, and the UIDs it is
    /// given. It holds what every object the node makes carries the same way: the source's
    /// patient and study, SOP Common, General Series, General Equipment and the content date.
    pub fn new_object(
        &self,
        kind: ObjectKind,
        sop_class_uid: &'static str,
        modality: &str,
        series: Series,
    ) -> (InMemDicomObject, ObjectUids) {
        let uids = ObjectUids {
            sop_class_uid,
            sop_instance_uid: self.derive_uid(kind, "instance"),
            series_instance_uid: self.derive_uid(kind, "series"),
            study_instance_uid: self.source.study_instance_uid.clone(),
        };
        let mut obj = InMemDicomObject::new_empty();
        copy_patient_and_study(self.source.dataset, &mut obj);
        if let Some(offset) = &self.utc_offset {
            obj.put(text(tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, offset));
        }
        for element in [
            // Text is written in UTF-8, whatever the source declared: the copied values are read
            // as text already, and what the node adds (the series description, the models'
            // names) may hold what the source's character set cannot (or no set was declared).
            text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
            text(tags::SOP_CLASS_UID, VR::UI, uids.sop_class_uid),
            text(tags::SOP_INSTANCE_UID, VR::UI, &uids.sop_instance_uid),
            text(tags::INSTANCE_CREATION_DATE, VR::DA, &self.date),
            text(tags::INSTANCE_CREATION_TIME, VR::TM, &self.time),
            text(tags::MODALITY, VR::CS, modality),
            text(tags::SERIES_INSTANCE_UID, VR::UI, &uids.series_instance_uid),
            DataElement::new(tags::SERIES_NUMBER, VR::IS, PrimitiveValue::from(series.number.to_string())),
            text(tags::SERIES_DESCRIPTION, VR::LO, series.description),
            DataElement::new(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from("1")),
            text(tags::CONTENT_DATE, VR::DA, &self.date),
            text(tags::CONTENT_TIME, VR::TM, &self.time),
            text(tags::MANUFACTURER, VR::LO, "pneumotriage"),
            text(tags::MANUFACTURER_MODEL_NAME, VR::LO, "pneumotriage"),
            text(tags::DEVICE_SERIAL_NUMBER, VR::LO, "1"),
            text(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        ] {
            obj.put(element);
        }
        (obj, uids)
    }
}

/// The attributes copied from the source: patient and study. Type 2 attributes the source
/// lacks are written empty; the others only where the source has them (the issuer of the
/// patient ID among them: a PACS that files by issuer files the objects with their source).
fn copy_patient_and_study(source: &InMemDicomObject, target: &mut InMemDicomObject) {
    for (tag, empty_if_absent) in [
        (tags::PATIENT_NAME, Some(VR::PN)),
        (tags::PATIENT_ID, Some(VR::LO)),
        (tags::ISSUER_OF_PATIENT_ID, None),
        (tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE, None),
        (tags::OTHER_PATIENT_I_DS_SEQUENCE, None),
        (tags::PATIENT_BIRTH_DATE, Some(VR::DA)),
        (tags::PATIENT_SEX, Some(VR::CS)),
        (tags::STUDY_INSTANCE_UID, Some(VR::UI)),
        (tags::STUDY_DATE, Some(VR::DA)),
        (tags::STUDY_TIME, Some(VR::TM)),
        (tags::REFERRING_PHYSICIAN_NAME, Some(VR::PN)),
        (tags::STUDY_ID, Some(VR::SH)),
        (tags::ACCESSION_NUMBER, Some(VR::SH)),
        (tags::STUDY_DESCRIPTION, None),
    ] {
        match (source.element_opt(tag).ok().flatten(), empty_if_absent) {
            (Some(e), _) => {
                target.put(e.clone());
            }
            (None, Some(vr)) => {
                target.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
            }
            (None, None) => {}
        }
    }
}

/// A text attribute of the source, without padding; `None` when absent or empty.
fn source_text(source: &InMemDicomObject, tag: Tag) -> Option<String> {
    source
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
}

/// Now as DICOM DA and TM: at `offset` from UTC, else in this host's local time.
pub fn dicom_now(offset: Option<chrono::FixedOffset>) -> (String, String) {
    let now = chrono::Utc::now();
    let at = now.with_timezone(&offset.unwrap_or_else(|| *now.with_timezone(&chrono::Local).offset()));
    (at.format("%Y%m%d").to_string(), at.format("%H%M%S").to_string())
}

/// A Timezone Offset From UTC (`+HHMM` or `-HHMM`, PS3.5 Table 6.2-1 DT) as an offset; `None`
/// when it is not one.
fn offset_of(value: &str) -> Option<chrono::FixedOffset> {
    let (sign, digits) = match value.as_bytes() {
        [b'+', rest @ ..] => (1, rest),
        [b'-', rest @ ..] => (-1, rest),
        _ => return None,
    };
    if digits.len() != 4 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let number = |d: &[u8]| i32::from(d[0] - b'0') * 10 + i32::from(d[1] - b'0');
    let (hours, minutes) = (number(&digits[..2]), number(&digits[2..]));
    if hours > 14 || minutes > 59 {
        return None;
    }
    chrono::FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::inference::{Manifest, Role};

    /// The demo models' manifest (no model file is read).
    pub fn manifest() -> Manifest {
        Manifest::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/manifest.toml")).unwrap()
    }

    /// A source image's header: what a builder needs of it.
    pub fn source() -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            text(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.1.1"),
            text(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5"),
            text(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.4"),
            text(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4.1"),
            text(tags::PATIENT_ID, VR::LO, "P1"),
            text(tags::PATIENT_ORIENTATION, VR::CS, "L\\F"),
        ])
    }

    pub fn context<'a>(source: &'a InMemDicomObject, manifest: &'a Manifest) -> Context<'a> {
        let models = Models {
            classifier: manifest.model(Role::Classifier),
            segmenter: manifest.model(Role::Segmenter),
            notice: &manifest.notice,
        };
        Context::new(source, "spool/key.dcm", models, "2.25", "node-a").unwrap()
    }

    #[test]
    fn uids_are_derived_as_they_always_were() {
        // a node upgraded mid-retry must re-derive the UIDs it gave before
        let (source, manifest) = (source(), manifest());
        let ctx = context(&source, &manifest);
        let (c, s) = (manifest.model(Role::Classifier), manifest.model(Role::Segmenter));
        let base = ["1.2.3.4.5", "spool/key.dcm"];
        let seg = [&base[..], &[&s.name, &s.version, &s.sha256, "seg instance"]].concat();
        assert_eq!(ctx.derive_uid(ObjectKind::Seg, "instance"), uid::derive("2.25", &seg));
        let sr = [&base[..], &[&c.sha256, &s.sha256, "sr series"]].concat();
        assert_eq!(ctx.derive_uid(ObjectKind::Sr, "series"), uid::derive("2.25", &sr));
        let sc = [&base[..], &[&c.sha256, &s.sha256, "sc instance"]].concat();
        assert_eq!(ctx.derive_uid(ObjectKind::Overlay, "instance"), uid::derive("2.25", &sc));
        assert_eq!(ctx.device_observer_uid(), uid::derive("2.25", &["device observer", "node-a"]));
    }

    /// What the node writes itself may hold what no source character set can (a series
    /// description "KI – Größe", a model's name), and a source may declare a set the writer
    /// cannot encode (ISO 2022 with Japanese): every object is UTF-8, and says so.
    #[test]
    fn objects_are_written_in_utf8_whatever_the_source_declared() {
        let manifest = manifest();
        for declared in [None, Some("ISO_IR 100"), Some("\\ISO 2022 IR 87")] {
            let mut source = source();
            if let Some(declared) = declared {
                source.put(text(tags::SPECIFIC_CHARACTER_SET, VR::CS, declared));
            }
            source.put(text(tags::PATIENT_NAME, VR::PN, "Müller^Jörg=山田^太郎"));
            let ctx = context(&source, &manifest);
            let series = Series { number: 9902, description: "KI – Größe" };
            let (obj, uids) = ctx.new_object(ObjectKind::Sr, "1.2.840.10008.5.1.4.1.1.88.34", "SR", series);
            let bytes = crate::results::common::Built::new(obj, uids).unwrap().to_bytes().unwrap();
            let written = String::from_utf8_lossy(&bytes);
            assert!(written.contains("ISO_IR 192"), "{declared:?}");
            assert!(!written.contains("ISO 2022") && !written.contains("ISO_IR 100"), "{declared:?}");
            assert!(written.contains("KI – Größe") && written.contains("Müller^Jörg=山田^太郎"), "{declared:?}");
        }
    }

    /// The objects' dates and times are given at the source's offset from UTC, which they then
    /// carry; a source without one gets this host's local time and no offset.
    #[test]
    fn times_are_given_at_the_sources_offset_from_utc() {
        let manifest = manifest();
        let mut source = source();
        source.put(text(tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+1345"));
        let ctx = context(&source, &manifest);
        let at = chrono::Utc::now().with_timezone(&chrono::FixedOffset::east_opt(13 * 3600 + 45 * 60).unwrap());
        assert_eq!(ctx.date, at.format("%Y%m%d").to_string());
        let (ours, theirs) = (ctx.time[..4].to_string(), at.format("%H%M").to_string());
        let earlier = (at - chrono::Duration::minutes(1)).format("%H%M").to_string();
        assert!(ours == theirs || ours == earlier, "{ours} at +1345, {theirs} now");
        let (obj, _) = ctx.new_object(
            ObjectKind::Seg,
            "1.2.840.10008.5.1.4.1.1.66.4",
            "SEG",
            Series { number: 1, description: "" },
        );
        assert_eq!(obj.element(tags::TIMEZONE_OFFSET_FROM_UTC).unwrap().to_str().unwrap(), "+1345");

        for bad in ["+1500", "0100", "+01:00", "-0960", ""] {
            assert_eq!(offset_of(bad), None, "{bad:?}");
        }
        assert_eq!(offset_of("-0330"), chrono::FixedOffset::west_opt(3 * 3600 + 30 * 60));
        let plain = super::tests::source();
        let ctx = context(&plain, &manifest);
        assert_eq!(ctx.utc_offset, None);
        let (obj, _) = ctx.new_object(
            ObjectKind::Seg,
            "1.2.840.10008.5.1.4.1.1.66.4",
            "SEG",
            Series { number: 1, description: "" },
        );
        assert!(obj.element_opt(tags::TIMEZONE_OFFSET_FROM_UTC).unwrap().is_none());
        let local = chrono::Local::now();
        assert_eq!(ctx.date.len(), 8);
        assert!(ctx.date == local.format("%Y%m%d").to_string() || local.format("%H%M").to_string() == "0000");
    }

    #[test]
    fn a_source_without_its_identity_makes_nothing() {
        let manifest = manifest();
        let mut source = source();
        source.remove_element(tags::STUDY_INSTANCE_UID);
        let models = Models {
            classifier: manifest.model(Role::Classifier),
            segmenter: manifest.model(Role::Segmenter),
            notice: "",
        };
        let err = Context::new(&source, "", models, "2.25", "n").unwrap_err();
        assert!(matches!(err, ResultsError::MissingSource("Study Instance UID")), "{err:?}");
    }

    #[test]
    fn a_new_object_carries_the_uids_it_returns() {
        let (source, manifest) = (source(), manifest());
        let ctx = context(&source, &manifest);
        let (obj, uids) = ctx.new_object(
            ObjectKind::Sr,
            "1.2.840.10008.5.1.4.1.1.88.34",
            "SR",
            Series { number: 9902, description: "AI report" },
        );
        let get = |tag| obj.element(tag).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
        assert_eq!(get(tags::SOP_INSTANCE_UID), uids.sop_instance_uid);
        assert_eq!(get(tags::SERIES_INSTANCE_UID), uids.series_instance_uid);
        assert_eq!(get(tags::STUDY_INSTANCE_UID), "1.2.3.4");
        assert_eq!(uids.study_instance_uid, "1.2.3.4");
        assert_eq!(get(tags::PATIENT_ID), "P1");
        assert_eq!(get(tags::CONTENT_DATE), ctx.date);
        assert!(obj.element_opt(tags::ISSUER_OF_PATIENT_ID).unwrap().is_none(), "type 3: only if the source has it");

        let mut issued = source.clone();
        issued.put(text(tags::ISSUER_OF_PATIENT_ID, VR::LO, "HOSP-A"));
        let ctx = context(&issued, &manifest);
        let (obj, _) = ctx.new_object(
            ObjectKind::Sr,
            "1.2.840.10008.5.1.4.1.1.88.34",
            "SR",
            Series { number: 1, description: "" },
        );
        assert_eq!(obj.element(tags::ISSUER_OF_PATIENT_ID).unwrap().to_str().unwrap(), "HOSP-A");
    }
}
