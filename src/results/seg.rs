//! The DICOM Segmentation of a positive result (design.md §4, "Results it sends").
//!
//! BINARY, one frame at the source image's size, bit-packed. A radiograph has no Frame of
//! Reference, so, as highdicom does for projection images: no Pixel Measures or Plane
//! Position/Orientation groups, one dimension (Referenced Segment Number within the Segment
//! Identification Sequence), a Derivation Image item per frame pointing at the source, and the
//! source's Patient Orientation copied. One segment: SCT 49755003 "Morphologically abnormal
//! structure" / SCT 36118008 "Pneumothorax", AUTOMATIC, with the segmenter's name and version
//! and the algorithm family DCM 123110 "Artificial Intelligence".

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::codes;
use super::common::{
    copy_patient_and_study, into_file, new_instance_header, seq, source_text, text, us, BuildError, NewInstance,
};
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

/// The reference to the source image, as an item of Source Image / Referenced Instance sequences.
fn image_reference(class: &str, instance: &str, purpose: bool) -> InMemDicomObject {
    let mut item = InMemDicomObject::from_element_iter([
        text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class),
        text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance),
    ]);
    if purpose {
        item.put(seq(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, vec![codes::SOURCE_IMAGE_FOR_PROCESSING.item()]));
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
pub fn build(request: &SegRequest) -> Result<FileDicomObject<InMemDicomObject>, BuildError> {
    let src = request.source;
    let expected = request.width as usize * request.height as usize;
    if request.mask.len() != expected {
        return Err(BuildError::MaskSize { got: request.mask.len(), expected });
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
    let derived = |role: &str| uid::derive(request.uid_root, &[&key[..], &[role]].concat());
    let sop_instance = derived("seg instance");

    let mut obj = InMemDicomObject::new_empty();
    copy_patient_and_study(src, &mut obj);
    if let Some(orientation) = src.element_opt(tags::PATIENT_ORIENTATION).ok().flatten() {
        obj.put(orientation.clone());
    }
    let series = derived("seg series");
    let header = new_instance_header(&NewInstance {
        sop_class_uid: SEGMENTATION_STORAGE,
        sop_instance_uid: &sop_instance,
        modality: "SEG",
        series_instance_uid: &series,
        series_number: request.series_number,
        series_description: request.series_description,
        date: request.date,
        time: request.time,
    });
    for element in header.into_iter().chain([
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
    ]) {
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
        vec![codes::MORPHOLOGICALLY_ABNORMAL_STRUCTURE.item()],
    ));
    segment.put(seq(tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, vec![codes::PNEUMOTHORAX.item()]));
    let mut algorithm = InMemDicomObject::from_element_iter([
        text(tags::ALGORITHM_NAME, VR::LO, &model.name),
        text(tags::ALGORITHM_VERSION, VR::LO, &model.version),
    ]);
    algorithm.put(seq(tags::ALGORITHM_FAMILY_CODE_SEQUENCE, vec![codes::ALGORITHM_FAMILY_AI.item()]));
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
    derivation.put(seq(tags::DERIVATION_CODE_SEQUENCE, vec![codes::DERIVATION_SEGMENTATION.item()]));
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
