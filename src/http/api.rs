//! The worklist API: studies in reading order, one study in detail, an instance's overlay, the
//! node's counts.

use std::collections::HashMap;
use std::str::FromStr;

use axum::extract::{Extension, Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ApiError, AppState, Caller};
use crate::audit::{AuditEvent, AuditedStudy};
use crate::bucket::BucketError;
use crate::config::PriorityConfig;
use crate::domain::{Agreement, DeliveryProgress, Priority, StudyState, UnknownValue};
use crate::store::worklist::{StudyInstance, WorklistStudy};
use crate::store::{now_ms, Store};

/// Studies read in at most this many (the most recently received).
const MAX_STUDIES: i64 = 1000;

/// A study on the worklist: the database's view plus where it stands now.
#[derive(Debug, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub study: WorklistStudy,
    /// Its priority after the aging rule; none while no image of it has a result (a study the
    /// models did not analyse has no priority: it is never shown as a negative's).
    pub effective_priority: Option<Priority>,
    /// Where it is listed in reading order: its effective priority, or for a study without one
    /// routine, then review once it has waited `priority.routine_aging_minutes`.
    pub listed_with: Priority,
    /// Whether the aging rule raised it.
    pub aged: bool,
    /// Since the first image arrived, in seconds.
    pub waiting_secs: i64,
    pub state: StudyState,
    pub delivery: DeliveryProgress,
    /// Why none of its images was analysed, when none was and none waits: the reason the page
    /// shows instead of a priority badge.
    pub not_analysed_reason: Option<String>,
}

/// A study as listed `now` (ms since the epoch), the aging rule applied.
pub fn listed(study: WorklistStudy, rules: &PriorityConfig, now: i64) -> Listed {
    let waiting_ms = (now - study.first_received_at).max(0);
    let waited = |minutes: u64| minutes > 0 && waiting_ms >= minutes as i64 * 60_000;
    let effective_priority = study.priority.map(|priority| match priority {
        Priority::Urgent => Priority::Urgent,
        Priority::Review if waited(rules.review_aging_minutes) => Priority::Urgent,
        Priority::Review => Priority::Review,
        Priority::Routine if waited(rules.routine_aging_minutes) => Priority::Review,
        Priority::Routine => Priority::Routine,
    });
    // a study without a result waits as a routine one does, and ages as one does
    let listed_with = effective_priority.unwrap_or(if waited(rules.routine_aging_minutes) {
        Priority::Review
    } else {
        Priority::Routine
    });
    let state = if study.jobs_pending > 0 {
        StudyState::Waiting
    } else if study.jobs_quarantined > 0 {
        StudyState::Quarantined
    } else if study.jobs_failed > 0 {
        StudyState::Failed
    } else if study.results > 0 {
        StudyState::Analysed
    } else {
        StudyState::NotAnalysed
    };
    let delivery = if study.deliveries_failed > 0 {
        DeliveryProgress::Failed
    } else if study.deliveries_pending > 0 {
        DeliveryProgress::Pending
    } else if study.deliveries_delivered > 0 {
        DeliveryProgress::Delivered
    } else {
        DeliveryProgress::None
    };
    let not_analysed_reason =
        (study.results == 0 && study.jobs_pending == 0).then(|| study.unanalysed_reason.clone()).flatten();
    Listed {
        aged: listed_with > study.priority.unwrap_or(Priority::Routine),
        effective_priority,
        listed_with,
        waiting_secs: waiting_ms / 1000,
        state,
        delivery,
        not_analysed_reason,
        study,
    }
}

/// Reading order: by where each is listed (highest first), then the longest waiting first.
pub fn order(studies: &mut [Listed]) {
    studies.sort_by_key(|s| (std::cmp::Reverse(s.listed_with), s.study.first_received_at));
}

fn wanted<T: PartialEq>(filter: &Option<Vec<T>>, value: T) -> bool {
    filter.as_ref().is_none_or(|list| list.contains(&value))
}

/// A comma-separated filter of `key` (`None`: everything passes), or the value it cannot read.
fn filter<T: FromStr<Err = UnknownValue>>(key: &str, list: &Option<String>) -> Result<Option<Vec<T>>, ApiError> {
    let Some(list) = list else { return Ok(None) };
    list.split(',')
        .map(|v| v.trim().parse())
        .collect::<Result<Vec<T>, _>>()
        .map(Some)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{key}: {e}")))
}

#[derive(Debug, Deserialize)]
pub struct StudiesQuery {
    /// Comma-separated effective priorities, e.g. `urgent,review`.
    priority: Option<String>,
    /// Comma-separated states, e.g. `waiting,analysed`.
    state: Option<String>,
    limit: Option<usize>,
}

/// The longest query string `/api/studies` takes.
const MAX_QUERY: usize = 2048;

pub async fn studies(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
    Query(query): Query<StudiesQuery>,
) -> Result<Response, ApiError> {
    // its few parameters fit in far less, and a record as long as a URL may be fits no datagram
    if raw.as_ref().is_some_and(|raw| raw.len() > MAX_QUERY) {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            format!("the query is longer than {MAX_QUERY} characters"),
        ));
    }
    let priorities: Option<Vec<Priority>> = filter("priority", &query.priority)?;
    let states: Option<Vec<StudyState>> = filter("state", &query.state)?;
    // the list names patients: the query is on the audit trail before anything is read
    let raw = raw.unwrap_or_default();
    let event = AuditEvent::Queried { by: caller.audit_user(), endpoint: "/api/studies", query: &raw };
    state.store.audit(&event).await?;
    let now = now_ms();
    let mut list: Vec<Listed> = state
        .store
        .worklist(None, MAX_STUDIES, state.scope)
        .await?
        .into_iter()
        .map(|s| listed(s, &state.priority, now))
        .filter(|s| wanted(&priorities, s.listed_with) && wanted(&states, s.state))
        .collect();
    order(&mut list);
    list.truncate(query.limit.unwrap_or(200));
    let you = json!({ "name": caller.name, "role": caller.role.as_str(), "signed_in": caller.signed_in });
    Ok(Json(json!({ "generated_at": now, "studies": list, "you": you })).into_response())
}

pub async fn study(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let Some(found) = state.store.worklist(Some(&uid), 1, state.scope).await?.into_iter().next() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such study"));
    };
    if state.store.auditor().is_some() {
        audit_access(&state, &caller, state.store.audited_study(&uid).await?).await?;
    }
    let listed = listed(found, &state.priority, now_ms());
    let instances = state.store.study_instances(&uid).await?;
    let mut outputs: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for d in state.store.study_deliveries(&uid).await? {
        outputs.entry(d.source_sop_instance_uid.clone()).or_default().push(json!(d));
    }
    let instances: Vec<serde_json::Value> = instances.into_iter().map(|i| instance_json(i, &mut outputs)).collect();
    let messages = state.store.list_messages(false, Some(&uid), 100).await?;
    Ok(Json(json!({ "study": listed, "instances": instances, "messages": messages })).into_response())
}

fn instance_json(i: StudyInstance, outputs: &mut HashMap<String, Vec<serde_json::Value>>) -> serde_json::Value {
    let drawable = i.decision.is_some() && i.released_at.is_none();
    let overlay = drawable.then(|| format!("/api/instances/{}/overlay.png", i.sop_instance_uid));
    let objects = outputs.remove(&i.sop_instance_uid).unwrap_or_default();
    let mut value = json!(i);
    value["overlay_url"] = json!(overlay);
    value["objects"] = json!(objects);
    value
}

/// Records that `caller` read `study` (and its patient), before it is shown: no record, no
/// answer (503).
async fn audit_access(state: &AppState, caller: &Caller, study: Option<AuditedStudy>) -> Result<(), ApiError> {
    if let Some(study) = study {
        state.store.audit(&AuditEvent::Accessed { by: caller.audit_user(), study: &study }).await?;
    }
    Ok(())
}

/// What a verdict says: `{"verdict": "agree" | "disagree", "note": "..."}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictBody {
    verdict: Agreement,
    #[serde(default)]
    note: Option<String>,
}

/// The longest note kept with a verdict, in characters.
const MAX_NOTE: usize = 2000;

/// `POST /api/results/{id}/verdict`: a radiologist agrees or disagrees with a result's finding.
/// Recorded with the name of the token it came with (so a named one, `[[http.tokens]]`).
pub async fn verdict(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // JSON only: a form on another page of the hospital's site (text/plain, no preflight) could
    // otherwise post a verdict with a signed-in radiologist's session cookie
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")) {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "the body must be application/json"));
    }
    if caller.role < super::oidc::Role::Radiologist {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("the {} role reads the worklist; a verdict needs the radiologist role", caller.role.as_str()),
        ));
    }
    let Some(reviewer) = caller.name else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a verdict is recorded with its reviewer's name: use a named token ([[http.tokens]])",
        ));
    };
    let id: i64 = id.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "no such result"))?;
    let body: VerdictBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be {{\"verdict\": \"agree\" or \"disagree\", \"note\": \"...\"}}: {e}"),
        )
    })?;
    let note = body.note.as_deref().map(str::trim).filter(|n| !n.is_empty());
    if note.is_some_and(|n| n.chars().count() > MAX_NOTE) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("the note is longer than {MAX_NOTE} characters")));
    }
    match state.store.record_verdict(id, body.verdict, note, &reviewer).await? {
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such result")),
        Some(row) => {
            // the note may name the patient: not logged
            tracing::info!(result = id, verdict = %row.verdict, reviewer = %reviewer, "verdict recorded");
            Ok((StatusCode::CREATED, Json(row)).into_response())
        }
    }
}

/// The longest side of an overlay, in pixels: enough for a second monitor's panel, and quick.
const OVERLAY_SIDE: u32 = 1024;

pub async fn overlay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let Some(source) = state.store.overlay_source(&uid).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such instance"));
    };
    if state.store.auditor().is_some() {
        audit_access(&state, &caller, state.store.audited_study_of_instance(&uid).await?).await?;
    }
    if let Some(at) = source.released_at {
        let message = format!(
            "the image was released by retention on {} (retention.images_days): its result stays, its pixels are no longer kept here",
            crate::store::format_ms(at)
        );
        return Err(ApiError::new(StatusCode::GONE, message));
    }
    // an image another node received may be in the object store only
    state.spool.fetch(&source.path).await.map_err(|e| match e {
        BucketError::Missing { .. } => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
        e => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    })?;
    let path = state.spool.absolute(&source.path);
    let limits = (state.spool.max_dataset_bytes(), state.max_pixels);
    let png = tokio::task::spawn_blocking(move || render_overlay(&path, &source, limits))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("cannot draw this image: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "private, max-age=60")], png).into_response())
}

/// Why an instance's overlay cannot be drawn.
#[derive(Debug, thiserror::Error)]
enum OverlayError {
    #[error(transparent)]
    Imaging(#[from] crate::imaging::ImagingError),
    #[error("the stored mask: {0}")]
    Mask(#[from] crate::inference::rle::RleError),
    #[error("cannot encode the PNG: {0}")]
    Png(#[from] png::EncodingError),
}

/// The image as displayed, at most [`OVERLAY_SIDE`] pixels a side, with the mask's outline.
/// The stored image is checked as the pipeline checks it (structure, pixel budget, codestream)
/// before it is decoded: `limits` are the largest data set and the pixel budget.
fn render_overlay(
    path: &std::path::Path,
    source: &crate::store::worklist::OverlaySource,
    (max_dataset_bytes, max_pixels): (u64, u64),
) -> Result<Vec<u8>, OverlayError> {
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

/// Jobs, results and deliveries by state or priority: `{"jobs": {"done": 3, ...}, ...}`.
pub async fn status_json(store: &Store) -> crate::store::Result<serde_json::Value> {
    use crate::store::worklist::by_name;
    use std::collections::BTreeMap;
    let counts = store.counts().await?;
    Ok(json!({
        "jobs": BTreeMap::from_iter(by_name(&counts.jobs)),
        "results": BTreeMap::from_iter(by_name(&counts.results)),
        "deliveries": BTreeMap::from_iter(by_name(&counts.deliveries)),
        "messages": counts.messages.iter().fold(BTreeMap::<String, BTreeMap<String, i64>>::new(), |mut by_kind, (kind, state, n)| {
            by_kind.entry(kind.to_string()).or_default().insert(state.to_string(), *n);
            by_kind
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(priority: Option<Priority>, first_received_at: i64) -> WorklistStudy {
        WorklistStudy {
            study_instance_uid: format!("1.2.{first_received_at}"),
            patient_id: None,
            patient_name: None,
            accession_number: None,
            study_date: None,
            study_description: None,
            priority,
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
            waiting_for_node: None,
            unanalysed_reason: None,
            images_released: 0,
            patient_data_removed_at: None,
        }
    }

    #[test]
    fn priority_first_then_the_longest_wait_and_old_routine_studies_move_up() {
        let rules = PriorityConfig { routine_aging_minutes: 120, ..PriorityConfig::default() };
        let minute = 60_000;
        let now = 1_000 * minute;
        let mut list: Vec<Listed> = [
            study(Some(Priority::Routine), now - 10 * minute),
            study(Some(Priority::Review), now - 5 * minute),
            study(Some(Priority::Urgent), now - minute),
            study(Some(Priority::Routine), now - 180 * minute), // waited 3 h: listed with review
            study(Some(Priority::Review), now - 30 * minute),
            study(None, now - 2 * minute), // not analysed yet
        ]
        .into_iter()
        .map(|s| listed(s, &rules, now))
        .collect();
        order(&mut list);
        let got: Vec<(Option<Priority>, Priority, i64, bool)> = list
            .iter()
            .map(|s| (s.effective_priority, s.listed_with, (now - s.study.first_received_at) / minute, s.aged))
            .collect();
        assert_eq!(
            got,
            [
                (Some(Priority::Urgent), Priority::Urgent, 1, false),
                (Some(Priority::Review), Priority::Review, 180, true),
                (Some(Priority::Review), Priority::Review, 30, false),
                (Some(Priority::Review), Priority::Review, 5, false),
                (Some(Priority::Routine), Priority::Routine, 10, false),
                (None, Priority::Routine, 2, false)
            ]
        );
        let off = PriorityConfig { routine_aging_minutes: 0, ..rules };
        assert_eq!(
            listed(study(Some(Priority::Routine), 0), &off, now).effective_priority,
            Some(Priority::Routine),
            "0 turns aging off"
        );
    }

    /// A study none of whose images the models analysed has no priority, never a negative's
    /// (routine), says why, and ages as a routine study does.
    #[test]
    fn a_study_without_a_result_is_never_listed_as_a_negative() {
        let rules = PriorityConfig { routine_aging_minutes: 120, ..PriorityConfig::default() };
        let minute = 60_000;
        let now = 1_000 * minute;
        let mut skipped = study(None, now - 10 * minute);
        skipped.results = 0;
        skipped.unanalysed_reason = Some("input check: not a human patient".into());
        let fresh = listed(skipped.clone(), &rules, now);
        assert_eq!(
            (fresh.effective_priority, fresh.listed_with, fresh.state),
            (None, Priority::Routine, StudyState::NotAnalysed)
        );
        assert_eq!(fresh.not_analysed_reason.as_deref(), Some("input check: not a human patient"));
        skipped.first_received_at = now - 200 * minute;
        let old = listed(skipped, &rules, now);
        assert_eq!((old.effective_priority, old.listed_with, old.aged), (None, Priority::Review, true));
        let json = serde_json::to_value(&old).unwrap();
        assert!(json["effective_priority"].is_null(), "{json}");
    }
}
