//! The commands: their arguments (clap), which part of the configuration each checks, and the
//! helpers they share (the database connection, tables).

mod check_config;
mod evaluate;
mod explain;
mod fetch;
mod infer;
mod preflight;
mod prune;
mod queue;
mod records;
mod reports;
mod serve;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pneumotriage::config::{Config, Uses};
use pneumotriage::dicom::conformance::{self, Service};
use pneumotriage::spool::Spool;
use pneumotriage::store::Store;

#[derive(Parser)]
#[command(name = "pneumotriage", version, about = "DICOM node that triages chest radiographs for pneumothorax")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args)]
pub struct ConfigArg {
    /// The configuration file; the embedded default (config/pneumotriage.toml) when omitted.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Say, for each file, which selection rule selected or excluded it, whether the models can
    /// take it and which input check would skip it: what the node would do with it, and why.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The calling AE title the files would come from (for rules that name one).
        #[arg(long, value_name = "AE", default_value = "")]
        calling_ae: String,
        /// DICOM files.
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
        /// The delivery's ID as `deliveries` lists it: a number for a DICOM object, `m` and a
        /// number for a message (e.g. m12).
        #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
        id: Option<queue::DeliveryId>,
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
    /// Hand the images another node kept over to this one (it was renamed, or its spool moved
    /// here), or fail their waiting analyses (it is gone with its spool).
    Handover {
        #[command(flatten)]
        config: ConfigArg,
        /// The node whose images these are (its `node.name`; see the start-up warning).
        #[arg(long, value_name = "NODE")]
        from: String,
        /// The node that takes them over; this configuration's node by default.
        #[arg(long, value_name = "NODE", conflicts_with = "fail")]
        to: Option<String>,
        /// Fail their unfinished jobs: "spool unavailable".
        #[arg(long)]
        fail: bool,
    },
    /// Delete what retention lets go now ([retention]), sweep leftover files; with --dry-run,
    /// list what would be deleted and why, deleting nothing. A running node does this itself
    /// every retention.interval_secs.
    Prune {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        dry_run: bool,
    },
    /// Summarise the node's work: analysis queue, results by priority, deliveries by state.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Compare each shadow version ([[inference.shadow]]) with production on the images both
    /// analysed: same decisions, flips each way, priority changes, probability shift, time.
    ShadowReport {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this shadow (its name); every one by default.
        #[arg(long)]
        shadow: Option<String>,
        #[command(flatten)]
        period: PeriodArgs,
        #[arg(long)]
        json: bool,
    },
    /// What radiologists' verdicts say of each classifier version: PPV, the flip rates, and
    /// sensitivity where negatives were reviewed too.
    VerdictReport {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        period: PeriodArgs,
        #[arg(long)]
        json: bool,
    },
    /// List received instances, most recent first.
    /// Pull studies from a [[sources]] PACS into the running node (C-FIND, then C-MOVE to the
    /// node's AE title), by study, accession number, or date range and modality. Studies the
    /// node holds whole are skipped; run it again to finish a pull that was cut short.
    Fetch {
        #[command(flatten)]
        config: ConfigArg,
        /// The source, by name; the only one when omitted.
        #[arg(long)]
        source: Option<String>,
        /// A Study Instance UID (repeatable).
        #[arg(long, value_name = "UID")]
        study: Vec<String>,
        #[arg(long, value_name = "NUMBER")]
        accession: Option<String>,
        /// Studies from this date on (YYYY-MM-DD).
        #[arg(long, value_name = "DATE", value_parser = fetch::parse_date)]
        since: Option<String>,
        /// Studies up to this date (YYYY-MM-DD), with --since.
        #[arg(long, value_name = "DATE", value_parser = fetch::parse_date, requires = "since")]
        until: Option<String>,
        /// With --since: a modality (repeatable); the source's `modalities` by default.
        #[arg(long, value_name = "CODE", requires = "since")]
        modality: Vec<String>,
        /// List what would be pulled, pulling nothing.
        #[arg(long)]
        dry_run: bool,
    },
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

/// The period a report covers: results analysed from `--since` to `--until`.
#[derive(clap::Args)]
pub struct PeriodArgs {
    /// From: a date (2026-11-01), a time (2026-11-01T08:00:00Z) or a time ago (30days); the
    /// first result by default.
    #[arg(long, value_parser = reports::parse_time)]
    since: Option<i64>,
    /// Until (not included), in the same forms; now by default.
    #[arg(long, value_parser = reports::parse_time)]
    until: Option<i64>,
}

impl From<PeriodArgs> for reports::Period {
    fn from(p: PeriodArgs) -> reports::Period {
        reports::Period { since: p.since, until: p.until }
    }
}

impl Command {
    fn config_arg(&self) -> &ConfigArg {
        match self {
            Command::Serve(c) | Command::CheckConfig(c) | Command::Migrate(c) => c,
            Command::Studies { config, .. }
            | Command::Instances { config, .. }
            | Command::Fetch { config, .. }
            | Command::Infer { config, .. }
            | Command::Explain { config, .. }
            | Command::Evaluate { config, .. }
            | Command::Deliveries { config, .. }
            | Command::Status { config, .. }
            | Command::Retry { config, .. }
            | Command::Requeue { config, .. }
            | Command::Handover { config, .. }
            | Command::Prune { config, .. }
            | Command::ShadowReport { config, .. }
            | Command::VerdictReport { config, .. } => config,
        }
    }

    /// The part of the configuration the command uses, and so the part whose problems stop it:
    /// an offline analysis does not need the network's settings.
    fn uses(&self) -> Uses {
        match self {
            Command::Serve(_) | Command::CheckConfig(_) | Command::Prune { .. } => Uses::Everything,
            Command::Infer { .. } | Command::Evaluate { .. } | Command::Explain { .. } => Uses::Analysis,
            Command::Fetch { .. } => Uses::Pulling,
            _ => Uses::Records,
        }
    }
}

pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let arg = command.config_arg();
    let loaded = match &arg.config {
        Some(path) => Config::load(path, command.uses()),
        None => Config::embedded_default(),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("configuration has {} problem(s)", e.problems.len());
            return Ok(ExitCode::from(2));
        }
    };
    match command {
        Command::Serve(_) => serve::serve(config).await,
        Command::CheckConfig(_) => Ok(check_config::check_config(&config)),
        Command::Infer { out, files, .. } => {
            tokio::task::block_in_place(|| infer::infer(&config, out.as_deref(), &files))
        }
        Command::Explain { calling_ae, files, .. } => {
            tokio::task::block_in_place(|| explain::explain(&config, &calling_ae, &files))
        }
        Command::Evaluate { images, masks, json, .. } => {
            tokio::task::block_in_place(|| evaluate::evaluate(&config, &images, &masks, json))
        }
        Command::Migrate(_) => {
            let store = connect(&config).await?;
            println!("database schema is up to date ({})", pneumotriage::config::redact_url(&config.database_url()));
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Studies { json, limit, .. } => records::studies(&connect(&config).await?, json, limit).await,
        Command::Instances { json, limit, study, .. } => {
            records::instances(&connect(&config).await?, study.as_deref(), json, limit).await
        }
        Command::Deliveries { failed, json, limit, .. } => {
            records::deliveries(&connect(&config).await?, failed, json, limit).await
        }
        Command::Status { json, .. } => records::status(&connect(&config).await?, json).await,
        Command::Retry { id, .. } => queue::retry(&connect(&config).await?, id).await,
        Command::Requeue { instance, .. } => queue::requeue(&connect(&config).await?, instance).await,
        Command::Handover { from, to, fail, .. } => {
            queue::handover(&connect(&config).await?, &from, to.as_deref(), fail).await
        }
        Command::Prune { dry_run, .. } => prune::prune(&config, connect(&config).await?, dry_run).await,
        Command::Fetch { source, study, accession, since, until, modality, dry_run, .. } => {
            if study.is_empty() && accession.is_none() && since.is_none() {
                anyhow::bail!("say what to fetch: --study UID, --accession NUMBER or --since DATE");
            }
            let study_date = since.map(|since| format!("{since}-{}", until.unwrap_or_default()));
            let wanted = pneumotriage::sources::Wanted {
                study_instance_uids: study,
                accession_number: accession,
                study_date,
                modalities: modality,
            };
            let request = fetch::Request { source, wanted, dry_run };
            fetch::fetch(&config, connect(&config).await?, request).await
        }
        Command::ShadowReport { shadow, period, json, .. } => {
            reports::shadow_report(&connect(&config).await?, shadow.as_deref(), period.into(), json).await
        }
        Command::VerdictReport { period, json, .. } => {
            reports::verdict_report(&connect(&config).await?, period.into(), json).await
        }
    }
}

/// Connects to the configured database and brings its schema up to date.
async fn connect(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database_url(), config.database.max_connections, &config.node_name())
        .await
        .with_context(|| match &config.database.tls {
            None => format!("database.url in {}", config.source),
            Some(_) => format!(
                "database.url and database.tls in {} (the server's certificate must be signed by database.tls.ca_file and name the URL's host)",
                config.source
            ),
        })?
        .with_auditor(pneumotriage::audit::Auditor::of(config));
    store.migrate().await?;
    Ok(store)
}

/// The node's spool for a command run beside a node that may be receiving (`prune`, `fetch`):
/// its temporary files left alone, created if `create` and there is none yet; with the object
/// store when one is configured.
fn spool_beside_a_node(
    config: &Config,
    create: bool,
) -> anyhow::Result<(std::sync::Arc<Spool>, Option<std::sync::Arc<pneumotriage::bucket::Bucket>>)> {
    let (root, node) = (config.spool_dir(), config.node_name());
    let (min_free, max_dataset) = (config.node.min_free_disk_mb * 1024 * 1024, config.dicom.max_dataset_bytes());
    let spool = match create {
        true => Spool::attach_creating(&root, &node, min_free, max_dataset),
        false => Spool::attach(&root, &node, min_free, max_dataset),
    }
    .map_err(|e| anyhow::anyhow!("the spool (node.data_dir in {}): {e}", config.source))?;
    let bucket = pneumotriage::bucket::Bucket::open(config).map_err(anyhow::Error::msg)?;
    Ok((std::sync::Arc::new(spool.with_bucket(bucket.clone())), bucket))
}

/// Whether a SOP class is analysed under this configuration (an orphan registered by recovery
/// or a sweep gets a job, or is stored only).
pub fn analysed(config: &Config) -> Box<dyn Fn(&str) -> bool + Send + Sync> {
    let dicom = config.dicom.clone();
    Box::new(move |class| conformance::service_for(class, &dicom) == Some(Service::Analysed))
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
