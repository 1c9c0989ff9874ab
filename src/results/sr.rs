//! The structured report of a result: TID 1500 (Imaging Measurement Report), as IHE AI Results
//! does, in a Comprehensive 3D SR (design.md §4).
//!
//! One measurement group (TID 1501) for the whole image: the classifier (TID 4019 algorithm
//! identification, its sha256 as a parameter), the probability, Pneumothorax = Present/Absent,
//! the priority as an HL7 ActPriority code, and the source image. When there is a SEG, a second
//! group (TID 1410) with the finding, the segmenter and the SEG's frame. The codes are the
//! standard's, named in codes.rs.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::codes::{self, Code};
use super::common::{
    copy_patient_and_study, into_file, new_instance_header, seq, source_text, text, BuildError, NewInstance,
};
use super::seg::SEGMENTATION_STORAGE;
use super::uid;
use crate::inference::decision::{Decision, Priority};
use crate::inference::ModelSpec;

pub const COMPREHENSIVE_3D_SR: &str = uids::COMPREHENSIVE3_DSR_STORAGE;

/// The SEG a report refers to.
pub struct SegReference<'a> {
    pub sop_instance_uid: &'a str,
    pub series_instance_uid: &'a str,
}

/// What a report is made from.
pub struct SrRequest<'a> {
    pub source: &'a InMemDicomObject,
    /// As for the SEG: what tells this version of the source from another.
    pub source_key: &'a str,
    pub decision: Decision,
    pub probability: f32,
    pub priority: Priority,
    pub classifier: &'a ModelSpec,
    pub segmenter: &'a ModelSpec,
    pub seg: Option<SegReference<'a>>,
    pub uid_root: &'a str,
    /// This node's name (the device observer).
    pub node_name: &'a str,
    pub series_number: i32,
    pub series_description: &'a str,
    pub date: &'a str,
    pub time: &'a str,
}

/// How a content item relates to its parent (PS3.3 C.17.3.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relationship {
    Contains,
    HasProperties,
    HasObsContext,
    HasAcqContext,
    InferredFrom,
    SelectedFrom,
    HasConceptMod,
}

impl Relationship {
    pub fn as_str(self) -> &'static str {
        match self {
            Relationship::Contains => "CONTAINS",
            Relationship::HasProperties => "HAS PROPERTIES",
            Relationship::HasObsContext => "HAS OBS CONTEXT",
            Relationship::HasAcqContext => "HAS ACQ CONTEXT",
            Relationship::InferredFrom => "INFERRED FROM",
            Relationship::SelectedFrom => "SELECTED FROM",
            Relationship::HasConceptMod => "HAS CONCEPT MOD",
        }
    }
}

/// What a content item holds (PS3.3 C.17.3.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Text,
    Code,
    Num,
    DateTime,
    Date,
    Time,
    UidRef,
    PName,
    Composite,
    Image,
    Waveform,
    Scoord,
    Scoord3D,
    Tcoord,
    Container,
}

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Text => "TEXT",
            ValueType::Code => "CODE",
            ValueType::Num => "NUM",
            ValueType::DateTime => "DATETIME",
            ValueType::Date => "DATE",
            ValueType::Time => "TIME",
            ValueType::UidRef => "UIDREF",
            ValueType::PName => "PNAME",
            ValueType::Composite => "COMPOSITE",
            ValueType::Image => "IMAGE",
            ValueType::Waveform => "WAVEFORM",
            ValueType::Scoord => "SCOORD",
            ValueType::Scoord3D => "SCOORD3D",
            ValueType::Tcoord => "TCOORD",
            ValueType::Container => "CONTAINER",
        }
    }
}

fn concept(name: Code) -> DataElement<InMemDicomObject> {
    seq(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![name.item()])
}

/// A content item: relationship, value type, concept name, then its value elements.
fn item(
    relationship: Relationship,
    value_type: ValueType,
    name: Code,
    value: Vec<DataElement<InMemDicomObject>>,
) -> InMemDicomObject {
    let mut obj = InMemDicomObject::from_element_iter([
        text(tags::RELATIONSHIP_TYPE, VR::CS, relationship.as_str()),
        text(tags::VALUE_TYPE, VR::CS, value_type.as_str()),
        concept(name),
    ]);
    for element in value {
        obj.put(element);
    }
    obj
}

fn text_item(relationship: Relationship, name: Code, value: &str) -> InMemDicomObject {
    item(relationship, ValueType::Text, name, vec![text(tags::TEXT_VALUE, VR::UT, value)])
}

fn code_item(relationship: Relationship, name: Code, value: Code) -> InMemDicomObject {
    item(relationship, ValueType::Code, name, vec![seq(tags::CONCEPT_CODE_SEQUENCE, vec![value.item()])])
}

fn uidref_item(relationship: Relationship, name: Code, value: &str) -> InMemDicomObject {
    item(relationship, ValueType::UidRef, name, vec![text(tags::UID, VR::UI, value)])
}

fn image_item(name: Code, class: &str, instance: &str, frame: Option<&str>) -> InMemDicomObject {
    let mut reference = InMemDicomObject::from_element_iter([
        text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class),
        text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance),
    ]);
    if let Some(frame) = frame {
        reference.put(DataElement::new(tags::REFERENCED_FRAME_NUMBER, VR::IS, PrimitiveValue::from(frame)));
    }
    item(Relationship::Contains, ValueType::Image, name, vec![seq(tags::REFERENCED_SOP_SEQUENCE, vec![reference])])
}

fn container(
    relationship: Option<Relationship>,
    name: Code,
    template: Option<&str>,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut obj = InMemDicomObject::from_element_iter([
        text(tags::VALUE_TYPE, VR::CS, ValueType::Container.as_str()),
        concept(name),
        text(tags::CONTINUITY_OF_CONTENT, VR::CS, "CONTINUOUS"),
    ]);
    if let Some(relationship) = relationship {
        obj.put(text(tags::RELATIONSHIP_TYPE, VR::CS, relationship.as_str()));
    }
    if let Some(template) = template {
        obj.put(template_sequence(template));
    }
    obj.put(seq(tags::CONTENT_SEQUENCE, children));
    obj
}

fn template_sequence(id: &str) -> DataElement<InMemDicomObject> {
    seq(
        tags::CONTENT_TEMPLATE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
            text(tags::TEMPLATE_IDENTIFIER, VR::CS, id),
        ])],
    )
}

/// TID 4019: a model's name, version and sha256.
fn algorithm(model: &ModelSpec) -> [InMemDicomObject; 3] {
    [
        text_item(Relationship::HasConceptMod, codes::ALGORITHM_NAME, &model.name),
        text_item(Relationship::HasConceptMod, codes::ALGORITHM_VERSION, &model.version),
        text_item(Relationship::HasConceptMod, codes::ALGORITHM_PARAMETERS, &format!("sha256:{}", model.sha256)),
    ]
}

/// The report of `request`, with its file meta (Explicit VR Little Endian).
pub fn build(request: &SrRequest) -> Result<FileDicomObject<InMemDicomObject>, BuildError> {
    let src = request.source;
    let source_class = source_text(src, tags::SOP_CLASS_UID, "SOP Class UID")?;
    let source_instance = source_text(src, tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
    let source_series = source_text(src, tags::SERIES_INSTANCE_UID, "Series Instance UID")?;
    let study = source_text(src, tags::STUDY_INSTANCE_UID, "Study Instance UID")?;
    let (c, s) = (request.classifier, request.segmenter);
    let key = [source_instance.as_str(), request.source_key, &c.sha256, &s.sha256];
    let derived = |role: &str| uid::derive(request.uid_root, &[&key[..], &[role]].concat());
    let present = request.decision != Decision::Negative;

    // Group A (TID 1501): the whole image.
    let mut classification = vec![
        text_item(Relationship::HasObsContext, codes::TRACKING_IDENTIFIER, "pneumothorax classification"),
        uidref_item(Relationship::HasObsContext, codes::TRACKING_UNIQUE_IDENTIFIER, &derived("sr tracking a")),
    ];
    classification.extend(algorithm(c));
    let probability = format!("{:.4}", request.probability.clamp(0.0, 1.0));
    let mut measured = InMemDicomObject::from_element_iter([DataElement::new(
        tags::NUMERIC_VALUE,
        VR::DS,
        PrimitiveValue::from(probability.as_str()),
    )]);
    measured.put(seq(tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![codes::NO_UNITS.item()]));
    classification.push(item(
        Relationship::Contains,
        ValueType::Num,
        codes::PROBABILITY,
        vec![seq(tags::MEASURED_VALUE_SEQUENCE, vec![measured])],
    ));
    classification.push(code_item(
        Relationship::Contains,
        codes::PNEUMOTHORAX,
        if present { codes::PRESENT } else { codes::ABSENT },
    ));
    classification.push(code_item(Relationship::Contains, codes::PRIORITY, codes::act_priority(request.priority)));
    classification.push(image_item(codes::SOURCE_OF_MEASUREMENT, &source_class, &source_instance, None));
    let mut groups =
        vec![container(Some(Relationship::Contains), codes::MEASUREMENT_GROUP, Some("1501"), classification)];

    // Group B (TID 1410): the region, when there is a SEG.
    if let Some(seg) = &request.seg {
        let mut region = vec![
            text_item(Relationship::HasObsContext, codes::TRACKING_IDENTIFIER, "pneumothorax region"),
            uidref_item(Relationship::HasObsContext, codes::TRACKING_UNIQUE_IDENTIFIER, &derived("sr tracking b")),
            code_item(Relationship::Contains, codes::FINDING, codes::PNEUMOTHORAX),
        ];
        region.extend(algorithm(s));
        region.push(image_item(
            codes::REFERENCED_SEGMENTATION_FRAME,
            SEGMENTATION_STORAGE,
            seg.sop_instance_uid,
            Some("1"),
        ));
        region.push(image_item(codes::SOURCE_IMAGE_FOR_SEGMENTATION, &source_class, &source_instance, None));
        groups.push(container(Some(Relationship::Contains), codes::MEASUREMENT_GROUP, Some("1410"), region));
    }

    let content = vec![
        code_item(Relationship::HasConceptMod, codes::LANGUAGE_OF_CONTENT, codes::ENGLISH_US),
        code_item(Relationship::HasObsContext, codes::OBSERVER_TYPE, codes::DEVICE),
        uidref_item(
            Relationship::HasObsContext,
            codes::DEVICE_OBSERVER_UID,
            &uid::derive(request.uid_root, &["device observer", request.node_name]),
        ),
        text_item(Relationship::HasObsContext, codes::DEVICE_OBSERVER_NAME, request.node_name),
        text_item(Relationship::HasObsContext, codes::DEVICE_OBSERVER_MANUFACTURER, "pneumotriage"),
        text_item(Relationship::HasObsContext, codes::DEVICE_OBSERVER_MODEL_NAME, "pneumotriage"),
        code_item(Relationship::HasConceptMod, codes::PROCEDURE_REPORTED, codes::XR_UNSPECIFIED_BODY_REGION),
        container(Some(Relationship::Contains), codes::IMAGING_MEASUREMENTS, None, groups),
    ];

    let mut obj = InMemDicomObject::new_empty();
    copy_patient_and_study(src, &mut obj);
    let sop_instance = derived("sr instance");
    let series = derived("sr series");
    let header = new_instance_header(&NewInstance {
        sop_class_uid: COMPREHENSIVE_3D_SR,
        sop_instance_uid: &sop_instance,
        modality: "SR",
        series_instance_uid: &series,
        series_number: request.series_number,
        series_description: request.series_description,
        date: request.date,
        time: request.time,
    });
    for element in header.into_iter().chain([
        seq(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![]),
        seq(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]),
        text(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        text(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
        text(tags::VALUE_TYPE, VR::CS, ValueType::Container.as_str()),
        concept(codes::IMAGING_MEASUREMENT_REPORT),
        text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        template_sequence("1500"),
        seq(tags::CONTENT_SEQUENCE, content),
    ]) {
        obj.put(element);
    }
    // The HL7 ActPriority scheme is not one DICOM names, so it is declared.
    let scheme = codes::HL7_ACT_PRIORITY_SCHEME;
    obj.put(seq(
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme.designator),
            text(tags::CODING_SCHEME_UID, VR::UI, scheme.uid),
            text(tags::CODING_SCHEME_REGISTRY, VR::LO, scheme.registry),
            text(tags::CODING_SCHEME_NAME, VR::ST, scheme.name),
            text(tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION, VR::ST, scheme.responsible_organization),
        ])],
    ));
    // Every instance the tree references, by study and series.
    let reference = |class: &str, instance: &str| {
        InMemDicomObject::from_element_iter([
            text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, class),
            text(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, instance),
        ])
    };
    let series_item = |series: &str, class: &str, instance: &str| {
        let mut item = InMemDicomObject::from_element_iter([text(tags::SERIES_INSTANCE_UID, VR::UI, series)]);
        item.put(seq(tags::REFERENCED_SOP_SEQUENCE, vec![reference(class, instance)]));
        item
    };
    let mut series = vec![series_item(&source_series, &source_class, &source_instance)];
    if let Some(seg) = &request.seg {
        series.push(series_item(seg.series_instance_uid, SEGMENTATION_STORAGE, seg.sop_instance_uid));
    }
    let mut evidence = InMemDicomObject::from_element_iter([text(tags::STUDY_INSTANCE_UID, VR::UI, &study)]);
    evidence.put(seq(tags::REFERENCED_SERIES_SEQUENCE, series));
    obj.put(seq(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE, vec![evidence]));

    into_file(obj)
}
