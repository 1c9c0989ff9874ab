//! What the benchmarks that run processes share.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Child processes, killed and reaped when dropped (also on errors), so that none outlives the run.
#[allow(dead_code)] // the pipeline bench starts no process of its own
pub struct Kids(pub Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// How a benchmark runs. `cargo bench` passes `--bench`: the full measurement. Run any other
/// way (`cargo test` runs the benches too, `test = true` in Cargo.toml) it is the quick mode: the
/// same code on a few inputs, so that a bench cannot rot unnoticed; figures printed in that mode
/// mean nothing. A test filter that does not name the bench skips it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Quick,
    Skip,
}

impl Mode {
    pub fn of_this_run(bench: &str) -> Mode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--bench") {
            return Mode::Full;
        }
        let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        if filters.is_empty() || filters.iter().any(|f| bench.contains(f.as_str())) {
            println!("{bench}: quick mode (a few inputs, to check that it runs; `cargo bench` measures)");
            Mode::Quick
        } else {
            Mode::Skip
        }
    }

    /// A positive integer from the environment, else `full`, or `quick` in the quick mode.
    #[allow(dead_code)] // the growth bench reads a list of sizes
    pub fn env_usize(self, name: &str, full: usize, quick: usize) -> Result<usize> {
        match std::env::var(name) {
            Ok(v) => v.parse().ok().filter(|&n| n > 0).with_context(|| format!("{name}={v} is not a positive integer")),
            Err(_) if self == Mode::Quick => Ok(quick),
            Err(_) => Ok(full),
        }
    }
}

/// A free TCP port on the loopback interface.
#[allow(dead_code)] // for the benches that start processes
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `child` (`what`, logging to `log`) listens on `port`; its log if it exits first.
#[allow(dead_code)] // for the benches that start processes
pub fn wait_listening(port: u16, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}); its log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        ensure!(Instant::now() < deadline, "{what} is not listening after 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Starts `command` (`what`), its output in `log`, and waits until it listens on `port`.
#[allow(dead_code)] // for the benches that start processes
pub fn spawn_listening(command: &mut std::process::Command, port: u16, what: &str, log: &Path) -> Result<Child> {
    let mut child = command
        .stdout(std::fs::File::create(log)?)
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    wait_listening(port, &mut child, what, log)?;
    Ok(child)
}
