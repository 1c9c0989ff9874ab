//! The `pneumotriage` command line: serve, check-config, migrate, studies, instances.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pneumotriage::config::Config;
use pneumotriage::delivery::Outbox;
use pneumotriage::dicom::scp::Scp;
use pneumotriage::http::{AppState, Readiness};
use pneumotriage::inference::analyze::{AnalyzeError, Analyzer};
use pneumotriage::ingest::Ingest;
use pneumotriage::pipeline::{Limits, Pipeline};
use pneumotriage::results::{make_objects, overlay, OutputSettings};
use pneumotriage::spool::Spool;
use pneumotriage::store::{format_ms, Store};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(name = "pneumotriage", version, about = "DICOM node that triages chest radiographs for pneumothorax")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The configuration file; the embedded default (config/pneumotriage.toml) when omitted.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: the DICOM listener and the database.
    Serve(ConfigArg),
    /// Check a configuration file: list its problems, or summarise it.
    CheckConfig(ConfigArg),
    /// Create or update the database schema, then exit.
    Migrate(ConfigArg),
    /// List received studies, most recent first.
    Studies {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Analyse DICOM files offline (no network, no database): a line per file, and with --out
    /// per file a JSON result, the model's input as a PNG and the image with the mask outline.
    Infer {
        #[command(flatten)]
        config: ConfigArg,
        /// Write `<file name>.json`, `.input.png`, `.overlay.png`, `.sr.dcm` and, for positives,
        /// `.seg.dcm` and the secondary capture `.overlay.dcm` here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// DICOM files, or directories to analyse every file under.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Measure the models through the node's own analysis on a labelled set in the SIIM-ACR
    /// layout: classifier recall, precision, specificity, AUC and a threshold sweep, segmenter
    /// Dice and IoU, and the Kaggle metric.
    Evaluate {
        #[command(flatten)]
        config: ConfigArg,
        /// The DICOM files, `<ImageId>.dcm`, searched recursively.
        #[arg(long, value_name = "DIR")]
        images: PathBuf,
        /// The masks: `ImageId, EncodedPixels` rows (SIIM-ACR's train-rle.csv).
        #[arg(long, value_name = "CSV")]
        masks: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List the deliveries of results to their destinations, most recent first.
    Deliveries {
        #[command(flatten)]
        config: ConfigArg,
        /// Only those that failed permanently.
        #[arg(long)]
        failed: bool,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Send failed deliveries again: one by its ID, or all of them.
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        /// The delivery's ID (see `deliveries`).
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        id: Option<i64>,
        #[arg(long)]
        all_failed: bool,
    },
    /// Analyse a failed or quarantined image again: its job goes back in the queue.
    Requeue {
        #[command(flatten)]
        config: ConfigArg,
        /// The instance's ID (the ID column of `instances`).
        instance: i64,
    },
    /// Summarise the node's work: analysis queue, results by priority, deliveries by state.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// List received instances, most recent first.
    Instances {
        #[command(flatten)]
        config: ConfigArg,
        /// Only the instances of this Study Instance UID.
        #[arg(long)]
        study: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

fn main() -> ExitCode {
    pneumotriage::keep_freed_memory();
    let cli = Cli::parse();
    pneumotriage::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The TLS listener's acceptor (`[dicom.tls]`), its files read; an error names the key.
fn listener_tls(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    let Some(tls) = &config.dicom.tls else { return Ok(None) };
    let client_ca = tls.client_ca_file.as_ref().map(|f| config.resolve(f));
    pneumotriage::dicom::tls::server_config(
        &config.resolve(&tls.cert_file),
        &config.resolve(&tls.key_file),
        client_ca.as_deref(),
    )
    .map(|server| Some(tokio_rustls::TlsAcceptor::from(server)))
    .map_err(|e| format!("{}: dicom.tls: {e}", config.source))
}

fn load(arg: &ConfigArg) -> Result<Config, pneumotriage::config::ConfigError> {
    match &arg.config {
        Some(path) => Config::load(path),
        None => Config::embedded_default(),
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let config_arg = match &command {
        Command::Serve(c) | Command::CheckConfig(c) | Command::Migrate(c) => c,
        Command::Studies { config, .. }
        | Command::Instances { config, .. }
        | Command::Infer { config, .. }
        | Command::Evaluate { config, .. }
        | Command::Deliveries { config, .. }
        | Command::Status { config, .. }
        | Command::Retry { config, .. }
        | Command::Requeue { config, .. } => config,
    };
    let config = match load(config_arg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("configuration has {} problem(s)", e.problems.len());
            return Ok(ExitCode::from(2));
        }
    };
    match command {
        Command::CheckConfig(_) => {
            // The models and TLS files too: what `serve` would stop on.
            let mut problems = Vec::new();
            if config.inference.enabled {
                if let Err(e) = check_models(&config) {
                    problems.push(format!("{}: inference.models: {e}", config.source));
                }
            }
            problems
                .extend((0..config.destinations.len()).filter_map(|i| pneumotriage::delivery::peer(&config, i).err()));
            problems.extend(listener_tls(&config).err());
            if !problems.is_empty() {
                for problem in &problems {
                    eprintln!("{problem}");
                }
                eprintln!("configuration has {} problem(s)", problems.len());
                return Ok(ExitCode::from(2));
            }
            println!("{}: OK", config.source);
            println!("{}", config.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(_) => serve(config).await,
        Command::Infer { out, files, .. } => tokio::task::block_in_place(|| infer(&config, out.as_deref(), &files)),
        Command::Evaluate { images, masks, json, .. } => {
            tokio::task::block_in_place(|| evaluate(&config, &images, &masks, json))
        }
        Command::Migrate(_) => {
            let store = connect(&config).await?;
            println!("database schema is up to date ({})", pneumotriage::config::redact_url(&config.database_url()));
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Studies { json, limit, .. } => {
            let store = connect(&config).await?;
            let rows = store.list_studies(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(
                    &["STUDY INSTANCE UID", "PATIENT ID", "ACCESSION", "DATE", "PRIORITY", "IMAGES", "LAST RECEIVED"],
                    rows.iter().map(|r| {
                        vec![
                            r.study_instance_uid.clone(),
                            r.patient_id.clone().unwrap_or_default(),
                            r.accession_number.clone().unwrap_or_default(),
                            r.study_date.clone().unwrap_or_default(),
                            r.priority.clone().unwrap_or_else(|| "-".into()),
                            r.instance_count.to_string(),
                            format_ms(r.last_received_at),
                        ]
                    }),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliveries { failed, json, limit, .. } => {
            let store = connect(&config).await?;
            let rows = store.list_deliveries(failed, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(
                    &["ID", "DESTINATION", "OBJECT", "SOP INSTANCE UID", "STATE", "ATTEMPTS", "LAST ERROR"],
                    rows.iter().map(|r| {
                        vec![
                            r.id.to_string(),
                            r.destination.clone(),
                            r.kind.clone(),
                            r.sop_instance_uid.clone(),
                            r.state.clone(),
                            r.attempts.to_string(),
                            r.last_error.clone().unwrap_or_default(),
                        ]
                    }),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, .. } => {
            let store = connect(&config).await?;
            let counts = store.counts().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pneumotriage::http::status_json(&store).await?)?);
            } else {
                let count = |what: &str, key: &str| {
                    counts
                        .iter()
                        .find(|(w, _)| *w == what)
                        .and_then(|(_, rows)| rows.iter().find(|(k, _)| k == key))
                        .map_or(0, |(_, n)| *n)
                };
                println!(
                    "analysis queue: {} queued, {} running; {} done, {} skipped, {} failed",
                    count("jobs", "queued"),
                    count("jobs", "running"),
                    count("jobs", "done"),
                    count("jobs", "skipped"),
                    count("jobs", "failed")
                );
                println!(
                    "results: {} urgent, {} review, {} routine",
                    count("results", "urgent"),
                    count("results", "review"),
                    count("results", "routine")
                );
                println!(
                    "deliveries: {} pending, {} sending, {} delivered, {} failed{}",
                    count("deliveries", "pending"),
                    count("deliveries", "sending"),
                    count("deliveries", "delivered"),
                    count("deliveries", "failed"),
                    if count("deliveries", "failed") > 0 { " (pneumotriage deliveries --failed)" } else { "" }
                );
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { id, .. } => {
            let store = connect(&config).await?;
            let n = store.requeue_failed_deliveries(id).await?;
            match (n, id) {
                (0, Some(id)) => {
                    eprintln!("error: delivery {id} is not a failed delivery");
                    Ok(ExitCode::FAILURE)
                }
                _ => {
                    println!(
                        "{n} deliver{} re-queued; a running node sends them within seconds",
                        if n == 1 { "y" } else { "ies" }
                    );
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Requeue { instance, .. } => {
            let store = connect(&config).await?;
            if store.requeue_failed_job(instance).await? {
                println!("instance {instance} re-queued; a running node analyses it within seconds");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: instance {instance} has no failed analysis job");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Instances { json, limit, study, .. } => {
            let store = connect(&config).await?;
            let rows = store.list_instances(study.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(
                    &["ID", "SOP INSTANCE UID", "V", "MODALITY", "FROM", "BYTES", "RECEIVED", "JOB"],
                    rows.iter().map(|r| {
                        vec![
                            r.id.to_string(),
                            r.sop_instance_uid.clone(),
                            r.version.to_string(),
                            r.modality.clone().unwrap_or_default(),
                            r.calling_ae.clone(),
                            r.size_bytes.to_string(),
                            format_ms(r.received_at),
                            r.job_state.clone().unwrap_or_default(),
                        ]
                    }),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `pneumotriage infer`: every file through the cascade, a line each.
fn infer(config: &Config, out: Option<&std::path::Path>, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    use pneumotriage::inference::analyze::not_applicable;
    let mut analyzer = Analyzer::open(config).with_context(|| format!("inference in {}", config.source))?;
    analyzer.keep_views = out.is_some();
    let mut outputs = OutputSettings::of(config);
    // for inspection, the secondary capture too, whether or not the node sends it
    outputs.outputs.overlay = true;
    println!(
        "models: {} {} and {} {} on {} ({})",
        analyzer.classifier().name,
        analyzer.classifier().version,
        analyzer.segmenter().name,
        analyzer.segmenter().version,
        analyzer.execution_provider(),
        analyzer.manifest.notice
    );
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut failed = 0;
    for file in &expand_directories(files)? {
        let name = file.display();
        // checked as the pipeline checks what it receives: a file can be as hostile as a peer
        let obj = match pneumotriage::imaging::open_checked(file, config.dicom.max_dataset_bytes()) {
            Ok(obj) => obj,
            Err(e) => {
                println!("{name}: failed: {e}");
                failed += 1;
                continue;
            }
        };
        let reason = not_applicable(&obj);
        if let (None, Err(e)) = (&reason, pneumotriage::imaging::check_pixels(&obj, config.inference.max_pixels)) {
            println!("{name}: failed: {e}");
            failed += 1;
            continue;
        }
        let result = match reason {
            Some(reason) => {
                println!("{name}: skipped: {reason}");
                serde_json::json!({ "file": file, "skipped": reason })
            }
            None => match analyzer.analyze(&obj) {
                Ok(a) => {
                    let area = a
                        .mask_area_mm2
                        .filter(|_| a.mask_area_px > 0)
                        .map(|mm2| format!(" ({mm2:.0} mm²)"))
                        .unwrap_or_default();
                    let t = &a.timings;
                    println!(
                        "{name}: {:?} p={:.3}, priority {}, mask {} px{area}; decode {:.0} ms, preprocess {:.0} ms, inference {:.0} ms, post {:.0} ms",
                        a.decision, a.probability, a.priority.as_str(), a.mask_area_px, t.decode_ms, t.preprocess_ms, t.inference_ms, t.postprocess_ms
                    );
                    if let Some(dir) = out {
                        // the SEG, SR and secondary capture the node would send
                        for made in make_objects(&analyzer, &obj, &a, &outputs, "") {
                            let name = format!("{}.{}.dcm", output_stem(file), made.kind);
                            std::fs::write(dir.join(name), &made.bytes)?;
                        }
                    }
                    if let (Some(dir), Some(views)) = (out, &a.views) {
                        let stem = output_stem(file);
                        let input = overlay::grey_png(&views.model_input)?;
                        std::fs::write(dir.join(format!("{stem}.input.png")), input)?;
                        let outlined = overlay::outline_png(&views.display, a.mask.as_deref())?;
                        std::fs::write(dir.join(format!("{stem}.overlay.png")), outlined)?;
                    }
                    serde_json::json!({ "file": file, "result": a, "models": {
                        "classifier": analyzer.classifier().name, "classifier_version": analyzer.classifier().version,
                        "segmenter": analyzer.segmenter().name, "segmenter_version": analyzer.segmenter().version,
                        "execution_provider": analyzer.execution_provider() }, "notice": analyzer.manifest.notice })
                }
                Err(e) => {
                    println!("{name}: failed: {e}");
                    failed += 1;
                    serde_json::json!({ "file": file, "failed": e.to_string() })
                }
            },
        };
        if let Some(dir) = out {
            std::fs::write(dir.join(format!("{}.json", output_stem(file))), serde_json::to_string_pretty(&result)?)?;
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The files given, with each directory replaced by the files under it (recursively, sorted).
fn expand_directories(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            inside.sort();
            out.extend(expand_directories(&inside)?);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// The name `infer --out` gives a file's outputs: its own file name.
fn output_stem(file: &std::path::Path) -> String {
    file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into())
}

/// `pneumotriage evaluate`: the metrics of the models through the node's own code path.
fn evaluate(
    config: &Config,
    images: &std::path::Path,
    masks: &std::path::Path,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut analyzer = Analyzer::open(config).with_context(|| format!("inference in {}", config.source))?;
    let report = pneumotriage::evaluate::evaluate(&mut analyzer, images, masks, |done, total| {
        if done % 50 == 0 || done == total {
            eprintln!("{done}/{total} images");
        }
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let f = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
    let c = &report.classifier;
    println!("models: {}", report.notice);
    println!("{} images, {} positive", report.images, report.positives);
    if !report.missing.is_empty() {
        println!("{} labelled images without a DICOM file (first: {})", report.missing.len(), report.missing[0]);
    }
    for failure in &report.failed {
        println!("failed: {failure}");
    }
    println!(
        "classifier at {:.2}: recall {}, precision {}, specificity {}, AUC {}",
        c.threshold,
        f(c.recall),
        f(c.precision),
        f(c.specificity),
        f(report.auc)
    );
    for row in &report.threshold_sweep {
        println!(
            "  threshold {:.1}: recall {}, precision {}, specificity {}",
            row.threshold,
            f(row.recall),
            f(row.precision),
            f(row.specificity)
        );
    }
    println!("segmenter on positives: Dice {}, IoU {}", f(report.mean_dice_positives), f(report.mean_iou_positives));
    println!("cascade Kaggle metric (mean Dice, empty-empty = 1): {}", f(report.kaggle_mean_dice));
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Connects to the configured database and brings its schema up to date.
async fn connect(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url(), config.database.max_connections, &config.node_name())
        .await
        .with_context(|| format!("database.url in {}", config.source))?;
    store.migrate().await?;
    Ok(store)
}

/// Reads the manifest and checks every model file against its sha256 (without ONNX Runtime).
fn check_models(config: &Config) -> Result<(), pneumotriage::inference::manifest::ManifestError> {
    let manifest = pneumotriage::inference::Manifest::load(&config.resolve(&config.inference.models))?;
    for model in &manifest.models {
        manifest.read_verified(model)?;
    }
    Ok(())
}

/// One analyzer per inference worker, or the reason the models cannot run.
fn open_analyzers(config: &Config) -> Result<Vec<Analyzer>, AnalyzeError> {
    let analyzers = (0..config.inference.workers).map(|_| Analyzer::open(config)).collect::<Result<Vec<_>, _>>()?;
    let first = &analyzers[0];
    info!(
        classifier = %format_args!("{} {}", first.classifier().name, first.classifier().version),
        segmenter = %format_args!("{} {}", first.segmenter().name, first.segmenter().version),
        policy = ?config.inference.policy,
        device = %config.inference.device,
        execution_provider = first.execution_provider(),
        workers = analyzers.len(),
        "models loaded ({})",
        first.manifest.notice
    );
    Ok(analyzers)
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    info!(version = env!("CARGO_PKG_VERSION"), config = %config.source, "starting: {}", config.summary());
    // The models first: a node that cannot analyse should say so before it accepts images.
    let analyzers = if config.inference.enabled {
        match tokio::task::block_in_place(|| open_analyzers(&config)) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("error: cannot load the models ([inference] in {}): {e}", config.source);
                return Ok(ExitCode::from(2));
            }
        }
    } else {
        warn!("analysis is off (inference.enabled = false): images are received and kept, their jobs wait");
        None
    };
    for i in 0..config.destinations.len() {
        if let Err(e) = pneumotriage::delivery::peer(&config, i) {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let tls_acceptor = match listener_tls(&config) {
        Ok(acceptor) => acceptor,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let spool_dir = config.spool_dir();
    let (spool, removed) =
        Spool::open(&spool_dir, config.node.min_free_disk_mb * 1024 * 1024, config.dicom.max_dataset_bytes())
            .with_context(|| {
                format!("opening the spool {} (node.data_dir in {})", spool_dir.display(), config.source)
            })?;
    if removed > 0 {
        info!(removed, "removed incomplete temporary files (never acknowledged)");
    }
    let store = connect(&config).await?;
    let spool = Arc::new(spool);
    let ingest = Arc::new(Ingest::new(spool.clone(), store.clone()));
    let recovery =
        ingest.recover(&config.dicom, config.inference.quarantine_after).await.context("start-up recovery")?;
    for sop_instance_uid in &recovery.quarantined {
        error!(
            sop_instance_uid = %sop_instance_uid,
            times = config.inference.quarantine_after,
            "quarantined an image: the node stopped every time it analysed it; it is not analysed again"
        );
    }
    if recovery.registered > 0 || recovery.requeued_jobs > 0 || recovery.unreadable > 0 {
        warn!(
            registered = recovery.registered,
            unreadable = recovery.unreadable,
            requeued_jobs = recovery.requeued_jobs,
            "recovered from an unclean stop"
        );
    }
    let plain_listener = if config.dicom.tls.as_ref().is_some_and(|t| t.only) {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(config.dicom.bind)
                .await
                .with_context(|| format!("cannot listen on dicom.bind = {} ({})", config.dicom.bind, config.source))?,
        )
    };
    let tls_listener = match (&config.dicom.tls, tls_acceptor) {
        (Some(tls), Some(acceptor)) => Some((
            tokio::net::TcpListener::bind(tls.bind)
                .await
                .with_context(|| format!("cannot listen on dicom.tls.bind = {} ({})", tls.bind, config.source))?,
            acceptor,
        )),
        _ => None,
    };
    let resent = store.requeue_abandoned_deliveries().await.context("start-up recovery")?;
    if resent > 0 {
        warn!(deliveries = resent, "deliveries interrupted by the last stop will be sent again");
    }
    for (destination, n) in store.unfinished_deliveries_by_destination().await.context("start-up recovery")? {
        if !config.destinations.iter().any(|d| d.name == destination) {
            warn!(%destination, deliveries = n, "deliveries wait for a destination the configuration no longer names; they are kept and go out if it returns");
        }
    }
    // One stop signal for the DICOM listener and the HTTP server.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let on_stop = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let readiness = Arc::new(Readiness::default());
    readiness.models.store(true, Ordering::Relaxed); // loaded above, or analysis is off
    let http = if config.http.enabled {
        let http_listener = tokio::net::TcpListener::bind(config.http.bind)
            .await
            .with_context(|| format!("cannot listen on http.bind = {} ({})", config.http.bind, config.source))?;
        info!(bind = %http_listener.local_addr()?, "HTTP ready: /healthz /readyz /metrics /api/studies, worklist at /");
        let state = AppState::new(&config, store.clone(), spool.clone(), readiness.clone());
        Some(tokio::spawn(pneumotriage::http::serve(http_listener, state, on_stop())))
    } else {
        None
    };
    let limits = Limits {
        max_dataset_bytes: config.dicom.max_dataset_bytes(),
        max_pixels: config.inference.max_pixels,
        quarantine_after: config.inference.quarantine_after,
    };
    let pipeline = analyzers.map(|a| Pipeline::start(store.clone(), spool, a, OutputSettings::of(&config), limits));
    let outbox = Outbox::start(store.clone(), &config).map_err(anyhow::Error::msg)?;
    let address = |l: Option<&tokio::net::TcpListener>| l.and_then(|l| l.local_addr().ok()).map(|a| a.to_string());
    info!(
        ae_title = %config.dicom.ae_title,
        bind = address(plain_listener.as_ref()).unwrap_or_else(|| "off".into()),
        tls_bind = address(tls_listener.as_ref().map(|(l, _)| l)).unwrap_or_else(|| "off".into()),
        "DICOM listener ready"
    );
    readiness.listening.store(true, Ordering::Relaxed);
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let watchdog = start_watchdog();
    let scp = Scp::new(config.dicom.clone(), ingest);
    let signal_readiness = readiness.clone();
    let stop_on_signal = async move {
        shutdown_signal().await;
        info!("stopping: no new associations; finishing those in progress");
        signal_readiness.stopping.store(true, Ordering::Relaxed);
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
    };
    scp.serve(plain_listener, tls_listener, stop_on_signal).await;
    readiness.listening.store(false, Ordering::Relaxed);
    if let Some(pipeline) = pipeline {
        pipeline.shutdown().await;
    }
    outbox.shutdown().await;
    let _ = stop.send(true);
    if let Some(http) = http {
        match http.await {
            Ok(Err(e)) => warn!(error = %e, "the HTTP server failed"),
            Err(e) => warn!(error = %e, "the HTTP server panicked"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    store.close().await;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Tells systemd (Type=notify) where the node stands; nothing without NOTIFY_SOCKET.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// With WatchdogSec= in the unit, pings systemd at half the interval while the runtime runs.
fn start_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return None;
    }
    let every = std::time::Duration::from_micros(usec / 2);
    info!("systemd watchdog every {every:?}");
    Some(tokio::spawn(async move {
        loop {
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
            tokio::time::sleep(every).await;
        }
    }))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// Prints rows as left-aligned columns.
fn print_table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    if rows.is_empty() {
        println!("(none)");
    }
    for row in rows {
        line(row);
    }
}
