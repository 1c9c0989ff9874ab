//! What the objects the node makes share: element helpers, the attributes copied from the
//! source, the header of a new series in the source's study, and the file meta.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the source image lacks {0}")]
    MissingSource(&'static str),
    #[error("the mask has {got} pixels, the image {expected}")]
    MaskSize { got: usize, expected: usize },
    #[error("the image would be {width}x{height}, more than DICOM's 65535 rows or columns")]
    TooLarge { width: u32, height: u32 },
    #[error("cannot build the file meta: {0}")]
    Meta(String),
}

pub fn text(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

pub fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

pub fn us(tag: Tag, value: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

/// The attributes copied from the source: patient, study and (for SEG) Patient Orientation.
/// Type 2 attributes the source lacks are written empty.
pub fn copy_patient_and_study(source: &InMemDicomObject, target: &mut InMemDicomObject) {
    for (tag, vr) in [
        (tags::SPECIFIC_CHARACTER_SET, VR::CS),
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_INSTANCE_UID, VR::UI),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
        (tags::STUDY_DESCRIPTION, VR::LO),
    ] {
        match source.element_opt(tag).ok().flatten() {
            Some(e) => {
                target.put(e.clone());
            }
            None if tag != tags::SPECIFIC_CHARACTER_SET && tag != tags::STUDY_DESCRIPTION => {
                target.put(DataElement::new(tag, vr, PrimitiveValue::Empty));
            }
            None => {}
        }
    }
}

/// A required text attribute of the source image.
pub fn source_text(source: &InMemDicomObject, tag: Tag, what: &'static str) -> Result<String, BuildError> {
    source
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
        .ok_or(BuildError::MissingSource(what))
}

/// An object the node made, with its file meta: Explicit VR Little Endian, our implementation.
pub fn into_file(obj: InMemDicomObject) -> Result<FileDicomObject<InMemDicomObject>, BuildError> {
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid(crate::spool::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::spool::IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|e| BuildError::Meta(e.to_string()))
}

/// The instance-level identity of a new object, alone in a new series of the source's study.
pub struct NewInstance<'a> {
    pub sop_class_uid: &'a str,
    pub sop_instance_uid: &'a str,
    pub modality: &'a str,
    pub series_instance_uid: &'a str,
    pub series_number: i32,
    pub series_description: &'a str,
    /// When the object is made, as DICOM DA and TM.
    pub date: &'a str,
    pub time: &'a str,
}

/// SOP Common, General Series, General Equipment and the content date: what every object the
/// node makes carries the same way.
pub fn new_instance_header(new: &NewInstance) -> Vec<DataElement<InMemDicomObject>> {
    vec![
        text(tags::SOP_CLASS_UID, VR::UI, new.sop_class_uid),
        text(tags::SOP_INSTANCE_UID, VR::UI, new.sop_instance_uid),
        text(tags::INSTANCE_CREATION_DATE, VR::DA, new.date),
        text(tags::INSTANCE_CREATION_TIME, VR::TM, new.time),
        text(tags::MODALITY, VR::CS, new.modality),
        text(tags::SERIES_INSTANCE_UID, VR::UI, new.series_instance_uid),
        DataElement::new(tags::SERIES_NUMBER, VR::IS, PrimitiveValue::from(new.series_number.to_string())),
        text(tags::SERIES_DESCRIPTION, VR::LO, new.series_description),
        DataElement::new(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from("1")),
        text(tags::CONTENT_DATE, VR::DA, new.date),
        text(tags::CONTENT_TIME, VR::TM, new.time),
        text(tags::MANUFACTURER, VR::LO, "pneumotriage"),
        text(tags::MANUFACTURER_MODEL_NAME, VR::LO, "pneumotriage"),
        text(tags::DEVICE_SERIAL_NUMBER, VR::LO, "1"),
        text(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
    ]
}
