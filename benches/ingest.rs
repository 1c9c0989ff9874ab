//! Ingest benchmark: pneumotriage against dcmtk's `storescp`, in the same run on the same machine.
//!
//! Method (design §9): N distinct ~5 MB DX files are sent over loopback by dcmtk's `storescu`
//! (`TCP_NODELAY=1`, 128 KiB PDUs, Explicit VR Little Endian) to each receiver in turn, with one
//! association (one storescu for all files) and with four concurrent associations (four storescu,
//! a quarter of the files each). Every scenario gets a fresh receiver and data directory, and the
//! wall time runs from the start of the storescu processes to the exit of the last one.
//! pneumotriage runs with its durability rule on (fsync per instance, SQLite synchronous=FULL);
//! storescp writes files without fsync (its default), single-process for one association and
//! `--fork` for four. `sync` runs before each scenario so that one receiver's dirty pages are not
//! written back on the next one's time. Each scenario is repeated R times, alternating which
//! receiver goes first, and the median is reported. Machines are noisy (and this one may be
//! shared), so the figures that matter are the ratios pneumotriage/storescp, not absolute rates.
//! MB = 10^6 bytes; peak RSS is the server's VmHWM in MiB, the largest over the repeats (not
//! available for `storescp --fork`, whose per-association children are gone by then).
//!
//! Run: `cargo bench --bench ingest`. Environment: `INGEST_BENCH_N` (files, default 120),
//! `INGEST_BENCH_REPEAT` (default 3), `PNEUMOTRIAGE_PYTHON` (default `python3`, needs pydicom and
//! numpy). Needs dcmtk in /usr/bin. The files are cached in `target/bench-data/dx5mb-N/`.
//! It prints figures and asserts nothing about speed; it fails only when a transfer fails.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

// Absolute paths: a Python virtual environment's pynetdicom may shadow the names.
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
    Storescp,
}

impl Receiver {
    fn name(self) -> &'static str {
        match self {
            Receiver::Pneumotriage => "pneumotriage",
            Receiver::Storescp => "storescp",
        }
    }
}

/// Child processes, killed and reaped when dropped (also on errors), so that none outlives the run.
struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A receiver listening on a free loopback port, with its own temporary directory.
struct Server {
    kids: Kids, // declared first: the process is killed before its directory is removed
    kind: Receiver,
    port: u16,
    config: PathBuf,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(kind: Receiver, associations: usize) -> Result<Server> {
        let dir = tempfile::Builder::new().prefix("ingest-bench-").tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.path().join("pneumotriage.toml");
        let log = fs::File::create(dir.path().join("server.log"))?;
        let mut cmd = match kind {
            Receiver::Pneumotriage => {
                let data_dir = dir.path().join("var").display().to_string();
                fs::write(
                    &config,
                    format!(
                        "[node]\ndata_dir = {data_dir:?}\nmin_free_disk_mb = 100\n\n[dicom]\n\
                         bind = \"127.0.0.1:{port}\"\naccept_any = true\nmax_pdu = {PDU}\nmax_associations = 16\n"
                    ),
                )?;
                let mut cmd = Command::new(PNEUMOTRIAGE);
                cmd.arg("serve").arg("--config").arg(&config).env_remove("RUST_LOG").env("NO_COLOR", "1");
                cmd
            }
            Receiver::Storescp => {
                fs::create_dir(dir.path().join("out"))?;
                let mut cmd = Command::new(STORESCP);
                if associations > 1 {
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
        let mut server = Server { kids: Kids(vec![child]), kind, port, config, dir };
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
            Receiver::Storescp => fs::read_dir(self.dir.path().join("out"))?.count(),
            Receiver::Pneumotriage => {
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

/// One scenario on a fresh receiver: (wall time, peak RSS in MiB where known).
fn run_once(kind: Receiver, associations: usize, files: &[PathBuf]) -> Result<(Duration, Option<f64>)> {
    Command::new("sync").status()?;
    let mut server = Server::start(kind, associations)?;
    let elapsed = send(server.port, files, associations)
        .with_context(|| format!("sending to {}; its log:\n{}", kind.name(), server.log()))?;
    let forked = kind == Receiver::Storescp && associations > 1;
    let rss = if forked { None } else { Some(server.peak_rss_mib()?) };
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
    Ok((elapsed, rss))
}

/// The N test files, generated once into target/bench-data/dx5mb-N/.
fn dataset(n: usize) -> Result<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(format!("target/bench-data/dx5mb-{n}"));
    if !dir.is_dir() {
        let partial = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&partial);
        let python = std::env::var("PNEUMOTRIAGE_PYTHON").unwrap_or_else(|_| "python3".into());
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

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().ok().filter(|&n| n > 0).with_context(|| format!("{name}={v} is not a positive integer")),
        Err(_) => Ok(default),
    }
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
    let n = env_usize("INGEST_BENCH_N", 120)?;
    let repeat = env_usize("INGEST_BENCH_REPEAT", 3)?;
    let files = dataset(n)?;
    let bytes: u64 = files.iter().map(|f| fs::metadata(f).map(|m| m.len())).sum::<std::io::Result<u64>>()?;
    let cores = std::thread::available_parallelism()?.get();
    println!(
        "ingest: {n} files, {:.1} MB ({:.2} MB each), {cores} cores, {repeat} repeats, loopback, PDU {PDU}",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / n as f64
    );

    // times[scenario][receiver] and the largest RSS seen.
    let receivers = [Receiver::Pneumotriage, Receiver::Storescp];
    let mut times = vec![vec![Vec::new(); 2]; SCENARIOS.len()];
    let mut rss: Vec<Vec<Option<f64>>> = vec![vec![None; 2]; SCENARIOS.len()];
    for rep in 0..repeat {
        for (s, &associations) in SCENARIOS.iter().enumerate() {
            let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            for r in order {
                let (elapsed, peak) = run_once(receivers[r], associations, &files)?;
                eprintln!(
                    "  run {}/{repeat}: {associations} assoc, {:<12} {:.2} s",
                    rep + 1,
                    receivers[r].name(),
                    elapsed.as_secs_f64()
                );
                times[s][r].push(elapsed);
                rss[s][r] = match (peak, rss[s][r]) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }

    println!();
    println!("{:<15} {:<13} {:>9} {:>8} {:>13}  runs (s)", "scenario", "receiver", "images/s", "MB/s", "peak RSS MiB");
    let mut rates = vec![[0.0; 2]; SCENARIOS.len()];
    for (s, &associations) in SCENARIOS.iter().enumerate() {
        let scenario = format!("{associations} association{}", if associations > 1 { "s" } else { "" });
        for (r, receiver) in receivers.iter().enumerate() {
            let secs = median(times[s][r].clone()).as_secs_f64();
            rates[s][r] = n as f64 / secs;
            let peak = rss[s][r].map_or("n/a (fork)".into(), |m| format!("{m:.1}"));
            let runs: Vec<String> = times[s][r].iter().map(|t| format!("{:.2}", t.as_secs_f64())).collect();
            println!(
                "{scenario:<15} {:<13} {:>9.1} {:>8.1} {peak:>13}  {}",
                receiver.name(),
                rates[s][r],
                bytes as f64 / 1e6 / secs,
                runs.join(" ")
            );
        }
    }
    println!();
    for (s, &associations) in SCENARIOS.iter().enumerate() {
        let ratio = rates[s][0] / rates[s][1];
        let verdict = if ratio >= TARGETS[s] { "met" } else { "NOT met" };
        println!(
            "ratio pneumotriage/storescp images/s, {associations} assoc: {ratio:.2}  (target >= {:.1}: {verdict})",
            TARGETS[s]
        );
    }
    Ok(())
}
