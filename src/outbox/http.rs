//! HTTP(S) POST of one message to a FHIR server or a webhook, and the answer classified for the
//! outbox: delivered, transient (retried with backoff) or permanent (failed until `retry`).
//!
//! - **2xx**: delivered.
//! - **408, 429, 5xx**, no connection, DNS, timeouts, a connection dropped mid-answer: transient.
//! - **Other 4xx** (and 3xx: redirects are not followed, a POST must reach its URL): permanent,
//!   with the FHIR OperationOutcome's `issue[].diagnostics` / `details.text` in the message, or
//!   the start of the body when it is not one (at most [`DETAIL_CHARS`] characters).
//! - **TLS refused** (the server's certificate does not verify against the CA file, the server
//!   wants a client certificate we do not have, no common protocol): permanent, as for DICOM
//!   destinations (`dicom::scu`): retrying cannot fix a configuration on either side, and an
//!   admin who fixes it re-queues with `retry`.
//!
//! The server's certificate is always verified: https needs a CA file, and there is no switch to
//! turn verification off. The CA and client identity are read and checked with the DICOM
//! destinations' own `tls::client_config`, then handed to ureq, whose rustls connector
//! builds the same configuration (ring, TLS 1.2 and 1.3). Blocking: the outbox runs it on a
//! blocking thread. Never reads more than [`MAX_RESPONSE_BYTES`] of an answer.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use super::MessageError;
use crate::config::{Config, Destination};
use crate::tls::{self, TlsSetupError};

/// The webhook's media type.
pub const JSON: &str = "application/json";
/// The most of an answer that is read: an OperationOutcome fits many times over.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;
/// The most of the answer's text kept in a failure.
pub const DETAIL_CHARS: usize = 500;

/// Why an HTTP destination cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("`{0}` is neither http:// nor https:// with a host")]
    Url(String),
    #[error("`{0}` is https: tls.ca_file must name the CA that signs the server's certificate")]
    NoCa(String),
    #[error("`{0}` is plain http: the tls settings need an https:// url")]
    TlsWithoutHttps(String),
    #[error("tls.server_name `{name}` differs from the host of `{url}`: for HTTP the certificate is checked against the url's host, so put that name in the url")]
    ServerName { url: String, name: String },
    #[error("tls.cert_file and tls.key_file go together")]
    HalfIdentity,
    #[error("{path}: {source}")]
    Key { path: PathBuf, source: ureq::Error },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
}

/// The TLS files of an HTTPS destination, paths already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTls {
    /// PEM certificates of the authorities that sign the server's certificate.
    pub ca_file: PathBuf,
    /// Our certificate chain and private key (PEM), for servers that ask for one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must carry; only the url's host is supported.
    pub server_name: Option<String>,
}

impl HttpTls {
    /// The files of a `[*.tls]` table, resolved against the configuration's directory.
    fn of(config: &Config, tls: Option<&crate::config::DestinationTls>) -> Result<Option<HttpTls>, HttpSetupError> {
        let Some(t) = tls else { return Ok(None) };
        if t.cert_file.is_some() != t.key_file.is_some() {
            return Err(HttpSetupError::HalfIdentity);
        }
        Ok(Some(HttpTls {
            ca_file: config.resolve(&t.ca_file),
            identity: t
                .cert_file
                .as_ref()
                .zip(t.key_file.as_ref())
                .map(|(c, k)| (config.resolve(c), config.resolve(k))),
            server_name: t.server_name.clone(),
        }))
    }
}

/// One HTTP destination: where to POST and how, with a connection pool of its own.
pub struct HttpTarget {
    /// The base URL (FHIR) or the endpoint (webhook), without a trailing `/`.
    url: String,
    /// `Authorization: Bearer`, FHIR only.
    bearer_token: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for HttpTarget {
    // The token stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("url", &self.url)
            .field("bearer_token", &self.bearer_token.is_some())
            .finish()
    }
}

impl HttpTarget {
    /// A target for `url`, with `tls` required for https, `bearer_token` sent with every
    /// request, and `timeout` for the whole exchange (connect, send, answer).
    pub fn new(
        url: &str,
        tls: Option<&HttpTls>,
        bearer_token: Option<&str>,
        timeout: Duration,
    ) -> Result<HttpTarget, HttpSetupError> {
        let uri: ureq::http::Uri = url.parse().map_err(|_| HttpSetupError::Url(url.to_owned()))?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| HttpSetupError::Url(url.to_owned()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpSetupError::Url(url.to_owned())),
        };
        let tls_config = match (https, tls) {
            (true, None) => return Err(HttpSetupError::NoCa(url.to_owned())),
            (false, Some(_)) => return Err(HttpSetupError::TlsWithoutHttps(url.to_owned())),
            (false, None) => TlsConfig::default(),
            (true, Some(tls)) => {
                if let Some(name) = tls.server_name.as_deref().filter(|n| !n.eq_ignore_ascii_case(host)) {
                    return Err(HttpSetupError::ServerName { url: url.to_owned(), name: name.to_owned() });
                }
                tls_config(tls)?
            }
        };
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // The status is classified here, with the body's OperationOutcome.
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            // A hospital's proxy variables are not meant for the RIS next door.
            .proxy(None)
            .https_only(https)
            .tls_config(tls_config)
            .user_agent(concat!("pneumotriage/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(HttpTarget {
            url: url.trim_end_matches('/').to_owned(),
            bearer_token: bearer_token.filter(|t| !t.is_empty()).map(str::to_owned),
            agent: config.into(),
        })
    }

    /// The target of a `fhir`, `webhook` or `dicomweb` destination: its url, tls files (resolved
    /// against the configuration's directory), bearer token and timeout.
    pub fn for_destination(config: &Config, destination: &Destination) -> Result<HttpTarget, HttpSetupError> {
        let url = destination.url.as_deref().unwrap_or_default();
        let token = (destination.fhir.as_ref().and_then(|f| f.bearer_token.as_deref()))
            .or(destination.dicomweb.as_ref().and_then(|d| d.bearer_token.as_deref()));
        let tls = HttpTls::of(config, destination.tls.as_ref())?;
        HttpTarget::new(url, tls.as_ref(), token, Duration::from_secs(destination.timeout_secs))
    }

    /// The target of a `dicomweb` source, as of a destination.
    pub fn for_source(config: &Config, source: &crate::config::Source) -> Result<HttpTarget, HttpSetupError> {
        let url = source.url.as_deref().unwrap_or_default();
        let token = source.dicomweb.as_ref().and_then(|d| d.bearer_token.as_deref());
        let tls = HttpTls::of(config, source.tls.as_ref())?;
        HttpTarget::new(url, tls.as_ref(), token, Duration::from_secs(source.timeout_secs))
    }

    /// GETs the URL plus `path_and_query` with `Accept: accept`: the answer when it is 200,
    /// else the failure classified as a POST's is (the start of the body explaining it).
    pub fn get(&self, path_and_query: &str, accept: &str) -> Result<ureq::http::Response<ureq::Body>, MessageError> {
        let url = format!("{}/{}", self.url, path_and_query.trim_start_matches('/'));
        let mut request = self.agent.get(&url).header("Accept", accept);
        if let Some(token) = &self.bearer_token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.call().map_err(|e| transport_error(&url, e))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(response);
        }
        let mut answer = Vec::new();
        let _ = response.into_body().into_reader().take(MAX_RESPONSE_BYTES).read_to_end(&mut answer);
        let failure = match classify(status, &answer, None) {
            Ok(()) => MessageError::Permanent(format!("HTTP {status}, not 200")),
            Err(e) => e,
        };
        Err(match failure {
            MessageError::Transient(m) => MessageError::Transient(format!("{url}: {m}")),
            MessageError::Permanent(m) => MessageError::Permanent(format!("{url}: {m}")),
        })
    }

    /// The URL a POST goes to: the base, or the base and `path_suffix`.
    pub fn url(&self, path_suffix: Option<&str>) -> String {
        match path_suffix.map(|s| s.trim_start_matches('/')).filter(|s| !s.is_empty()) {
            Some(suffix) => format!("{}/{suffix}", self.url),
            None => self.url.clone(),
        }
    }

    /// POSTs `body` to the URL (plus `path_suffix`), with `headers` (a `Content-Type` among
    /// them replaces the default `application/json`), and classifies the answer.
    pub fn post_json(
        &self,
        path_suffix: Option<&str>,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> Result<(), MessageError> {
        let url = self.url(path_suffix);
        let (status, answer, location) = self.post(path_suffix, body, headers)?;
        classify(status, &answer, location.as_deref()).map_err(|e| match e {
            MessageError::Transient(m) => MessageError::Transient(format!("{url}: {m}")),
            MessageError::Permanent(m) => MessageError::Permanent(format!("{url}: {m}")),
        })
    }

    /// POSTs `body` as `post_json` does; the status, the start of the answer (at most
    /// [`MAX_RESPONSE_BYTES`]) and its Location. A failure before any answer is classified.
    pub fn post(
        &self,
        path_suffix: Option<&str>,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> Result<(u16, Vec<u8>, Option<String>), MessageError> {
        let url = self.url(path_suffix);
        let mut request = self.agent.post(&url);
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
            request = request.header("Content-Type", JSON);
        }
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        if let Some(token) = &self.bearer_token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = request.send(body).map_err(|e| transport_error(&url, e))?;
        let status = response.status().as_u16();
        let location = response.headers().get("location").and_then(|l| l.to_str().ok()).map(str::to_owned);
        let mut answer = Vec::new();
        // A short read is fine: the answer only explains a failure.
        let _ = response.into_body().into_reader().take(MAX_RESPONSE_BYTES).read_to_end(&mut answer);
        Ok((status, answer, location))
    }
}

/// ureq's TLS settings from the files, checked first by the DICOM destinations' own loader so
/// that a bad file is named at start-up, not at the first send.
pub(crate) fn tls_config(tls: &HttpTls) -> Result<TlsConfig, HttpSetupError> {
    let identity = tls.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    tls::client_config(&tls.ca_file, identity)?;
    let roots: Vec<Certificate<'static>> =
        tls::certificates(&tls.ca_file)?.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
    let client_cert = match &tls.identity {
        None => None,
        Some((cert_file, key_file)) => {
            let chain: Vec<Certificate<'static>> =
                tls::certificates(cert_file)?.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
            // ureq takes the key as PEM (its key kinds are private); our loader has read it.
            let key_error = |source| HttpSetupError::Key { path: key_file.clone(), source };
            let pem = crate::config::read_named_file(key_file, crate::config::TEXT_FILE_LIMIT)
                .map_err(|e| key_error(ureq::Error::Io(e)))?;
            let key = PrivateKey::from_pem(&pem).map_err(key_error)?;
            Some(ClientCert::new_with_certs(&chain, key))
        }
    };
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .client_cert(client_cert)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

/// A failure before any answer: TLS refusals are permanent, everything else transient.
fn transport_error(url: &str, e: ureq::Error) -> MessageError {
    let tls_refused = match &e {
        ureq::Error::Io(io) => io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()),
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) | ureq::Error::Pem(_) => true,
        _ => false,
    };
    let message = format!("{url}: {e}");
    match &e {
        _ if tls_refused => MessageError::Permanent(format!("{url}: TLS refused: {e}")),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::RequireHttpsOnly(_) => {
            MessageError::Permanent(message)
        }
        _ => MessageError::Transient(message),
    }
}

/// The outbox's verdict on an HTTP status and the start of its body.
pub fn classify(status: u16, body: &[u8], location: Option<&str>) -> Result<(), MessageError> {
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(MessageError::Transient(format!("HTTP {status}: {}", detail(body)))),
        300..=399 => Err(MessageError::Permanent(format!(
            "HTTP {status}: redirected to {}; set url to the address that answers",
            location.unwrap_or("(no Location)")
        ))),
        _ => Err(MessageError::Permanent(format!("HTTP {status}: {}", detail(body)))),
    }
}

/// What an answer says: an OperationOutcome's issues, else the body's start, one line, bounded.
pub fn detail(body: &[u8]) -> String {
    let text = operation_outcome(body).unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let bounded = crate::logging::peer_text(one_line.as_bytes(), DETAIL_CHARS);
    if bounded.is_empty() {
        "(no body)".into()
    } else {
        bounded
    }
}

/// The issues of a FHIR OperationOutcome, `severity code: diagnostics (details)` each.
fn operation_outcome(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    if value.get("resourceType")?.as_str()? != "OperationOutcome" {
        return None;
    }
    let issues: Vec<String> = value
        .get("issue")?
        .as_array()?
        .iter()
        .map(|issue| {
            let field = |key: &str| issue.get(key).and_then(|v| v.as_str()).unwrap_or_default();
            let details = issue.pointer("/details/text").and_then(|v| v.as_str()).unwrap_or_default();
            let said: Vec<&str> = [field("diagnostics"), details].into_iter().filter(|s| !s.is_empty()).collect();
            format!("{} {}: {}", field("severity"), field("code"), said.join(" / "))
        })
        .collect();
    Some(format!("OperationOutcome: {}", issues.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transient(r: Result<(), MessageError>) -> bool {
        matches!(r, Err(MessageError::Transient(_)))
    }

    fn permanent(r: Result<(), MessageError>) -> String {
        match r {
            Err(MessageError::Permanent(m)) => m,
            other => panic!("not permanent: {other:?}"),
        }
    }

    #[test]
    fn success_statuses_are_delivered() {
        for status in [200, 201, 202, 204] {
            assert_eq!(classify(status, b"", None), Ok(()));
        }
    }

    #[test]
    fn timeouts_throttling_and_server_errors_are_transient() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(transient(classify(status, b"busy", None)), "{status}");
        }
    }

    #[test]
    fn other_client_errors_are_permanent_with_the_operation_outcome() {
        let outcome = br#"{"resourceType":"OperationOutcome","issue":[
            {"severity":"error","code":"invalid","diagnostics":"Observation.status: unknown code"},
            {"severity":"error","code":"required","details":{"text":"Task.intent is required"}}]}"#;
        let m = permanent(classify(400, outcome, None));
        assert!(m.starts_with("HTTP 400: OperationOutcome:"), "{m}");
        assert!(m.contains("error invalid: Observation.status: unknown code"), "{m}");
        assert!(m.contains("Task.intent is required"), "{m}");
        for status in [401, 403, 404, 409, 412, 422] {
            permanent(classify(status, b"", None));
        }
    }

    #[test]
    fn redirects_are_permanent_and_name_the_new_address() {
        let m = permanent(classify(301, b"", Some("https://new.example/fhir")));
        assert!(m.contains("https://new.example/fhir"), "{m}");
    }

    #[test]
    fn a_body_that_is_not_an_outcome_is_kept_short_and_on_one_line() {
        let long = format!("<html>\n<body>{}</body></html>", "x".repeat(2000));
        let d = detail(long.as_bytes());
        assert!(d.starts_with("<html> <body>xxx"), "{d}");
        assert_eq!(d.chars().count(), DETAIL_CHARS + 1);
        assert_eq!(detail(b""), "(no body)");
        assert_eq!(detail(&[0xff, 0xfe]), "\u{fffd}\u{fffd}");
    }

    #[test]
    fn https_needs_a_ca_and_urls_are_checked() {
        let t = Duration::from_secs(1);
        assert!(matches!(HttpTarget::new("https://fhir.example/r4", None, None, t), Err(HttpSetupError::NoCa(_))));
        assert!(matches!(HttpTarget::new("ftp://fhir.example/", None, None, t), Err(HttpSetupError::Url(_))));
        assert!(matches!(HttpTarget::new("not a url", None, None, t), Err(HttpSetupError::Url(_))));
        let tls = HttpTls { ca_file: "/nonexistent/ca.pem".into(), identity: None, server_name: None };
        assert!(matches!(
            HttpTarget::new("http://fhir.example/", Some(&tls), None, t),
            Err(HttpSetupError::TlsWithoutHttps(_))
        ));
        assert!(matches!(HttpTarget::new("https://fhir.example/", Some(&tls), None, t), Err(HttpSetupError::Tls(_))));
        let named = HttpTls { server_name: Some("other.example".into()), ..tls };
        assert!(matches!(
            HttpTarget::new("https://fhir.example/", Some(&named), None, t),
            Err(HttpSetupError::ServerName { .. })
        ));
    }

    #[test]
    fn suffixes_join_the_base_with_one_slash() {
        let target =
            HttpTarget::new("http://fhir.example/r4/", None, Some("t"), Duration::from_secs(1)).expect("valid");
        assert_eq!(target.url(None), "http://fhir.example/r4");
        assert_eq!(target.url(Some("/Bundle")), "http://fhir.example/r4/Bundle");
        assert!(!format!("{target:?}").contains("\"t\""), "the token stays out of Debug");
    }

    #[test]
    fn nothing_listening_is_transient() {
        // Bind then drop: the port is very likely free for the instant of the test.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let port = port.expect("a local port");
        let target =
            HttpTarget::new(&format!("http://127.0.0.1:{port}/"), None, None, Duration::from_secs(2)).expect("valid");
        assert!(transient(target.post_json(None, b"{}", &[])));
    }
}
