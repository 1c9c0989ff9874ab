//! The one registry of coded concepts: every code the node writes, into a SEG, SR or
//! secondary capture, an HL7 message, a FHIR resource or a webhook body, by name, with the
//! coding schemes they come from and FHIR's URI for each scheme. The codes are the standards'
//! (pydicom's `sr.codedict`, highdicom, HL7's tables, FHIR's value sets) and each is listed in
//! docs/conformance.md: a code changed here changes that list. No other module spells a code.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use crate::domain::Priority;

/// A coded concept: its value, the scheme's designator and its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub value: &'static str,
    pub scheme: &'static str,
    pub meaning: &'static str,
}

impl Code {
    const fn new(value: &'static str, scheme: &'static str, meaning: &'static str) -> Code {
        Code { value, scheme, meaning }
    }

    /// The concept as an item of a Code Sequence.
    pub fn item(&self) -> InMemDicomObject {
        let text = |tag, vr, value: &str| DataElement::new(tag, vr, PrimitiveValue::from(value));
        InMemDicomObject::from_element_iter([
            text(tags::CODE_VALUE, VR::SH, self.value),
            text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, self.scheme),
            text(tags::CODE_MEANING, VR::LO, self.meaning),
        ])
    }

    /// FHIR's URI of the concept's coding scheme (a designator FHIR has no URI for stays as it is).
    pub fn fhir_system(&self) -> &'static str {
        match self.scheme {
            SCT => "http://snomed.info/sct",
            LN => "http://loinc.org",
            UCUM => "http://unitsofmeasure.org",
            DCM => "http://dicom.nema.org/resources/ontology/DCM",
            HL7_0203 => "http://terminology.hl7.org/CodeSystem/v2-0203",
            HL7_0074 => "http://terminology.hl7.org/CodeSystem/v2-0074",
            FHIR_OBSERVATION_CATEGORY => "http://terminology.hl7.org/CodeSystem/observation-category",
            FHIR_DATA_ABSENT_REASON => "http://terminology.hl7.org/CodeSystem/data-absent-reason",
            other => other,
        }
    }
}

/// Coding scheme designators.
pub const DCM: &str = "DCM";
pub const SCT: &str = "SCT";
pub const UCUM: &str = "UCUM";
pub const LN: &str = "LN";
pub const RFC5646: &str = "RFC5646";
pub const HL7_ACT_PRIORITY: &str = "HL7ActPriority";
/// HL7 v2 tables, named as HL7 table 0396 names them: 0485 (Extended Priority Codes, where S, A
/// and R live), 0203 (Identifier Type), 0074 (Diagnostic Service Section ID).
pub const HL7_0485: &str = "HL70485";
pub const HL7_0203: &str = "HL70203";
pub const HL7_0074: &str = "HL70074";
/// FHIR's own observation-category code system (no designator outside FHIR).
pub const FHIR_OBSERVATION_CATEGORY: &str = "observation-category";
/// FHIR's data-absent-reason code system: why an Observation has no value.
pub const FHIR_DATA_ABSENT_REASON: &str = "data-absent-reason";
/// The UMLS, as DICOM names it (PS3.16 Table 8-1).
pub const UMLS: &str = "UMLS";

/// A coding scheme the standard does not name, so an object that uses it declares it (Coding
/// Scheme Identification Sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodingScheme {
    pub designator: &'static str,
    pub uid: &'static str,
    pub registry: &'static str,
    pub name: &'static str,
    pub responsible_organization: &'static str,
}

/// HL7 v3 ActPriority, for the SR's priority.
pub const HL7_ACT_PRIORITY_SCHEME: CodingScheme = CodingScheme {
    designator: HL7_ACT_PRIORITY,
    uid: "2.16.840.1.113883.5.7",
    registry: "HL7",
    name: "HL7 v3 ActPriority",
    responsible_organization: "Health Level Seven International",
};

// The finding, in the SEG's segment and the SR's groups.
pub const PNEUMOTHORAX: Code = Code::new("36118008", SCT, "Pneumothorax");
pub const MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = Code::new("49755003", SCT, "Morphologically abnormal structure");
pub const PRESENT: Code = Code::new("52101004", SCT, "Present");
pub const ABSENT: Code = Code::new("272519000", SCT, "Absent");
/// The third value of CID 240 (Present-Absent): an image the node could not analyse.
pub const UNDETERMINED: Code = Code::new("373068000", SCT, "Undetermined");
/// TID 1501's free-text evaluation row: why an image was not analysed.
pub const QUALITATIVE_EVALUATIONS: Code = Code::new("C0034375", UMLS, "Qualitative Evaluations");
/// FHIR's data-absent-reason for an Observation the node did not make (the analysis was not
/// performed).
pub const NOT_PERFORMED: Code = Code::new("not-performed", FHIR_DATA_ABSENT_REASON, "Not Performed");

// Where an object comes from.
pub const ALGORITHM_FAMILY_AI: Code = Code::new("123110", DCM, "Artificial Intelligence");
pub const DERIVATION_SEGMENTATION: Code = Code::new("113076", DCM, "Segmentation");
pub const SOURCE_IMAGE_FOR_PROCESSING: Code = Code::new("121322", DCM, "Source image for image processing operation");

// The report (TID 1500) and its observation context.
pub const IMAGING_MEASUREMENT_REPORT: Code = Code::new("126000", DCM, "Imaging Measurement Report");
pub const IMAGING_MEASUREMENTS: Code = Code::new("126010", DCM, "Imaging Measurements");
pub const MEASUREMENT_GROUP: Code = Code::new("125007", DCM, "Measurement Group");
pub const LANGUAGE_OF_CONTENT: Code = Code::new("121049", DCM, "Language of Content Item and Descendants");
pub const ENGLISH_US: Code = Code::new("en-US", RFC5646, "English (United States)");
pub const OBSERVER_TYPE: Code = Code::new("121005", DCM, "Observer Type");
pub const DEVICE: Code = Code::new("121007", DCM, "Device");
pub const DEVICE_OBSERVER_UID: Code = Code::new("121012", DCM, "Device Observer UID");
pub const DEVICE_OBSERVER_NAME: Code = Code::new("121013", DCM, "Device Observer Name");
pub const DEVICE_OBSERVER_MANUFACTURER: Code = Code::new("121014", DCM, "Device Observer Manufacturer");
pub const DEVICE_OBSERVER_MODEL_NAME: Code = Code::new("121015", DCM, "Device Observer Model Name");
pub const PROCEDURE_REPORTED: Code = Code::new("121058", DCM, "Procedure reported");
pub const XR_UNSPECIFIED_BODY_REGION: Code = Code::new("43468-8", LN, "XR unspecified body region");

// A measurement group (TID 1501, TID 1410) and its algorithm (TID 4019).
pub const TRACKING_IDENTIFIER: Code = Code::new("112039", DCM, "Tracking Identifier");
pub const TRACKING_UNIQUE_IDENTIFIER: Code = Code::new("112040", DCM, "Tracking Unique Identifier");
pub const ALGORITHM_NAME: Code = Code::new("111001", DCM, "Algorithm Name");
pub const ALGORITHM_VERSION: Code = Code::new("111003", DCM, "Algorithm Version");
pub const ALGORITHM_PARAMETERS: Code = Code::new("111002", DCM, "Algorithm Parameters");
pub const PROBABILITY: Code = Code::new("122157", DCM, "Probability");
pub const NO_UNITS: Code = Code::new("1", UCUM, "no units");
pub const PRIORITY: Code = Code::new("260870009", SCT, "Priority (attribute)");
pub const SOURCE_OF_MEASUREMENT: Code = Code::new("121112", DCM, "Source of Measurement");
pub const FINDING: Code = Code::new("121071", DCM, "Finding");
pub const REFERENCED_SEGMENTATION_FRAME: Code = Code::new("121214", DCM, "Referenced Segmentation Frame");
pub const SOURCE_IMAGE_FOR_SEGMENTATION: Code = Code::new("121233", DCM, "Source Image for Segmentation");

// What the messages to the RIS and EHR say beside the objects' codes.
/// The area measured (DICOM CID 7472 "Area Measurements").
pub const AREA: Code = Code::new("42798000", SCT, "Area");
pub const STUDY: Code = Code::new("113014", DCM, "Study");
pub const SR_DOCUMENT: Code = Code::new("SR", DCM, "Structured Report Document");
pub const SEGMENTATION: Code = Code::new("SEG", DCM, "Segmentation");
/// The FHIR DiagnosticReport's code: LOINC's generic imaging study (the node does not know the views).
pub const DIAGNOSTIC_IMAGING_STUDY: Code = Code::new("18748-4", LN, "Diagnostic imaging study");
pub const SQUARE_MILLIMETRE: Code = Code::new("mm2", UCUM, "mm2");
pub const IMAGING: Code = Code::new("imaging", FHIR_OBSERVATION_CATEGORY, "Imaging");
pub const RADIOLOGY: Code = Code::new("RAD", HL7_0074, "Radiology");
pub const ACCESSION_ID: Code = Code::new("ACSN", HL7_0203, "Accession ID");

// HL7 ActPriority.
pub const STAT: Code = Code::new("S", HL7_ACT_PRIORITY, "stat");
pub const ASAP: Code = Code::new("A", HL7_ACT_PRIORITY, "ASAP");
pub const ROUTINE: Code = Code::new("R", HL7_ACT_PRIORITY, "routine");

/// The HL7 ActPriority code of a priority (docs/conformance.md: urgent = S, review = A, routine = R).
pub fn act_priority(priority: Priority) -> Code {
    match priority {
        Priority::Urgent => STAT,
        Priority::Review => ASAP,
        Priority::Routine => ROUTINE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_map_to_hl7_act_priority() {
        assert_eq!(act_priority(Priority::Urgent).value, "S");
        assert_eq!(act_priority(Priority::Review).value, "A");
        assert_eq!(act_priority(Priority::Routine).value, "R");
    }

    #[test]
    fn a_code_is_a_code_sequence_item() {
        let item = PNEUMOTHORAX.item();
        let get = |tag| item.element(tag).unwrap().to_str().unwrap().trim_end_matches([' ', '\0']).to_string();
        assert_eq!(get(tags::CODE_VALUE), "36118008");
        assert_eq!(get(tags::CODING_SCHEME_DESIGNATOR), "SCT");
        assert_eq!(get(tags::CODE_MEANING), "Pneumothorax");
    }
}
