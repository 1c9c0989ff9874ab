//! The audit trail (IHE ATNA): a real audit repository, Debian's rsyslog with its TLS driver
//! (rsyslog-gnutls) and openssl-made certificates, writing every message as it received it. Each
//! message is read by an RFC 5424 parser of its own (`tests/tools/audit_check.py`, PyPI's
//! syslog-rfc5424-parser) and its XML validated by jing against DICOM PS3.15 A.5.1's RELAX NG
//! schema (`tests/fixtures/audit/dicom-audit-message.rnc`, its source named there).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::scu::{self, associate, context_id};
use crate::common::{
    self, free_port, http_request, make_certificates, python, storescu, study_instance_uid, synthetic_images,
    synthetic_positive, text, tool, Backend, Setup,
};
use crate::delivery::Pacs;
use crate::fhir::Receiver;

const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const TOKEN: &str = "dr-lee-token-0123456789";

/// rsyslog as the hospital's audit repository: syslog over TLS (RFC 5425) and over UDP (RFC
/// 5426) on ports of its own, each written as received (`%rawmsg%`) to `tls.log` and `udp.log`.
struct Rsyslog {
    child: Option<Child>,
    dir: PathBuf,
    tls_port: u16,
    udp_port: u16,
}

impl Rsyslog {
    /// Its server certificate is `certs`' `pacs` (localhost, signed by `ca`).
    fn start(dir: &Path, certs: &Path) -> Rsyslog {
        std::fs::create_dir_all(dir).unwrap();
        let (tls_port, udp_port) = (free_port(), free_port());
        let config = format!(
            r#"global(workDirectory="{dir}" maxMessageSize="64k"
       defaultNetstreamDriverCAFile="{certs}/ca.crt"
       defaultNetstreamDriverCertFile="{certs}/pacs.crt"
       defaultNetstreamDriverKeyFile="{certs}/pacs.key")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
module(load="imudp")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="tls") {{ action(type="omfile" file="{dir}/tls.log" template="raw") }}
ruleset(name="udp") {{ action(type="omfile" file="{dir}/udp.log" template="raw") }}
input(type="imtcp" port="{tls_port}" ruleset="tls")
input(type="imudp" port="{udp_port}" address="127.0.0.1" ruleset="udp")
"#,
            dir = dir.display(),
            certs = certs.display(),
        );
        std::fs::write(dir.join("rsyslog.conf"), config).unwrap();
        let mut rsyslog = Rsyslog { child: None, dir: dir.to_path_buf(), tls_port, udp_port };
        rsyslog.run();
        rsyslog
    }

    /// Starts (again) on the same ports.
    fn run(&mut self) {
        let log = std::fs::File::create(self.dir.join("rsyslogd.out")).unwrap();
        let child = Command::new("/usr/sbin/rsyslogd")
            .args(["-n", "-f"])
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rsyslogd starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.tls_port)).is_err() {
            let out = std::fs::read_to_string(self.dir.join("rsyslogd.out")).unwrap_or_default();
            assert!(Instant::now() < deadline, "rsyslogd did not listen:\n{out}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it (SIGTERM: it writes what it has, as a repository going down for maintenance).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    fn tls_log(&self) -> PathBuf {
        self.dir.join("tls.log")
    }

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What `audit_check.py` read of `received`: one summary per message (see the tool).
fn check(received: &Path, xml_dir: &Path) -> Vec<Value> {
    let out = Command::new(python()).arg(tool("audit_check.py")).arg(received).arg(xml_dir).output().unwrap();
    assert!(out.status.success(), "audit_check.py {}: {}", received.display(), text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// jing validates every message's XML against PS3.15 A.5.1's schema.
fn assert_valid(records: &[Value]) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit/dicom-audit-message.rnc");
    let files: Vec<&str> = records.iter().map(|r| r["xml"].as_str().unwrap()).collect();
    for chunk in files.chunks(200) {
        let out = Command::new("jing").arg("-c").arg(&schema).args(chunk).output().expect("jing runs");
        // jing prints warnings about optional jars on stderr; errors name a file on stdout
        assert!(out.status.success(), "jing: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// The record's kind: its EventID, and its first EventTypeCode if any.
fn kind(record: &Value) -> String {
    let types = record["event_types"].as_array().unwrap();
    match types.first() {
        Some(t) => format!("{}/{}", record["event_id"].as_str().unwrap(), t.as_str().unwrap()),
        None => record["event_id"].as_str().unwrap().to_string(),
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn get(setup: &Setup, path: &str, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    http_request(setup.http_port, "GET", path, &[("Authorization", &bearer)], "").unwrap().0
}

/// The `[audit]` section of a node whose records go to `rsyslog` over TLS (and `more`).
fn audit_section(rsyslog: &Rsyslog, certs: &Path, more: &str) -> String {
    format!(
        "[audit]\nenterprise_site_id = \"General Hospital\"\nretry_initial_secs = 1\nretry_max_secs = 2\n\
         [[audit.repositories]]\nname = \"siem\"\ntransport = \"tls\"\nhost = \"localhost\"\nport = {}\n\
         [audit.repositories.tls]\nca_file = \"{}/ca.crt\"\n{more}",
        rsyslog.tls_port,
        certs.display()
    )
}

/// One message of every kind the node sends arrives at a TLS repository (and the same at a UDP
/// one and in a file), is read by an independent RFC 5424 parser and validates against the
/// schema; a worklist read with a named token names the person, the patient and the study.
#[test]
fn every_kind_of_audit_message_reaches_the_repository_and_validates() {
    let mut setup = Setup::analysing(Backend::Sqlite, "");
    let dir = setup.dir.path().to_path_buf();
    let certs = dir.join("certs");
    make_certificates(&certs);
    let mut rsyslog = Rsyslog::start(&dir.join("rsyslog"), &certs);
    let pacs_port = free_port();
    let _pacs = Pacs::start(pacs_port, &dir.join("pacs"), false);
    let webhook = Receiver::start(&dir.join("webhook"), &["--secret", "a-webhook-secret-of-16+"]);
    let tls_port = free_port();
    let audit_file = dir.join("audit.log");
    setup.http = format!("[[http.tokens]]\nname = \"dr.lee\"\ntoken = \"{TOKEN}\"\n");
    setup.tail = format!(
        "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n\
         [[destinations]]\nname = \"ris\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\nsettle_secs = 0\n\
         [destinations.webhook]\nsecret = \"a-webhook-secret-of-16+\"\n\
         [retention]\nimages_days = 0\noutputs_days = 0\ninterval_secs = 1\n{}",
        webhook.port,
        audit_section(
            &rsyslog,
            &certs,
            &format!(
                "[[audit.repositories]]\nname = \"udp\"\ntransport = \"udp\"\nhost = \"127.0.0.1\"\nport = {}\n\
                 [[audit.repositories]]\nname = \"file\"\ntransport = \"file\"\npath = \"{}\"\n",
                rsyslog.udp_port,
                audit_file.display()
            )
        )
    );
    let tls = format!(
        "[dicom.tls]\nbind = \"127.0.0.1:{tls_port}\"\ncert_file = \"{0}/pacs.crt\"\nkey_file = \"{0}/pacs.key\"\n",
        certs.display()
    );
    setup.write_config("", &tls, common::DEFAULT_PEERS);
    let mut node = setup.start();

    // received, analysed, sent to the PACS and the RIS, then deleted by retention
    let image = synthetic_positive(&dir.join("images"));
    let study = study_instance_uid(&image);
    let out = storescu(setup.port, &[], &[&image]);
    assert!(out.status.success(), "{}", text(&out));
    setup.wait_count("SELECT COUNT(*) FROM instances WHERE released_at IS NOT NULL", 1);
    // security alerts: a caller the policy refuses, a hostile data set, plain TCP to the TLS port
    let refused = storescu(setup.port, &["-aet", "INTRUDER"], &[&image]);
    assert!(!refused.status.success());
    let mut assoc = associate(setup.port, &[(CR, EXPLICIT_LE)]).unwrap();
    let ctx = context_id(&assoc, CR);
    let garbage = [0x08, 0x00, 0x16, 0x00, b'U', b'I', 0xFF, 0xFF, b'1', b'.', b'2'];
    assert_eq!(scu::store(&mut assoc, ctx, CR, "1.2.3.4", &garbage), 0xC000);
    assoc.release().unwrap();
    {
        use std::io::Write;
        let mut plain = std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
        let _ = plain.write_all(b"not a TLS handshake\r\n\r\n");
        node.wait_for_log("TLS handshake failed");
    }
    // the worklist read by dr.lee, then a request with a token no one has
    assert_eq!(get(&setup, "/api/studies?priority=urgent,review,routine", TOKEN), 200);
    assert_eq!(get(&setup, &format!("/api/studies/{study}"), TOKEN), 200);
    assert_eq!(get(&setup, "/api/studies", "not-a-token-anyone-has"), 401);
    // the command line lists the studies
    let listed = setup.cli(&["studies"]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(Command::new("kill").args(["-TERM", &node.pid().to_string()]).status().unwrap().success());
    assert!(node.wait_exit(Duration::from_secs(60)).success(), "{}", node.log());

    wait_until("the stop record at the TLS repository", Duration::from_secs(20), || {
        std::fs::read_to_string(rsyslog.tls_log()).unwrap_or_default().contains("110121")
    });
    rsyslog.stop();
    let records = check(&rsyslog.tls_log(), &dir.join("xml-tls"));
    assert_valid(&records);
    let kinds: BTreeSet<String> = records.iter().map(kind).collect();
    let wanted = [
        ("110100/110120", "Application Activity: start"),
        ("110100/110121", "Application Activity: stop"),
        ("110104", "DICOM Instances Transferred (received and sent)"),
        ("110106", "Export (the webhook message)"),
        ("110103", "DICOM Instances Accessed (the study read)"),
        ("110112", "Query (the worklist listed, the command line)"),
        ("110114/110122", "User Authentication (accepted and refused)"),
        ("110113/110126", "Security Alert: node authentication (TLS, the refused caller)"),
        ("110113/HOSTILE", "Security Alert: a hostile data set"),
        ("110113/110131", "Security Alert: the configuration (first start)"),
        ("110105", "DICOM Study Deleted (retention)"),
    ];
    for (code, what) in wanted {
        assert!(kinds.contains(code), "no {what} ({code}) among {kinds:?}");
    }
    for r in &records {
        assert_eq!(r["facility"], "authpriv", "{r}");
        assert_eq!(r["appname"], "pneumotriage", "{r}");
        assert_eq!(r["msgid"], "IHE+RFC-3881", "{r}");
        assert_eq!(r["bom"], true, "{r}");
        assert_eq!(r["source_id"], "test-node", "{r}");
    }
    let of = |code: &'static str| records.iter().filter(move |r| kind(r) == code);
    // received and sent: both ends and the study with its patient
    let transferred: Vec<&Value> = of("110104").collect();
    let actions: BTreeSet<&str> = transferred.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, BTreeSet::from(["C", "R"]), "received (C) and sent (R)");
    let received = transferred.iter().find(|r| r["action"] == "C").unwrap();
    let users: Vec<&str> =
        received["participants"].as_array().unwrap().iter().map(|p| p["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, ["STORESCU", "PNEUMOTRIAGE"], "{received}");
    let sent_to: BTreeSet<&str> = transferred
        .iter()
        .filter(|r| r["action"] == "R")
        .map(|r| r["participants"][1]["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(sent_to, BTreeSet::from(["PACS"]));
    assert!(of("110106").all(|r| r["participants"][1]["user_id"] == "ris"));
    // the read: dr.lee, from where, the patient and the study
    let read = of("110103").next().expect("a study read");
    assert_eq!(read["participants"][0]["user_id"], "dr.lee", "{read}");
    assert_eq!(read["participants"][0]["address"], "127.0.0.1", "{read}");
    let objects = read["objects"].as_array().unwrap();
    assert!(objects.iter().any(|o| o["role"] == "3" && o["id"] == study.as_str()), "{read}");
    let patient = objects.iter().find(|o| o["role"] == "1").expect("the patient");
    assert!(!patient["id"].as_str().unwrap().is_empty(), "{read}");
    // the query as it was asked, and who asked on the command line
    let queries: Vec<&Value> = of("110112").collect();
    assert!(queries.iter().any(|r| r["objects"][0]["query"] == "priority=urgent,review,routine"), "{queries:?}");
    assert!(queries.iter().any(|r| r["objects"][0]["id"] == "pneumotriage studies"), "{queries:?}");
    // the refused token: a minor failure, severity warning
    let refusal = of("110114/110122").find(|r| r["outcome"] == "4").expect("a refused token");
    assert_eq!(refusal["severity"], "warning");
    assert_eq!(refusal["participants"][0]["user_id"], "unknown");
    let alerts: Vec<&str> = of("110113/110126").map(|r| r["outcome_description"].as_str().unwrap()).collect();
    assert!(alerts.iter().any(|d| d.starts_with("TLS handshake failed")), "{alerts:?}");
    assert!(alerts.iter().any(|d| d.contains("INTRUDER")), "{alerts:?}");

    // the same records over UDP and in the file
    for (what, path) in [("udp", rsyslog.dir.join("udp.log")), ("file", audit_file)] {
        let copy = check(&path, &dir.join(format!("xml-{what}")));
        assert_valid(&copy);
        let copied: BTreeSet<String> = copy.iter().map(kind).collect();
        assert_eq!(copied, kinds, "{what}");
    }
}

/// The repository down for two minutes while 50 images arrive and the worklist is read: every
/// record arrives once it is back (the sequence ids of the records, 1 to the last the database
/// gave, all present), none lost; duplicates counted and reported.
fn a_repository_down_for_two_minutes_loses_nothing(backend: Backend) {
    let mut setup = Setup::new(backend);
    let dir = setup.dir.path().to_path_buf();
    let certs = dir.join("certs");
    make_certificates(&certs);
    let mut rsyslog = Rsyslog::start(&dir.join("rsyslog"), &certs);
    setup.http = format!("[[http.tokens]]\nname = \"dr.lee\"\ntoken = \"{TOKEN}\"\n");
    setup.tail = audit_section(&rsyslog, &certs, "");
    setup.write_config("", "", common::DEFAULT_PEERS);
    let mut node = setup.start();
    wait_until("the start record", Duration::from_secs(20), || Rsyslog::lines(&rsyslog.tls_log()) >= 2);

    let down_for = Duration::from_secs(120);
    let down_since = Instant::now();
    rsyslog.stop();
    let images = synthetic_images(&dir.join("images"), 50, 29);
    for batch in images.chunks(10) {
        let files: Vec<&Path> = batch.iter().map(PathBuf::as_path).collect();
        let out = storescu(setup.port, &[], &files);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(get(&setup, "/api/studies", TOKEN), 200);
        for image in batch {
            assert_eq!(get(&setup, &format!("/api/studies/{}", study_instance_uid(image)), TOKEN), 200);
        }
    }
    let waiting = setup.count("SELECT COUNT(*) FROM audit_records");
    assert!(waiting >= 50 + 5 + 50, "records wait while the repository is down: {waiting}");
    // receiving went on at full speed: every image stored while the repository was down
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 50);
    std::thread::sleep(down_for.saturating_sub(down_since.elapsed()));
    rsyslog.run();
    wait_until("the backlog sent", Duration::from_secs(60), || setup.count("SELECT COUNT(*) FROM audit_records") == 0);
    assert!(Command::new("kill").args(["-TERM", &node.pid().to_string()]).status().unwrap().success());
    assert!(node.wait_exit(Duration::from_secs(60)).success(), "{}", node.log());
    rsyslog.stop();

    let last = match backend {
        Backend::Sqlite => setup.count("SELECT seq FROM sqlite_sequence WHERE name = 'audit_records'"),
        Backend::Postgres => setup.count("SELECT last_value FROM audit_records_id_seq"),
    };
    let records = check(&rsyslog.tls_log(), &dir.join("xml"));
    assert_valid(&records);
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &records {
        *seen.entry(r["sequence"].as_i64().unwrap()).or_default() += 1;
    }
    let missing: Vec<i64> = (1..=last).filter(|id| !seen.contains_key(id)).collect();
    assert!(missing.is_empty(), "records lost: {missing:?} of 1..={last}");
    let duplicates = records.len() - seen.len();
    eprintln!(
        "audit repository down {:?}: {} records made, {} arrived, {duplicates} duplicates",
        down_for,
        last,
        records.len()
    );
    let log = node.log();
    assert!(log.contains("audit repository unreachable"), "{log}");
    assert!(log.contains("audit repository reachable again"), "{log}");
}

on_both_backends!(a_repository_down_for_two_minutes_loses_nothing);
