//! The secondary capture of a positive result (`outputs.overlay`), for viewers that cannot show
//! a SEG: the image as displayed, the mask's outline burned in, and above it a banner saying
//! what it is ("AI result: pneumothorax suspected, p = 0.91; not for diagnosis").
//!
//! Secondary Capture Image Storage, RGB, 8 bits, Conversion Type WSD, Burned In Annotation
//! YES, in a new series of the source's study (Modality OT: it is not an acquisition).

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};

use super::common::{seq, text, us, us_size, Built, ResultsError};
use super::context::{Context, Series};
use super::overlay;
use crate::domain::ObjectKind;
use crate::imaging::DisplayImage;

pub const SECONDARY_CAPTURE: &str = uids::SECONDARY_CAPTURE_IMAGE_STORAGE;

/// The banner's words for a positive with probability `p`.
pub fn banner_text(probability: f32) -> String {
    format!("AI result: pneumothorax suspected, p = {:.2}; not for diagnosis", probability.clamp(0.0, 1.0))
}

/// The secondary capture of a positive with probability `probability`: `display` (the source
/// as displayed: Modality LUT, VOI, MONOCHROME1 inverted) with the outline of `mask` (row-major,
/// at its size) and the banner, in `series`; and the UIDs it was given.
pub fn build(
    ctx: &Context,
    series: Series,
    display: &DisplayImage,
    mask: &[bool],
    probability: f32,
) -> Result<Built, ResultsError> {
    let expected = display.width as usize * display.height as usize;
    if mask.len() != expected {
        return Err(ResultsError::MaskSize { got: mask.len(), expected });
    }
    // checked before drawing: the banner only adds rows
    let columns = us_size(tags::COLUMNS, "Columns", display.width)?;
    let outlined = overlay::outlined_rgb(display, Some(mask));
    let (pixels, rows) = overlay::with_banner(&outlined, display.width, display.height, &banner_text(probability));
    let rows = us_size(tags::ROWS, "Rows", rows)?;

    let (c, s) = (ctx.models.classifier, ctx.models.segmenter);
    let (mut obj, uids) = ctx.new_object(ObjectKind::Overlay, SECONDARY_CAPTURE, "OT", series);
    // Type 2 (2C) in General Image and General Series: the source's, else empty
    for tag in [tags::PATIENT_ORIENTATION, tags::LATERALITY] {
        let copied = ctx.source.dataset.element_opt(tag).ok().flatten().cloned();
        obj.put(copied.unwrap_or_else(|| DataElement::new(tag, VR::CS, PrimitiveValue::Empty)));
    }
    for element in [
        // SC Equipment: made on a workstation
        text(tags::CONVERSION_TYPE, VR::CS, "WSD"),
        // General Image
        DataElement::new(tags::IMAGE_TYPE, VR::CS, PrimitiveValue::Strs(["DERIVED".into(), "SECONDARY".into()].into())),
        text(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"),
        text(
            tags::DERIVATION_DESCRIPTION,
            VR::ST,
            &format!(
                "Outline of the pneumothorax found by {} {} and {} {}; not for diagnosis",
                c.name, c.version, s.name, s.version
            ),
        ),
        seq(tags::SOURCE_IMAGE_SEQUENCE, vec![ctx.source.source_image_item()]),
        text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        // Image Pixel
        us(tags::SAMPLES_PER_PIXEL, 3),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"),
        us(tags::PLANAR_CONFIGURATION, 0),
        rows,
        columns,
        us(tags::BITS_ALLOCATED, 8),
        us(tags::BITS_STORED, 8),
        us(tags::HIGH_BIT, 7),
        us(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(even(pixels))),
    ] {
        obj.put(element);
    }
    Built::new(obj, uids)
}

/// Pixel Data is padded to an even length.
fn even(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::context::tests::{context, manifest, source};

    #[test]
    fn a_capture_whose_banner_would_overflow_rows_is_refused() {
        let (source, manifest) = (source(), manifest());
        let ctx = context(&source, &manifest);
        let series = Series { number: 9903, description: "AI overlay" };
        let small = DisplayImage { width: 4, height: 2, pixels: vec![0.5; 8] };
        let built = build(&ctx, series, &small, &[false, true, true, false, false, false, false, false], 0.9).unwrap();
        assert_eq!(built.uids.sop_instance_uid, ctx.derive_uid(ObjectKind::Overlay, "instance"));
        // 65535 rows fit, but not with the banner above them
        let tall = DisplayImage { width: 1, height: 65_535, pixels: vec![0.5; 65_535] };
        let err = build(&ctx, series, &tall, &vec![false; 65_535], 0.9).unwrap_err();
        assert!(matches!(err, ResultsError::TooLarge { what: "Rows", .. }), "{err:?}");
    }
}
