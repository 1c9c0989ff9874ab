//! The storage SCP: an acceptor that owns the association limit, and a handler per association
//! that turns P-DATA into DIMSE messages and hands each to a service (C-ECHO, C-STORE).
//!
//! The SCP never decodes pixel data: data set fragments go to a spool file as they arrive, and
//! `ingest` makes them durable before a Success response is sent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationAC, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderASCEReason, AssociationRJServiceProviderPresentationReason,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, UserVariableItem,
};
use dicom_ul::Pdu;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::conformance::{self, AcceptedContext, Service};
use super::dimse::{self, command_field, status, Command};
use super::ul::{ByteStream, Connection, Incoming, PData, Pdv, UlError};
use crate::audit::{Alert, AuditEvent, AuditedStudy, Peer as AuditPeer};
use crate::config::DicomConfig;
use crate::domain::{EventKind, InstanceHeader};
use crate::ingest::{Ingest, Outcome, Received, Refusal};
use crate::shutdown::Shutdown;
use crate::store::Event;
use crate::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// The DICOM application context (PS3.7 A.2.1).
const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// Shared state of the SCP.
pub struct Scp {
    config: DicomConfig,
    ingest: Arc<Ingest>,
    /// Associations: `dicom.max_associations`, `dicom.max_associations_per_host` from one address.
    associations: Slots,
    /// Connections not associated yet (a TLS handshake, the A-ASSOCIATE-RQ awaited), within the
    /// same two numbers: before the allow-list is read, any host may connect, and idle sockets
    /// held until the ARTIM timeout would otherwise be bounded by nothing but file descriptors,
    /// which the spool and the database need too.
    unassociated: Slots,
}

/// A bounded number of holders, and fewer from any one address, so that one peer (idle or
/// hostile) cannot take every slot.
struct Slots {
    all: Arc<Semaphore>,
    per_host: Arc<Mutex<HashMap<IpAddr, usize>>>,
    host_limit: usize,
}

/// A hold on a slot of [`Slots`], given back when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    per_host: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

/// Why no slot was free.
enum Full {
    Host(usize),
    All,
}

impl Slots {
    fn new(limit: usize, host_limit: usize) -> Slots {
        Slots { all: Arc::new(Semaphore::new(limit)), per_host: Arc::default(), host_limit }
    }

    fn take(&self, ip: IpAddr) -> Result<Slot, Full> {
        let mut counts = self.per_host.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let from_host = counts.get(&ip).copied().unwrap_or(0);
        if from_host >= self.host_limit {
            return Err(Full::Host(from_host));
        }
        let permit = self.all.clone().try_acquire_owned().map_err(|_| Full::All)?;
        *counts.entry(ip).or_insert(0) += 1;
        Ok(Slot { _permit: permit, per_host: self.per_host.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.per_host.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl Scp {
    pub fn new(config: DicomConfig, ingest: Arc<Ingest>) -> Arc<Scp> {
        let associations = Slots::new(config.max_associations, config.max_associations_per_host);
        let unassociated = Slots::new(config.max_associations, config.max_associations_per_host);
        Arc::new(Scp { config, ingest, associations, unassociated })
    }

    /// Accepts associations on the plain listener and, when configured, the TLS one, until
    /// `shutdown` fires; then stops accepting, lets the associations in progress finish for
    /// up to `dicom.shutdown_grace_secs`, and aborts the rest (what they had not been answered
    /// for is not kept, and their peers see the abort).
    pub async fn serve(
        self: Arc<Self>,
        plain: Option<TcpListener>,
        tls: Option<(TcpListener, TlsAcceptor)>,
        shutdown: Shutdown,
    ) {
        let mut backoff = Duration::from_millis(10);
        let mut associations = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.triggered() => break,
                Some(_) = associations.join_next(), if !associations.is_empty() => continue,
                a = accept(plain.as_ref()) => a.map(|(stream, peer)| (stream, peer, None)),
                a = accept(tls.as_ref().map(|(l, _)| l)) => {
                    a.map(|(stream, peer)| (stream, peer, tls.as_ref().map(|(_, acceptor)| acceptor.clone())))
                }
            };
            match accepted {
                Ok((stream, peer, tls)) => {
                    backoff = Duration::from_millis(10);
                    let Ok(slot) = self.unassociated.take(peer.ip().to_canonical()) else {
                        // closed at once: counted, not logged one by one (a flood would fill the log)
                        debug!(%peer, "too many connections waiting to associate; closed");
                        crate::metrics::association(false);
                        continue;
                    };
                    let scp = self.clone();
                    associations.spawn(async move { scp.handle_connection(stream, peer, tls, slot).await });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin or die.
                    warn!(error = %e, "accept failed; retrying in {:?}", backoff);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        drop((plain, tls));
        if associations.is_empty() {
            return;
        }
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        info!(associations = associations.len(), "no new associations; waiting up to {grace:?} for those in progress");
        let finished = tokio::time::timeout(grace, async { while associations.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            warn!(associations = associations.len(), "associations still open after the grace period; aborting them");
            associations.shutdown().await;
        }
    }

    /// One connection: its TLS handshake and A-ASSOCIATE-RQ within the ARTIM timeout, holding
    /// `unassociated` until then, and the association if it is admitted.
    async fn handle_connection(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
        unassociated: Slot,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let stream: Box<dyn ByteStream> = match tls {
            None => Box::new(stream),
            Some(acceptor) => match tokio::time::timeout(self.config.artim_timeout(), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    warn!(%peer, error = %e, "TLS handshake failed; connection closed");
                    crate::metrics::association(false);
                    self.event(EventKind::TlsRefused, "", peer, None, &e.to_string()).await;
                    self.alert(Alert::TlsRefused, "", peer, &format!("TLS handshake failed: {e}")).await;
                    return;
                }
                Err(_) => {
                    warn!(%peer, "no TLS handshake within the ARTIM timeout; closing");
                    return;
                }
            },
        };
        let mut conn = Connection::new(stream, self.config.max_pdu);
        let request = match tokio::time::timeout(self.config.artim_timeout(), conn.read()).await {
            Ok(Ok(Incoming::Other(Pdu::AssociationRQ(rq)))) => rq,
            Ok(Ok(_)) => {
                warn!(%peer, "connection did not start with A-ASSOCIATE-RQ; aborting");
                abort(&mut conn, AbortRQServiceProviderReason::UnexpectedPdu).await;
                return;
            }
            Ok(Err(UlError::Closed)) => {
                debug!(%peer, "connection closed before association");
                return;
            }
            Ok(Err(UlError::Io(e))) => {
                debug!(%peer, error = %e, "connection failed before association");
                return;
            }
            Ok(Err(e)) => {
                // garbage, or a PDU that declares more than we take: say so (PS3.8 9.3.8)
                warn!(%peer, error = %e, "invalid first PDU; aborting");
                abort(&mut conn, AbortRQServiceProviderReason::InvalidPduParameter).await;
                return;
            }
            Err(_) => {
                warn!(%peer, "no A-ASSOCIATE-RQ within the ARTIM timeout; closing");
                return;
            }
        };
        drop(unassociated);
        let calling_ae = conformance::trim_uid(request.calling_ae_title.trim()).to_string();
        match self.admit(&request, &calling_ae, peer) {
            Err((rejection, reason)) => {
                let _ = conn.send(&Pdu::AssociationRJ(rejection)).await;
                conn.shutdown().await;
                warn!(peer_ae = %calling_ae, %peer, called_ae = %request.called_ae_title.trim(), %reason, "association rejected");
                crate::metrics::association(false);
                self.event(EventKind::AssociationRejected, &calling_ae, peer, None, &reason).await;
                self.alert(Alert::AssociationRefused, &calling_ae, peer, &format!("association rejected: {reason}"))
                    .await;
            }
            Ok(admission) => {
                let (results, contexts) = conformance::negotiate(&request.presentation_contexts, &self.config);
                let accept = Pdu::AssociationAC(AssociationAC {
                    protocol_version: 1,
                    calling_ae_title: request.calling_ae_title.clone(),
                    called_ae_title: request.called_ae_title.clone(),
                    application_context_name: APPLICATION_CONTEXT.to_string(),
                    presentation_contexts: results,
                    user_variables: vec![
                        UserVariableItem::MaxLength(self.config.max_pdu),
                        UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_string()),
                        UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_string()),
                    ],
                });
                if let Err(e) = conn.send(&accept).await {
                    warn!(peer_ae = %calling_ae, %peer, error = %e, "could not send A-ASSOCIATE-AC");
                    return;
                }
                let detail = format!(
                    "{} of {} presentation contexts accepted",
                    contexts.len(),
                    request.presentation_contexts.len()
                );
                info!(peer_ae = %calling_ae, %peer, contexts = %detail, "association accepted");
                crate::metrics::association(true);
                self.event(EventKind::AssociationAccepted, &calling_ae, peer, None, &detail).await;
                let association = Association::new(self.clone(), conn, calling_ae, peer, contexts);
                association.run().await;
                drop(admission);
            }
        }
    }

    /// The association policy: called AE, calling AE (and host), then the association limit.
    fn admit(
        &self,
        request: &AssociationRQ,
        calling_ae: &str,
        peer: SocketAddr,
    ) -> Result<Slot, (AssociationRJ, String)> {
        let user_reject = |reason: AssociationRJServiceUserReason, text: String| {
            (
                AssociationRJ {
                    result: AssociationRJResult::Permanent,
                    source: AssociationRJSource::ServiceUser(reason),
                },
                text,
            )
        };
        // PS3.8 9.3.2: bit 0 of the protocol version names the one version there is
        if request.protocol_version & 1 == 0 {
            let reject = AssociationRJ {
                result: AssociationRJResult::Permanent,
                source: AssociationRJSource::ServiceProviderASCE(
                    AssociationRJServiceProviderASCEReason::ProtocolVersionNotSupported,
                ),
            };
            return Err((reject, format!("protocol version {:#06x} not supported", request.protocol_version)));
        }
        if request.application_context_name.trim_end_matches('\0') != APPLICATION_CONTEXT {
            return Err(user_reject(
                AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
                format!("application context {} not supported", request.application_context_name),
            ));
        }
        if calling_ae.chars().any(|c| c.is_control() || c == '\\') {
            return Err(user_reject(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                format!(
                    "calling AE title {calling_ae:?} holds a control character or a backslash, which no AE title may"
                ),
            ));
        }
        let called = request.called_ae_title.trim();
        if self.config.check_called_ae && called != self.config.ae_title {
            return Err(user_reject(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
                format!("called AE title {called:?} is not ours ({:?})", self.config.ae_title),
            ));
        }
        if !self.config.accept_any {
            let ip = peer.ip().to_canonical();
            let allowed = self.config.peers.iter().any(|p| {
                (p.ae_title == "*" || p.ae_title == calling_ae) && p.host.is_none_or(|h| h.to_canonical() == ip)
            });
            if !allowed {
                return Err(user_reject(
                    AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                    format!("calling AE title {calling_ae:?} from {ip} is not in dicom.peers"),
                ));
            }
        }
        let busy = |text: String| {
            (
                AssociationRJ {
                    result: AssociationRJResult::Transient,
                    source: AssociationRJSource::ServiceProviderPresentation(
                        AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
                    ),
                },
                text,
            )
        };
        let ip = peer.ip().to_canonical();
        self.associations.take(ip).map_err(|full| match full {
            Full::Host(n) => busy(format!("already {n} associations from {ip} (dicom.max_associations_per_host)")),
            Full::All => busy(format!(
                "already {} concurrent associations (dicom.max_associations)",
                self.config.max_associations
            )),
        })
    }

    /// Records an audit event about a peer; a database outage is logged, not fatal.
    async fn event(&self, kind: EventKind, peer_ae: &str, peer: SocketAddr, sop: Option<&str>, detail: &str) {
        let address = peer.to_string();
        let event = Event::new(kind).peer(peer_ae, &address).detail(detail);
        let event = match sop {
            Some(sop) => event.instance(sop),
            None => event,
        };
        self.ingest.record_event(&event).await;
    }

    /// Records a security alert about a peer; a database outage is logged, not fatal.
    async fn alert(&self, alert: Alert, peer_ae: &str, peer: SocketAddr, detail: &str) {
        let address = peer.ip().to_canonical().to_string();
        let event =
            AuditEvent::Security { alert, peer: Some(AuditPeer { ae_title: peer_ae, address: &address }), detail };
        self.ingest.audit(&event).await;
    }
}

/// The next connection on `listener`; never, when there is none.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn abort(conn: &mut Connection, reason: AbortRQServiceProviderReason) {
    let _ = conn.send(&Pdu::AbortRQ { source: AbortRQSource::ServiceProvider(reason) }).await;
    conn.shutdown().await;
}

/// The C-STORE response status of an outcome: the one place where the keeping layer's answer
/// becomes DICOM's (PS3.4 B.2.3, PS3.7 C.4).
/// The DIMSE status for an outcome (a STOW-RS response's Failure Reason too).
pub fn store_status(outcome: &Outcome) -> u16 {
    match outcome {
        Outcome::Stored { .. } | Outcome::Duplicate { .. } => status::SUCCESS,
        Outcome::Refused(Refusal::OutOfResources(_)) => status::OUT_OF_RESOURCES,
        Outcome::Refused(Refusal::Mismatch(_)) => status::DATA_SET_MISMATCH,
        Outcome::Refused(Refusal::Unreadable(_) | Refusal::TooLarge(_)) => status::CANNOT_UNDERSTAND,
        // over HTTP only: an association's presentation context refuses the syntax first
        Outcome::Refused(Refusal::UnsupportedSyntax(_)) => status::TRANSFER_SYNTAX_NOT_SUPPORTED,
        Outcome::Refused(Refusal::UnsupportedClass(_)) => status::SOP_CLASS_NOT_SUPPORTED,
        Outcome::Refused(Refusal::UnsupportedOperation(_)) => status::UNRECOGNIZED_OPERATION,
    }
}

/// The Error Comment a refusal sends: the reason when it is about the peer's own request, a
/// fixed text when it is about this node (whose paths and errors are for its log, not the wire).
fn comment_for_peer(refusal: &Refusal) -> &str {
    match refusal {
        Refusal::OutOfResources(_) => "out of resources at the receiver; try again later",
        other => other.reason(),
    }
}

/// Where the data set of the current C-STORE goes.
enum Sink {
    Spool(crate::spool::TempInstance),
    /// Read and dropped; the request is refused once the data set ends.
    Discard(Refusal),
}

/// A request whose data set is being received.
struct Pending {
    command: Command,
    context: AcceptedContext,
    sink: Sink,
    started: Instant,
    bytes: u64,
}

/// Counters for the association's closing log line.
#[derive(Default)]
struct Tally {
    stored: u32,
    failed: u32,
    bytes: u64,
    /// The studies received, for the audit records at the end of the association.
    studies: Vec<AuditedStudy>,
}

impl Tally {
    /// Counts an instance stored, under its study.
    fn received(&mut self, header: &InstanceHeader) {
        AuditedStudy::tally(&mut self.studies, AuditedStudy::of_header(header), &header.sop_class_uid);
    }
}

/// Why an association ends, besides a clean release.
enum End {
    Released,
    AbortedByPeer,
    Closed,
    /// We abort, saying why.
    Abort(AbortRQServiceProviderReason, String),
}

struct Association {
    scp: Arc<Scp>,
    conn: Connection,
    calling_ae: String,
    peer: SocketAddr,
    contexts: Vec<AcceptedContext>,
    /// Command fragments received so far, and their context.
    command: Vec<u8>,
    pending: Option<Pending>,
    tally: Tally,
}

impl Association {
    fn new(
        scp: Arc<Scp>,
        conn: Connection,
        calling_ae: String,
        peer: SocketAddr,
        contexts: Vec<AcceptedContext>,
    ) -> Self {
        Association {
            scp,
            conn,
            calling_ae,
            peer,
            contexts,
            command: Vec::new(),
            pending: None,
            tally: Tally::default(),
        }
    }

    async fn run(mut self) {
        let started = Instant::now();
        let end = self.receive_loop().await;
        let how = match &end {
            End::Released => "released".to_string(),
            End::AbortedByPeer => "aborted by the peer".to_string(),
            End::Closed => "connection closed without release".to_string(),
            End::Abort(_, why) => format!("aborted: {why}"),
        };
        if let End::Abort(reason, _) = end {
            abort(&mut self.conn, reason).await;
        } else {
            self.conn.shutdown().await;
        }
        if self.pending.is_some() {
            warn!(peer_ae = %self.calling_ae, peer = %self.peer, "association ended inside a data set; nothing of it was kept");
        }
        info!(
            peer_ae = %self.calling_ae,
            peer = %self.peer,
            stored = self.tally.stored,
            failed = self.tally.failed,
            bytes = self.tally.bytes,
            ms = started.elapsed().as_millis() as u64,
            "association ended: {how}"
        );
        let address = self.peer.ip().to_canonical().to_string();
        let from = AuditPeer { ae_title: &self.calling_ae, address: &address };
        for study in &self.tally.studies {
            self.scp.ingest.audit(&AuditEvent::Received { from, study }).await;
        }
    }

    async fn receive_loop(&mut self) -> End {
        let idle = self.scp.config.idle_timeout();
        loop {
            let incoming = match tokio::time::timeout(idle, self.conn.read()).await {
                Err(_) => {
                    return End::Abort(AbortRQServiceProviderReason::ReasonNotSpecified, format!("idle for {idle:?}"))
                }
                Ok(Err(UlError::Closed)) => return End::Closed,
                Ok(Err(e)) => return End::Abort(AbortRQServiceProviderReason::InvalidPduParameter, e.to_string()),
                Ok(Ok(incoming)) => incoming,
            };
            match incoming {
                Incoming::PData(pdata) => {
                    for pdv in &pdata.pdvs {
                        if let Err(end) = self.on_pdv(&pdata, pdv).await {
                            return end;
                        }
                    }
                }
                Incoming::Other(Pdu::ReleaseRQ) => {
                    if self.pending.is_some() {
                        return End::Abort(
                            AbortRQServiceProviderReason::UnexpectedPdu,
                            "release inside a data set".into(),
                        );
                    }
                    let _ = self.conn.send(&Pdu::ReleaseRP).await;
                    return End::Released;
                }
                Incoming::Other(Pdu::AbortRQ { .. }) => return End::AbortedByPeer,
                Incoming::Other(other) => {
                    return End::Abort(
                        AbortRQServiceProviderReason::UnexpectedPdu,
                        format!("unexpected {}", other.short_description()),
                    )
                }
            }
        }
    }

    fn protocol_error(why: impl Into<String>) -> End {
        End::Abort(AbortRQServiceProviderReason::UnexpectedPduParameter, why.into())
    }

    async fn on_pdv(&mut self, pdata: &PData, pdv: &Pdv) -> Result<(), End> {
        let fragment = pdata.fragment(pdv);
        if pdv.is_command {
            if self.pending.is_some() {
                return Err(Self::protocol_error("command fragment while a data set was expected"));
            }
            let Some(context) = self.contexts.iter().find(|c| c.id == pdv.context_id).cloned() else {
                return Err(Self::protocol_error(format!("presentation context {} was not accepted", pdv.context_id)));
            };
            if self.command.len() + fragment.len() > dimse::MAX_COMMAND_SET {
                return Err(Self::protocol_error(format!(
                    "command set larger than {} bytes without its last fragment",
                    dimse::MAX_COMMAND_SET
                )));
            }
            self.command.extend_from_slice(fragment);
            if pdv.is_last {
                let bytes = std::mem::take(&mut self.command);
                let command = dimse::parse_command(&bytes).map_err(|e| Self::protocol_error(e.to_string()))?;
                self.on_command(command, context).await?;
            }
            return Ok(());
        }
        let Some(pending) = self.pending.as_mut() else {
            return Err(Self::protocol_error("data set fragment without a command"));
        };
        if pending.context.id != pdv.context_id {
            return Err(Self::protocol_error("data set fragment on another presentation context"));
        }
        pending.bytes += fragment.len() as u64;
        let limit = self.scp.config.max_dataset_bytes();
        if pending.bytes > limit {
            // Read on and answer at the end (the sender learns why), keeping nothing; a peer that
            // goes on far past the limit is cut off.
            if pending.bytes > limit.saturating_mul(2) {
                return Err(End::Abort(
                    AbortRQServiceProviderReason::ReasonNotSpecified,
                    format!(
                        "data set goes on past twice dicom.max_dataset_mb ({} MiB)",
                        self.scp.config.max_dataset_mb
                    ),
                ));
            }
            if let Sink::Spool(_) = pending.sink {
                let reason =
                    format!("data set larger than dicom.max_dataset_mb ({} MiB)", self.scp.config.max_dataset_mb);
                pending.sink = Sink::Discard(Refusal::TooLarge(reason));
            }
        }
        if let Sink::Spool(temp) = &mut pending.sink {
            if let Err(e) = temp.write(fragment) {
                pending.sink = Sink::Discard(Refusal::OutOfResources(e.to_string()));
            }
        }
        if pdv.is_last {
            let pending = self.pending.take().expect("checked above");
            self.finish_store(pending).await?;
        }
        Ok(())
    }

    async fn on_command(&mut self, command: Command, context: AcceptedContext) -> Result<(), End> {
        match command.field {
            command_field::C_ECHO_RQ if context.service == Service::Verification => {
                self.respond(context.id, &command, status::SUCCESS, None).await
            }
            command_field::C_STORE_RQ if command.has_data_set => {
                let sink = self.store_sink(&command, &context);
                self.pending = Some(Pending { command, context, sink, started: Instant::now(), bytes: 0 });
                Ok(())
            }
            _ if command.has_data_set => {
                let reason = format!("operation 0x{:04X} is not supported", command.field);
                let sink = Sink::Discard(Refusal::UnsupportedOperation(reason));
                self.pending = Some(Pending { command, context, sink, started: Instant::now(), bytes: 0 });
                Ok(())
            }
            _ => {
                warn!(peer_ae = %self.calling_ae, peer = %self.peer, field = command.field, "unsupported DIMSE operation");
                self.respond(context.id, &command, status::UNRECOGNIZED_OPERATION, Some("operation not supported"))
                    .await
            }
        }
    }

    /// Decides, before any data arrives, whether this C-STORE's data set can be kept.
    fn store_sink(&self, command: &Command, context: &AcceptedContext) -> Sink {
        let Some(sop_class) = command.affected_sop_class_uid.as_deref() else {
            return Sink::Discard(Refusal::Unreadable("the command has no Affected SOP Class UID".into()));
        };
        let Some(sop_instance) = command.affected_sop_instance_uid.as_deref() else {
            return Sink::Discard(Refusal::Unreadable("the command has no Affected SOP Instance UID".into()));
        };
        // a UID is digits and dots: anything else (a NUL inside, say) is refused before it
        // reaches a path or the database
        if crate::spool::sanitize_uid(sop_instance).is_none() {
            return Sink::Discard(Refusal::Unreadable("the Affected SOP Instance UID is not a valid UID".into()));
        }
        // Verification is a service of its own (C-ECHO), not a storage class
        let storage = conformance::service_for(sop_class, &self.scp.config)
            .filter(|service| *service != conformance::Service::Verification);
        if storage.is_none() {
            return Sink::Discard(Refusal::UnsupportedClass("SOP class not supported".into()));
        }
        if sop_class != context.abstract_syntax {
            return Sink::Discard(Refusal::Mismatch("SOP class differs from the presentation context's".into()));
        }
        let ingest = &self.scp.ingest;
        match ingest.room().and_then(|()| ingest.receive_into(sop_class, sop_instance, &context.transfer_syntax)) {
            Ok(temp) => Sink::Spool(temp),
            Err(refusal) => Sink::Discard(refusal),
        }
    }

    async fn finish_store(&mut self, pending: Pending) -> Result<(), End> {
        let Pending { command, context, sink, started, bytes } = pending;
        let outcome = match sink {
            Sink::Discard(refusal) => Outcome::Refused(refusal),
            Sink::Spool(temp) => {
                let received = Received {
                    temp,
                    sop_class_uid: command.affected_sop_class_uid.clone().unwrap_or_default(),
                    sop_instance_uid: command.affected_sop_instance_uid.clone().unwrap_or_default(),
                    transfer_syntax_uid: context.transfer_syntax.clone(),
                    calling_ae: self.calling_ae.clone(),
                    peer_address: self.peer.to_string(),
                    analysed: context.service == Service::Analysed,
                    study_instance_uid: None,
                };
                self.scp.ingest.commit(received).await
            }
        };
        let status = store_status(&outcome);
        let ms = started.elapsed().as_millis() as u64;
        let sop_class = command.affected_sop_class_uid.as_deref().unwrap_or("");
        let sop_instance = command.affected_sop_instance_uid.as_deref().unwrap_or("");
        let status_hex = format!("0x{status:04X}");
        crate::metrics::instance(outcome.label(), started.elapsed());
        match &outcome {
            Outcome::Stored { version, header, .. } => {
                self.tally.stored += 1;
                self.tally.bytes += bytes;
                self.tally.received(header);
                info!(peer_ae = %self.calling_ae, peer = %self.peer, sop_class, sop_instance, ts = %context.transfer_syntax,
                      bytes, ms, status = %status_hex, version, "instance stored");
            }
            Outcome::Duplicate { version } => {
                self.tally.stored += 1;
                info!(peer_ae = %self.calling_ae, peer = %self.peer, sop_class, sop_instance, ts = %context.transfer_syntax,
                      bytes, ms, status = %status_hex, version, "instance already stored with the same bytes");
            }
            Outcome::Refused(refusal) => {
                let reason = refusal.reason();
                self.tally.failed += 1;
                warn!(peer_ae = %self.calling_ae, peer = %self.peer, sop_class, sop_instance, ts = %context.transfer_syntax,
                      bytes, ms, status = %status_hex, %reason, "instance refused");
                let detail = format!("{status_hex}: {reason}");
                self.scp.event(EventKind::StoreFailed, &self.calling_ae, self.peer, Some(sop_instance), &detail).await;
                if matches!(refusal, Refusal::Unreadable(_) | Refusal::TooLarge(_)) {
                    let detail = format!("instance {sop_instance} refused ({detail})");
                    self.scp.alert(Alert::HostileObject, &self.calling_ae, self.peer, &detail).await;
                }
            }
        }
        let comment = match &outcome {
            Outcome::Refused(refusal) => Some(comment_for_peer(refusal)),
            _ => None,
        };
        self.respond(context.id, &command, status, comment).await
    }

    async fn respond(
        &mut self,
        context_id: u8,
        request: &Command,
        status: u16,
        comment: Option<&str>,
    ) -> Result<(), End> {
        let response = dimse::encode_response(request, status, comment);
        self.conn.send_command(context_id, response).await.map_err(|e| {
            End::Abort(AbortRQServiceProviderReason::ReasonNotSpecified, format!("cannot send a response: {e}"))
        })
    }
}
