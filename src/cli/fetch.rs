//! `fetch`: pull studies from a `[[sources]]` PACS into the running node, by study, accession
//! number, or date range and modality; `--dry-run` lists what it would pull. The node must be
//! serving: the PACS sends the images to its listener (C-MOVE), which keeps and analyses them.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use pneumotriage::config::Config;
use pneumotriage::ingest::Ingest;
use pneumotriage::shutdown::Shutdown;
use pneumotriage::sources::{Planned, Pulled, Puller, Wanted};
use pneumotriage::store::Store;

use super::print_table;

/// What `fetch` was asked for.
pub struct Request {
    pub source: Option<String>,
    pub wanted: Wanted,
    pub dry_run: bool,
}

/// A date as the command takes it (`2026-12-01` or `20261201`), as a DICOM DA.
pub fn parse_date(text: &str) -> Result<String, String> {
    let digits: String = text.chars().filter(|c| *c != '-').collect();
    let valid = digits.len() == 8
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (1..=12).contains(&digits[4..6].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&digits[6..8].parse::<u32>().unwrap_or(0));
    if valid {
        Ok(digits)
    } else {
        Err(format!("`{text}` is not a date (YYYY-MM-DD)"))
    }
}

pub async fn fetch(config: &Config, store: Store, request: Request) -> anyhow::Result<ExitCode> {
    let source = match (&request.source, config.sources.as_slice()) {
        (None, []) => bail!("{} has no [[sources]]: add the PACS to pull from", config.source),
        (None, [only]) => only,
        (None, _) => bail!("{} has several [[sources]]: name one with --source", config.source),
        (Some(name), all) => all
            .iter()
            .find(|s| &s.name == name)
            .with_context(|| format!("no source named `{name}` in {}", config.source))?,
    };
    let puller = Puller::new(config, source, store.clone(), ingest(config, store).await?)?;
    if !request.dry_run && puller.moves_to_listener() {
        listening(config).await?;
    }
    let plan = puller.plan(&request.wanted).await.with_context(|| format!("querying source `{}`", source.name))?;
    let row = |p: &Planned, what: String| {
        vec![
            p.study.study_instance_uid.clone(),
            p.study.study_date.clone(),
            p.study.modalities.join("\\"),
            p.at_source().map_or_else(|| "?".into(), |n| n.to_string()),
            p.held().to_string(),
            what,
        ]
    };
    let headers = ["STUDY", "DATE", "MODALITIES", "AT SOURCE", "HELD", "ACTION"];
    if request.dry_run {
        let nothing = format!("no {} series", source.modalities.join("/"));
        let rows = plan.iter().map(|p| match () {
            _ if p.series.is_empty() => row(p, nothing.clone()),
            _ if p.complete() => row(p, "held".into()),
            _ => row(p, "would pull".into()),
        });
        print_table(&headers, rows);
        return Ok(ExitCode::SUCCESS);
    }
    let shutdown = Shutdown::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_signal.trigger();
        }
    });
    let mut rows = Vec::new();
    let mut failed = 0;
    puller
        .pull(&plan, &shutdown, |p, pulled| {
            let what = match pulled {
                Pulled::Held => "held".to_string(),
                Pulled::Nothing => "no series of the modalities".to_string(),
                Pulled::Moved(m) => format!("pulled {} images", m.completed + m.warning),
                Pulled::Failed(why) => {
                    failed += 1;
                    format!("failed: {why}")
                }
            };
            rows.push(row(p, what));
        })
        .await;
    print_table(&headers, rows.into_iter());
    if shutdown.is_triggered() {
        eprintln!("interrupted: run the same fetch again to pull the rest");
        return Ok(ExitCode::FAILURE);
    }
    if failed > 0 {
        eprintln!("{failed} studies not pulled: run the same fetch again once the cause is fixed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a DICOMweb source's images are kept: the node's spool and database, as `serve` keeps
/// them (its pipeline analyses them).
async fn ingest(config: &Config, store: Store) -> anyhow::Result<Arc<Ingest>> {
    let (spool, _) = super::spool_beside_a_node(config, true)?;
    Ok(Arc::new(Ingest::new(spool, store)))
}

/// The node's listener must answer: the source sends the studies there.
async fn listening(config: &Config) -> anyhow::Result<()> {
    let mut address = config.dicom.bind;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(()),
        _ => bail!(
            "nothing listens on {address} (dicom.bind in {}): start `pneumotriage serve` first; the source sends the studies to it",
            config.source
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_taken_with_or_without_dashes() {
        assert_eq!(parse_date("2026-12-01"), Ok("20261201".into()));
        assert_eq!(parse_date("20261201"), Ok("20261201".into()));
        assert!(parse_date("2026-13-01").is_err());
        assert!(parse_date("yesterday").is_err());
    }
}
