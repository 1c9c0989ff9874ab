//! `prune`: a retention round now, beside a running node or without one; with `--dry-run`,
//! what it would delete and why, deleting nothing.

use std::process::ExitCode;
use std::sync::Arc;

use pneumotriage::config::Config;
use pneumotriage::ingest::Ingest;
use pneumotriage::retention::Retention;
use pneumotriage::store::{format_ms, Releasable, Store};

use super::print_table;

/// Rows listed by a dry run, per folder.
const PLAN_LIMIT: i64 = 10_000;

pub async fn prune(config: &Config, store: Store, dry_run: bool) -> anyhow::Result<ExitCode> {
    let retention = open(config, store.clone()).await?;
    if dry_run {
        let (images, outputs) = retention.plan(PLAN_LIMIT).await?;
        let now = store.now();
        let days = |t: i64| (now - t) as f64 / 86_400_000.0;
        let why_image = |r: &Releasable| match r.what.as_str() {
            "done" => format!(
                "analysed; it and its deliveries and messages ended {:.1} days ago (images_days = {})",
                days(r.ended_at),
                config.retention.images_days
            ),
            state => format!(
                "{state} {:.1} days ago (investigation_days = {})",
                days(r.ended_at),
                config.retention.investigation_days
            ),
        };
        let why_output = |r: &Releasable| {
            format!(
                "{} made {:.1} days ago, its deliveries ended {:.1} days ago (outputs_days = {})",
                r.what,
                days(r.since),
                days(r.ended_at),
                config.retention.outputs_days
            )
        };
        let rows = images
            .iter()
            .map(|r| ("image", r, why_image(r)))
            .chain(outputs.iter().map(|r| ("object", r, why_output(r))));
        print_table(
            &["WHAT", "ID", "PATH", "BYTES", "SINCE", "WHY"],
            rows.map(|(what, r, why)| {
                vec![what.into(), r.id.to_string(), r.path.clone(), r.size_bytes.to_string(), format_ms(r.since), why]
            }),
        );
        let bytes: i64 = images.iter().chain(&outputs).map(|r| r.size_bytes).sum();
        println!(
            "would delete {} images and {} objects, {} MiB (dry run: nothing deleted; patient attributes and disk pressure are left to a real round)",
            images.len(),
            outputs.len(),
            bytes >> 20
        );
        return Ok(ExitCode::SUCCESS);
    }
    let pruned = retention.prune().await?;
    let swept = retention.sweep(false).await?;
    println!(
        "deleted {} images ({} MiB) and {} objects ({} MiB); {} early for disk pressure{}; patient attributes removed from {} studies, {} events older than them; swept {} leftover files, registered {} images without rows",
        pruned.images.files,
        pruned.images.bytes >> 20,
        pruned.outputs.files,
        pruned.outputs.bytes >> 20,
        pruned.under_pressure.files,
        if pruned.nothing_left { " (free space still below retention.free_target_mb, nothing finished left)" } else { "" },
        pruned.patient_data,
        pruned.events,
        swept.released + swept.orphans_removed + swept.temporaries,
        swept.registered,
    );
    Ok(ExitCode::SUCCESS)
}

async fn open(config: &Config, store: Store) -> anyhow::Result<Retention> {
    let (spool, bucket) = super::spool_beside_a_node(config, false)?;
    let ingest = Arc::new(Ingest::new(spool.clone(), store.clone()));
    Ok(Retention::new(config, store, ingest, spool, bucket, super::analysed(config)))
}
