//! The HTTP listener: accepts connections within their caps and serves each with hyper under
//! timeouts, so that idle, slow or too many connections cannot hold the node's descriptors.
//!
//! axum's own `serve` has neither: an idle or slowloris connection stayed open for ever, and
//! enough of them took every file descriptor the process had, so that the DICOM listener could
//! no longer accept. Here a connection over `http.max_connections` (or over
//! `http.max_connections_per_client` from one address) is closed at once; each must send a
//! request's whole head within `http.header_timeout_secs` of opening or of its last answer
//! (which also ends idle keep-alive connections), and each request, body included, must be
//! answered within `http.request_timeout_secs`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::config::HttpConfig;
use crate::shutdown::Shutdown;

/// How many connections are open, in all and per client address.
#[derive(Debug)]
pub struct ConnectionLimits {
    total: usize,
    per_client: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was closed unserved (the label of `pneumotriage_http_connections_refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerClient,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "max_connections",
            Refused::PerClient => "max_connections_per_client",
        }
    }
}

/// One open connection's place; given back on drop.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    client: IpAddr,
}

impl ConnectionLimits {
    pub fn new(total: usize, per_client: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits { total, per_client, open: Mutex::default() })
    }

    /// A place for a connection from `client`, or why there is none.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Refused> {
        let client = client.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.values().sum::<usize>() >= self.total {
            return Err(Refused::Total);
        }
        let from_client = open.entry(client).or_insert(0);
        if *from_client >= self.per_client {
            return Err(Refused::PerClient);
        }
        *from_client += 1;
        Ok(Slot { limits: self.clone(), client })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).values().sum()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then lets the requests in progress
/// finish (each connection closes after its current answer) and returns.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    config: &HttpConfig,
    limits: Arc<ConnectionLimits>,
    shutdown: Shutdown,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(config.header_timeout_secs)).keep_alive(true);
    let service = router;
    let mut connections = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.triggered() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                // out of descriptors and the like: wait rather than spin
                warn!(error = %e, "HTTP accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let slot = match limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                debug!(%peer, limit = refused.as_str(), "HTTP connection closed: over its limit");
                crate::metrics::http_connection_refused(refused);
                continue;
            }
        };
        let (http, service, shutdown) = (http.clone(), service.clone(), shutdown.clone());
        let Some(tls) = tls.clone() else {
            let _ = stream.set_nodelay(true);
            connections.spawn(serve_connection(stream, peer, http, service, slot, shutdown));
            continue;
        };
        // the handshake within the header timeout: a client that never finishes it is closed
        let handshake = Duration::from_secs(config.header_timeout_secs);
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(handshake, tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, peer, http, service, slot, shutdown).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "HTTPS handshake failed; connection closed"),
                Err(_) => debug!(%peer, "no HTTPS handshake within http.header_timeout_secs; connection closed"),
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    http: hyper::server::conn::http1::Builder,
    service: Router,
    _slot: Slot,
    shutdown: Shutdown,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // who is at the other end, for the audit records of what the requests read
    let service = TowerToHyperService::new(tower::ServiceExt::map_request(
        service,
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            request
        },
    ));
    let connection = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = shutdown.triggered() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        debug!(%peer, error = %e, "HTTP connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_in_all_and_per_client() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refused::PerClient);
        let _third = limits.admit(b).unwrap();
        assert_eq!(limits.admit("10.1.1.1".parse().unwrap()).unwrap_err(), Refused::Total);
        drop(first);
        assert_eq!(limits.open(), 2);
        assert!(limits.admit(a).is_ok(), "a closed connection gives its place back");
    }
}
