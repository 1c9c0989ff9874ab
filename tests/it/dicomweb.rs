//! DICOMweb in and out, against a real Orthanc with its DICOMweb plugin (Debian's
//! `orthanc-dicomweb`): Orthanc sends a study to the node by STOW-RS (its own DICOMweb client)
//! and receives the node's SEG and SR by STOW-RS (a `dicomweb` destination); PyPI's
//! dicomweb-client stores to the node and reads the node's outputs back from Orthanc by
//! WADO-RS, and pydicom reads them. What the node refuses, it refuses per instance, with the
//! DIMSE status a C-STORE would get, in the Store Instances Response.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::orthanc::{self, Orthanc};
use crate::common::{self, python, storescu, synthetic_images, synthetic_positive, text, Backend, Setup};

const TOKEN: &str = "stow-test-token-0123456789";
const SEG: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// A node that analyses and answers STOW-RS with `TOKEN`, and Orthanc with the DICOMweb plugin,
/// which knows the node as DICOMweb server `node` and is the node's `dicomweb` destination.
fn node_and_orthanc(backend: Backend) -> (Setup, Orthanc) {
    let mut setup = Setup::analysing(backend, "");
    setup.http = format!("token = \"{TOKEN}\"");
    let node_url = format!("http://127.0.0.1:{}/dicomweb/", setup.http_port);
    let pacs = orthanc::start_with(json!({
        "Plugins": [orthanc::DICOMWEB_PLUGIN],
        "DicomWeb": {
            "Enable": true,
            "Root": "/dicom-web/",
            "Servers": { "node": { "Url": node_url, "HttpHeaders": { "Authorization": format!("Bearer {TOKEN}") } } }
        }
    }));
    setup.tail = format!(
        "[[destinations]]\nname = \"orthanc-web\"\nkind = \"dicomweb\"\nurl = \"http://127.0.0.1:{}/dicom-web\"\n\
         retry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 10\n",
        pacs.http_port
    );
    setup.write_config("", "", common::DEFAULT_PEERS);
    (setup, pacs)
}

/// Runs tests/tools/dicomweb_check.py; its JSON output.
fn dicomweb_check(args: &[&str]) -> Value {
    let out = std::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/dicomweb_check.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "dicomweb_check.py {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One POST with a binary body; the status and the body.
fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&response[..split]).split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_slice(&response[split + 4..]).unwrap_or(Value::Null))
}

/// A multipart/related body of `parts` (content type, bytes).
fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "test-boundary-7f3a";
    let mut body = Vec::new();
    for (content_type, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Type: {content_type}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"), body)
}

/// The Failure Reasons of a Store Instances Response, in order.
fn failure_reasons(response: &Value) -> Vec<u64> {
    response["00081198"]["Value"]
        .as_array()
        .map(|items| items.iter().map(|i| i["00081197"]["Value"][0].as_u64().unwrap()).collect())
        .unwrap_or_default()
}

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Orthanc's DICOMweb client sends a positive to the node by STOW-RS; the node analyses it and
/// sends its SEG and SR to Orthanc by STOW-RS; dicomweb-client reads them back from Orthanc by
/// WADO-RS and pydicom reads them.
fn orthanc_stows_to_the_node_and_receives_its_results_by_stow(backend: Backend) {
    let (setup, pacs) = node_and_orthanc(backend);
    let node = setup.start();
    let positive = synthetic_positive(&setup.dir.path().join("images"));
    let study = common::study_instance_uid(&positive);
    let out = storescu(pacs.dicom_port, &[], &[positive.as_path()]);
    assert!(out.status.success(), "{}", text(&out));
    let found = pacs.post("/tools/lookup", &study);
    let id = found.as_array().unwrap().iter().find(|r| r["Type"] == "Study").unwrap()["ID"].clone();
    let body = json!({ "Resources": [id] }).to_string();
    let (status, _, answer) =
        common::http_request(pacs.http_port, "POST", "/dicom-web/servers/node/stow", &[], &body).unwrap();
    let sent: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{sent}\nOrthanc:\n{}\nnode:\n{}", pacs.log(), node.log());
    assert!(sent.get("FailedSOPSequence").is_none(), "{sent}");
    node.wait_for_log("instance stored (STOW-RS)");
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances WHERE calling_ae = 'STOW-RS http.token'"), 1);

    // the node's results reach Orthanc by STOW-RS, each delivered once
    wait_until("the SEG and SR in Orthanc", 180, || {
        let modalities: Vec<String> = pacs.instances_of_study(&study).into_iter().map(|i| i.modality).collect();
        modalities.contains(&"SEG".to_string()) && modalities.contains(&"SR".to_string())
    });
    wait_until("every delivery ended", 60, || {
        setup.count("SELECT COUNT(*) FROM deliveries WHERE state <> 'delivered'") == 0
    });
    let delivered = setup.count("SELECT COUNT(*) FROM deliveries");
    assert!(delivered >= 2, "a SEG and an SR at least: {delivered}");
    let made = pacs.instances_of_study(&study).into_iter().filter(|i| i.modality != "CR" && i.modality != "DX").count();
    assert_eq!(made as i64, delivered, "Orthanc holds each delivered object once");

    // dicomweb-client reads them back by WADO-RS, and pydicom reads what it got
    let read = dicomweb_check(&["outputs", &format!("http://127.0.0.1:{}/dicom-web", pacs.http_port), &study]);
    let read = read.as_array().unwrap();
    assert!(read.iter().any(|i| i["sop_class"] == SEG && i["modality"] == "SEG"), "{read:?}");
    assert!(read.iter().any(|i| i["modality"] == "SR"), "{read:?}");
}

/// dicomweb-client stores three images in one request; the same again is taken as stored with
/// nothing new; refusals come per instance with a C-STORE's status, and the whole request is
/// refused without the token or with another media type.
fn stow_rs_in_answers_per_instance(backend: Backend) {
    let (setup, _pacs) = node_and_orthanc(backend);
    let _node = setup.start();
    let files = synthetic_images(&setup.dir.path().join("images"), 3, 2904);
    let paths: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    let url = format!("http://127.0.0.1:{}/dicomweb", setup.http_port);
    let mut args = vec!["store", url.as_str(), TOKEN];
    args.extend(&paths);
    let stored = dicomweb_check(&args);
    let mut uids: Vec<String> = files.iter().map(|f| common::sop_instance_uid(f)).collect();
    let mut answered: Vec<String> =
        stored["stored"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect();
    uids.sort();
    answered.sort();
    assert_eq!(answered, uids, "{stored}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 3);
    let again = dicomweb_check(&args);
    assert_eq!(again["stored"].as_array().unwrap().len(), 3, "{again}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 3, "the same bytes again: nothing new");

    let port = setup.http_port;
    let bearer = format!("Bearer {TOKEN}");
    let image = std::fs::read(&files[0]).unwrap();
    // no token: refused whole (a small body: the answer comes before the body is read)
    let (content_type, body) = multipart(&[("application/dicom", b"x")]);
    let (status, _) = post(port, "/dicomweb/studies", &[("Content-Type", &content_type)], &body);
    assert_eq!(status, 401);
    // another media type: refused whole
    let (status, _) =
        post(port, "/dicomweb/studies", &[("Content-Type", "application/json"), ("Authorization", &bearer)], b"{}");
    assert_eq!(status, 415);
    // per instance: bytes that are no DICOM, a class the node does not take, the wrong study
    let mr = std::fs::read(common::mr_small()).unwrap();
    let (content_type, body) = multipart(&[("application/dicom", b"not a DICOM object"), ("application/dicom", &mr)]);
    let headers = [("Content-Type", content_type.as_str()), ("Authorization", bearer.as_str())];
    let (status, response) = post(port, "/dicomweb/studies", &headers, &body);
    assert_eq!(status, 409, "{response}");
    assert_eq!(failure_reasons(&response), vec![0xC000, 0x0122], "{response}");
    let (content_type, body) =
        multipart(&[("application/dicom", &image), ("application/dicom", &std::fs::read(&files[1]).unwrap())]);
    let own_study = common::study_instance_uid(&files[1]);
    let headers = [("Content-Type", content_type.as_str()), ("Authorization", bearer.as_str())];
    let (status, response) = post(port, &format!("/dicomweb/studies/{own_study}"), &headers, &body);
    assert_eq!(status, 202, "one kept, one of another study: {response}");
    assert_eq!(failure_reasons(&response), vec![0xA900], "{response}");
    assert_eq!(response["00081199"]["Value"].as_array().unwrap().len(), 1, "{response}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 3, "nothing refused was kept");
    assert!(Path::new(&setup.spool_dir()).exists());
}

/// A DICOMweb-only source: `fetch` finds the studies by QIDO-RS and retrieves them by WADO-RS
/// into the node's spool and database (no listener needed), the node analyses them, and a
/// second fetch finds every study held.
fn a_dicomweb_source_is_pulled_by_qido_and_wado(backend: Backend) {
    let (mut setup, pacs) = node_and_orthanc(backend);
    setup.tail.push_str(&format!(
        "[[sources]]\nname = \"orthanc-web\"\nkind = \"dicomweb\"\nurl = \"http://127.0.0.1:{}/dicom-web\"\n\
         max_studies_per_minute = 6000\n",
        pacs.http_port
    ));
    setup.write_config("", "", common::DEFAULT_PEERS);
    let files = synthetic_images(&setup.dir.path().join("pacs"), 5, 2905);
    let refs: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
    let out = storescu(pacs.dicom_port, &[], &refs);
    assert!(out.status.success(), "{}", text(&out));

    let dry = setup.cli(&["fetch", "--since", "2000-01-01", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert_eq!(String::from_utf8_lossy(&dry.stdout).matches("would pull").count(), 5, "{}", text(&dry));
    let pulled = setup.cli(&["fetch", "--since", "2000-01-01"]);
    assert!(pulled.status.success(), "{}", text(&pulled));
    assert_eq!(String::from_utf8_lossy(&pulled.stdout).matches("pulled 1 images").count(), 5, "{}", text(&pulled));
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances WHERE calling_ae = 'WADO-RS orthanc-web'"), 5);
    let uids: std::collections::BTreeSet<String> = files.iter().map(|f| common::sop_instance_uid(f)).collect();
    let stored: std::collections::BTreeSet<String> = setup.instances().into_iter().map(|(uid, ..)| uid).collect();
    assert_eq!(stored, uids);

    // the node analyses what the fetch kept; a second fetch pulls nothing
    let _node = setup.start();
    wait_until("every pulled image analysed", 180, || {
        setup.count("SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'skipped')") == 5
    });
    let again = setup.cli(&["fetch", "--since", "2000-01-01"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(String::from_utf8_lossy(&again.stdout).matches("held").count(), 5, "{}", text(&again));
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 5);
}

on_both_backends!(
    orthanc_stows_to_the_node_and_receives_its_results_by_stow,
    stow_rs_in_answers_per_instance,
    a_dicomweb_source_is_pulled_by_qido_and_wado,
);
