//! Database access: one connection pool over SQLite or PostgreSQL, chosen by `database.url`.
//!
//! Both backends run the same queries through sqlx's `Any` driver; only the migrations differ
//! (kept per backend under `migrations/`). This module owns every SQL statement of the node;
//! nothing else builds SQL.

mod audit;
mod deliveries;
mod ingest;
mod jobs;
mod listing;
mod messages;
mod retention;
mod shadow;
mod verdicts;
pub mod worklist;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Connection, Executor, Row};
use tokio::sync::Notify;

/// The outputs made of the images of the study whose id is `$study` (an SQL expression), as a
/// table: every column of `outputs` and the SOP Instance UID of the source image (`source_uid`).
/// An output comes of a result or of a "not analysed" notice: one join chain each, from the
/// instances of the study through indexes (a join on either column would read every output).
/// The CROSS JOINs fix the order for SQLite, which never reorders them; PostgreSQL does as it
/// likes. (No apostrophes here: the test below pairs quotes across this file.)
macro_rules! study_outputs {
    ($study:literal) => {
        concat!(
            "(SELECT o.*, i.sop_instance_uid AS source_uid \
              FROM instances i CROSS JOIN results r CROSS JOIN outputs o \
              WHERE i.study_id = ",
            $study,
            " AND r.instance_id = i.id AND o.result_id = r.id \
             UNION ALL SELECT o.*, i.sop_instance_uid AS source_uid \
              FROM instances i CROSS JOIN notices n CROSS JOIN outputs o \
              WHERE i.study_id = ",
            $study,
            " AND n.instance_id = i.id AND o.notice_id = n.id)"
        )
    };
}
pub(crate) use study_outputs;

pub use audit::AuditRow;
pub use deliveries::{ClaimedDelivery, DeliveryRow, Recipient};
pub use ingest::{Event, NewInstance, PreviousVersion, Recorded};
pub use jobs::{ClaimedJob, Finished, InterruptedJobs, JobEnd, JobScope, NewOutput, NewResult, Requeue};
pub use listing::{InstanceRow, StudyRow};
pub use messages::{control_id, not_analysed_control_id, ClaimedMessage, MessageRow};
pub use retention::{Cutoffs, FileRows, Kept, Releasable, Released};
pub use shadow::{NewShadowResult, ShadowPair};
pub use verdicts::{ReviewedResult, VerdictRow};
pub use worklist::Counts;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to the database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database migration left rows whose references point nowhere: {0}")]
    MigrationBrokeReferences(String),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the database refused the values themselves (PostgreSQL's data exceptions, class
    /// 22; SQLite's too-big and type-mismatch errors): the same values fail again whenever they
    /// are sent, so the failure is the input's, never an outage to wait out.
    pub fn is_data_error(&self) -> bool {
        let StoreError::Sql(sqlx::Error::Database(e)) = self else { return false };
        let code = e.code().unwrap_or_default();
        match e.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            Some(_) => code.starts_with("22"),
            None => e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() && matches!(&*code, "18" | "20"),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The statement that opens a transaction that will write, where the default will not do.
    /// SQLite's default (deferred) transaction takes the write lock only at its first write: one
    /// that read first then finds another connection writing cannot wait for it (the busy
    /// timeout does not apply to that upgrade) and fails at once with "database is locked".
    /// BEGIN IMMEDIATE takes the lock at the start, waiting out the busy timeout for it.
    pub fn write_begin(self) -> Option<&'static str> {
        match self {
            Backend::Sqlite => Some("BEGIN IMMEDIATE"),
            Backend::Postgres => None,
        }
    }
}

/// The node's database: a pool and the backend it talks to.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Written into events and job claims, so that a shared database says which node did what.
    node: String,
    /// The time every row is stamped with.
    clock: Clock,
    /// Received instances go through one committer task, which commits concurrent arrivals
    /// in one transaction (group commit): one fsync for several instances, and no writers
    /// queueing on SQLite's lock.
    committer: ingest::Committer,
    /// Signalled when this node queues a job, so that the pipeline claims it at once.
    jobs_queued: Arc<Notify>,
    /// Bumped when this node queues deliveries, so that the outbox's senders (several, one
    /// set per destination) all look at once; a watch loses no wake-up between two looks.
    deliveries_queued: Arc<tokio::sync::watch::Sender<u64>>,
    /// Who the audit records name and where they go; none: nothing is recorded.
    auditor: Option<Arc<crate::audit::Auditor>>,
}

impl Store {
    /// Connects to `url` (creating an SQLite file and its directory if needed).
    pub async fn connect(url: &str, max_connections: u32, node: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let redacted = crate::config::redact_url(url);
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)
                .map_err(|source| StoreError::Connect { url: redacted.clone(), source: sqlx::Error::Io(source) })?,
            Backend::Postgres => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|source| StoreError::Connect { url: redacted.clone(), source })?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL for concurrent readers; FULL so that a commit is on disk before Success.
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect { url: redacted, source })?;
        let clock = Clock::default();
        let committer = ingest::Committer::spawn(pool.clone(), node.to_string(), backend, clock.clone());
        Ok(Store {
            pool,
            backend,
            node: node.to_string(),
            clock,
            committer,
            jobs_queued: Arc::new(Notify::new()),
            deliveries_queued: Arc::new(tokio::sync::watch::Sender::new(0)),
            auditor: None,
        })
    }

    /// Brings the schema up to date; safe to run at every start.
    pub async fn migrate(&self) -> Result<()> {
        if self.backend == Backend::Postgres {
            POSTGRES_MIGRATIONS.run(&self.pool).await?;
            return Ok(());
        }
        // SQLite changes a column only by making its table again, and dropping the old table
        // with foreign keys enforced deletes its rows first, which the rows that point at them
        // count as violations that the new table cannot take back: a database with records
        // could not be upgraded. So, as the SQLite documentation prescribes, the migrations run
        // with foreign keys off, on a connection of their own (closed after, never returned to
        // the pool so), and every reference is checked once they are done.
        let mut conn = self.pool.acquire().await?.detach();
        conn.execute("PRAGMA foreign_keys = OFF").await?;
        SQLITE_MIGRATIONS.run(&mut conn).await?;
        let dangling = sqlx::query("PRAGMA foreign_key_check").fetch_all(&mut conn).await?;
        let described: Vec<String> = dangling
            .iter()
            .take(5)
            .map(|row| {
                let table: String = row.try_get(0).unwrap_or_default();
                let parent: String = row.try_get(2).unwrap_or_default();
                format!("{table} -> {parent}")
            })
            .collect();
        let _ = conn.close().await;
        if !dangling.is_empty() {
            return Err(StoreError::MigrationBrokeReferences(format!(
                "{} rows, e.g. {}",
                dangling.len(),
                described.join(", ")
            )));
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Opens a transaction that will write (see [`Backend::write_begin`]).
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        begin_write(&self.pool, self.backend).await
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The time, in milliseconds since the epoch, that this store stamps rows with.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The store's clock: a simulation of weeks of work advances it (see [`Clock::advance`]).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Notified (`notify_one`) when this node queues a job for analysis.
    pub fn jobs_queued(&self) -> &Notify {
        &self.jobs_queued
    }

    /// Changes when this node queues deliveries.
    pub fn deliveries_queued(&self) -> tokio::sync::watch::Receiver<u64> {
        self.deliveries_queued.subscribe()
    }

    pub(crate) fn signal_deliveries(&self) {
        self.deliveries_queued.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Opens a transaction that will write on `pool` (see [`Backend::write_begin`]).
async fn begin_write(pool: &AnyPool, backend: Backend) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
    Ok(match backend.write_begin() {
        Some(begin) => pool.begin_with(begin).await?,
        None => pool.begin().await?,
    })
}

/// Ensures the SQLite file's directory exists and asks sqlx to create the file.
fn prepare_sqlite_url(url: &str) -> std::io::Result<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
    let (path, query) = rest.split_once('?').map_or((rest, None), |(p, q)| (p, Some(q)));
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    Ok(match query {
        Some(q) if q.contains("mode=") => format!("sqlite://{path}?{q}"),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None => format!("sqlite://{path}?mode=rwc"),
    })
}

/// Milliseconds since the Unix epoch: the time format of every table.
/// The time a store stamps its rows with: the system's, moved forward by what a simulation
/// advanced it (retention is tested over months of records in seconds this way). Clones share
/// the offset; a node never advances it.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl Clock {
    pub fn now_ms(&self) -> i64 {
        now_ms() + self.offset_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves this clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::Relaxed);
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Formats a stored time for people (UTC, seconds).
pub fn format_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use crate::domain::*;

    /// Every value the SQL (queries and migrations' CHECK constraints) spells in quotes.
    fn quoted_in(sql_sources: &[&str]) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for source in sql_sources {
            let mut rest = *source;
            while let Some(start) = rest.find('\'') {
                let after = &rest[start + 1..];
                let Some(end) = after.find('\'') else { break };
                let literal = &after[..end];
                if !literal.is_empty() && literal.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    found.insert(literal.to_string());
                }
                rest = &after[end + 1..];
            }
        }
        found
    }

    /// The states, kinds and priorities the SQL spells are the domain enums' spellings: a typo
    /// or a state renamed in one place only fails here, not in production.
    #[test]
    fn every_value_the_sql_spells_is_a_domain_spelling() {
        fn spellings<T: Copy + std::fmt::Display>(all: &[T]) -> Vec<String> {
            all.iter().map(|v| v.to_string()).collect()
        }
        let known: BTreeSet<String> = [
            spellings(Priority::ALL),
            spellings(Decision::ALL),
            spellings(ObjectKind::ALL),
            spellings(DestinationKind::ALL),
            spellings(JobState::ALL),
            spellings(SkipCause::ALL),
            spellings(ShadowOutcome::ALL),
            spellings(Agreement::ALL),
            spellings(DeliveryState::ALL),
            spellings(EventKind::ALL),
            spellings(Policy::ALL),
            spellings(StudyState::ALL),
            spellings(DeliveryProgress::ALL),
        ]
        .concat()
        .into_iter()
        .collect();
        let queries = [
            include_str!("audit.rs"),
            include_str!("deliveries.rs"),
            include_str!("ingest.rs"),
            include_str!("jobs.rs"),
            include_str!("listing.rs"),
            include_str!("messages.rs"),
            include_str!("mod.rs"),
            include_str!("retention.rs"),
            include_str!("shadow.rs"),
            include_str!("verdicts.rs"),
            include_str!("worklist.rs"),
        ];
        let in_queries = quoted_in(&queries);
        assert!(in_queries.contains("pending") && in_queries.contains("queued"), "{in_queries:?}");
        let unknown: Vec<&String> = in_queries.iter().filter(|v| !known.contains(*v)).collect();
        assert!(unknown.is_empty(), "the queries spell values no domain enum has: {unknown:?}");

        let migrations: Vec<String> = ["sqlite", "postgres"]
            .iter()
            .flat_map(|backend| {
                let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(backend);
                std::fs::read_dir(dir).unwrap().flatten().map(|e| std::fs::read_to_string(e.path()).unwrap())
            })
            .collect();
        let checks: Vec<&str> = migrations
            .iter()
            .flat_map(|m| m.split("CHECK (").skip(1).map(|c| c.split(')').next().unwrap_or("")))
            .collect();
        let in_checks = quoted_in(&checks);
        assert!(in_checks.contains("sending"), "{in_checks:?}");
        let unknown: Vec<&String> = in_checks.iter().filter(|v| !known.contains(*v)).collect();
        assert!(unknown.is_empty(), "the migrations' CHECK constraints allow values no domain enum has: {unknown:?}");
    }
}
