//! Signing in with the hospital's identity provider: a real OpenID provider (npm's
//! oidc-provider, OpenID Certified, started by the test with its own key) whose access tokens
//! open the API with the role their claims give; tokens minted by PyJWT with the provider's key
//! (and with another) for the refusals.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{self, free_port, http_request, python, storescu, synthetic_positive, text, tool, Backend, Setup};

const AUDIENCE: &str = "pneumotriage";

/// oidc-provider on a port of its own, signing with `keys/provider.jwk.json`; stopped when dropped.
struct OidcProvider {
    child: Child,
    issuer: String,
    keys: PathBuf,
}

impl OidcProvider {
    /// With a client for the node whose sign-in comes back to `redirect`.
    fn start(dir: &Path, redirect: &str) -> OidcProvider {
        let keys = dir.join("keys");
        let made = Command::new(python()).arg(tool("jwt_tool.py")).arg("keys").arg(&keys).output().unwrap();
        assert!(made.status.success(), "{}", text(&made));
        let port = free_port();
        let oidc = tool("oidc");
        assert!(oidc.join("node_modules/oidc-provider").is_dir(), "scripts/test installs oidc-provider (npm ci)");
        let mut child = Command::new("node")
            .arg(oidc.join("provider.mjs"))
            .arg(port.to_string())
            .arg(keys.join("provider.jwk.json"))
            .arg(AUDIENCE)
            .arg(redirect)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), format!("listening on {port}"));
        // it goes on writing notices: read them, or it dies of a closed pipe
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        OidcProvider { child, issuer: format!("http://127.0.0.1:{port}"), keys }
    }

    /// An access token: `key` (`provider.pem` or `rogue.pem`), its claims, valid for
    /// `expires_in` seconds from now (negative: expired that long ago).
    fn mint(&self, key: &str, issuer: &str, audience: &str, user: &str, roles: &str, expires_in: i64) -> String {
        let out = Command::new(python())
            .arg(tool("jwt_tool.py"))
            .arg("mint")
            .arg(self.keys.join(key))
            .args(["provider-key", issuer, audience, user, roles, &expires_in.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A token as the provider would issue it for `user` with `roles`, valid for five minutes.
    fn token(&self, user: &str, roles: &str) -> String {
        self.mint("provider.pem", &self.issuer, AUDIENCE, user, roles, 300)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A positive image sent to the node and analysed: its Study Instance UID and its result's id.
fn analysed_positive(setup: &Setup) -> (String, i64) {
    let image = synthetic_positive(&setup.dir.path().join("images"));
    let sent = storescu(setup.port, &[], &[&image]);
    assert!(sent.status.success(), "{}", text(&sent));
    setup.wait_count("SELECT COUNT(*) FROM results", 1);
    (crate::common::study_instance_uid(&image), setup.count("SELECT id FROM results"))
}

fn request(setup: &Setup, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    let bearer = format!("Bearer {token}");
    let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let (status, _, body) = http_request(setup.http_port, method, path, &headers, body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The API takes the provider's tokens: a radiologist records a verdict under the name the
/// provider gives; a viewer reads and may not; a token from another issuer, for another
/// audience, expired, with a bad signature or without a role is refused, each saying why.
#[test]
fn the_api_accepts_the_providers_tokens_with_their_roles_and_refuses_the_rest() {
    let mut setup = Setup::analysing(Backend::Sqlite, "");
    let provider = OidcProvider::start(setup.dir.path(), "http://127.0.0.1:1/auth/callback");
    setup.http = format!("[http.oidc]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n", provider.issuer);
    setup.write_config("", "", common::DEFAULT_PEERS);
    let node = setup.start();
    node.wait_for_log("the API accepts the provider's access tokens");
    let (_, result) = analysed_positive(&setup);
    let verdict = format!("/api/results/{result}/verdict");

    let house = provider.token("dr.house", "radiologist");
    assert_eq!(request(&setup, "GET", "/api/studies", &house, "").0, 200);
    let (status, body) = request(&setup, "POST", &verdict, &house, r#"{"verdict": "agree"}"#);
    assert_eq!(status, 201, "{body}");
    let recorded: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(recorded["reviewer"], "dr.house", "the verdict names the provider's user: {body}");

    let joy = provider.token("nurse.joy", "viewer");
    assert_eq!(request(&setup, "GET", "/api/studies", &joy, "").0, 200, "a viewer reads");
    let (status, body) = request(&setup, "POST", &verdict, &joy, r#"{"verdict": "disagree"}"#);
    assert_eq!(status, 403, "a viewer records no verdict: {body}");
    assert!(body.contains("radiologist role"), "{body}");

    let refused = [
        (
            provider.mint("provider.pem", "http://127.0.0.1:1/other", AUDIENCE, "dr.house", "radiologist", 300),
            "another issuer",
        ),
        (
            provider.mint("provider.pem", &provider.issuer, "another-client", "dr.house", "radiologist", 300),
            "another audience",
        ),
        (provider.mint("provider.pem", &provider.issuer, AUDIENCE, "dr.house", "radiologist", -600), "expired"),
        (provider.mint("rogue.pem", &provider.issuer, AUDIENCE, "dr.house", "radiologist", 300), "does not verify"),
        (provider.token("mallory", ""), "no role"),
    ];
    for (token, why) in refused {
        let (status, body) = request(&setup, "GET", "/api/studies", &token, "");
        assert_eq!(status, 401, "{why}: {body}");
        assert!(body.contains(why), "{why}: {body}");
    }
    let verdicts = setup.count("SELECT COUNT(*) FROM verdicts");
    assert_eq!(verdicts, 1, "only dr.house's verdict");
}

/// The node's page signs people in with a provider started for it, at `http://localhost:PORT`
/// (Chromium keeps a Secure cookie from localhost, a secure context; a site has HTTPS): the
/// provider, and that public URL.
fn sign_in_on_the_page(setup: &mut Setup) -> (OidcProvider, String) {
    let public = format!("http://localhost:{}", setup.http_port);
    let provider = OidcProvider::start(setup.dir.path(), &format!("{public}/auth/callback"));
    setup.http = format!(
        "public_url = \"{public}/\"\n[http.oidc]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\n\
         client_id = \"{AUDIENCE}\"\nclient_secret = \"a-client-secret-for-the-node\"\n",
        provider.issuer
    );
    setup.write_config("", "", common::DEFAULT_PEERS);
    (provider, public)
}

/// A radiologist signs in on the page in headless Chromium (the provider's login form and
/// consent), opens the study and records a verdict, which the API shows under the provider's
/// name for them; after Sign out the session cookie opens nothing.
#[test]
fn a_radiologist_signs_in_on_the_page_and_records_a_verdict() {
    let mut setup = Setup::analysing(Backend::Sqlite, "");
    let (_provider, public) = sign_in_on_the_page(&mut setup);
    let node = setup.start();
    let (study, result) = analysed_positive(&setup);

    let out = Command::new(python())
        .arg(tool("page_signin.py"))
        .args([&format!("{public}/"), "dr.house", &study, &result.to_string(), "agree", "small apical"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), node.log());
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(page["you"].as_str().unwrap().contains("dr.house (radiologist)"), "{page}");
    assert_eq!(page["signed_out"], true, "{page}");
    let reviewers: Vec<(String,)> = setup.with_store(async |store| {
        sqlx::query_as("SELECT reviewer FROM verdicts").fetch_all(store.pool()).await.unwrap()
    });
    assert_eq!(reviewers, [("dr.house".to_string(),)], "the verdict names the provider's user");
    let log = node.log();
    assert!(log.contains("signed in") && log.contains("signed out"), "{log}");

    // the session's cookie after sign-out: nothing
    let cookie = format!("pneumotriage_session={}", page["cookie"].as_str().unwrap());
    let (status, _, body) = http_request(setup.http_port, "GET", "/api/studies", &[("Cookie", &cookie)], "").unwrap();
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let offered: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(offered["sign_in"], "/auth/login", "the 401 offers the sign-in");
}

/// A sign-in's state is tied to the browser that started it: the callback of someone else's
/// half-finished sign-in (a link an insider sends, to swap the victim into their account) is
/// refused before the code is exchanged, and does not spend the attempt.
#[test]
fn a_callback_from_another_browser_is_refused() {
    let mut setup = Setup::new(Backend::Sqlite);
    let (_provider, _) = sign_in_on_the_page(&mut setup);
    let _node = setup.start();
    let (status, head, _) = http_request(setup.http_port, "GET", "/auth/login", &[], "").unwrap();
    assert_eq!(status, 303, "{head}");
    let state = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: pneumotriage_signin=")
                .or_else(|| l.strip_prefix("Set-Cookie: pneumotriage_signin="))
        })
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("a sign-in cookie: {head}"))
        .to_string();
    assert!(head.contains(&format!("state={state}")), "the cookie holds the state the provider is given: {head}");
    assert!(head.to_lowercase().contains("httponly") && head.contains("Path=/auth"), "{head}");

    let callback = format!("/auth/callback?code=a-code&state={state}");
    let (status, _, body) = http_request(setup.http_port, "GET", &callback, &[], "").unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not started in this browser"), "{body}");
    // the browser that started it gets as far as the provider (which knows no such code)
    let cookie = format!("pneumotriage_signin={state}");
    let (status, _, body) = http_request(setup.http_port, "GET", &callback, &[("Cookie", &cookie)], "").unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("not started in this browser") && !body.contains("no sign-in under way"), "{body}");
}

/// Behind a reverse proxy that signs people in: the user and roles it names in its headers are
/// taken from its address only; the same headers from any other address are refused.
#[test]
fn a_trusted_proxy_names_the_user_and_no_one_else_may() {
    let mut setup = Setup::analysing(Backend::Sqlite, "");
    let proxy = |trusted: &str| {
        format!(
            "[http.proxy_auth]\ntrusted_proxies = [\"{trusted}\"]\nuser_header = \"X-Forwarded-User\"\n\
             roles_header = \"X-Forwarded-Roles\"\n"
        )
    };
    setup.http = proxy("127.0.0.1");
    setup.write_config("", "", common::DEFAULT_PEERS);
    let node = setup.start();
    let (_, result) = analysed_positive(&setup);
    let verdict = format!("/api/results/{result}/verdict");
    let as_proxy = |roles: &str, method: &str, path: &str, body: &str| {
        let headers =
            [("X-Forwarded-User", "dr.who"), ("X-Forwarded-Roles", roles), ("Content-Type", "application/json")];
        let (status, _, body) = http_request(setup.http_port, method, path, &headers, body).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (status, body) = as_proxy("viewer", "POST", &verdict, r#"{"verdict": "agree"}"#);
    assert_eq!(status, 403, "a viewer: {body}");
    let (status, body) = as_proxy("viewer,radiologist", "POST", &verdict, r#"{"verdict": "agree"}"#);
    assert_eq!(status, 201, "{body}");
    assert!(body.contains("\"reviewer\":\"dr.who\""), "{body}");
    assert_eq!(http_request(setup.http_port, "GET", "/api/studies", &[], "").unwrap().0, 401, "no header, no token");
    drop(node);

    // the same headers from an address that is not the proxy's
    setup.http = proxy("10.9.9.9");
    setup.write_config("", "", common::DEFAULT_PEERS);
    let _node = setup.start();
    let (status, body) = as_proxy("admin", "GET", "/api/studies", "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("not http.proxy_auth's"), "{body}");
}
