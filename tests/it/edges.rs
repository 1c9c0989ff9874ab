//! The edges an adversarial pass found after the hostile-input work, each on a real node: a
//! deflated data set, text holding NUL bytes, an HTTP flood, concurrent verdicts on SQLite,
//! configurations check-config passed and serve refused, garbage from an HL7 receiver. Each ends
//! with the node answering C-ECHO and analysing a valid image: the edge cost it nothing else.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{
    self, free_port, http_request, pydicom_data, python, run, sop_instance_uid, storescu, synthetic_images, text,
    Backend, Node, Setup,
};

/// Answers C-ECHO, then receives a valid chest film (RG1 under a new UID) and analyses it.
fn still_echoes_and_analyses(setup: &Setup) {
    let echo = Command::new("/usr/bin/echoscu")
        .args(["-aec", "PNEUMOTRIAGE", "127.0.0.1", &setup.port.to_string()])
        .output()
        .unwrap();
    assert!(echo.status.success(), "C-ECHO: {}", text(&echo));
    let work = tempfile::tempdir().unwrap();
    let film = work.path().join("rg1.dcm");
    std::fs::copy(pydicom_data("RG1_UNCR.dcm"), &film).unwrap();
    run("dcmodify", &["-nb", "-gin", film.to_str().unwrap()]);
    let sent = storescu(setup.port, &[], &[&film]);
    assert!(sent.status.success(), "{}", text(&sent));
    let uid = sop_instance_uid(&film);
    setup.wait_count(
        &format!(
            "SELECT COUNT(*) FROM jobs j JOIN instances i ON i.id = j.instance_id \
             WHERE i.sop_instance_uid = '{uid}' AND j.state = 'done'"
        ),
        1,
    );
}

/// Runs a Python snippet with `args` as sys.argv[1:]; asserts success, returns its output.
fn python_snippet(code: &str, args: &[&str]) -> String {
    let out = Command::new(python()).arg("-c").arg(code).args(args).output().unwrap();
    assert!(out.status.success(), "python: {}", text(&out));
    text(&out)
}

/// A copy of RG1 written by pydicom as Deflated Explicit VR Little Endian, under a new UID.
fn deflated_by_pydicom(dir: &Path) -> PathBuf {
    let out = dir.join("rg1-deflated-pydicom.dcm");
    python_snippet(
        "import sys, pydicom\n\
         from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid\n\
         ds = pydicom.dcmread(sys.argv[1])\n\
         ds.SOPInstanceUID = generate_uid()\n\
         ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID\n\
         ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian\n\
         ds.save_as(sys.argv[2], enforce_file_format=True)\n",
        &[pydicom_data("RG1_UNCR.dcm").to_str().unwrap(), out.to_str().unwrap()],
    );
    out
}

/// pynetdicom stores a file (argv[1]) in its own transfer syntax to the node (port argv[2]).
const PYNETDICOM_AS_IS: &str = "import sys, pydicom\n\
     from pynetdicom import AE\n\
     ds = pydicom.dcmread(sys.argv[1])\n\
     ae = AE(ae_title='PYNETDICOM')\n\
     ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)\n\
     assoc = ae.associate('127.0.0.1', int(sys.argv[2]), ae_title='PNEUMOTRIAGE')\n\
     assert assoc.is_established\n\
     status = assoc.send_c_store(ds)\n\
     assoc.release()\n\
     assert status.Status == 0, hex(status.Status)\n";

const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// Deflated Explicit VR Little Endian was accepted in negotiation and then every data set was
/// refused 0xC000 ("the data set ends inside an element header"): storescu -xd and pynetdicom
/// now store RG1 deflated, and the node analyses both; `infer` reads dcmtk's and pydicom's files.
fn deflated_images_are_kept_and_analysed(backend: Backend) {
    let setup = Setup::analysing(backend, "");
    let _node = setup.start();
    let work = tempfile::tempdir().unwrap();
    let by_dcmtk = work.path().join("rg1-deflated-dcmtk.dcm");
    run("dcmconv", &["+td", pydicom_data("RG1_UNCR.dcm").to_str().unwrap(), by_dcmtk.to_str().unwrap()]);
    // dcmtk deflates on the fly what it sends: a new UID, so that it is a new instance
    run("dcmodify", &["-nb", "-gin", by_dcmtk.to_str().unwrap()]);
    let sent = storescu(setup.port, &["-xd"], &[&by_dcmtk]);
    assert!(sent.status.success(), "storescu -xd: {}", text(&sent));
    let by_pydicom = deflated_by_pydicom(work.path());
    python_snippet(PYNETDICOM_AS_IS, &[by_pydicom.to_str().unwrap(), &setup.port.to_string()]);
    for file in [&by_dcmtk, &by_pydicom] {
        let uid = sop_instance_uid(file);
        setup.wait_count(
            &format!(
                "SELECT COUNT(*) FROM jobs j JOIN instances i ON i.id = j.instance_id \
                 WHERE i.sop_instance_uid = '{uid}' AND i.transfer_syntax_uid = '{DEFLATED}' AND j.state = 'done'"
            ),
            1,
        );
    }
    let infer = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .arg("infer")
        .args([&by_dcmtk, &by_pydicom])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let report = text(&infer);
    assert!(infer.status.success(), "{report}");
    assert_eq!(
        report.lines().filter(|l| l.contains(".dcm: Positive") || l.contains(".dcm: Negative")).count(),
        2,
        "{report}"
    );
    still_echoes_and_analyses(&setup);
}

/// A person name and a description holding NUL bytes: PostgreSQL answered 0xA700 ("invalid
/// byte sequence"), a transient status its sender retried for ever, while SQLite stored them.
/// Now both keep the image, with each NUL as U+FFFD; a UID with a NUL inside is refused 0xC000
/// (never 0xA7xx) on both; a verdict's note with U+0000 is recorded alike on both.
fn text_with_nul_is_kept_alike_on_both_backends(backend: Backend) {
    const TOKEN: &str = "lee-token-0123456789abcdef";
    let mut setup = Setup::analysing(backend, "");
    setup.http = format!("[[http.tokens]]\nname = \"dr.lee\"\ntoken = \"{TOKEN}\"\n");
    setup.write_config("", "", common::DEFAULT_PEERS);
    let _node = setup.start();
    let work = tempfile::tempdir().unwrap();
    let film = work.path().join("nul.dcm");
    python_snippet(
        "import sys, pydicom\n\
         from pydicom.uid import generate_uid\n\
         ds = pydicom.dcmread(sys.argv[1])\n\
         ds.SOPInstanceUID = generate_uid()\n\
         ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID\n\
         ds.PatientName = 'Doe\\x00^Jane'\n\
         ds.StudyDescription = 'CHEST\\x00PA'\n\
         ds.save_as(sys.argv[2], enforce_file_format=True)\n",
        &[pydicom_data("RG1_UNCR.dcm").to_str().unwrap(), film.to_str().unwrap()],
    );
    let sent = storescu(setup.port, &[], &[&film]);
    assert!(sent.status.success(), "{}", text(&sent));
    assert_eq!(
        setup.count("SELECT COUNT(*) FROM studies WHERE patient_name = 'Doe\u{FFFD}^Jane' AND study_description = 'CHEST\u{FFFD}PA'"),
        1
    );
    let uid = sop_instance_uid(&film);
    setup.wait_count(
        &format!(
            "SELECT COUNT(*) FROM jobs j JOIN instances i ON i.id = j.instance_id \
             WHERE i.sop_instance_uid = '{uid}' AND j.state = 'done'"
        ),
        1,
    );

    // a NUL inside the command's UID: the data set can never be kept, so 0xC000, not 0xA700
    let class = "1.2.840.10008.5.1.4.1.1.1";
    let (data, ts) = common::scu::dataset_of(&pydicom_data("RG1_UNCR.dcm"));
    let mut assoc = common::scu::associate(setup.port, &[(class, &ts)]).unwrap();
    let ctx = common::scu::context_id(&assoc, class);
    assert_eq!(common::scu::store(&mut assoc, ctx, class, "1.2.3\0.4", &data), 0xC000);
    assoc.release().unwrap();

    let result_id = setup.count(&format!(
        "SELECT r.id FROM results r JOIN jobs j ON j.id = r.job_id JOIN instances i ON i.id = j.instance_id \
         WHERE i.sop_instance_uid = '{uid}'"
    ));
    let auth = format!("Bearer {TOKEN}");
    let (status, _, body) = http_request(
        setup.http_port,
        "POST",
        &format!("/api/results/{result_id}/verdict"),
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        r#"{"verdict": "agree", "note": "a\u0000b"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(setup.count("SELECT COUNT(*) FROM verdicts WHERE note = 'a\u{FFFD}b'"), 1);
    still_echoes_and_analyses(&setup);
}

/// 64 verdicts posted 16 at a time: on SQLite 33 of 64 got 503 "database is locked" (a
/// deferred transaction cannot take the write lock it needs after reading). Now none fails, on
/// either backend.
fn concurrent_verdicts_all_succeed(backend: Backend) {
    const TOKEN: &str = "lee-token-0123456789abcdef";
    let work = tempfile::tempdir().unwrap();
    let files = synthetic_images(&work.path().join("images"), 2, 77);
    let mut setup = Setup::analysing(backend, "");
    setup.http = format!("[[http.tokens]]\nname = \"dr.lee\"\ntoken = \"{TOKEN}\"\n");
    setup.write_config("", "", common::DEFAULT_PEERS);
    let _node = setup.start();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    assert!(storescu(setup.port, &[], &refs).status.success());
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'", 2);
    let result_id = setup.count("SELECT MIN(id) FROM results");
    let port = setup.http_port;
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let posters: Vec<_> = (0..16)
            .map(|t| {
                scope.spawn(move || {
                    (0..4)
                        .map(|i| {
                            let auth = format!("Bearer {TOKEN}");
                            let body = format!(r#"{{"verdict": "agree", "note": "poster {t}, verdict {i}"}}"#);
                            let path = format!("/api/results/{result_id}/verdict");
                            let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                            http_request(port, "POST", &path, &headers, &body).map(|r| r.0).unwrap_or(0)
                        })
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        posters.into_iter().flat_map(|p| p.join().unwrap()).collect()
    });
    let failed = statuses.iter().filter(|s| **s != 201).count();
    println!("{backend:?}: 64 concurrent verdicts, {failed} failed");
    assert_eq!(failed, 0, "{statuses:?}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM verdicts"), 64);
    still_echoes_and_analyses(&setup);
}

/// An HL7 receiver that answers every message with garbage: invalid UTF-8, a NUL, a terminal
/// escape. The message stays pending (retried), its error is kept on both backends (the NUL
/// once failed PostgreSQL), and the node's log is valid UTF-8 with the bytes escaped.
fn garbage_hl7_replies_are_kept_and_logged_as_valid_text(backend: Backend) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 65536];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"\x0bMSH|^~\\&|\xff\xfe\x00\x1b[31mGARBAGE\x1c\x0d");
        }
    });
    let setup = {
        let mut setup = Setup::analysing(backend, "");
        setup.tail = format!(
            "[[destinations]]\nname = \"ris\"\nkind = \"hl7\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             settle_secs = 0\nretry_initial_secs = 1\nretry_max_secs = 2\n"
        );
        setup.write_config("", "", common::DEFAULT_PEERS);
        setup
    };
    let node = setup.start();
    let work = tempfile::tempdir().unwrap();
    let files = synthetic_images(&work.path().join("images"), 1, 77);
    assert!(storescu(setup.port, &[], &[files[0].as_path()]).status.success());
    setup.wait_count("SELECT COUNT(*) FROM messages WHERE attempts >= 2 AND last_error LIKE '%GARBAGE%'", 1);
    // Between attempts or in the next one, never given up.
    assert_eq!(
        setup.count("SELECT COUNT(*) FROM messages WHERE state IN ('pending', 'sending')"),
        1,
        "retried, not given up"
    );
    node.wait_for_log("GARBAGE");
    let log = std::fs::read(&node.log_path).unwrap();
    let log = String::from_utf8(log).expect("the node's log is valid UTF-8");
    let line = log.lines().find(|l| l.contains("GARBAGE")).unwrap();
    assert!(line.contains("\\x00") && line.contains("\\x1B[31m") && line.contains('\u{FFFD}'), "{line}");
    still_echoes_and_analyses(&setup);
}

on_both_backends!(
    deflated_images_are_kept_and_analysed,
    text_with_nul_is_kept_alike_on_both_backends,
    concurrent_verdicts_all_succeed,
    garbage_hl7_replies_are_kept_and_logged_as_valid_text,
);

/// Reads until the peer closes (or `limit` passes); how long that took, or `None`.
fn closed_within(mut stream: TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(started.elapsed()),
            Err(_) => return None,
        }
    }
}

/// `GET /healthz` from a given local address (Python: the standard library cannot bind a
/// client socket first); the status, or 0 when the connection was closed unanswered.
fn healthz_from(source: &str, port: u16) -> u16 {
    let out = python_snippet(
        "import sys, socket\n\
         s = socket.create_connection(('127.0.0.1', int(sys.argv[2])), timeout=10, source_address=(sys.argv[1], 0))\n\
         s.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         data = b''\n\
         try:\n\
         \x20   while True:\n\
         \x20       chunk = s.recv(4096)\n\
         \x20       if not chunk: break\n\
         \x20       data += chunk\n\
         except ConnectionResetError:\n\
         \x20   pass\n\
         print(data.split(b' ')[1].decode() if data.startswith(b'HTTP/') else 0)\n",
        &[source, &port.to_string()],
    );
    out.trim().parse().unwrap()
}

/// With the node's open files limited, 400 idle and slow HTTP connections once took every
/// descriptor: DICOM accepts failed ("Too many open files"), C-ECHO and C-STORE too. Now HTTP
/// connections are capped in all and per client, and each must send its request head within
/// `http.header_timeout_secs`: while one client keeps 400 connections open (reconnecting as they
/// are closed), 10 images are stored and analysed and another client is still served.
#[test]
fn an_http_flood_leaves_the_dicom_listener_working() {
    let work = tempfile::tempdir().unwrap();
    let files = synthetic_images(&work.path().join("images"), 10, 4242);
    let mut setup = Setup::analysing(Backend::Sqlite, "");
    setup.http = "max_connections = 60\nmax_connections_per_client = 40\nheader_timeout_secs = 3\n".into();
    setup.write_config("", "", common::DEFAULT_PEERS);
    let _node: Node = setup.start_with_open_file_limit(320);
    let port = setup.http_port;

    // how long an idle connection and a slowloris (a header byte a second) live
    let idle = std::thread::spawn(move || {
        closed_within(TcpStream::connect(("127.0.0.1", port)).unwrap(), Duration::from_secs(20))
    });
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let started = Instant::now();
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        for _ in 0..20 {
            std::thread::sleep(Duration::from_secs(1));
            if stream.write_all(b"X").is_err() {
                break;
            }
        }
        closed_within(stream, Duration::from_secs(20)).map(|_| started.elapsed())
    });

    // the flood: 400 connections held open from 127.0.0.1, the oldest dropped for a new one
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            let mut opened = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
                    held.push_back(stream);
                    opened += 1;
                }
                if held.len() > 400 {
                    held.pop_front();
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            opened
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let stored = storescu(setup.port, &[], &refs);
    assert!(stored.status.success(), "{}", text(&stored));
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 10);
    assert_eq!(healthz_from("127.0.0.2", port), 200, "another client is served during the flood");
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'", 10);
    still_echoes_and_analyses(&setup);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = flood.join().unwrap();

    let (idle, slow) = (idle.join().unwrap(), slow.join().unwrap());
    // the flood's connections closed, the node gives their places back
    std::thread::sleep(Duration::from_secs(1));
    let auth_free_metrics = http_request(port, "GET", "/metrics", &[], "").unwrap();
    let metrics = String::from_utf8_lossy(&auth_free_metrics.2).into_owned();
    let refused: f64 = metrics
        .lines()
        .find(|l| l.starts_with("pneumotriage_http_connections_refused_total{limit=\"max_connections_per_client\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    println!(
        "idle connection closed after {idle:?}; slowloris after {slow:?} (header_timeout_secs = 3); \
         the flood opened {opened} connections, {refused} closed at once over max_connections_per_client"
    );
    assert!(idle.is_some_and(|d| d >= Duration::from_secs(2) && d < Duration::from_secs(6)), "{idle:?}");
    assert!(slow.is_some_and(|d| d < Duration::from_secs(6)), "a slow head is cut off too: {slow:?}");
    assert!(refused > 0.0, "{metrics}");
}

/// Runs `pneumotriage ARGS`, failing the test rather than hanging past 60 s (a FIFO opened
/// for reading blocks until a writer comes).
fn pneumotriage_within_a_minute(args: &[&str]) -> (Option<i32>, String) {
    let out_dir = tempfile::tempdir().unwrap();
    let log = out_dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .args(args)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(out_dir.path().join("err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pneumotriage {args:?} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = std::fs::read_to_string(&log).unwrap() + &std::fs::read_to_string(out_dir.path().join("err")).unwrap();
    (status.code(), said)
}

/// check-config said OK where serve refused: shadow manifests were not checked (a directory, a
/// FIFO, a wrong sha256, a file that is not ONNX), special files were read until memory ran
/// out (/dev/zero as a certificate or a manifest), out-of-range numbers passed and panicked a
/// worker later. Now check-config and serve refuse each alike, naming the key.
#[test]
fn check_config_refuses_what_serve_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shadow = dir.path().join("shadow");
    std::fs::create_dir_all(shadow.join("demo")).unwrap();
    let fifo = dir.path().join("manifest.fifo");
    run("mkfifo", &[fifo.to_str().unwrap()]);
    // a manifest whose classifier is a text file with the right sha256: only ONNX Runtime can tell
    let manifest = std::fs::read_to_string(repo.join("models/manifest.toml")).unwrap();
    for name in ["classifier.onnx", "segmenter.onnx"] {
        std::fs::copy(repo.join("models/demo").join(name), shadow.join("demo").join(name)).unwrap();
    }
    let not_onnx = b"this is not a model\n";
    std::fs::write(shadow.join("demo/classifier.onnx"), not_onnx).unwrap();
    let classifier_sha = {
        let real = std::fs::read(repo.join("models/demo/classifier.onnx")).unwrap();
        use sha2::Digest;
        (format!("{:x}", sha2::Sha256::digest(&real)), format!("{:x}", sha2::Sha256::digest(not_onnx)))
    };
    std::fs::write(shadow.join("wrong-sha.toml"), &manifest).unwrap();
    std::fs::write(shadow.join("not-onnx.toml"), manifest.replace(&classifier_sha.0, &classifier_sha.1)).unwrap();
    let models = repo.join("models/manifest.toml");
    let base = format!("[dicom]\naccept_any = true\n[inference]\nmodels = {:?}\n", models.display().to_string());
    let shadow_at = |path: &Path| {
        format!("{base}[[inference.shadow]]\nname = \"next\"\nmodels = {:?}\n", path.display().to_string())
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("a directory as a shadow manifest", shadow_at(&shadow), "inference.shadow[0].models"),
        ("a FIFO as a shadow manifest", shadow_at(&fifo), "inference.shadow[0].models"),
        ("a shadow model not its manifest's", shadow_at(&shadow.join("wrong-sha.toml")), "sha256"),
        ("a shadow model that is not ONNX", shadow_at(&shadow.join("not-onnx.toml")), "inference.shadow[0].models"),
        (
            "/dev/zero as the manifest",
            "[dicom]\naccept_any = true\n[inference]\nmodels = \"/dev/zero\"\n".to_string(),
            "special file",
        ),
        (
            "/dev/zero as a certificate",
            format!(
                "{base}[dicom.tls]\nbind = \"127.0.0.1:{}\"\ncert_file = \"/dev/zero\"\nkey_file = \"/dev/zero\"\n",
                free_port()
            ),
            "dicom.tls.cert_file",
        ),
        (
            "retry seconds at u64::MAX",
            format!(
                "{base}[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n\
                 retry_max_secs = 18446744073709551615\n"
            ),
            "destinations[0].retry_max_secs",
        ),
    ];
    for (i, (what, toml, expected)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("case-{i}.toml"));
        std::fs::write(&config, toml).unwrap();
        let config = config.to_str().unwrap();
        let (check_status, check_said) = pneumotriage_within_a_minute(&["check-config", "--config", config]);
        assert_eq!(check_status, Some(2), "check-config, {what}: {check_said}");
        assert!(check_said.contains(expected), "check-config, {what}: {check_said}");
        let (serve_status, serve_said) = pneumotriage_within_a_minute(&["serve", "--config", config]);
        assert_eq!(serve_status, Some(2), "serve, {what}: {serve_said}");
        assert!(serve_said.contains(expected), "serve, {what}: {serve_said}");
        println!("{what}: {}", check_said.lines().next().unwrap_or_default());
    }
    let good = Setup::analysing(Backend::Sqlite, "");
    let _node = good.start();
    still_echoes_and_analyses(&good);
}

/// Every row of the conformance statement's transfer syntax table: a real sender stores RG1 (a
/// chest CR) in it, and the node analyses it (JPEG Baseline needs 8 bits: a synthetic film).
#[test]
fn every_accepted_transfer_syntax_is_stored_and_analysed() {
    let setup = Setup::analysing(Backend::Sqlite, "");
    let _node = setup.start();
    let work = tempfile::tempdir().unwrap();
    let rg1 = pydicom_data("RG1_UNCR.dcm");
    let encode = |tool: &str, options: &[&str], source: &Path, name: &str| -> PathBuf {
        let out = work.path().join(name);
        let mut args: Vec<&str> = options.to_vec();
        args.extend([source.to_str().unwrap(), out.to_str().unwrap()]);
        run(tool, &args);
        run("dcmodify", &["-nb", "-gin", out.to_str().unwrap()]);
        out
    };
    let synthetic = &synthetic_images(&work.path().join("synthetic"), 1, 77)[0];
    // dcmtk's storescu proposes each syntax it has an option for; pynetdicom sends the rest as
    // they are in the file (JPEG Lossless, Process 14, has no storescu option)
    let cases: Vec<(&str, PathBuf, Option<&[&str]>)> = vec![
        ("1.2.840.10008.1.2.1", encode("dcmconv", &["+te"], &rg1, "explicit.dcm"), Some(&["-xe"])),
        ("1.2.840.10008.1.2", encode("dcmconv", &["+te"], &rg1, "implicit.dcm"), Some(&["-xi"])),
        (DEFLATED, encode("dcmconv", &["+te"], &rg1, "deflated.dcm"), Some(&["-xd"])),
        ("1.2.840.10008.1.2.4.70", encode("dcmcjpeg", &[], &rg1, "jpeg-sv1.dcm"), Some(&["-xs"])),
        ("1.2.840.10008.1.2.4.57", encode("dcmcjpeg", &["+el"], &rg1, "jpeg-lossless.dcm"), None),
        ("1.2.840.10008.1.2.5", encode("dcmcrle", &[], &rg1, "rle.dcm"), Some(&["-xr"])),
        (
            "1.2.840.10008.1.2.4.90",
            encode("dcmconv", &[], &pydicom_data("RG1_J2KR.dcm"), "j2k-lossless.dcm"),
            Some(&["-xv"]),
        ),
        ("1.2.840.10008.1.2.4.91", encode("dcmconv", &[], &pydicom_data("RG1_J2KI.dcm"), "j2k.dcm"), Some(&["-xw"])),
        ("1.2.840.10008.1.2.4.80", encode("dcmcjpls", &[], &rg1, "jpeg-ls.dcm"), Some(&["-xt"])),
        ("1.2.840.10008.1.2.4.81", encode("dcmcjpls", &["+en"], &rg1, "jpeg-ls-near.dcm"), Some(&["-xu"])),
        ("1.2.840.10008.1.2.4.50", encode("dcmcjpeg", &["+eb"], synthetic, "jpeg-baseline.dcm"), Some(&["-xy"])),
    ];
    for (ts, file, storescu_options) in &cases {
        match storescu_options {
            Some(options) => {
                let sent = storescu(setup.port, options, &[file.as_path()]);
                assert!(sent.status.success(), "{ts}: {}", text(&sent));
            }
            None => {
                python_snippet(PYNETDICOM_AS_IS, &[file.to_str().unwrap(), &setup.port.to_string()]);
            }
        }
        let uid = sop_instance_uid(file);
        setup.wait_count(
            &format!(
                "SELECT COUNT(*) FROM jobs j JOIN instances i ON i.id = j.instance_id \
                 WHERE i.sop_instance_uid = '{uid}' AND i.transfer_syntax_uid = '{ts}' AND j.state = 'done'"
            ),
            1,
        );
    }
    let listed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/conformance.md")).unwrap();
    let table = listed.split("## 2. Transfer syntaxes").nth(1).unwrap().split("Verification accepts").next().unwrap();
    let rows: Vec<&str> = table
        .lines()
        .filter_map(|l| l.trim_end_matches(" |").rsplit("| ").next())
        .filter(|uid| uid.starts_with("1.2.840"))
        .collect();
    assert_eq!(rows.len(), cases.len(), "every row of the table is sent: {rows:?}");
    for row in rows {
        assert!(cases.iter().any(|(ts, _, _)| *ts == row), "{row} is in the table but not sent");
    }
}
