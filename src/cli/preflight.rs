//! What `serve` checks before it listens, and `check-config` runs alone: one function, so that
//! a configuration check-config calls OK is one serve starts with.
//!
//! Beyond the file's own keys (`Config::load`), it opens everything the configuration names:
//! the models of production and of each shadow version in ONNX Runtime, as a worker runs them
//! (each file against its manifest's sha256 first), the TLS files of the listener and of each
//! destination, the object store's settings and authority, the database URL's form and the data
//! directory. What needs the network or a running peer (the database answering, the bucket's
//! probe, a port being free) is serve's alone.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use pneumotriage::bucket::Bucket;
use pneumotriage::config::Config;
use pneumotriage::inference::analyse::{AnalyseError, Analyser};
use pneumotriage::inference::find_onnxruntime;
use pneumotriage::pipeline::{Models, Shadow};

/// What the checks opened, for `serve` to use rather than open again.
pub struct Checked {
    /// The first inference worker's models, warmed up, and how long that took (none when
    /// analysis is off).
    pub models: Option<(Models, Duration)>,
    /// The TLS listener's acceptor, when `[dicom.tls]` is set.
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// The HTTPS acceptor, when `[http.tls]` is set.
    pub http_acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub bucket: Option<Arc<Bucket>>,
}

/// Everything that would stop `serve` before it listens, each problem naming the file and the
/// key; or what was opened.
pub fn check(config: &Config) -> Result<Checked, Vec<String>> {
    let source = &config.source;
    let mut problems = Vec::new();
    let models = if config.inference.enabled {
        let configured = config.inference.onnxruntime.as_ref().map(|p| config.resolve(p));
        match find_onnxruntime(configured.as_deref()) {
            Err(e) => {
                problems.push(format!("{source}: inference.onnxruntime: {e}"));
                None
            }
            Ok(_) => open_models(config).map_err(|e| problems.push(format!("{source}: {e}"))).ok(),
        }
    } else {
        None
    };
    problems.extend(
        (0..config.destinations.len())
            .filter_map(|i| pneumotriage::outbox::target(config, i).err())
            .map(|e| e.to_string()),
    );
    let tls_acceptor = pneumotriage::tls::listener_acceptor(config).map_err(|e| problems.push(e.to_string()));
    let http_acceptor = pneumotriage::tls::http_acceptor(config).map_err(|e| problems.push(e.to_string()));
    if let Err(e) = pneumotriage::audit::sender::check(config) {
        problems.push(e);
    }
    let bucket = Bucket::open(config).map_err(|e| problems.push(e));
    sqlx::any::install_default_drivers();
    if let Err(e) = sqlx::any::AnyConnectOptions::from_str(&config.database_url()) {
        let url = pneumotriage::config::redact_url(&config.database_url());
        problems.push(format!("{source}: database.url: {url}: {e}"));
    }
    if let Err(e) = check_data_dir(&config.data_dir()) {
        problems.push(format!("{source}: node.data_dir: {e}"));
    }
    match (tls_acceptor, http_acceptor, bucket) {
        (Ok(tls_acceptor), Ok(http_acceptor), Ok(bucket)) if problems.is_empty() => {
            Ok(Checked { models, tls_acceptor, http_acceptor, bucket })
        }
        _ => Err(problems),
    }
}

/// A manifest whose models cannot be run: its key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source}")]
pub struct ModelsError {
    pub key: String,
    pub source: Box<AnalyseError>,
}

impl ModelsError {
    fn of(key: impl Into<String>) -> impl FnOnce(AnalyseError) -> ModelsError {
        let key = key.into();
        move |e| ModelsError { key, source: Box::new(e) }
    }
}

/// One inference worker's models, production's then each shadow's, as ONNX Runtime sessions,
/// each run once (a warm-up: the first image is then as fast as the next, and a model that loads
/// but cannot run is caught before the node listens); and how long the warm-up took.
pub fn open_models(config: &Config) -> Result<(Models, Duration), ModelsError> {
    let production = Analyser::open(config).map_err(ModelsError::of("inference.models"))?;
    let shadows = config
        .inference
        .shadow
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let analyser =
                Analyser::open_shadow(config, s).map_err(ModelsError::of(format!("inference.shadow[{i}].models")))?;
            Ok(Shadow { name: s.name.clone(), analyser })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut models = Models { production, shadows };
    let mut warm_up = models.production.warm_up().map_err(ModelsError::of("inference.models"))?;
    for (i, shadow) in models.shadows.iter_mut().enumerate() {
        warm_up += shadow.analyser.warm_up().map_err(ModelsError::of(format!("inference.shadow[{i}].models")))?;
    }
    Ok((models, warm_up))
}

/// The data directory is a directory, or can be made one (its nearest existing ancestor is).
fn check_data_dir(dir: &Path) -> Result<(), String> {
    let mut at = dir;
    loop {
        match std::fs::metadata(at) {
            Ok(meta) if meta.is_dir() => return Ok(()),
            Ok(_) => return Err(format!("{} is not a directory", at.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                _ => return Ok(()),
            },
            Err(e) => return Err(format!("{}: {e}", at.display())),
        }
    }
}
