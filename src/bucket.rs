//! The object store (`[object_store]`: S3, MinIO, Ceph RGW) that keeps the durable copy of the
//! spool's instances and of the objects the node makes, so that every node sharing the database
//! can read them without a shared file system. The directories under `data_dir` are then caches:
//! a file is written there first (the node reads it from there), stored in the bucket before its
//! rows are committed, and fetched back on a node that lacks it.
//!
//! Keys are `<prefix>/spool/<path>` and `<prefix>/outputs/<path>`, the paths those of the
//! database's rows (built from sanitized UIDs only, see [`crate::spool::relative_path`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, PutMode, PutPayload, RetryConfig};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::config::{Config, ObjectStoreConfig};

/// Which of the node's folders a file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Received instances (`data_dir/spool`).
    Spool,
    /// The objects made of results (`data_dir/outputs`).
    Outputs,
}

impl Area {
    fn key(self, relative: &str) -> Result<Key, BucketError> {
        let folder = match self {
            Area::Spool => "spool",
            Area::Outputs => "outputs",
        };
        Key::parse(format!("{folder}/{relative}"))
            .map_err(|e| BucketError::Other { key: relative.to_string(), message: e.to_string() })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("{key} is not in the object store")]
    Missing { key: String },
    #[error("the object store holds other bytes under {key} (another node is storing this instance now)")]
    Conflict { key: String },
    #[error("object store, {key}: {message}")]
    Other { key: String, message: String },
    #[error("local copy {path}: {source}")]
    Local { path: String, source: std::io::Error },
}

/// A bucket opened from `[object_store]`.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket/prefix`, for messages.
    url: String,
    /// Bounds the bytes held in memory by uploads in progress (a PUT sends a whole file).
    upload_budget: Semaphore,
    fetches: AtomicU64,
}

/// At most this many MiB of files are held in memory for uploads at once.
const UPLOAD_BUDGET_MIB: u32 = 1024;
/// An instance object younger than this, without rows, may be another node's being committed;
/// an older one was never acknowledged and may be replaced.
pub const UNCOMMITTED_MIN_AGE: Duration = Duration::from_secs(600);

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Bucket {
    /// The bucket `[object_store]` names, if any. Fails, naming the key, when the settings
    /// cannot make a client (no request is made yet: see [`Bucket::check`]).
    pub fn open(config: &Config) -> Result<Option<Arc<Bucket>>, String> {
        let Some(settings) = &config.object_store else { return Ok(None) };
        let problem = |key: &str, e: &dyn std::fmt::Display| format!("{}: object_store.{key}: {e}", config.source);
        let (bucket, prefix) = settings.bucket_and_prefix().map_err(|e| problem("url", &e))?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(&settings.region)
            .with_conditional_put(S3ConditionalPut::ETagMatch)
            .with_client_options(client_options(config, settings).map_err(|e| problem("ca_file", &e))?)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(settings.timeout_secs),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &settings.endpoint {
            // MinIO and Ceph RGW serve buckets as paths, not as host names
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret);
        }
        let s3 = builder.build().map_err(|e| problem("url", &e))?;
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, prefix)) };
        Ok(Some(Arc::new(Bucket {
            store,
            url: settings.url.trim_end_matches('/').to_string(),
            upload_budget: Semaphore::new(UPLOAD_BUDGET_MIB as usize),
            fetches: AtomicU64::new(0),
        })))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes, reads back and removes a small object: the bucket exists and these credentials
    /// may use it (at start-up, so that a wrong key stops the node rather than every C-STORE).
    pub async fn check(&self, node: &str) -> Result<(), BucketError> {
        let key = Key::from_iter(["probe", node]);
        let fail = |e: object_store::Error| BucketError::Other { key: key.to_string(), message: e.to_string() };
        self.store.put(&key, PutPayload::from_static(b"pneumotriage")).await.map_err(fail)?;
        self.store.get(&key).await.map_err(fail)?.bytes().await.map_err(fail)?;
        self.store.delete(&key).await.map_err(fail)
    }

    /// Stores the local file `local` as `relative` of `area`. An instance is never overwritten
    /// while it may be another node's: when its key is taken, the same bytes count as stored
    /// (a retry, or recovery after a crash between the upload and the commit), other bytes are
    /// refused ([`BucketError::Conflict`]) unless the object is older than
    /// [`UNCOMMITTED_MIN_AGE`] (an upload that was never committed, so never acknowledged).
    /// Outputs have new UIDs each and simply overwrite.
    pub async fn upload(&self, area: Area, relative: &str, local: &Path) -> Result<(), BucketError> {
        timed("upload", self.put(area, relative, local)).await
    }

    async fn put(&self, area: Area, relative: &str, local: &Path) -> Result<(), BucketError> {
        let key = area.key(relative)?;
        let local_err = |source| BucketError::Local { path: local.display().to_string(), source };
        let size = tokio::fs::metadata(local).await.map_err(local_err)?.len();
        let mib = u32::try_from(size.div_ceil(1 << 20)).unwrap_or(u32::MAX).clamp(1, UPLOAD_BUDGET_MIB);
        let _budget = self.upload_budget.acquire_many(mib).await.expect("the upload budget is never closed");
        let bytes = bytes::Bytes::from(tokio::fs::read(local).await.map_err(local_err)?);
        let fail = |e: object_store::Error| BucketError::Other { key: key.to_string(), message: e.to_string() };
        let mode = match area {
            Area::Spool => PutMode::Create,
            Area::Outputs => PutMode::Overwrite,
        };
        match self.store.put_opts(&key, PutPayload::from_bytes(bytes.clone()), mode.into()).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                let existing = self.store.get(&key).await.map_err(fail)?;
                let age =
                    std::time::SystemTime::now().duration_since(existing.meta.last_modified.into()).unwrap_or_default();
                if existing.bytes().await.map_err(fail)? == bytes {
                    Ok(())
                } else if age >= UNCOMMITTED_MIN_AGE {
                    self.store.put(&key, PutPayload::from_bytes(bytes)).await.map(drop).map_err(fail)
                } else {
                    Err(BucketError::Conflict { key: key.to_string() })
                }
            }
            Err(e) => Err(fail(e)),
        }
    }

    /// Deletes `relative` of `area` (retention); one that is gone already counts as deleted.
    pub async fn delete(&self, area: Area, relative: &str) -> Result<(), BucketError> {
        let key = area.key(relative)?;
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(BucketError::Other { key: key.to_string(), message: e.to_string() }),
        }
    }

    /// Every object of `area`: its path (as the rows spell it) and its age.
    pub async fn list(&self, area: Area) -> Result<Vec<(String, Duration)>, BucketError> {
        let folder = area.key("x")?.parts().next().map(|p| p.as_ref().to_string()).unwrap_or_default();
        let prefix = Key::from(folder.as_str());
        let fail = |e: object_store::Error| BucketError::Other { key: prefix.to_string(), message: e.to_string() };
        let mut listing = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(fail)?;
            let Some(relative) = meta.location.as_ref().strip_prefix(&format!("{folder}/")).map(str::to_string) else {
                continue;
            };
            let age = std::time::SystemTime::now().duration_since(meta.last_modified.into()).unwrap_or_default();
            out.push((relative, age));
        }
        Ok(out)
    }

    /// Copies `relative` of `area` to `local` unless it is there already (a file is renamed into
    /// place whole, so one that exists is complete).
    pub async fn fetch(&self, area: Area, relative: &str, local: &Path) -> Result<(), BucketError> {
        if tokio::fs::try_exists(local).await.unwrap_or(false) {
            return Ok(());
        }
        timed("fetch", self.get(area, relative, local)).await
    }

    async fn get(&self, area: Area, relative: &str, local: &Path) -> Result<(), BucketError> {
        let key = area.key(relative)?;
        let fail = |e: object_store::Error| match e {
            object_store::Error::NotFound { .. } => BucketError::Missing { key: key.to_string() },
            e => BucketError::Other { key: key.to_string(), message: e.to_string() },
        };
        let local_err = |source| BucketError::Local { path: local.display().to_string(), source };
        let mut stream = self.store.get(&key).await.map_err(fail)?.into_stream();
        let dir = local.parent().expect("cached files have a directory");
        tokio::fs::create_dir_all(dir).await.map_err(local_err)?;
        // a name `Spool::list` never takes for an instance
        let n = self.fetches.fetch_add(1, Ordering::Relaxed);
        let temp = local.with_extension(format!("fetch-{}-{n}", std::process::id()));
        let copied = async {
            let mut file = tokio::fs::File::create(&temp).await.map_err(local_err)?;
            while let Some(chunk) = stream.next().await {
                file.write_all(&chunk.map_err(fail)?).await.map_err(local_err)?;
            }
            file.flush().await.map_err(local_err)?;
            tokio::fs::rename(&temp, local).await.map_err(local_err)
        }
        .await;
        if copied.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        copied
    }
}

/// Runs an operation and counts it, by its outcome, in `pneumotriage_object_store_seconds`.
async fn timed(
    operation: &'static str,
    work: impl std::future::Future<Output = Result<(), BucketError>>,
) -> Result<(), BucketError> {
    let started = std::time::Instant::now();
    let result = work.await;
    let outcome = match &result {
        Ok(()) => "ok",
        Err(BucketError::Missing { .. }) => "missing",
        Err(BucketError::Conflict { .. }) => "conflict",
        Err(_) => "error",
    };
    crate::metrics::object_store(operation, outcome, started.elapsed());
    result
}

/// Timeouts for one request, and the authority of a private endpoint.
fn client_options(config: &Config, settings: &ObjectStoreConfig) -> Result<ClientOptions, String> {
    let mut options = ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(settings.timeout_secs));
    if let Some(file) = &settings.ca_file {
        let path = config.resolve(file);
        let pem = crate::config::read_named_file(&path, crate::config::TEXT_FILE_LIMIT)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let certificate = object_store::Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        options = options.with_root_certificate(certificate);
    }
    Ok(options)
}
