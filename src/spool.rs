//! Durable storage of received instances.
//!
//! An instance is written to `spool/tmp/` as it arrives (a Part-10 file meta header, then the data
//! set bytes exactly as received), fsynced, and renamed into `spool/<study>/<sop>.dcm` (or
//! `<sop>.v<N>.dcm` for later versions) with the directory fsynced too. Paths are built from
//! sanitized UIDs only. The spool never parses pixel data; it reads the header attributes the
//! database needs and stops at Pixel Data.
//!
//! With an object store (`[object_store]`, see [`crate::bucket`]) the bucket keeps the durable
//! copy, uploaded before the rows are committed, and the directory is this node's cache of it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use rayon::prelude::*;

use crate::bucket::{Area, Bucket, BucketError};
use crate::dicom::scan::{self, ScanError};
use crate::domain::InstanceHeader;
use crate::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// Where temporary files live until they are complete and durable.
const TMP_DIR: &str = "tmp";
/// What a temporary file's name ends with; such files are never taken for instances.
const TMP_SUFFIX: &str = ".part";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot write the file meta header: {0}")]
    Meta(#[source] dicom_object::meta::Error),
    #[error("the data set is refused: {0}")]
    Invalid(#[source] ScanError),
    #[error("{0}")]
    InvalidUid(String),
    #[error("another copy of this instance was stored at {0} at the same moment (another node, or a fetch beside the node); the sender may try again")]
    Taken(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

/// The spool directory of one node.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    /// This node's temporary files: `tmp/<node>/` under the root.
    tmp: PathBuf,
    min_free_bytes: u64,
    /// The largest data set kept (`dicom.max_dataset_mb`); also bounds a deflated one inflated.
    max_dataset_bytes: u64,
    counter: AtomicU64,
    /// Where the durable copy is kept, when not here.
    bucket: Option<Arc<Bucket>>,
    /// Free space retention keeps (`retention.free_target_mb`): below it, receiving wakes the
    /// pruning at once rather than at its next interval. 0: none.
    free_target_bytes: u64,
    pressure: tokio::sync::Notify,
    /// Study folders whose own entry this process has made durable (see `place`).
    durable_dirs: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

/// A file being received; removed on drop unless it was placed into the spool.
#[derive(Debug)]
pub struct TempInstance {
    path: PathBuf,
    file: Option<File>,
    /// Data set bytes written so far.
    bytes: u64,
    /// Data set bytes whose writeback has been started.
    flushed: u64,
}

/// A node's name as a folder name: letters, digits, `.`, `-` and `_` kept, anything else `_`,
/// so that no name can climb out of `tmp/` or hide as a dot-file.
fn node_folder(node: &str) -> String {
    let kept: String =
        node.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if kept.is_empty() || kept.starts_with('.') {
        format!("node-{kept}")
    } else {
        kept
    }
}

impl Spool {
    /// Opens (creating if needed) the spool at `root` for node `node` and removes its incomplete
    /// temporary files, which were never acknowledged. Each node writes its temporary files in a
    /// folder of its own (`tmp/<node>/`), so that on a spool shared by several nodes one never
    /// removes, or collides with, a file another is receiving. Returns the spool and how many
    /// files it removed (those of `tmp/` itself too, where earlier versions wrote them).
    pub fn open(
        root: &Path,
        node: &str,
        min_free_bytes: u64,
        max_dataset_bytes: u64,
    ) -> Result<(Spool, usize), SpoolError> {
        let tmp = root.join(TMP_DIR).join(node_folder(node));
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let mut removed = 0;
        for dir in [root.join(TMP_DIR), tmp] {
            for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let entry = entry.map_err(io_err(&dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                // what a command beside the node (`fetch`) is writing stays; an earlier process
                // with this one's ID has nothing in hand
                let writing = writer(&name).is_some_and(|pid| pid != std::process::id() && is_running(pid));
                if name.ends_with(TMP_SUFFIX) && !writing {
                    fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
                    removed += 1;
                }
            }
        }
        Ok((Spool::attach(root, node, min_free_bytes, max_dataset_bytes)?, removed))
    }

    /// The spool at `root` as it is, its temporary files left alone: for a command run beside a
    /// node that may be receiving (`prune`).
    pub fn attach(root: &Path, node: &str, min_free_bytes: u64, max_dataset_bytes: u64) -> Result<Spool, SpoolError> {
        let root = root.canonicalize().map_err(io_err(root))?;
        let tmp = root.join(TMP_DIR).join(node_folder(node));
        Ok(Spool {
            root,
            tmp,
            min_free_bytes,
            max_dataset_bytes,
            counter: AtomicU64::new(0),
            bucket: None,
            free_target_bytes: 0,
            pressure: tokio::sync::Notify::new(),
            durable_dirs: Default::default(),
        })
    }

    /// The spool at `root` for a command that writes into it beside a node that may be receiving
    /// (`fetch` from a DICOMweb source): created if there is none yet, nobody's temporary files
    /// removed.
    pub fn attach_creating(
        root: &Path,
        node: &str,
        min_free_bytes: u64,
        max_dataset_bytes: u64,
    ) -> Result<Spool, SpoolError> {
        let tmp = root.join(TMP_DIR).join(node_folder(node));
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Spool::attach(root, node, min_free_bytes, max_dataset_bytes)
    }

    /// The spool with its durable copy in `bucket` (the directory becomes a cache).
    pub fn with_bucket(self, bucket: Option<Arc<Bucket>>) -> Spool {
        Spool { bucket, ..self }
    }

    /// The spool that wakes [`Spool::pressure`] when a receive finds less free space than this.
    pub fn with_free_target(self, free_target_bytes: u64) -> Spool {
        Spool { free_target_bytes, ..self }
    }

    /// Woken when a receive finds free space below the target: retention deletes the oldest
    /// finished items now, before the floor is reached.
    pub fn pressure(&self) -> &tokio::sync::Notify {
        &self.pressure
    }

    /// Stores a placed file in the bucket, if there is one; a no-op otherwise (the file is
    /// durable where it was placed).
    pub async fn upload(&self, relative: &str) -> Result<(), BucketError> {
        match &self.bucket {
            Some(bucket) => bucket.upload(Area::Spool, relative, &self.absolute(relative)).await,
            None => Ok(()),
        }
    }

    /// Makes sure a spool file is here, fetching it from the bucket if it is not (another node
    /// received it). Without a bucket there is nothing to fetch: a missing file stays missing.
    pub async fn fetch(&self, relative: &str) -> Result<(), BucketError> {
        match &self.bucket {
            Some(bucket) => bucket.fetch(Area::Spool, relative, &self.absolute(relative)).await,
            None => Ok(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn absolute(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// The largest data set the spool keeps, in bytes.
    pub fn max_dataset_bytes(&self) -> u64 {
        self.max_dataset_bytes
    }

    /// Walks a Part-10 file's data set within the scan's limits (see [`crate::dicom::scan`]; a deflated
    /// data set inflates to at most `dicom.max_dataset_mb`) and takes the attributes the database
    /// needs, and the transfer syntax, from it; never reads pixel data.
    pub fn read_header(&self, path: &Path) -> Result<(InstanceHeader, String), SpoolError> {
        let scanned = scan::scan_file(path, self.max_dataset_bytes).map_err(SpoolError::Invalid)?;
        let required = |tag, name: &'static str| scanned.text(tag).ok_or(SpoolError::Invalid(ScanError::Missing(name)));
        let header = InstanceHeader {
            sop_class_uid: required(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: required(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            study_instance_uid: required(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_instance_uid: scanned.text(tags::SERIES_INSTANCE_UID),
            patient_id: scanned.text(tags::PATIENT_ID),
            patient_name: scanned.text(tags::PATIENT_NAME),
            issuer_of_patient_id: scanned.text(tags::ISSUER_OF_PATIENT_ID),
            patient_birth_date: scanned.text(tags::PATIENT_BIRTH_DATE),
            patient_sex: scanned.text(tags::PATIENT_SEX),
            accession_number: scanned.text(tags::ACCESSION_NUMBER),
            study_date: scanned.text(tags::STUDY_DATE),
            study_description: scanned.text(tags::STUDY_DESCRIPTION),
            modality: scanned.text(tags::MODALITY),
            body_part: scanned.text(tags::BODY_PART_EXAMINED),
            view_position: scanned.text(tags::VIEW_POSITION),
        };
        Ok((header, scanned.transfer_syntax))
    }

    /// Whether the spool can take an image now: a file written and removed in its temporary
    /// directory, and free space above the floor (`/readyz`).
    pub fn probe(&self) -> Result<(), String> {
        let path = self.tmp.join(".ready-probe");
        fs::write(&path, b"ready")
            .and_then(|()| fs::remove_file(&path))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        match self.has_room() {
            Ok(true) => Ok(()),
            Ok(false) => Err("free space is below node.min_free_disk_mb".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// How long ago a spool file (relative path) was last written; `None` when it cannot be read.
    pub fn age(&self, relative: &str) -> Option<std::time::Duration> {
        let modified = fs::metadata(self.absolute(relative)).and_then(|m| m.modified()).ok()?;
        Some(modified.elapsed().unwrap_or_default())
    }

    /// Whether the spool's file system has more free space than the configured floor.
    pub fn has_room(&self) -> Result<bool, SpoolError> {
        let free = self.free_bytes()?;
        if free < self.free_target_bytes {
            self.pressure.notify_one();
        }
        Ok(free > self.min_free_bytes)
    }

    /// The free space of the spool's file system, in bytes (what an unprivileged writer may use).
    pub fn free_bytes(&self) -> Result<u64, SpoolError> {
        let st = rustix::fs::statvfs(&self.root)
            .map_err(|e| SpoolError::Io { path: self.root.clone(), source: e.into() })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// This node's temporary files that no receive in progress holds: those a process that has
    /// ended left (their names start with its process ID), as paths. Not those of a command
    /// running beside the node (`fetch` writes here too).
    pub fn stale_temporaries(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.tmp) else { return Vec::new() };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(TMP_SUFFIX) && writer(name).is_none_or(|pid| !is_running(pid)))
            .map(|name| self.tmp.join(name))
            .collect()
    }

    /// Starts a new file with a Part-10 preamble and file meta header for the given identity.
    pub fn create_temp(
        &self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax_uid: &str,
    ) -> Result<TempInstance, SpoolError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{n}{TMP_SUFFIX}", std::process::id()));
        let mut header = Vec::with_capacity(512);
        header.extend_from_slice(&[0u8; 128]);
        header.extend_from_slice(b"DICM");
        FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class_uid)
            .media_storage_sop_instance_uid(sop_instance_uid)
            .transfer_syntax(transfer_syntax_uid)
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .build()
            .and_then(|meta| meta.write(&mut header))
            .map_err(SpoolError::Meta)?;
        let mut file = File::create(&path).map_err(io_err(&path))?;
        file.write_all(&header).map_err(io_err(&path))?;
        Ok(TempInstance { path, file: Some(file), bytes: 0, flushed: 0 })
    }

    /// Moves a complete, synced temporary file to `relative` and makes the rename durable. Never
    /// over a file already there: two processes can store one UID at once (nodes sharing the
    /// spool, or `fetch` beside the node), each sure it is the first, and the loser must not
    /// replace the file whose rows the winner committed.
    pub fn place(&self, temp: &mut TempInstance, relative: &str) -> Result<(), SpoolError> {
        let target = self.root.join(relative);
        let dir = target.parent().expect("spool paths have a study directory");
        // The folder's own entry in the root must be durable too: synced by the first file this
        // process places in the folder, whoever made it (another receive may have made it a
        // moment before and not synced the root yet), and again once it is made anew (the sweep
        // removes folders left empty). Not at every file: a sync of a folder with nothing new
        // still costs the disk a cache flush.
        let mut fresh = self.make_dir(dir)?;
        if let Err(e) = rename_new(&temp.path, &target) {
            // the sweep may have removed the study's folder, found empty, in between: once more
            if e.kind() != io::ErrorKind::NotFound {
                return Err(placing_failed(&target, e));
            }
            fresh |= self.make_dir(dir)?;
            rename_new(&temp.path, &target).map_err(|e| placing_failed(&target, e))?;
        }
        temp.file = None;
        temp.path = PathBuf::new();
        sync_dir(dir)?;
        if fresh || !self.durable_dirs().contains(dir) {
            sync_dir(&self.root)?;
            let mut durable = self.durable_dirs();
            if durable.len() >= DURABLE_DIRS_KEPT {
                durable.clear(); // forgetting costs a sync, not durability
            }
            durable.insert(dir.to_path_buf());
        }
        Ok(())
    }

    /// Makes study folder `dir` if it is not there; whether this call made it. A folder made
    /// anew is first forgotten as durable, so that another receive placing a file in it
    /// meanwhile syncs the root itself.
    fn make_dir(&self, dir: &Path) -> Result<bool, SpoolError> {
        if dir.is_dir() {
            return Ok(false);
        }
        self.durable_dirs().remove(dir);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(true)
    }

    fn durable_dirs(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<PathBuf>> {
        self.durable_dirs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes a placed file whose rows could not be committed. Not from the bucket: there,
    /// another node storing the same bytes may have counted on it (a race of two deliveries of
    /// one instance), and an object without rows was never acknowledged.
    pub fn remove(&self, relative: &str) -> Result<(), SpoolError> {
        let path = self.root.join(relative);
        fs::remove_file(&path).map_err(io_err(&path))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// Every complete instance file in the spool, as paths relative to its root.
    pub fn list(&self) -> Result<Vec<String>, SpoolError> {
        let mut out: Vec<String> =
            files_by_study(&self.root)?.into_iter().filter(|f| f.is_instance()).map(|f| f.relative).collect();
        out.sort();
        Ok(out)
    }
}

/// A file found in a folder of study folders (the spool, the outputs).
#[derive(Debug, Clone)]
pub struct FoundFile {
    /// `<study>/<name>`.
    pub relative: String,
    /// How long ago it was last written.
    pub age: std::time::Duration,
    pub size_bytes: u64,
}

impl FoundFile {
    /// A complete object (`.dcm`), not a temporary or a fetch in progress.
    pub fn is_instance(&self) -> bool {
        self.relative.ends_with(".dcm")
    }
}

/// Every file in the study folders under `root` (`<study>/<file>`; the spool's `tmp/` left
/// out), and removes study folders found empty for an hour (what retention left).
pub fn files_by_study(root: &Path) -> Result<Vec<FoundFile>, SpoolError> {
    let mut out = Vec::new();
    for study in fs::read_dir(root).map_err(io_err(root))? {
        let study = study.map_err(io_err(root))?;
        let name = study.file_name().to_string_lossy().into_owned();
        if name == TMP_DIR || !study.file_type().map_err(io_err(&study.path()))?.is_dir() {
            continue;
        }
        let before = out.len();
        for file in fs::read_dir(study.path()).map_err(io_err(&study.path()))? {
            let file = file.map_err(io_err(&study.path()))?;
            let metadata = file.metadata().ok();
            let age = metadata.as_ref().and_then(|m| m.modified().ok()).map(|t| t.elapsed().unwrap_or_default());
            out.push(FoundFile {
                relative: format!("{name}/{}", file.file_name().to_string_lossy()),
                age: age.unwrap_or_default(),
                size_bytes: metadata.map_or(0, |m| m.len()),
            });
        }
        let idle = study.metadata().and_then(|m| m.modified()).map(|t| t.elapsed().unwrap_or_default());
        if out.len() == before && idle.is_ok_and(|idle| idle >= EMPTY_FOLDER_AGE) {
            // fails harmlessly if a file arrived meanwhile; `place` tries again if it lost it
            let _ = fs::remove_dir(study.path());
        }
    }
    Ok(out)
}

/// A study folder empty for this long is removed by the sweep.
const EMPTY_FOLDER_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

impl TempInstance {
    /// Appends received data set bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let file = self.file.as_mut().expect("a temp instance is written only before it is placed");
        file.write_all(data).map_err(io_err(&self.path))?;
        self.bytes += data.len() as u64;
        if self.bytes - self.flushed >= EARLY_WRITEBACK {
            start_writeback(file, self.flushed, self.bytes - self.flushed);
            self.flushed = self.bytes;
        }
        Ok(())
    }

    /// Data set bytes written so far (without the file meta header).
    pub fn data_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the file's data to stable storage.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        let file = self.file.as_mut().expect("a temp instance is synced only before it is placed");
        file.sync_data().map_err(io_err(&self.path))
    }

    /// Size of the whole file (meta header included).
    pub fn file_size(&self) -> Result<u64, SpoolError> {
        fs::metadata(&self.path).map(|m| m.len()).map_err(io_err(&self.path))
    }
}

/// The process ID a temporary file's name starts with (`<pid>-<n>.part`).
fn writer(name: &str) -> Option<u32> {
    name.split_once('-')?.0.parse().ok()
}

/// Whether process `pid` is running (on this host: a node's temporary folder is its own).
fn is_running(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else { return false };
    // a process of another user (an admin's `fetch` under sudo) answers "not permitted"
    matches!(rustix::process::test_kill_process(pid), Ok(()) | Err(rustix::io::Errno::PERM))
}

/// Renames `from` to `to` unless `to` exists. Where the file system cannot rename that way
/// (`RENAME_NOREPLACE` is not everywhere), a hard link, which never replaces, then the removal
/// of `from`.
fn rename_new(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        other => other.map_err(io::Error::from),
    }
}

fn placing_failed(target: &Path, e: io::Error) -> SpoolError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        SpoolError::Taken(target.to_path_buf())
    } else {
        io_err(target)(e)
    }
}

impl Drop for TempInstance {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Every this many bytes received, writeback of the file's new pages is started, so that the
/// fsync at the end of the data set waits for the tail only instead of the whole image.
const EARLY_WRITEBACK: u64 = 1 << 20;

/// Asks the kernel to start writing a range of the file to disk, without waiting (Linux
/// `sync_file_range` with `SYNC_FILE_RANGE_WRITE`). Only a hint: durability still comes from
/// the fsync before the file is placed, so a failure here is ignored.
fn start_writeback(file: &File, data_offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // the file meta header sits before the data set; over-covering the range is harmless
    let (offset, len) = (data_offset as libc::off64_t, (len + 4096) as libc::off64_t);
    // SAFETY: the descriptor is owned by `file`, which outlives the call; the call only reads
    // its integer arguments.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Writes files under `root` (relative paths) so that each is whole on disk or absent, and
/// survives a power cut once this returns: each to a temporary beside it, fsynced, renamed, and
/// each directory fsynced once. For the objects the node creates (`<data_dir>/outputs`). The
/// files' syncs are issued together, so the file system commits them in one journal transaction.
pub fn write_all_durably(root: &Path, files: &[(String, &[u8])]) -> Result<(), SpoolError> {
    let written: Vec<(PathBuf, PathBuf)> = files
        .par_iter()
        .map(|(relative, bytes)| {
            let path = root.join(relative);
            let dir = path.parent().expect("output paths have a directory");
            fs::create_dir_all(dir).map_err(io_err(dir))?;
            let temp = path.with_extension("part");
            let mut file = File::create(&temp).map_err(io_err(&temp))?;
            file.write_all(bytes).and_then(|_| file.sync_all()).map_err(io_err(&temp))?;
            Ok((temp, path))
        })
        .collect::<Result<_, SpoolError>>()?;
    let mut dirs = Vec::new();
    for (temp, path) in written {
        fs::rename(&temp, &path).map_err(io_err(&path))?;
        let dir = path.parent().expect("output paths have a directory").to_path_buf();
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs.par_iter().try_for_each(|dir| sync_dirs(dir, root))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

/// How many study folders `Spool::place` remembers as durable (a few hundred bytes each).
const DURABLE_DIRS_KEPT: usize = 10_000;

/// Makes durable the files' new names in `dir` and `dir`'s own entry in the folders up to
/// `root`: every time, not only when this call made `dir` (another writer may have made it a
/// moment before and not synced its parent yet).
fn sync_dirs(dir: &Path, root: &Path) -> Result<(), SpoolError> {
    sync_dir(dir)?;
    let mut at = dir;
    while let Some(parent) = at.parent().filter(|p| p.starts_with(root)) {
        sync_dir(parent)?;
        at = parent;
    }
    Ok(())
}

/// A UID fit to be a path component: digits and dots, 1 to 64 characters, no empty component.
pub fn sanitize_uid(uid: &str) -> Option<&str> {
    let uid = uid.trim_end_matches(['\0', ' ']);
    let ok = !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && uid.split('.').all(|c| !c.is_empty());
    ok.then_some(uid)
}

/// The spool path of a version of an instance, relative to the spool root.
pub fn relative_path(study_uid: &str, sop_uid: &str, version: i64) -> Result<String, SpoolError> {
    let study = sanitize_uid(study_uid)
        .ok_or_else(|| SpoolError::InvalidUid(format!("invalid Study Instance UID {study_uid:?}")))?;
    let sop =
        sanitize_uid(sop_uid).ok_or_else(|| SpoolError::InvalidUid(format!("invalid SOP Instance UID {sop_uid:?}")))?;
    Ok(if version <= 1 { format!("{study}/{sop}.dcm") } else { format!("{study}/{sop}.v{version}.dcm") })
}

/// Whether two files hold the same bytes.
pub fn same_content(a: &Path, b: &Path) -> Result<bool, SpoolError> {
    let (ma, mb) = (fs::metadata(a).map_err(io_err(a))?, fs::metadata(b).map_err(io_err(b))?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (File::open(a).map_err(io_err(a))?, File::open(b).map_err(io_err(b))?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba).map_err(io_err(a))?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n]).map_err(io_err(b))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_name_cannot_leave_the_temporary_folder() {
        for (name, folder) in [
            ("triage-a", "triage-a"),
            ("host.example.org", "host.example.org"),
            ("../../etc", "node-.._.._etc"),
            ("a/b\\c d", "a_b_c_d"),
            ("", "node-"),
            (".hidden", "node-.hidden"),
        ] {
            assert_eq!(node_folder(name), folder);
            assert!(!node_folder(name).contains('/') && node_folder(name) != "..");
        }
    }

    fn temp_with(spool: &Spool, bytes: &[u8]) -> TempInstance {
        let mut temp = spool.create_temp("1.2.840.10008.5.1.4.1.1.1", "1.2.3.4", "1.2.840.10008.1.2.1").unwrap();
        temp.write(bytes).unwrap();
        temp.sync().unwrap();
        temp
    }

    /// Two processes storing one UID at once each take it for the first version: the second
    /// file placed must not replace the first (whose rows may be committed), and is refused.
    #[test]
    fn a_file_is_never_placed_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), "node", 0, 1 << 20).unwrap();
        let mut first = temp_with(&spool, b"first");
        let mut second = temp_with(&spool, b"second");
        spool.place(&mut first, "1.2/1.2.3.4.dcm").unwrap();
        let second_path = second.path().to_path_buf();
        match spool.place(&mut second, "1.2/1.2.3.4.dcm") {
            Err(SpoolError::Taken(path)) => assert!(path.ends_with("1.2/1.2.3.4.dcm")),
            other => panic!("placed over the first: {other:?}"),
        }
        let kept = fs::read(dir.path().join("1.2/1.2.3.4.dcm")).unwrap();
        assert!(kept.ends_with(b"first"), "the first file is intact");
        drop(second);
        assert!(!second_path.exists(), "the refused file is removed");
    }

    /// The temporary files of a process still running (a `fetch` beside the node) are neither
    /// swept nor removed at start-up; those of processes that ended are.
    #[test]
    fn temporaries_of_a_running_process_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), "node", 0, 1 << 20).unwrap();
        let mut beside = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let tmp = dir.path().join(TMP_DIR).join("node");
        let (live, ended, ours) = (
            tmp.join(format!("{}-0{TMP_SUFFIX}", beside.id())),
            tmp.join(format!("{}-0{TMP_SUFFIX}", i32::MAX - 1)),
            tmp.join(format!("{}-0{TMP_SUFFIX}", std::process::id())),
        );
        for path in [&live, &ended, &ours] {
            fs::write(path, b"part").unwrap();
        }
        assert_eq!(spool.stale_temporaries(), std::slice::from_ref(&ended), "only the ended process's");
        let (_, removed) = Spool::open(dir.path(), "node", 0, 1 << 20).unwrap();
        assert_eq!(removed, 2, "at start-up, the ended process's and an earlier one's with this ID");
        assert!(live.exists() && !ended.exists() && !ours.exists());
        beside.kill().unwrap();
        beside.wait().unwrap();
        assert_eq!(spool.stale_temporaries(), [live], "once the process has ended");
    }

    #[test]
    fn uids_that_could_escape_are_refused() {
        assert_eq!(sanitize_uid("1.2.3\0"), Some("1.2.3"));
        for bad in ["", "..", "1..2", "1.2/3", "../1", "1.2.a", ".1", &"1".repeat(65)] {
            assert_eq!(sanitize_uid(bad), None, "{bad:?}");
        }
        assert!(relative_path("1.2", "../../etc/passwd", 1).is_err());
        assert_eq!(relative_path("1.2", "1.2.3", 1).unwrap(), "1.2/1.2.3.dcm");
        assert_eq!(relative_path("1.2", "1.2.3", 2).unwrap(), "1.2/1.2.3.v2.dcm");
    }
}
