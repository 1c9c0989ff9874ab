//! The command line an admin meets first: check-config, migrate, and the shipped files.

mod common;

use std::path::Path;
use std::process::Command;

use common::{text, Backend, Setup};

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
    for file in ["config/pneumotriage.toml", "config/production.example.toml"] {
        let out = pneumotriage(&["check-config", "--config", &repo(file)]);
        assert!(out.status.success(), "{file}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("OK"), "{}", text(&out));
    }
    let out = pneumotriage(&["check-config"]);
    assert!(out.status.success(), "the embedded default: {}", text(&out));
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
