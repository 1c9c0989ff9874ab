//! The worklist API: studies in reading order, one study in detail, an instance's overlay, the
//! node's counts.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, AppState};
use crate::config::PriorityConfig;
use crate::store::worklist::{StudyInstance, WorklistStudy};
use crate::store::{now_ms, Store};

/// Studies read in at most this many (the most recently received).
const MAX_STUDIES: i64 = 1000;

/// A study on the worklist: the database's view plus where it stands now.
#[derive(Debug, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub study: WorklistStudy,
    /// Where it is listed: its priority, raised by the aging rule when it has waited long.
    pub effective_priority: &'static str,
    /// Whether the aging rule raised it.
    pub aged: bool,
    /// Since the first image arrived, in seconds.
    pub waiting_secs: i64,
    /// `waiting` (images not analysed yet), `quarantined` (not analysed: an image stopped the
    /// node each time it was analysed), `failed` (an analysis failed), `analysed` or
    /// `not_analysed` (nothing applicable, e.g. a lateral view).
    pub state: &'static str,
    /// `none`, `pending`, `failed` (any) or `delivered` (all).
    pub delivery: &'static str,
}

fn rank(priority: &str) -> u8 {
    match priority {
        "urgent" => 0,
        "review" => 1,
        _ => 2,
    }
}

/// A study as listed `now` (ms since the epoch), the aging rule applied.
pub fn listed(study: WorklistStudy, rules: &PriorityConfig, now: i64) -> Listed {
    let waiting_ms = (now - study.first_received_at).max(0);
    let waited = |minutes: u64| minutes > 0 && waiting_ms >= minutes as i64 * 60_000;
    let priority = study.priority.as_deref().unwrap_or("routine");
    let effective_priority = match priority {
        "urgent" => "urgent",
        "review" if waited(rules.review_aging_minutes) => "urgent",
        "review" => "review",
        _ if waited(rules.routine_aging_minutes) => "review",
        _ => "routine",
    };
    let state = if study.jobs_pending > 0 {
        "waiting"
    } else if study.jobs_quarantined > 0 {
        "quarantined"
    } else if study.jobs_failed > 0 {
        "failed"
    } else if study.results > 0 {
        "analysed"
    } else {
        "not_analysed"
    };
    let delivery = if study.deliveries_failed > 0 {
        "failed"
    } else if study.deliveries_pending > 0 {
        "pending"
    } else if study.deliveries_delivered > 0 {
        "delivered"
    } else {
        "none"
    };
    Listed {
        aged: rank(effective_priority) < rank(priority),
        effective_priority,
        waiting_secs: waiting_ms / 1000,
        state,
        delivery,
        study,
    }
}

/// Reading order: by effective priority, then the longest waiting first.
pub fn order(studies: &mut [Listed]) {
    studies.sort_by_key(|s| (rank(s.effective_priority), s.study.first_received_at));
}

#[derive(Debug, Deserialize)]
pub struct StudiesQuery {
    /// Comma-separated effective priorities, e.g. `urgent,review`.
    priority: Option<String>,
    /// Comma-separated states, e.g. `waiting,analysed`.
    state: Option<String>,
    limit: Option<usize>,
}

pub async fn studies(State(state): State<AppState>, Query(query): Query<StudiesQuery>) -> Result<Response, ApiError> {
    let wanted =
        |list: &Option<String>, value: &str| list.as_deref().is_none_or(|l| l.split(',').any(|w| w.trim() == value));
    for (key, list, allowed) in [
        ("priority", &query.priority, &["urgent", "review", "routine"][..]),
        ("state", &query.state, &["waiting", "quarantined", "failed", "analysed", "not_analysed"][..]),
    ] {
        if let Some(bad) = list.as_deref().and_then(|l| l.split(',').map(str::trim).find(|v| !allowed.contains(v))) {
            let message = format!("{key}: `{bad}` is not one of {}", allowed.join(", "));
            return Err(ApiError::new(StatusCode::BAD_REQUEST, message));
        }
    }
    let now = now_ms();
    let mut list: Vec<Listed> = state
        .store
        .worklist(None, MAX_STUDIES)
        .await?
        .into_iter()
        .map(|s| listed(s, &state.priority, now))
        .filter(|s| wanted(&query.priority, s.effective_priority) && wanted(&query.state, s.state))
        .collect();
    order(&mut list);
    list.truncate(query.limit.unwrap_or(200));
    Ok(Json(json!({ "generated_at": now, "studies": list })).into_response())
}

pub async fn study(State(state): State<AppState>, Path(uid): Path<String>) -> Result<Response, ApiError> {
    let Some(found) = state.store.worklist(Some(&uid), 1).await?.into_iter().next() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such study"));
    };
    let listed = listed(found, &state.priority, now_ms());
    let instances = state.store.study_instances(&uid).await?;
    let mut outputs: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for d in state.store.study_deliveries(&uid).await? {
        outputs.entry(d.source_sop_instance_uid.clone()).or_default().push(json!(d));
    }
    let instances: Vec<serde_json::Value> = instances.into_iter().map(|i| instance_json(i, &mut outputs)).collect();
    Ok(Json(json!({ "study": listed, "instances": instances })).into_response())
}

fn instance_json(i: StudyInstance, outputs: &mut HashMap<String, Vec<serde_json::Value>>) -> serde_json::Value {
    let overlay = i.decision.is_some().then(|| format!("/api/instances/{}/overlay.png", i.sop_instance_uid));
    let objects = outputs.remove(&i.sop_instance_uid).unwrap_or_default();
    let mut value = json!(i);
    value["overlay_url"] = json!(overlay);
    value["objects"] = json!(objects);
    value
}

/// The longest side of an overlay, in pixels: enough for a second monitor's panel, and quick.
const OVERLAY_SIDE: u32 = 1024;

pub async fn overlay(State(state): State<AppState>, Path(uid): Path<String>) -> Result<Response, ApiError> {
    let Some(source) = state.store.overlay_source(&uid).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such instance"));
    };
    let path = state.spool.absolute(&source.path);
    let limits = (state.spool.max_dataset_bytes(), state.max_pixels);
    let png = tokio::task::spawn_blocking(move || render_overlay(&path, &source, limits))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("cannot draw this image: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "private, max-age=60")], png).into_response())
}

/// The image as displayed, at most [`OVERLAY_SIDE`] pixels a side, with the mask's outline.
/// The stored image is checked as the pipeline checks it (structure, pixel budget, codestream)
/// before it is decoded: `limits` are the largest data set and the pixel budget.
fn render_overlay(
    path: &std::path::Path,
    source: &crate::store::worklist::OverlaySource,
    (max_dataset_bytes, max_pixels): (u64, u64),
) -> anyhow::Result<Vec<u8>> {
    let obj = crate::imaging::open_checked(path, max_dataset_bytes)?;
    crate::imaging::check_pixels(&obj, max_pixels)?;
    let display = crate::imaging::display_image(&obj)?;
    let (w, h) = (display.width, display.height);
    let scale = (OVERLAY_SIDE as f64 / w.max(h) as f64).min(1.0);
    let (sw, sh) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    let small = if scale < 1.0 { crate::imaging::resize(&display, sw, sh)? } else { display };
    let mask = match (&source.mask_rle, source.width, source.height) {
        (Some(rle), Some(mw), Some(mh)) if rle.trim() != "-1" => {
            let (mw, mh) = (mw as usize, mh as usize);
            let mut full = vec![false; mw * mh];
            crate::inference::rle::paint_rle(&mut full, rle, mw, mh)?;
            // nearest neighbour down to the drawn size
            let (sw, sh) = (sw as usize, sh as usize);
            Some(
                (0..sw * sh)
                    .map(|i| full[((i / sw) * mh / sh).min(mh - 1) * mw + ((i % sw) * mw / sw).min(mw - 1)])
                    .collect::<Vec<bool>>(),
            )
        }
        _ => None,
    };
    Ok(crate::results::overlay::outline_png(&small, mask.as_deref())?)
}

/// The node's counts, as `pneumotriage status --json` prints them.
pub async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(status_json(&state.store).await?).into_response())
}

/// Jobs, results and deliveries by state or priority.
pub async fn status_json(store: &Store) -> crate::store::Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (what, rows) in store.counts().await? {
        let counts: serde_json::Map<String, serde_json::Value> = rows.into_iter().map(|(k, n)| (k, json!(n))).collect();
        out.insert(what.to_string(), json!(counts));
    }
    Ok(json!(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(priority: Option<&str>, first_received_at: i64) -> WorklistStudy {
        WorklistStudy {
            study_instance_uid: format!("1.2.{first_received_at}"),
            patient_id: None,
            patient_name: None,
            accession_number: None,
            study_date: None,
            study_description: None,
            priority: priority.map(String::from),
            probability: None,
            instance_count: 1,
            first_received_at,
            last_received_at: first_received_at,
            jobs_pending: 0,
            jobs_failed: 0,
            jobs_quarantined: 0,
            results: 1,
            deliveries_pending: 0,
            deliveries_delivered: 0,
            deliveries_failed: 0,
        }
    }

    #[test]
    fn priority_first_then_the_longest_wait_and_old_routine_studies_move_up() {
        let rules = PriorityConfig { routine_aging_minutes: 120, ..PriorityConfig::default() };
        let minute = 60_000;
        let now = 1_000 * minute;
        let mut list: Vec<Listed> = [
            study(Some("routine"), now - 10 * minute),
            study(Some("review"), now - 5 * minute),
            study(Some("urgent"), now - minute),
            study(Some("routine"), now - 180 * minute), // waited 3 h: listed with review
            study(Some("review"), now - 30 * minute),
            study(None, now - 2 * minute), // not analysed yet
        ]
        .into_iter()
        .map(|s| listed(s, &rules, now))
        .collect();
        order(&mut list);
        let got: Vec<(&str, i64, bool)> =
            list.iter().map(|s| (s.effective_priority, (now - s.study.first_received_at) / minute, s.aged)).collect();
        assert_eq!(
            got,
            [
                ("urgent", 1, false),
                ("review", 180, true),
                ("review", 30, false),
                ("review", 5, false),
                ("routine", 10, false),
                ("routine", 2, false)
            ]
        );
        let off = PriorityConfig { routine_aging_minutes: 0, ..rules };
        assert_eq!(listed(study(Some("routine"), 0), &off, now).effective_priority, "routine", "0 turns aging off");
    }
}
