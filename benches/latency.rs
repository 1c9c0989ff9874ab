//! End-to-end latency: from the start of an image's C-STORE to the node to its SEG stored at the
//! destination, on CPU with the demo models (docs/benchmarks.md, "End-to-end latency").
//!
//! Method: the node (release build, SQLite, the embedded defaults, as many inference workers as
//! it chooses) analyses synthetic 1024x1024 radiographs from models/training's generator with
//! `classifier_threshold = 0` so that every image goes through both models (the cascade's worst
//! case) and, with `mask_threshold = 0.01`, nearly every one yields a SEG (those whose mask is
//! empty anyway are counted apart: their SR marks the end), and delivers SEG and SR to dcmtk's
//! `storescp --fork` over up to 4 associations at once (a PACS takes several; `storescp` without
//! `--fork` takes one at a time and capped the deliveries at about 22 objects/s). The sender is the node's
//! own storage SCU, one association per image as most modalities do; the start of each C-STORE
//! is taken just before it connects, the SEG's arrival is the modification time of the file
//! storescp wrote (same clock). Scenarios: at idle (one image, then wait for its SEG, N times);
//! a stream of 100 images sent back to back (a PACS pushing a backlog: the last waits for the 99
//! before it, so this measures throughput); and a stream of 100 images one every 150 ms (about
//! 400 images a minute, several busy modalities at once).
//!
//! The node also sends an HL7 ORU^R01 per study (each synthetic image is its own study) to
//! `tests/tools/mllp_receiver.py`, and each scenario reports the messages' latency from the
//! result's commit (the message row's `created_at`, written in that transaction) to the ACK (the
//! receiver writes the message to a file, then answers: the file's modification time).
//!
//! Run: `cargo bench --bench latency`. Environment: `LATENCY_BENCH_IDLE` (default 20 images),
//! `LATENCY_BENCH_STREAM` (default 100), `LATENCY_BENCH_WORKERS` (inference workers; unset,
//! as many as the node chooses, which the bench reads from its log), `LATENCY_BENCH_THREADS` and `LATENCY_BENCH_BATCH` (`inference.threads` and
//! `inference.batch_size`, the node's defaults when unset), `LATENCY_BENCH_MODELS` (a model
//! manifest, e.g. an int8 variant; the demo models by default), `LATENCY_BENCH_INTERVAL_MS` (the paced stream's interval, default 150),
//! `PNEUMOTRIAGE_PYTHON` (default the repository's `.venv/bin/python` if there is one, else
//! `python3`). The images are cached in `target/bench-data/latency-<n>/`. It prints figures and
//! asserts nothing about speed.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use dicom_dictionary_std::tags;
use pneumotriage::dicom::scu::{self, StoreScp};

mod support;
use support::{free_port, spawn_listening, wait_listening, Kids, Mode};

// The tests' rule for which Python runs the tools (PNEUMOTRIAGE_PYTHON, else .venv, else python3).
#[path = "../tests/it/common/python.rs"]
mod python;
use python::python;

const PNEUMOTRIAGE: &str = env!("CARGO_BIN_EXE_pneumotriage");
const STORESCP: &str = "/usr/bin/storescp";

/// A node delivering to a storescp, in a temporary directory.
struct Rig {
    _kids: Kids,
    node_port: u16,
    inbox: PathBuf,
    /// Where the MLLP receiver writes the messages, `<n>.hl7`.
    messages: PathBuf,
    config: PathBuf,
    dir: tempfile::TempDir,
}

/// `inference.threads` and `inference.batch_size` from `LATENCY_BENCH_THREADS` and
/// `LATENCY_BENCH_BATCH`, when set (else the node's defaults), as TOML lines.
fn tuning() -> String {
    [("threads", "LATENCY_BENCH_THREADS"), ("batch_size", "LATENCY_BENCH_BATCH")]
        .iter()
        .filter_map(|(key, var)| std::env::var(var).ok().map(|v| format!("{key} = {v}\n")))
        .collect()
}

impl Rig {
    /// The node with `workers` inference workers, or as many as it chooses itself; and how many.
    fn start(workers: Option<usize>) -> Result<(Rig, usize)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::Builder::new().prefix("latency-bench-").tempdir()?;
        let inbox = dir.path().join("pacs");
        fs::create_dir(&inbox)?;
        let (node_port, pacs_port) = (free_port()?, free_port()?);
        let pacs_log = dir.path().join("storescp.log");
        let pacs = spawn_listening(
            Command::new(STORESCP).args(["--fork", "-aet", "PACS", "-od"]).arg(&inbox).arg(pacs_port.to_string()),
            pacs_port,
            "storescp",
            &pacs_log,
        )?;
        let messages = dir.path().join("ris");
        let (ris, ris_port) = mllp_receiver(&messages)?;
        let config = dir.path().join("pneumotriage.toml");
        let tuning = tuning();
        fs::write(
            &config,
            format!(
                "[node]\ndata_dir = {:?}\nmin_free_disk_mb = 100\n[dicom]\nbind = \"127.0.0.1:{node_port}\"\n\
                 accept_any = true\n[http]\nenabled = false\n[inference]\nmodels = {:?}\n{}{tuning}classifier_threshold = 0.0\n\
                 mask_threshold = 0.01\nmin_mask_area_px = 0\n[[destinations]]\nname = \"pacs\"\n\
                 ae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\nmax_associations = 4\n\
                 [[destinations]]\nname = \"ris\"\nkind = \"hl7\"\nhost = \"127.0.0.1\"\nport = {ris_port}\nsettle_secs = 0\n",
                dir.path().join("var").display().to_string(),
                std::env::var("LATENCY_BENCH_MODELS")
                    .unwrap_or_else(|_| root.join("models/manifest.toml").display().to_string()),
                workers.map(|n| format!("workers = {n}\n")).unwrap_or_default(),
            ),
        )?;
        let node_log = dir.path().join("node.log");
        let mut node = Command::new(PNEUMOTRIAGE)
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(root)
            // and the line that says how many workers were started
            .env("RUST_LOG", "warn,pneumotriage::cli::serve=info")
            .stdout(fs::File::create(&node_log)?)
            .stderr(fs::File::create(dir.path().join("node.err"))?)
            .spawn()
            .context("starting the node")?;
        wait_listening(node_port, &mut node, "the node", &dir.path().join("node.err"))?;
        let log = fs::read_to_string(&node_log)? + &fs::read_to_string(dir.path().join("node.err"))?;
        let started = log
            .lines()
            .filter(|l| l.contains("models loaded"))
            .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("workers=")?.parse().ok()))
            .with_context(|| format!("the node's log says nothing of its workers:\n{log}"))?;
        Ok((Rig { _kids: Kids(vec![node, pacs, ris]), node_port, inbox, messages, config, dir }, started))
    }

    /// Where the worker's time per image went, over the results committed since `since`: the
    /// gap between consecutive commits (in a saturated stream, the cost of one image) and, of
    /// it, the analysis' own stages as recorded with each result; the rest is making and writing
    /// the objects, the commit, and what the other tasks (receiving, delivering) take from the
    /// two cores.
    fn breakdown(&self, since: SystemTime, workers: usize) -> Result<String> {
        let since_ms = since.duration_since(SystemTime::UNIX_EPOCH)?.as_millis() as i64;
        let url = format!("sqlite://{}", self.dir.path().join("var/pneumotriage.db").display());
        let rows: Vec<(f64, f64, f64, f64, i64)> = tokio::runtime::Runtime::new()?.block_on(async {
            let store = pneumotriage::store::Store::connect(&url, 1, "bench").await?;
            let rows = sqlx::query_as(
                "SELECT decode_ms, preprocess_ms, inference_ms, postprocess_ms, created_at FROM results \
                 WHERE created_at >= $1 ORDER BY created_at",
            )
            .bind(since_ms)
            .fetch_all(store.pool())
            .await;
            store.close().await;
            anyhow::Ok(rows?)
        })?;
        ensure!(rows.len() >= 2, "{} results since the stream began", rows.len());
        let n = rows.len() as f64;
        let mean = |f: fn(&(f64, f64, f64, f64, i64)) -> f64| rows.iter().map(f).sum::<f64>() / n;
        let (decode, preprocess, inference, postprocess) = (mean(|r| r.0), mean(|r| r.1), mean(|r| r.2), mean(|r| r.3));
        let per_image = (rows[rows.len() - 1].4 - rows[0].4) as f64 / (n - 1.0);
        let (first, last) =
            ((rows[0].4 - since_ms) as f64 / 1000.0, (rows[rows.len() - 1].4 - since_ms) as f64 / 1000.0);
        let stages = format!(
            "results committed from {first:.1} s to {last:.1} s after the first C-STORE; per image \
             {per_image:.1} ms between commits: decode {decode:.1}, preprocess {preprocess:.1}, \
             inference {inference:.1}, postprocess {postprocess:.1}"
        );
        if workers > 1 {
            // each worker's stages overlap the others': their sum is no part of one gap
            return Ok(format!("{stages} (each of {workers} workers' own times, which overlap)"));
        }
        let outside = per_image - decode - preprocess - inference - postprocess;
        Ok(format!(
            "{stages}; outside the analysis {outside:.1} ms (making and writing the objects, the commit, \
             receiving and delivering on the same cores)"
        ))
    }

    /// From each result's commit to the receiver's ACK, for the messages about `studies`;
    /// waits until all have been acknowledged.
    fn message_latencies(&self, studies: &[String], timeout: Duration) -> Result<Vec<Duration>> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = Command::new(PNEUMOTRIAGE)
                .args(["deliveries", "--json", "--limit", "100000", "--config"])
                .arg(&self.config)
                .output()?;
            ensure!(out.status.success(), "deliveries: {}", String::from_utf8_lossy(&out.stderr));
            let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            // study -> (control ID, commit time)
            let made: HashMap<String, (String, i64)> = listed["messages"]
                .as_array()
                .context("no messages in `deliveries --json`")?
                .iter()
                .filter_map(|m| {
                    let id = m["control_id"].as_str()?.to_string();
                    Some((m["study_instance_uid"].as_str()?.to_string(), (id, m["created_at"].as_i64()?)))
                })
                .collect();
            let mut acked = HashMap::new();
            for entry in fs::read_dir(&self.messages)? {
                let entry = entry?;
                if entry.path().extension().is_some_and(|e| e == "hl7") {
                    let text = fs::read_to_string(entry.path())?;
                    let id = text.split('\r').next().and_then(|msh| msh.split('|').nth(9)).unwrap_or_default();
                    acked.insert(id.to_string(), entry.metadata()?.modified()?);
                }
            }
            let latencies: Vec<Duration> = studies
                .iter()
                .filter_map(|study| {
                    let (id, committed) = made.get(study)?;
                    let committed = SystemTime::UNIX_EPOCH + Duration::from_millis(*committed as u64);
                    Some(acked.get(id)?.duration_since(committed).unwrap_or_default())
                })
                .collect();
            if latencies.len() == studies.len() {
                return Ok(latencies);
            }
            ensure!(Instant::now() < deadline, "the RIS acknowledged {} of {} studies", latencies.len(), studies.len());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn peer(&self) -> StoreScp {
        StoreScp {
            host: "127.0.0.1".into(),
            port: self.node_port,
            called_ae_title: "PNEUMOTRIAGE".into(),
            calling_ae_title: "MODALITY".into(),
            timeout: Duration::from_secs(60),
            tls: None,
        }
    }

    /// What has arrived so far, by source SOP Instance UID: when its SEG's file was written
    /// (`segs`), and that its SR is there (`reports`).
    fn arrived(&self) -> Result<(HashMap<String, SystemTime>, HashMap<String, SystemTime>)> {
        let (mut segs, mut reports) = (HashMap::new(), HashMap::new());
        for entry in fs::read_dir(&self.inbox)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let (into, path): (&mut HashMap<_, _>, &[_]) = if name.starts_with("SG.") {
                (&mut segs, &[tags::SOURCE_IMAGE_SEQUENCE])
            } else if name.starts_with("SR") {
                (
                    &mut reports,
                    &[
                        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
                        tags::REFERENCED_SERIES_SEQUENCE,
                        tags::REFERENCED_SOP_SEQUENCE,
                    ],
                )
            } else {
                continue;
            };
            let written = entry.metadata()?.modified()?;
            let Ok(obj) = dicom_object::open_file(entry.path()) else { continue }; // still being written
            for source in referenced_uids(&obj, path) {
                into.insert(source, written);
            }
        }
        Ok((segs, reports))
    }

    /// Waits until the SRs of all `sources` have arrived (every analysed image has one; a SEG only
    /// one with a non-empty mask); the SEGs' latencies from `started`, and how many had none.
    fn wait_segs(&self, started: &HashMap<String, SystemTime>, timeout: Duration) -> Result<(Vec<Duration>, usize)> {
        let deadline = Instant::now() + timeout;
        loop {
            let (segs, reports) = self.arrived()?;
            if started.keys().all(|uid| reports.contains_key(uid)) {
                // the SEG and the SR of an image go at once, on two associations
                std::thread::sleep(Duration::from_millis(200));
                let (segs, _) = self.arrived()?;
                let latencies: Vec<Duration> = started
                    .iter()
                    .filter_map(|(uid, t0)| segs.get(uid).map(|t| t.duration_since(*t0).unwrap_or_default()))
                    .collect();
                return Ok((latencies.clone(), started.len() - latencies.len()));
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(self.dir.path().join("node.err")).unwrap_or_default();
                let names: Vec<String> = fs::read_dir(&self.inbox)?
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                bail!(
                    "{} SEGs, {} SRs of {} after {timeout:?}; the destination has {names:?}; the node's log:\n{log}",
                    segs.len(),
                    reports.len(),
                    started.len()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Every Referenced SOP Instance UID in the items of the sequences along `path` (an SR's
/// evidence names the source and the SEG, in their series).
fn referenced_uids(obj: &dicom_object::InMemDicomObject, path: &[dicom_core::Tag]) -> Vec<String> {
    let Some((tag, rest)) = path.split_first() else {
        let uid =
            obj.element(tags::REFERENCED_SOP_INSTANCE_UID).ok().and_then(|e| e.to_str().ok().map(|s| s.into_owned()));
        return uid.map(|u| u.trim_end_matches('\0').to_string()).into_iter().collect();
    };
    let items = obj.element(*tag).ok().and_then(|e| e.items().map(|i| i.to_vec())).unwrap_or_default();
    items.iter().flat_map(|item| referenced_uids(item, rest)).collect()
}

/// tests/tools/mllp_receiver.py writing under `out`, answering AA; the process and its port.
fn mllp_receiver(out: &Path) -> Result<(Child, u16)> {
    use std::io::BufRead;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python())
        .arg(root.join("tests/tools/mllp_receiver.py"))
        .args(["--port", "0", "--out"])
        .arg(out)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting mllp_receiver.py")?;
    let mut lines = std::io::BufReader::new(child.stdout.take().context("piped")?).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    let port = first.strip_prefix("listening on ").and_then(|p| p.trim().parse().ok());
    let port = port.with_context(|| format!("mllp_receiver.py said {first:?}"))?;
    // it prints a line per message: keep its pipe drained
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, port))
}

/// The Study Instance UID of `file`.
fn study_of(file: &Path) -> Result<String> {
    let obj = dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(file)?;
    Ok(obj.element(tags::STUDY_INSTANCE_UID)?.to_str()?.trim_end_matches('\0').to_string())
}

/// Sends one file to the node; when its C-STORE started.
fn send(peer: &StoreScp, file: &(PathBuf, String, String)) -> Result<SystemTime> {
    let started = SystemTime::now();
    scu::store_file(peer, &file.0, &file.1, &file.2).map_err(|e| anyhow::anyhow!("{}: {e}", file.0.display()))?;
    Ok(started)
}

/// `n` synthetic radiographs (cached), with their SOP Class and Instance UIDs.
fn dataset(n: usize) -> Result<Vec<(PathBuf, String, String)>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(format!("target/bench-data/latency-{n}"));
    if !dir.is_dir() {
        let partial = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&partial);
        let python = python();
        eprintln!("generating {n} synthetic radiographs into {} ...", dir.display());
        let status = Command::new(&python)
            .args(["-m", "pneumotriage_models.generate"])
            .arg(&partial)
            .arg(n.to_string())
            .args(["--seed", "2026", "--jobs", "2"])
            .env("PYTHONPATH", root.join("models/training/src"))
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {python}"))?;
        ensure!(status.success(), "the generator failed ({status})");
        fs::rename(&partial, &dir)?;
    }
    let mut files = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "dcm") {
                let obj = dicom_object::OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(&path)?;
                let uid =
                    |tag| -> Result<String> { Ok(obj.element(tag)?.to_str()?.trim_end_matches('\0').to_string()) };
                files.push((path.clone(), uid(tags::SOP_CLASS_UID)?, uid(tags::SOP_INSTANCE_UID)?));
            }
        }
    }
    files.sort();
    ensure!(files.len() >= n, "{} holds {} images, not {n}: delete it to regenerate", dir.display(), files.len());
    files.truncate(n);
    Ok(files)
}

/// The `p`-th percentile (nearest rank) of `xs`, in milliseconds.
fn percentile(xs: &[Duration], p: f64) -> f64 {
    let mut sorted = xs.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1].as_secs_f64() * 1000.0
}

fn report(name: &str, latencies: &[Duration], without_seg: usize) {
    if latencies.is_empty() {
        println!("{name:<28} no SEG ({without_seg} images with an empty mask)");
        return;
    }
    println!(
        "{name:<28} n={:<4} p50 {:>7.0} ms   p90 {:>7.0} ms   p99 {:>7.0} ms   max {:>7.0} ms   ({without_seg} without SEG)",
        latencies.len(),
        percentile(latencies, 50.0),
        percentile(latencies, 90.0),
        percentile(latencies, 99.0),
        percentile(latencies, 100.0)
    );
}

/// The HL7 messages' latencies, result committed to ACK.
fn report_messages(scenario: &str, latencies: &[Duration]) {
    println!(
        "  HL7 ORU^R01, result committed to ACK ({scenario}): n={} p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        latencies.len(),
        percentile(latencies, 50.0),
        percentile(latencies, 99.0),
        percentile(latencies, 100.0)
    );
}

fn main() -> Result<()> {
    let mode = Mode::of_this_run("latency");
    if mode == Mode::Skip {
        return Ok(());
    }
    let idle_n = mode.env_usize("LATENCY_BENCH_IDLE", 20, 2)?;
    let stream_n = mode.env_usize("LATENCY_BENCH_STREAM", 100, 3)?;
    let workers = std::env::var("LATENCY_BENCH_WORKERS").ok().map(|w| w.parse::<usize>()).transpose()?;
    let interval = Duration::from_millis(mode.env_usize("LATENCY_BENCH_INTERVAL_MS", 150, 150)? as u64);
    let files = dataset(idle_n + 2 * stream_n)?;
    let (idle_files, streams) = files.split_at(idle_n);
    let (stream_files, paced_files) = streams.split_at(stream_n);
    let (rig, workers) = Rig::start(workers)?;
    let cores = std::thread::available_parallelism()?.get();
    println!(
        "end-to-end latency, C-STORE start to SEG stored at the destination ({cores} cores, {workers} inference \
         worker(s), demo models on CPU, every image through both models, synthetic 1024x1024 DX{})",
        match tuning().trim() {
            "" => String::new(),
            t => format!("; {}", t.replace('\n', ", ")),
        }
    );

    let peer = rig.peer();
    // one image first, not counted: the sessions' first run allocates
    let warm = HashMap::from([(idle_files[0].2.clone(), send(&peer, &idle_files[0])?)]);
    rig.wait_segs(&warm, Duration::from_secs(60))?;

    let (mut idle, mut idle_without) = (Vec::new(), 0);
    for file in &idle_files[1..] {
        let started = HashMap::from([(file.2.clone(), send(&peer, file)?)]);
        let (latencies, without) = rig.wait_segs(&started, Duration::from_secs(60))?;
        idle.extend(latencies);
        idle_without += without;
    }
    report("idle, one image at a time", &idle, idle_without);
    let studies = idle_files[1..].iter().map(|f| study_of(&f.0)).collect::<Result<Vec<_>>>()?;
    report_messages("idle", &rig.message_latencies(&studies, Duration::from_secs(60))?);

    for (files, pace) in [(stream_files, Duration::ZERO), (paced_files, interval)] {
        let burst = Instant::now();
        let burst_at = SystemTime::now();
        let mut started = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            if let Some(wait) = (pace * i as u32).checked_sub(burst.elapsed()) {
                std::thread::sleep(wait);
            }
            started.insert(file.2.clone(), send(&peer, file)?);
        }
        let sent = burst.elapsed();
        let (latencies, without) = rig.wait_segs(&started, Duration::from_secs(600))?;
        let done = burst.elapsed();
        let name = if pace.is_zero() {
            format!("stream of {stream_n}, back to back")
        } else {
            format!("stream of {stream_n}, every {} ms", pace.as_millis())
        };
        report(&name, &latencies, without);
        println!(
            "  the {stream_n} images were received in {:.1} s; their last SEG was stored {:.1} s after the first \
             C-STORE ({:.1} images/s through the cascade)",
            sent.as_secs_f64(),
            done.as_secs_f64(),
            stream_n as f64 / done.as_secs_f64()
        );
        if pace.is_zero() {
            println!("  {}", rig.breakdown(burst_at, workers)?);
        }
        let studies = files.iter().map(|f| study_of(&f.0)).collect::<Result<Vec<_>>>()?;
        report_messages(&name, &rig.message_latencies(&studies, Duration::from_secs(120))?);
    }
    Ok(())
}
