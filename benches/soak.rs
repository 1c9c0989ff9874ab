//! Memory over a long stream: the node's resident memory while it receives, analyses, delivers
//! and prunes for an hour (docs/benchmarks.md, "Memory over a long stream").
//!
//! Method: the node (release build, SQLite, the demo models on CPU, the defaults otherwise)
//! delivers its SEG and SR to dcmtk's `storescp --fork --ignore` and prunes with every retention
//! at 0 days, every 10 s, so that the spool holds only what is in flight and the run reaches a
//! steady state. The sender is this bench: associations of 50 C-STOREs, each image its own
//! study with fresh UIDs, made from one synthetic radiograph of models/training's generator
//! subsampled to 283x283 (a small image); one in `SOAK_BENCH_ANALYSED_EVERY` (default 20) is a
//! chest film the models analyse, the others say ABDOMEN and are recorded and skipped by the
//! selection rules, as a mixed modality's would be. Whenever more than 200 jobs wait, the sender
//! pauses, so the stream runs at what the node sustains rather than filling a queue. Every
//! `SOAK_BENCH_SAMPLE_SECS` (default 60) it reads the node's VmRSS from /proc, the images sent
//! and analysed, the jobs waiting and the files in the spool.
//!
//! Run: `cargo bench --bench soak`. Environment: `SOAK_BENCH_SECS` (default 3600),
//! `SOAK_BENCH_SAMPLE_SECS`, `SOAK_BENCH_ANALYSED_EVERY`, `PNEUMOTRIAGE_PYTHON`; the node inherits
//! the environment (e.g. `MALLOC_ARENA_MAX`, to compare allocator settings). It prints the curve
//! and the growth per image over the second half, and asserts nothing about memory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

mod support;
use support::{free_port, spawn_listening, wait_listening, Kids, Mode};

#[path = "../tests/it/common/python.rs"]
mod python;
use python::python;

#[allow(dead_code)] // the bench sends with a few of the tests' SCU helpers
#[path = "../tests/it/common/scu.rs"]
mod scu;

const PNEUMOTRIAGE: &str = env!("CARGO_BIN_EXE_pneumotriage");
const STORESCP: &str = "/usr/bin/storescp";
const DX: &str = uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION;
/// C-STOREs per association.
const PER_ASSOCIATION: usize = 50;
/// Above this many waiting jobs the sender pauses.
const MAX_WAITING: i64 = 200;

/// The node and its PACS, in a temporary directory.
struct Rig {
    kids: Kids,
    node_port: u16,
    dir: tempfile::TempDir,
}

impl Rig {
    fn start() -> Result<Rig> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::Builder::new().prefix("soak-bench-").tempdir()?;
        let (node_port, pacs_port) = (free_port()?, free_port()?);
        let pacs_log = dir.path().join("storescp.log");
        let pacs = spawn_listening(
            Command::new(STORESCP).args(["--fork", "--ignore", "-aet", "PACS"]).arg(pacs_port.to_string()),
            pacs_port,
            "storescp",
            &pacs_log,
        )?;
        let config = dir.path().join("pneumotriage.toml");
        fs::write(
            &config,
            format!(
                "[node]\ndata_dir = {:?}\nmin_free_disk_mb = 100\n[dicom]\nbind = \"127.0.0.1:{node_port}\"\n\
                 accept_any = true\n[http]\nenabled = false\n[inference]\nmodels = {:?}\n\
                 [retention]\nimages_days = 0\noutputs_days = 0\ninvestigation_days = 0\ninterval_secs = 10\n\
                 [[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {pacs_port}\n\
                 max_associations = 2\n",
                dir.path().join("var").display().to_string(),
                root.join("models/manifest.toml").display().to_string()
            ),
        )?;
        let node_err = dir.path().join("node.err");
        let mut node = Command::new(PNEUMOTRIAGE)
            .args(["serve", "--config"])
            .arg(&config)
            .current_dir(root)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&node_err)?)
            .spawn()
            .context("starting the node")?;
        wait_listening(node_port, &mut node, "the node", &node_err)?;
        Ok(Rig { kids: Kids(vec![node, pacs]), node_port, dir })
    }

    fn node_pid(&self) -> u32 {
        self.kids.0[0].id()
    }

    /// The node's resident set, MiB.
    fn rss_mib(&self) -> Result<f64> {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.node_pid())).context("the node is gone: see its log")?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")?;
        Ok(kb / 1024.0)
    }

    fn spool_files(&self) -> usize {
        fn walk(dir: &Path) -> usize {
            fs::read_dir(dir)
                .map(|entries| entries.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
                .unwrap_or(0)
        }
        walk(&self.dir.path().join("var/spool"))
    }

    fn database_url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("var/pneumotriage.db").display())
    }
}

/// The small image, as a chest film and as an abdomen: one synthetic radiograph subsampled by 4.
fn small_images() -> Result<(InMemDicomObject, InMemDicomObject)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/bench-data/soak");
    if !dir.is_dir() {
        let partial = dir.with_extension("partial");
        let _ = fs::remove_dir_all(&partial);
        let status = Command::new(python())
            .args(["-m", "pneumotriage_models.generate"])
            .arg(&partial)
            .args(["1", "--seed", "2026", "--jobs", "1"])
            .env("PYTHONPATH", root.join("models/training/src"))
            .stdout(Stdio::null())
            .status()
            .context("running the generator")?;
        ensure!(status.success(), "the generator failed ({status})");
        fs::rename(&partial, &dir)?;
    }
    let file = first_dicom(&dir)?.context("the generator wrote no image")?;
    let mut obj = dicom_object::open_file(&file)?.into_inner();
    let (rows, columns) = (usize::from(obj.get(tags::ROWS).context("Rows")?.to_int::<u16>()?), {
        usize::from(obj.get(tags::COLUMNS).context("Columns")?.to_int::<u16>()?)
    });
    let pixels = obj.get(tags::PIXEL_DATA).context("Pixel Data")?.to_bytes()?.into_owned();
    ensure!(pixels.len() == rows * columns * 2, "not 16-bit uncompressed");
    let (small_rows, small_columns) = (rows / 4, columns / 4);
    let mut small = Vec::with_capacity(small_rows * small_columns * 2);
    for r in 0..small_rows {
        for c in 0..small_columns {
            let at = (r * 4 * columns + c * 4) * 2;
            small.extend_from_slice(&pixels[at..at + 2]);
        }
    }
    obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(small_rows as u16)));
    obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(small_columns as u16)));
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(small)));
    for tag in [tags::PIXEL_SPACING, tags::IMAGER_PIXEL_SPACING] {
        if let Some(spacing) = obj.get(tag).map(|e| e.to_multi_float64()).transpose()? {
            let wider: Vec<String> = spacing.iter().map(|s| format!("{:.4}", s * 4.0)).collect();
            obj.put(DataElement::new(tag, VR::DS, PrimitiveValue::from(wider.join("\\"))));
        }
    }
    let chest = obj.clone();
    obj.put(DataElement::new(tags::BODY_PART_EXAMINED, VR::CS, PrimitiveValue::from("ABDOMEN")));
    Ok((chest, obj))
}

fn first_dicom(dir: &Path) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if let Some(found) = first_dicom(&path)? {
                return Ok(Some(found));
            }
        } else if path.extension().is_some_and(|e| e == "dcm") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The data set of `template` as a new image of a new study, in explicit VR little endian.
fn fresh(template: &InMemDicomObject, base: u128, n: u128) -> Result<(Vec<u8>, String)> {
    use dicom_encoding::TransferSyntaxIndex;
    let mut obj = template.clone();
    let uid = |k: u128| format!("2.25.{}", base.wrapping_add(n * 3 + k) % 10u128.pow(38));
    let sop = uid(0);
    obj.put(DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from(uid(1))));
    obj.put(DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(uid(2))));
    obj.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop.clone())));
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .context("explicit VR little endian")?;
    let mut bytes = Vec::new();
    obj.write_dataset_with_ts(&mut bytes, ts)?;
    Ok((bytes, sop))
}

/// One sample of the curve.
struct Sample {
    at: Duration,
    sent: usize,
    analysed: i64,
    waiting: i64,
    spool_files: usize,
    rss_mib: f64,
}

fn main() -> Result<()> {
    let mode = Mode::of_this_run("soak");
    if mode == Mode::Skip {
        return Ok(());
    }
    let duration = Duration::from_secs(mode.env_usize("SOAK_BENCH_SECS", 3600, 15)? as u64);
    let sample_every = Duration::from_secs(mode.env_usize("SOAK_BENCH_SAMPLE_SECS", 60, 3)? as u64);
    let analysed_every = mode.env_usize("SOAK_BENCH_ANALYSED_EVERY", 20, 5)?;

    let (chest, abdomen) = small_images()?;
    let rig = Rig::start()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let store = runtime.block_on(pneumotriage::store::Store::connect(&rig.database_url(), 1, "bench"))?;
    let count = |sql: &'static str| -> Result<i64> {
        let (n,): (i64,) = runtime.block_on(sqlx::query_as(sql).fetch_one(store.pool()))?;
        Ok(n)
    };
    let waiting = || count("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')");

    let started = Instant::now();
    let take_sample = |sent: usize| -> Result<Sample> {
        Ok(Sample {
            at: started.elapsed(),
            sent,
            analysed: count("SELECT COUNT(*) FROM results")?,
            waiting: waiting()?,
            spool_files: rig.spool_files(),
            rss_mib: rig.rss_mib()?,
        })
    };
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() * 1_000_000;
    let mut samples: Vec<Sample> = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut sent = 0usize;
    println!(
        "soak: {:.0} min, one image in {analysed_every} analysed, associations of {PER_ASSOCIATION}",
        duration.as_secs_f64() / 60.0
    );
    println!(
        "{:>8} {:>10} {:>9} {:>8} {:>12} {:>9}",
        "minutes", "sent", "analysed", "waiting", "spool files", "RSS MiB"
    );
    while started.elapsed() < duration {
        if started.elapsed() >= next_sample {
            let sample = take_sample(sent)?;
            println!(
                "{:>8.1} {:>10} {:>9} {:>8} {:>12} {:>9.1}",
                sample.at.as_secs_f64() / 60.0,
                sample.sent,
                sample.analysed,
                sample.waiting,
                sample.spool_files,
                sample.rss_mib
            );
            samples.push(sample);
            next_sample += sample_every;
        }
        if waiting()? > MAX_WAITING {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        let mut assoc =
            scu::associate_as(rig.node_port, "MODALITY", "PNEUMOTRIAGE", &[(DX, uids::EXPLICIT_VR_LITTLE_ENDIAN)])
                .context("associating with the node")?;
        let context = scu::context_id(&assoc, DX);
        for _ in 0..PER_ASSOCIATION {
            let template = if sent % analysed_every == 0 { &chest } else { &abdomen };
            let (data, sop) = fresh(template, base, sent as u128)?;
            let status = scu::store(&mut assoc, context, DX, &sop, &data);
            ensure!(status == 0, "C-STORE {sent} answered {status:#06x}");
            sent += 1;
        }
        assoc.release().context("releasing")?;
    }
    let end = take_sample(sent)?;
    let released =
        format!("{} images released", count("SELECT COUNT(*) FROM instances WHERE released_at IS NOT NULL")?);
    runtime.block_on(store.close());
    let mid = samples.iter().find(|s| s.at >= end.at / 2).unwrap_or(&end);
    let per_image_kb =
        if end.sent > mid.sent { (end.rss_mib - mid.rss_mib) * 1024.0 / (end.sent - mid.sent) as f64 } else { 0.0 };
    println!(
        "end at {:.1} min: {} sent ({:.0}/s), {} analysed, {} waiting, {} spool files, {released}; RSS {:.1} MiB \
         (peak of the samples {:.1}); second half: {:+.1} MiB over {} images, {per_image_kb:+.3} KB per image",
        end.at.as_secs_f64() / 60.0,
        end.sent,
        end.sent as f64 / end.at.as_secs_f64(),
        end.analysed,
        end.waiting,
        end.spool_files,
        end.rss_mib,
        samples.iter().map(|s| s.rss_mib).fold(end.rss_mib, f64::max),
        end.rss_mib - mid.rss_mib,
        end.sent - mid.sent
    );
    ensure!(end.sent > 0 && end.analysed > 0, "nothing was analysed: see {}", rig.dir.path().display());
    Ok(())
}
