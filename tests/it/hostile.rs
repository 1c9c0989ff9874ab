//! Hostile input, as an attacker or a buggy modality would send it, to a node run as the admin
//! runs it (`serve`, analysing what it receives): each refusal gets its answer and a log line,
//! memory stays bounded, and afterwards the node still answers C-ECHO and analyses the next
//! valid image: a test per kind of hostile input (edges.rs holds those found later).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::scu::{self, associate, context_id, send_command, store_command};
use crate::common::{pydicom_data, python, storescu, text, Backend, Node, Setup};
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::Pdu;

const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// The node still answers C-ECHO, and a valid chest radiograph sent now is stored and analysed.
fn assert_still_serving(setup: &Setup) {
    let echo = Command::new("/usr/bin/echoscu")
        .args(["-aet", "ECHOSCU", "-aec", "PNEUMOTRIAGE", "127.0.0.1", &setup.port.to_string()])
        .output()
        .unwrap();
    assert!(echo.status.success(), "C-ECHO after the attack: {}", text(&echo));
    let before = setup.count("SELECT COUNT(*) FROM results");
    // a new instance each time: a copy of a real chest radiograph under a new SOP Instance UID
    static COPIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let copy = setup.dir.path().join(format!("valid-{n}.dcm"));
    std::fs::copy(pydicom_data("RG1_UNCR.dcm"), &copy).unwrap();
    let uid = format!("1.2.826.0.1.3680043.10.1447.98.{}.{n}", std::process::id());
    common::run("dcmodify", &["-nb", "-m", &format!("SOPInstanceUID={uid}"), &copy.display().to_string()]);
    let out = storescu(setup.port, &[], &[&copy]);
    assert!(out.status.success(), "a valid image after the attack: {}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    while setup.count("SELECT COUNT(*) FROM results") <= before {
        assert!(Instant::now() < deadline, "the valid image sent after the attack was not analysed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints the node's peak resident memory so far (VmHWM) after `what`, and checks it stayed
/// under `limit_mib`.
fn assert_peak_rss_below(node: &Node, limit_mib: u64, what: &str) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let peak = line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024;
    println!("peak RSS after {what}: {peak} MiB");
    assert!(peak < limit_mib, "peak RSS {peak} MiB after {what}");
}

fn header(out: &mut Vec<u8>, group: u16, element: u16, length: u32) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
}

fn implicit_text(out: &mut Vec<u8>, group: u16, element: u16, value: &str) {
    let mut value = value.as_bytes().to_vec();
    if value.len() % 2 == 1 {
        value.push(0);
    }
    header(out, group, element, value.len() as u32);
    out.extend_from_slice(&value);
}

/// A CR data set in Implicit VR LE whose identity is `sop_instance`, then `extra` bytes.
fn cr_dataset(sop_instance: &str, extra: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    implicit_text(&mut out, 0x0008, 0x0016, CR);
    implicit_text(&mut out, 0x0008, 0x0018, sop_instance);
    implicit_text(&mut out, 0x0008, 0x0060, "CR");
    implicit_text(&mut out, 0x0020, 0x000D, "1.2.826.0.1.3680043.10.1447.99.1");
    out.extend_from_slice(extra);
    out
}

/// `levels` undefined-length sequences, each in an item of the one before, in Implicit VR LE.
fn nested_sequences(levels: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..levels {
        header(&mut out, 0x0040, 0xA730, 0xFFFF_FFFF);
        header(&mut out, 0xFFFE, 0xE000, 0xFFFF_FFFF);
    }
    for _ in 0..levels {
        header(&mut out, 0xFFFE, 0xE00D, 0);
        header(&mut out, 0xFFFE, 0xE0DD, 0);
    }
    out
}

/// Point 1: a sequence nested 5,000 levels deep is answered 0xC000; nothing is kept.
fn deep_nesting_is_refused(backend: Backend) {
    let setup = Setup::analysing(backend, "");
    let node = setup.start();
    let mut assoc = associate(setup.port, &[(CR, IMPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    let uid = "1.2.826.0.1.3680043.10.1447.99.2";
    let data = cr_dataset(uid, &nested_sequences(5_000));
    assert_eq!(scu::store(&mut assoc, ctx, CR, uid, &data), 0xC000);
    assoc.release().unwrap();
    let log = node.wait_for_log("instance refused");
    assert!(log.contains("nested deeper than 64 levels") && log.contains("TESTSCU"), "{log}");
    assert_eq!(setup.count(&format!("SELECT COUNT(*) FROM instances WHERE sop_instance_uid = '{uid}'")), 0);
    assert_still_serving(&setup);
}

/// Point 3: elements that declare ~4 GB in a ~100-byte data set, four at once: 0xC000 each,
/// and the node's memory stays small; and a 300 MB private element is stored with bounded memory.
fn lying_lengths_allocate_nothing(backend: Backend) {
    let setup = Setup::analysing(backend, "");
    let node = setup.start();
    let senders: Vec<_> = (0..4)
        .map(|i| {
            let port = setup.port;
            std::thread::spawn(move || {
                let mut assoc = associate(port, &[(CR, IMPLICIT_LE)]).unwrap();
                let ctx = context_id(&assoc, CR);
                let uid = format!("1.2.826.0.1.3680043.10.1447.99.3.{i}");
                let mut lie = Vec::new();
                header(&mut lie, 0x0009, 0x1010, 0xFFFF_FFF0);
                lie.extend_from_slice(&[0u8; 32]);
                let status = scu::store(&mut assoc, ctx, CR, &uid, &cr_dataset(&uid, &lie));
                assoc.release().unwrap();
                status
            })
        })
        .collect();
    for sender in senders {
        assert_eq!(sender.join().unwrap(), 0xC000);
    }
    let log = node.wait_for_log("declares 4294967280 bytes");
    assert!(log.contains("status=0xC000"), "{log}");
    assert_peak_rss_below(&node, 400, "four 4 GB length lies");

    // a real 300 MB private element is a valid data set: kept, streamed to disk, not held in memory
    let mut big = Vec::new();
    let private = vec![0x5Au8; 300 << 20];
    header(&mut big, 0x0009, 0x1010, private.len() as u32);
    big.extend_from_slice(&private);
    let uid = "1.2.826.0.1.3680043.10.1447.99.4";
    let mut assoc = associate(setup.port, &[(CR, IMPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    assert_eq!(scu::store(&mut assoc, ctx, CR, uid, &cr_dataset(uid, &big)), 0x0000);
    assoc.release().unwrap();
    drop((big, private));
    // and analysed (it has no pixel data: the job ends once the file was read and checked)
    setup.wait_count(
        &format!(
            "SELECT COUNT(*) FROM jobs j JOIN instances i ON i.id = j.instance_id \
             WHERE i.sop_instance_uid = '{uid}' AND j.state NOT IN ('queued', 'running')"
        ),
        1,
    );
    // read without its 300 MB value (it has no pixel data, so the models cannot take it: it is
    // skipped, not failed)
    let reason = setup.with_store(async |store| {
        let (state, reason): (String, Option<String>) = sqlx::query_as(
            "SELECT j.state, j.reason FROM jobs j JOIN instances i ON i.id = j.instance_id \
             WHERE i.sop_instance_uid = $1",
        )
        .bind(uid)
        .fetch_one(store.pool())
        .await
        .unwrap();
        format!("{state}: {}", reason.unwrap_or_default())
    });
    assert!(reason.starts_with("skipped: not analysable"), "{reason}");
    assert_peak_rss_below(&node, 200, "a 300 MB private element");
    assert_still_serving(&setup);
}

/// Point 4: command fragments never marked last are cut off at the command set limit.
fn unfinished_command_is_aborted(backend: Backend) {
    let setup = Setup::analysing(backend, "");
    let node = setup.start();
    let mut assoc = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    let fragment = vec![0u8; 60_000];
    let mut sent = 0usize;
    for _ in 0..10_000 {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: ctx,
                value_type: PDataValueType::Command,
                is_last: false,
                data: fragment.clone(),
            }],
        };
        if assoc.send(&pdu).is_err() {
            break;
        }
        sent += fragment.len();
    }
    assert!(sent < 64 << 20, "the node read {sent} bytes of one command set");
    let log = node.wait_for_log("command set larger than");
    assert!(log.contains("TESTSCU"), "{log}");
    assert_peak_rss_below(&node, 400, "an endless command set");
    assert_still_serving(&setup);
}

/// Point 6: an AE title with a newline and terminal escapes cannot forge a log line.
fn control_characters_from_peers_are_escaped(backend: Backend) {
    let setup = Setup::analysing(backend, "");
    let node = setup.start();
    let calling = "EVIL\nFORGED\x1b[2J\x07";
    let err = scu::associate_as(setup.port, calling, "PNEUMOTRIAGE", &[(CR, EXPLICIT_LE)]).err();
    assert!(err.is_some(), "an unknown AE title is rejected");
    let log = node.wait_for_log("association rejected");
    assert!(!log.lines().any(|l| l.starts_with("FORGED")), "a peer forged a log line:\n{log}");
    assert!(!log.contains('\x1b') && !log.contains('\x07'), "control bytes reached the log");
    assert!(log.contains("EVIL\\x0AFORGED\\x1B[2J\\x07"), "{log}");
    assert_still_serving(&setup);
}

/// Point 7: a first PDU that is garbage, or declares 0xFFFFFFFF bytes, gets an A-ABORT; a
/// refusal for the node's own reasons does not tell the peer its paths.
fn bad_first_pdus_get_an_abort(backend: Backend) {
    let setup = Setup::analysing(backend, "");
    let node = setup.start();
    for first in [&[0x01u8, 0x00, 0xFF, 0xFF, 0xFF, 0xFF][..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"] {
        let mut stream = TcpStream::connect(("127.0.0.1", setup.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(first).unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        assert_eq!(reply.first(), Some(&0x07), "A-ABORT expected, got {reply:?}");
    }
    node.wait_for_log("invalid first PDU; aborting");
    drop(node);

    // a floor no disk reaches: 0xA700, with a comment that names no local path
    setup.write_config("min_free_disk_mb = 1000000000", "", common::DEFAULT_PEERS);
    let _node = setup.start();
    let file = pydicom_data("RG1_UNCR.dcm");
    let (data, _) = scu::dataset_of(&file);
    let mut assoc = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    send_command(&mut assoc, ctx, &store_command(1, CR, &common::sop_instance_uid(&file)), false);
    scu::send_data(&mut assoc, ctx, &data, true);
    let (status, comment) = scu::read_response_with_comment(&mut assoc);
    assoc.release().unwrap();
    assert_eq!(status, 0xA700);
    let comment = comment.expect("an error comment");
    assert!(!comment.contains('/'), "the comment names a path: {comment}");
}

/// Point 8: one address holding every slot it may does not lock others out.
fn one_host_cannot_take_every_association(backend: Backend) {
    let setup = Setup::with(backend, "", "max_associations = 6\nmax_associations_per_host = 2");
    let node = setup.start();
    // three associations from 127.0.0.2, held open: two admitted, the third refused
    let script = r#"
import sys, time
from pynetdicom import AE
ae = AE(ae_title="PYNETDICOM")
ae.add_requested_context("1.2.840.10008.1.1")
held = [ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="PNEUMOTRIAGE", bind_address=("127.0.0.2", 0)) for _ in range(3)]
print(" ".join("held" if a.is_established else "refused" for a in held), flush=True)
time.sleep(float(sys.argv[2]))
for a in held:
    if a.is_established:
        a.release()
"#;
    let (mut hog, first_line) = hold_from_another_host(script, setup.port, "15");
    assert_eq!(first_line, "held held refused");
    let log = node.wait_for_log("dicom.max_associations_per_host");
    assert!(log.contains("127.0.0.2"), "{log}");
    // while they are held, others get in
    let out = storescu(setup.port, &[], &[&pydicom_data("RG1_UNCR.dcm")]);
    assert!(out.status.success(), "{}", text(&out));
    let _ = hog.wait();
}

/// Runs `script` (Python: the node's port and how long to hold, then prints one line of what it
/// saw) beside the test; the running script and that line.
fn hold_from_another_host(script: &str, port: u16, hold_secs: &str) -> (std::process::Child, String) {
    let mut hog = Command::new(python())
        .args(["-c", script, &port.to_string(), hold_secs])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    let mut stdout = hog.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first_line.push(byte[0] as char);
    }
    (hog, first_line)
}

/// Idle sockets that never associate (from any host: the allow-list is read only with the
/// A-ASSOCIATE-RQ) are bounded like associations: past `max_associations_per_host` from one
/// address the node closes them at once, and others still get in.
fn idle_connections_from_one_host_are_bounded(backend: Backend) {
    let setup = Setup::with(backend, "", "max_associations = 6\nmax_associations_per_host = 2");
    let _node = setup.start();
    let script = r#"
import socket, sys, time
socks = []
for _ in range(6):
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.connect(("127.0.0.1", int(sys.argv[1])))
    socks.append(s)
time.sleep(0.5)
states = []
for s in socks:
    s.settimeout(0.5)
    try:
        states.append("closed" if s.recv(1) == b"" else "data")
    except socket.timeout:
        states.append("open")
    except ConnectionResetError:
        states.append("closed")
print(" ".join(states), flush=True)
time.sleep(float(sys.argv[2]))
"#;
    let (mut hog, first_line) = hold_from_another_host(script, setup.port, "10");
    assert_eq!(first_line, "open open closed closed closed closed");
    // while those two wait, another host associates
    let out = storescu(setup.port, &[], &[&pydicom_data("RG1_UNCR.dcm")]);
    assert!(out.status.success(), "{}", text(&out));
    let _ = hog.kill();
    let _ = hog.wait();
}

/// Point 2: a JPEG 2000 image whose codestream claims 60000 x 60000 while the data set says
/// 1955 x 1841 is stored, then fails alone before any decoder allocates; the node stays up
/// across a restart and does not take the job again.
fn poison_codestream_fails_before_decoding(backend: Backend) {
    let setup = Setup::analysing(backend, "");
    let poison = setup.dir.path().join("poison.dcm");
    let mut bytes = std::fs::read(pydicom_data("RG1_J2KR.dcm")).unwrap();
    let siz = bytes.windows(4).position(|w| w == [0xFF, 0x4F, 0xFF, 0x51]).expect("a J2K codestream");
    bytes[siz + 8..siz + 12].copy_from_slice(&60_000u32.to_be_bytes()); // Xsiz
    bytes[siz + 12..siz + 16].copy_from_slice(&60_000u32.to_be_bytes()); // Ysiz
    std::fs::write(&poison, &bytes).unwrap();
    let mut node = setup.start();
    let out = storescu(setup.port, &["-xv"], &[&poison]);
    assert!(out.status.success(), "{}", text(&out));
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE state = 'failed'", 1);
    let log = node.wait_for_log("analysis failed");
    assert!(log.contains("the codestream says 60000x60000, Columns x Rows say 1841x1955"), "{log}");
    // the worklist's overlay of it is refused the same way, not decoded
    let uid = common::sop_instance_uid(&poison);
    let (status, _, body) =
        common::http_request(setup.http_port, "GET", &format!("/api/instances/{uid}/overlay.png"), &[], "").unwrap();
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("the codestream says 60000x60000"));
    assert_peak_rss_below(&node, 600, "the poison codestream");
    node.kill9();
    let _node = setup.start();
    assert_still_serving(&setup);
    assert_eq!(setup.count("SELECT COUNT(*) FROM jobs WHERE state = 'failed'"), 1);
}

/// The crash-loop breaker: an image that was being analysed each time the node died is
/// quarantined at the restart after `quarantine_after` (2) such deaths, unopened, reported "not
/// analysed" (a notice), the worklist says so, and the node goes on. The images in its batch when the node first died are then analysed
/// one by one, so that they are not quarantined with it.
fn image_that_kills_the_node_twice_is_quarantined(backend: Backend) {
    let mut setup = Setup::new(backend); // analysis off until the batch is waiting
    let slow = setup.dir.path().join("slow.dcm");
    let made = Command::new(python()).arg(common::tool("make_slow_j2k.py")).arg(&slow).output();
    let made = made.unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let uid = common::sop_instance_uid(&slow);
    let node = setup.start();
    let good = common::synthetic_images(&setup.dir.path().join("good"), 3, 8);
    let mut sent: Vec<&std::path::Path> = good.iter().map(|p| p.as_path()).collect();
    sent.insert(1, &slow);
    let out = storescu(setup.port, &["-xv"], &sent);
    assert!(out.status.success(), "{}", text(&out));
    drop(node);
    // two workers: while the image that kills the node is analysed, no other may be in hand
    setup.inference = format!("models = \"{}/models/manifest.toml\"\nworkers = 2\n", env!("CARGO_MANIFEST_DIR"));
    setup.write_config("", "", common::DEFAULT_PEERS);
    let job_state = || {
        setup.with_store(async |store| {
            let state: Option<(String,)> = sqlx::query_as(
                "SELECT j.state FROM jobs j JOIN instances i ON i.id = j.instance_id WHERE i.sop_instance_uid = $1",
            )
            .bind(&uid)
            .fetch_optional(store.pool())
            .await
            .unwrap();
            state.map(|s| s.0)
        })
    };
    let kill_while_running = |node: &mut Node| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while job_state().as_deref() != Some("running") {
            assert!(Instant::now() < deadline, "the job never ran: {:?}", job_state());
            std::thread::sleep(Duration::from_millis(5));
        }
        node.kill9();
        assert_eq!(job_state().as_deref(), Some("running"), "the node was killed while it analysed the image");
    };
    let mut node = setup.start();
    // all four claimed (in one batch, or in two workers' batches: the other may be done already)
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE state IN ('running', 'done')", 4);
    kill_while_running(&mut node);
    let mut node = setup.start();
    kill_while_running(&mut node);
    let node = setup.start();
    let log = node.wait_for_log("quarantined an image");
    assert!(log.contains(&uid), "{log}");
    assert!(log.contains("the node stopped every time it analysed an image"), "said at start-up: {log}");
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE quarantined_at IS NOT NULL AND interruptions = 2", 1);
    assert_eq!(job_state().as_deref(), Some("failed"));
    // reported "not analysed", as any image the node could not analyse: never silent
    setup.wait_count(
        &format!(
            "SELECT COUNT(*) FROM notices n JOIN instances i ON i.id = n.instance_id \
             WHERE i.sop_instance_uid = '{uid}' AND n.reason LIKE 'quarantined:%'"
        ),
        1,
    );
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE state = 'done' AND quarantined_at IS NULL", 3);
    setup.wait_count("SELECT COUNT(*) FROM events WHERE kind = 'job_quarantined'", 1);
    let study = common::study_instance_uid(&slow);
    let (status, _, body) =
        common::http_request(setup.http_port, "GET", "/api/studies?state=quarantined", &[], "").unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains(&study), "{}", String::from_utf8_lossy(&body));
    assert_still_serving(&setup);
    drop(node);
    // an admin can give it another chance
    let id = setup.count(&format!("SELECT id FROM instances WHERE sop_instance_uid = '{uid}'"));
    let out = setup.cli(&["requeue", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(job_state().as_deref(), Some("queued"));
}

on_both_backends!(
    deep_nesting_is_refused,
    lying_lengths_allocate_nothing,
    unfinished_command_is_aborted,
    control_characters_from_peers_are_escaped,
    bad_first_pdus_get_an_abort,
    one_host_cannot_take_every_association,
    idle_connections_from_one_host_are_bounded,
    poison_codestream_fails_before_decoding,
    image_that_kills_the_node_twice_is_quarantined,
);

/// Point 5: PostgreSQL refusing connections for a few seconds while images are analysed: the
/// results that could not be recorded are recorded as soon as it is back, not after the lease.
#[test]
fn database_outage_during_analysis_is_retried_promptly() {
    let setup = Setup::analysing(Backend::Postgres, "");
    let node = setup.start();
    let images = tempfile::tempdir().unwrap();
    let files = common::synthetic_images(images.path(), 16, 5);
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let out = storescu(setup.port, &[], &refs);
    assert!(out.status.success(), "{}", text(&out));
    let name = setup.db.url.rsplit('/').next().unwrap().to_string();
    // the outage starts once analysis is under way
    let deadline = Instant::now() + Duration::from_secs(60);
    while setup.count("SELECT COUNT(*) FROM results") < 1 {
        assert!(Instant::now() < deadline, "no result");
        std::thread::sleep(Duration::from_millis(20));
    }
    common::psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    common::psql(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"));
    std::thread::sleep(Duration::from_secs(4));
    common::psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    let back = Instant::now();
    let deadline = back + Duration::from_secs(60);
    while setup.count("SELECT COUNT(*) FROM jobs WHERE state = 'done'") < 16 {
        assert!(Instant::now() < deadline, "jobs still not done 60 s after the database came back:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("all 16 analysed {:?} after the database came back", back.elapsed());
    assert_eq!(setup.count("SELECT COUNT(*) FROM results"), 16, "each result recorded once");
    assert!(node.log().contains("retrying in"), "the outage was seen and retried:\n{}", node.log());
}

/// DICOM TLS on the listener (mutual): dcmtk's storescu and pynetdicom store over TLS with a
/// certificate the configured authority signed; a client with another authority's certificate,
/// or with none, is refused in the handshake; the plain port goes on.
#[test]
fn tls_listener_admits_only_trusted_client_certificates() {
    let setup = Setup::analysing(Backend::Sqlite, "");
    let certs = setup.dir.path().join("certs");
    common::make_certificates(&certs);
    let c = |name: &str| certs.join(name).display().to_string();
    let tls_port = common::free_port();
    let tls = format!(
        "[dicom.tls]\nbind = \"127.0.0.1:{tls_port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        c("pacs.crt"),
        c("pacs.key"),
        c("ca.crt")
    );
    setup.write_config("", &tls, common::DEFAULT_PEERS);
    let check = setup.cli(&["check-config"]);
    assert!(check.status.success(), "{}", text(&check));
    let node = setup.start();
    let file = pydicom_data("RG1_UNCR.dcm");
    let tls_storescu = |identity: &[&str]| {
        Command::new("/usr/bin/storescu")
            .args(identity)
            .args(["+cf", &c("ca.crt"), "-aet", "STORESCU", "-aec", "PNEUMOTRIAGE", "127.0.0.1", &tls_port.to_string()])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = tls_storescu(&["+tls", &c("node.key"), &c("node.crt")]);
    assert!(out.status.success(), "storescu +tls: {}", text(&out));
    setup.wait_count("SELECT COUNT(*) FROM instances", 1);

    let script = r#"
import ssl, sys
from pydicom import dcmread
from pynetdicom import AE
port, ca, cert, key, path = sys.argv[1:]
context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
context.load_cert_chain(certfile=cert, keyfile=key)
ae = AE(ae_title="PYNETDICOM")
ds = dcmread(path)
ds.SOPInstanceUID = ds.SOPInstanceUID + ".7"
ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
assoc = ae.associate("127.0.0.1", int(port), ae_title="PNEUMOTRIAGE", tls_args=(context, "localhost"))
assert assoc.is_established, "no association over TLS"
status = assoc.send_c_store(ds)
assoc.release()
print(f"0x{status.Status:04X}")
"#;
    let out = Command::new(python())
        .args(["-c", script, &tls_port.to_string(), &c("ca.crt"), &c("node.crt"), &c("node.key")])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0x0000", "pynetdicom over TLS: {}", text(&out));
    setup.wait_count("SELECT COUNT(*) FROM instances", 2);

    for identity in [&["+tls", &c("rogue.key"), &c("rogue.crt")][..], &["+tla"][..]] {
        let out = tls_storescu(identity);
        assert!(!out.status.success(), "{identity:?} was admitted: {}", text(&out));
    }
    let log = node.wait_for_log("TLS handshake failed");
    assert!(log.contains("127.0.0.1"), "{log}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 2);
    setup.wait_count("SELECT COUNT(*) FROM events WHERE kind = 'tls_refused'", 2);
    assert_still_serving(&setup);
}
