//! The FHIR R4 (4.0.1) form of a [`StudyMessage`]: one `transaction` Bundle, POSTed to the
//! server's base URL by `outbox::http`. This module only builds JSON; it never does I/O.
//!
//! What the Bundle holds (every entry a conditional create, see below):
//!
//! - **Patient**, when the study has a Patient ID: identifier (system from the Issuer of Patient
//!   ID when it is an OID or a URI), name, birth date, gender. Matched on its identifier, so a
//!   patient the EHR already has is referenced, not duplicated or overwritten.
//! - **Device**: the node and its models (name, version), and the models' notice. Its identifier
//!   is derived from the models, so a server keeps one Device per model set.
//! - **Observation** (preliminary, category imaging): SNOMED CT 36118008 Pneumothorax, present
//!   or absent, the probability and the area in mm² as components, the Device, the source study,
//!   the SR and SEG the node made, and the notice.
//! - **DiagnosticReport** (preliminary): the ImagingStudy by its Study Instance UID and the order
//!   (ServiceRequest) by its accession number, both as logical references, the Observation as
//!   its result, and a one-line conclusion.
//! - **Task** (status requested, intent order): the worklist item. FHIR has no priority element
//!   on a DiagnosticReport or an Observation; a Task does (`request-priority`: routine, urgent,
//!   asap, stat, mapped by `FhirSettings`), with the DiagnosticReport as its focus, so a worklist
//!   that reads Tasks sorts by it.
//!
//! **Resends do not duplicate.** Every `fullUrl` and every resource identifier is a UUID derived
//! from the message's control ID (or, for the Patient and the Device, from what identifies them),
//! and every entry is `POST` with `ifNoneExist` on that identifier (a conditional create): a
//! server that already has it answers 200 with the existing resource instead of creating a second
//! one. Nothing is ever updated (`PUT`) or deleted: a higher priority is a new message with new
//! resources and a new Task, so an old message sent late (a `retry`) cannot lower what a newer
//! one said. The result on the server: one Observation, DiagnosticReport and Task per study and
//! priority the study reached.

use serde_json::{json, Map, Value};

use crate::codes::{self, Code};
use crate::config::FhirSettings;
use crate::domain::{ModelFacts, StudyMessage};

/// FHIR's JSON media type, for Content-Type and Accept.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The identifier system whose values are URIs (here `urn:uuid:`): FHIR's own convention.
pub const URI_SYSTEM: &str = "urn:ietf:rfc:3986";
/// The identifier system of DICOM UIDs, written `urn:oid:<uid>`.
pub const DICOM_UID_SYSTEM: &str = "urn:dicom:uid";

/// The transaction Bundle for `msg`, with its priority mapped by `settings`.
pub fn bundle(msg: &StudyMessage, settings: &FhirSettings) -> Value {
    let ids = Ids::new(msg);
    let mut entries = Vec::new();
    let patient = patient(msg, &ids);
    let subject = patient.as_ref().map(|p| reference(&p.full_url));
    entries.extend(patient);
    entries.push(device(msg, &ids));
    entries.push(observation(msg, &ids, subject.as_ref()));
    entries.push(diagnostic_report(msg, &ids, subject.as_ref()));
    entries.push(task(msg, &ids, subject.as_ref(), msg.priority().map(|p| settings.request_priority(p))));

    let mut bundle = json!({
        "resourceType": "Bundle",
        "identifier": uri_identifier(&ids.bundle),
        "type": "transaction",
        "entry": entries.into_iter().map(Entry::into_json).collect::<Vec<_>>(),
    });
    if let Some(timestamp) = super::rfc3339_ms(msg.created_at_ms) {
        bundle["timestamp"] = timestamp.into();
    }
    bundle
}

/// The headers a Bundle is POSTed with: FHIR JSON both ways, a minimal answer (the outbox needs
/// only the status), and the control ID as the request ID for the server's logs.
pub fn headers(msg: &StudyMessage) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", FHIR_JSON.to_owned()),
        ("Accept", FHIR_JSON.to_owned()),
        ("Prefer", "return=minimal".to_owned()),
        ("X-Request-Id", msg.control_id.clone()),
    ]
}

/// The `urn:uuid:` names of one message's resources.
struct Ids {
    bundle: String,
    patient: String,
    device: String,
    observation: String,
    report: String,
    task: String,
}

impl Ids {
    fn new(msg: &StudyMessage) -> Ids {
        let of = |role: &str| urn_uuid(&["message", &msg.control_id, role]);
        Ids {
            bundle: of("Bundle"),
            patient: of("Patient"),
            device: of("Device"),
            observation: of("Observation"),
            report: of("DiagnosticReport"),
            task: of("Task"),
        }
    }
}

/// A name-based UUID (RFC 9562 version 8, SHA-256 of the parts) as `urn:uuid:...`: the same
/// parts give the same UUID on every node and every resend.
pub fn urn_uuid(parts: &[&str]) -> String {
    let mut input = b"pneumotriage-fhir".to_vec();
    for part in parts {
        // A separator that cannot occur in a part keeps ("ab","c") apart from ("a","bc").
        input.push(0);
        input.extend_from_slice(part.as_bytes());
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10
    let h = super::hex(&b);
    format!("urn:uuid:{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// One `Bundle.entry`: a conditional create of `resource`.
struct Entry {
    full_url: String,
    resource: Value,
    /// The search that finds the resource if the server already has it.
    if_none_exist: String,
}

impl Entry {
    /// An entry whose resource is found again by its `urn:ietf:rfc:3986` identifier `id`.
    fn by_uri_identifier(full_url: &str, id: &str, resource: Value) -> Entry {
        Entry { full_url: full_url.to_owned(), if_none_exist: identifier_search(Some(URI_SYSTEM), id), resource }
    }

    fn into_json(self) -> Value {
        let resource_type = self.resource["resourceType"].as_str().unwrap_or_default().to_owned();
        json!({
            "fullUrl": self.full_url,
            "resource": self.resource,
            "request": { "method": "POST", "url": resource_type, "ifNoneExist": self.if_none_exist },
        })
    }
}

fn patient(msg: &StudyMessage, ids: &Ids) -> Option<Entry> {
    let p = &msg.patient;
    // Without a Patient ID there is nothing to match an existing patient on: referencing no
    // patient is better than creating one the EHR cannot merge.
    let id = p.id.as_deref().map(str::trim).filter(|id| !id.is_empty())?;
    let issuer = p.issuer.as_deref().map(str::trim).filter(|i| !i.is_empty());
    let system = issuer.and_then(identifier_system);
    let mut identifier = json!({ "value": id });
    if let Some(system) = &system {
        identifier["system"] = system.as_str().into();
    } else if let Some(issuer) = issuer {
        // A local namespace name ("HOSP") is no URI: FHIR keeps it as the assigner's name.
        identifier["assigner"] = json!({ "display": issuer });
    }
    let mut resource = json!({ "resourceType": "Patient", "identifier": [identifier] });
    if let Some(name) = p.name.as_deref().and_then(human_name) {
        resource["name"] = json!([name]);
    }
    if let Some(gender) = p.sex.as_deref().map(gender) {
        resource["gender"] = gender.into();
    }
    if let Some(date) = p.birth_date.as_deref().and_then(fhir_date) {
        resource["birthDate"] = date.into();
    }
    Some(Entry { full_url: ids.patient.clone(), if_none_exist: identifier_search(system.as_deref(), id), resource })
}

fn device(msg: &StudyMessage, ids: &Ids) -> Entry {
    // The same models make the same Device, whatever the message.
    let mut parts = vec!["device"];
    for model in &msg.models {
        parts.extend([model.name.as_str(), model.version.as_str()]);
    }
    let identity = urn_uuid(&parts);
    let mut names = vec![json!({ "name": "pneumotriage", "type": "user-friendly-name" })];
    names.extend(msg.models.iter().map(|m| json!({ "name": m.name, "type": "model-name" })));
    let mut resource = json!({
        "resourceType": "Device",
        "identifier": [uri_identifier(&identity)],
        "status": "active",
        "deviceName": names,
        "type": codeable(&codes::ALGORITHM_FAMILY_AI),
    });
    if !msg.models.is_empty() {
        resource["version"] = msg.models.iter().map(model_version).collect();
    }
    if !msg.notice.is_empty() {
        resource["note"] = json!([{ "text": msg.notice }]);
    }
    Entry::by_uri_identifier(&ids.device, &identity, resource)
}

fn model_version(model: &ModelFacts) -> Value {
    json!({ "type": { "text": model.name }, "value": model.version })
}

/// The finding: a value, or for a study the node did not analyse, status `cancelled` (FHIR:
/// "the observation is unavailable because the measurement was not started or not completed")
/// and a data-absent reason instead of a value.
fn observation(msg: &StudyMessage, ids: &Ids, subject: Option<&Value>) -> Entry {
    if let Some(reason) = msg.not_analysed() {
        let mut notes = vec![json!({ "text": format!("Not analysed: {reason}") })];
        if !msg.notice.is_empty() {
            notes.push(json!({ "text": msg.notice }));
        }
        notes.extend(objects_note(msg).map(|objects| json!({ "text": objects })));
        let mut resource = json!({
            "resourceType": "Observation",
            "identifier": [uri_identifier(&ids.observation)],
            "status": "cancelled",
            "category": [{ "coding": [coding(&codes::IMAGING)] }],
            "code": codeable(&codes::PNEUMOTHORAX),
            "dataAbsentReason": codeable(&codes::NOT_PERFORMED),
            "device": reference(&ids.device),
            "derivedFrom": [imaging_study(msg)],
            "note": notes,
        });
        set_optional(&mut resource, "subject", subject.cloned());
        set_optional(&mut resource, "issued", super::rfc3339_ms(msg.created_at_ms).map(Value::from));
        return Entry::by_uri_identifier(&ids.observation, &ids.observation, resource);
    }
    let f = &msg.finding;
    let mut components = vec![json!({
        "code": codeable(&codes::PROBABILITY),
        "valueQuantity": quantity(f.probability, "1", &codes::NO_UNITS),
    })];
    if let Some(area) = f.area_mm2 {
        components.push(json!({
            "code": { "coding": [coding(&codes::AREA)], "text": "Pneumothorax area" },
            "valueQuantity": quantity(area, "mm²", &codes::SQUARE_MILLIMETRE),
        }));
    }
    let mut notes = Vec::new();
    if !msg.notice.is_empty() {
        notes.push(json!({ "text": msg.notice }));
    }
    if let Some(objects) = objects_note(msg) {
        notes.push(json!({ "text": objects }));
    }
    let mut resource = json!({
        "resourceType": "Observation",
        "identifier": [uri_identifier(&ids.observation)],
        "status": "preliminary",
        "category": [{ "coding": [coding(&codes::IMAGING)] }],
        "code": codeable(&codes::PNEUMOTHORAX),
        "valueCodeableConcept": codeable(if f.present { &codes::PRESENT } else { &codes::ABSENT }),
        "component": components,
        "device": reference(&ids.device),
        "derivedFrom": [imaging_study(msg)],
    });
    set_optional(&mut resource, "subject", subject.cloned());
    set_optional(&mut resource, "effectiveDateTime", super::rfc3339_ms(msg.study.observed_at_ms).map(Value::from));
    set_optional(&mut resource, "issued", super::rfc3339_ms(msg.created_at_ms).map(Value::from));
    if !notes.is_empty() {
        resource["note"] = notes.into();
    }
    Entry::by_uri_identifier(&ids.observation, &ids.observation, resource)
}

/// The DICOM objects the node made, for a reader to fetch from the PACS (FHIR R4 has no
/// reference type for a single DICOM instance).
fn objects_note(msg: &StudyMessage) -> Option<String> {
    if msg.objects.is_empty() {
        return None;
    }
    let list: Vec<String> = msg
        .objects
        .iter()
        .map(|o| {
            format!("{} urn:oid:{} (SOP class {})", o.kind.as_str().to_uppercase(), o.sop_instance_uid, o.sop_class_uid)
        })
        .collect();
    Some(format!("DICOM objects made by the node: {}", list.join("; ")))
}

fn diagnostic_report(msg: &StudyMessage, ids: &Ids, subject: Option<&Value>) -> Entry {
    let mut identifiers = vec![uri_identifier(&ids.report)];
    identifiers.extend(accession(msg));
    let mut code = json!({ "coding": [coding(&codes::DIAGNOSTIC_IMAGING_STUDY)] });
    if let Some(description) = msg.study.description.as_deref().filter(|d| !d.trim().is_empty()) {
        code["text"] = description.trim().into();
    }
    // a study the node did not analyse: cancelled ("the report is unavailable because the
    // measurement was not started or not completed"), never a negative
    let status = if msg.not_analysed().is_some() { "cancelled" } else { "preliminary" };
    let mut resource = json!({
        "resourceType": "DiagnosticReport",
        "identifier": identifiers,
        "status": status,
        "category": [{ "coding": [coding(&codes::RADIOLOGY)] }],
        "code": code,
        "result": [reference(&ids.observation)],
        "imagingStudy": [imaging_study(msg)],
        "conclusion": conclusion(msg),
    });
    if let Some(order) = order(msg) {
        resource["basedOn"] = json!([order]);
    }
    if msg.finding.present {
        resource["conclusionCode"] = json!([codeable(&codes::PNEUMOTHORAX)]);
    }
    set_optional(&mut resource, "subject", subject.cloned());
    set_optional(&mut resource, "effectiveDateTime", super::rfc3339_ms(msg.study.observed_at_ms).map(Value::from));
    set_optional(&mut resource, "issued", super::rfc3339_ms(msg.created_at_ms).map(Value::from));
    Entry::by_uri_identifier(&ids.report, &ids.report, resource)
}

/// One line for a reader who sees only text.
fn conclusion(msg: &StudyMessage) -> String {
    let f = &msg.finding;
    let Some(priority) = msg.priority() else {
        let mut text = format!(
            "AI triage not done: {}. Read the study as if it had not been triaged.",
            msg.not_analysed().unwrap_or("not analysed")
        );
        if !msg.notice.is_empty() {
            text.push(' ');
            text.push_str(&msg.notice);
        }
        return text;
    };
    let mut text = if f.present {
        format!("AI triage (preliminary): pneumothorax suspected, probability {:.2}", f.probability)
    } else {
        format!("AI triage (preliminary): no pneumothorax found, probability {:.2}", f.probability)
    };
    if let Some(area) = f.area_mm2 {
        text.push_str(&format!(", area {area:.0} mm²"));
    }
    text.push_str(&format!(". Worklist priority: {priority}."));
    if !msg.notice.is_empty() {
        text.push(' ');
        text.push_str(&msg.notice);
    }
    text
}

/// The worklist item: read the study, at the priority the node set; a study the node did not
/// analyse gets no priority from it (a reader's worklist keeps its own), only its reason.
fn task(msg: &StudyMessage, ids: &Ids, subject: Option<&Value>, priority: Option<&str>) -> Entry {
    let description = match priority {
        Some(priority) => {
            format!("Read study {} with priority {priority}: {}", msg.study.study_instance_uid, conclusion(msg))
        }
        None => format!("Read study {}: {}", msg.study.study_instance_uid, conclusion(msg)),
    };
    let mut resource = json!({
        "resourceType": "Task",
        "identifier": [uri_identifier(&ids.task)],
        "status": "requested",
        "intent": "order",
        "code": { "text": "Review AI triage result" },
        "description": description,
        "focus": reference(&ids.report),
        "requester": reference(&ids.device),
    });
    set_optional(&mut resource, "priority", priority.map(Value::from));
    if let Some(order) = order(msg) {
        resource["basedOn"] = json!([order]);
    }
    if msg.finding.present {
        resource["reasonCode"] = codeable(&codes::PNEUMOTHORAX);
    }
    set_optional(&mut resource, "for", subject.cloned());
    set_optional(&mut resource, "authoredOn", super::rfc3339_ms(msg.created_at_ms).map(Value::from));
    Entry::by_uri_identifier(&ids.task, &ids.task, resource)
}

/// The accession number as an identifier (type ACSN).
fn accession(msg: &StudyMessage) -> Option<Value> {
    let number = msg.study.accession_number.as_deref().map(str::trim).filter(|a| !a.is_empty())?;
    Some(json!({
        "type": { "coding": [coding(&codes::ACCESSION_ID)] },
        "value": number,
    }))
}

/// The order at the RIS, as a logical reference by its accession number.
fn order(msg: &StudyMessage) -> Option<Value> {
    accession(msg).map(|identifier| json!({ "type": "ServiceRequest", "identifier": identifier }))
}

/// The source study, as a logical reference by its Study Instance UID.
fn imaging_study(msg: &StudyMessage) -> Value {
    json!({
        "type": "ImagingStudy",
        "identifier": { "system": DICOM_UID_SYSTEM, "value": format!("urn:oid:{}", msg.study.study_instance_uid) },
    })
}

fn reference(full_url: &str) -> Value {
    json!({ "reference": full_url })
}

fn uri_identifier(uri: &str) -> Value {
    json!({ "system": URI_SYSTEM, "value": uri })
}

fn set_optional(resource: &mut Value, key: &str, value: Option<Value>) {
    if let (Some(value), Some(object)) = (value, resource.as_object_mut()) {
        object.insert(key.to_owned(), value);
    }
}

/// A `codes` concept as a FHIR Coding.
pub(crate) fn coding(code: &Code) -> Value {
    json!({ "system": code.fhir_system(), "code": code.value, "display": code.meaning })
}

fn codeable(code: &Code) -> Value {
    json!({ "coding": [coding(code)], "text": code.meaning })
}

/// A Quantity of `unit` (as people read it), coded by a UCUM concept.
fn quantity(value: f64, unit: &str, code: &Code) -> Value {
    json!({ "value": value, "unit": unit, "system": code.fhir_system(), "code": code.value })
}

/// The identifier system of an Issuer of Patient ID: an OID becomes `urn:oid:`, a URI stays;
/// a local name has none.
fn identifier_system(issuer: &str) -> Option<String> {
    let is_oid =
        issuer.split('.').all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit())) && issuer.contains('.');
    if is_oid {
        Some(format!("urn:oid:{issuer}"))
    } else if issuer.contains(':') && !issuer.contains(char::is_whitespace) {
        Some(issuer.to_owned())
    } else {
        None
    }
}

/// The `ifNoneExist` search on an identifier, escaped for FHIR search (`\ , $ |`) and then for
/// the URL query. Without a system, `|value`: an identifier without a system, not the value in
/// any system (another clinic's MRN that happens to be the same number is someone else).
fn identifier_search(system: Option<&str>, value: &str) -> String {
    let escape = |s: &str| {
        let mut out = String::new();
        for c in s.chars() {
            if matches!(c, '\\' | ',' | '$' | '|') {
                out.push('\\');
            }
            out.push(c);
        }
        percent_encode(&out)
    };
    match system {
        Some(system) => format!("identifier={}|{}", escape(system), escape(value)),
        None => format!("identifier=|{}", escape(value)),
    }
}

/// Percent-encoding of everything but RFC 3986's unreserved characters and `:` `/` (kept for
/// readable URNs).
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A DICOM PN (`Family^Given^Middle^Prefix^Suffix`, alphabetic group) as a HumanName.
fn human_name(pn: &str) -> Option<Value> {
    // `=` separates the alphabetic, ideographic and phonetic groups; the first is the one a
    // worklist shows.
    let alphabetic = pn.split('=').next().unwrap_or_default();
    let part = |i: usize| alphabetic.split('^').nth(i).map(str::trim).filter(|s| !s.is_empty());
    let mut name = Map::new();
    if let Some(family) = part(0) {
        name.insert("family".into(), family.into());
    }
    let given: Vec<&str> = [part(1), part(2)].into_iter().flatten().collect();
    if !given.is_empty() {
        name.insert("given".into(), given.into());
    }
    if let Some(prefix) = part(3) {
        name.insert("prefix".into(), json!([prefix]));
    }
    if let Some(suffix) = part(4) {
        name.insert("suffix".into(), json!([suffix]));
    }
    if name.is_empty() {
        return None;
    }
    name.insert("use".into(), "official".into());
    Some(Value::Object(name))
}

/// A DICOM DA (`YYYYMMDD`) as a FHIR date; none when it is not a plausible date.
fn fhir_date(da: &str) -> Option<String> {
    let da = da.trim();
    if da.len() != 8 || !da.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, month, day) = (&da[0..4], &da[4..6], &da[6..8]);
    let in_range = |s: &str, max: u32| s.parse::<u32>().is_ok_and(|v| (1..=max).contains(&v));
    (in_range(month, 12) && in_range(day, 31)).then(|| format!("{year}-{month}-{day}"))
}

/// A DICOM Patient's Sex (M, F, O) as FHIR's administrative gender.
fn gender(sex: &str) -> &'static str {
    match sex.trim() {
        "M" => "male",
        "F" => "female",
        "O" => "other",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::domain::Priority;
    use crate::domain::{FindingFacts, PatientFacts};

    fn entries(bundle: &Value) -> &Vec<Value> {
        bundle["entry"].as_array().expect("a Bundle has entries")
    }

    fn resource<'a>(bundle: &'a Value, kind: &str) -> &'a Value {
        entries(bundle)
            .iter()
            .map(|e| &e["resource"])
            .find(|r| r["resourceType"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {bundle:#}"))
    }

    /// Every `reference` anywhere under `value`.
    fn references(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("reference", Value::String(r)) => out.push(r.clone()),
                        _ => references(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, out)),
            _ => {}
        }
    }

    fn routine_negative() -> StudyMessage {
        let mut msg = StudyMessage::example();
        msg.triage = crate::domain::Triage::Priority(Priority::Routine);
        msg.finding = FindingFacts { present: false, probability: 0.04, area_mm2: None };
        msg.study.accession_number = None;
        msg.patient = PatientFacts::default();
        msg.objects.clear();
        msg
    }

    #[test]
    fn the_bundle_is_a_transaction_of_conditional_creates() {
        let bundle = bundle(&StudyMessage::example(), &FhirSettings::default());
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "transaction");
        let kinds: Vec<&str> =
            entries(&bundle).iter().map(|e| e["resource"]["resourceType"].as_str().unwrap_or_default()).collect();
        assert_eq!(kinds, ["Patient", "Device", "Observation", "DiagnosticReport", "Task"]);
        for entry in entries(&bundle) {
            assert!(entry["fullUrl"].as_str().is_some_and(|u| u.starts_with("urn:uuid:")), "{entry:#}");
            assert_eq!(entry["request"]["method"], "POST");
            assert_eq!(entry["request"]["url"], entry["resource"]["resourceType"]);
            assert!(entry["request"]["ifNoneExist"].as_str().is_some_and(|q| q.starts_with("identifier=")));
        }
    }

    #[test]
    fn every_reference_resolves_within_the_bundle() {
        for msg in [StudyMessage::example(), routine_negative()] {
            let bundle = bundle(&msg, &FhirSettings::default());
            let full_urls: HashSet<&str> = entries(&bundle).iter().filter_map(|e| e["fullUrl"].as_str()).collect();
            assert_eq!(full_urls.len(), entries(&bundle).len(), "fullUrls are unique");
            let mut refs = Vec::new();
            references(&bundle, &mut refs);
            assert!(!refs.is_empty());
            for r in refs {
                assert!(full_urls.contains(r.as_str()), "{r} is not in the Bundle");
            }
        }
    }

    #[test]
    fn a_resend_is_the_same_bundle_and_another_message_is_not() {
        let settings = FhirSettings::default();
        let msg = StudyMessage::example();
        assert_eq!(bundle(&msg, &settings), bundle(&msg, &settings));
        let mut other = msg.clone();
        other.control_id = "PT0000000000000000001".into();
        let (a, b) = (bundle(&msg, &settings), bundle(&other, &settings));
        assert_ne!(a["entry"][2]["fullUrl"], b["entry"][2]["fullUrl"]);
        // The Patient and the Device are the same patient and models: found again by identifier.
        assert_eq!(a["entry"][0]["request"], b["entry"][0]["request"]);
        assert_eq!(a["entry"][1]["request"], b["entry"][1]["request"]);
    }

    #[test]
    fn uuids_are_version_8_and_well_formed() {
        let u = urn_uuid(&["message", "X", "Task"]);
        let hex = u.strip_prefix("urn:uuid:").expect("urn:uuid:");
        let groups: Vec<usize> = hex.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert_eq!(&hex[14..15], "8");
        assert!(matches!(&hex[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(urn_uuid(&["ab", "c"]), urn_uuid(&["a", "bc"]));
    }

    #[test]
    fn the_observation_codes_the_finding_and_its_measurements() {
        let bundle = bundle(&StudyMessage::example(), &FhirSettings::default());
        let obs = resource(&bundle, "Observation");
        assert_eq!(obs["status"], "preliminary");
        assert_eq!(obs["category"][0]["coding"][0]["code"], "imaging");
        assert_eq!(
            obs["code"]["coding"][0],
            json!({ "system": "http://snomed.info/sct", "code": "36118008", "display": "Pneumothorax" })
        );
        assert_eq!(obs["valueCodeableConcept"]["coding"][0]["code"], "52101004");
        assert_eq!(
            obs["component"][0]["valueQuantity"],
            json!({ "value": 0.93, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1" })
        );
        assert_eq!(obs["component"][1]["valueQuantity"]["value"], 1234.5);
        assert_eq!(obs["component"][1]["valueQuantity"]["code"], "mm2");
        assert_eq!(obs["effectiveDateTime"], "2025-11-24T16:00:00.000Z");
        assert!(obs["note"][0]["text"].as_str().is_some_and(|t| t.contains("not for diagnosis")));
        assert!(obs["note"][1]["text"].as_str().is_some_and(|t| t.contains("urn:oid:1.2.826.0.1.3680043.10.1447.9.3")));
    }

    #[test]
    fn a_negative_without_area_is_absent_with_one_component() {
        let bundle = bundle(&routine_negative(), &FhirSettings::default());
        let obs = resource(&bundle, "Observation");
        assert_eq!(obs["valueCodeableConcept"]["coding"][0]["code"], "272519000");
        assert_eq!(obs["component"].as_array().map(Vec::len), Some(1));
        assert!(obs.get("subject").is_none(), "no Patient ID, no patient");
        assert!(entries(&bundle).iter().all(|e| e["resource"]["resourceType"] != "Patient"));
        let report = resource(&bundle, "DiagnosticReport");
        assert!(report.get("basedOn").is_none() && report.get("conclusionCode").is_none());
        assert_eq!(resource(&bundle, "Task")["priority"], "routine");
    }

    #[test]
    fn the_report_points_at_the_study_and_the_order() {
        let bundle = bundle(&StudyMessage::example(), &FhirSettings::default());
        let report = resource(&bundle, "DiagnosticReport");
        assert_eq!(report["status"], "preliminary");
        assert_eq!(report["code"]["coding"][0]["code"], "18748-4");
        assert_eq!(
            report["imagingStudy"][0]["identifier"],
            json!({ "system": "urn:dicom:uid", "value": "urn:oid:1.2.826.0.1.3680043.10.1447.9.1" })
        );
        assert_eq!(report["basedOn"][0]["type"], "ServiceRequest");
        assert_eq!(report["basedOn"][0]["identifier"]["value"], "ACC0001");
        assert_eq!(report["identifier"][1]["type"]["coding"][0]["code"], "ACSN");
        assert_eq!(report["result"][0]["reference"], bundle["entry"][2]["fullUrl"]);
    }

    #[test]
    fn the_task_carries_the_mapped_priority() {
        let settings = FhirSettings { urgent_priority: "urgent".into(), ..FhirSettings::default() };
        let msg = StudyMessage::example();
        assert_eq!(resource(&bundle(&msg, &FhirSettings::default()), "Task")["priority"], "stat");
        let bundle = bundle(&msg, &settings);
        let task = resource(&bundle, "Task");
        assert_eq!(task["priority"], "urgent");
        assert_eq!((task["status"].as_str(), task["intent"].as_str()), (Some("requested"), Some("order")));
        assert_eq!(task["focus"]["reference"], bundle["entry"][3]["fullUrl"]);
    }

    #[test]
    fn the_patient_comes_from_the_dicom_patient_module() {
        let bundle = bundle(&StudyMessage::example(), &FhirSettings::default());
        let patient = resource(&bundle, "Patient");
        assert_eq!(patient["name"][0]["family"], "Müller");
        assert_eq!(patient["name"][0]["given"], json!(["Jörg"]));
        assert_eq!(patient["birthDate"], "1970-01-01");
        assert_eq!(patient["gender"], "male");
        assert_eq!(patient["identifier"][0], json!({ "value": "PAT001", "assigner": { "display": "HOSP" } }));
        // no system: only an identifier without one matches, never PAT001 of another system
        assert_eq!(bundle["entry"][0]["request"]["ifNoneExist"], "identifier=|PAT001");
    }

    #[test]
    fn an_oid_issuer_is_the_identifier_system_and_the_search_is_escaped() {
        let mut msg = StudyMessage::example();
        msg.patient.issuer = Some("1.2.3.4".into());
        msg.patient.id = Some("A,B|C&D".into());
        let bundle = bundle(&msg, &FhirSettings::default());
        assert_eq!(resource(&bundle, "Patient")["identifier"][0]["system"], "urn:oid:1.2.3.4");
        assert_eq!(bundle["entry"][0]["request"]["ifNoneExist"], "identifier=urn:oid:1.2.3.4|A%5C%2CB%5C%7CC%26D");
    }

    #[test]
    fn person_names_dates_and_sexes_are_mapped_or_left_out() {
        assert_eq!(
            human_name("Doe^John^Q^Dr^Jr=ドウ^ジョン"),
            Some(
                json!({ "family": "Doe", "given": ["John", "Q"], "prefix": ["Dr"], "suffix": ["Jr"], "use": "official" })
            )
        );
        assert_eq!(human_name("^^^"), None);
        assert_eq!(fhir_date("19700101").as_deref(), Some("1970-01-01"));
        assert_eq!(fhir_date("19701301"), None);
        assert_eq!(fhir_date("1970-01-01"), None);
        assert_eq!((gender("F"), gender("O"), gender("X")), ("female", "other", "unknown"));
        assert_eq!(identifier_system("http://hospital.example/mrn").as_deref(), Some("http://hospital.example/mrn"));
        assert_eq!(identifier_system("HOSP"), None);
    }
}
