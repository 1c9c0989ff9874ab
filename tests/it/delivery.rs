//! Results to the PACS: the outbox delivers a positive's SEG and SR to dcmtk's `storescp` (also
//! over TLS), waits out a destination that is down, and stops at once on one that refuses us
//! until an admin retries; the whole loop ends in a real Orthanc, and a node killed during
//! delivery delivers after its restart, each object once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::orthanc::{self, StoredInstance};
use crate::common::{free_port, storescu, synthetic_positive, text, Backend, Setup};

/// dcmtk's storescp as the PACS, writing what it receives under `dir`; killed when dropped.
pub(crate) struct Pacs(Child);

impl Pacs {
    pub(crate) fn start(port: u16, dir: &Path, refuse: bool) -> Pacs {
        Pacs::start_with(port, dir, if refuse { &["--refuse"] } else { &[] })
    }

    fn start_with(port: u16, dir: &Path, args: &[&str]) -> Pacs {
        std::fs::create_dir_all(dir).unwrap();
        let mut command = Command::new("/usr/bin/storescp");
        command.args(["-aet", "PACS", "-od"]).arg(dir).args(args);
        let child = command.arg(port.to_string()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // listening once a TCP connection succeeds
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "storescp did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Pacs(child)
    }
}

impl Drop for Pacs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn setup_with_pacs(backend: Backend, pacs_port: u16) -> Setup {
    let mut setup = Setup::analysing(backend, "");
    setup.tail = format!(
        "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n\
         retry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n"
    );
    setup.write_config("", "", common::DEFAULT_PEERS);
    setup
}

type Delivery = (String, i64, Option<String>);

/// (state, attempts, last error) of every delivery.
fn deliveries(setup: &Setup) -> Vec<Delivery> {
    setup.with_store(async |store| {
        sqlx::query_as("SELECT state, attempts, last_error FROM deliveries ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap()
    })
}

/// Waits until there are `n` deliveries and each satisfies `done`.
fn wait_deliveries(setup: &Setup, n: usize, what: &str, done: impl Fn(&Delivery) -> bool) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = deliveries(setup);
        if all.len() == n && all.iter().all(&done) {
            return all;
        }
        assert!(Instant::now() < deadline, "{what}: {all:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The SOP Instance UIDs of the files under `dir`.
fn received(dir: &Path) -> Vec<String> {
    let mut uids = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path: PathBuf = entry.path();
        if let Ok(obj) = dicom_object::open_file(&path) {
            uids.push(obj.meta().media_storage_sop_instance_uid().trim_end_matches('\0').to_string());
        }
    }
    uids
}

/// The SOP Instance UIDs of the objects made (the SEG and the SR), sorted.
fn made_uids(setup: &Setup) -> Vec<String> {
    setup.with_store(async |store| {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT sop_instance_uid FROM outputs ORDER BY sop_instance_uid")
            .fetch_all(store.pool())
            .await
            .unwrap();
        rows.into_iter().map(|(u,)| u).collect()
    })
}

fn delivers_once_the_destination_is_up(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let positive = synthetic_positive(&work.path().join("images"));
    let pacs_port = free_port();
    let setup = setup_with_pacs(backend, pacs_port);
    let node = setup.start();
    assert!(storescu(setup.port, &[], &[&positive]).status.success());
    // Nothing listens yet: transient failures, retried.
    let failing = wait_deliveries(&setup, 2, "failed attempts", |d| d.1 >= 1 && d.2.is_some());
    assert!(failing.iter().all(|d| d.2.as_deref().unwrap().contains("cannot associate")), "{failing:?}");
    let inbox = work.path().join("pacs");
    let _pacs = Pacs::start(pacs_port, &inbox, false);
    wait_deliveries(&setup, 2, "delivered once the PACS is up", |d| d.0 == "delivered");
    let mut got = received(&inbox);
    got.sort();
    assert_eq!(got, made_uids(&setup), "the PACS has the SEG and the SR, once each");
    let log = node.log();
    assert!(log.contains("delivery will be retried") && log.contains("delivered"), "{log}");
    let out = setup.cli(&["deliveries", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = listed["objects"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["state"] == "delivered"), "{listed}");
    assert_eq!(rows.len(), 2, "{listed}");
    assert_eq!(listed["messages"].as_array().unwrap().len(), 0, "no messaging destination: {listed}");
}

fn a_refusing_destination_fails_once_until_retried(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let positive = synthetic_positive(&work.path().join("images"));
    let pacs_port = free_port();
    let inbox = work.path().join("pacs");
    let refusing = Pacs::start(pacs_port, &inbox, true);
    let setup = setup_with_pacs(backend, pacs_port);
    let _node = setup.start();
    assert!(storescu(setup.port, &[], &[&positive]).status.success());
    let failed = wait_deliveries(&setup, 2, "permanent failures", |d| d.0 == "failed");
    for (_, attempts, error) in &failed {
        assert_eq!(*attempts, 1, "one attempt: {error:?}");
        assert!(error.as_deref().unwrap_or("").contains("rejected"), "{error:?}");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(deliveries(&setup).iter().all(|d| d.1 == 1), "no retry loop on a permanent failure");
    let failed = setup.cli(&["deliveries", "--failed"]);
    assert!(text(&failed).contains("failed"), "{}", text(&failed));

    drop(refusing);
    let _pacs = Pacs::start(pacs_port, &inbox, false);
    let out = setup.cli(&["retry", "--all-failed"]);
    assert!(out.status.success() && text(&out).contains("2 deliveries re-queued"), "{}", text(&out));
    wait_deliveries(&setup, 2, "delivered after retry", |d| d.0 == "delivered");
    let mut got = received(&inbox);
    got.sort();
    assert_eq!(got, made_uids(&setup));
}

/// Over TLS (mutual: storescp requires our certificate): delivered to the PACS whose
/// certificate the configured authority signed; a destination configured with another
/// authority fails once, as a permanent failure naming the certificate, and is not retried.
#[test]
fn delivers_over_tls_and_refuses_an_unverified_server() {
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    common::make_certificates(&certs);
    let positive = synthetic_positive(&work.path().join("images"));
    let pacs_port = free_port();
    let inbox = work.path().join("pacs");
    let c = |name: &str| certs.join(name).display().to_string();
    let _pacs = Pacs::start_with(pacs_port, &inbox, &["+tls", &c("pacs.key"), &c("pacs.crt"), "+cf", &c("ca.crt")]);
    let mut setup = Setup::analysing(Backend::Sqlite, "");
    let destination = |name: &str, ca: &str| {
        format!(
            "[[destinations]]\nname = \"{name}\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n\
             objects = [\"seg\", \"sr\"]\nretry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n\
             [destinations.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nserver_name = \"localhost\"\n",
            c(ca),
            c("node.crt"),
            c("node.key")
        )
    };
    setup.tail = destination("pacs", "ca.crt") + &destination("impostor", "other-ca.crt");
    setup.write_config("", "", common::DEFAULT_PEERS);
    let check = setup.cli(&["check-config"]);
    assert!(check.status.success(), "{}", text(&check));
    let _node = setup.start();
    assert!(storescu(setup.port, &[], &[&positive]).status.success());
    let rows = |setup: &Setup| -> Vec<(String, String, i64, Option<String>)> {
        setup.with_store(async |store| {
            sqlx::query_as("SELECT destination, state, attempts, last_error FROM deliveries ORDER BY id")
                .fetch_all(store.pool())
                .await
                .unwrap()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let all = rows(&setup);
        if all.len() == 4 && all.iter().all(|d| d.1 == "delivered" || d.1 == "failed") {
            break all;
        }
        assert!(Instant::now() < deadline, "deliveries over TLS: {all:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for (destination, state, attempts, error) in &settled {
        if destination == "pacs" {
            assert_eq!(state, "delivered", "{settled:?}");
        } else {
            assert_eq!((state.as_str(), *attempts), ("failed", 1), "{settled:?}");
            let error = error.as_deref().unwrap_or("");
            assert!(error.contains("TLS") && error.to_lowercase().contains("certificate"), "{error}");
        }
    }
    let mut got = received(&inbox);
    got.sort();
    assert_eq!(got, made_uids(&setup), "the PACS has the SEG and the SR, once each");

    // A key file that is not there stops check-config, naming the key.
    setup.tail = setup.tail.replace(&c("node.key"), &c("missing.key"));
    setup.write_config("", "", common::DEFAULT_PEERS);
    let check = setup.cli(&["check-config"]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(text(&check).contains("destinations[0].tls.key_file"), "{}", text(&check));
}

fn orthanc_destination(port: u16, extra: &str) -> String {
    format!(
        "[outputs]\noverlay = true\n[[destinations]]\nname = \"orthanc\"\nae_title = \"{}\"\nhost = \"127.0.0.1\"\n\
         port = {port}\nretry_initial_secs = 1\nretry_max_secs = 2\n{extra}\n",
        orthanc::AET
    )
}

/// The whole loop: a modality sends a synthetic positive to the PACS (Orthanc) and to the node;
/// Orthanc's REST API then shows, in the image's study, the node's SEG, SR and secondary
/// capture, each once, with the UIDs the node recorded.
fn the_whole_loop_ends_in_orthanc(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let positive = synthetic_positive(&work.path().join("images"));
    let pacs = orthanc::start();
    let mut setup = Setup::analysing(backend, "");
    setup.tail = orthanc_destination(pacs.dicom_port, "");
    setup.write_config("", "", common::DEFAULT_PEERS);
    let _node = setup.start();
    assert!(storescu(pacs.dicom_port, &[], &[&positive]).status.success(), "the modality sends to the PACS");
    assert!(storescu(setup.port, &[], &[&positive]).status.success(), "and to the node");

    let study = common::study_instance_uid(&positive);
    let stored = pacs.wait_for_instances(&study, 4, Duration::from_secs(60));
    let mut modalities: Vec<&str> = stored.iter().map(|i| i.modality.as_str()).collect();
    modalities.sort();
    let source_modality = dicom_object::open_file(&positive)
        .unwrap()
        .element_by_name("Modality")
        .unwrap()
        .to_str()
        .unwrap()
        .trim()
        .to_string();
    let mut expected = vec![source_modality.as_str(), "OT", "SEG", "SR"];
    expected.sort();
    assert_eq!(modalities, expected, "{stored:?}\n{}", pacs.log());
    let by_modality = |m: &str| stored.iter().find(|i| i.modality == m).unwrap();
    assert_eq!(by_modality("SEG").sop_class_uid, "1.2.840.10008.5.1.4.1.1.66.4");
    assert_eq!(by_modality("SR").sop_class_uid, "1.2.840.10008.5.1.4.1.1.88.34");
    assert_eq!(by_modality("OT").sop_class_uid, "1.2.840.10008.5.1.4.1.1.7");
    let mut ours: Vec<String> =
        stored.iter().filter(|i| i.modality != source_modality).map(|i| i.sop_instance_uid.clone()).collect();
    ours.sort();
    assert_eq!(ours, made_uids(&setup), "Orthanc holds what the node made, once each");
    let series: std::collections::HashSet<&str> = stored.iter().map(|i| i.series_instance_uid.as_str()).collect();
    assert_eq!(series.len(), 4, "each object in its own series: {stored:?}");
    wait_deliveries(&setup, 3, "all delivered", |d| d.0 == "delivered" && d.1 == 1);
}

/// A PACS that accepts connections and never answers: an association hangs until its timeout.
struct Stall {
    port: u16,
}

impl Stall {
    fn start() -> Stall {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        Stall { port }
    }
}

/// `kill -9` while deliveries are in flight (the PACS stalls mid-association): after the
/// restart, pointed at a PACS that answers, every object is delivered, each stored once, under
/// the SOP Instance UIDs recorded before the crash.
fn a_node_killed_during_delivery_delivers_after_restart(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let positive = synthetic_positive(&work.path().join("images"));
    let stall = Stall::start();
    let mut setup = Setup::analysing(backend, "");
    setup.tail = orthanc_destination(stall.port, "timeout_secs = 300\nmax_associations = 3");
    setup.write_config("", "", common::DEFAULT_PEERS);
    let mut node = setup.start();
    assert!(storescu(setup.port, &[], &[&positive]).status.success());
    wait_deliveries(&setup, 3, "all three sending", |d| d.0 == "sending");
    let before = made_uids(&setup);
    node.kill9();

    let pacs = orthanc::start();
    setup.tail = orthanc_destination(pacs.dicom_port, "");
    setup.write_config("", "", common::DEFAULT_PEERS);
    let node = setup.start();
    wait_deliveries(&setup, 3, "delivered after the restart", |d| d.0 == "delivered");
    assert!(node.log().contains("deliveries interrupted by the last stop will be sent again"), "{}", node.log());
    assert_eq!(made_uids(&setup), before, "the objects were not made again");
    let stored: Vec<StoredInstance> =
        pacs.wait_for_instances(&common::study_instance_uid(&positive), 3, Duration::from_secs(30));
    let mut got: Vec<String> = stored.iter().map(|i| i.sop_instance_uid.clone()).collect();
    got.sort();
    assert_eq!(got, before, "each object stored once, under the UIDs recorded before the crash");
}

on_both_backends!(
    delivers_once_the_destination_is_up,
    a_refusing_destination_fails_once_until_retried,
    the_whole_loop_ends_in_orthanc,
    a_node_killed_during_delivery_delivers_after_restart
);
