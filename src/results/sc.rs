//! The secondary capture of a positive result (`outputs.overlay`), for viewers that cannot show
//! a SEG: the image as displayed, the mask's outline burned in, and above it a banner saying
//! what it is ("AI result: pneumothorax suspected, p = 0.91; not for diagnosis").
//!
//! Secondary Capture Image Storage, RGB, 8 bits, Conversion Type WSD, Burned In Annotation
//! YES, in a new series of the source's study (Modality OT: it is not an acquisition).

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::codes;
use super::common::{
    copy_patient_and_study, into_file, new_instance_header, seq, source_text, text, us, BuildError, NewInstance,
};
use super::{overlay, uid};
use crate::imaging::DisplayImage;
use crate::inference::ModelSpec;

pub const SECONDARY_CAPTURE: &str = uids::SECONDARY_CAPTURE_IMAGE_STORAGE;

/// What a secondary capture is made from.
pub struct ScRequest<'a> {
    pub source: &'a InMemDicomObject,
    /// As for the SEG: what tells this version of the source from another.
    pub source_key: &'a str,
    /// The source as displayed (Modality LUT, VOI, MONOCHROME1 inverted), at its size.
    pub display: &'a DisplayImage,
    /// The mask at the source's size, row-major.
    pub mask: &'a [bool],
    pub probability: f32,
    pub classifier: &'a ModelSpec,
    pub segmenter: &'a ModelSpec,
    pub uid_root: &'a str,
    pub series_number: i32,
    pub series_description: &'a str,
    pub date: &'a str,
    pub time: &'a str,
}

/// The banner's words for a positive with probability `p`.
pub fn banner_text(probability: f32) -> String {
    format!("AI result: pneumothorax suspected, p = {:.2}; not for diagnosis", probability.clamp(0.0, 1.0))
}

/// The secondary capture of `request`, with its file meta (Explicit VR Little Endian).
pub fn build(request: &ScRequest) -> Result<FileDicomObject<InMemDicomObject>, BuildError> {
    let src = request.source;
    let display = request.display;
    let expected = display.width as usize * display.height as usize;
    if request.mask.len() != expected {
        return Err(BuildError::MaskSize { got: request.mask.len(), expected });
    }
    let source_class = source_text(src, tags::SOP_CLASS_UID, "SOP Class UID")?;
    let source_instance = source_text(src, tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
    let (c, s) = (request.classifier, request.segmenter);
    let key = [source_instance.as_str(), request.source_key, &c.sha256, &s.sha256];
    let derived = |role: &str| uid::derive(request.uid_root, &[&key[..], &[role]].concat());

    let outlined = overlay::outlined_rgb(display, Some(request.mask));
    let (pixels, rows) =
        overlay::with_banner(&outlined, display.width, display.height, &banner_text(request.probability));
    if rows > u16::MAX as u32 || display.width > u16::MAX as u32 {
        return Err(BuildError::TooLarge { width: display.width, height: rows });
    }

    let (sop_instance, series) = (derived("sc instance"), derived("sc series"));
    let mut obj = InMemDicomObject::new_empty();
    copy_patient_and_study(src, &mut obj);
    // Type 2 (2C) in General Image and General Series: the source's, else empty
    for tag in [tags::PATIENT_ORIENTATION, tags::LATERALITY] {
        let copied = src.element_opt(tag).ok().flatten().cloned();
        obj.put(copied.unwrap_or_else(|| DataElement::new(tag, VR::CS, PrimitiveValue::Empty)));
    }
    let header = new_instance_header(&NewInstance {
        sop_class_uid: SECONDARY_CAPTURE,
        sop_instance_uid: &sop_instance,
        modality: "OT",
        series_instance_uid: &series,
        series_number: request.series_number,
        series_description: request.series_description,
        date: request.date,
        time: request.time,
    });
    let mut source_image = InMemDicomObject::from_element_iter([
        text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &source_class),
        text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &source_instance),
    ]);
    source_image.put(seq(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, vec![codes::SOURCE_IMAGE_FOR_PROCESSING.item()]));
    for element in header.into_iter().chain([
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
        seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source_image]),
        text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        // Image Pixel
        us(tags::SAMPLES_PER_PIXEL, 3),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"),
        us(tags::PLANAR_CONFIGURATION, 0),
        us(tags::ROWS, rows as u16),
        us(tags::COLUMNS, display.width as u16),
        us(tags::BITS_ALLOCATED, 8),
        us(tags::BITS_STORED, 8),
        us(tags::HIGH_BIT, 7),
        us(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(even(pixels))),
    ]) {
        obj.put(element);
    }
    into_file(obj)
}

/// Pixel Data is padded to an even length.
fn even(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    bytes
}
