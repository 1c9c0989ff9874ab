//! A film the selection rules chose and the node could not analyse is reported as such, never
//! left silent and never listed as a negative: served by the node with real peers, the "not
//! analysed" SR reaches Orthanc and passes dciodvfy, highdicom reads its Undetermined finding
//! and its reason, the HL7 ORU passes hl7apy (OBX-11 X, the reason in an NTE, no priority), the
//! FHIR Bundle posted over HTTPS passes fhir.resources (cancelled, not-performed), the webhook
//! says `study.not_analysed`, the worklist page (headless Chromium, a screenshot) and the API say
//! why, the metric counts it; a corrected image of the same study, analysed, follows with its
//! result.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{
    self, make_certificates, orthanc, pydicom_data, python, run, storescu, text, tool, Backend, Setup,
};
use crate::messages::wait_until;
use crate::{fhir, hl7};

const AGE: &str = "(0010,1010)";
const REASON: &str = "input check: patient age 12.0 years is below inference.checks.min_age_years (18)";

/// pydicom-data's RG1 (a CR tagged CHEST, which the selection rules take) with Patient's Age
/// set, written to `to`.
fn rg1_aged(to: &Path, age: &str) {
    std::fs::copy(pydicom_data("RG1_UNCR.dcm"), to).unwrap();
    run("dcmodify", &["-nb", "-i", &format!("{AGE}={age}"), to.to_str().unwrap()]);
}

fn http_get(setup: &Setup, path: &str) -> String {
    let (status, _, body) = common::http_request(setup.http_port, "GET", path, &[], "").unwrap();
    assert_eq!(status, 200, "{path}");
    String::from_utf8(body).unwrap()
}

fn a_child_is_reported_not_analysed_then_its_corrected_image_is_analysed(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let child = work.path().join("child.dcm");
    rg1_aged(&child, "012Y");
    let study = common::study_instance_uid(&child);
    let pacs = orthanc::start();
    let ris = hl7::Receiver::start("AA", &[]);
    let certs = work.path().join("certs");
    make_certificates(&certs);
    let ehr = fhir::Receiver::https(&certs, &[]);
    let hooks = work.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = fhir::Receiver::start(&hooks, &["--secret", "a-webhook-secret-of-some-length"]);
    let mut setup = Setup::analysing(backend, "");
    // The RIS takes urgent results only; settling off, so that the test need not wait.
    setup.tail = format!(
        "[[destinations]]\nname = \"pacs\"\nae_title = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n\
         retry_initial_secs = 1\nretry_max_secs = 2\n\
         [[destinations]]\nname = \"ris\"\nkind = \"hl7\"\nhost = \"127.0.0.1\"\nport = {}\n\
         priorities = [\"urgent\"]\nsettle_secs = 0\nretry_initial_secs = 1\nretry_max_secs = 2\n\
         [[destinations]]\nname = \"ehr\"\nkind = \"fhir\"\nurl = \"https://localhost:{}/fhir\"\nsettle_secs = 0\n\
         [destinations.tls]\nca_file = \"{}\"\n\
         [[destinations]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\nsettle_secs = 0\n\
         [destinations.webhook]\nsecret = \"a-webhook-secret-of-some-length\"\n",
        orthanc::AET,
        pacs.dicom_port,
        ris.port,
        ehr.port,
        certs.join("ca.crt").display(),
        hook.port
    );
    setup.write_config("", "", common::DEFAULT_PEERS);
    let node = setup.start();
    assert!(storescu(setup.port, &[], &[&child]).status.success());

    // the SR, in the PACS, valid, saying Undetermined and why
    let stored = pacs.wait_for_instances(&study, 1, Duration::from_secs(120));
    assert_eq!(stored.len(), 1, "only the report: {stored:?}\n{}", node.log());
    assert_eq!(
        (stored[0].modality.as_str(), stored[0].sop_class_uid.as_str()),
        ("SR", "1.2.840.10008.5.1.4.1.1.88.34")
    );
    let sr = work.path().join("not-analysed.sr.dcm");
    std::fs::write(&sr, pacs.file(&stored[0].sop_instance_uid)).unwrap();
    let check = Command::new("dciodvfy").arg("-new").arg(&sr).output().expect("dicom3tools' dciodvfy runs");
    let report = text(&check);
    assert!(check.status.success() && !report.contains("Error"), "dciodvfy says:\n{report}");
    let read = Command::new(python()).arg(tool("check_sr.py")).arg(&sr).output().unwrap();
    assert!(read.status.success(), "{}", text(&read));
    let said: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    assert_eq!(said["finding_code"]["value"], "373068000", "Undetermined: {said}");
    assert_eq!(said["finding_present"], serde_json::Value::Null, "never a negative: {said}");
    assert_eq!(said["evaluation_text"], serde_json::json!([format!("not analysed: {REASON}")]));
    assert_eq!((&said["probability"], &said["priority"]), (&serde_json::Value::Null, &serde_json::Value::Null));
    assert_eq!(said["source_image_sop_instance_uid"], common::sop_instance_uid(&child).as_str());

    // the ORU, though the RIS takes urgent results only
    wait_until("the RIS gets the not-analysed message", || ris.received().len() == 1);
    let message = &ris.received()[0];
    let oru = hl7::check(message);
    assert!(oru.valid, "hl7apy: {}\n{}", oru.errors, message.replace('\r', "\n"));
    assert_eq!(oru.hl7apy, oru.python_hl7, "the parsers disagree");
    assert_eq!((&oru.hl7apy["finding"], &oru.hl7apy["finding_status"]), (&"".into(), &"X".into()));
    assert_eq!(oru.hl7apy["priority_tq1"], "");
    assert_eq!(oru.hl7apy["notes"][1], format!("Not analysed: {REASON}"));
    assert_eq!(oru.hl7apy["sr_uids"], serde_json::json!([stored[0].sop_instance_uid]));

    // the FHIR Bundle and the webhook
    setup.wait_count("SELECT COUNT(*) FROM messages WHERE priority IS NULL AND state = 'delivered'", 3);
    let (bundle, _) = ehr.request(1);
    let verdict = fhir::check(work.path(), &bundle);
    let f = &verdict["fields"];
    assert_eq!(
        (&f["observation_status"], &f["report_status"]),
        (&"cancelled".into(), &"cancelled".into()),
        "{verdict}"
    );
    assert_eq!(f["observation_absent"], "not-performed", "{verdict}");
    assert_eq!(f["observation_notes"][0], format!("Not analysed: {REASON}"), "{verdict}");
    assert_eq!(f["task_priority"], serde_json::Value::Null, "{verdict}");
    let (body, request) = hook.request(1);
    assert_eq!(request["signature_ok"], true, "{request}");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((&body["event"], &body["reason"]), (&"study.not_analysed".into(), &REASON.into()), "{body}");
    assert!(body["priority"].is_null() && body["finding"].is_null(), "{body}");

    // the API, the page and the metric
    let studies: serde_json::Value = serde_json::from_str(&http_get(&setup, "/api/studies")).unwrap();
    let listed = &studies["studies"][0];
    assert_eq!(listed["not_analysed_reason"], REASON, "{listed}");
    assert_eq!(listed["effective_priority"], serde_json::Value::Null, "{listed}");
    let page = format!("http://127.0.0.1:{}/", setup.http_port);
    let chromium = |args: &[&str], url: &str| common::chromium(work.path(), args, url);
    let dom = String::from_utf8(chromium(&["--dump-dom"], &page).stdout).unwrap();
    assert!(dom.contains(&format!("not analysed: {REASON}")), "the page says why:\n{dom}");
    assert!(dom.contains("class=\"badge not-analysed\""), "{dom}");
    let shots = std::env::var("PNEUMOTRIAGE_TEST_ARTIFACTS").map(PathBuf::from).unwrap_or(work.path().to_path_buf());
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join(format!("not-analysed-{backend:?}.png").to_lowercase());
    let _ = std::fs::remove_file(&shot);
    chromium(
        &["--window-size=1600,760", &format!("--screenshot={}", shot.display())],
        &format!("{page}#study={study}"),
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
    let metrics = http_get(&setup, "/metrics");
    assert!(metrics.contains("pneumotriage_not_analysed_reports_total{ending=\"skipped\"} 1"), "{metrics}");

    // the technologist corrects the age: a new version of the image, analysed; its result
    // follows the not-analysed message whatever the RIS's priorities
    let corrected = work.path().join("corrected.dcm");
    rg1_aged(&corrected, "045Y");
    assert!(storescu(setup.port, &[], &[&corrected]).status.success());
    wait_until("the result follows", || ris.received().len() == 2);
    let message = &ris.received()[1];
    let oru = hl7::check(message);
    assert!(oru.valid, "hl7apy: {}\n{}", oru.errors, message.replace('\r', "\n"));
    assert_eq!(oru.hl7apy["finding_status"], "P");
    assert!(["S", "A", "R"].contains(&oru.hl7apy["priority_obr27"].as_str().unwrap()), "{}", oru.hl7apy);
    let studies: serde_json::Value = serde_json::from_str(&http_get(&setup, "/api/studies")).unwrap();
    let listed = &studies["studies"][0];
    assert_eq!(listed["not_analysed_reason"], serde_json::Value::Null, "{listed}");
    assert!(listed["effective_priority"].is_string(), "{listed}");
    // the result's SR (and SEG, on a positive) join the not-analysed one in the PACS
    let stored = pacs.wait_for_instances(&study, 2, Duration::from_secs(120));
    assert!(stored.iter().filter(|i| i.modality == "SR").count() == 2, "{stored:?}");
}

on_both_backends!(a_child_is_reported_not_analysed_then_its_corrected_image_is_analysed);
