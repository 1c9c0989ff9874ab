//! HL7 v2 against real peers: every ORU^R01 the node makes is parsed and validated by hl7apy
//! (strict, v2.5.1 structures) and read again by python-hl7 (`tests/tools/hl7_check.py`); `send`
//! is driven against a Python MLLP receiver (`tests/tools/mllp_receiver.py`) that answers AA, AE,
//! AR or nothing, over TCP and TLS.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pneumotriage::config::Hl7Settings;
use pneumotriage::domain::{PatientFacts, StudyMessage};
use pneumotriage::domain::{Priority, Triage};
use pneumotriage::messages::hl7::oru_r01;
use pneumotriage::outbox::mllp::{send, Hl7Target};
use pneumotriage::outbox::MessageError;

use crate::common::{free_port, make_certificates, python, text, tool};

fn settings() -> Hl7Settings {
    Hl7Settings {
        sending_application: "PNEUMOTRIAGE".into(),
        sending_facility: "RADIOLOGY".into(),
        receiving_application: "RIS".into(),
        receiving_facility: "HOSPITAL".into(),
    }
}

/// What `hl7_check.py` printed: the verdict and what each parser read.
pub(crate) struct Check {
    pub(crate) valid: bool,
    pub(crate) errors: serde_json::Value,
    pub(crate) hl7apy: serde_json::Value,
    pub(crate) python_hl7: serde_json::Value,
}

/// Writes `message` to a file and has both parsers read it.
pub(crate) fn check(message: &str) -> Check {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("message.hl7");
    std::fs::write(&file, message).unwrap();
    let out = Command::new(python()).arg(tool("hl7_check.py")).arg(&file).output().expect("python runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("hl7_check.py printed no JSON ({e}): {}", text(&out)));
    Check {
        valid: json["valid"] == true && out.status.success(),
        errors: json["errors"].clone(),
        hl7apy: json["hl7apy"].clone(),
        python_hl7: json["hl7"].clone(),
    }
}

/// Asserts the message is valid and both parsers read from it exactly what `msg` says.
fn assert_reads_back(msg: &StudyMessage) {
    let message = oru_r01(msg, &settings());
    let check = check(&message);
    assert!(check.valid, "hl7apy: {}\n{}", check.errors, message.replace('\r', "\n"));
    assert_eq!(check.hl7apy, check.python_hl7, "the parsers disagree");
    let read = &check.hl7apy;
    let name_parts: Vec<&str> =
        msg.patient.name.as_deref().unwrap_or("").split('=').next().unwrap_or("").split('^').collect();
    let part = |i: usize| name_parts.get(i).copied().unwrap_or("").trim().to_string();
    let expected_name = [part(0), part(1), part(2), part(4), part(3)];
    let priority = pneumotriage::codes::act_priority(msg.priority().expect("a priority")).value;
    let uids = |kind| -> Vec<&str> {
        msg.objects.iter().filter(|o| o.kind == kind).map(|o| o.sop_instance_uid.as_str()).collect()
    };
    let accession = msg.study.accession_number.as_deref().unwrap_or("");
    assert_eq!(read["control_id"], msg.control_id.as_str());
    assert_eq!(read["patient_id"], msg.patient.id.as_deref().unwrap_or(""));
    assert_eq!(read["issuer"], msg.patient.issuer.as_deref().unwrap_or(""));
    assert_eq!(read["name"], serde_json::json!(expected_name));
    assert_eq!(read["birth_date"], msg.patient.birth_date.as_deref().unwrap_or(""));
    assert_eq!(read["placer"], accession);
    assert_eq!(read["filler"], accession);
    assert_eq!(read["procedure"], msg.study.description.as_deref().unwrap_or(""));
    assert_eq!(read["priority_obr27"], priority);
    assert_eq!(read["priority_tq1"], priority);
    assert_eq!(read["priority_obx"], priority);
    assert_eq!(read["finding"], if msg.finding.present { "52101004" } else { "272519000" });
    let probability = read["probability"].as_f64().expect("a probability");
    assert!((probability - msg.finding.probability).abs() < 0.0005, "{probability}");
    let models: Vec<[&str; 2]> = msg.models.iter().map(|m| [m.name.as_str(), m.version.as_str()]).collect();
    assert_eq!(read["models"], serde_json::json!(models));
    assert_eq!(read["study_uid"], msg.study.study_instance_uid.as_str());
    assert_eq!(read["sr_uids"], serde_json::json!(uids(pneumotriage::domain::ObjectKind::Sr)));
    assert_eq!(read["seg_uids"], serde_json::json!(uids(pneumotriage::domain::ObjectKind::Seg)));
    assert_eq!(read["notice"], msg.notice.as_str());
}

#[test]
fn example_message_is_valid_and_both_parsers_read_the_study_message() {
    let msg = StudyMessage::example();
    assert_reads_back(&msg);
    let check = check(&oru_r01(&msg, &settings()));
    assert_eq!(check.hl7apy["name"], serde_json::json!(["Müller", "Jörg", "", "", ""]));
    assert_eq!(check.hl7apy["sex"], "M");
    assert_eq!(check.hl7apy["area"], 1234.5);
}

#[test]
fn every_priority_is_valid_and_reads_back() {
    for priority in [Priority::Urgent, Priority::Review, Priority::Routine] {
        assert_reads_back(&StudyMessage { triage: Triage::Priority(priority), ..StudyMessage::example() });
    }
}

#[test]
fn hostile_values_parse_back_equal() {
    let mut msg = StudyMessage::example();
    msg.patient = PatientFacts {
        id: Some("P|1^2&3~4\\5".into()),
        issuer: Some("I&S~S".into()),
        name: Some("Müller^Jörg^Ö|~\\^Dr.&^Jr.".into()),
        birth_date: Some("19700101".into()),
        sex: Some("F".into()),
    };
    msg.study.accession_number = Some("A|C^C&1~\\".into());
    msg.study.description = Some("XR CHEST | ^ ~ \\ &\r\nPA\nsecond line".into());
    msg.models[0].name = "classifier|^~\\&".into();
    msg.notice = "Not for diagnosis.\nSee the IFU: A&B | C^D ~ E\\F".into();
    assert_reads_back(&msg);
}

#[test]
fn a_negative_study_without_optional_values_is_valid() {
    let mut msg = StudyMessage { triage: Triage::Priority(Priority::Routine), ..StudyMessage::example() };
    msg.finding.present = false;
    msg.finding.probability = 0.02;
    msg.finding.area_mm2 = None;
    msg.objects.retain(|o| o.kind == pneumotriage::domain::ObjectKind::Sr);
    msg.patient.birth_date = None;
    msg.patient.sex = None;
    msg.patient.issuer = None;
    let message = oru_r01(&msg, &settings());
    let check = check(&message);
    assert!(check.valid, "hl7apy: {}\n{}", check.errors, message.replace('\r', "\n"));
    assert_eq!(check.hl7apy, check.python_hl7);
    assert_eq!(check.hl7apy["finding"], "272519000");
    assert_eq!(check.hl7apy["area"], serde_json::Value::Null);
    assert_eq!(check.hl7apy["sex"], "U");
    assert_eq!(check.hl7apy["seg_uids"], serde_json::json!([]));
}

/// A study the node did not analyse: valid, the finding's observation says the result cannot be
/// obtained (OBX-11 X) with no value, no priority anywhere, a second NTE says why, and the SR that
/// says the same is referenced.
#[test]
fn a_not_analysed_study_is_valid_and_says_why_without_a_priority() {
    let reason = "image unsuitable: Patient Age 012Y is under 18 years";
    let mut msg = StudyMessage { triage: Triage::NotAnalysed(reason.into()), ..StudyMessage::example() };
    msg.finding.present = false;
    msg.finding.probability = 0.0;
    msg.finding.area_mm2 = None;
    msg.models.clear();
    msg.objects.retain(|o| o.kind == pneumotriage::domain::ObjectKind::Sr);
    let message = oru_r01(&msg, &settings());
    let check = check(&message);
    assert!(check.valid, "hl7apy: {}\n{}", check.errors, message.replace('\r', "\n"));
    assert_eq!(check.hl7apy, check.python_hl7, "the parsers disagree");
    let read = &check.hl7apy;
    assert_eq!(read["finding"], "");
    assert_eq!(read["finding_status"], "X");
    assert_eq!(read["probability"], serde_json::Value::Null);
    assert_eq!(read["area"], serde_json::Value::Null);
    assert_eq!(read["priority_obx"], serde_json::Value::Null);
    assert_eq!(read["priority_tq1"], "");
    assert_eq!(read["priority_obr27"], "");
    assert_eq!(read["notes"], serde_json::json!([msg.notice, format!("Not analysed: {reason}")]));
    assert_eq!(read["study_uid"], msg.study.study_instance_uid.as_str());
    assert_eq!(read["sr_uids"], serde_json::json!([msg.objects[0].sop_instance_uid]));
    // An analysed study's finding stays preliminary, like the order.
    assert_eq!(check_finding_status(&StudyMessage::example()), "P");
}

fn check_finding_status(msg: &StudyMessage) -> String {
    check(&oru_r01(msg, &settings())).hl7apy["finding_status"].as_str().unwrap_or_default().to_string()
}

/// `mllp_receiver.py`, running until dropped.
pub(crate) struct Receiver {
    child: Child,
    pub(crate) port: u16,
    out: PathBuf,
    pub(crate) answer_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts the receiver answering `answer`, with extra arguments (`--tls CERT KEY`).
    pub(crate) fn start(answer: &str, extra: &[&Path]) -> Receiver {
        Receiver::start_on(0, answer, extra)
    }

    /// The same on `port` (0: one of its choosing).
    pub(crate) fn start_on(port: u16, answer: &str, extra: &[&Path]) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received");
        let answer_file = dir.path().join("answer");
        let mut child = Command::new(python())
            .arg(tool("mllp_receiver.py"))
            .args(["--port", &port.to_string(), "--answer", answer, "--out"])
            .arg(&out)
            .arg("--answer-file")
            .arg(&answer_file)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python runs");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let port = first
            .strip_prefix("listening on ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("mllp_receiver.py said {first:?}"));
        // Keep reading its lines so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Receiver { child, port, out, answer_file, _dir: dir }
    }

    fn target(&self, timeout: Duration) -> Hl7Target {
        Hl7Target { host: "127.0.0.1".into(), port: self.port, tls: None, timeout }
    }

    /// The messages received so far, in order.
    pub(crate) fn received(&self) -> Vec<String> {
        (1..)
            .map(|n| self.out.join(format!("{n}.hl7")))
            .take_while(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example() -> (String, String) {
    let msg = StudyMessage::example();
    (oru_r01(&msg, &settings()), msg.control_id)
}

#[test]
fn aa_is_delivered_and_the_receiver_has_the_message() {
    let receiver = Receiver::start("AA", &[]);
    let (message, control_id) = example();
    assert_eq!(send(&receiver.target(Duration::from_secs(5)), &message, &control_id), Ok(()));
    assert_eq!(receiver.received(), vec![message]);
}

#[test]
fn ae_is_transient() {
    let receiver = Receiver::start("AE", &[]);
    let (message, control_id) = example();
    let result = send(&receiver.target(Duration::from_secs(5)), &message, &control_id);
    assert!(matches!(&result, Err(MessageError::Transient(t)) if t.contains("AE")), "{result:?}");
}

#[test]
fn ar_is_permanent() {
    let receiver = Receiver::start("AR", &[]);
    let (message, control_id) = example();
    let result = send(&receiver.target(Duration::from_secs(5)), &message, &control_id);
    assert!(matches!(&result, Err(MessageError::Permanent(t)) if t.contains("AR")), "{result:?}");
}

#[test]
fn no_answer_is_transient_after_the_timeout() {
    let receiver = Receiver::start("none", &[]);
    let (message, control_id) = example();
    let started = Instant::now();
    let result = send(&receiver.target(Duration::from_secs(1)), &message, &control_id);
    let took = started.elapsed();
    assert!(matches!(&result, Err(MessageError::Transient(t)) if t.contains("no acknowledgment")), "{result:?}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(receiver.received().len(), 1, "the message arrived, only the answer did not");
}

#[test]
fn the_answer_can_change_while_the_receiver_runs() {
    let receiver = Receiver::start("AE", &[]);
    let (message, control_id) = example();
    let target = receiver.target(Duration::from_secs(5));
    assert!(matches!(send(&target, &message, &control_id), Err(MessageError::Transient(_))));
    std::fs::write(&receiver.answer_file, "AA\n").unwrap();
    assert_eq!(send(&target, &message, &control_id), Ok(()));
    assert_eq!(receiver.received().len(), 2);
}

#[test]
fn nothing_listening_is_transient() {
    let target = Hl7Target { host: "127.0.0.1".into(), port: free_port(), tls: None, timeout: Duration::from_secs(2) };
    let (message, control_id) = example();
    assert!(matches!(send(&target, &message, &control_id), Err(MessageError::Transient(_))));
}

fn tls_target(receiver: &Receiver, ca: &Path) -> Hl7Target {
    let config = pneumotriage::tls::client_config(ca, None).expect("the CA file is usable");
    Hl7Target { tls: Some((Arc::clone(&config), "localhost".into())), ..receiver.target(Duration::from_secs(5)) }
}

#[test]
fn tls_delivers_to_a_receiver_whose_certificate_is_trusted() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let receiver =
        Receiver::start("AA", &[Path::new("--tls"), &certs.path().join("pacs.crt"), &certs.path().join("pacs.key")]);
    let (message, control_id) = example();
    assert_eq!(send(&tls_target(&receiver, &certs.path().join("ca.crt")), &message, &control_id), Ok(()));
    assert_eq!(receiver.received(), vec![message]);
}

#[test]
fn tls_to_an_untrusted_receiver_is_transient_and_sends_nothing() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let receiver =
        Receiver::start("AA", &[Path::new("--tls"), &certs.path().join("pacs.crt"), &certs.path().join("pacs.key")]);
    let (message, control_id) = example();
    let result = send(&tls_target(&receiver, &certs.path().join("other-ca.crt")), &message, &control_id);
    assert!(matches!(&result, Err(MessageError::Transient(_))), "{result:?}");
    assert!(receiver.received().is_empty());
}

/// TLS towards a peer that takes the connection and never answers (a plain MLLP port, a stuck
/// receiver): the handshake, run by the first write, is bounded by the timeout like the rest;
/// the destination's one sender is not stalled for ever.
#[test]
fn tls_to_a_silent_peer_is_transient_after_the_timeout() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || silent.accept().map(|(stream, _)| stream));
    let config = pneumotriage::tls::client_config(&certs.path().join("ca.crt"), None).expect("the CA file is usable");
    let target = Hl7Target {
        host: "127.0.0.1".into(),
        port,
        tls: Some((config, "localhost".into())),
        timeout: Duration::from_secs(1),
    };
    let (message, control_id) = example();
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let _ = done.send((send(&target, &message, &control_id), started.elapsed()));
    });
    let (result, took) = result.recv_timeout(Duration::from_secs(10)).expect("the send ends");
    assert!(matches!(&result, Err(MessageError::Transient(_))), "{result:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    drop(held.join());
}
