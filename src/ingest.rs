//! From received bytes to a durable instance: the rule "acknowledge only what is durable".
//!
//! A received data set is fsynced, its header read (never its pixels), checked against the
//! C-STORE command, compared with what the database already holds under its SOP Instance UID,
//! renamed into the spool and committed with its rows in one transaction. Only an `Outcome` of
//! `Stored` or `Duplicate` may be answered with Success. Start-up recovery lives here too, since
//! it applies the same rule to files a crash left between rename and commit.
//!
//! It speaks the domain, not DICOM's wire: a refusal says why (`Refusal`), and `dicom/` maps
//! that to a DIMSE status. The SCP reaches the spool and the audit trail only through here.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::bucket::BucketError;
use crate::domain::{EventKind, InstanceHeader};
use crate::spool::{self, Spool, SpoolError, TempInstance};
use crate::store::{Event, NewInstance, PreviousVersion, Store, StoreError};

/// Instances with the same UID are committed one at a time; different UIDs rarely share a stripe.
const LOCK_STRIPES: usize = 64;

/// A complete data set received by C-STORE, not yet durable.
pub struct Received {
    pub temp: TempInstance,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub calling_ae: String,
    pub peer_address: String,
    /// Queued for analysis; otherwise recorded as stored only.
    pub analysed: bool,
    /// The study the request named (a STOW-RS to one study): the data set must be of it.
    pub study_instance_uid: Option<String>,
}

/// What became of a received instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// New instance (or new version of one) committed.
    Stored { version: i64, instance_id: i64, header: Box<InstanceHeader> },
    /// The same bytes were already stored under this UID: nothing new to do.
    Duplicate { version: i64 },
    /// Not stored.
    Refused(Refusal),
}

/// Why a received instance was not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The node cannot keep anything now (disk below its floor or failing, database down, data
    /// set over the size limit); the sender may try again later.
    OutOfResources(String),
    /// The data set cannot be parsed, lacks what identifies it, or holds values the node
    /// cannot keep: the same bytes would fail again.
    Unreadable(String),
    /// The data set is larger than `dicom.max_dataset_mb`: the same bytes would fail again.
    TooLarge(String),
    /// The data set is not what its command or presentation context says it is.
    Mismatch(String),
    /// A SOP class this node does not accept.
    UnsupportedClass(String),
    /// A transfer syntax this node does not accept (an association never brings one: the
    /// presentation context is refused; a whole object over HTTP can).
    UnsupportedSyntax(String),
    /// An operation other than C-STORE carried a data set.
    UnsupportedOperation(String),
}

impl Refusal {
    /// For the log and the audit trail (which may hold the node's own paths and errors).
    pub fn reason(&self) -> &str {
        match self {
            Refusal::OutOfResources(r)
            | Refusal::Unreadable(r)
            | Refusal::TooLarge(r)
            | Refusal::Mismatch(r)
            | Refusal::UnsupportedClass(r)
            | Refusal::UnsupportedSyntax(r)
            | Refusal::UnsupportedOperation(r) => r,
        }
    }
}

impl Outcome {
    /// The label of the `instances` metric.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Stored { .. } => "stored",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Refused(Refusal::OutOfResources(_)) => "out_of_resources",
            Outcome::Refused(Refusal::Unreadable(_) | Refusal::TooLarge(_)) => "failed",
            Outcome::Refused(_) => "refused",
        }
    }
}

/// What start-up recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Complete spool files without rows that were committed now.
    pub registered: usize,
    /// Spool files that could not be registered (left in place, logged).
    pub unreadable: usize,
    /// Spool files without rows too young to register (a shared spool: another node may be
    /// committing them).
    pub left: usize,
    pub requeued_jobs: u64,
    /// SOP Instance UIDs of the jobs interrupted as often as allowed, which the first worker to
    /// take them quarantines (see `Store::recover_interrupted_jobs`).
    pub to_quarantine: Vec<String>,
}

pub struct Ingest {
    spool: Arc<Spool>,
    store: Store,
    locks: Vec<Mutex<()>>,
}

fn out_of_resources(reason: impl Into<String>) -> Outcome {
    Outcome::Refused(Refusal::OutOfResources(reason.into()))
}

/// A database failure: the values' fault when the database refused them (they would fail again,
/// so the sender must not be told to retry), else an outage to wait out.
fn database_failed(e: StoreError) -> Outcome {
    if e.is_data_error() {
        Outcome::Refused(Refusal::Unreadable(format!("the database cannot keep its values: {e}")))
    } else {
        out_of_resources(format!("database unavailable: {e}"))
    }
}

impl Ingest {
    pub fn new(spool: Arc<Spool>, store: Store) -> Ingest {
        Ingest { spool, store, locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect() }
    }

    /// Whether the spool has room for another instance (free disk above `node.min_free_disk_mb`).
    pub fn room(&self) -> Result<(), Refusal> {
        match self.spool.has_room() {
            Ok(true) => Ok(()),
            Ok(false) => Err(Refusal::OutOfResources("free disk space is below node.min_free_disk_mb".into())),
            Err(e) => Err(Refusal::OutOfResources(e.to_string())),
        }
    }

    /// A temporary spool file for a data set about to arrive.
    pub fn receive_into(&self, sop_class_uid: &str, sop_instance_uid: &str, ts: &str) -> Result<TempInstance, Refusal> {
        self.spool.create_temp(sop_class_uid, sop_instance_uid, ts).map_err(|e| Refusal::OutOfResources(e.to_string()))
    }

    /// Appends to the audit trail; a database outage is logged, not fatal.
    pub async fn record_event(&self, event: &Event<'_>) {
        if let Err(e) = self.store.record_event(event).await {
            tracing::warn!(kind = %event.kind, error = %e, "could not record an event");
        }
    }

    /// Records an audit event; a database outage is logged, not fatal (the record is lost,
    /// and the log line says what it would have said).
    pub async fn audit(&self, event: &crate::audit::AuditEvent<'_>) {
        if let Err(e) = self.store.audit(event).await {
            tracing::warn!(audit = event.label(), error = %e, "could not record an audit event");
        }
    }

    /// Makes a received instance durable, or says why not.
    pub async fn commit(&self, received: Received) -> Outcome {
        let Received {
            temp,
            sop_class_uid,
            sop_instance_uid,
            transfer_syntax_uid,
            calling_ae,
            peer_address,
            analysed,
            study_instance_uid,
        } = received;
        // One UID at a time from the version lookup to the commit; the UID comes from the command
        // and the file step refuses a data set whose own UID differs.
        let _guard = self.lock_for(&sop_instance_uid).lock().await;
        let started = std::time::Instant::now();
        let previous = match self.store.latest_version(&sop_instance_uid).await {
            Ok(p) => p,
            Err(e) => return database_failed(e),
        };
        // the previous version, which proves a retry's bytes the same, may be in the bucket only
        if let Some(prev) = &previous {
            match self.spool.fetch(&prev.path).await {
                Ok(()) | Err(BucketError::Missing { .. }) => {}
                Err(e) => return out_of_resources(e.to_string()),
            }
        }
        let spool = self.spool.clone();
        let expected = Expected {
            sop_class_uid: sop_class_uid.clone(),
            sop_instance_uid: sop_instance_uid.clone(),
            study_instance_uid,
        };
        let placed = tokio::task::spawn_blocking(move || make_durable(&spool, temp, &expected, previous)).await;
        crate::metrics::ingest_step("durable", started.elapsed());
        let (header, version, relative, size) = match placed {
            Ok(Ok(Durable::Placed { header, version, relative, size })) => (*header, version, relative, size),
            Ok(Ok(Durable::Duplicate { version })) => {
                let event = Event::new(EventKind::InstanceDuplicate)
                    .peer(&calling_ae, &peer_address)
                    .instance(&sop_instance_uid)
                    .detail("same bytes as the stored version; no new job");
                self.record_event(&event).await;
                return Outcome::Duplicate { version };
            }
            Ok(Err(refusal)) => return refusal,
            // a panic on these bytes would come again with them
            Err(e) => return Outcome::Refused(Refusal::Unreadable(format!("the data set could not be kept: {e}"))),
        };
        // with an object store, the bucket's copy is the durable one
        if let Err(e) = self.spool.upload(&relative).await {
            self.discard(&relative);
            return out_of_resources(e.to_string());
        }
        let skip_reason = (!analysed).then(|| format!("SOP class {sop_class_uid} is stored only"));
        let new = NewInstance {
            header,
            version,
            transfer_syntax_uid,
            calling_ae,
            peer_address,
            path: relative,
            size_bytes: size as i64,
            skip_reason,
            event_kind: EventKind::InstanceStored,
        };
        let recording = std::time::Instant::now();
        let recorded = self.store.record_instance(&new).await;
        crate::metrics::ingest_step("record", recording.elapsed());
        match recorded {
            Ok(recorded) => {
                Outcome::Stored { version, instance_id: recorded.instance_id, header: Box::new(new.header) }
            }
            Err(e) => {
                self.discard(&new.path);
                database_failed(e)
            }
        }
    }

    /// Removes a placed file that is not acknowledged, so not kept: the sender will retry.
    fn discard(&self, relative: &str) {
        if let Err(e) = self.spool.remove(relative) {
            tracing::error!(path = %relative, error = %e, "could not remove an uncommitted spool file");
        }
    }

    fn lock_for(&self, uid: &str) -> &Mutex<()> {
        let mut h = DefaultHasher::new();
        uid.hash(&mut h);
        &self.locks[(h.finish() as usize) % LOCK_STRIPES]
    }

    /// Start-up recovery. The rule: a complete file in the spool was fsynced and renamed before its
    /// rows were committed, so a crash in between leaves a file without rows. Such a file holds a
    /// whole, parseable data set that its sender may or may not have seen acknowledged, so it is
    /// registered now (rows and a queued job, event `instance_recovered`) rather than deleted:
    /// if the sender retries, the same bytes are recognised as a duplicate. Temporary files were
    /// never acknowledged and were removed when the spool was opened. Jobs left `running` are
    /// re-queued; one the node has died analysing `quarantine_after` times is then quarantined,
    /// and reported "not analysed", by the first worker that takes it.
    ///
    /// `analysed` tells, by SOP Class UID, whether a recovered instance is queued for analysis.
    ///
    /// Files younger than `orphan_min_age` are left alone (a spool shared by several nodes: one
    /// of them may be committing the file's rows now).
    pub async fn recover(
        &self,
        analysed: impl Fn(&str) -> bool,
        quarantine_after: u32,
        orphan_min_age: std::time::Duration,
    ) -> Result<Recovery, StoreError> {
        let interrupted = self.store.recover_interrupted_jobs(quarantine_after).await?;
        let mut report = Recovery {
            requeued_jobs: interrupted.requeued,
            to_quarantine: interrupted.to_quarantine,
            ..Default::default()
        };
        let known = self.store.known_paths().await?;
        let files = match self.spool.list() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the spool for recovery");
                return Ok(report);
            }
        };
        for relative in files.into_iter().filter(|p| !known.contains(p)) {
            if !orphan_min_age.is_zero() && self.spool.age(&relative).is_none_or(|age| age < orphan_min_age) {
                report.left += 1;
                continue;
            }
            match self.register_orphan(&relative, &analysed).await {
                Ok(()) => report.registered += 1,
                Err(reason) => {
                    tracing::error!(path = %relative, %reason, "spool file without rows could not be registered; left in place");
                    report.unreadable += 1;
                }
            }
        }
        Ok(report)
    }

    /// Commits the rows of a spool file that has none (a crash between rename and commit, or
    /// an object another node uploaded and never committed), as recovery does.
    pub async fn register_orphan(&self, relative: &str, analysed: &impl Fn(&str) -> bool) -> Result<(), String> {
        let absolute = self.spool.absolute(relative);
        let spool = self.spool.clone();
        let (header, size, ts) = tokio::task::spawn_blocking(move || {
            let (header, ts) = spool.read_header(&absolute).map_err(|e| e.to_string())?;
            let size = std::fs::metadata(&absolute).map_err(|e| e.to_string())?.len();
            Ok::<(InstanceHeader, u64, String), String>((header, size, ts))
        })
        .await
        .map_err(|e| e.to_string())??;
        let version = version_from_path(relative).ok_or("not a spool file name")?;
        if spool::relative_path(&header.study_instance_uid, &header.sop_instance_uid, version).ok().as_deref()
            != Some(relative)
        {
            return Err("file name does not match its UIDs".into());
        }
        // a crash may have come before the upload, or after it (the same bytes then count as stored)
        self.spool.upload(relative).await.map_err(|e| e.to_string())?;
        let skip_reason =
            (!analysed(&header.sop_class_uid)).then(|| format!("SOP class {} is stored only", header.sop_class_uid));
        let new = NewInstance {
            header,
            version,
            transfer_syntax_uid: ts,
            calling_ae: "(recovered)".into(),
            peer_address: String::new(),
            path: relative.to_string(),
            size_bytes: size as i64,
            skip_reason,
            event_kind: EventKind::InstanceRecovered,
        };
        self.store.record_instance(&new).await.map_err(|e| e.to_string())?;
        tracing::info!(path = %relative, "registered a spool file left without rows by a crash");
        Ok(())
    }
}

/// The file half of a commit, the result of [`make_durable`].
enum Durable {
    /// Synced and renamed into place as `relative`; its rows are still to be committed.
    Placed { header: Box<InstanceHeader>, version: i64, relative: String, size: u64 },
    /// The same bytes as the stored `version`: the temporary file was dropped.
    Duplicate { version: i64 },
}

/// What the command (or request) says the data set is.
struct Expected {
    sop_class_uid: String,
    sop_instance_uid: String,
    study_instance_uid: Option<String>,
}

/// Syncs a received file, reads and checks its header against the command's UIDs, compares it
/// with the previous version if any, and renames it into place. Blocking.
fn make_durable(
    spool: &Spool,
    mut temp: TempInstance,
    expected: &Expected,
    previous: Option<PreviousVersion>,
) -> Result<Durable, Outcome> {
    let failed = |e: SpoolError| out_of_resources(e.to_string());
    let mismatch =
        |what: &str| Outcome::Refused(Refusal::Mismatch(format!("{what} of the data set differs from the command's")));
    temp.sync().map_err(failed)?;
    let (header, _) = spool.read_header(temp.path()).map_err(|e| match e {
        SpoolError::Invalid(scan) if scan.is_invalid_data() => Outcome::Refused(Refusal::Unreadable(scan.to_string())),
        other => failed(other),
    })?;
    if header.sop_instance_uid != expected.sop_instance_uid {
        return Err(mismatch("SOP Instance UID"));
    }
    if header.sop_class_uid != expected.sop_class_uid {
        return Err(mismatch("SOP Class UID"));
    }
    if expected.study_instance_uid.as_ref().is_some_and(|study| *study != header.study_instance_uid) {
        let why = "the data set is not of the study the request names";
        return Err(Outcome::Refused(Refusal::Mismatch(why.into())));
    }
    let version = match previous {
        None => 1,
        // a released file proves nothing (it may be gone, or about to be swept): the image is
        // received again, and analysed again as a new version
        Some(prev) if prev.released => prev.version + 1,
        Some(prev) => match spool::same_content(&spool.absolute(&prev.path), temp.path()) {
            Ok(true) => return Ok(Durable::Duplicate { version: prev.version }),
            _ => prev.version + 1,
        },
    };
    let relative = spool::relative_path(&header.study_instance_uid, &header.sop_instance_uid, version)
        .map_err(|e| Outcome::Refused(Refusal::Unreadable(e.to_string())))?;
    let size = temp.file_size().map_err(failed)?;
    spool.place(&mut temp, &relative).map_err(failed)?;
    Ok(Durable::Placed { header: Box::new(header), version, relative, size })
}

/// The version encoded in a spool file name: `<uid>.dcm` is 1, `<uid>.v<N>.dcm` is N.
fn version_from_path(relative: &str) -> Option<i64> {
    let name = relative.rsplit('/').next()?.strip_suffix(".dcm")?;
    match name.rsplit_once(".v") {
        Some((_, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => n.parse().ok(),
        _ => Some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_back_from_file_names() {
        assert_eq!(version_from_path("1.2/1.2.3.dcm"), Some(1));
        assert_eq!(version_from_path("1.2/1.2.3.v7.dcm"), Some(7));
        assert_eq!(version_from_path("1.2/1.2.3.txt"), None);
    }
}
