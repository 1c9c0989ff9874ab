//! The command line an admin meets first: check-config, migrate, and the shipped files.

use std::path::Path;
use std::process::Command;

use crate::common::{text, Backend, Setup};

fn pneumotriage(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pneumotriage")).args(args).output().unwrap()
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path).display().to_string()
}

#[test]
fn check_config_names_the_file_the_key_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[dicom]\naccept_any = true\nmax_pdu = 12\n\n[database]\nurl = \"mysql://x\"\n").unwrap();
    let out = pneumotriage(&["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}: dicom.max_pdu:", file.display())), "{err}");
    assert!(err.contains("database.url"), "{err}");

    std::fs::write(&file, "[dicom]\naccept_any = true\n\n[http]\nport = 8080\n").unwrap();
    let out = pneumotriage(&["check-config", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.port") || (err.contains("http") && err.contains("port")), "{err}");
    assert!(err.contains("line 5"), "{err}");
}

#[test]
fn shipped_configurations_are_valid() {
    // check-config also checks the models, so the example's installed manifest path is pointed
    // at this checkout's.
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo("config/production.example.toml")).unwrap();
    assert!(example.contains("/usr/share/pneumotriage/models/manifest.toml"));
    let production = dir.path().join("production.toml");
    std::fs::write(&production, example.replace("/usr/share/pneumotriage/models", &repo("models"))).unwrap();
    let default = dir.path().join("default.toml");
    let embedded = std::fs::read_to_string(repo("config/pneumotriage.toml")).unwrap();
    std::fs::write(
        &default,
        embedded.replace("\"models/manifest.toml\"", &format!("{:?}", repo("models/manifest.toml"))),
    )
    .unwrap();
    for file in [&default, &production] {
        let out = pneumotriage(&["check-config", "--config", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", file.display(), text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("OK"), "{}", text(&out));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .arg("check-config")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "the embedded default: {}", text(&out));
}

#[test]
fn check_config_refuses_models_that_are_not_the_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(repo("models/manifest.toml")).unwrap();
    let classifier = dir.path().join("demo/classifier.onnx");
    std::fs::create_dir_all(classifier.parent().unwrap()).unwrap();
    for name in ["classifier.onnx", "segmenter.onnx"] {
        std::fs::copy(repo(&format!("models/demo/{name}")), dir.path().join("demo").join(name)).unwrap();
    }
    std::fs::write(dir.path().join("manifest.toml"), manifest).unwrap();
    let mut bytes = std::fs::read(&classifier).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&classifier, bytes).unwrap();
    let config = dir.path().join("site.toml");
    std::fs::write(&config, "[dicom]\naccept_any = true\n[inference]\nmodels = \"manifest.toml\"\n").unwrap();
    let out = pneumotriage(&["check-config", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("inference.models") && err.contains("sha256"), "{err}");
    // serve refuses to start on it too, before it listens, with the same exit status and the
    // same problem: both run one check
    let out = pneumotriage(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let problem = err.lines().next().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("error: {problem}")), "{}", text(&out));
}

fn migrate_creates_the_schema_and_is_repeatable(backend: Backend) {
    let setup = Setup::new(backend);
    for _ in 0..2 {
        let out = setup.cli(&["migrate"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    for table in ["studies", "instances", "jobs", "events"] {
        assert_eq!(setup.count(&format!("SELECT COUNT(*) FROM {table}")), 0);
    }
}

on_both_backends!(migrate_creates_the_schema_and_is_repeatable);

/// The unit file passes `systemd-analyze verify` (pointed at the built binary, since
/// /usr/bin/pneumotriage is not installed on a build machine).
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo("systemd/pneumotriage.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/pneumotriage serve --config /etc/pneumotriage/pneumotriage.toml"));
    for hardening in
        ["ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes", "CAP_NET_BIND_SERVICE"]
    {
        assert!(unit.contains(hardening), "missing {hardening}");
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pneumotriage.service");
    std::fs::write(&copy, unit.replace("/usr/bin/pneumotriage", env!("CARGO_BIN_EXE_pneumotriage"))).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze is installed");
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let complaints: Vec<&str> = report.lines().filter(|l| l.contains("pneumotriage.service")).collect();
    assert!(complaints.is_empty(), "systemd-analyze complains: {report}");
}
