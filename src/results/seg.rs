//! The DICOM Segmentation of a positive result (docs/conformance.md, "Segmentation").
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
use dicom_object::InMemDicomObject;

use super::common::{seq, text, us, us_size, Built, ResultsError};
use super::context::{Context, Series};
use crate::codes;
use crate::domain::ObjectKind;

/// The SOP class of the objects made here.
pub const SEGMENTATION_STORAGE: &str = uids::SEGMENTATION_STORAGE;

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

/// The Segmentation of `mask` (`width` × `height`, row-major, at the source's size), in
/// `series`, and the UIDs it was given.
pub fn build(ctx: &Context, series: Series, mask: &[bool], width: u32, height: u32) -> Result<Built, ResultsError> {
    let expected = width as usize * height as usize;
    if mask.len() != expected {
        return Err(ResultsError::MaskSize { got: mask.len(), expected });
    }
    let source = &ctx.source;
    let source_series = source.series_instance_uid()?;
    let model = ctx.models.segmenter;

    let (mut obj, uids) = ctx.new_object(ObjectKind::Seg, SEGMENTATION_STORAGE, "SEG", series);
    if let Some(orientation) = source.dataset.element_opt(tags::PATIENT_ORIENTATION).ok().flatten() {
        obj.put(orientation.clone());
    }
    for element in [
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
        us_size(tags::ROWS, "Rows", height)?,
        us_size(tags::COLUMNS, "Columns", width)?,
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
            &format!("Pneumothorax found by {} {}; {}", model.name, model.version, ctx.models.notice),
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
    let organization = ctx.derive_uid(ObjectKind::Seg, "dimensions");
    obj.put(seq(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([text(tags::DIMENSION_ORGANIZATION_UID, VR::UI, &organization)])],
    ));
    // No Dimension Organization Type (type 3): its "3D" is a volume of parallel planes, which a
    // projection radiograph's one frame is not (highdicom leaves it out, and refuses "3D" here).
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
    let mut source_image = source.source_image_item();
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
    obj.put(seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source.source_image_item()]));
    let mut referenced = InMemDicomObject::from_element_iter([text(tags::SERIES_INSTANCE_UID, VR::UI, source_series)]);
    referenced.put(seq(tags::REFERENCED_INSTANCE_SEQUENCE, vec![source.reference()]));
    obj.put(seq(tags::REFERENCED_SERIES_SEQUENCE, vec![referenced]));

    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pack_bits(mask))));
    Built::new(obj, uids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::context::tests::{context, manifest, source};

    #[test]
    fn bits_are_packed_lowest_first_to_an_even_length() {
        let mut mask = vec![false; 17];
        mask[0] = true;
        mask[9] = true;
        mask[16] = true;
        assert_eq!(pack_bits(&mask), vec![0b0000_0001, 0b0000_0010, 0b0000_0001, 0]);
    }

    fn series() -> Series<'static> {
        Series { number: 9901, description: "AI segmentation" }
    }

    #[test]
    fn the_uids_returned_are_the_objects() {
        let (source, manifest) = (source(), manifest());
        let ctx = context(&source, &manifest);
        let built = build(&ctx, series(), &[true, false, false, true, true, false], 3, 2).unwrap();
        let get = |tag| built.object.element(tag).unwrap().to_str().unwrap().trim_end_matches('\0').to_string();
        assert_eq!(get(tags::SOP_INSTANCE_UID), built.uids.sop_instance_uid);
        assert_eq!(get(tags::SERIES_INSTANCE_UID), built.uids.series_instance_uid);
        assert_eq!(built.uids.sop_class_uid, SEGMENTATION_STORAGE);
        assert_eq!(built.object.meta().media_storage_sop_instance_uid(), built.uids.sop_instance_uid);
        assert_eq!(built.uids.sop_instance_uid, ctx.derive_uid(ObjectKind::Seg, "instance"));
        assert_eq!(get(tags::PATIENT_ORIENTATION), "L\\F");
        assert!(built.object.element_opt(tags::DIMENSION_ORGANIZATION_TYPE).unwrap().is_none(), "not a volume");
    }

    #[test]
    fn sizes_are_checked() {
        let (source, manifest) = (source(), manifest());
        let ctx = context(&source, &manifest);
        let err = build(&ctx, series(), &[true; 6], 3, 3).unwrap_err();
        assert!(matches!(err, ResultsError::MaskSize { got: 6, expected: 9 }), "{err:?}");
        let wide = vec![false; 70_000];
        let err = build(&ctx, series(), &wide, 70_000, 1).unwrap_err();
        assert!(matches!(err, ResultsError::TooLarge { what: "Columns", value: 70_000 }), "{err:?}");
    }
}
