//! Pulling studies from a PACS (`[[sources]]`): a study-level C-FIND per modality, then a
//! C-MOVE of each study the node does not hold whole to this node's own AE title, at most
//! `max_studies_per_minute`. The images come back over the node's own listener, so they pass
//! the same checks and the same rule as any C-STORE (durable before acknowledged, a SOP
//! Instance UID with the same bytes stored once) and are analysed like any other. A DICOMweb
//! source is asked by QIDO-RS and WADO-RS instead (`web`), its answer received in this process
//! as STOW-RS parts are. Nothing of a pull is state of its own: a pull cut short (the node
//! killed, the PACS gone) is finished by running it again, which finds the studies still
//! incomplete here.

mod web;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::config::{Config, Source};
use crate::dicom::part10::{Origin, Receiving};
use crate::dicom::qr::{self, SeriesMatch, StudyMatch, StudyQuery};
use crate::dicom::scu::{SendError, StoreScp};
use crate::domain::SourceKind;
use crate::ingest::Ingest;
use crate::outbox::http::HttpTarget;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// The most studies one query may find: a wider query is refused, to be narrowed.
pub const MAX_STUDIES: usize = 10_000;

/// The most series one study may list: more is refused as a source's error.
const MAX_SERIES: usize = 10_000;

/// What to pull: a study, an accession number, or a date range with modalities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub study_instance_uids: Vec<String>,
    pub accession_number: Option<String>,
    /// A DICOM date range (`YYYYMMDD-`, `YYYYMMDD-YYYYMMDD`).
    pub study_date: Option<String>,
    /// The source's `modalities` when empty.
    pub modalities: Vec<String>,
}

/// A study found at the source: its series of the wanted modalities (not the objects this
/// node, or another, made of it), each with how many of its instances the node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub study: StudyMatch,
    pub series: Vec<(SeriesMatch, i64)>,
}

/// Whether the node has every instance of a series the source has (when the source does not
/// say how many, any instance counts: the series arrived, by push or an earlier pull).
fn series_complete((series, held): &(SeriesMatch, i64)) -> bool {
    match series.instances {
        Some(n) => *held >= i64::from(n),
        None => *held > 0,
    }
}

impl Planned {
    /// Whether the node holds every wanted series whole (true when there is none).
    pub fn complete(&self) -> bool {
        self.series.iter().all(series_complete)
    }

    /// The instances of the wanted series at the source, when it says for each.
    pub fn at_source(&self) -> Option<u32> {
        self.series.iter().map(|(s, _)| s.instances).sum()
    }

    /// The instances of the wanted series the node holds.
    pub fn held(&self) -> i64 {
        self.series.iter().map(|(_, held)| held).sum()
    }
}

/// What became of one study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// Held whole already: not moved.
    Held,
    /// No series of the wanted modalities (only objects made of them, say).
    Nothing,
    /// Moved: the source's sub-operation counts, summed over the series.
    Moved(qr::Moved),
    Failed(String),
}

/// One source, ready to query.
pub struct Puller {
    pub source: Source,
    access: Access,
    store: Store,
}

/// How a source is asked, and where what it sends arrives.
enum Access {
    /// C-FIND, then C-MOVE to `destination`: this node's listener.
    Dimse { scp: StoreScp, destination: String },
    /// QIDO-RS, then WADO-RS, received in this process.
    Web { target: Arc<HttpTarget>, receiving: Receiving, origin: Origin },
}

impl Puller {
    /// The puller of `source`, its TLS files read; a DICOMweb source's images go to `ingest`.
    pub fn new(config: &Config, source: &Source, store: Store, ingest: Arc<Ingest>) -> anyhow::Result<Puller> {
        let files = || format!("sources `{}` in {}", source.name, config.source);
        let access = match source.kind {
            SourceKind::Dicom => {
                let tls = crate::tls::peer_client(config, source.tls.as_ref(), &source.host).with_context(files)?;
                let scp = StoreScp {
                    host: source.host.clone(),
                    port: source.port,
                    called_ae_title: source.ae_title.clone(),
                    calling_ae_title: source.calling_ae_title.clone().unwrap_or_else(|| config.dicom.ae_title.clone()),
                    timeout: Duration::from_secs(source.timeout_secs),
                    tls,
                };
                Access::Dimse { scp, destination: source.move_destination(config).to_string() }
            }
            SourceKind::Dicomweb => {
                let target = Arc::new(HttpTarget::for_source(config, source).with_context(files)?);
                let origin = Origin {
                    service: "WADO-RS",
                    name: format!("WADO-RS {}", source.name),
                    address: source.url.clone().unwrap_or_default(),
                };
                Access::Web { target, receiving: Receiving { ingest, dicom: config.dicom.clone() }, origin }
            }
        };
        Ok(Puller { source: source.clone(), access, store })
    }

    /// Whether the images come to this node's listener (which must be up), not in this process.
    pub fn moves_to_listener(&self) -> bool {
        matches!(self.access, Access::Dimse { .. })
    }

    /// The studies matching one query (blocking work off the runtime).
    async fn find(&self, query: StudyQuery) -> anyhow::Result<Vec<StudyMatch>> {
        Ok(match &self.access {
            Access::Dimse { scp, .. } => {
                let scp = scp.clone();
                tokio::task::spawn_blocking(move || qr::find_studies(&scp, &query, MAX_STUDIES)).await??
            }
            Access::Web { target, .. } => {
                let target = target.clone();
                tokio::task::spawn_blocking(move || web::find_studies(&target, &query, MAX_STUDIES)).await??
            }
        })
    }

    /// The series of a study.
    async fn series_of(&self, study: &str) -> anyhow::Result<Vec<SeriesMatch>> {
        let study = study.to_string();
        Ok(match &self.access {
            Access::Dimse { scp, .. } => {
                let scp = scp.clone();
                tokio::task::spawn_blocking(move || qr::find_series(&scp, &study, MAX_SERIES)).await??
            }
            Access::Web { target, .. } => {
                let target = target.clone();
                tokio::task::spawn_blocking(move || web::find_series(&target, &study, MAX_SERIES)).await??
            }
        })
    }

    /// Pulls the series of a study the node does not hold whole: the counts summed, or the
    /// first failure.
    async fn fetch_study(&self, planned: &Planned) -> Pulled {
        let study = planned.study.study_instance_uid.as_str();
        let mut sum = qr::Moved::default();
        for (series, _) in planned.series.iter().filter(|s| !series_complete(s)) {
            match self.fetch_series(study, &series.series_instance_uid).await {
                // a series with failures ends the study's pull: none are summed
                Pulled::Moved(m) => {
                    sum.status = m.status;
                    sum.completed += m.completed;
                    sum.warning += m.warning;
                }
                Pulled::Failed(why) => return Pulled::Failed(why),
                Pulled::Held | Pulled::Nothing => {}
            }
        }
        Pulled::Moved(sum)
    }

    /// Has the source send one series (C-MOVE), or retrieves it (WADO-RS).
    async fn fetch_series(&self, study: &str, series: &str) -> Pulled {
        let outcome = match &self.access {
            Access::Dimse { scp, destination } => {
                let (scp, destination) = (scp.clone(), destination.clone());
                let (study, series) = (study.to_string(), series.to_string());
                tokio::task::spawn_blocking(move || qr::move_series(&scp, &study, &series, &destination))
                    .await
                    .unwrap_or_else(|e| Err(SendError::Transient(format!("the pulling task failed: {e}"))))
            }
            Access::Web { target, receiving, origin } => {
                web::retrieve_series(target.clone(), receiving, (study, series), origin).await
            }
        };
        match (outcome, &self.access) {
            (Ok(moved), _) if moved.failed == 0 => Pulled::Moved(moved),
            (Ok(moved), Access::Dimse { destination, .. }) => Pulled::Failed(format!(
                "{} of {} images could not be sent to {destination} (status {:#06X}): is the node listening, and does the source know its AE title, host and port?",
                moved.failed,
                moved.failed + moved.completed + moved.warning,
                moved.status
            )),
            (Ok(moved), Access::Web { .. }) => Pulled::Failed(format!(
                "{} of {} images were refused (the log says why)",
                moved.failed,
                moved.failed + moved.completed
            )),
            (Err(SendError::Transient(why) | SendError::Permanent(why)), _) => Pulled::Failed(why),
        }
    }

    /// The studies the source holds that `wanted` names, once each, with how much of each the
    /// node holds.
    pub async fn plan(&self, wanted: &Wanted) -> anyhow::Result<Vec<Planned>> {
        let mut queries = Vec::new();
        for uid in &wanted.study_instance_uids {
            queries.push(StudyQuery { study_instance_uid: Some(uid.clone()), ..StudyQuery::default() });
        }
        if let Some(accession) = &wanted.accession_number {
            queries.push(StudyQuery { accession_number: Some(accession.clone()), ..StudyQuery::default() });
        }
        if queries.is_empty() {
            let modalities = if wanted.modalities.is_empty() { &self.source.modalities } else { &wanted.modalities };
            for modality in modalities {
                queries.push(StudyQuery {
                    study_date: wanted.study_date.clone(),
                    modality: Some(modality.clone()),
                    ..StudyQuery::default()
                });
            }
        }
        let mut found: Vec<StudyMatch> = Vec::new();
        for query in queries {
            for m in self.find(query).await? {
                if !found.iter().any(|f| f.study_instance_uid == m.study_instance_uid) {
                    found.push(m);
                }
            }
        }
        found.sort_by(|a, b| (&a.study_date, &a.study_instance_uid).cmp(&(&b.study_date, &b.study_instance_uid)));
        let modalities = if wanted.modalities.is_empty() { &self.source.modalities } else { &wanted.modalities };
        let mut planned = Vec::with_capacity(found.len());
        for study in found {
            let mut series = Vec::new();
            for s in self.series_of(&study.study_instance_uid).await? {
                if modalities.iter().any(|m| m.eq_ignore_ascii_case(&s.modality)) {
                    let held = self.store.held_instances(&study.study_instance_uid, &s.series_instance_uid).await?;
                    series.push((s, held));
                }
            }
            planned.push(Planned { study, series });
        }
        Ok(planned)
    }

    /// Moves every study of `plan` the node does not hold whole, at most
    /// `max_studies_per_minute`, until done or `shutdown` fires; `each` hears of every study.
    pub async fn pull(&self, plan: &[Planned], shutdown: &Shutdown, mut each: impl FnMut(&Planned, &Pulled)) {
        let interval = Duration::from_secs_f64(60.0 / self.source.max_studies_per_minute.max(1) as f64);
        let mut next = tokio::time::Instant::now();
        for planned in plan {
            if planned.series.is_empty() {
                each(planned, &Pulled::Nothing);
                continue;
            }
            if planned.complete() {
                each(planned, &Pulled::Held);
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.triggered() => return,
            }
            next = tokio::time::Instant::now() + interval;
            let pulled = self.fetch_study(planned).await;
            match &pulled {
                Pulled::Moved(m) => info!(source = %self.source.name, study = %planned.study.study_instance_uid,
                    images = m.completed, warnings = m.warning, "study pulled"),
                Pulled::Failed(why) => warn!(source = %self.source.name, study = %planned.study.study_instance_uid,
                    reason = %why, "study not pulled; a later fetch tries again"),
                Pulled::Held | Pulled::Nothing => {}
            }
            each(planned, &pulled);
        }
    }
}

/// The catch-up of `serve`: for each source with `catch_up`, the studies of its modalities
/// since the day before `last_received` (the last image this node received before it started,
/// read before its listener opened; at most `catch_up_max_days` back), pulled in the
/// background; none when the node never received an image.
pub async fn catch_up(
    config: &Config,
    store: Store,
    ingest: Arc<Ingest>,
    last_received: Option<i64>,
    shutdown: Shutdown,
) {
    let Some(last) = last_received else {
        info!("catch-up: no image was ever received, so nothing was missed");
        return;
    };
    for source in config.sources.iter().filter(|s| s.catch_up) {
        let earliest = store.now() - source.catch_up_max_days as i64 * 86_400_000;
        // a day before: study dates are local dates, and a study held already is skipped
        let since = (last - 86_400_000).max(earliest);
        let wanted = Wanted { study_date: Some(format!("{}-", crate::domain::dicom_date(since))), ..Wanted::default() };
        let puller = match Puller::new(config, source, store.clone(), ingest.clone()) {
            Ok(p) => p,
            Err(e) => {
                warn!(source = %source.name, error = format!("{e:#}"), "catch-up skipped: the source cannot be used");
                continue;
            }
        };
        let plan = match puller.plan(&wanted).await {
            Ok(plan) => plan,
            Err(e) => {
                warn!(source = %source.name, error = %e, "catch-up skipped: the source cannot be queried");
                continue;
            }
        };
        let missing = plan.iter().filter(|p| !p.complete()).count();
        info!(source = %source.name, since = %wanted.study_date.as_deref().unwrap_or_default(), studies = plan.len(), missing,
            "catch-up: pulling the studies this node missed");
        let (mut moved, mut failed) = (0, 0);
        puller
            .pull(&plan, &shutdown, |_, pulled| match pulled {
                Pulled::Moved(_) => moved += 1,
                Pulled::Failed(_) => failed += 1,
                Pulled::Held | Pulled::Nothing => {}
            })
            .await;
        info!(source = %source.name, moved, failed, "catch-up done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_study_is_complete_when_every_wanted_series_is_held_whole() {
        let study = StudyMatch {
            study_instance_uid: "1.2".into(),
            study_date: "20261201".into(),
            modalities: vec!["CR".into()],
            instances: Some(3),
        };
        let series = |instances| SeriesMatch { series_instance_uid: "1.2.1".into(), modality: "CR".into(), instances };
        let planned = |list: Vec<(SeriesMatch, i64)>| Planned { study: study.clone(), series: list };
        assert!(!planned(vec![(series(Some(2)), 1)]).complete());
        assert!(planned(vec![(series(Some(2)), 2)]).complete());
        assert!(!planned(vec![(series(None), 0)]).complete());
        assert!(planned(vec![(series(None), 1)]).complete());
        assert!(!planned(vec![(series(Some(1)), 1), (series(Some(1)), 0)]).complete());
        assert!(planned(vec![]).complete(), "nothing wanted: nothing to pull");
        let two = planned(vec![(series(Some(1)), 1), (series(Some(2)), 0)]);
        assert_eq!((two.at_source(), two.held()), (Some(3), 1));
    }
}
