//! Crash safety: `kill -9` while a modality sends, then restart; and the start-up recovery rule.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{assert_same_pixels, deid_cat, python, sop_instance_uid, storescu, text, tool, Backend, Setup};

/// Files storescu reported as stored with Success, from its verbose log.
pub(crate) fn acknowledged(storescu_log: &str) -> Vec<PathBuf> {
    let mut current: Option<PathBuf> = None;
    let mut out = Vec::new();
    for line in storescu_log.lines() {
        if let Some(path) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(path.trim()));
        } else if line.starts_with("I: Received Store Response (Success)") {
            out.extend(current.take());
        }
    }
    out
}

fn kill_9_during_a_send_loses_nothing_acknowledged(backend: Backend) {
    let setup = Setup::new(backend);
    let images = tempfile::tempdir().unwrap();
    let made = Command::new(python())
        .arg(tool("make_series.py"))
        .arg(images.path())
        .args(["80", "--size", "700"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let mut files: Vec<PathBuf> = std::fs::read_dir(images.path()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();

    let mut node = setup.start();
    let log_path = setup.dir.path().join("storescu.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut sender = Command::new("/usr/bin/storescu")
        .args(["-v", "-aet", "STORESCU", "-aec", "PNEUMOTRIAGE", "127.0.0.1", &setup.port.to_string()])
        .args(&files)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // kill the node once a few instances are in, while the rest are on their way
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged(&std::fs::read_to_string(&log_path).unwrap()).len() < 8 {
        assert!(Instant::now() < deadline, "storescu made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    node.kill9();
    let _ = sender.wait();
    let sent = acknowledged(&std::fs::read_to_string(&log_path).unwrap());
    assert!(
        sent.len() >= 8 && sent.len() < files.len(),
        "the kill must land mid-stream: {} of {}",
        sent.len(),
        files.len()
    );

    let node = setup.start();
    let rows = setup.instances();
    let by_uid: std::collections::HashMap<_, _> = rows.iter().map(|r| (r.0.clone(), r.2.clone())).collect();
    for file in &sent {
        let uid = sop_instance_uid(file);
        let path =
            by_uid.get(&uid).unwrap_or_else(|| panic!("acknowledged {} is missing after restart", file.display()));
        let stored = setup.spool_dir().join(path);
        assert!(stored.exists(), "{} has a row but no spool file", file.display());
        sop_instance_uid(&stored); // parses
    }
    assert_same_pixels(&sent[0], &setup.spool_dir().join(&by_uid[&sop_instance_uid(&sent[0])]));
    assert_same_pixels(sent.last().unwrap(), &setup.spool_dir().join(&by_uid[&sop_instance_uid(sent.last().unwrap())]));
    // no partial file visible, and every spool file has its row
    let spool: HashSet<String> = setup.spool_files().into_iter().collect();
    assert!(spool.iter().all(|p| !p.starts_with("tmp/")), "temporary files survived: {spool:?}");
    let rows_paths: HashSet<String> = rows.iter().map(|r| r.2.clone()).collect();
    assert_eq!(spool, rows_paths, "spool files and rows must match one to one");
    // the sender's retry of everything is answered Success without duplicating work
    let out = storescu(setup.port, &[], &files.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), files.len() as i64);
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances WHERE version > 1"), 0);
    drop(node);
}

/// Forgets the rows of an instance, as a crash between placing its file and committing them
/// would have left it.
fn forget_rows(setup: &Setup, sop_instance_uid: &str) {
    setup.with_store(async |store| {
        let pool = store.pool();
        for sql in [
            "DELETE FROM jobs WHERE instance_id IN (SELECT id FROM instances WHERE sop_instance_uid = $1)",
            "DELETE FROM instances WHERE sop_instance_uid = $1",
        ] {
            sqlx::query(sql).bind(sop_instance_uid).execute(pool).await.unwrap();
        }
        sqlx::query("DELETE FROM studies WHERE id NOT IN (SELECT study_id FROM instances)")
            .execute(pool)
            .await
            .unwrap();
    });
}

/// On a spool shared by several nodes, a file without rows may be one another node is
/// committing: a node starting up leaves a young one alone (and another node's temporary files).
fn a_shared_spool_leaves_a_young_file_without_rows_to_its_node(backend: Backend) {
    let setup = Setup::with(backend, "shared_spool = true", "");
    let mut node = setup.start();
    let cat = deid_cat();
    assert!(storescu(setup.port, &[], &[&cat]).status.success());
    node.kill9();
    forget_rows(&setup, &sop_instance_uid(&cat));
    let node = setup.start();
    node.wait_for_log("left to the node storing them");
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 0, "not registered by this node");
    assert_eq!(setup.spool_files().iter().filter(|p| p.ends_with(".dcm")).count(), 1, "and not removed");
}

fn recovery_registers_orphans_and_requeues_running_jobs(backend: Backend) {
    let setup = Setup::new(backend);
    let mut node = setup.start();
    let cat = deid_cat();
    let rg1 = common::pydicom_data("RG1_UNCR.dcm");
    assert!(storescu(setup.port, &[], &[&cat, &rg1]).status.success());
    node.kill9();

    // A crash between rename and commit leaves the cat's file without rows;
    // a crash during analysis leaves RG1's job running; a crash mid-receive leaves a .part.
    forget_rows(&setup, &sop_instance_uid(&cat));
    setup.with_store(async |store| {
        sqlx::query("UPDATE jobs SET state = 'running', claimed_by = 'test-node', lease_expires_at = $1")
            .bind(pneumotriage::store::now_ms() + 3_600_000)
            .execute(store.pool())
            .await
            .unwrap();
    });
    std::fs::write(setup.spool_dir().join("tmp/999-0.part"), b"half an image").unwrap();
    // this node's own temporary folder, and another node's (a shared spool): only its own go
    std::fs::write(setup.spool_dir().join("tmp/test-node/998-0.part"), b"half an image").unwrap();
    std::fs::create_dir_all(setup.spool_dir().join("tmp/node-b")).unwrap();
    std::fs::write(setup.spool_dir().join("tmp/node-b/997-0.part"), b"being received by node-b").unwrap();
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 1);

    let node = setup.start();
    let log = node.log();
    assert!(log.contains("recovered from an unclean stop"), "{log}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 2, "the orphan is registered");
    assert_eq!(setup.count("SELECT COUNT(*) FROM jobs WHERE state = 'queued'"), 2, "both jobs are queued");
    assert_eq!(setup.count("SELECT COUNT(*) FROM events WHERE kind = 'instance_recovered'"), 1);
    assert_eq!(setup.count("SELECT COUNT(*) FROM events WHERE kind = 'jobs_requeued'"), 1);
    assert!(!setup.spool_dir().join("tmp/999-0.part").exists(), "partial files are removed");
    assert!(!setup.spool_dir().join("tmp/test-node/998-0.part").exists(), "its own partial files are removed");
    assert!(setup.spool_dir().join("tmp/node-b/997-0.part").exists(), "another node's are not");
    // the sender retries the instance it never saw acknowledged: recognised, not duplicated
    assert!(storescu(setup.port, &[], &[&cat]).status.success());
    setup.wait_count("SELECT COUNT(*) FROM events WHERE kind = 'instance_duplicate'", 1);
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 2);
}

on_both_backends!(
    kill_9_during_a_send_loses_nothing_acknowledged,
    recovery_registers_orphans_and_requeues_running_jobs,
    a_shared_spool_leaves_a_young_file_without_rows_to_its_node
);
