//! The HTTP side (axum): health for the service manager and load balancers, Prometheus
//! metrics, the worklist API and the worklist page. Bound to `http.bind` (localhost by
//! default); with `http.token` or `[[http.tokens]]`, every data endpoint requires
//! `Authorization: Bearer <token>`. A verdict is recorded with the name of the token it came
//! with, so it needs a named one.
//! Errors are JSON: `{"error": "..."}`.

mod api;
pub mod listener;
pub mod oidc;
mod signin;
pub mod stow;
pub mod worklist;

pub use api::status_json;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::audit::AuditEvent;
use crate::config::{Config, PriorityConfig};
use crate::shutdown::Shutdown;
use crate::spool::Spool;
use crate::store::{JobScope, Store};
use oidc::Role;

/// What `/readyz` reports besides the database and the spool, set as the node comes up and
/// goes down.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The models are loaded (or analysis is off).
    pub models: AtomicBool,
    /// The DICOM listener accepts associations.
    pub listening: AtomicBool,
    /// A stop has begun: not ready any more.
    pub stopping: AtomicBool,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub spool: Arc<Spool>,
    pub readiness: Arc<Readiness>,
    pub priority: PriorityConfig,
    /// `inference.max_pixels`: an overlay is drawn only of an image within the budget.
    pub max_pixels: u64,
    /// Whose images this node analyses: the worklist says which studies wait for another node.
    pub scope: JobScope,
    /// The bearer tokens that open the API, each with its person's name (none for `http.token`).
    tokens: Arc<[(String, Caller)]>,
    /// `http.request_timeout_secs`: a request not answered by then (a body sent slowly, say)
    /// gets 503 and its connection's place back.
    request_timeout: Duration,
    auth_audits: Arc<AuthAudits>,
    /// The OpenID provider whose access tokens open the API too.
    oidc: Option<Arc<oidc::Verifier>>,
    /// Sign-ins under way and signed-in people (the page's session cookies).
    sessions: Arc<signin::Sessions>,
    /// A reverse proxy that signs people in and names them in a header.
    proxy_auth: Option<Arc<crate::config::ProxyAuth>>,
    /// Where STOW-RS stores (none: the node answers 503 to it).
    stow: Option<crate::dicom::part10::Receiving>,
}

/// Who a request came from: the name of its token, if it has one, and its address (a request
/// extension).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Option<String>,
    /// Where the request came from (the proxy's address behind one).
    pub address: Option<String>,
    /// Whether a token was checked at all (none is configured: no).
    pub authenticated: bool,
    /// What it may do.
    pub role: Role,
    /// Whether it came signed in on the page (a session cookie), so may sign out.
    pub signed_in: bool,
}

impl Default for Caller {
    /// A caller of a node that asks for no token: it may do everything.
    fn default() -> Caller {
        Caller { name: None, address: None, authenticated: false, role: Role::Admin, signed_in: false }
    }
}

impl Caller {
    /// The user an audit record names: the token's name, `http.token` for the unnamed one, or
    /// `anonymous` where no token is configured.
    pub fn user_id(&self) -> &str {
        match (&self.name, self.authenticated) {
            (Some(name), _) => name,
            (None, true) => "http.token",
            (None, false) => "anonymous",
        }
    }

    /// The caller as an audit record's user.
    pub fn audit_user(&self) -> crate::audit::User<'_> {
        crate::audit::User { id: self.user_id(), address: self.address.as_deref() }
    }
}

/// How often the same sign-in is audited again: a page polls with its token every few seconds,
/// and a record per request would bury the trail (refusals: per address).
const LOGIN_AUDIT_EVERY: Duration = Duration::from_secs(600);
const REFUSAL_AUDIT_EVERY: Duration = Duration::from_secs(60);

/// When each (user, address, refused) was last audited.
#[derive(Debug, Default)]
struct AuthAudits {
    last: std::sync::Mutex<std::collections::HashMap<(String, String, bool), std::time::Instant>>,
}

impl AuthAudits {
    /// Whether this sign-in (or refusal) is due a record now; remembers it if so.
    fn due(&self, user: &str, address: &str, refused: bool) -> bool {
        let every = if refused { REFUSAL_AUDIT_EVERY } else { LOGIN_AUDIT_EVERY };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // bounded: entries past their window are forgotten once there are many
        if last.len() > 10_000 {
            last.retain(|_, at| at.elapsed() < LOGIN_AUDIT_EVERY);
        }
        let key = (user.to_string(), address.to_string(), refused);
        match last.get(&key) {
            Some(at) if at.elapsed() < every => false,
            _ => {
                last.insert(key, std::time::Instant::now());
                true
            }
        }
    }
}

impl AppState {
    pub fn new(config: &Config, store: Store, spool: Arc<Spool>, readiness: Arc<Readiness>) -> AppState {
        AppState {
            store,
            spool,
            readiness,
            priority: config.priority,
            max_pixels: config.inference.max_pixels,
            scope: JobScope::of(config),
            tokens: config
                .http
                .token
                .iter()
                // the unnamed token is a machine's (monitoring, scripts); a named one a person's
                .map(|t| (t.clone(), Caller { authenticated: true, ..Caller::default() }))
                .chain(config.http.tokens.iter().map(|t| {
                    let name = Some(t.name.clone());
                    let caller = Caller { name, role: Role::Radiologist, authenticated: true, ..Caller::default() };
                    (t.token.clone(), caller)
                }))
                .collect(),
            oidc: None,
            sessions: Arc::default(),
            proxy_auth: config.http.proxy_auth.clone().map(Arc::new),
            request_timeout: Duration::from_secs(config.http.request_timeout_secs),
            auth_audits: Arc::default(),
            stow: None,
        }
    }
}

impl AppState {
    /// The state, accepting the provider's access tokens too.
    pub fn with_oidc(mut self, oidc: Option<Arc<oidc::Verifier>>) -> AppState {
        self.oidc = oidc;
        self
    }

    /// The state, storing what STOW-RS brings.
    pub fn with_stow(mut self, ingest: Arc<crate::ingest::Ingest>, dicom: crate::config::DicomConfig) -> AppState {
        self.stow = Some(crate::dicom::part10::Receiving { ingest, dicom });
        self
    }

    /// Whether any request must bring a token.
    fn requires_token(&self) -> bool {
        !self.tokens.is_empty() || self.oidc.is_some() || self.proxy_auth.is_some()
    }

    /// The user a trusted proxy names in its header: none without the header; refused (why)
    /// when the header comes from an address that is not the proxy's.
    fn proxied(&self, request: &Request, peer: Option<std::net::IpAddr>) -> Option<Result<Caller, String>> {
        let proxy = self.proxy_auth.as_ref()?;
        let user = request.headers().get(proxy.user_header.as_str())?;
        if !peer.is_some_and(|ip| proxy.trusted_proxies.iter().any(|t| t.to_canonical() == ip)) {
            return Some(Err(format!("{} from an address that is not http.proxy_auth's", proxy.user_header)));
        }
        let user = user.to_str().ok().map(str::trim).filter(|u| !u.is_empty());
        let Some(user) = user else { return Some(Err(format!("an empty or unreadable {}", proxy.user_header))) };
        let listed = proxy.roles_header.as_ref().and_then(|h| request.headers().get(h.as_str()));
        let roles = listed.and_then(|v| v.to_str().ok()).unwrap_or_default();
        let role = roles.split(',').filter_map(Role::named).max().or_else(|| Role::named(&proxy.default_role));
        let role = role.unwrap_or(Role::Viewer);
        Some(Ok(Caller { name: Some(user.to_string()), authenticated: true, role, ..Caller::default() }))
    }
}

/// An error answered as JSON.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError(status, message.into())
    }

    /// What it says.
    pub fn message(&self) -> &str {
        &self.1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        tracing::warn!(error = %e, "HTTP request failed on the database");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))
    }
}

pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/studies", get(api::studies))
        .route("/api/studies/{uid}", get(api::study))
        .route("/api/instances/{uid}/overlay.png", get(api::overlay))
        .route("/api/results/{id}/verdict", post(api::verdict))
        .route("/api/status", get(api::status))
        .route("/dicomweb/studies", post(stow::store_any))
        .route("/dicomweb/studies/{study}", post(stow::store_to_study))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "alive" })) }))
        .route("/readyz", get(readyz))
        .route("/", get(|| async { Html(worklist::PAGE) }))
        .route("/auth/login", get(signin::login))
        .route("/auth/callback", get(signin::callback))
        .route("/auth/logout", post(signin::logout))
        .merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), within_request_timeout))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes the requests in progress.
/// With `tls`, HTTPS only (and HSTS on every answer).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: AppState,
    config: &crate::config::HttpConfig,
    limits: Arc<listener::ConnectionLimits>,
    shutdown: Shutdown,
) {
    let mut router = router(state);
    if tls.is_some() {
        router = router.layer(middleware::map_response(strict_transport_security));
    }
    listener::serve(listener, tls, router, config, limits, shutdown).await
}

/// HSTS: a browser that reached the node over HTTPS never falls back to plain HTTP for it.
async fn strict_transport_security(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::STRICT_TRANSPORT_SECURITY, header::HeaderValue::from_static("max-age=31536000"));
    response
}

async fn within_request_timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request was not answered within {:?} (http.request_timeout_secs)", state.request_timeout),
        )
        .into_response(),
    }
}

async fn require_token(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_canonical().to_string());
    if !state.requires_token() {
        request.extensions_mut().insert(Caller { address, ..Caller::default() });
        return next.run(request).await;
    }
    // a person signed in on the page
    if let Some(session) = state.sessions.of(request.headers()) {
        let identity = session.identity;
        let (name, role) = (Some(identity.user), identity.role);
        let caller = Caller { name, address, authenticated: true, role, signed_in: true };
        request.extensions_mut().insert(caller);
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip().to_canonical());
    let proxied = state.proxied(&request, peer);
    let caller = match (proxied, given, &state.oidc) {
        (Some(proxied), _, _) => proxied,
        (None, Some(jwt), Some(verifier)) if oidc::Verifier::is_jwt(jwt) => match verifier.verify(jwt).await {
            Ok(identity) => {
                Ok(Caller { name: Some(identity.user), authenticated: true, role: identity.role, ..Caller::default() })
            }
            Err(why) => Err(why),
        },
        // every token is compared, so that timing tells nothing of which one nearly matched: a
        // fold, not find() or last(), which stop at the match
        (None, Some(given), _) => state
            .tokens
            .iter()
            .filter(|(token, _)| constant_time_eq(given.as_bytes(), token.as_bytes()))
            .fold(None, |found, (_, caller)| found.or(Some(caller.clone())))
            .ok_or_else(|| "a bearer token that is not configured".to_string()),
        (None, None, _) => Err("no bearer token".to_string()),
    };
    let seen_from = address.clone().unwrap_or_default();
    match caller {
        Ok(caller) => {
            let caller = Caller { address, ..caller };
            if state.auth_audits.due(caller.user_id(), &seen_from, false) {
                let event = AuditEvent::Authentication { user: caller.audit_user(), refused: None };
                if let Err(e) = state.store.audit(&event).await {
                    tracing::warn!(error = %e, "could not record a sign-in in the audit trail");
                }
            }
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(why) => {
            if state.auth_audits.due("", &seen_from, true) {
                let user = crate::audit::User { id: "unknown", address: address.as_deref() };
                let event = AuditEvent::Authentication { user, refused: Some(&why) };
                if let Err(e) = state.store.audit(&event).await {
                    tracing::warn!(error = %e, "could not record a refused request in the audit trail");
                }
            }
            let error =
                format!("{why}: a bearer token is required (http.token, [[http.tokens]] or the provider's, http.oidc)");
            // the page offers the provider's sign-in where there is one
            let sign_in = state.oidc.as_ref().is_some_and(|o| o.redirect_url.is_some()).then_some("/auth/login");
            let mut response =
                (StatusCode::UNAUTHORIZED, Json(json!({ "error": error, "sign_in": sign_in }))).into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// Compares without stopping at the first difference, so that timing tells nothing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn readyz(State(state): State<AppState>) -> Response {
    let database = match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2 s".to_string()),
    };
    let spool = state.spool.clone();
    let spool = tokio::task::spawn_blocking(move || spool.probe()).await.unwrap_or_else(|e| Err(e.to_string()));
    let r = &state.readiness;
    let checks = [
        ("database", database),
        ("spool", spool),
        ("models", flag(&r.models, "not loaded yet")),
        ("dicom_listener", flag(&r.listening, "not listening")),
        ("running", if r.stopping.load(Ordering::Relaxed) { Err("stopping".to_string()) } else { Ok(()) }),
    ];
    let ready = checks.iter().all(|(_, c)| c.is_ok());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(name, check)| (name.to_string(), check.map_or_else(|e| json!(e), |()| json!("ok"))))
        .collect();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "checks": body }))).into_response()
}

fn flag(f: &AtomicBool, otherwise: &str) -> Result<(), String> {
    if f.load(Ordering::Relaxed) {
        Ok(())
    } else {
        Err(otherwise.to_string())
    }
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = state.store.counts().await?;
    use crate::metrics::labelled;
    let messages = counts
        .messages
        .iter()
        .map(|(kind, state, n)| (vec![("kind", kind.to_string()), ("state", state.to_string())], *n))
        .collect();
    let baseline = state
        .store
        .baseline_decisions(crate::metrics::BASELINE_RESULTS)
        .await?
        .into_iter()
        .map(|(model, decision, n)| (vec![("model", model), ("decision", decision.to_string())], n))
        .collect();
    // every configured repository has its row, 0 when nothing waits
    let mut backlog: Vec<(String, i64)> =
        state.store.auditor().map_or_else(Vec::new, |a| a.repositories.iter().map(|r| (r.clone(), 0)).collect());
    for (repository, n) in state.store.audit_backlog().await? {
        match backlog.iter_mut().find(|(r, _)| *r == repository) {
            Some(row) => row.1 = n,
            None => backlog.push((repository, n)),
        }
    }
    let audit_backlog = labelled("repository", &backlog);
    let text = crate::metrics::render(&[
        ("jobs", "Analysis jobs by state (queued is the backlog)", labelled("state", &counts.jobs)),
        ("audit_backlog", "Audit records of this node waiting for each repository", audit_backlog),
        ("deliveries", "Deliveries of DICOM objects by state", labelled("state", &counts.deliveries)),
        ("messages", "Messages (HL7, FHIR, webhook) by kind and state", messages),
        ("analysed_images", "Analysed images by priority", labelled("priority", &counts.results)),
        (
            "model_baseline_results",
            "Decisions of each classifier version's first results (the drift baseline), by decision",
            baseline,
        ),
    ]);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}
