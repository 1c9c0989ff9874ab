//! The DICOM Segmentation of a positive result (design.md §4, "Results it sends").
//!
//! BINARY, one frame at the source image's size, bit-packed. A radiograph has no Frame of
//! Reference, so, as highdicom does for projection images: no Pixel Measures or Plane
//! Position/Orientation groups, one dimension (Referenced Segment Number within the Segment
//! Identification Sequence), a Derivation Image item per frame pointing at the source, and the
//! source's Patient Orientation copied. One segment: SCT 49755003 "Morphologically abnormal
//! structure" / SCT 36118008 "Pneumothorax", AUTOMATIC, with the segmenter's name and version
//! and the algorithm family DCM 123110 "Artificial Intelligence".

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::uid;
use crate::inference::ModelSpec;

/// The SOP class of the objects made here.
pub const SEGMENTATION_STORAGE: &str = uids::SEGMENTATION_STORAGE;

/// What a Segmentation is made from.
pub struct SegRequest<'a> {
    /// The analysed image (its header is enough).
    pub source: &'a InMemDicomObject,
    /// What tells this version of the source from another under the same SOP Instance UID
    /// (the spool path); part of the derived UIDs.
    pub source_key: &'a str,
    /// The mask at the source's size, row-major.
    pub mask: &'a [bool],
    pub width: u32,
    pub height: u32,
    pub segmenter: &'a ModelSpec,
    /// `node.uid_root`.
    pub uid_root: &'a str,
    pub series_number: i32,
    pub series_description: &'a str,
    /// What the models are for (the manifest's notice), carried in the segment's description.
    pub notice: &'a str,
    /// When the object is made, as DICOM DA and TM.
    pub date: &'a str,
    pub time: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum SegError {
    #[error("the source image lacks {0}")]
    MissingSource(&'static str),
    #[error("the mask has {got} pixels, the image {expected}")]
    MaskSize { got: usize, expected: usize },
    #[error("cannot build the file meta: {0}")]
    Meta(String),
}

/// A coded concept (a Code Sequence item).
pub fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        text(tags::CODE_VALUE, VR::SH, value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        text(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

pub fn text(tag: Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

pub fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn us(tag: Tag, value: u16) -> DataElement<InMemDicomObject> {
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
pub fn source_text(source: &InMemDicomObject, tag: Tag, what: &'static str) -> Result<String, SegError> {
    source
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .filter(|s| !s.is_empty())
        .ok_or(SegError::MissingSource(what))
}

/// The reference to the source image, as an item of Source Image / Referenced Instance sequences.
fn image_reference(class: &str, instance: &str, purpose: bool) -> InMemDicomObject {
    let mut item = InMemDicomObject::from_element_iter([
        text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class),
        text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance),
    ]);
    if purpose {
        item.put(seq(
            tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
            vec![code("121322", "DCM", "Source image for image processing operation")],
        ));
    }
    item
}

/// Packs a binary mask one bit per pixel, first pixel in the lowest bit, padded to even length.
pub fn pack_bits(mask: &[bool]) -> Vec<u8> {
    let mut bytes = vec![0u8; mask.len().div_ceil(8)];
    for (i, _) in mask.iter().enumerate().filter(|(_, &on)| on) {
        bytes[i / 8] |= 1 << (i % 8);
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    bytes
}

/// The Segmentation of `request`, with its file meta (Explicit VR Little Endian).
pub fn build(request: &SegRequest) -> Result<FileDicomObject<InMemDicomObject>, SegError> {
    let src = request.source;
    let expected = request.width as usize * request.height as usize;
    if request.mask.len() != expected {
        return Err(SegError::MaskSize { got: request.mask.len(), expected });
    }
    let source_class = source_text(src, tags::SOP_CLASS_UID, "SOP Class UID")?;
    let source_instance = source_text(src, tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
    let source_series = source_text(src, tags::SERIES_INSTANCE_UID, "Series Instance UID")?;
    let model = request.segmenter;
    let key = [
        source_instance.as_str(),
        request.source_key,
        model.name.as_str(),
        model.version.as_str(),
        model.sha256.as_str(),
    ];
    let derived = |role: &str| {
        let mut parts = key.to_vec();
        parts.push(role);
        uid::derive(request.uid_root, &parts)
    };
    let sop_instance = derived("seg instance");

    let mut obj = InMemDicomObject::new_empty();
    copy_patient_and_study(src, &mut obj);
    if let Some(orientation) = src.element_opt(tags::PATIENT_ORIENTATION).ok().flatten() {
        obj.put(orientation.clone());
    }
    for element in [
        text(tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE),
        text(tags::SOP_INSTANCE_UID, VR::UI, &sop_instance),
        text(tags::INSTANCE_CREATION_DATE, VR::DA, request.date),
        text(tags::INSTANCE_CREATION_TIME, VR::TM, request.time),
        text(tags::MODALITY, VR::CS, "SEG"),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &derived("seg series")),
        DataElement::new(tags::SERIES_NUMBER, VR::IS, PrimitiveValue::from(request.series_number.to_string())),
        text(tags::SERIES_DESCRIPTION, VR::LO, request.series_description),
        DataElement::new(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from("1")),
        text(tags::CONTENT_DATE, VR::DA, request.date),
        text(tags::CONTENT_TIME, VR::TM, request.time),
        text(tags::MANUFACTURER, VR::LO, "pneumotriage"),
        text(tags::MANUFACTURER_MODEL_NAME, VR::LO, "pneumotriage"),
        text(tags::DEVICE_SERIAL_NUMBER, VR::LO, "1"),
        text(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        // Segmentation Image
        DataElement::new(tags::IMAGE_TYPE, VR::CS, PrimitiveValue::Strs(["DERIVED".into(), "PRIMARY".into()].into())),
        text(tags::CONTENT_LABEL, VR::CS, "PNEUMOTHORAX"),
        text(tags::CONTENT_DESCRIPTION, VR::LO, &format!("{} {}", model.name, model.version)),
        DataElement::new(tags::CONTENT_CREATOR_NAME, VR::PN, PrimitiveValue::Empty),
        text(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        text(tags::SEGMENTS_OVERLAP, VR::CS, "NO"),
        text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        // Image Pixel
        us(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        us(tags::ROWS, request.height as u16),
        us(tags::COLUMNS, request.width as u16),
        us(tags::BITS_ALLOCATED, 1),
        us(tags::BITS_STORED, 1),
        us(tags::HIGH_BIT, 0),
        us(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("1")),
    ] {
        obj.put(element);
    }

    let mut segment = InMemDicomObject::from_element_iter([
        us(tags::SEGMENT_NUMBER, 1),
        text(tags::SEGMENT_LABEL, VR::LO, "Pneumothorax"),
        text(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
        text(tags::SEGMENT_ALGORITHM_NAME, VR::LO, &model.name),
        text(
            tags::SEGMENT_DESCRIPTION,
            VR::ST,
            &format!("Pneumothorax found by {} {}; {}", model.name, model.version, request.notice),
        ),
    ]);
    segment.put(seq(
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
        vec![code("49755003", "SCT", "Morphologically abnormal structure")],
    ));
    segment.put(seq(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, vec![code("36118008", "SCT", "Pneumothorax")]));
    let mut algorithm = InMemDicomObject::from_element_iter([
        text(tags::ALGORITHM_NAME, VR::LO, &model.name),
        text(tags::ALGORITHM_VERSION, VR::LO, &model.version),
    ]);
    algorithm.put(seq(tags::ALGORITHM_FAMILY_CODE_SEQUENCE, vec![code("123110", "DCM", "Artificial Intelligence")]));
    segment.put(seq(tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE, vec![algorithm]));
    obj.put(seq(tags::SEGMENT_SEQUENCE, vec![segment]));

    // Multi-frame Dimension: the one dimension is the segment.
    let organization = derived("seg dimensions");
    obj.put(seq(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organization)])],
    ));
    obj.put(text(tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D"));
    obj.put(seq(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organization),
            DataElement::new(
                tags::DIMENSION_INDEX_POINTER,
                VR::AT,
                PrimitiveValue::from(tags::REFERENCED_SEGMENT_NUMBER),
            ),
            DataElement::new(
                tags::FUNCTIONAL_GROUP_POINTER,
                VR::AT,
                PrimitiveValue::from(tags::SEGMENT_IDENTIFICATION_SEQUENCE),
            ),
            text(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, "Segment Number"),
        ])],
    ));

    // Functional groups: nothing shared; for the frame, its dimension index, derivation and segment.
    obj.put(seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![InMemDicomObject::new_empty()]));
    let mut source_image = image_reference(&source_class, &source_instance, true);
    source_image.put(text(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"));
    let mut derivation = InMemDicomObject::new_empty();
    derivation.put(seq(tags::DERIVATION_CODE_SEQUENCE, vec![code("113076", "DCM", "Segmentation")]));
    derivation.put(seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source_image]));
    let mut frame = InMemDicomObject::new_empty();
    frame.put(seq(tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]));
    frame.put(seq(
        tags::FRAME_CONTENT_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([DataElement::new(
            tags::DIMENSION_INDEX_VALUES,
            VR::UL,
            PrimitiveValue::from(1u32),
        )])],
    ));
    frame.put(seq(
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([us(tags::REFERENCED_SEGMENT_NUMBER, 1)])],
    ));
    obj.put(seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, vec![frame]));

    // References: the source image, and its series (Common Instance Reference).
    obj.put(seq(tags::SOURCE_IMAGE_SEQUENCE, vec![image_reference(&source_class, &source_instance, true)]));
    let mut series = InMemDicomObject::from_element_iter([text(tags::SERIES_INSTANCE_UID, VR::UI, &source_series)]);
    series.put(seq(tags::REFERENCED_INSTANCE_SEQUENCE, vec![image_reference(&source_class, &source_instance, false)]));
    obj.put(seq(tags::REFERENCED_SERIES_SEQUENCE, vec![series]));

    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pack_bits(request.mask))));
    into_file(obj)
}

/// An object the node made, with its file meta: Explicit VR Little Endian, our implementation.
pub fn into_file(obj: InMemDicomObject) -> Result<FileDicomObject<InMemDicomObject>, SegError> {
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid(crate::spool::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::spool::IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|e| SegError::Meta(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_packed_lowest_first_to_an_even_length() {
        let mut mask = vec![false; 17];
        mask[0] = true;
        mask[9] = true;
        mask[16] = true;
        assert_eq!(pack_bits(&mask), vec![0b0000_0001, 0b0000_0010, 0b0000_0001, 0]);
    }
}
