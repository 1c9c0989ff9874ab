//! HL7 v2.5.1: the ORU^R01 that tells a RIS or reporting worklist a study's triage priority and
//! finding (its transport, MLLP, is the outbox's: `outbox::mllp`).
//!
//! The message is made from one [`StudyMessage`] by one small function per segment; every value
//! that comes from outside (DICOM attributes, settings, the models' notice) goes through
//! [`escape`], so no patient name or accession number can change the message's structure.
//!
//! What a worklist manager maps (docs/conformance.md, HL7 section): the priority is in OBR-27
//! (TQ.6) and TQ1-9 (table 0485: S, A, R, the SR's HL7 ActPriority codes) and again as a coded
//! observation (`260870009^Priority^SCT`, the SR's concept) so that a site that maps OBX values
//! only needs no special case.

use crate::codes::{self, Code};
use crate::config::Hl7Settings;
use crate::domain::StudyMessage;
use crate::domain::{ObjectKind, Priority};

/// The procedure when the study has no description (the SR's "Procedure reported").
const PROCEDURE_FALLBACK: Code = codes::XR_UNSPECIFIED_BODY_REGION;

// ---------------------------------------------------------------------------------------------
// Encoding

/// `text` as HL7 v2 data: the delimiters `| ^ & ~ \` as `\F\ \S\ \T\ \R\ \E\`, and CR, LF and
/// every other control character as `\Xhh\` (a raw CR would end the segment, a raw VT or FS the
/// MLLP frame).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\E\\"),
            '|' => out.push_str("\\F\\"),
            '^' => out.push_str("\\S\\"),
            '&' => out.push_str("\\T\\"),
            '~' => out.push_str("\\R\\"),
            c if c.is_ascii_control() => out.push_str(&format!("\\X{:02X}\\", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`escape`] for the standard's sequences (`\F\ \S\ \T\ \R\ \E\ \Xhh..\`,
/// `\.br\` as CR); any other sequence (highlighting, character sets) is kept as written. Used
/// for the text of a receiver's errors and by the tests.
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('\\') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('\\') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let sequence = &after[..end];
        match sequence {
            "F" => out.push('|'),
            "S" => out.push('^'),
            "T" => out.push('&'),
            "R" => out.push('~'),
            "E" => out.push('\\'),
            ".br" => out.push('\r'),
            s => match s.strip_prefix('X').and_then(hex_bytes) {
                Some(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
                None => out.push_str(&rest[start..start + end + 2]),
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `hex` (an even number of hexadecimal digits) as bytes.
fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect()
}

/// Components (already escaped) joined by `^`, trailing empty ones left out.
fn components(parts: &[&str]) -> String {
    let used = parts.iter().rposition(|p| !p.is_empty()).map_or(0, |last| last + 1);
    parts[..used].join("^")
}

/// A coded element (CE/CWE): identifier, text, name of coding system.
fn coded(code: &Code) -> String {
    components(&[&escape(code.value), &escape(code.meaning), &escape(code.scheme)])
}

/// A segment from its numbered fields (already encoded), the numbers as in the standard;
/// fields not given are empty and trailing empty ones left out. MSH's numbering starts at 2
/// (MSH-1 is the field separator itself).
fn segment(name: &str, fields: &[(usize, String)]) -> String {
    let first = if name == "MSH" { 2 } else { 1 };
    let count =
        fields.iter().filter(|(_, v)| !v.is_empty()).map(|(n, _)| (n + 1).saturating_sub(first)).max().unwrap_or(0);
    let mut slots = vec![""; count];
    for (n, value) in fields {
        if let Some(slot) = n.checked_sub(first).and_then(|i| slots.get_mut(i)) {
            *slot = value.as_str();
        }
    }
    let mut out = String::from(name);
    for slot in slots {
        out.push('|');
        out.push_str(slot);
    }
    out
}

/// A time (ms since the epoch) as a DTM in UTC to the second: `YYYYMMDDHHMMSS+0000`.
fn dtm(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::domain::civil_from_days(days);
    format!("{year:04}{month:02}{day:02}{:02}{:02}{:02}+0000", of_day / 3600, of_day % 3600 / 60, of_day % 60)
}

/// A DICOM DA (`YYYYMMDD`) that is a valid HL7 date; anything else (empty, an old
/// `YYYY.MM.DD`, a range) is left out rather than sent as a date the receiver rejects.
fn date(da: Option<&str>) -> String {
    let Some(da) = da.map(str::trim) else { return String::new() };
    let valid = da.len() == 8
        && da.bytes().all(|b| b.is_ascii_digit())
        && matches!(da[4..6].parse::<u8>(), Ok(1..=12))
        && matches!(da[6..8].parse::<u8>(), Ok(1..=31));
    if valid {
        da.to_string()
    } else {
        String::new()
    }
}

/// An optional text, escaped (empty when absent).
fn text(value: Option<&str>) -> String {
    value.map(escape).unwrap_or_default()
}

/// The priority as a table 0485 code: the SR's HL7 ActPriority code (S, A, R), which 0485 shares.
fn priority_code(priority: Priority) -> Code {
    let meaning = match priority {
        Priority::Urgent => "Stat",
        Priority::Review => "ASAP",
        Priority::Routine => "Routine",
    };
    Code { value: codes::act_priority(priority).value, scheme: codes::HL7_0485, meaning }
}

// ---------------------------------------------------------------------------------------------
// The message

/// The ORU^R01 (v2.5.1, structure ORU_R01) for `msg`: MSH, PID, ORC, OBR, NTE (the notice), TQ1
/// (the priority), then the OBX observations; segments end with CR. The control ID is the
/// message's, so a resend is recognisable.
///
/// A "not analysed" message carries no priority (OBR-27 empty, no TQ1, no priority
/// observation); its finding observation says the result cannot be obtained (OBX-11 X, table
/// 0085, with no value) and a second NTE says why.
pub fn oru_r01(msg: &StudyMessage, settings: &Hl7Settings) -> String {
    let mut segments = vec![msh(msg, settings), pid(msg), orc(msg), obr(msg), nte(1, &msg.notice)];
    if let Some(reason) = msg.not_analysed() {
        segments.push(nte(2, &format!("Not analysed: {reason}")));
    }
    segments.extend(msg.priority().map(tq1));
    let observed = dtm(msg.study.observed_at_ms);
    segments.extend(observations(msg).iter().enumerate().map(|(i, o)| obx(i + 1, o, &observed)));
    let mut out = segments.join("\r");
    out.push('\r');
    out
}

fn msh(msg: &StudyMessage, settings: &Hl7Settings) -> String {
    segment(
        "MSH",
        &[
            (2, "^~\\&".into()),
            (3, escape(&settings.sending_application)),
            (4, escape(&settings.sending_facility)),
            (5, escape(&settings.receiving_application)),
            (6, escape(&settings.receiving_facility)),
            (7, dtm(msg.created_at_ms)),
            (9, "ORU^R01^ORU_R01".into()),
            (10, escape(&msg.control_id)),
            // Processing ID: production.
            (11, "P".into()),
            (12, "2.5.1".into()),
            (18, "UNICODE UTF-8".into()),
        ],
    )
}

fn pid(msg: &StudyMessage) -> String {
    let patient = &msg.patient;
    // PID-3 is required: a study without a Patient ID says so with HL7's null ("").
    let id = match patient.id.as_deref().map(str::trim).filter(|id| !id.is_empty()) {
        Some(id) => components(&[&escape(id), "", "", &text(patient.issuer.as_deref().map(str::trim))]),
        None => "\"\"".into(),
    };
    segment(
        "PID",
        &[
            (1, "1".into()),
            (3, id),
            (5, patient.name.as_deref().map(person_name).unwrap_or_default()),
            (7, date(patient.birth_date.as_deref())),
            (8, sex(patient.sex.as_deref()).into()),
        ],
    )
}

/// A DICOM PN as an XPN: the alphabetic group (before any `=`), `Family^Given^Middle^Prefix^
/// Suffix` to XPN's family, given, further given names, suffix, prefix.
fn person_name(pn: &str) -> String {
    let alphabetic = pn.split('=').next().unwrap_or_default();
    let mut parts = alphabetic.split('^').map(|p| escape(p.trim()));
    let mut next = || parts.next().unwrap_or_default();
    let (family, given, middle, prefix, suffix) = (next(), next(), next(), next(), next());
    components(&[&family, &given, &middle, &suffix, &prefix])
}

/// DICOM's M, F, O as HL7 table 0001; anything else is U (unknown).
fn sex(cs: Option<&str>) -> &'static str {
    match cs.map(str::trim) {
        Some("M") => "M",
        Some("F") => "F",
        Some("O") => "O",
        _ => "U",
    }
}

fn orc(msg: &StudyMessage) -> String {
    let accession = text(msg.study.accession_number.as_deref());
    // RE: observations to follow; the accession number is the order at the RIS.
    segment("ORC", &[(1, "RE".into()), (2, accession.clone()), (3, accession)])
}

fn obr(msg: &StudyMessage) -> String {
    let accession = text(msg.study.accession_number.as_deref());
    let procedure = match msg.study.description.as_deref().filter(|d| !d.trim().is_empty()) {
        Some(description) => components(&["", &escape(description)]),
        None => coded(&PROCEDURE_FALLBACK),
    };
    segment(
        "OBR",
        &[
            (1, "1".into()),
            (2, accession.clone()),
            (3, accession),
            (4, procedure),
            (7, dtm(msg.study.observed_at_ms)),
            // When the result status was set: when this message was made.
            (22, dtm(msg.created_at_ms)),
            // Diagnostic service section (table 0074): radiology.
            (24, "RAD".into()),
            // Preliminary: a device's triage, not a report.
            (25, "P".into()),
            // TQ.6, the priority, for receivers that still read OBR-27 rather than TQ1; none for a
            // study the node did not analyse
            (
                27,
                msg.priority()
                    .map(|p| components(&["", "", "", "", "", codes::act_priority(p).value]))
                    .unwrap_or_default(),
            ),
        ],
    )
}

fn nte(set_id: usize, comment: &str) -> String {
    // Source L: the comment is the filler's (ours).
    segment("NTE", &[(1, set_id.to_string()), (2, "L".into()), (3, escape(comment))])
}

fn tq1(priority: Priority) -> String {
    segment("TQ1", &[(1, "1".into()), (9, coded(&priority_code(priority)))])
}

/// One OBX's content.
#[derive(Debug, Clone, PartialEq)]
struct Observation {
    /// OBX-2 (table 0125): CWE, NM or ST.
    value_type: &'static str,
    identifier: Code,
    /// OBX-4: which model, which object, where one identifier repeats.
    sub_id: Option<usize>,
    /// OBX-5, encoded.
    value: String,
    /// OBX-6, encoded.
    units: Option<String>,
    /// OBX-11 (table 0085): P, preliminary like the order; X, the result cannot be obtained.
    status: &'static str,
}

impl Observation {
    fn new(value_type: &'static str, identifier: Code, value: String) -> Observation {
        Observation { value_type, identifier, sub_id: None, value, units: None, status: "P" }
    }
}

/// The observations in order: finding, probability, area, priority, the models, the study and
/// the objects.
fn observations(msg: &StudyMessage) -> Vec<Observation> {
    let finding = &msg.finding;
    let Some(priority) = msg.priority() else {
        // not analysed: the finding cannot be obtained; no probability, area or priority
        let mut out = vec![Observation { status: "X", ..Observation::new("CWE", codes::PNEUMOTHORAX, String::new()) }];
        out.extend(identification(msg));
        return out;
    };
    let mut out = vec![Observation::new(
        "CWE",
        codes::PNEUMOTHORAX,
        coded(if finding.present { &codes::PRESENT } else { &codes::ABSENT }),
    )];
    if finding.probability.is_finite() {
        out.push(Observation {
            units: Some(coded(&codes::NO_UNITS)),
            ..Observation::new("NM", codes::PROBABILITY, format!("{:.3}", finding.probability.clamp(0.0, 1.0)))
        });
    }
    if let Some(area) = finding.area_mm2.filter(|a| a.is_finite() && *a >= 0.0) {
        out.push(Observation {
            units: Some(coded(&codes::SQUARE_MILLIMETRE)),
            ..Observation::new("NM", codes::AREA, format!("{area:.1}"))
        });
    }
    out.push(Observation::new("CWE", codes::PRIORITY, coded(&priority_code(priority))));
    out.extend(identification(msg));
    out
}

/// The observations that identify what the finding is about: the models, the study and the
/// objects made of it.
fn identification(msg: &StudyMessage) -> Vec<Observation> {
    let mut out = Vec::new();
    for (i, model) in msg.models.iter().enumerate() {
        let sub_id = Some(i + 1);
        out.push(Observation { sub_id, ..Observation::new("ST", codes::ALGORITHM_NAME, escape(&model.name)) });
        out.push(Observation { sub_id, ..Observation::new("ST", codes::ALGORITHM_VERSION, escape(&model.version)) });
    }
    out.push(Observation::new("ST", codes::STUDY, escape(&msg.study.study_instance_uid)));
    let (mut srs, mut segs) = (0, 0);
    for object in &msg.objects {
        // The overlay (a secondary capture) is for viewers, not worth a worklist's attention.
        let (identifier, count) = match object.kind {
            ObjectKind::Sr => (codes::SR_DOCUMENT, &mut srs),
            ObjectKind::Seg => (codes::SEGMENTATION, &mut segs),
            ObjectKind::Overlay => continue,
        };
        *count += 1;
        out.push(Observation {
            sub_id: Some(*count),
            ..Observation::new("ST", identifier, escape(&object.sop_instance_uid))
        });
    }
    out
}

fn obx(set_id: usize, observation: &Observation, observed: &str) -> String {
    segment(
        "OBX",
        &[
            (1, set_id.to_string()),
            (2, observation.value_type.into()),
            (3, coded(&observation.identifier)),
            (4, observation.sub_id.map(|s| s.to_string()).unwrap_or_default()),
            (5, observation.value.clone()),
            (6, observation.units.clone().unwrap_or_default()),
            (11, observation.status.into()),
            (14, observed.into()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PatientFacts;

    fn settings() -> Hl7Settings {
        Hl7Settings {
            sending_application: "PNEUMOTRIAGE".into(),
            sending_facility: "RAD".into(),
            receiving_application: "RIS".into(),
            receiving_facility: "HOSP".into(),
        }
    }

    fn segments(message: &str) -> Vec<&str> {
        message.split('\r').filter(|s| !s.is_empty()).collect()
    }

    /// Field `n` of the first segment named `name` (MSH counted as in the standard).
    fn field<'a>(message: &'a str, name: &str, n: usize) -> &'a str {
        let segment = segments(message).into_iter().find(|s| s.starts_with(name)).expect("the segment is there");
        let index = if name == "MSH" { n - 1 } else { n };
        segment.split('|').nth(index).unwrap_or("")
    }

    fn hostile() -> StudyMessage {
        let mut msg = StudyMessage::example();
        msg.patient = PatientFacts {
            id: Some("P|1^2&3~4\\5".into()),
            issuer: Some("A&B".into()),
            name: Some("Müller^Jörg^^Dr.|~^Jr.\\=ミュラー^ヨルク".into()),
            birth_date: Some("19700101".into()),
            sex: Some("X".into()),
        };
        msg.study.accession_number = Some("A|C^C&1~2\\".into());
        msg.study.description = Some("XR CHEST\r\nPA | ^ ~ \\ &".into());
        msg.notice = "line one\nline two".into();
        msg
    }

    #[test]
    fn escaping_round_trips_every_delimiter_and_line_break() {
        let text = "a|b^c~d\\e&f\rg\nh\u{b}i\u{1c}j ü";
        let escaped = escape(text);
        assert_eq!(escaped, "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\X0D\\g\\X0A\\h\\X0B\\i\\X1C\\j ü");
        assert!(!escaped.contains(['|', '^', '~', '&', '\r', '\n']));
        assert_eq!(unescape(&escaped), text);
    }

    #[test]
    fn unescape_keeps_unknown_sequences_and_a_lone_escape() {
        assert_eq!(unescape("\\H\\bold\\N\\"), "\\H\\bold\\N\\");
        assert_eq!(unescape("a\\b"), "a\\b");
        assert_eq!(unescape("\\XC3BC\\"), "ü");
        assert_eq!(unescape("a\\.br\\b"), "a\rb");
    }

    #[test]
    fn message_has_the_oru_r01_segments_in_order() {
        let message = oru_r01(&StudyMessage::example(), &settings());
        let names: Vec<&str> = segments(&message).iter().map(|s| &s[..3]).collect();
        let mut expected = vec!["MSH", "PID", "ORC", "OBR", "NTE", "TQ1"];
        // finding, probability, area, priority, 2 models x (name, version), study, SR, SEG
        expected.extend(["OBX"; 11]);
        assert_eq!(names, expected);
        assert!(message.ends_with('\r'));
        let set_ids: Vec<&str> = segments(&message)
            .iter()
            .filter(|s| s.starts_with("OBX"))
            .map(|s| s.split('|').nth(1).unwrap_or(""))
            .collect();
        assert_eq!(set_ids, (1..=11).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn header_says_oru_r01_v2_5_1_utf8_with_the_control_id() {
        let message = oru_r01(&StudyMessage::example(), &settings());
        assert!(message.starts_with("MSH|^~\\&|PNEUMOTRIAGE|RAD|RIS|HOSP|20251124160000+0000||"));
        assert_eq!(field(&message, "MSH", 9), "ORU^R01^ORU_R01");
        assert_eq!(field(&message, "MSH", 10), "PT1A2B3C4D5E6F7A8B9C");
        assert_eq!(field(&message, "MSH", 11), "P");
        assert_eq!(field(&message, "MSH", 12), "2.5.1");
        assert_eq!(field(&message, "MSH", 18), "UNICODE UTF-8");
    }

    #[test]
    fn patient_order_and_priority_are_where_a_worklist_reads_them() {
        let message = oru_r01(&StudyMessage::example(), &settings());
        assert_eq!(field(&message, "PID", 3), "PAT001^^^HOSP");
        assert_eq!(field(&message, "PID", 5), "Müller^Jörg");
        assert_eq!(field(&message, "PID", 7), "19700101");
        assert_eq!(field(&message, "PID", 8), "M");
        assert_eq!(field(&message, "ORC", 2), "ACC0001");
        assert_eq!(field(&message, "OBR", 3), "ACC0001");
        assert_eq!(field(&message, "OBR", 4), "^XR CHEST PA");
        assert_eq!(field(&message, "OBR", 25), "P");
        assert_eq!(field(&message, "OBR", 27), "^^^^^S");
        assert_eq!(field(&message, "TQ1", 9), "S^Stat^HL70485");
        assert!(message
            .contains("\rOBX|1|CWE|36118008^Pneumothorax^SCT||52101004^Present^SCT||||||P|||20251124160000+0000\r"));
        assert!(message.contains("|CWE|260870009^Priority (attribute)^SCT||S^Stat^HL70485|"));
        assert!(message.contains("|NM|122157^Probability^DCM||0.930|1^no units^UCUM|"));
        assert!(message.contains("|NM|42798000^Area^SCT||1234.5|mm2^mm2^UCUM|"));
    }

    #[test]
    fn each_priority_has_its_code() {
        for (priority, code) in
            [(Priority::Urgent, "S^Stat"), (Priority::Review, "A^ASAP"), (Priority::Routine, "R^Routine")]
        {
            let msg = StudyMessage { triage: crate::domain::Triage::Priority(priority), ..StudyMessage::example() };
            let message = oru_r01(&msg, &settings());
            assert_eq!(field(&message, "TQ1", 9), format!("{code}^HL70485"));
            assert_eq!(field(&message, "OBR", 27), format!("^^^^^{}", &code[..1]));
        }
    }

    #[test]
    fn hostile_values_are_escaped_and_cannot_change_the_structure() {
        let message = oru_r01(&hostile(), &settings());
        assert_eq!(segments(&message).len(), 17, "no value adds or splits a segment");
        assert_eq!(field(&message, "PID", 3), "P\\F\\1\\S\\2\\T\\3\\R\\4\\E\\5^^^A\\T\\B");
        // Family, given, middle, suffix (DICOM's 5th), prefix (DICOM's 4th); the ideographic
        // group after '=' left out.
        assert_eq!(field(&message, "PID", 5), "Müller^Jörg^^Jr.\\E\\^Dr.\\F\\\\R\\");
        assert_eq!(field(&message, "PID", 8), "U");
        assert_eq!(field(&message, "ORC", 2), "A\\F\\C\\S\\C\\T\\1\\R\\2\\E\\");
        assert_eq!(unescape(field(&message, "OBR", 4).trim_start_matches('^')), "XR CHEST\r\nPA | ^ ~ \\ &");
        assert_eq!(unescape(field(&message, "NTE", 3)), "line one\nline two");
    }

    #[test]
    fn absent_values_leave_valid_fields() {
        let mut msg = StudyMessage::example();
        msg.patient = PatientFacts { birth_date: Some("1970.01.01".into()), ..PatientFacts::default() };
        msg.study.accession_number = None;
        msg.study.description = None;
        msg.finding.area_mm2 = None;
        msg.finding.probability = f64::NAN;
        let message = oru_r01(&msg, &settings());
        assert_eq!(field(&message, "PID", 3), "\"\"");
        assert_eq!(field(&message, "PID", 7), "");
        assert_eq!(field(&message, "PID", 8), "U");
        assert_eq!(field(&message, "OBR", 4), "43468-8^XR unspecified body region^LN");
        assert!(!message.contains("Area") && !message.contains("Probability"));
    }

    #[test]
    fn times_are_utc_dtm() {
        assert_eq!(dtm(0), "19700101000000+0000");
        assert_eq!(dtm(1_764_000_000_999), "20251124160000+0000");
        assert_eq!(dtm(951_782_400_000), "20000229000000+0000");
        assert_eq!(dtm(-1), "19691231235959+0000");
    }
}
