//! An upgrade from the previous release: the package built from an earlier commit of this
//! repository is installed, stores and analyses images on SQLite and on PostgreSQL, delivers
//! their objects to a PACS and records a radiologist's verdict; then the current package is
//! installed over it, as an unattended upgrade would (the admin's conffile kept), and every
//! instance, result, object, delivery, verdict and image file is still there, and the node
//! serves, on the database the previous release wrote. The migrations a site's first upgrade
//! runs on its data are the ones tested here.
//!
//! The previous release is the package of an earlier commit (scripts/previous-release names
//! it), which scripts/test builds once per machine.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{free_port, http_request, pydicom_data, storescu, synthetic_images, text, Backend, TestDb};
use crate::delivery::Pacs;
use crate::package::{build_from_clean_copy, machine_lock, must, user_id, Installed, RunningNode, CONFIG, DATA};

/// The radiologist whose verdict the previous release records.
const LEE: &str = "upgrade-test-token-of-dr-lee";

#[test]
fn upgrade_keeps_every_record_and_the_admins_configuration() {
    // SAFETY: geteuid has no preconditions and cannot fail
    let root = unsafe { libc::geteuid() } == 0;
    if !root || Command::new("dpkg").arg("--version").output().is_err() {
        eprintln!("SKIPPED upgrade::upgrade_keeps_every_record_and_the_admins_configuration: needs root and dpkg");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let Some(previous) = previous_release_deb() else { return };
    let current = build_from_clean_copy(work.path());
    let images = synthetic_images(&work.path().join("images"), 6, 77);
    let tibia = pydicom_data("RG3_UNCR.dcm");

    let _lock = machine_lock();
    let mut installed = Installed::claim();
    let out = must(Command::new("dpkg").arg("-i").arg(&previous));
    println!("dpkg -i (previous release):\n{}", text(&out));
    installed.uid = user_id().expect("the previous release's postinst created the user");

    // The admin's edits: the ports, a named token for the radiologist, the PACS to send to.
    let pacs_port = free_port();
    let _pacs = Pacs::start(pacs_port, &work.path().join("pacs"), false);
    let (port, http_port) = (free_port(), free_port());
    let installed_conffile = fs::read_to_string(CONFIG).unwrap();
    let edited = installed_conffile
        .replace("bind = \"0.0.0.0:104\"", &format!("bind = \"127.0.0.1:{port}\""))
        .replace("bind = \"127.0.0.1:8080\"", &format!("bind = \"127.0.0.1:{http_port}\""))
        + &format!(
            "\n# added by the admin\n[[http.tokens]]\nname = \"dr.lee\"\ntoken = \"{LEE}\"\n\n\
             [[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n\
             retry_initial_secs = 1\nretry_max_secs = 2\n"
        );
    assert_ne!(edited, installed_conffile);
    fs::write(CONFIG, &edited).unwrap();

    // The same node on PostgreSQL: the conffile with a database URL and a data directory of its
    // own (the SQLite node's sweeps must not take its files for ones without rows).
    let postgres = TestDb::create(Backend::Postgres, work.path());
    let pg_dir = work.path().join("postgres");
    fs::create_dir_all(pg_dir.join("data")).unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    must(Command::new("chown").arg("-R").arg(installed.uid.to_string()).arg(&pg_dir));
    let pg_config = pg_dir.join("pneumotriage.toml");
    let with_url = edited
        .replacen("[database]\n", &format!("[database]\nurl = \"{}\"\n", postgres.url), 1)
        .replace("data_dir = \"/var/lib/pneumotriage\"", &format!("data_dir = \"{}\"", pg_dir.join("data").display()));
    assert!(with_url.contains(&postgres.url) && with_url.contains(pg_dir.to_str().unwrap()), "{with_url}");
    fs::write(&pg_config, with_url).unwrap();

    let sites = [
        Site {
            backend: Backend::Sqlite,
            config: PathBuf::from(CONFIG),
            database: format!("{DATA}/pneumotriage.db"),
            data_dir: PathBuf::from(DATA),
        },
        Site {
            backend: Backend::Postgres,
            config: pg_config,
            database: postgres.url.clone(),
            data_dir: pg_dir.join("data"),
        },
    ];
    let mut before = Vec::new();
    for site in &sites {
        let node = site.start(&installed, work.path(), "previous");
        let mut sent: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
        sent.push(&tibia);
        let stored = storescu(port, &[], &sent);
        assert!(stored.status.success(), "{}\n{}", text(&stored), node.log());
        site.wait_until_settled(&installed, &node, images.len() + 1);
        give_a_verdict(http_port, &node);
        node.stop();
        let records = site.records(&installed);
        println!("{:?} as the previous release left it:\n{records:#?}", site.backend);
        assert!(records.deliveries.iter().any(|d| d.contains("|delivered|")), "{records:#?}");
        assert_eq!(records.verdicts.len(), 1, "{records:#?}");
        before.push(records);
    }

    // The upgrade, as unattended-upgrades runs it: the admin's conffile is kept, the package's
    // new one is put beside it.
    let out = must(Command::new("dpkg").args(["--force-confold", "-i"]).arg(&current));
    println!("dpkg -i (this release):\n{}", text(&out));
    assert_eq!(fs::read_to_string(CONFIG).unwrap(), edited, "the upgrade changed the admin's conffile");
    let beside = format!("{CONFIG}.dpkg-dist");
    assert!(
        fs::read_to_string(&beside).is_ok_and(|new| new.contains("[retention]")),
        "the new conffile is not beside the kept one as {beside}"
    );
    installed.check_layout();
    let out = must(installed.as_user(Command::new("/usr/bin/pneumotriage").args(["check-config", "--config", CONFIG])));
    assert!(text(&out).contains(": OK"), "the kept conffile fails this release's check-config: {}", text(&out));

    for (site, before) in sites.iter().zip(&before) {
        let node = site.start(&installed, work.path(), "current");
        // the records as they were (read while it serves: the migrations ran at its start)
        let after = site.records(&installed);
        assert_eq!(&after, before, "{:?}: the upgrade changed or lost records", site.backend);
        assert_eq!(before.files.len(), 7 + 8, "{:?}: {:?}", site.backend, before.files);
        for path in &before.files {
            assert!(site.data_dir.join(path).is_file(), "{:?}: {path} is gone after the upgrade", site.backend);
        }
        // the worklist shows them, with the verdict
        let studies = get(http_port, "/api/studies", &node);
        let listed = studies["studies"].as_array().unwrap();
        assert_eq!(listed.len(), before.studies.len(), "{studies}");
        let verdicts: usize = listed
            .iter()
            .map(|s| {
                let uid = s["study_instance_uid"].as_str().unwrap();
                let study = get(http_port, &format!("/api/studies/{uid}"), &node);
                study["instances"].as_array().unwrap().iter().filter(|i| i["verdict"] == "agree").count()
            })
            .sum();
        assert_eq!(verdicts, 1, "{:?}: the verdict is not shown after the upgrade", site.backend);
        // and it goes on working: a new image is received and analysed
        let new = synthetic_images(&work.path().join(format!("new-{:?}", site.backend)), 1, 5)[0].clone();
        let stored = storescu(port, &[], &[&new]);
        assert!(stored.status.success(), "{}\n{}", text(&stored), node.log());
        site.wait_until_settled(&installed, &node, images.len() + 2);
        node.stop();
    }
}

/// One of the two installations the test upgrades: its backend, config and database.
struct Site {
    backend: Backend,
    config: PathBuf,
    /// The SQLite file, or the PostgreSQL URL.
    database: String,
    data_dir: PathBuf,
}

/// What must survive an upgrade, each row as its database prints it.
#[derive(Debug, PartialEq, Eq)]
struct Records {
    studies: Vec<String>,
    instances: Vec<String>,
    results: Vec<String>,
    deliveries: Vec<String>,
    verdicts: Vec<String>,
    /// The image and object files the rows point to, relative to the data directory.
    files: Vec<String>,
}

impl Site {
    fn start(&self, installed: &Installed, work: &Path, release: &str) -> StartedNode {
        let log_path = work.join(format!("{release}-{:?}.log", self.backend));
        StartedNode(RunningNode::start(installed, &self.config, log_path))
    }

    /// Rows of one query, `|`-separated, as the service's user (SQLite's journal files stay its).
    fn query(&self, installed: &Installed, sql: &str) -> Vec<String> {
        let out = match self.backend {
            Backend::Sqlite => {
                must(installed.as_user(Command::new("sqlite3").args(["-readonly", &self.database, sql])))
            }
            Backend::Postgres => must(Command::new("psql").args([&self.database, "-X", "-At", "-c", sql])),
        };
        String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
    }

    fn records(&self, installed: &Installed) -> Records {
        let q = |sql: &str| self.query(installed, sql);
        Records {
            studies: q(
                "SELECT study_instance_uid, patient_id, patient_name, accession_number, priority, instance_count \
                        FROM studies ORDER BY id",
            ),
            instances: q(
                "SELECT i.id, i.sop_instance_uid, i.version, i.path, i.size_bytes, i.calling_ae, j.state, j.reason \
                          FROM instances i JOIN jobs j ON j.instance_id = i.id ORDER BY i.id",
            ),
            results: q(
                "SELECT r.id, r.instance_id, r.decision, r.priority, r.probability, r.mask_rle, r.classifier_sha256 \
                        FROM results r ORDER BY r.id",
            ),
            deliveries: q("SELECT o.kind, o.sop_instance_uid, o.path, d.destination, d.state, d.attempts \
                           FROM deliveries d JOIN outputs o ON o.id = d.output_id ORDER BY d.id"),
            verdicts: q("SELECT result_id, verdict, reviewer, created_at FROM verdicts ORDER BY id"),
            files: q(
                "SELECT 'spool/' || path FROM instances UNION ALL SELECT 'outputs/' || path FROM outputs ORDER BY 1",
            ),
        }
    }

    /// Waits until `n` images are received, none waits for analysis and no delivery is pending.
    fn wait_until_settled(&self, installed: &Installed, node: &StartedNode, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let counts = self.query(
                installed,
                "SELECT (SELECT COUNT(*) FROM jobs), \
                        (SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')), \
                        (SELECT COUNT(*) FROM deliveries WHERE state IN ('pending', 'sending'))",
            );
            if counts == [format!("{n}|0|0")] {
                return;
            }
            assert!(Instant::now() < deadline, "{:?}: not settled in 120 s: {counts:?}\n{}", self.backend, node.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A packaged node serving on the test's ports.
struct StartedNode(RunningNode);

impl StartedNode {
    fn log(&self) -> String {
        self.0.log()
    }

    /// SIGTERM, as systemd stops it, and a clean exit.
    fn stop(mut self) {
        let pid = libc::pid_t::try_from(self.0.child.id()).expect("a pid fits pid_t");
        // SAFETY: a plain kill(2) of our own child, which has not been waited for yet
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = self.0.child.wait().unwrap();
        assert!(status.success(), "the node exited with {status}:\n{}", self.log());
    }
}

fn get(http_port: u16, path: &str, node: &StartedNode) -> serde_json::Value {
    let auth = format!("Bearer {LEE}");
    let (status, _, body) = http_request(http_port, "GET", path, &[("Authorization", &auth)], "").unwrap();
    assert_eq!(status, 200, "{path}: {}\n{}", String::from_utf8_lossy(&body), node.log());
    serde_json::from_slice(&body).unwrap()
}

/// dr.lee agrees with the first positive result the worklist shows.
fn give_a_verdict(http_port: u16, node: &StartedNode) {
    for study in get(http_port, "/api/studies", node)["studies"].as_array().unwrap() {
        let uid = study["study_instance_uid"].as_str().unwrap();
        for instance in get(http_port, &format!("/api/studies/{uid}"), node)["instances"].as_array().unwrap() {
            if instance["decision"] == "positive" {
                let id = instance["result_id"].as_i64().unwrap();
                let auth = format!("Bearer {LEE}");
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                let (status, _, body) = http_request(
                    http_port,
                    "POST",
                    &format!("/api/results/{id}/verdict"),
                    &headers,
                    r#"{"verdict": "agree"}"#,
                )
                .unwrap();
                assert_eq!(status, 201, "{}\n{}", String::from_utf8_lossy(&body), node.log());
                return;
            }
        }
    }
    panic!("the previous release found no positive to give a verdict on:\n{}", node.log());
}

/// The previous release's .deb, which scripts/test builds (scripts/previous-release); None
/// (and a SKIPPED line) in a shallow clone that lacks its commit.
fn previous_release_deb() -> Option<PathBuf> {
    let deb = std::env::var("PNEUMOTRIAGE_PREVIOUS_DEB").expect(
        "PNEUMOTRIAGE_PREVIOUS_DEB is unset: run the tests with scripts/test, which builds the previous release",
    );
    if deb.is_empty() {
        eprintln!(
            "SKIPPED upgrade::upgrade_keeps_every_record_and_the_admins_configuration: a shallow clone, \
             without the previous release's commit (see scripts/previous-release)"
        );
        return None;
    }
    assert!(Path::new(&deb).is_file(), "PNEUMOTRIAGE_PREVIOUS_DEB={deb} is not a file");
    Some(PathBuf::from(deb))
}
