//! FHIR and webhook messages against real checkers: every Bundle validated as FHIR R4 by PyPI's
//! fhir.resources (`tests/tools/fhir_check.py`), and every POST made over HTTPS (certificates made
//! by openssl) to `tests/tools/https_receiver.py`, which records what it received, answers the
//! status it is told, and checks the webhook signature with Python's hmac.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use pneumotriage::config::FhirSettings;
use pneumotriage::domain::{FindingFacts, PatientFacts, StudyMessage};
use pneumotriage::domain::{Priority, Triage};
use pneumotriage::messages::{fhir, webhook};
use pneumotriage::outbox::http::{HttpTarget, HttpTls};
use pneumotriage::outbox::MessageError;
use serde_json::Value;

use crate::common::{make_certificates, python, tool};

/// `https_receiver.py` on a port of its choosing, stopped when dropped.
pub struct Receiver {
    child: Child,
    pub port: u16,
    /// Where it writes `<n>.json` and `<n>.headers.json`.
    pub out: PathBuf,
    /// Its first word is the status of the next answers (absent: 200).
    pub status_file: PathBuf,
}

impl Receiver {
    /// A receiver under `dir`, with `args` added (`--tls CERT KEY`, `--secret S`).
    pub fn start(dir: &Path, args: &[&str]) -> Receiver {
        let out = dir.join("received");
        let status_file = dir.join("status");
        let mut child = Command::new(python())
            .arg(tool("https_receiver.py"))
            .args(["--port", "0", "--out"])
            .arg(&out)
            .arg("--status-file")
            .arg(&status_file)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the receiver starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("the receiver speaks");
        let port = line.trim().strip_prefix("listening on ").and_then(|p| p.parse().ok());
        let port = port.unwrap_or_else(|| panic!("not `listening on PORT`: {line:?}"));
        Receiver { child, port, out, status_file }
    }

    /// Over HTTPS with `dir`'s `pacs` certificate (localhost, 127.0.0.1; signed by `ca`).
    pub fn https(dir: &Path, args: &[&str]) -> Receiver {
        let (cert, key) = (dir.join("pacs.crt"), dir.join("pacs.key"));
        let mut all = vec!["--tls", cert.to_str().expect("UTF-8 path"), key.to_str().expect("UTF-8 path")];
        all.extend_from_slice(args);
        Receiver::start(dir, &all)
    }

    pub fn answer(&self, status: &str) {
        std::fs::write(&self.status_file, status).unwrap();
    }

    /// The body and the record of request `n` (from 1).
    pub fn request(&self, n: usize) -> (Vec<u8>, Value) {
        let record = std::fs::read(self.out.join(format!("{n}.headers.json"))).expect("request recorded");
        let body = std::fs::read(self.out.join(format!("{n}.json"))).expect("body recorded");
        (body, serde_json::from_slice(&record).expect("JSON record"))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fhir_check.py's verdict on `bundle`; panics with its errors when it is not valid.
pub(crate) fn check(dir: &Path, bundle: &[u8]) -> Value {
    let file = dir.join("bundle.json");
    std::fs::write(&file, bundle).unwrap();
    let out = Command::new(python()).arg(tool("fhir_check.py")).arg(&file).output().expect("fhir_check runs");
    let verdict: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("fhir_check: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert!(out.status.success() && verdict["ok"] == true, "invalid FHIR: {verdict:#}");
    assert!(verdict["validator"].as_str().is_some_and(|v| v.contains("FHIR 4.0.1")), "{verdict}");
    verdict
}

fn check_message(msg: &StudyMessage) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let bundle = fhir::bundle(msg, &FhirSettings::default());
    check(dir.path(), &serde_json::to_vec(&bundle).unwrap())
}

fn certificates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    dir
}

fn target(dir: &Path, port: u16, ca: &str, token: Option<&str>) -> HttpTarget {
    let tls = HttpTls { ca_file: dir.join(ca), identity: None, server_name: None };
    HttpTarget::new(&format!("https://localhost:{port}/fhir/"), Some(&tls), token, Duration::from_secs(5))
        .expect("valid target")
}

fn post_bundle(target: &HttpTarget, msg: &StudyMessage) -> Result<(), MessageError> {
    let body = serde_json::to_vec(&fhir::bundle(msg, &FhirSettings::default())).unwrap();
    target.post_json(None, &body, &fhir::headers(msg))
}

#[test]
fn the_example_bundle_is_valid_fhir_r4() {
    let verdict = check_message(&StudyMessage::example());
    assert_eq!(verdict["entries"], serde_json::json!(["Patient", "Device", "Observation", "DiagnosticReport", "Task"]));
    let f = &verdict["fields"];
    assert_eq!(f["patient_family"], "Müller");
    assert_eq!(f["patient_given"], serde_json::json!(["Jörg"]));
    assert_eq!(f["patient_birth_date"], "1970-01-01");
    assert_eq!(f["observation_code"], "36118008");
    assert_eq!(f["observation_value"], "52101004");
    assert_eq!(f["observation_components"], 2);
    assert_eq!(f["probability"], 0.93);
    assert_eq!(f["imaging_study"], "urn:oid:1.2.826.0.1.3680043.10.1447.9.1");
    assert_eq!(f["accession"], "ACC0001");
    assert_eq!(f["task_priority"], "stat");
}

#[test]
fn a_routine_negative_without_area_accession_or_patient_is_valid_fhir_r4() {
    let mut msg = StudyMessage::example();
    msg.triage = Triage::Priority(Priority::Routine);
    msg.finding = FindingFacts { present: false, probability: 0.04, area_mm2: None };
    msg.study.accession_number = None;
    msg.study.description = None;
    msg.patient = PatientFacts::default();
    msg.objects.clear();
    msg.link = None;
    let verdict = check_message(&msg);
    assert_eq!(verdict["entries"], serde_json::json!(["Device", "Observation", "DiagnosticReport", "Task"]));
    assert_eq!(verdict["fields"]["observation_value"], "272519000");
    assert_eq!(verdict["fields"]["observation_components"], 1);
    assert_eq!(verdict["fields"]["task_priority"], "routine");
}

/// A study the node did not analyse: Observation and DiagnosticReport `cancelled`, no value but a
/// data-absent reason (not-performed) and a note saying why, a Task with no priority of its own.
#[test]
fn a_not_analysed_study_is_valid_fhir_r4_cancelled_with_a_reason() {
    let reason = "image unsuitable: Patient Age 012Y is under 18 years";
    let mut msg = StudyMessage { triage: Triage::NotAnalysed(reason.into()), ..StudyMessage::example() };
    msg.finding = FindingFacts { present: false, probability: 0.0, area_mm2: None };
    msg.models.clear();
    msg.objects.retain(|o| o.kind == pneumotriage::domain::ObjectKind::Sr);
    let verdict = check_message(&msg);
    assert_eq!(verdict["entries"], serde_json::json!(["Patient", "Device", "Observation", "DiagnosticReport", "Task"]));
    let f = &verdict["fields"];
    assert_eq!(f["observation_code"], "36118008");
    assert_eq!(f["observation_status"], "cancelled");
    assert_eq!(f["observation_value"], Value::Null);
    assert_eq!(f["observation_components"], 0);
    assert_eq!(f["observation_absent"], "not-performed");
    assert_eq!(f["observation_notes"][0], format!("Not analysed: {reason}"));
    assert_eq!(f["report_status"], "cancelled");
    assert_eq!(f["task_priority"], Value::Null);
    // An analysed study stays preliminary with a value.
    let analysed = check_message(&StudyMessage::example());
    assert_eq!(analysed["fields"]["observation_status"], "preliminary");
    assert_eq!(analysed["fields"]["report_status"], "preliminary");
    assert_eq!(analysed["fields"]["observation_absent"], Value::Null);
}

#[test]
fn hostile_text_in_every_field_stays_valid_and_unchanged() {
    let hostile = "a|b^c~d\\e&f\r\n<g>\"h\" ,$=";
    let mut msg = StudyMessage::example();
    msg.patient = PatientFacts {
        id: Some(format!("ID {hostile}")),
        issuer: Some("HOSP & CO".into()),
        name: Some("Müller^Jörg^^Dr.".into()),
        birth_date: Some("1970013".into()), // not a date: left out, not sent wrong
        sex: Some("X".into()),
    };
    msg.study.accession_number = Some(format!("ACC {hostile}"));
    msg.study.description = Some(format!("XR CHEST {hostile}"));
    msg.notice = format!("not for diagnosis {hostile}");
    let verdict = check_message(&msg);
    let f = &verdict["fields"];
    assert_eq!(f["patient_family"], "Müller");
    assert_eq!(f["patient_given"], serde_json::json!(["Jörg"]));
    assert!(f["patient_birth_date"].is_null());
    assert_eq!(f["patient_gender"], "unknown");
    assert_eq!(f["accession"], format!("ACC {hostile}"));
}

#[test]
fn a_bundle_posted_over_https_arrives_whole_with_its_headers() {
    let dir = certificates();
    let receiver = Receiver::https(dir.path(), &[]);
    let msg = StudyMessage::example();
    let target = target(dir.path(), receiver.port, "ca.crt", Some("token-123"));
    assert_eq!(post_bundle(&target, &msg), Ok(()));
    let (body, record) = receiver.request(1);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), fhir::bundle(&msg, &FhirSettings::default()));
    check(dir.path(), &body);
    let headers = &record["headers"];
    assert_eq!(record["path"], "/fhir");
    assert_eq!(headers["content-type"], "application/fhir+json");
    assert_eq!(headers["authorization"], "Bearer token-123");
    assert_eq!(headers["x-request-id"], msg.control_id);
}

#[test]
fn the_status_decides_delivered_transient_or_permanent() {
    let dir = certificates();
    let receiver = Receiver::https(dir.path(), &[]);
    let target = target(dir.path(), receiver.port, "ca.crt", None);
    let msg = StudyMessage::example();
    for status in ["503", "429"] {
        receiver.answer(status);
        assert!(matches!(post_bundle(&target, &msg), Err(MessageError::Transient(_))), "{status}");
    }
    receiver.answer("400 Bundle.entry[2].resource: Observation.status is not a known code");
    match post_bundle(&target, &msg) {
        Err(MessageError::Permanent(m)) => {
            assert!(m.contains("HTTP 400"), "{m}");
            assert!(m.contains("Observation.status is not a known code"), "the OperationOutcome's text is kept: {m}");
        }
        other => panic!("400 is permanent: {other:?}"),
    }
    receiver.answer("201");
    assert_eq!(post_bundle(&target, &msg), Ok(()));
}

#[test]
fn nothing_listening_is_transient() {
    let dir = certificates();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let target = target(dir.path(), port, "ca.crt", None);
    assert!(matches!(post_bundle(&target, &StudyMessage::example()), Err(MessageError::Transient(_))));
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_permanently() {
    let dir = certificates();
    let receiver = Receiver::https(dir.path(), &[]);
    let target = target(dir.path(), receiver.port, "other-ca.crt", None);
    match post_bundle(&target, &StudyMessage::example()) {
        Err(MessageError::Permanent(m)) => assert!(m.contains("TLS"), "{m}"),
        other => panic!("an unverified server is refused: {other:?}"),
    }
    assert!(!receiver.out.join("1.json").exists(), "nothing was sent to it");
}

#[test]
fn the_webhook_signature_verifies_in_python() {
    let dir = certificates();
    let secret = "a-webhook-secret-of-some-length";
    let receiver = Receiver::https(dir.path(), &["--secret", secret]);
    let target = target(dir.path(), receiver.port, "ca.crt", None);
    let msg = StudyMessage::example();
    let body = serde_json::to_vec(&webhook::body(&msg)).unwrap();
    assert_eq!(target.post_json(Some("hook"), &body, &webhook::headers(&msg, secret.as_bytes(), &body)), Ok(()));
    let wrong = webhook::headers(&msg, b"another-secret-entirely", &body);
    assert_eq!(target.post_json(Some("hook"), &body, &wrong), Ok(()));

    let (received, record) = receiver.request(1);
    assert_eq!(received, body);
    assert_eq!(record["signature_ok"], true);
    assert_eq!(record["path"], "/fhir/hook");
    assert_eq!(record["headers"]["content-type"], "application/json");
    assert_eq!(record["headers"]["x-pneumotriage-message-id"], msg.control_id);
    assert_eq!(receiver.request(2).1["signature_ok"], false);
}

#[test]
fn a_client_certificate_is_presented_to_a_server_that_requires_one() {
    let dir = certificates();
    let ca = dir.path().join("ca.crt");
    let receiver = Receiver::https(dir.path(), &["--client-ca", ca.to_str().expect("UTF-8 path")]);
    let tls = HttpTls {
        ca_file: ca.clone(),
        identity: Some((dir.path().join("node.crt"), dir.path().join("node.key"))),
        server_name: None,
    };
    let url = format!("https://localhost:{}/fhir", receiver.port);
    let target = HttpTarget::new(&url, Some(&tls), None, Duration::from_secs(5)).expect("valid target");
    assert_eq!(post_bundle(&target, &StudyMessage::example()), Ok(()));
    assert!(receiver.out.join("1.json").exists());
}
