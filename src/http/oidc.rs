//! The hospital's OpenID Connect provider: its access tokens (JWT) open the API, each with the
//! role its claims give. The provider's discovery document is read at start (the issuer it
//! names must be the configured one), its keys (JWKS) then and again when a token names a key
//! not seen yet, at most once a minute.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::config::{Config, OidcConfig};
use crate::outbox::http::HttpTls;

/// What a caller may do: a viewer reads, a radiologist also records verdicts, an admin may do
/// everything the API offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Radiologist,
    Admin,
}

impl Role {
    /// A role by its name (`viewer`, `radiologist`, `admin`).
    pub fn named(name: &str) -> Option<Role> {
        match name.trim() {
            "viewer" => Some(Role::Viewer),
            "radiologist" => Some(Role::Radiologist),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Radiologist => "radiologist",
            Role::Admin => "admin",
        }
    }
}

/// Who a valid token names, and their role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

/// Why the provider cannot be used at start.
#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    #[error("http.oidc.ca_file: {0}")]
    Tls(String),
    #[error("http.oidc.issuer: {url}: {why}")]
    Discovery { url: String, why: String },
}

/// Fetches JSON documents from the provider.
struct Fetcher {
    agent: ureq::Agent,
}

impl Fetcher {
    fn get(&self, url: &str) -> Result<Value, String> {
        let mut response = self.agent.get(url).call().map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("answered {}", response.status()));
        }
        // a discovery document or a key set is a few KB
        let text = response.body_mut().with_config().limit(1 << 20).read_to_string().map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))
    }
}

/// The keys, and when they were last read.
struct Keys {
    set: JwkSet,
    read_at: Instant,
}

/// Checks the provider's tokens.
pub struct Verifier {
    settings: OidcConfig,
    jwks_uri: String,
    fetcher: Fetcher,
    keys: RwLock<Keys>,
    /// Where people sign in and codes are exchanged (from the discovery document).
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    /// Where the provider sends people back, when the page signs people in.
    pub redirect_url: Option<String>,
}

/// How often the keys may be read again for a token naming an unknown key.
const KEYS_AGAIN_AFTER: Duration = Duration::from_secs(60);

impl Verifier {
    /// Reads the provider's discovery document and keys (blocking: at start).
    pub fn discover(config: &Config) -> Result<Option<Arc<Verifier>>, OidcSetupError> {
        let Some(settings) = config.http.oidc.clone() else { return Ok(None) };
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .proxy(None)
            .user_agent(concat!("pneumotriage/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &settings.ca_file {
            let tls = HttpTls { ca_file: config.resolve(ca), identity: None, server_name: None };
            let tls = crate::outbox::http::tls_config(&tls).map_err(|e| OidcSetupError::Tls(e.to_string()))?;
            builder = builder.https_only(true).tls_config(tls);
        }
        let fetcher = Fetcher { agent: builder.build().into() };
        let url = format!("{}/.well-known/openid-configuration", settings.issuer.trim_end_matches('/'));
        let discovery = |why: String| OidcSetupError::Discovery { url: url.clone(), why };
        let document = fetcher.get(&url).map_err(discovery)?;
        let named = document["issuer"].as_str().unwrap_or_default();
        if named != settings.issuer {
            return Err(discovery(format!("the provider names itself {named:?}, not {:?}", settings.issuer)));
        }
        let jwks_uri = document["jwks_uri"].as_str().ok_or_else(|| discovery("no jwks_uri".into()))?.to_string();
        let endpoint = |name: &str| document[name].as_str().unwrap_or_default().to_string();
        let (authorization_endpoint, token_endpoint) = (endpoint("authorization_endpoint"), endpoint("token_endpoint"));
        let redirect_url = settings.redirect_url(config.http.public_url.as_deref());
        if redirect_url.is_some() && (authorization_endpoint.is_empty() || token_endpoint.is_empty()) {
            return Err(discovery("no authorization_endpoint or token_endpoint, which the sign-in needs".into()));
        }
        let set = read_keys(&fetcher, &jwks_uri).map_err(discovery)?;
        let keys = RwLock::new(Keys { set, read_at: Instant::now() });
        Ok(Some(Arc::new(Verifier {
            settings,
            jwks_uri,
            fetcher,
            keys,
            authorization_endpoint,
            token_endpoint,
            redirect_url,
        })))
    }

    pub fn settings(&self) -> &OidcConfig {
        &self.settings
    }

    /// Exchanges an authorization code (and its PKCE verifier) for the tokens, blocking; the ID
    /// token's identity, checked (its nonce too), or why not.
    pub fn exchange(&self, code: &str, code_verifier: &str) -> Result<String, String> {
        use base64::Engine;
        let (Some(client_id), Some(redirect)) = (&self.settings.client_id, &self.redirect_url) else {
            return Err("the sign-in is not configured".into());
        };
        let mut request = self.fetcher.agent.post(&self.token_endpoint);
        if let Some(secret) = &self.settings.client_secret {
            // RFC 6749 2.3.1: the id and secret form-encoded, then Basic
            let encode = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(client_id), encode(secret));
            let basic = base64::engine::general_purpose::STANDARD.encode(pair);
            request = request.header("Authorization", format!("Basic {basic}"));
        }
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect.as_str()),
            ("client_id", client_id.as_str()),
            ("code_verifier", code_verifier),
        ];
        let mut response = request.send_form(form).map_err(|e| format!("the token endpoint: {e}"))?;
        let text = response.body_mut().with_config().limit(1 << 20).read_to_string().map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!(
                "the token endpoint answered {}: {}",
                response.status(),
                text.chars().take(200).collect::<String>()
            ));
        }
        let tokens: Value = serde_json::from_str(&text).map_err(|e| format!("the token endpoint: not JSON: {e}"))?;
        tokens["id_token"].as_str().map(str::to_string).ok_or_else(|| "the token endpoint gave no id_token".into())
    }

    /// The identity of an ID token for this node's client, issued for `nonce`.
    pub async fn verify_id_token(self: &Arc<Self>, token: &str, nonce: &str) -> Result<Identity, String> {
        let audience = self.settings.client_id.clone().unwrap_or_default();
        let claims = self.claims(token, &audience).await?;
        if claims["nonce"].as_str() != Some(nonce) {
            return Err("the ID token is for another sign-in (nonce)".into());
        }
        self.identity(&claims)
    }

    /// Whether `token` looks like a JWT (three base64url parts), rather than a static token.
    pub fn is_jwt(token: &str) -> bool {
        token.split('.').count() == 3
    }

    /// The identity `token` carries, or why it is refused (for the caller and the audit trail).
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<Identity, String> {
        let claims = self.claims(token, &self.settings.audience).await?;
        self.identity(&claims)
    }

    /// The claims of `token`, checked: signature, issuer, `audience`, expiry, not-before.
    async fn claims(self: &Arc<Self>, token: &str, audience: &str) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(format!(
                "signed with {:?}: only the provider's public-key algorithms are accepted",
                header.alg
            ));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                let verifier = self.clone();
                tokio::task::spawn_blocking(move || verifier.read_keys_again()).await.map_err(|e| e.to_string())??;
                self.key(&kid).ok_or_else(|| format!("signed with a key the provider does not publish ({kid:?})"))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.clock_skew_secs;
        Ok(jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| refusal(&e))?.claims)
    }

    fn identity(&self, claims: &Value) -> Result<Identity, String> {
        let user = claims[&self.settings.user_claim]
            .as_str()
            .or_else(|| claims["sub"].as_str())
            .filter(|u| !u.is_empty())
            .ok_or("the token names no user")?
            .to_string();
        let role = self
            // a dotted path reaches into objects (Keycloak: `realm_access.roles`)
            .role(self.settings.roles_claim.split('.').fold(claims, |at, name| &at[name]))
            .ok_or_else(|| format!("{user} has no role this node maps (claim {:?})", self.settings.roles_claim))?;
        Ok(Identity { user, role })
    }

    /// The highest role the claim's values map to.
    fn role(&self, claim: &Value) -> Option<Role> {
        let values: Vec<&str> = match claim {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let s = &self.settings;
        [(Role::Admin, &s.admin_roles), (Role::Radiologist, &s.radiologist_roles), (Role::Viewer, &s.viewer_roles)]
            .into_iter()
            .find(|(_, mapped)| values.iter().any(|v| mapped.iter().any(|m| m == v)))
            .map(|(role, _)| role)
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let jwk = if kid.is_empty() && keys.set.keys.len() == 1 { keys.set.keys.first() } else { keys.set.find(kid) };
        jwk.and_then(|jwk| DecodingKey::from_jwk(jwk).ok())
    }

    /// Reads the keys again (the provider rotated them), at most once a minute, whether the
    /// reading succeeds or not: the time is taken before, under the lock, so that tokens naming
    /// unknown keys (anyone can send them) start one reading a minute, not one each.
    fn read_keys_again(&self) -> Result<(), String> {
        {
            let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
            if keys.read_at.elapsed() < KEYS_AGAIN_AFTER {
                return Ok(());
            }
            keys.read_at = Instant::now();
        }
        let set = read_keys(&self.fetcher, &self.jwks_uri).map_err(|e| {
            tracing::warn!(error = %e, "cannot read the OpenID provider's keys again");
            "signed with a key this node cannot check now".to_string()
        })?;
        self.keys.write().unwrap_or_else(|e| e.into_inner()).set = set;
        Ok(())
    }
}

fn read_keys(fetcher: &Fetcher, jwks_uri: &str) -> Result<JwkSet, String> {
    let document = fetcher.get(jwks_uri).map_err(|e| format!("{jwks_uri}: {e}"))?;
    serde_json::from_value(document).map_err(|e| format!("{jwks_uri}: not a key set: {e}"))
}

/// Why a token was refused, in words a client (and an auditor) can act on.
fn refusal(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet".into(),
        ErrorKind::InvalidIssuer => "the token is from another issuer".into(),
        ErrorKind::InvalidAudience => "the token is for another audience".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        other => format!("the token is invalid: {other:?}"),
    }
}
