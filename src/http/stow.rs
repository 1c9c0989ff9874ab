//! STOW-RS (PS3.18 10.5): `POST /dicomweb/studies[/{study}]` with a multipart/related body of
//! application/dicom parts. Each part is streamed into the spool as a C-STORE's data set is,
//! never held in memory whole, checked and made durable by the same code
//! (`dicom::part10`), and answered per instance in the Store Instances Response: Referenced
//! SOP Sequence for what is kept, Failed SOP Sequence with the DIMSE status for the rest.

use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{ApiError, AppState, Caller};
use crate::dicom::part10::{multipart_boundary, BodyError, Origin, Received10};

pub async fn store_any(state: State<AppState>, caller: Extension<Caller>, request: Request) -> Response {
    store(state, caller, None, request).await
}

pub async fn store_to_study(
    state: State<AppState>,
    caller: Extension<Caller>,
    Path(study): Path<String>,
    request: Request,
) -> Response {
    store(state, caller, Some(study), request).await
}

/// The boundary of the body, or the answer that refuses it.
fn boundary(content_type: &str) -> Result<String, ApiError> {
    multipart_boundary(content_type).map_err(|e| match e {
        BodyError::Unsupported(why) => ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, why),
        BodyError::NoBoundary => ApiError::new(StatusCode::BAD_REQUEST, "the multipart/related body has no boundary"),
    })
}

async fn store(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    study: Option<String>,
    request: Request,
) -> Response {
    if caller.role < super::oidc::Role::Radiologist {
        return ApiError::new(StatusCode::FORBIDDEN, "storing images needs the radiologist or admin role")
            .into_response();
    }
    let Some(target) = state.stow.clone() else {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "this node does not store images over HTTP")
            .into_response();
    };
    if let Some(study) = &study {
        if crate::spool::sanitize_uid(study).is_none() {
            return ApiError::new(StatusCode::BAD_REQUEST, "the study in the path is not a UID").into_response();
        }
    }
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let boundary = match boundary(content_type) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(peer = %caller.address.as_deref().unwrap_or_default(),
                content_type = %crate::logging::peer_text(content_type.as_bytes(), 200), reason = %e.message(),
                "STOW-RS request refused");
            return e.into_response();
        }
    };
    let origin = Origin {
        service: "STOW-RS",
        name: format!("STOW-RS {}", caller.user_id()),
        address: caller.address.clone().unwrap_or_default(),
    };
    let body: Body = request.into_body();
    let (results, broken) = target.receive(body.into_data_stream(), boundary, study, &origin).await;
    if let Some(e) = broken {
        tracing::warn!(peer = %origin.address, user = %crate::logging::escape_controls(caller.user_id()), error = %e,
            stored = results.iter().filter(|r| r.kept()).count(), "STOW-RS request cut short");
        let status = match e {
            multer::Error::FieldSizeExceeded { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        return ApiError::new(status, format!("the multipart body is unreadable: {e}")).into_response();
    }
    if results.is_empty() {
        return ApiError::new(StatusCode::BAD_REQUEST, "the request holds no application/dicom part").into_response();
    }
    response(&results)
}

/// The Store Instances Response (PS3.18 10.5.3): 200 when every instance is kept, 202 when
/// some are, 409 when none is.
fn response(results: &[Received10]) -> Response {
    let uid = |v: &str| json!({ "vr": "UI", "Value": [v] });
    let mut kept = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        let (class, instance) =
            r.meta.as_ref().map_or(("", ""), |m| (m.sop_class_uid.as_str(), m.sop_instance_uid.as_str()));
        let mut item = serde_json::Map::new();
        // a UID is echoed only when it is one: the sender's bytes go back only in a form that fits
        if crate::spool::sanitize_uid(class).is_some() {
            item.insert("00081150".into(), uid(class));
        }
        if crate::spool::sanitize_uid(instance).is_some() {
            item.insert("00081155".into(), uid(instance));
        }
        if r.kept() {
            kept.push(Value::Object(item));
        } else {
            let status = crate::dicom::scp::store_status(&r.outcome);
            item.insert("00081197".into(), json!({ "vr": "US", "Value": [status] }));
            failed.push(Value::Object(item));
        }
    }
    let status = match (kept.is_empty(), failed.is_empty()) {
        (_, true) => StatusCode::OK,
        (false, false) => StatusCode::ACCEPTED,
        (true, false) => StatusCode::CONFLICT,
    };
    let mut body = serde_json::Map::new();
    if !kept.is_empty() {
        body.insert("00081199".into(), json!({ "vr": "SQ", "Value": kept }));
    }
    if !failed.is_empty() {
        body.insert("00081198".into(), json!({ "vr": "SQ", "Value": failed }));
    }
    (status, [(header::CONTENT_TYPE, "application/dicom+json")], Value::Object(body).to_string()).into_response()
}
