//! Ingest benchmark: pneumotriage against dcmtk's `storescp`, in the same run on the same machine.
//!
//! Method (docs/benchmarks.md): N distinct ~5 MB DX files are sent over loopback by dcmtk's `storescu`
//! (`TCP_NODELAY=1`, 128 KiB PDUs, Explicit VR Little Endian) to each receiver in turn, with one
//! association (one storescu for all files) and with four concurrent associations (four storescu,
//! a quarter of the files each). Every scenario gets a fresh receiver and data directory, and the
//! wall time runs from the start of the storescu processes to the exit of the last one.
//! pneumotriage runs with its durability rule on (fsync per instance, SQLite synchronous=FULL);
//! storescp writes files without fsync (its default): single-process (its default, one
//! association at a time) and, for four associations, also `--fork` (a process per association).
//! pneumotriage also runs with PostgreSQL as its database (a fresh database per run on the tests'
//! server, `PNEUMOTRIAGE_TEST_PG`), and prints for each of its runs where an instance's time
//! went (its own /metrics: the whole C-STORE, making the file durable, the database commit).
//! With one association, pneumotriage also runs with its spool in an object store
//! (`[object_store]`: a fresh S3-compatible server per run, moto's in-memory one from
//! tests/requirements.txt, on loopback): each instance is fsynced locally, then PUT, then
//! committed, before its Success. `pneumotriage stow` receives the same files by STOW-RS
//! instead (`POST /dicomweb/studies`, one multipart/related request per association's share of
//! the files, streamed by curl from a body file made before the clock starts). `sync` runs before each scenario so that one receiver's dirty pages are not written back on the
//! next one's time, and once more right after the transfer: "durable images/s" counts that sync for
//! storescp, which is what its files need to be where pneumotriage's are at each Success. Each scenario is repeated R times, alternating which
//! receiver goes first, and the median is reported. Machines are noisy (and this one may be
//! shared), so the figures that matter are the ratios pneumotriage/storescp, not absolute rates.
//! MB = 10^6 bytes; peak RSS is the server's VmHWM in MiB, the largest over the repeats (not
//! available for `storescp --fork`, whose per-association children are gone by then).
//!
//! Run: `cargo bench --bench ingest`. Environment: `INGEST_BENCH_N` (files, default 120),
//! `INGEST_BENCH_REPEAT` (default 3), `PNEUMOTRIAGE_PYTHON` (default the repository's
//! `.venv/bin/python` if there is one, else `python3`; needs pydicom and numpy). Needs dcmtk in
//! /usr/bin. The files are cached in `target/bench-data/dx5mb-N/`. It prints figures and asserts
//! nothing about speed; it fails only when a transfer fails.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

// Absolute paths: a Python virtual environment's pynetdicom may shadow the names.
mod support;
use support::{Kids, Mode};

// The tests' rule for which Python runs the tools (PNEUMOTRIAGE_PYTHON, else .venv, else python3).
#[path = "../tests/it/common/python.rs"]
mod python;
use python::python;
// The tests' S3-compatible server (it asks for `free_port` and `python` here).
#[path = "../tests/it/common/s3.rs"]
#[allow(dead_code)] // the tests list the bucket's keys, the bench does not
mod s3;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

const STORESCU: &str = "/usr/bin/storescu";
const STORESCP: &str = "/usr/bin/storescp";
const PNEUMOTRIAGE: &str = env!("CARGO_BIN_EXE_pneumotriage");
const PDU: &str = "131072";
const AE_TITLE: &str = "PNEUMOTRIAGE";
const SCENARIOS: [usize; 2] = [1, 4];
const TARGETS: [f64; 2] = [1.0, 1.5];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    Pneumotriage,
    /// pneumotriage with PostgreSQL as its database (a fresh database per run).
    PneumotriagePg,
    /// pneumotriage with its spool in an object store.
    PneumotriageS3,
    /// pneumotriage with its audit trail on (a file repository, fsynced: the costliest local one).
    PneumotriageAudited,
    /// pneumotriage receiving by STOW-RS (HTTP) instead of C-STORE.
    PneumotriageStow,
    /// storescp as it runs by default: one process, one association at a time.
    Storescp,
    /// storescp --fork: one process per association.
    StorescpFork,
}

impl Receiver {
    fn name(self) -> &'static str {
        match self {
            Receiver::Pneumotriage => "pneumotriage",
            Receiver::PneumotriagePg => "pneumotriage pg",
            Receiver::PneumotriageS3 => "pneumotriage s3",
            Receiver::PneumotriageAudited => "pneumotriage audit",
            Receiver::PneumotriageStow => "pneumotriage stow",
            Receiver::Storescp => "storescp",
            Receiver::StorescpFork => "storescp --fork",
        }
    }

    /// The receivers compared for a number of concurrent associations.
    fn for_scenario(associations: usize) -> &'static [Receiver] {
        if associations == 1 {
            &[
                Receiver::Pneumotriage,
                Receiver::Storescp,
                Receiver::PneumotriagePg,
                Receiver::PneumotriageS3,
                Receiver::PneumotriageAudited,
                Receiver::PneumotriageStow,
            ]
        } else {
            &[
                Receiver::Pneumotriage,
                Receiver::Storescp,
                Receiver::StorescpFork,
                Receiver::PneumotriagePg,
                Receiver::PneumotriageAudited,
                Receiver::PneumotriageStow,
            ]
        }
    }

    /// Whether it is pneumotriage (whose acknowledged files are durable already).
    fn ours(self) -> bool {
        !matches!(self, Receiver::Storescp | Receiver::StorescpFork)
    }
}

/// A receiver listening on a free loopback port, with its own temporary directory.
struct Server {
    kids: Kids, // declared first: the process is killed before its directory is removed
    kind: Receiver,
    port: u16,
    /// Its HTTP port (STOW-RS).
    http_port: u16,
    config: PathBuf,
    /// The object store of `PneumotriageS3`.
    _s3: Option<s3::S3>,
    /// The database of `PneumotriagePg`, dropped after the process.
    _pg: Option<Postgres>,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(kind: Receiver) -> Result<Server> {
        let dir = tempfile::Builder::new().prefix("ingest-bench-").tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let http_port = free_port();
        let config = dir.path().join("pneumotriage.toml");
        let log = fs::File::create(dir.path().join("server.log"))?;
        let s3 = (kind == Receiver::PneumotriageS3).then(s3::S3::start);
        let pg = if kind == Receiver::PneumotriagePg { Some(Postgres::create()?) } else { None };
        let mut cmd = match kind {
            Receiver::Pneumotriage
            | Receiver::PneumotriagePg
            | Receiver::PneumotriageS3
            | Receiver::PneumotriageAudited
            | Receiver::PneumotriageStow => {
                let data_dir = dir.path().join("var").display().to_string();
                let audit = if kind == Receiver::PneumotriageAudited {
                    let path = dir.path().join("audit.log").display().to_string();
                    format!("[[audit.repositories]]\nname = \"file\"\ntransport = \"file\"\npath = {path:?}\n")
                } else {
                    String::new()
                };
                // STOW-RS, and /metrics for where the time went
                let http = format!("bind = \"127.0.0.1:{http_port}\"\nrequest_timeout_secs = 3600");
                let database = pg.as_ref().map(|pg| format!("[database]\nurl = {:?}\n\n", pg.url)).unwrap_or_default();
                fs::write(
                    &config,
                    format!(
                        "[node]\ndata_dir = {data_dir:?}\nmin_free_disk_mb = 100\n\n[dicom]\n\
                         bind = \"127.0.0.1:{port}\"\naccept_any = true\nmax_pdu = {PDU}\nmax_associations = 16\n\
                         [http]\n{http}\n\n[inference]\nenabled = false\n\n{database}{}{audit}",
                        s3.as_ref().map(|s3| s3.config("bench")).unwrap_or_default()
                    ),
                )?;
                let mut cmd = Command::new(PNEUMOTRIAGE);
                cmd.arg("serve").arg("--config").arg(&config).env_remove("RUST_LOG").env("NO_COLOR", "1");
                cmd
            }
            Receiver::Storescp | Receiver::StorescpFork => {
                fs::create_dir(dir.path().join("out"))?;
                let mut cmd = Command::new(STORESCP);
                if kind == Receiver::StorescpFork {
                    cmd.arg("--fork");
                }
                cmd.args(["--max-pdu", PDU, "-aet", AE_TITLE, "-od"])
                    .arg(dir.path().join("out"))
                    .arg(port.to_string())
                    .env("TCP_NODELAY", "1");
                cmd
            }
        };
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {}", kind.name()))?;
        let mut server = Server { kids: Kids(vec![child]), kind, port, http_port, config, _s3: s3, _pg: pg, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.kids.0[0].try_wait()? {
                bail!("{} exited ({status}) before listening; its log:\n{}", kind.name(), server.log());
            }
            ensure!(
                Instant::now() < deadline,
                "{} is not listening after 30 s; its log:\n{}",
                kind.name(),
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// VmHWM of the server process, read while it still runs.
    fn peak_rss_mib(&mut self) -> Result<f64> {
        if let Some(status) = self.kids.0[0].try_wait()? {
            bail!("{} died ({status}); its log:\n{}", self.kind.name(), self.log());
        }
        let status = fs::read_to_string(format!("/proc/{}/status", self.kids.0[0].id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/PID/status")?;
        Ok(kib / 1024.0)
    }

    /// Kills the server (SIGKILL: what was acknowledged must already be durable), then counts what it kept.
    fn stop_and_count(&mut self) -> Result<usize> {
        for child in &mut self.kids.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ok(match self.kind {
            Receiver::Storescp | Receiver::StorescpFork => fs::read_dir(self.dir.path().join("out"))?.count(),
            _ => {
                let out = Command::new(PNEUMOTRIAGE)
                    .args(["instances", "--json", "--limit", "1000000", "--config"])
                    .arg(&self.config)
                    .env("RUST_LOG", "error")
                    .output()?;
                ensure!(out.status.success(), "pneumotriage instances: {}", String::from_utf8_lossy(&out.stderr));
                serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)?.len()
            }
        })
    }

    /// Warning and error lines of the server's log.
    fn problems(&self) -> Vec<String> {
        let Ok(file) = fs::File::open(self.dir.path().join("server.log")) else { return vec![] };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter(|l| ["WARN", "ERROR", "W: ", "E: ", "F: "].iter().any(|p| l.contains(p)))
            .collect()
    }
}

/// A fresh PostgreSQL database on the tests' server (`PNEUMOTRIAGE_TEST_PG`, as tests/it),
/// dropped when done.
struct Postgres {
    url: String,
    name: String,
}

impl Postgres {
    fn admin_url() -> String {
        std::env::var("PNEUMOTRIAGE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
    }

    fn psql(sql: &str) -> Result<()> {
        let out =
            Command::new("psql").arg(Self::admin_url()).args(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql]).output()?;
        ensure!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    fn create() -> Result<Postgres> {
        let name = format!("pt_ingest_bench_{}_{}", std::process::id(), free_port());
        Self::psql(&format!("CREATE DATABASE {name}")).context("the PostgreSQL receiver needs a server")?;
        let admin = Self::admin_url();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Ok(Postgres { url: format!("{base}/{name}"), name })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Self::psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Where an instance's time went in the node, per instance, in ms (its /metrics): the whole
/// C-STORE or STOW-RS part (`receive`), and within it making the file durable (version lookup,
/// fsync, header check, rename) and the database commit; the rest is reading the bytes from
/// the network into the file.
#[derive(Clone, Copy, Default)]
struct Steps {
    receive: f64,
    durable: f64,
    record: f64,
}

impl Steps {
    fn scrape(http_port: u16) -> Result<Steps> {
        let out = Command::new("curl").args(["-sS", &format!("http://127.0.0.1:{http_port}/metrics")]).output()?;
        ensure!(out.status.success(), "curl /metrics: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout)?;
        let value = |series: &str| -> f64 {
            text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0)
        };
        let per_instance = |family: &str, label: &str| -> f64 {
            let count = value(&format!("{family}_count{{{label}}}"));
            if count == 0.0 {
                return 0.0;
            }
            value(&format!("{family}_sum{{{label}}}")) * 1000.0 / count
        };
        Ok(Steps {
            receive: per_instance("pneumotriage_stage_seconds", "stage=\"receive\""),
            durable: per_instance("pneumotriage_ingest_step_seconds", "step=\"durable\""),
            record: per_instance("pneumotriage_ingest_step_seconds", "step=\"record\""),
        })
    }

    fn median(runs: &[Steps]) -> Steps {
        let m = |f: fn(&Steps) -> f64| {
            let mut xs: Vec<f64> = runs.iter().map(f).collect();
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        Steps { receive: m(|s| s.receive), durable: m(|s| s.durable), record: m(|s| s.record) }
    }
}

/// Sends `files` with `associations` concurrent storescu processes; the wall time until the last exits.
fn send(port: u16, files: &[PathBuf], associations: usize) -> Result<Duration> {
    let start = Instant::now();
    let mut kids = Kids(Vec::new());
    for part in files.chunks(files.len().div_ceil(associations)) {
        let child = Command::new(STORESCU)
            .env("TCP_NODELAY", "1")
            .args(["-xe", "-R", "--max-pdu", PDU, "-aec", AE_TITLE, "127.0.0.1"])
            .arg(port.to_string())
            .args(part)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting storescu")?;
        kids.0.push(child);
    }
    for child in &mut kids.0 {
        let status = child.wait()?;
        ensure!(status.success(), "storescu exited with {status}");
    }
    Ok(start.elapsed())
}

/// The STOW-RS bodies of `files` for `associations` concurrent requests: one multipart/related
/// body file each under `dir`, made before the clock starts.
fn stow_bodies(dir: &Path, files: &[PathBuf], associations: usize) -> Result<Vec<PathBuf>> {
    let mut bodies = Vec::new();
    for (i, part) in files.chunks(files.len().div_ceil(associations)).enumerate() {
        let path = dir.join(format!("stow-{i}.body"));
        let mut body = std::io::BufWriter::new(fs::File::create(&path)?);
        for file in part {
            std::io::Write::write_all(
                &mut body,
                format!("--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
            )?;
            std::io::copy(&mut fs::File::open(file)?, &mut body)?;
            std::io::Write::write_all(&mut body, b"\r\n")?;
        }
        std::io::Write::write_all(&mut body, format!("--{STOW_BOUNDARY}--\r\n").as_bytes())?;
        bodies.push(path);
    }
    Ok(bodies)
}

const STOW_BOUNDARY: &str = "ingest-bench-boundary";

/// POSTs each body by curl at once; the wall time until the last answered (200 each).
fn send_stow(http_port: u16, bodies: &[PathBuf]) -> Result<Duration> {
    let start = Instant::now();
    let mut kids = Kids(Vec::new());
    let content_type = format!("Content-Type: multipart/related; type=\"application/dicom\"; boundary={STOW_BOUNDARY}");
    for body in bodies {
        let child = Command::new("curl")
            // --upload-file streams the body (--data-binary @file reads it whole first); no
            // Expect: 100-continue round trip
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Expect:", "-H", &content_type])
            .arg("--upload-file")
            .arg(body)
            .arg(format!("http://127.0.0.1:{http_port}/dicomweb/studies"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting curl")?;
        kids.0.push(child);
    }
    for child in &mut kids.0 {
        let status = child.wait()?;
        let mut code = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().context("curl's output")?, &mut code)?;
        ensure!(status.success() && code == "200", "curl exited with {status}, HTTP {code}");
    }
    Ok(start.elapsed())
}

/// What one run of a scenario measured.
struct Run {
    /// From the start of the storescu processes to the exit of the last one.
    transfer: Duration,
    /// `transfer` plus a `sync` right after it: the time until the received files are on disk,
    /// which for pneumotriage is `transfer` already (it acknowledges only durable files).
    durable: Duration,
    peak_rss_mib: Option<f64>,
    /// pneumotriage's own account of where the time went.
    steps: Option<Steps>,
}

/// One scenario on a fresh receiver.
fn run_once(kind: Receiver, associations: usize, files: &[PathBuf]) -> Result<Run> {
    Command::new("sync").status()?;
    let mut server = Server::start(kind)?;
    let sent = match kind {
        Receiver::PneumotriageStow => {
            let bodies = stow_bodies(server.dir.path(), files, associations)?;
            Command::new("sync").status()?;
            send_stow(server.http_port, &bodies)
        }
        _ => send(server.port, files, associations),
    };
    let transfer = sent.with_context(|| format!("sending to {}; its log:\n{}", kind.name(), server.log()))?;
    let synced = Instant::now();
    Command::new("sync").status()?;
    let durable = if kind.ours() { transfer } else { transfer + synced.elapsed() };
    let peak_rss_mib = if kind == Receiver::StorescpFork { None } else { Some(server.peak_rss_mib()?) };
    let steps = if kind.ours() { Some(Steps::scrape(server.http_port)?) } else { None };
    if kind == Receiver::PneumotriageAudited {
        // the records of the associations, written as each ended (before the node is killed)
        std::thread::sleep(Duration::from_millis(500));
        let records = fs::read_to_string(server.dir.path().join("audit.log")).unwrap_or_default().lines().count();
        ensure!(records > 0, "auditing was on and no audit record was written; its log:\n{}", server.log());
        eprintln!("  {}: {records} audit records in its repository", kind.name());
    }
    let kept = server.stop_and_count()?;
    let problems = server.problems();
    for line in problems.iter().take(5) {
        eprintln!("  {} log: {line}", kind.name());
    }
    if problems.len() > 5 {
        eprintln!("  {} log: ... {} warning/error lines in all", kind.name(), problems.len());
    }
    ensure!(
        kept == files.len(),
        "{} kept {kept} of {} instances; its log:\n{}",
        kind.name(),
        files.len(),
        server.log()
    );
    Ok(Run { transfer, durable, peak_rss_mib, steps })
}

/// The N test files, generated once into target/bench-data/dx5mb-N/.
fn dataset(n: usize) -> Result<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(format!("target/bench-data/dx5mb-{n}"));
    if !dir.is_dir() {
        let partial = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&partial);
        let python = python();
        eprintln!("generating {n} files into {} ...", dir.display());
        let status = Command::new(&python)
            .arg(root.join("tests/tools/make_series.py"))
            .arg(&partial)
            .arg(n.to_string())
            .args(["--size", "1600"])
            .status()
            .with_context(|| format!("running {python}"))?;
        ensure!(status.success(), "make_series.py failed ({status})");
        fs::rename(&partial, &dir)?;
    }
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.sort();
    ensure!(files.len() == n, "{} holds {} files, not {n}: delete it to regenerate", dir.display(), files.len());
    Ok(files)
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2
    }
}

fn main() -> Result<()> {
    let mode = Mode::of_this_run("ingest");
    if mode == Mode::Skip {
        return Ok(());
    }
    let n = mode.env_usize("INGEST_BENCH_N", 120, 4)?;
    let repeat = mode.env_usize("INGEST_BENCH_REPEAT", 3, 1)?;
    let files = dataset(n)?;
    let bytes: u64 = files.iter().map(|f| fs::metadata(f).map(|m| m.len())).sum::<std::io::Result<u64>>()?;
    let cores = std::thread::available_parallelism()?.get();
    println!(
        "ingest: {n} files, {:.1} MB ({:.2} MB each), {cores} cores, {repeat} repeats, loopback, PDU {PDU}",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / n as f64
    );

    // runs[scenario][receiver], in the order of Receiver::for_scenario
    let mut runs: Vec<Vec<Vec<Run>>> =
        SCENARIOS.iter().map(|&a| Receiver::for_scenario(a).iter().map(|_| Vec::new()).collect()).collect();
    for rep in 0..repeat {
        for (s, &associations) in SCENARIOS.iter().enumerate() {
            let receivers = Receiver::for_scenario(associations);
            let mut order: Vec<usize> = (0..receivers.len()).collect();
            order.rotate_left(rep % receivers.len()); // no receiver always goes first
            for r in order {
                let run = run_once(receivers[r], associations, &files)?;
                eprintln!(
                    "  run {}/{repeat}: {associations} assoc, {:<16} {:.2} s (+sync {:.2} s)",
                    rep + 1,
                    receivers[r].name(),
                    run.transfer.as_secs_f64(),
                    run.durable.as_secs_f64()
                );
                runs[s][r].push(run);
            }
        }
    }

    println!();
    println!(
        "{:<15} {:<16} {:>9} {:>8} {:>16} {:>13}  transfer runs (s)",
        "scenario", "receiver", "images/s", "MB/s", "durable images/s", "peak RSS MiB"
    );
    for (s, &associations) in SCENARIOS.iter().enumerate() {
        let scenario = format!("{associations} association{}", if associations > 1 { "s" } else { "" });
        let mut rates = Vec::new();
        for (r, receiver) in Receiver::for_scenario(associations).iter().enumerate() {
            let transfer = median(runs[s][r].iter().map(|x| x.transfer).collect()).as_secs_f64();
            let durable = median(runs[s][r].iter().map(|x| x.durable).collect()).as_secs_f64();
            let peak = runs[s][r].iter().filter_map(|x| x.peak_rss_mib).reduce(f64::max);
            let peak = peak.map_or("n/a (fork)".into(), |m| format!("{m:.1}"));
            let times: Vec<String> = runs[s][r].iter().map(|t| format!("{:.2}", t.transfer.as_secs_f64())).collect();
            println!(
                "{scenario:<15} {:<16} {:>9.1} {:>8.1} {:>16.1} {peak:>13}  {}",
                receiver.name(),
                n as f64 / transfer,
                bytes as f64 / 1e6 / transfer,
                n as f64 / durable,
                times.join(" ")
            );
            rates.push((receiver.name(), n as f64 / transfer, n as f64 / durable));
            let steps: Vec<Steps> = runs[s][r].iter().filter_map(|x| x.steps).collect();
            if !steps.is_empty() {
                let st = Steps::median(&steps);
                println!(
                    "{:<32} per instance (ms, its /metrics): receive {:.1} = network and file {:.1} + durable {:.1} + database {:.1}",
                    "",
                    st.receive,
                    st.receive - st.durable - st.record,
                    st.durable,
                    st.record
                );
            }
        }
        println!();
        let (_, ours, _) = rates[0];
        for &(name, theirs, theirs_durable) in rates[1..].iter().filter(|(name, ..)| name.starts_with("storescp")) {
            let ratio = ours / theirs;
            let verdict = if ratio >= TARGETS[s] { "met" } else { "NOT met" };
            println!(
                "  {associations} assoc: pneumotriage/{name:<16} {ratio:.2} (target >= {:.1}: {verdict}); \
                 against its files on disk (transfer + sync): {:.2}",
                TARGETS[s],
                ours / theirs_durable
            );
        }
        if let Some(&(_, pg, _)) = rates.iter().find(|(name, ..)| *name == Receiver::PneumotriagePg.name()) {
            let storescp = rates.iter().find(|(name, ..)| *name == Receiver::Storescp.name()).map_or(0.0, |r| r.1);
            println!(
                "  {associations} assoc: PostgreSQL / SQLite {:.2}; pneumotriage pg/storescp {:.2}",
                pg / ours,
                pg / storescp
            );
        }
        if let Some(&(_, s3, _)) = rates.iter().find(|(name, ..)| *name == Receiver::PneumotriageS3.name()) {
            println!("  {associations} assoc: object-store spool / local spool {:.2}", s3 / ours);
        }
        if let Some(&(_, audited, _)) = rates.iter().find(|(name, ..)| *name == Receiver::PneumotriageAudited.name()) {
            println!("  {associations} assoc: auditing on / off {:.2}", audited / ours);
        }
        if let Some(&(_, stow, _)) = rates.iter().find(|(name, ..)| *name == Receiver::PneumotriageStow.name()) {
            println!("  {associations} assoc: STOW-RS / C-STORE {:.2}", stow / ours);
        }
    }
    Ok(())
}
