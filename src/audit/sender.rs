//! The senders: one task per audit repository, reading its rows in order and sending them,
//! each at least once.
//!
//! Syslog has no acknowledgement, so over TLS a record counts as delivered only once the
//! connection it went on has stayed up [`CONFIRM_AFTER`] after it (a repository that stops
//! closes the connection, which a reader of the connection sees) or was closed cleanly by us;
//! a record written on a connection that then broke is sent again on the next one. A repository
//! may so see a record twice, never none. Over UDP nothing can tell, and a record counts as
//! delivered once the datagram left; in a file, once the line is on disk.
//!
//! The senders only read the database: a repository that is down delays its records and
//! nothing else. Above `audit.max_backlog` waiting records, the oldest are dropped, counted and
//! logged as errors.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{AuditRepository, AuditTransport, Config};
use crate::shutdown::Shutdown;
use crate::store::{AuditRow, Store};
use crate::tls::TlsSetupError;

/// How long a TLS connection must stay up after a record for the record to count as delivered.
pub const CONFIRM_AFTER: Duration = Duration::from_secs(2);

/// Connecting, the handshake, and each write.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// Records read and sent at once.
const BATCH: i64 = 100;

/// How often the backlog is held to `audit.max_backlog`.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// While a repository stays unreachable, a warning this often.
const STILL_DOWN_EVERY: Duration = Duration::from_secs(300);

/// How long an idle sender waits before looking for new records.
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// The running senders, stopped by [`Senders::finish`] once the last record (Application Stop)
/// is written.
pub struct Senders {
    stop: Shutdown,
    tasks: Vec<JoinHandle<()>>,
}

/// A repository as its sender reaches it.
struct Repository {
    name: String,
    transport: AuditTransport,
    host: String,
    port: u16,
    path: Option<PathBuf>,
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    max_backlog: i64,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Senders {
    /// Starts a sender per configured repository, their TLS files read now (so a bad file stops
    /// the start with its key named).
    pub fn start(config: &Config, store: &Store) -> Result<Senders, String> {
        let stop = Shutdown::new();
        let tasks = repositories(config)?
            .into_iter()
            .map(|repository| {
                crate::metrics::audit_repository(&repository.name);
                tokio::spawn(run(store.clone(), repository, stop.clone()))
            })
            .collect();
        Ok(Senders { stop, tasks })
    }

    /// Sends what waits for up to `grace`, then stops; what is left goes at the next start.
    pub async fn finish(self, grace: Duration) {
        self.stop.trigger();
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            warn!("audit records still waiting at stop are sent at the next start");
        }
    }
}

/// The configured repositories, their TLS files read; or the first that cannot be used, with
/// its key and the file.
fn repositories(config: &Config) -> Result<Vec<Repository>, String> {
    let each = config.audit.repositories.iter().enumerate();
    each.map(|(i, r)| {
        Repository::of(config, r).map_err(|e| format!("{}: audit.repositories[{i}].tls: {e}", config.source))
    })
    .collect()
}

/// What `check-config` and `serve` check before anything starts: every repository usable.
pub fn check(config: &Config) -> Result<(), String> {
    repositories(config).map(drop)
}

impl Repository {
    fn of(config: &Config, r: &AuditRepository) -> Result<Repository, TlsSetupError> {
        let tls = match &r.tls {
            Some(tls) if r.transport == AuditTransport::Tls => {
                let identity = tls.cert_file.as_ref().zip(tls.key_file.as_ref());
                let identity = identity.map(|(c, k)| (config.resolve(c), config.resolve(k)));
                let client = crate::tls::client_config(
                    &config.resolve(&tls.ca_file),
                    identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
                )?;
                Some((client, tls.server_name.clone().unwrap_or_else(|| r.host.clone())))
            }
            _ => None,
        };
        Ok(Repository {
            name: r.name.clone(),
            transport: r.transport,
            host: r.host.clone(),
            port: r.port,
            path: r.path.as_ref().map(|p| config.resolve(p)),
            tls,
            max_backlog: config.audit.max_backlog as i64,
            retry_initial: Duration::from_secs(config.audit.retry_initial_secs),
            retry_max: Duration::from_secs(config.audit.retry_max_secs),
        })
    }

    async fn connect(&self) -> Result<Link, String> {
        match self.transport {
            AuditTransport::Tls => {
                let (client, server_name) = self.tls.clone().ok_or("no TLS configuration")?;
                let name = rustls_pki_types::ServerName::try_from(server_name.clone())
                    .map_err(|e| format!("server name {server_name:?}: {e}"))?;
                let tcp = within(TcpStream::connect((self.host.as_str(), self.port))).await?;
                let _ = tcp.set_nodelay(true);
                let tls = within(tokio_rustls::TlsConnector::from(client).connect(name, tcp)).await?;
                let (mut reader, writer) = tokio::io::split(tls);
                let closed = Arc::new(AtomicBool::new(false));
                let seen = closed.clone();
                // a repository sends nothing; what it does send is the end of the connection
                let watcher = tokio::spawn(async move {
                    let mut buffer = [0u8; 256];
                    while let Ok(n) = reader.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                    }
                    seen.store(true, Ordering::Release);
                });
                Ok(Link::Tls { writer, closed, watcher })
            }
            AuditTransport::Udp => {
                let local = if self.host.contains(':') { "[::]:0" } else { "0.0.0.0:0" };
                let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
                within(socket.connect((self.host.as_str(), self.port))).await?;
                Ok(Link::Udp(socket))
            }
            AuditTransport::File => {
                let path = self.path.clone().ok_or("no path")?;
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .await
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(Link::File(file))
            }
        }
    }

    fn describe(&self) -> String {
        match (&self.path, self.transport) {
            (Some(path), _) => path.display().to_string(),
            (None, transport) => format!("{transport}://{}:{}", self.host, self.port),
        }
    }
}

/// An open way to a repository.
enum Link {
    Tls {
        writer: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
        /// Set when the repository closed the connection or it broke.
        closed: Arc<AtomicBool>,
        watcher: JoinHandle<()>,
    },
    Udp(UdpSocket),
    File(tokio::fs::File),
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Link::Tls { watcher, .. } = self {
            watcher.abort();
        }
    }
}

impl Link {
    /// Whether a record sent counts as delivered at once (else after [`CONFIRM_AFTER`]).
    fn confirms_at_once(&self) -> bool {
        !matches!(self, Link::Tls { .. })
    }

    fn broken(&self) -> bool {
        matches!(self, Link::Tls { closed, .. } if closed.load(Ordering::Acquire))
    }

    async fn send(&mut self, messages: &[String]) -> Result<(), String> {
        match self {
            Link::Tls { writer, .. } => {
                let mut frames = Vec::new();
                for m in messages {
                    frames.extend(super::syslog::octet_counted(m));
                }
                within(writer.write_all(&frames)).await?;
                within(writer.flush()).await
            }
            Link::Udp(socket) => {
                for m in messages {
                    // one datagram per record (RFC 5426): a longer one would fail at every try and
                    // hold back every record after it
                    if m.len() > MAX_DATAGRAM {
                        tracing::error!(bytes = m.len(), "an audit record is longer than a UDP datagram; dropped");
                        continue;
                    }
                    within(socket.send(m.as_bytes())).await?;
                }
                Ok(())
            }
            Link::File(file) => {
                let mut lines = String::new();
                for m in messages {
                    lines.push_str(m);
                    lines.push('\n');
                }
                file.write_all(lines.as_bytes()).await.map_err(|e| e.to_string())?;
                file.sync_data().await.map_err(|e| e.to_string())
            }
        }
    }

    /// Closes the link cleanly; true if what was written is known to have arrived as far as a
    /// clean close can tell.
    async fn close(mut self) -> bool {
        match &mut self {
            Link::Tls { writer, closed, .. } => {
                let done = within(writer.shutdown()).await.is_ok();
                done && !closed.load(Ordering::Acquire)
            }
            Link::Udp(_) | Link::File(_) => true,
        }
    }
}

/// The largest UDP payload over IPv6 (65,535 less its 8-byte header and IPv6's 40): what any
/// repository's address can take.
const MAX_DATAGRAM: usize = 65_487;

async fn within<T, E: std::fmt::Display>(f: impl std::future::Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(NETWORK_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no progress within {NETWORK_TIMEOUT:?}")),
    }
}

/// Where a sender stands with its repository.
struct Progress {
    link: Option<Link>,
    /// Records written on `link` and not yet counted as delivered, oldest first.
    unconfirmed: VecDeque<(i64, Instant)>,
    /// The highest id written on `link`.
    after: i64,
    /// Since when the repository has failed, and when that was last said.
    failing: Option<(Instant, Instant)>,
    backoff: Duration,
}

impl Progress {
    /// The link broke: what it carried unconfirmed is read again.
    fn lose_link(&mut self) {
        self.link = None;
        self.unconfirmed.clear();
        self.after = 0;
    }

    /// Ids below this, still in the database and not in flight, wait to be sent.
    fn below(&self) -> i64 {
        self.unconfirmed.iter().map(|(id, _)| *id).min().unwrap_or(self.after.saturating_add(1))
    }
}

async fn run(store: Store, repository: Repository, stop: Shutdown) {
    let name = repository.name.as_str();
    let mut p = Progress {
        link: None,
        unconfirmed: VecDeque::new(),
        after: 0,
        failing: None,
        backoff: repository.retry_initial,
    };
    let mut last_trim: Option<Instant> = None;
    loop {
        if last_trim.is_none_or(|t| t.elapsed() >= TRIM_EVERY) {
            last_trim = Some(Instant::now());
            trim(&store, &repository).await;
        }
        if p.link.as_ref().is_some_and(Link::broken) {
            warn!(
                repository = name,
                unconfirmed = p.unconfirmed.len(),
                "audit repository closed the connection; unconfirmed records are sent again"
            );
            p.lose_link();
        }
        confirm(&store, &mut p, false).await;
        let rows = match store.audit_waiting(name, p.after, p.below(), BATCH).await {
            Ok(rows) => rows,
            Err(e) => {
                warn!(repository = name, error = %e, "cannot read audit records");
                if pause(&stop, repository.retry_max).await {
                    break;
                }
                continue;
            }
        };
        if rows.is_empty() {
            if stop.is_triggered() {
                // nothing more to send: a clean close tells what the connection carried arrived
                if let Some(link) = p.link.take() {
                    if link.close().await {
                        confirm(&store, &mut p, true).await;
                    }
                }
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE_WAIT) => {}
                _ = stop.triggered() => {}
            }
            continue;
        }
        if p.link.is_none() {
            match repository.connect().await {
                Ok(link) => p.link = Some(link),
                Err(e) => {
                    failed(&repository, &mut p, &e, rows.len());
                    if pause(&stop, p.backoff).await {
                        break;
                    }
                    p.backoff = (p.backoff * 2).min(repository.retry_max);
                    continue;
                }
            }
        }
        let messages: Vec<String> = rows.iter().map(|r| frame(&store, r)).collect();
        let link = p.link.as_mut().expect("connected above");
        match link.send(&messages).await {
            Ok(()) => {
                let now = Instant::now();
                let at_once = link.confirms_at_once();
                for r in &rows {
                    p.after = p.after.max(r.id);
                    p.unconfirmed.push_back((r.id, now));
                }
                crate::metrics::audit_sent(name, rows.len() as u64);
                if at_once {
                    confirm(&store, &mut p, true).await;
                }
                p.backoff = repository.retry_initial;
                if let Some((since, _)) = p.failing.take() {
                    info!(
                        repository = name,
                        down_secs = since.elapsed().as_secs(),
                        "audit repository reachable again; waiting records are being sent"
                    );
                }
            }
            Err(e) => {
                p.lose_link();
                failed(&repository, &mut p, &e, rows.len());
                if pause(&stop, p.backoff).await {
                    break;
                }
                p.backoff = (p.backoff * 2).min(repository.retry_max);
            }
        }
    }
}

/// The syslog message of a row, as the repository receives it.
fn frame(store: &Store, row: &AuditRow) -> String {
    let (host, pid) =
        store.auditor().map_or_else(|| (super::host_name(), std::process::id()), |a| (a.host.clone(), a.process_id));
    super::syslog::format(row.at, super::severity(&row.event), &host, pid, row.id, &row.message)
}

/// Deletes what counts as delivered: what waited [`CONFIRM_AFTER`] on a live link, or (`all`)
/// everything written.
async fn confirm(store: &Store, p: &mut Progress, all: bool) {
    let mut done = Vec::new();
    while let Some(&(id, at)) = p.unconfirmed.front() {
        if !all && at.elapsed() < CONFIRM_AFTER {
            break;
        }
        done.push(id);
        p.unconfirmed.pop_front();
    }
    if done.is_empty() {
        return;
    }
    if let Err(e) = store.audit_delivered(&done).await {
        // they stay in the database and go again: a duplicate, never a loss
        warn!(error = %e, records = done.len(), "cannot mark audit records delivered; they will be sent again");
        p.lose_link();
    }
}

fn failed(repository: &Repository, p: &mut Progress, error: &str, waiting: usize) {
    crate::metrics::audit_send_failed(&repository.name);
    let now = Instant::now();
    match &mut p.failing {
        None => {
            p.failing = Some((now, now));
            warn!(repository = %repository.name, to = %repository.describe(), %error, "audit repository unreachable; records wait in the database and are sent when it is back");
        }
        Some((since, said)) if said.elapsed() >= STILL_DOWN_EVERY => {
            *said = now;
            warn!(repository = %repository.name, to = %repository.describe(), %error, down_secs = since.elapsed().as_secs(), waiting_at_least = waiting, "audit repository still unreachable");
        }
        Some(_) => {}
    }
}

/// Holds the backlog to `audit.max_backlog`: the oldest records above it are dropped, loudly.
async fn trim(store: &Store, repository: &Repository) {
    let waiting = match store.audit_backlog().await {
        Ok(rows) => rows.into_iter().find(|(r, _)| *r == repository.name).map_or(0, |(_, n)| n),
        Err(_) => return,
    };
    let over = waiting - repository.max_backlog;
    if over <= 0 {
        return;
    }
    match store.audit_drop_oldest(&repository.name, over).await {
        Ok(dropped) => {
            crate::metrics::audit_dropped(&repository.name, dropped);
            error!(repository = %repository.name, dropped, max_backlog = repository.max_backlog, "audit records dropped: the repository has been unreachable too long (audit.max_backlog)");
        }
        Err(e) => {
            warn!(repository = %repository.name, error = %e, "cannot hold the audit backlog to audit.max_backlog")
        }
    }
}

/// Waits `d`, or less if the stop comes; true if the sender should stop now.
async fn pause(stop: &Shutdown, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.triggered() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record longer than a datagram is dropped, and the records after it still go (it would
    /// otherwise fail at every try and hold them all back).
    #[tokio::test]
    async fn a_record_longer_than_a_datagram_does_not_hold_back_the_others() {
        let repository = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(repository.local_addr().unwrap()).await.unwrap();
        let mut link = Link::Udp(socket);
        let records = ["first".to_string(), "x".repeat(MAX_DATAGRAM + 1), "after".to_string()];
        link.send(&records).await.expect("sent");
        let mut buf = vec![0u8; 70_000];
        for expected in ["first", "after"] {
            let n = tokio::time::timeout(Duration::from_secs(5), repository.recv(&mut buf)).await.unwrap().unwrap();
            assert_eq!(&buf[..n], expected.as_bytes());
        }
    }
}
