//! The `pneumotriage` command line: serve, check-config, migrate, studies, instances.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pneumotriage::config::Config;
use pneumotriage::dicom::scp::Scp;
use pneumotriage::ingest::Ingest;
use pneumotriage::spool::Spool;
use pneumotriage::store::{format_ms, Store};
use tracing::{info, warn};

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
    /// Analyse DICOM files offline (no network, no database): a line per file, and with --out a
    /// JSON result per file.
    Infer {
        #[command(flatten)]
        config: ConfigArg,
        /// Write `<file name>.json` per file here.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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

fn load(arg: &ConfigArg) -> Result<Config, pneumotriage::config::ConfigError> {
    match &arg.config {
        Some(path) => Config::load(path),
        None => Config::embedded_default(),
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let config_arg = match &command {
        Command::Serve(c) | Command::CheckConfig(c) | Command::Migrate(c) => c,
        Command::Studies { config, .. } | Command::Instances { config, .. } | Command::Infer { config, .. } => config,
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
            println!("{}: OK", config.source);
            println!("{}", config.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(_) => serve(config).await.map(|_| ExitCode::SUCCESS),
        Command::Infer { out, files, .. } => tokio::task::block_in_place(|| infer(&config, out.as_deref(), &files)),
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
    use pneumotriage::inference::analyze::{not_applicable, Analyzer};
    let mut analyzer = Analyzer::open(config).with_context(|| format!("inference in {}", config.source))?;
    println!("models: {}", analyzer.manifest.notice);
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut failed = 0;
    for file in files {
        let name = file.display();
        let obj = match dicom_object::open_file(file) {
            Ok(obj) => obj,
            Err(e) => {
                println!("{name}: failed: cannot read it as DICOM: {e}");
                failed += 1;
                continue;
            }
        };
        let result = match not_applicable(&obj) {
            Some(reason) => {
                println!("{name}: skipped: {reason}");
                serde_json::json!({ "file": file, "skipped": reason })
            }
            None => match analyzer.analyze(&obj) {
                Ok(a) => {
                    let area = a.mask_area_mm2.map(|mm2| format!(" ({mm2:.0} mm²)")).unwrap_or_default();
                    let t = &a.timings;
                    println!(
                        "{name}: {:?} p={:.3}, mask {} px{area}; decode {:.0} ms, preprocess {:.0} ms, inference {:.0} ms, post {:.0} ms",
                        a.decision, a.probability, a.mask_area_px, t.decode_ms, t.preprocess_ms, t.inference_ms, t.postprocess_ms
                    );
                    serde_json::json!({ "file": file, "result": a, "notice": analyzer.manifest.notice })
                }
                Err(e) => {
                    println!("{name}: failed: {e}");
                    failed += 1;
                    serde_json::json!({ "file": file, "failed": e.to_string() })
                }
            },
        };
        if let Some(dir) = out {
            let stem = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
            std::fs::write(dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&result)?)?;
        }
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Connects to the configured database and brings its schema up to date.
async fn connect(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url(), config.database.max_connections, &config.node_name())
        .await
        .with_context(|| format!("database.url in {}", config.source))?;
    store.migrate().await?;
    Ok(store)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    info!(version = env!("CARGO_PKG_VERSION"), config = %config.source, "starting: {}", config.summary());
    let spool_dir = config.spool_dir();
    let (spool, removed) = Spool::open(&spool_dir, config.node.min_free_disk_mb * 1024 * 1024)
        .with_context(|| format!("opening the spool {} (node.data_dir in {})", spool_dir.display(), config.source))?;
    if removed > 0 {
        info!(removed, "removed incomplete temporary files (never acknowledged)");
    }
    let store = connect(&config).await?;
    let ingest = Arc::new(Ingest::new(Arc::new(spool), store.clone()));
    let recovery = ingest.recover(&config.dicom).await.context("start-up recovery")?;
    if recovery.registered > 0 || recovery.requeued_jobs > 0 || recovery.unreadable > 0 {
        warn!(
            registered = recovery.registered,
            unreadable = recovery.unreadable,
            requeued_jobs = recovery.requeued_jobs,
            "recovered from an unclean stop"
        );
    }
    let listener = tokio::net::TcpListener::bind(config.dicom.bind)
        .await
        .with_context(|| format!("cannot listen on dicom.bind = {} ({})", config.dicom.bind, config.source))?;
    info!(ae_title = %config.dicom.ae_title, bind = %listener.local_addr()?, "DICOM listener ready");
    let scp = Scp::new(config.dicom.clone(), ingest);
    scp.serve(listener, shutdown_signal()).await;
    info!("stopping");
    store.close().await;
    Ok(())
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
