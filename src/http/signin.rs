//! Signing in on the page with the hospital's OpenID provider: the authorization code flow with
//! PKCE (RFC 7636, S256), a state and a nonce per attempt, the state also in a cookie of the
//! browser that started it (the callback is taken from that browser only); the ID token
//! checked; then a session cookie (`Secure`, `HttpOnly`, `SameSite=Lax`) that the API takes as
//! it takes a token, until it expires or the person signs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::oidc::{Identity, Verifier};
use super::{ApiError, AppState};
use crate::audit::{AuditEvent, User};

/// The session cookie's name.
pub const COOKIE: &str = "pneumotriage_session";

/// The cookie that ties a sign-in's `state` to the browser that started it: a callback from
/// another browser (a link to a half-finished sign-in of someone else's account) is refused.
const SIGNIN_COOKIE: &str = "pneumotriage_signin";

/// How long a sign-in may take at the provider.
const ATTEMPT_TTL: Duration = Duration::from_secs(600);

/// Attempts and sessions kept at most: beyond, the oldest attempts are forgotten (a flood of
/// /auth/login cannot take the node's memory).
const MAX_ATTEMPTS: usize = 10_000;

/// A sign-in under way: its PKCE verifier and nonce.
struct Attempt {
    verifier: String,
    nonce: String,
    started: Instant,
}

/// A signed-in person.
#[derive(Debug, Clone)]
pub struct Session {
    pub identity: Identity,
    expires: Instant,
}

/// The attempts under way and the sessions, in memory: a restart signs everyone out.
#[derive(Default)]
pub struct Sessions {
    attempts: Mutex<HashMap<String, Attempt>>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// The live session a request's cookie names, if any.
    pub fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get(&id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                sessions.remove(&id);
                None
            }
            None => None,
        }
    }
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

/// 32 random bytes, base64url: states, nonces, PKCE verifiers and session ids.
fn random_token() -> String {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    // the system's random source failing is not something to go on without
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn s256(verifier: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// The provider and the redirect, when the page signs people in.
fn configured(state: &AppState) -> Result<(&Arc<Verifier>, String), ApiError> {
    let verifier = state.oidc.as_ref();
    let redirect = verifier.and_then(|v| v.redirect_url.clone());
    verifier
        .zip(redirect)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "sign-in is not configured (http.oidc.client_id)"))
}

/// `GET /auth/login`: off to the provider.
pub async fn login(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (verifier, redirect_url) = configured(&state)?;
    let (id, attempt) =
        (random_token(), Attempt { verifier: random_token(), nonce: random_token(), started: Instant::now() });
    let client_id = verifier.settings().client_id.clone().unwrap_or_default();
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", &redirect_url)
        .append_pair("scope", "openid profile")
        .append_pair("state", &id)
        .append_pair("nonce", &attempt.nonce)
        .append_pair("code_challenge", &s256(&attempt.verifier))
        .append_pair("code_challenge_method", "S256")
        .finish();
    let separator = if verifier.authorization_endpoint.contains('?') { "&" } else { "?" };
    let url = format!("{}{separator}{query}", verifier.authorization_endpoint);
    let cookie =
        format!("{SIGNIN_COOKIE}={id}; Path=/auth; Max-Age={}; Secure; HttpOnly; SameSite=Lax", ATTEMPT_TTL.as_secs());
    remember(&mut state.sessions.attempts.lock().unwrap_or_else(|e| e.into_inner()), id, attempt);
    let mut response = redirect(&url);
    response.headers_mut().insert(header::SET_COOKIE, header::HeaderValue::from_str(&cookie).expect("ASCII"));
    Ok(response)
}

/// Keeps a sign-in under way, forgetting the expired ones and, when there are too many, the
/// oldest: a flood of /auth/login costs its own attempts, never the sign-in of the next person.
fn remember(attempts: &mut HashMap<String, Attempt>, id: String, attempt: Attempt) {
    attempts.retain(|_, a| a.started.elapsed() < ATTEMPT_TTL);
    while attempts.len() >= MAX_ATTEMPTS {
        let oldest = attempts.iter().min_by_key(|(_, a)| a.started).map(|(id, _)| id.clone());
        match oldest {
            Some(oldest) => attempts.remove(&oldest),
            None => break,
        };
    }
    attempts.insert(id, attempt);
}

#[derive(Debug, Deserialize)]
pub struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /auth/callback`: the provider's answer; a session, or why not.
pub async fn callback(
    State(state): State<AppState>,
    caller: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    Query(answer): Query<Callback>,
) -> Result<Response, ApiError> {
    let (verifier, _) = configured(&state)?;
    let address = caller.map(|c| c.0 .0.ip().to_canonical().to_string());
    let started_here = answer.state.is_some() && cookie(&headers, SIGNIN_COOKIE) == answer.state;
    let attempt = answer.state.as_deref().filter(|_| started_here).and_then(|id| {
        let mut attempts = state.sessions.attempts.lock().unwrap_or_else(|e| e.into_inner());
        attempts.remove(id).filter(|a| a.started.elapsed() < ATTEMPT_TTL)
    });
    let identity = match (attempt, answer.code, answer.error) {
        (_, _, Some(error)) => {
            Err(format!("the provider refused: {error} {}", answer.error_description.unwrap_or_default()))
        }
        (None, _, _) if !started_here => {
            Err("this sign-in was not started in this browser (its state is not the one this browser was given)"
                .to_string())
        }
        (None, _, _) => Err("no sign-in under way with this state (expired, or not started here)".to_string()),
        (Some(_), None, _) => Err("the provider gave no code".to_string()),
        (Some(attempt), Some(code), None) => {
            let exchanging = verifier.clone();
            let code_verifier = attempt.verifier.clone();
            match tokio::task::spawn_blocking(move || exchanging.exchange(&code, &code_verifier)).await {
                Ok(Ok(id_token)) => verifier.verify_id_token(&id_token, &attempt.nonce).await,
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let user_id = identity.as_ref().map(|i| i.user.clone()).unwrap_or_else(|_| "unknown".into());
    let user = User { id: &user_id, address: address.as_deref() };
    let refused = identity.as_ref().err().map(String::as_str);
    state.store.audit(&AuditEvent::Authentication { user, refused }).await?;
    let identity = identity.map_err(|why| {
        tracing::warn!(address = address.as_deref().unwrap_or("-"), %why, "sign-in refused");
        ApiError::new(StatusCode::FORBIDDEN, format!("sign-in refused: {why}"))
    })?;
    tracing::info!(user = %identity.user, role = identity.role.as_str(), "signed in");
    let minutes = verifier.settings().session_minutes;
    let id = random_token();
    let session = Session { identity, expires: Instant::now() + Duration::from_secs(minutes * 60) };
    {
        let mut sessions = state.sessions.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires > Instant::now());
        sessions.insert(id.clone(), session);
    }
    let cookie = format!("{COOKIE}={id}; Path=/; Max-Age={}; Secure; HttpOnly; SameSite=Lax", minutes * 60);
    let done = format!("{SIGNIN_COOKIE}=; Path=/auth; Max-Age=0; Secure; HttpOnly; SameSite=Lax");
    let mut response = redirect("/");
    for cookie in [cookie, done] {
        response.headers_mut().append(header::SET_COOKIE, header::HeaderValue::from_str(&cookie).expect("ASCII"));
    }
    Ok(response)
}

/// `POST /auth/logout`: the session ends here (its cookie is worth nothing after).
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        let ended = state.sessions.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        if let Some(session) = ended {
            tracing::info!(user = %session.identity.user, "signed out");
        }
    }
    let expired = format!("{COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax");
    let mut response = redirect("/");
    response.headers_mut().insert(header::SET_COOKIE, header::HeaderValue::from_str(&expired).expect("ASCII"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_follows_rfc_7636() {
        // RFC 7636 appendix B
        assert_eq!(s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    /// A flood of /auth/login forgets its own oldest attempts; the newest is always kept.
    #[test]
    fn attempts_past_the_limit_forget_the_oldest() {
        let mut attempts = HashMap::new();
        let attempt = || Attempt { verifier: String::new(), nonce: String::new(), started: Instant::now() };
        for i in 0..MAX_ATTEMPTS + 5 {
            remember(&mut attempts, format!("a{i}"), attempt());
        }
        assert_eq!(attempts.len(), MAX_ATTEMPTS);
        assert!(attempts.contains_key(&format!("a{}", MAX_ATTEMPTS + 4)), "the newest is kept");
        assert!(!attempts.contains_key("a0"), "the oldest went");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "a=1; pneumotriage_session=abc".parse().unwrap());
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, "b"), None);
    }
}
