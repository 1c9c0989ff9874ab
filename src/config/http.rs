//! `[http]`: the HTTP side (health, metrics, the worklist API and page), its tokens, its
//! connection caps and timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{check_label, Number, Report};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Health, metrics, the worklist API and page; `enabled = false` serves none of it.
    pub enabled: bool,
    pub bind: SocketAddr,
    /// When set, every endpoint but /healthz and /readyz (and the page itself, which holds no
    /// data) requires `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Named tokens, one per person (`[[http.tokens]]`): each opens what `token` opens, and a
    /// radiologist's verdict is recorded with the name of the token it came with.
    pub tokens: Vec<NamedToken>,
    /// How users reach the worklist page (e.g. `https://triage.hospital.org/`): messages link
    /// to their study with it. No link when unset.
    pub public_url: Option<String>,
    /// Connections open at once; more are closed unserved, so that HTTP can never take the
    /// file descriptors the DICOM listener needs.
    pub max_connections: usize,
    /// Connections open at once from one address (a proxy in front counts as one client).
    pub max_connections_per_client: usize,
    /// A connection must send a request's whole head within this long of opening, or of the
    /// previous answer; an idle or slow one is closed.
    pub header_timeout_secs: u64,
    /// A request must be answered, its body read included, within this long (else 503).
    pub request_timeout_secs: u64,
    /// HTTPS on the listener (`[http.tls]`); plain HTTP when unset.
    pub tls: Option<HttpTls>,
    /// The hospital's OpenID provider (`[http.oidc]`): the API accepts its access tokens.
    pub oidc: Option<OidcConfig>,
    /// Behind a reverse proxy that signs people in (`[http.proxy_auth]`): the user it names.
    pub proxy_auth: Option<ProxyAuth>,
}

/// `[http.proxy_auth]`: a reverse proxy that signs people in (oauth2-proxy, Apache mod_auth_openidc)
/// names the user in a header, trusted only from its own addresses.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyAuth {
    /// The addresses of the proxy: a user header from anywhere else is refused.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The header naming the user (e.g. `X-Forwarded-User`).
    pub user_header: String,
    /// The header listing the user's roles, comma separated (`viewer`, `radiologist`, `admin`);
    /// unset or empty: `default_role`.
    #[serde(default)]
    pub roles_header: Option<String>,
    #[serde(default = "viewer")]
    pub default_role: String,
}

fn viewer() -> String {
    "viewer".into()
}

/// `[http.oidc]`: an OpenID Connect provider (Keycloak, AD FS, Entra ID) whose access tokens
/// (JWT) open the API, each with the role its claims give.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer, exactly as the provider names itself (its discovery document is read from
    /// `<issuer>/.well-known/openid-configuration` at start).
    pub issuer: String,
    /// The audience the node's tokens carry (`aud`): its client id at the provider.
    pub audience: String,
    /// The claim that holds the user's roles (a list or one string).
    #[serde(default = "roles_claim")]
    pub roles_claim: String,
    /// The claim that names the user in verdicts and audit records (`sub` when absent).
    #[serde(default = "user_claim")]
    pub user_claim: String,
    /// The claim values that make a viewer (reads), a radiologist (also verdicts) and an admin.
    #[serde(default = "viewer_roles")]
    pub viewer_roles: Vec<String>,
    #[serde(default = "radiologist_roles")]
    pub radiologist_roles: Vec<String>,
    #[serde(default = "admin_roles")]
    pub admin_roles: Vec<String>,
    /// How far the provider's clock and ours may differ when expiry is checked.
    #[serde(default = "clock_skew")]
    pub clock_skew_secs: u64,
    /// The authorities (PEM) of an https issuer's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The node's client id at the provider: set, the page signs people in (authorization code
    /// with PKCE) and keeps them signed in with a session cookie.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default, serialize_with = "super::node::redacted")]
    pub client_secret: Option<String>,
    /// Where the provider sends people back: `<http.public_url>auth/callback` by default.
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// How long a sign-in lasts.
    #[serde(default = "session_minutes")]
    pub session_minutes: u64,
}

fn session_minutes() -> u64 {
    480
}

impl OidcConfig {
    /// Where the provider sends people back after signing in, if the page signs people in.
    pub fn redirect_url(&self, public_url: Option<&str>) -> Option<String> {
        self.client_id.as_ref()?;
        self.redirect_url
            .clone()
            .or_else(|| public_url.map(|base| format!("{}/auth/callback", base.trim_end_matches('/'))))
    }
}

fn roles_claim() -> String {
    "roles".into()
}

fn user_claim() -> String {
    "preferred_username".into()
}

fn viewer_roles() -> Vec<String> {
    vec!["viewer".into()]
}

fn radiologist_roles() -> Vec<String> {
    vec!["radiologist".into()]
}

fn admin_roles() -> Vec<String> {
    vec!["admin".into()]
}

fn clock_skew() -> u64 {
    60
}

/// `[http.tls]`: the listener speaks HTTPS only, with the same certificate rules as DICOM TLS.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// The node's certificate chain and private key (PEM).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, every client must present a certificate signed by one of these authorities.
    pub client_ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            bind: "127.0.0.1:8080".parse().expect("literal socket address"),
            token: None,
            tokens: Vec::new(),
            public_url: None,
            max_connections: 256,
            max_connections_per_client: 64,
            header_timeout_secs: 10,
            request_timeout_secs: 60,
            tls: None,
            oidc: None,
            proxy_auth: None,
        }
    }
}

/// A person's bearer token (`[[http.tokens]]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    /// Who uses it, as verdicts record it (e.g. `dr.lee`).
    pub name: String,
    pub token: String,
}

impl HttpConfig {
    pub(super) fn numbers(&self) -> Vec<Number> {
        vec![
            Number::new("http.max_connections", self.max_connections as u64, 1..=65_536, ""),
            Number::new("http.max_connections_per_client", self.max_connections_per_client as u64, 1..=65_536, ""),
            Number::new("http.header_timeout_secs", self.header_timeout_secs, 1..=600, "seconds"),
            Number::new("http.request_timeout_secs", self.request_timeout_secs, 1..=3600, "seconds"),
            Number::new(
                "http.oidc.session_minutes",
                self.oidc.as_ref().map_or(480, |o| o.session_minutes),
                1..=10_080,
                "minutes",
            ),
            Number::new(
                "http.oidc.clock_skew_secs",
                self.oidc.as_ref().map_or(60, |o| o.clock_skew_secs),
                0..=600,
                "seconds",
            ),
        ]
    }

    pub(super) fn check(&self, config: &super::Config, report: &mut Report) {
        if let Some(tls) = &self.tls {
            for (key, file) in [
                ("http.tls.cert_file", Some(&tls.cert_file)),
                ("http.tls.key_file", Some(&tls.key_file)),
                ("http.tls.client_ca_file", tls.client_ca_file.as_ref()),
            ] {
                let Some(file) = file else { continue };
                if let Err(e) = super::read_named_file(&config.resolve(file), super::TEXT_FILE_LIMIT) {
                    report(key, format!("{}: {e}", config.resolve(file).display()));
                }
            }
        }
        if let Some(oidc) = &self.oidc {
            let https = oidc.issuer.starts_with("https://");
            if !https && !oidc.issuer.starts_with("http://") {
                report("http.oidc.issuer", format!("`{}` is neither https:// nor http://", oidc.issuer));
            }
            if oidc.ca_file.is_some() && !https {
                report("http.oidc.ca_file", "is for an https:// issuer".into());
            }
            if https && oidc.ca_file.is_none() {
                report(
                    "http.oidc.ca_file",
                    "is required for an https:// issuer: the authority of its certificate".into(),
                );
            }
            if let Some(Err(e)) =
                oidc.ca_file.as_ref().map(|f| super::read_named_file(&config.resolve(f), super::TEXT_FILE_LIMIT))
            {
                report("http.oidc.ca_file", e.to_string());
            }
            if oidc.audience.is_empty() {
                report("http.oidc.audience", "must not be empty: tokens for other clients are refused by it".into());
            }
            if oidc.client_id.is_some() && oidc.redirect_url(self.public_url.as_deref()).is_none() {
                report(
                    "http.oidc.redirect_url",
                    "is required for the sign-in (client_id) when http.public_url is unset".into(),
                );
            }
            if oidc.client_id.is_none() && (oidc.client_secret.is_some() || oidc.redirect_url.is_some()) {
                report("http.oidc.client_id", "is required with client_secret and redirect_url".into());
            }
            let roles = [&oidc.viewer_roles, &oidc.radiologist_roles, &oidc.admin_roles];
            if roles.iter().all(|r| r.is_empty()) {
                report("http.oidc.viewer_roles", "no role is mapped: every token would be refused".into());
            }
        }
        if let Some(proxy) = &self.proxy_auth {
            if proxy.trusted_proxies.is_empty() {
                report("http.proxy_auth.trusted_proxies", "is empty: no proxy would be trusted".into());
            }
            for (key, name) in
                [("user_header", Some(&proxy.user_header)), ("roles_header", proxy.roles_header.as_ref())]
            {
                if let Some(name) = name.filter(|n| axum::http::HeaderName::from_bytes(n.as_bytes()).is_err()) {
                    report(&format!("http.proxy_auth.{key}"), format!("`{name}` is not a header name"));
                }
            }
            if !["viewer", "radiologist", "admin"].contains(&proxy.default_role.as_str()) {
                report("http.proxy_auth.default_role", "must be viewer, radiologist or admin".into());
            }
        }
        if self.max_connections_per_client > self.max_connections {
            report("http.max_connections_per_client", "is more than http.max_connections".into());
        }
        let weak = |token: &str| token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control());
        if self.token.as_deref().is_some_and(weak) {
            report("http.token", "must be at least 16 characters, without spaces".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, named) in self.tokens.iter().enumerate() {
            if let Err(m) = check_label(&named.name) {
                report(&format!("http.tokens[{i}].name"), m);
            } else if !seen.insert(named.name.as_str()) {
                report(&format!("http.tokens[{i}].name"), format!("`{}` is used by another token", named.name));
            }
            if weak(&named.token) {
                report(&format!("http.tokens[{i}].token"), "must be at least 16 characters, without spaces".into());
            } else if self.token.as_deref() == Some(named.token.as_str())
                || self.tokens[..i].iter().any(|t| t.token == named.token)
            {
                report(
                    &format!("http.tokens[{i}].token"),
                    "is another token's too: each person needs their own".into(),
                );
            }
        }
    }
}
