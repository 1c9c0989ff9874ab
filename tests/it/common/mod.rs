//! The test bench: a real node process, a real database (a fresh SQLite file or a fresh
//! PostgreSQL database per test), real DICOM peers (dcmtk, pynetdicom) and real test images.

pub mod orthanc;
mod python;
pub mod s3;
pub mod scu;

pub use python::python;

use std::collections::BTreeSet;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use pneumotriage::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs one test body once per backend, as `sqlite::NAME` and `postgres::NAME` (tests/it/main.rs
/// declares this module first, with `#[macro_use]`, so that every module can use it).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name($crate::common::Backend::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name($crate::common::Backend::Postgres) } )*
        }
    };
}

/// The PostgreSQL server the tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("PNEUMOTRIAGE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// A database of one test, dropped with it.
pub struct TestDb {
    pub url: String,
    postgres_name: Option<String>,
}

impl TestDb {
    pub fn create(backend: Backend, dir: &Path) -> TestDb {
        match backend {
            Backend::Sqlite => {
                TestDb { url: format!("sqlite://{}/db/pneumotriage.db", dir.display()), postgres_name: None }
            }
            Backend::Postgres => {
                static COUNTER: AtomicU32 = AtomicU32::new(0);
                let name = format!(
                    "pt_test_{}_{}_{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::Relaxed),
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
                );
                psql(&format!("CREATE DATABASE {name}"));
                let admin = postgres_admin_url();
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                TestDb { url: format!("{base}/{name}"), postgres_name: Some(name) }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.postgres_name {
            let _ = Command::new("psql")
                .arg(postgres_admin_url())
                .args(["-q", "-c", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs SQL as the PostgreSQL administrator; panics on failure.
pub fn psql(sql: &str) {
    let out = Command::new("psql")
        .arg(postgres_admin_url())
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A port nothing listens on now and that no other test of this run was given: the system may
/// hand the same free port to two binds in a row (a node was once given it for both DICOM and
/// HTTP), so each port is given out once. Taken below the system's ephemeral range: a port the
/// system picked (`:0`) lies in it, where the run's outgoing connections take their own ports,
/// and one of them took a node's port between its handing out and the node's bind.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral.max(20_000));
    let random = std::collections::hash_map::RandomState::new();
    loop {
        let mut draw = random.build_hasher();
        draw.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        let port = low + (draw.finish() % u64::from(high - low)) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A node's configuration, data directory and database; start it with [`Setup::start`].
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
    pub port: u16,
    pub config_path: PathBuf,
    /// The `[inference]` lines of the config.
    pub inference: String,
    /// Sections added at the end of the config (e.g. `[[destinations]]`).
    pub tail: String,
    /// The HTTP server's port, and lines added to `[http]` (e.g. a token).
    pub http_port: u16,
    pub http: String,
}

/// Calling AE titles the default test config allows.
pub const DEFAULT_PEERS: &str = r#"
[[dicom.peers]]
ae_title = "STORESCU"
[[dicom.peers]]
ae_title = "ECHOSCU"
[[dicom.peers]]
ae_title = "PYNETDICOM"
[[dicom.peers]]
ae_title = "TESTSCU"
host = "127.0.0.1"
"#;

impl Setup {
    /// A receiving node with the default test configuration: analysis is off, so that jobs
    /// stay queued for the receive tests to see.
    pub fn new(backend: Backend) -> Setup {
        Setup::with(backend, "", "")
    }

    /// `node_extra` and `dicom_extra` are TOML lines added to `[node]` and `[dicom]`.
    pub fn with(backend: Backend, node_extra: &str, dicom_extra: &str) -> Setup {
        Setup::build(backend, node_extra, dicom_extra, "enabled = false")
    }

    /// A node that analyses what it receives with the repository's models; `inference_extra`
    /// is added to `[inference]`.
    pub fn analysing(backend: Backend, inference_extra: &str) -> Setup {
        Setup::build(backend, "", "", inference_extra)
    }

    fn build(backend: Backend, node_extra: &str, dicom_extra: &str, inference_extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::create(backend, dir.path());
        let port = free_port();
        let config_path = dir.path().join("pneumotriage.toml");
        let inference =
            format!("models = \"{}/models/manifest.toml\"\n{inference_extra}\n", env!("CARGO_MANIFEST_DIR"));
        let http_port = free_port();
        let (tail, http) = (String::new(), String::new());
        let setup = Setup { dir, db, port, config_path, inference, tail, http_port, http };
        setup.write_config(node_extra, dicom_extra, DEFAULT_PEERS);
        setup
    }

    pub fn write_config(&self, node_extra: &str, dicom_extra: &str, peers: &str) {
        // a low floor by default: test machines may have little free disk
        let floor = if node_extra.contains("min_free_disk_mb") { "" } else { "min_free_disk_mb = 1" };
        let text = format!(
            "[node]\ndata_dir = \"var\"\nname = \"test-node\"\n{floor}\n{node_extra}\n\
             [dicom]\nae_title = \"PNEUMOTRIAGE\"\nbind = \"127.0.0.1:{}\"\n{dicom_extra}\n\
             {peers}\n[database]\nurl = \"{}\"\nmax_connections = 4\n\
             [http]\nbind = \"127.0.0.1:{}\"\n{}\n[inference]\n{}\n{}",
            self.port, self.db.url, self.http_port, self.http, self.inference, self.tail
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("var/spool")
    }

    /// Starts the node and waits until its DICOM listener is ready.
    pub fn start(&self) -> Node {
        self.start_with_env(&[])
    }

    /// The configuration of a second node on this setup's database, with its own name, data
    /// directory (so its own spool) and ports; start it with [`Setup::start_config`].
    pub fn second_node(&self, name: &str) -> (PathBuf, u16) {
        let port = free_port();
        let text = std::fs::read_to_string(&self.config_path)
            .unwrap()
            .replace("name = \"test-node\"", &format!("name = {name:?}"))
            .replace("data_dir = \"var\"", &format!("data_dir = \"var-{name}\""))
            .replace(&format!("127.0.0.1:{}", self.port), &format!("127.0.0.1:{port}"))
            .replace(&format!("127.0.0.1:{}", self.http_port), &format!("127.0.0.1:{}", free_port()));
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        (path, port)
    }

    /// Starts the node with extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Node {
        self.start_config(&self.config_path, env)
    }

    /// Starts a node with the configuration at `config` (see [`Setup::second_node`]).
    pub fn start_config(&self, config: &Path, env: &[(&str, &str)]) -> Node {
        let mut serve = Command::new(env!("CARGO_BIN_EXE_pneumotriage"));
        serve.args(["serve", "--config"]).arg(config);
        self.spawn(serve, env)
    }

    /// Starts the node with at most `limit` open files (soft and hard: it cannot raise them).
    pub fn start_with_open_file_limit(&self, limit: u32) -> Node {
        let mut serve = Command::new("sh");
        serve
            .args(["-c", &format!("ulimit -n {limit} && exec \"$0\" serve --config \"$1\"")])
            .arg(env!("CARGO_BIN_EXE_pneumotriage"))
            .arg(&self.config_path);
        self.spawn(serve, &[])
    }

    fn spawn(&self, mut serve: Command, env: &[(&str, &str)]) -> Node {
        // one log per start: a restarted node does not truncate the log of the one before it
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let log_path = self.dir.path().join(format!("node-{}.log", STARTS.fetch_add(1, Ordering::Relaxed)));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = serve
            .env("RUST_LOG", "info,sqlx=warn")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the node starts");
        let mut node = Node { child, log_path };
        node.wait_ready();
        node
    }

    /// Runs a CLI subcommand against this setup's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .unwrap()
    }

    /// Runs `f` with a connection to this setup's database.
    pub fn with_store<T>(&self, f: impl AsyncFnOnce(&Store) -> T) -> T {
        log_to_test_output();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let store = Store::connect(&self.db.url, 2, "test").await.expect("test database connects");
            let out = f(&store).await;
            store.close().await;
            out
        })
    }

    /// Runs a query that returns one integer.
    pub fn count(&self, sql: &str) -> i64 {
        let sql = sql.to_string();
        self.with_store(async move |store| {
            let (n,): (i64,) =
                sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(store.pool()).await.expect("count query");
            n
        })
    }

    /// Waits until a count query returns `expected` (rows written after the response, like
    /// audit events, may land a moment later).
    pub fn wait_count(&self, sql: &str, expected: i64) {
        // Generous: CI runs every test at once on two cores; a pass returns at the first match.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.count(sql);
            if n == expected {
                return;
            }
            assert!(Instant::now() < deadline, "{sql}: {n}, expected {expected}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (sop_instance_uid, version, path, transfer_syntax_uid, job state) of every instance.
    pub fn instances(&self) -> Vec<(String, i64, String, String, String)> {
        self.with_store(async |store| {
            sqlx::query_as(
                "SELECT i.sop_instance_uid, i.version, i.path, i.transfer_syntax_uid, j.state \
                 FROM instances i JOIN jobs j ON j.instance_id = i.id ORDER BY i.id",
            )
            .fetch_all(store.pool())
            .await
            .expect("instances query")
        })
    }

    /// Every file under the spool, relative to it (the tmp directory included).
    pub fn spool_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.spool_dir();
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path(), root, out);
                } else {
                    out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        walk(&root, &root, &mut out);
        out.sort();
        out
    }
}

/// The library's log lines in this process (the store's, e.g. a group commit falling back to
/// one by one) go to the output of the test that caused them, shown if it fails. A subscriber is
/// process-wide and every test shares the process: it is installed here, once, for every test
/// that opens a store, rather than by one test for whichever tests happen to run after it.
fn log_to_test_output() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt().with_env_filter("pneumotriage=debug").with_test_writer().try_init();
    });
}

/// A running node process; killed when dropped.
pub struct Node {
    child: Child,
    pub log_path: PathBuf,
}

impl Node {
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.log().contains("DICOM listener ready") {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the node exited with {status} before it was ready:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "the node did not get ready:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the node did not exit within {timeout:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until the log contains `needle` (the node logs asynchronously to the response).
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "log never said {needle:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_path(expr: &str) -> PathBuf {
    let out = Command::new(python()).args(["-c", &format!("print({expr})")]).output().expect("python runs");
    assert!(out.status.success(), "python {expr}: {}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// A file of PyPI's pydicom-data (e.g. `RG1_UNCR.dcm`).
pub fn pydicom_data(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| python_path("__import__('os').path.join(__import__('data_store').__path__[0], 'data')"))
        .join(name)
}

/// deid-data's `cat.dcm`: DX for presentation, MONOCHROME2, 2614x3072.
pub fn deid_cat() -> PathBuf {
    python_path("__import__('os').path.join(__import__('deid_data').__path__[0], 'data', 'animals', 'cat.dcm')")
}

/// pydicom's own MR test file: a class the node does not accept by default.
pub fn mr_small() -> PathBuf {
    python_path("__import__('pydicom.data').data.get_testdata_file('MR_small.dcm')")
}

pub fn tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools").join(name)
}

/// Runs dcmtk's storescu (by absolute path: a venv's pynetdicom shadows the name).
pub fn storescu(port: u16, args: &[&str], files: &[&Path]) -> Output {
    Command::new("/usr/bin/storescu")
        .args(["-v", "-aet", "STORESCU", "-aec", "PNEUMOTRIAGE"])
        .args(args)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .args(files)
        .env("TCP_NODELAY", "1")
        .output()
        .expect("dcmtk storescu runs")
}

/// Whether two files decode to the same pixels (pydicom with pylibjpeg decoders).
pub fn assert_same_pixels(sent: &Path, stored: &Path) {
    let out = Command::new(python()).arg(tool("same_pixels.py")).arg(sent).arg(stored).output().unwrap();
    assert!(
        out.status.success(),
        "{} vs {}: {}{}",
        sent.display(),
        stored.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SOP Instance UID of a DICOM file.
pub fn sop_instance_uid(path: &Path) -> String {
    header_text(path, dicom_dictionary_std::tags::SOP_INSTANCE_UID)
}

/// The Study Instance UID of a DICOM file.
pub fn study_instance_uid(path: &Path) -> String {
    header_text(path, dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
}

fn header_text(path: &Path, tag: dicom_core::Tag) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
        .open_file(path)
        .unwrap();
    obj.element(tag).unwrap().to_str().unwrap().trim_end_matches('\0').to_string()
}

/// One HTTP/1.0 exchange on 127.0.0.1 (the server closes the connection after it): the status,
/// the head and the body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, Vec<u8>)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or(std::io::ErrorKind::InvalidData)?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(std::io::ErrorKind::InvalidData)?;
    Ok((status, head, response[split + 4..].to_vec()))
}

/// Headless Chromium with its profile under `dir`, on `url` (with `--dump-dom` or
/// `--screenshot=FILE` among `args`), asserting success.
pub fn chromium(dir: &Path, args: &[&str], url: &str) -> Output {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"])
        .arg(format!("--user-data-dir={}", dir.join("chromium-profile").display()))
        .args(args)
        .arg(url)
        .output()
        .expect("Debian's chromium runs (scripts/test installs it)");
    assert!(out.status.success(), "chromium {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Runs a command-line tool, asserting success.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Writes `n` synthetic radiographs with known masks (models/training's generator) and their
/// `train-rle.csv` under `dir`; returns the DICOM files, sorted.
pub fn synthetic_images(dir: &Path, n: usize, seed: u64) -> Vec<PathBuf> {
    let made = Command::new(python())
        .args(["-m", "pneumotriage_models.generate"])
        .arg(dir)
        .args([n.to_string(), "--seed".into(), seed.to_string(), "--jobs".into(), "2".into()])
        .env("PYTHONPATH", concat!(env!("CARGO_MANIFEST_DIR"), "/models/training/src"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else if e.path().extension().is_some_and(|x| x == "dcm") {
                out.push(e.path());
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    files
}

/// The true masks of a synthetic set by ImageId (the file stem): (is positive, the CSV's RLE rows).
pub fn synthetic_truth(dir: &Path) -> std::collections::HashMap<String, Vec<String>> {
    pneumotriage::inference::rle::read_rle_csv(&dir.join("train-rle.csv")).unwrap().into_iter().collect()
}

/// A synthetic radiograph with a pneumothorax (from the generator's seed 77 set), written under `dir`.
pub fn synthetic_positive(dir: &Path) -> PathBuf {
    let files = synthetic_images(dir, 6, 77);
    let truth = synthetic_truth(dir);
    files
        .into_iter()
        .find(|f| truth[&f.file_stem().unwrap().to_string_lossy().into_owned()].iter().any(|r| r.trim() != "-1"))
        .expect("the seed 77 set has a positive")
}

/// In `dir`, made by openssl: a certificate authority `ca` and a second one `other-ca`; signed by
/// `ca`, a server certificate for localhost and 127.0.0.1 (`pacs`) and a client certificate
/// (`node`); signed by `other-ca`, a client certificate no one should trust (`rogue`).
pub fn make_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &str| {
        let out = Command::new("openssl").args(args.split(' ')).current_dir(dir).output().expect("openssl runs");
        assert!(out.status.success(), "openssl {args}: {}", text(&out));
    };
    for ca in ["ca", "other-ca"] {
        openssl(&format!("req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN={ca} -keyout {ca}.key -out {ca}.crt"));
    }
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    for (name, cn, ca) in [("pacs", "localhost", "ca"), ("node", "pneumotriage", "ca"), ("rogue", "rogue", "other-ca")]
    {
        openssl(&format!("req -newkey rsa:2048 -nodes -subj /CN={cn} -keyout {name}.key -out {name}.csr"));
        openssl(&format!(
            "x509 -req -in {name}.csr -CA {ca}.crt -CAkey {ca}.key -CAcreateserial -days 2 -extfile san.ext -out {name}.crt"
        ));
    }
}
