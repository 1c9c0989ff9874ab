//! Every link encrypted: HTTPS on the node's HTTP listener, and PostgreSQL over TLS with the
//! server verified, against a PostgreSQL server of the test's own (Debian's, `ssl = on`) and
//! certificates made by openssl.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, free_port, make_certificates, text, Backend, Setup};

const TOKEN: &str = "dr-lee-token-0123456789";

/// curl over HTTPS, trusting `ca`; (status, headers and body).
fn curl(ca: &Path, url: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The page and the API over HTTPS with an openssl-made certificate, HSTS on every answer;
/// plain HTTP to that port gets no answer, and a client that does not trust the certificate
/// does not get through.
#[test]
fn the_page_and_the_api_are_served_over_https_only() {
    let mut setup = Setup::new(Backend::Sqlite);
    let certs = setup.dir.path().join("certs");
    make_certificates(&certs);
    setup.http = format!(
        "[[http.tokens]]\nname = \"dr.lee\"\ntoken = \"{TOKEN}\"\n[http.tls]\ncert_file = \"{0}/pacs.crt\"\nkey_file = \"{0}/pacs.key\"\n",
        certs.display()
    );
    setup.write_config("", "", common::DEFAULT_PEERS);
    let node = setup.start();
    let log = node.wait_for_log("HTTPS ready");
    assert!(log.contains("HTTPS ready"), "{log}");
    let ca = certs.join("ca.crt");
    let base = format!("https://localhost:{}", setup.http_port);

    let (page, err) = curl(&ca, &format!("{base}/"), &[]);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}{err}");
    assert!(page.to_lowercase().contains("strict-transport-security: max-age=31536000"), "{page}");
    assert!(page.contains("<html"), "the worklist page: {page}");
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (api, err) = curl(&ca, &format!("{base}/api/studies"), &["-H", &bearer]);
    assert!(api.starts_with("HTTP/1.1 200"), "{api}{err}");
    assert!(api.contains("\"studies\""), "{api}");
    let (refused, _) = curl(&ca, &format!("{base}/api/studies"), &[]);
    assert!(refused.starts_with("HTTP/1.1 401"), "no token: {refused}");

    // plain HTTP to the HTTPS port: no HTTP answer at all
    let plain = common::http_request(setup.http_port, "GET", "/healthz", &[], "");
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // a client that trusts another authority stops at the handshake
    let (untrusted, err) = curl(&certs.join("other-ca.crt"), &format!("{base}/healthz"), &[]);
    assert!(untrusted.is_empty(), "{untrusted}");
    assert!(err.contains("certificate"), "{err}");
}

/// A PostgreSQL server of the test's own: `initdb` as the postgres user in a temporary
/// directory, `ssl = on` with `certs`' `pacs` certificate (localhost, 127.0.0.1), on a free port;
/// stopped when dropped.
struct TlsPostgres {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl TlsPostgres {
    /// None (and a SKIPPED line) where the test cannot be the postgres user.
    fn start(certs: &Path) -> Option<TlsPostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .max()?;
        let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !is_root || !bin.join("initdb").exists() {
            eprintln!(
                "SKIPPED: a PostgreSQL server of its own needs root (to run initdb as postgres) and {}",
                bin.display()
            );
            return None;
        }
        let dir = tempfile::Builder::new().prefix("pneumotriage-pg-tls-").tempdir().unwrap().keep();
        let data = dir.join("data");
        for (name, mode) in [("pacs.crt", "644"), ("pacs.key", "600"), ("ca.crt", "644")] {
            std::fs::copy(certs.join(name), dir.join(name)).unwrap();
            assert!(Command::new("chmod").args([mode]).arg(dir.join(name)).status().unwrap().success());
        }
        assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().unwrap().success());
        let as_postgres = |command: String| {
            let out = Command::new("su").args(["postgres", "-s", "/bin/sh", "-c", &command]).output().unwrap();
            assert!(out.status.success(), "{command}: {}", text(&out));
        };
        as_postgres(format!("{}/initdb -A trust -U postgres -D {} >/dev/null", bin.display(), data.display()));
        let port = free_port();
        let child = Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c"])
            .arg(format!(
                "exec {bin}/postgres -D {data} -p {port} -k {dir} -c listen_addresses=127.0.0.1 -c ssl=on \
                 -c ssl_cert_file={dir}/pacs.crt -c ssl_key_file={dir}/pacs.key",
                bin = bin.display(),
                data = data.display(),
                dir = dir.display(),
            ))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("postgres.log")).unwrap())
            .spawn()
            .unwrap();
        let server = TlsPostgres { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .unwrap()
            .success()
        {
            assert!(Instant::now() < deadline, "postgres did not start: {}", server.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(server)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-tAc", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The node connects to PostgreSQL over TLS with the server verified: `pg_stat_ssl` shows its
/// connections encrypted; a server certificate from another authority is refused at start, the
/// error naming `database.tls`.
#[test]
fn postgresql_over_tls_verifies_the_server() {
    let setup = Setup::new(Backend::Sqlite);
    let certs = setup.dir.path().join("certs");
    make_certificates(&certs);
    let Some(postgres) = TlsPostgres::start(&certs) else { return };
    postgres.psql("CREATE DATABASE triage");
    let url = format!("postgres://postgres@127.0.0.1:{}/triage", postgres.port);
    let config = |ca: &str| {
        let text = std::fs::read_to_string(&setup.config_path).unwrap();
        let start = text.find("[database]").unwrap();
        let end = start + text[start..].find("[http]").unwrap();
        let database = format!(
            "[database]\nurl = \"{url}\"\nmax_connections = 4\n[database.tls]\nca_file = \"{}\"\n",
            certs.join(ca).display()
        );
        let path = setup.dir.path().join(format!("{ca}.toml"));
        std::fs::write(&path, format!("{}{database}{}", &text[..start], &text[end..])).unwrap();
        path
    };

    let node = setup.start_config(&config("ca.crt"), &[]);
    let encrypted = postgres.psql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'triage' AND s.ssl",
    );
    let plain = postgres.psql(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'triage' AND NOT s.ssl",
    );
    assert!(encrypted.parse::<u32>().unwrap() >= 1, "no encrypted connection of the node: {encrypted}\n{}", node.log());
    assert_eq!(plain, "0", "a connection of the node in clear");
    drop(node);

    let out = Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .args(["serve", "--config"])
        .arg(config("other-ca.crt"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "the node started against an unverified server");
    let said = text(&out);
    assert!(said.contains("database.tls"), "{said}");
    assert!(said.to_lowercase().contains("certificate") || said.contains("UnknownIssuer"), "{said}");
}
