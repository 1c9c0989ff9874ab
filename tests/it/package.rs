//! The Debian package (scripts/package) and the monitoring examples shipped in it.
//!
//! The package test builds the .deb from a clean copy of the working tree (tracked and untracked
//! files, no target/ and no .venv) with the debug binary that `cargo test` built, installs it
//! with dpkg on this machine, checks the installed configuration, runs the packaged node as its
//! user, removes and purges it. It installs system-wide (/usr/bin, /etc, a system user), so it
//! runs only as root where dpkg is, takes a machine-wide lock so that two test processes never
//! install at once, and refuses to touch a pneumotriage it did not install itself.
//!
//! The monitoring test checks the Grafana dashboard's schema and that every query of the
//! dashboard and of the alert rules names only metrics that a live node's /metrics exports.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, http_request, storescu, synthetic_positive, text, Backend, Setup};

pub(crate) const CONFIG: &str = "/etc/pneumotriage/pneumotriage.toml";
pub(crate) const DATA: &str = "/var/lib/pneumotriage";
/// Present while a pneumotriage installed by this test is on the machine: a later run may then
/// purge a leftover of a crashed one, and never an installation that an admin made.
const MARKER: &str = "/var/lib/pneumotriage-package-test";
const LOCK: &str = "/run/lock/pneumotriage-package-test.lock";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn package_installs_runs_as_its_user_and_removes_cleanly() {
    // SAFETY: geteuid has no preconditions and cannot fail
    let root = unsafe { libc::geteuid() } == 0;
    if !root || Command::new("dpkg").arg("--version").output().is_err() {
        eprintln!("SKIPPED package::package_installs_runs_as_its_user_and_removes_cleanly: needs root and dpkg");
        return;
    }
    let _lock = machine_lock();
    let mut installed = Installed::claim();
    let work = tempfile::tempdir().unwrap();

    let deb = build_from_clean_copy(work.path());
    let out = must(Command::new("dpkg").arg("-i").arg(&deb));
    println!("dpkg -i:\n{}", text(&out));
    installed.check_layout();

    // the conffile as installed passes check-config, as root and as the service's user
    let out = must(packaged(Command::new("/usr/bin/pneumotriage").args(["check-config", "--config", CONFIG])));
    println!("check-config:\n{}", text(&out));
    assert!(text(&out).contains(": OK"), "{}", text(&out));
    must(installed.as_user(Command::new("/usr/bin/pneumotriage").args(["check-config", "--config", CONFIG])));

    receives_and_analyses_as_its_user(&installed, work.path());

    let out = must(Command::new("systemd-analyze").args([
        "verify",
        "--man=no",
        "/usr/lib/systemd/system/pneumotriage.service",
    ]));
    println!("systemd-analyze verify: {:?}", text(&out));
    assert!(!text(&out).contains("pneumotriage.service"), "systemd-analyze complains: {}", text(&out));

    // remove: the program goes, the configuration and the data stay
    let out = must(Command::new("dpkg").args(["-r", "pneumotriage"]));
    println!("dpkg -r:\n{}", text(&out));
    assert!(!Path::new("/usr/bin/pneumotriage").exists());
    assert!(!Path::new("/usr/lib/pneumotriage").exists());
    assert!(Path::new(CONFIG).exists(), "dpkg -r removed the configuration");
    assert!(Path::new(DATA).join("pneumotriage.db").exists(), "dpkg -r removed the database");
    assert_eq!(package_status(), "deinstall ok config-files");

    // purge: the configuration goes too; the received images stay (see packaging/debian/postrm)
    let out = must(Command::new("dpkg").args(["-P", "pneumotriage"]));
    println!("dpkg -P:\n{}", text(&out));
    assert!(!Path::new("/etc/pneumotriage").exists(), "dpkg -P left /etc/pneumotriage");
    assert!(Path::new(DATA).join("spool").exists(), "dpkg -P removed the received images");
    assert!(text(&out).contains("kept /var/lib/pneumotriage"), "{}", text(&out));
    assert!(package_status().is_empty(), "{}", package_status());
}

/// The packaged binary, run as `pneumotriage` on a copy of the installed configuration that
/// changes only the two ports (unprivileged and free; the installed allow-list already admits
/// this machine), stores an image from storescu under /var/lib/pneumotriage and analyses it
/// with the packaged models and ONNX Runtime.
fn receives_and_analyses_as_its_user(installed: &Installed, work: &Path) {
    let (port, http_port) = (free_port(), free_port());
    let config = fs::read_to_string(CONFIG).unwrap();
    let copy = config
        .replace("bind = \"0.0.0.0:104\"", &format!("bind = \"127.0.0.1:{port}\""))
        .replace("bind = \"127.0.0.1:8080\"", &format!("bind = \"127.0.0.1:{http_port}\""));
    assert_eq!(copy.matches(&format!(":{port}\"")).count() + copy.matches(&format!(":{http_port}\"")).count(), 2);
    let dir = work.join("run");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(work, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("pneumotriage.toml"), copy).unwrap();

    let mut node = RunningNode::start(installed, &dir.join("pneumotriage.toml"), dir.join("node.log"));

    let image = synthetic_positive(&work.join("images"));
    let sent = storescu(port, &[], &[&image]);
    assert!(sent.status.success(), "{}\n{}", text(&sent), node.log());

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _, body) = http_request(http_port, "GET", "/api/studies", &[], "").unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let states: Vec<&str> =
            listed["studies"].as_array().unwrap().iter().filter_map(|s| s["state"].as_str()).collect();
        if states == ["analysed"] {
            println!("analysed by the packaged node: {listed}");
            break;
        }
        assert!(Instant::now() < deadline, "not analysed within 60 s: {listed}\n{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // it analysed with the packaged library, not one found elsewhere
    let maps = fs::read_to_string(format!("/proc/{}/maps", node.child.id())).unwrap();
    let library = fs::read_dir("/usr/lib/pneumotriage").unwrap().next().unwrap().unwrap().path();
    assert!(maps.contains(library.to_str().unwrap()), "{} is not loaded", library.display());

    // a graceful stop, as systemd's would be; everything it wrote belongs to its user
    let pid = libc::pid_t::try_from(node.child.id()).expect("a pid fits pid_t");
    // SAFETY: a plain kill(2) of our own child, which has not been waited for yet
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = node.child.wait().unwrap();
    assert!(status.success(), "the node exited with {status}:\n{}", node.log());
    for path in [DATA.to_string(), format!("{DATA}/pneumotriage.db"), format!("{DATA}/spool")] {
        assert_eq!(fs::metadata(&path).unwrap().uid(), installed.uid, "{path} is not the service user's");
    }
}

/// The package, built by scripts/package in a copy of the files git knows of (committed or
/// not, ignored ones left out), as a fresh clone with the working tree's changes would be.
pub(crate) fn build_from_clean_copy(work: &Path) -> PathBuf {
    let listed = must(Command::new("git").arg("-C").arg(repo("")).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]));
    let clone = work.join("clone");
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let from = repo(name);
        if from.is_file() {
            let to = clone.join(name);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::copy(&from, &to).unwrap();
        }
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-cache");
    let out = must(
        Command::new("bash")
            .arg(clone.join("scripts/package"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_pneumotriage"))
            .arg("--out")
            .arg(work.join("out"))
            .arg("--cache")
            .arg(cache)
            .args(["--compress", "gzip:1"])
            .env_remove("CARGO_TARGET_DIR"),
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default());
    assert!(deb.starts_with(work.join("out")) && deb.is_file(), "scripts/package made no .deb: {}", text(&out));
    deb
}

/// This test's hold on the machine's pneumotriage installation, from before `dpkg -i` to after
/// the purge: dropping it purges the package, deletes the data and the user this test made,
/// whether the test passed or not.
pub(crate) struct Installed {
    pub(crate) uid: u32,
    user_existed: bool,
}

impl Installed {
    pub(crate) fn claim() -> Installed {
        let ours = Path::new(MARKER).exists();
        if !package_status().is_empty() || Path::new(DATA).exists() {
            assert!(
                ours,
                "pneumotriage is installed on this machine (or {DATA} exists) and not by this test: \
                 refusing to replace it or delete its data"
            );
            purge();
        }
        fs::write(MARKER, "the package test of pneumotriage installs here; see tests/it/package.rs\n").unwrap();
        Installed { uid: 0, user_existed: user_id().is_some() }
    }

    /// What dpkg -i must have put in place: the files, the user, the data directory and the
    /// configuration's owners.
    pub(crate) fn check_layout(&mut self) {
        let version = fs::read_to_string(repo("tests/requirements.txt"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("onnxruntime==").map(str::to_string))
            .unwrap();
        for path in [
            "/usr/bin/pneumotriage".to_string(),
            format!("/usr/lib/pneumotriage/libonnxruntime.so.{version}"),
            "/usr/share/pneumotriage/models/manifest.toml".into(),
            "/usr/lib/systemd/system/pneumotriage.service".into(),
            "/usr/lib/sysusers.d/pneumotriage.conf".into(),
            "/usr/lib/tmpfiles.d/pneumotriage.conf".into(),
            "/usr/share/doc/pneumotriage/README.md".into(),
            "/usr/share/doc/pneumotriage/configuration.md".into(),
            "/usr/share/doc/pneumotriage/operations.md".into(),
            "/usr/share/doc/pneumotriage/examples/grafana-dashboard.json".into(),
        ] {
            assert!(Path::new(&path).is_file(), "{path} is not installed");
        }
        let uid = user_id().expect("postinst created the user pneumotriage");
        let data = fs::metadata(DATA).unwrap();
        assert_eq!((data.uid(), data.mode() & 0o7777), (uid, 0o750), "{DATA}");
        let config = fs::metadata(CONFIG).unwrap();
        let group = must(Command::new("getent").args(["group", "pneumotriage"]));
        let gid: u32 = text(&group).split(':').nth(2).unwrap().parse().unwrap();
        assert_eq!((config.uid(), config.gid(), config.mode() & 0o7777), (0, gid, 0o640), "{CONFIG}");
        self.uid = uid;
    }

    /// `command` to be run as the service's user and group, as the unit runs the node.
    pub(crate) fn as_user<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        let gid = fs::metadata(DATA).unwrap().gid();
        packaged(command).uid(self.uid).gid(gid).env("HOME", DATA).env("USER", "pneumotriage")
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        purge();
        if !self.user_existed {
            let _ = Command::new("userdel").arg("pneumotriage").output();
            let _ = Command::new("groupdel").arg("pneumotriage").output();
        }
        let _ = fs::remove_file(MARKER);
    }
}

/// `command` without the test environment's pointer to ONNX Runtime (scripts/test sets one at
/// the .venv's), so that the packaged node loads the packaged library, as under systemd.
pub(crate) fn packaged(command: &mut Command) -> &mut Command {
    command.env_remove("ORT_DYLIB_PATH")
}

/// Purges the package and deletes its data (only ever for an installation this test made).
fn purge() {
    let _ = Command::new("dpkg").args(["-P", "pneumotriage"]).output();
    let _ = fs::remove_dir_all(DATA);
}

/// dpkg's status of the package ("install ok installed", "deinstall ok config-files"), or ""
/// when nothing of it is on the machine.
fn package_status() -> String {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", "pneumotriage"]).output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if status.ends_with("not-installed") {
        String::new()
    } else {
        status
    }
}

pub(crate) fn user_id() -> Option<u32> {
    let out = Command::new("id").args(["-u", "pneumotriage"]).stderr(Stdio::null()).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// An exclusive lock for the whole machine, held while the returned file is open: another
/// test process on this machine waits here rather than installing over this one.
pub(crate) fn machine_lock() -> fs::File {
    fs::create_dir_all(Path::new(LOCK).parent().unwrap()).unwrap();
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).unwrap();
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
    file
}

pub(crate) fn must(command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?}: {}\n{}", out.status, text(&out));
    out
}

/// The packaged node, killed if the test ends early.
pub(crate) struct RunningNode {
    pub(crate) child: Child,
    pub(crate) log_path: PathBuf,
}

impl RunningNode {
    /// `/usr/bin/pneumotriage serve` as the service's user with `config`, logging to `log_path`,
    /// once its DICOM listener is ready.
    pub(crate) fn start(installed: &Installed, config: &Path, log_path: PathBuf) -> RunningNode {
        let log = fs::File::create(&log_path).unwrap();
        let mut node = RunningNode {
            child: installed
                .as_user(Command::new("/usr/bin/pneumotriage").args(["serve", "--config"]).arg(config))
                .env("RUST_LOG", "info,sqlx=warn")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
            log_path,
        };
        node.wait_for("DICOM listener ready");
        node
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub(crate) fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the packaged node exited with {status}:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "the packaged node never logged {needle:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The dashboard is Grafana dashboard JSON (the fields Grafana needs to import it), and every
/// query in it and in the alert rules names metrics that a live node's /metrics exports.
#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    // a family appears in /metrics with its first sample: a node that analyses an image, skips
    // another (a tibia) and tries to deliver its results to a PACS and a RIS that are down has
    // them all
    let mut setup = Setup::analysing(Backend::Sqlite, "");
    setup.tail = format!(
        "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {}\n\
         [[destinations]]\nname = \"ris\"\nkind = \"hl7\"\nhost = \"127.0.0.1\"\nport = {}\n\
         [[audit.repositories]]\nname = \"siem\"\ntransport = \"udp\"\nhost = \"127.0.0.1\"\nport = {}\n",
        free_port(),
        free_port(),
        free_port()
    );
    setup.write_config("", "", crate::common::DEFAULT_PEERS);
    let node = setup.start();
    let work = tempfile::tempdir().unwrap();
    let tibia = crate::common::pydicom_data("RG3_UNCR.dcm");
    let sent = storescu(setup.port, &[], &[&synthetic_positive(work.path()), &tibia]);
    assert!(sent.status.success(), "{}", text(&sent));
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (status, _, body) = http_request(setup.http_port, "GET", "/metrics", &[], "").unwrap();
        assert_eq!(status, 200);
        let body = String::from_utf8(body).unwrap();
        // each family read from the database by its own query: wait for all of them
        let families = [
            "pneumotriage_delivery_attempts_total{",
            "pneumotriage_messages{",
            "pneumotriage_deliveries{",
            "pneumotriage_skipped_total{",
            "pneumotriage_audit_backlog{",
        ];
        if families.iter().all(|f| body.contains(f)) {
            break body;
        }
        assert!(Instant::now() < deadline, "no delivery attempt within 60 s:\n{body}\n{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let exported = exported_metrics(&body);
    assert!(exported.contains("pneumotriage_stage_seconds_bucket"), "{exported:?}");

    let dashboard: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo("packaging/grafana/pneumotriage.json")).unwrap()).unwrap();
    let mut queries = grafana_queries(&dashboard);
    let alerts = fs::read_to_string(repo("packaging/prometheus/pneumotriage-alerts.yml")).unwrap();
    assert!(alerts.contains("groups:"));
    let alert_queries: Vec<String> =
        alerts.lines().filter_map(|l| l.trim().strip_prefix("expr: ")).map(str::to_string).collect();
    assert!(alert_queries.len() >= 5, "{alerts}");
    queries.extend(alert_queries);

    for query in &queries {
        let named = metric_names(query);
        assert!(!named.is_empty(), "{query} names no metric");
        for name in named {
            // `up` is Prometheus' own, about the scrape: the one foreign metric allowed
            assert!(name == "up" || exported.contains(&name), "{query}: {name} is not in /metrics ({exported:?})");
        }
    }
}

/// Every query of a Grafana dashboard, after checking the fields Grafana's import needs: title,
/// uid, schemaVersion, a Prometheus data source variable, and panels with a type, a place on
/// the 24-column grid and queries against that variable.
fn grafana_queries(dashboard: &serde_json::Value) -> Vec<String> {
    for key in ["title", "uid"] {
        assert!(dashboard[key].as_str().is_some_and(|s| !s.is_empty()), "dashboard {key}");
    }
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    assert!(
        variables.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "datasource"),
        "no Prometheus data source variable"
    );
    let mut queries: Vec<String> =
        variables.iter().filter_map(|v| v["query"]["query"].as_str()).map(str::to_string).collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "{title}: duplicate id");
        assert!(panel["type"].as_str().is_some_and(|t| !t.is_empty()), "{title}: type");
        let grid = &panel["gridPos"];
        let [x, w, h] = ["x", "w", "h"].map(|k| grid[k].as_u64().unwrap_or_else(|| panic!("{title}: gridPos.{k}")));
        assert!(grid["y"].is_u64() && w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {grid}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets =
            panel["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title}: targets"));
        for target in targets {
            assert!(target["refId"].is_string(), "{title}: refId");
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            queries.push(target["expr"].as_str().unwrap_or_else(|| panic!("{title}: expr")).to_string());
        }
    }
    assert!(panels.len() >= 8, "a dashboard of {} panels", panels.len());
    queries
}

/// The names a scrape exports: every sample's, and each family's from its TYPE line (a
/// counter's `_total`, a histogram's `_bucket`, `_sum` and `_count`), so that a family with no
/// sample yet still counts.
fn exported_metrics(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            names.insert(line.split(['{', ' ']).next().unwrap().to_string());
        }
    }
    names
}

/// The metric names in a PromQL expression: identifiers that select series (followed by a
/// label matcher `{` or a range `[`), and every `pneumotriage_` identifier. Quoted strings,
/// label names, functions and `$variables` are not metrics.
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = query.chars().collect();
    let (mut i, mut in_braces) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' || c == '}' {
            in_braces = c == '{';
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '$' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:$".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            let starts_like_a_name = word.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
            if !in_braces
                && starts_like_a_name
                && (word.starts_with("pneumotriage_") || matches!(next, Some('{') | Some('[')))
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}
