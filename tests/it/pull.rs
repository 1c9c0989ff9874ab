//! Pulling from a PACS (`[[sources]]`): a real Orthanc holding 50 synthetic studies is the
//! source. `fetch --since` finds them (C-FIND) and has Orthanc send them to the node (C-MOVE);
//! a node killed with SIGKILL in the middle of the pull loses nothing it acknowledged, and the
//! same fetch run again completes it; every image is analysed once, and a third run pulls
//! nothing. The catch-up of `serve` pulls the studies that reached the PACS while the node was
//! down.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::orthanc::{self, Orthanc};
use crate::common::{self, storescu, synthetic_images, text, Backend, Setup};

/// The node's AE title in the test configuration, which Orthanc maps to the node's port.
const NODE_AE: &str = "PNEUMOTRIAGE";

/// A node that analyses, with Orthanc as its source (and Orthanc allowed to store to it).
fn node_with_source(backend: Backend, extra_source: &str) -> (Setup, Orthanc) {
    let mut setup = Setup::analysing(backend, "");
    let pacs = orthanc::start_with(json!({ "DicomModalities": { "node": [NODE_AE, "127.0.0.1", setup.port] } }));
    setup.tail = format!(
        "[[sources]]\nname = \"orthanc\"\nae_title = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n\
         max_studies_per_minute = 6000\ntimeout_secs = 20\n{extra_source}\n",
        orthanc::AET,
        pacs.dicom_port
    );
    let peers = format!("{}\n[[dicom.peers]]\nae_title = \"{}\"\n", common::DEFAULT_PEERS, orthanc::AET);
    setup.write_config("", "", &peers);
    (setup, pacs)
}

/// Stores `files` in Orthanc (dcmtk's storescu to its DICOM port).
fn load_pacs(pacs: &Orthanc, files: &[PathBuf]) {
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = storescu(pacs.dicom_port, &[], &refs);
    assert!(out.status.success(), "{}", text(&out));
    let stored = pacs.get("/statistics")["CountInstances"].as_u64().unwrap();
    assert_eq!(stored, files.len() as u64, "Orthanc holds every file");
}

/// Waits until `sql` counts `expected`, for up to `secs` (analysis of many images on two cores).
fn wait_count(setup: &Setup, sql: &str, expected: i64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let n = setup.count(sql);
        if n == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {n}, expected {expected}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn fetch(setup: &Setup, args: &[&str]) -> std::process::Output {
    let mut all = vec!["fetch"];
    all.extend_from_slice(args);
    setup.cli(&all)
}

/// The Must-show pull: 50 studies, a SIGKILL mid-pull, a second run that completes it, every
/// image analysed once, a third run that pulls nothing.
fn fetch_pulls_every_study_once_across_a_crash(backend: Backend) {
    let (setup, pacs) = node_with_source(backend, "");
    let files = synthetic_images(&setup.dir.path().join("pacs"), 50, 2901);
    let studies: std::collections::BTreeSet<String> = files.iter().map(|f| common::study_instance_uid(f)).collect();
    assert_eq!(studies.len(), 50, "one image per study");
    load_pacs(&pacs, &files);

    // a dry run lists the 50 studies and pulls nothing
    let dry = fetch(&setup, &["--since", "2000-01-01", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    let listed = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(listed.matches("would pull").count(), 50, "{listed}");
    for study in &studies {
        assert!(listed.contains(study.as_str()), "{study} listed:\n{listed}");
    }
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 0);

    // without a running node, fetch says so and moves nothing
    let refused = fetch(&setup, &["--since", "2000-01-01"]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("start `pneumotriage serve` first"), "{}", text(&refused));

    // kill -9 of the node in the middle of the pull
    let mut node = setup.start();
    let started = Instant::now();
    let pulling = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .args(["fetch", "--since", "2000-01-01", "--config"])
        .arg(&setup.config_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while setup.count("SELECT COUNT(*) FROM instances") < 10 {
        assert!(Instant::now() < deadline, "the pull did not start:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    node.kill9();
    let acknowledged = setup.instances().into_iter().map(|(uid, ..)| uid).collect::<Vec<_>>();
    let first = pulling.wait_with_output().unwrap();
    let said = text(&first);
    assert!(!first.status.success(), "studies sent to a dead node fail: {said}");
    assert!(said.contains("failed:"), "{said}");
    assert!(said.contains("run the same fetch again"), "{said}");
    assert!(acknowledged.len() < 50, "killed in the middle: {} stored", acknowledged.len());
    println!(
        "pull: {} of 50 images acknowledged when the node was killed, {:.1?} into the pull",
        acknowledged.len(),
        started.elapsed()
    );

    // the same fetch completes it; the studies held whole are skipped
    let node = setup.start();
    let resumed = Instant::now();
    let second = fetch(&setup, &["--since", "2000-01-01"]);
    println!("pull: the second fetch took {:.1?}", resumed.elapsed());
    assert!(second.status.success(), "{}\n{}", text(&second), node.log());
    let table = String::from_utf8_lossy(&second.stdout);
    assert!(table.matches("pulled 1 images").count() + table.matches("held").count() == 50, "{table}");
    wait_count(&setup, "SELECT COUNT(*) FROM instances", 50, 120);
    let instances = setup.instances();
    for uid in &acknowledged {
        assert!(instances.iter().any(|(u, ..)| u == uid), "{uid} was acknowledged before the kill and is kept");
    }
    assert!(instances.iter().all(|(_, version, ..)| *version == 1), "no image stored twice: {instances:?}");
    // every image analysed, once
    wait_count(&setup, "SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'skipped')", 50, 600);
    println!("pull: 50 of 50 analysed {:.1?} after the second fetch began", resumed.elapsed());
    assert_eq!(setup.count("SELECT COUNT(*) FROM jobs"), 50);
    assert_eq!(
        setup.count("SELECT COUNT(DISTINCT instance_id) FROM results"),
        setup.count("SELECT COUNT(*) FROM results")
    );

    // a third run pulls nothing
    let third = fetch(&setup, &["--since", "2000-01-01"]);
    assert!(third.status.success(), "{}", text(&third));
    let table = String::from_utf8_lossy(&third.stdout);
    assert_eq!(table.matches("held").count(), 50, "{table}");
    assert!(!table.contains("pulled"), "{table}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 50);
    drop(node);
}

/// One study by its UID, one by accession number; a source that does not know the node's AE
/// title fails with a reason that says what to fix.
fn fetch_by_study_and_accession(backend: Backend) {
    let (setup, pacs) = node_with_source(backend, "");
    let files = synthetic_images(&setup.dir.path().join("pacs"), 3, 2902);
    load_pacs(&pacs, &files);
    let _node = setup.start();
    let study = common::study_instance_uid(&files[0]);
    let out = fetch(&setup, &["--study", &study]);
    assert!(out.status.success(), "{}", text(&out));
    wait_count(&setup, "SELECT COUNT(*) FROM instances", 1, 60);
    let accession = dicom_object::open_file(&files[1])
        .unwrap()
        .element(dicom_dictionary_std::tags::ACCESSION_NUMBER)
        .unwrap()
        .to_str()
        .unwrap()
        .trim()
        .to_string();
    let out = fetch(&setup, &["--accession", &accession]);
    assert!(out.status.success(), "{}", text(&out));
    wait_count(&setup, "SELECT COUNT(*) FROM instances", 2, 60);

    // a move destination the source does not know
    let config = std::fs::read_to_string(&setup.config_path).unwrap();
    let wrong = config.replace("timeout_secs = 20", "timeout_secs = 20\nmove_destination = \"UNKNOWN\"");
    std::fs::write(&setup.config_path, wrong).unwrap();
    let third = common::study_instance_uid(&files[2]);
    let out = fetch(&setup, &["--study", &third]);
    assert!(!out.status.success());
    assert!(text(&out).contains("does it know the move destination \"UNKNOWN\""), "{}", text(&out));
}

/// The node is down while Orthanc receives 10 studies; its catch-up pulls all 10 at start-up.
fn catch_up_pulls_what_arrived_while_down(backend: Backend) {
    let (setup, pacs) = node_with_source(backend, "catch_up = true");
    let files = synthetic_images(&setup.dir.path().join("pacs"), 11, 2903);
    // study dates of today: the catch-up asks for the days since the last image received
    let today = pneumotriage::domain::dicom_date(pneumotriage::store::now_ms());
    let dated = Command::new("/usr/bin/dcmodify")
        .args(["-nb", "-m", &format!("(0008,0020)={today}")])
        .args(&files)
        .output()
        .unwrap();
    assert!(dated.status.success(), "{}", text(&dated));

    // one image before the stop: the catch-up starts from it
    let mut node = setup.start();
    let out = storescu(setup.port, &[], &[files[0].as_path()]);
    assert!(out.status.success(), "{}", text(&out));
    node.wait_for_log("instance stored");
    node.kill9();

    load_pacs(&pacs, &files[1..]);
    let node = setup.start();
    wait_count(&setup, "SELECT COUNT(*) FROM instances", 11, 120);
    let log = node.wait_for_log("catch-up done");
    assert!(log.contains("moved=10"), "{log}");
    wait_count(&setup, "SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'skipped')", 11, 300);
}

on_both_backends!(
    fetch_pulls_every_study_once_across_a_crash,
    fetch_by_study_and_accession,
    catch_up_pulls_what_arrived_while_down,
);
