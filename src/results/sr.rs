//! The structured report of a result: TID 1500 (Imaging Measurement Report), as IHE AI Results
//! does, in a Comprehensive 3D SR (docs/conformance.md).
//!
//! One measurement group (TID 1501) for the whole image: the classifier (TID 4019 algorithm
//! identification, its sha256 as a parameter), the probability, Pneumothorax = Present/Absent,
//! the priority as an HL7 ActPriority code, and the source image. When there is a SEG, a second
//! group (TID 1410) with the finding, the segmenter and the SEG's frame. The codes are the
//! standard's, named in codes.rs.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::common::{instance_reference, seq, text, Built, ObjectUids, ResultsError};
use super::context::{Context, Series};
use crate::codes::{self, Code};
use crate::domain::{Decision, ObjectKind, Priority};
use crate::inference::ModelSpec;

pub const COMPREHENSIVE_3D_SR: &str = uids::COMPREHENSIVE3_DSR_STORAGE;

/// The templates (DCMR) the report follows.
const TID_MEASUREMENT_REPORT: &str = "1500";
const TID_MEASUREMENT_GROUP: &str = "1501";
const TID_PLANAR_ROI_MEASUREMENTS: &str = "1410";

/// What the report says of the image.
#[derive(Debug, Clone, Copy)]
pub struct Finding {
    pub decision: Decision,
    pub probability: f32,
    pub priority: Priority,
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
    let mut reference = instance_reference(class, instance);
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

/// The report of `finding`, referring to the SEG made of the same result when there is one,
/// in `series`; and the UIDs it was given.
pub fn build(ctx: &Context, series: Series, finding: Finding, seg: Option<&ObjectUids>) -> Result<Built, ResultsError> {
    let source = &ctx.source;
    let (source_class, source_instance) = (source.sop_class_uid.as_str(), source.sop_instance_uid.as_str());
    let (c, s) = (ctx.models.classifier, ctx.models.segmenter);
    let derived = |role: &str| ctx.derive_uid(ObjectKind::Sr, role);
    let present = finding.decision != Decision::Negative;

    // Group A (TID 1501): the whole image.
    let mut classification = vec![
        text_item(Relationship::HasObsContext, codes::TRACKING_IDENTIFIER, "pneumothorax classification"),
        uidref_item(Relationship::HasObsContext, codes::TRACKING_UNIQUE_IDENTIFIER, &derived("tracking a")),
    ];
    classification.extend(algorithm(c));
    let probability = format!("{:.4}", finding.probability.clamp(0.0, 1.0));
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
    classification.push(code_item(Relationship::Contains, codes::PRIORITY, codes::act_priority(finding.priority)));
    classification.push(image_item(codes::SOURCE_OF_MEASUREMENT, source_class, source_instance, None));
    let mut groups = vec![container(
        Some(Relationship::Contains),
        codes::MEASUREMENT_GROUP,
        Some(TID_MEASUREMENT_GROUP),
        classification,
    )];

    // Group B (TID 1410): the region, when there is a SEG.
    if let Some(seg) = seg {
        let mut region = vec![
            text_item(Relationship::HasObsContext, codes::TRACKING_IDENTIFIER, "pneumothorax region"),
            uidref_item(Relationship::HasObsContext, codes::TRACKING_UNIQUE_IDENTIFIER, &derived("tracking b")),
            code_item(Relationship::Contains, codes::FINDING, codes::PNEUMOTHORAX),
        ];
        region.extend(algorithm(s));
        region.push(image_item(
            codes::REFERENCED_SEGMENTATION_FRAME,
            seg.sop_class_uid,
            &seg.sop_instance_uid,
            Some("1"),
        ));
        region.push(image_item(codes::SOURCE_IMAGE_FOR_SEGMENTATION, source_class, source_instance, None));
        groups.push(container(
            Some(Relationship::Contains),
            codes::MEASUREMENT_GROUP,
            Some(TID_PLANAR_ROI_MEASUREMENTS),
            region,
        ));
    }

    report(ctx, series, groups, seg, "instance")
}

/// The document around the measurement `groups`: observation context, the TID 1500 root, the
/// HL7 ActPriority scheme's declaration and the evidence (the source, and the SEG when there is
/// one). `instance_role` derives the SOP Instance UID: a "not analysed" report of an image is
/// another instance than its result's report.
fn report(
    ctx: &Context,
    series: Series,
    groups: Vec<InMemDicomObject>,
    seg: Option<&ObjectUids>,
    instance_role: &str,
) -> Result<Built, ResultsError> {
    let source = &ctx.source;
    let (source_class, source_instance) = (source.sop_class_uid.as_str(), source.sop_instance_uid.as_str());
    let source_series = source.series_instance_uid()?;
    let content = vec![
        code_item(Relationship::HasConceptMod, codes::LANGUAGE_OF_CONTENT, codes::ENGLISH_US),
        code_item(Relationship::HasObsContext, codes::OBSERVER_TYPE, codes::DEVICE),
        uidref_item(Relationship::HasObsContext, codes::DEVICE_OBSERVER_UID, &ctx.device_observer_uid()),
        text_item(Relationship::HasObsContext, codes::DEVICE_OBSERVER_NAME, ctx.node_name),
        text_item(Relationship::HasObsContext, codes::DEVICE_OBSERVER_MANUFACTURER, "pneumotriage"),
        text_item(Relationship::HasObsContext, codes::DEVICE_OBSERVER_MODEL_NAME, "pneumotriage"),
        code_item(Relationship::HasConceptMod, codes::PROCEDURE_REPORTED, codes::XR_UNSPECIFIED_BODY_REGION),
        container(Some(Relationship::Contains), codes::IMAGING_MEASUREMENTS, None, groups),
    ];

    let (mut obj, mut uids) = ctx.new_object(ObjectKind::Sr, COMPREHENSIVE_3D_SR, "SR", series);
    if instance_role != "instance" {
        uids.sop_instance_uid = ctx.derive_uid(ObjectKind::Sr, instance_role);
        obj.put(text(tags::SOP_INSTANCE_UID, VR::UI, &uids.sop_instance_uid));
    }
    for element in [
        seq(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![]),
        seq(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]),
        text(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        text(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
        text(tags::VALUE_TYPE, VR::CS, ValueType::Container.as_str()),
        concept(codes::IMAGING_MEASUREMENT_REPORT),
        text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        template_sequence(TID_MEASUREMENT_REPORT),
        seq(tags::CONTENT_SEQUENCE, content),
    ] {
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
    let series_item = |series: &str, class: &str, instance: &str| {
        let mut item = InMemDicomObject::from_element_iter([text(tags::SERIES_INSTANCE_UID, VR::UI, series)]);
        item.put(seq(tags::REFERENCED_SOP_SEQUENCE, vec![instance_reference(class, instance)]));
        item
    };
    let mut referenced = vec![series_item(source_series, source_class, source_instance)];
    if let Some(seg) = seg {
        referenced.push(series_item(&seg.series_instance_uid, seg.sop_class_uid, &seg.sop_instance_uid));
    }
    let mut evidence =
        InMemDicomObject::from_element_iter([text(tags::STUDY_INSTANCE_UID, VR::UI, &source.study_instance_uid)]);
    evidence.put(seq(tags::REFERENCED_SERIES_SEQUENCE, referenced));
    obj.put(seq(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE, vec![evidence]));

    Built::new(obj, uids)
}

/// The report of an image the selection rules chose and the node could not analyse: TID 1500
/// with one measurement group whose finding, Pneumothorax, is Undetermined (CID 240's third
/// value: never Absent) and whose free-text evaluation says why; no probability, no priority.
pub fn build_not_analysed(ctx: &Context, series: Series, reason: &str) -> Result<Built, ResultsError> {
    let source = &ctx.source;
    let (source_class, source_instance) = (source.sop_class_uid.as_str(), source.sop_instance_uid.as_str());
    let mut group = vec![
        text_item(Relationship::HasObsContext, codes::TRACKING_IDENTIFIER, "pneumothorax classification"),
        uidref_item(
            Relationship::HasObsContext,
            codes::TRACKING_UNIQUE_IDENTIFIER,
            &ctx.derive_uid(ObjectKind::Sr, "not analysed tracking a"),
        ),
    ];
    group.extend(algorithm(ctx.models.classifier));
    group.push(code_item(Relationship::Contains, codes::PNEUMOTHORAX, codes::UNDETERMINED));
    group.push(text_item(Relationship::Contains, codes::QUALITATIVE_EVALUATIONS, &format!("not analysed: {reason}")));
    group.push(image_item(codes::SOURCE_OF_MEASUREMENT, source_class, source_instance, None));
    let groups =
        vec![container(Some(Relationship::Contains), codes::MEASUREMENT_GROUP, Some(TID_MEASUREMENT_GROUP), group)];
    report(ctx, series, groups, None, "not analysed instance")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::context::tests::{context, manifest, source};
    use dicom_core::Tag;

    fn texts(obj: &InMemDicomObject, tag: Tag, out: &mut Vec<String>) {
        for element in obj {
            if element.header().tag == tag {
                out.push(element.to_str().unwrap().trim_end_matches('\0').to_string());
            }
            if let Some(items) = element.items() {
                items.iter().for_each(|item| texts(item, tag, out));
            }
        }
    }

    #[test]
    fn the_report_refers_to_the_seg_by_the_uids_it_is_given() {
        let (source, manifest) = (source(), manifest());
        let ctx = context(&source, &manifest);
        let seg = ObjectUids {
            sop_class_uid: uids::SEGMENTATION_STORAGE,
            sop_instance_uid: "1.2.3.9.1".into(),
            series_instance_uid: "1.2.3.9".into(),
            study_instance_uid: "1.2.3.4".into(),
        };
        let finding = Finding { decision: Decision::Positive, probability: 0.93, priority: Priority::Urgent };
        let series = Series { number: 9902, description: "AI report" };
        let built = build(&ctx, series, finding, Some(&seg)).unwrap();
        assert_eq!(built.uids.sop_class_uid, COMPREHENSIVE_3D_SR);
        assert_eq!(built.uids.sop_instance_uid, ctx.derive_uid(ObjectKind::Sr, "instance"));
        let mut referenced = Vec::new();
        texts(&built.object, tags::REFERENCED_SOP_INSTANCE_UID, &mut referenced);
        assert!(referenced.contains(&"1.2.3.9.1".to_string()), "{referenced:?}");
        let mut series = Vec::new();
        texts(&built.object, tags::SERIES_INSTANCE_UID, &mut series);
        assert!(series.contains(&"1.2.3.9".to_string()), "the evidence names the SEG's series: {series:?}");
        let mut relationships = Vec::new();
        texts(&built.object, tags::RELATIONSHIP_TYPE, &mut relationships);
        assert!(relationships.iter().all(|r| ["CONTAINS", "HAS OBS CONTEXT", "HAS CONCEPT MOD"].contains(&r.as_str())));
    }
}
