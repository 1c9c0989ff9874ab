//! What the builders share besides their context: the error they report, element helpers
//! (checked where DICOM's types are narrower than ours), the UIDs a builder assigned, and the
//! file meta of a finished object.

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

/// Why an object could not be made of a result.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("the source image lacks {0}")]
    MissingSource(&'static str),
    #[error("the mask has {got} pixels, the image {expected}")]
    MaskSize { got: usize, expected: usize },
    #[error("{what} would be {value}, more than DICOM's 65535")]
    TooLarge { what: &'static str, value: u64 },
    // dicom-object's errors are large: boxed, so that every Result here stays small
    #[error("cannot build the file meta: {0}")]
    Meta(#[source] Box<dicom_object::WithMetaError>),
    #[error("cannot encode the object: {0}")]
    Encode(#[source] Box<dicom_object::WriteError>),
}

/// The UIDs a builder gave the object it made: the object's row, its file and the SR's
/// references take them from here, never from the object's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectUids {
    pub sop_class_uid: &'static str,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
    pub study_instance_uid: String,
}

/// An object a builder made, with its file meta, and the UIDs it assigned.
#[derive(Debug)]
pub struct Built {
    pub object: FileDicomObject<InMemDicomObject>,
    pub uids: ObjectUids,
}

impl Built {
    /// `obj` with its file meta: Explicit VR Little Endian, our implementation.
    pub fn new(obj: InMemDicomObject, uids: ObjectUids) -> Result<Built, ResultsError> {
        let object = obj
            .with_meta(
                FileMetaTableBuilder::new()
                    .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                    .implementation_class_uid(crate::IMPLEMENTATION_CLASS_UID)
                    .implementation_version_name(crate::IMPLEMENTATION_VERSION_NAME),
            )
            .map_err(|e| ResultsError::Meta(Box::new(e)))?;
        Ok(Built { object, uids })
    }

    /// The object as a Part-10 file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, ResultsError> {
        let mut bytes = Vec::new();
        self.object.write_all(&mut bytes).map_err(|e| ResultsError::Encode(Box::new(e)))?;
        Ok(bytes)
    }
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

/// A US element of a size (`what`: "Rows", "Columns", ...), which must fit in 16 bits.
pub fn us_size(tag: Tag, what: &'static str, value: u32) -> Result<DataElement<InMemDicomObject>, ResultsError> {
    let value = u16::try_from(value).map_err(|_| ResultsError::TooLarge { what, value: value.into() })?;
    Ok(us(tag, value))
}

/// A reference to an instance, as an item of a Referenced SOP or Source Image sequence.
pub fn instance_reference(class: &str, instance: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class),
        text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_past_sixteen_bits_are_refused() {
        assert!(us_size(tags::ROWS, "Rows", 65535).is_ok());
        let err = us_size(tags::ROWS, "Rows", 65536).unwrap_err();
        assert!(matches!(err, ResultsError::TooLarge { what: "Rows", value: 65536 }), "{err:?}");
        assert_eq!(err.to_string(), "Rows would be 65536, more than DICOM's 65535");
    }
}
