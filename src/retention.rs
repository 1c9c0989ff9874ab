//! Retention (`[retention]`): received images and the objects made of them are deleted once
//! nothing needs them, the oldest finished ones early when free space runs short, and leftover
//! files are swept; run inside `serve` every `retention.interval_secs`, and by `prune`.
//!
//! The rules of what may go are the store's ([`crate::store::Cutoffs`]); here is the order of
//! the steps that makes a deletion crash-safe: the rows are marked released and committed, then
//! the file (and its object in the bucket) is removed. A crash in between leaves a released row
//! beside a file, which the next sweep removes; never a row pointing at a missing file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::bucket::{Area, Bucket};
use crate::config::{Config, RetentionConfig};
use crate::domain::EventKind;
use crate::ingest::Ingest;
use crate::shutdown::Shutdown;
use crate::spool::{self, Spool};
use crate::store::{Cutoffs, Event, JobScope, Releasable, Store, StoreError};

/// A file without rows younger than this may be one being committed right now (on a shared
/// spool or bucket, by another node); older, it was never acknowledged and is registered.
pub const COMMIT_WINDOW: Duration = Duration::from_secs(600);
/// A temporary file (an output being written, an object being fetched) older than this was
/// left by a process that stopped.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);
/// A local copy written (or fetched) more recently than this may be being read: it stays.
const RECENTLY_WRITTEN: Duration = Duration::from_secs(60);

/// What one pruning round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub images: Freed,
    pub outputs: Freed,
    /// Of those, deleted early because free space was below the target.
    pub under_pressure: Freed,
    /// Local copies of finished items removed while the bucket keeps them (above
    /// `object_store.cache_mb`, or to make room before anything is deleted early).
    pub evicted: Freed,
    /// Studies whose patient attributes were removed.
    pub patient_data: u64,
    /// Events of the node's trail (`events`) older than `patient_data_days`, removed.
    pub events: u64,
    /// Free space stayed below the target with nothing finished left to delete.
    pub nothing_left: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    pub files: u64,
    pub bytes: u64,
}

impl Freed {
    fn add(&mut self, other: Freed) {
        self.files += other.files;
        self.bytes += other.bytes;
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Files whose rows say released (a crash between the mark and the removal, or another
    /// node's cached copy).
    pub released: u64,
    /// Spool files (or bucket objects) without rows, registered as recovery does.
    pub registered: u64,
    /// Output files without rows (a result never committed: it is made again).
    pub orphans_removed: u64,
    /// Temporary files of a stopped process.
    pub temporaries: u64,
}

impl Swept {
    pub fn total(&self) -> u64 {
        self.released + self.registered + self.orphans_removed + self.temporaries
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Files(String),
}

/// The node's retention: its rules, and where its files are.
pub struct Retention {
    store: Store,
    spool: Arc<Spool>,
    ingest: Arc<Ingest>,
    outputs_dir: PathBuf,
    bucket: Option<Arc<Bucket>>,
    rules: RetentionConfig,
    /// `retention.free_target_mb`, or what it defaults to.
    target_mb: u64,
    /// `object_store.cache_mb` in bytes, with a bucket: the size the local copies are kept under.
    cache_bytes: Option<u64>,
    scope: JobScope,
    /// Whether a SOP class is analysed (an orphan registered gets a job, or is stored only).
    analysed: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// The last round found free space below the target and nothing finished to delete.
    starved: AtomicBool,
}

/// The two folders retention deletes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Folder {
    Spool = 0,
    Outputs = 1,
}

impl Folder {
    fn name(self) -> &'static str {
        match self {
            Folder::Spool => "spool",
            Folder::Outputs => "outputs",
        }
    }

    fn area(self) -> Area {
        match self {
            Folder::Spool => Area::Spool,
            Folder::Outputs => Area::Outputs,
        }
    }
}

impl Retention {
    pub fn new(
        config: &Config,
        store: Store,
        ingest: Arc<Ingest>,
        spool: Arc<Spool>,
        bucket: Option<Arc<Bucket>>,
        analysed: Box<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> Retention {
        Retention {
            store,
            spool,
            ingest,
            outputs_dir: config.outputs_dir(),
            bucket,
            rules: config.retention.clone(),
            target_mb: config.retention.free_target_mb(config.node.min_free_disk_mb),
            cache_bytes: config.object_store.as_ref().map(|o| o.cache_mb.saturating_mul(1 << 20)),
            scope: JobScope::of(config),
            analysed,
            starved: AtomicBool::new(false),
        }
    }

    /// The cut-offs of the time rules at the store's `now`.
    pub fn cutoffs(&self, now: i64) -> Cutoffs {
        let before = |d: Duration| now - d.as_millis() as i64;
        Cutoffs {
            analysed: before(self.rules.images()),
            investigated: before(self.rules.investigation()),
            outputs: before(self.rules.outputs()),
        }
    }

    /// What a round would delete now by the time rules, oldest first (`prune --dry-run`).
    pub async fn plan(&self, limit: i64) -> Result<(Vec<Releasable>, Vec<Releasable>), RetentionError> {
        let cut = self.cutoffs(self.store.now());
        let images = self.store.images_that_may_go(&cut, self.scope, limit).await?;
        let outputs = self.store.outputs_that_may_go(&cut, self.scope, limit).await?;
        Ok((images, outputs))
    }

    /// One round: what the time rules let go, then the oldest finished items while free space
    /// is below the target, then the patient attributes of old studies.
    pub async fn prune(&self) -> Result<Pruned, RetentionError> {
        let mut pruned = Pruned::default();
        let cut = self.cutoffs(self.store.now());
        pruned.images = self.release_all(Folder::Spool, &cut, "age").await?;
        pruned.outputs = self.release_all(Folder::Outputs, &cut, "age").await?;
        if let Some(limit) = self.cache_bytes {
            pruned.evicted = self.evict_local_copies(Some(limit), 0, "above object_store.cache_mb").await?;
        }
        let target = self.target_mb.saturating_mul(1 << 20);
        let mut pressure = 0;
        while self.free_bytes()? < target {
            pressure = 1;
            // With a bucket, local copies it keeps are what can go: nothing is lost. Deleting
            // items early would delete them from the bucket and free nothing here, where their
            // copies are gone already: what fills the disk then is work still to do.
            if self.cache_bytes.is_some() {
                let need = target.saturating_sub(self.free_bytes()?);
                let evicted = self.evict_local_copies(None, need, "to make room").await?;
                if evicted.files > 0 {
                    pruned.evicted.add(evicted);
                    continue;
                }
                pressure = 2;
                pruned.nothing_left = true;
                break;
            }
            // a batch at a time, until there is room again or nothing finished is left: objects
            // already delivered first (the PACS has them), then the oldest finished images
            let cut = Cutoffs::everything_finished(self.store.now());
            let need = target.saturating_sub(self.free_bytes()?);
            let objects = self.release_to_free(Folder::Outputs, &cut, need).await?;
            let freed =
                if objects.files > 0 { objects } else { self.release_to_free(Folder::Spool, &cut, need).await? };
            if freed.files == 0 {
                pressure = 2;
                pruned.nothing_left = true;
                break;
            }
            pruned.under_pressure.add(freed);
        }
        let free = self.free_bytes()?;
        crate::metrics::disk(free, pressure);
        // said when something went early, or when the node first runs out of things to delete
        let was_starved = self.starved.swap(pruned.nothing_left, Ordering::Relaxed);
        let newly_starved = pruned.nothing_left && !was_starved;
        if pruned.under_pressure.files > 0 || newly_starved {
            let detail = format!(
                "free space {} MiB below retention.free_target_mb {}: deleted {} finished files early ({} MiB){}",
                free >> 20,
                self.target_mb,
                pruned.under_pressure.files,
                pruned.under_pressure.bytes >> 20,
                if pruned.nothing_left { "; nothing finished is left to delete" } else { "" }
            );
            warn!(
                free_mb = free >> 20,
                target_mb = self.target_mb,
                deleted = pruned.under_pressure.files,
                nothing_left = pruned.nothing_left,
                "disk pressure: {detail}"
            );
            self.store.record_event(&Event::new(EventKind::DiskPressure).detail(&detail)).await?;
        }
        let before = self.store.now() - self.rules.patient_data().as_millis() as i64;
        loop {
            let n = self.store.remove_patient_data(before, self.batch()).await?;
            pruned.patient_data += n;
            if n < self.batch() as u64 {
                break;
            }
        }
        loop {
            let n = self.store.remove_events(before, self.batch()).await?;
            pruned.events += n;
            if n < self.batch() as u64 {
                break;
            }
        }
        if pruned.events > 0 {
            info!(
                events = pruned.events,
                "events older than {} days removed from the trail", self.rules.patient_data_days
            );
        }
        if pruned.patient_data > 0 {
            let detail = format!(
                "patient attributes removed from {} studies older than {} days",
                pruned.patient_data, self.rules.patient_data_days
            );
            info!(studies = pruned.patient_data, "{detail}");
            self.store.record_event(&Event::new(EventKind::PatientDataRemoved).detail(&detail)).await?;
        }
        let (images, outputs) = (pruned.images, pruned.outputs);
        if images.files + outputs.files > 0 {
            let detail = format!(
                "released {} images ({} MiB) and {} objects ({} MiB) past their retention",
                images.files,
                images.bytes >> 20,
                outputs.files,
                outputs.bytes >> 20
            );
            info!(images = images.files, objects = outputs.files, "{detail}");
            self.store.record_event(&Event::new(EventKind::FilesReleased).detail(&detail)).await?;
        }
        self.report_kept().await?;
        self.store.fold_tallies().await?;
        Ok(pruned)
    }

    fn batch(&self) -> i64 {
        self.rules.batch as i64
    }

    fn free_bytes(&self) -> Result<u64, RetentionError> {
        self.spool.free_bytes().map_err(|e| RetentionError::Files(e.to_string()))
    }

    /// Releases batches until the rules let nothing more go.
    async fn release_all(&self, folder: Folder, cut: &Cutoffs, why: &'static str) -> Result<Freed, RetentionError> {
        let mut freed = Freed::default();
        loop {
            let batch = self.release_batch(folder, cut, why).await?;
            freed.add(batch);
            if batch.files < self.rules.batch {
                return Ok(freed);
            }
            // small steps: what receives and analyses goes first
            tokio::task::yield_now().await;
        }
    }

    /// Releases the oldest items that may go, as few as free `need` bytes (at most a batch).
    async fn release_to_free(&self, folder: Folder, cut: &Cutoffs, need: u64) -> Result<Freed, RetentionError> {
        let candidates = match folder {
            Folder::Spool => self.store.images_that_may_go(cut, self.scope, self.batch()).await?,
            Folder::Outputs => self.store.outputs_that_may_go(cut, self.scope, self.batch()).await?,
        };
        let mut enough = 0u64;
        let n = candidates
            .iter()
            .take_while(|c| {
                let more = enough < need;
                enough += c.size_bytes.max(0) as u64;
                more
            })
            .count();
        if n == 0 {
            return Ok(Freed::default());
        }
        self.release(folder, cut, n as i64, "disk_pressure").await
    }

    /// Marks one batch released, then removes its files.
    async fn release_batch(&self, folder: Folder, cut: &Cutoffs, why: &'static str) -> Result<Freed, RetentionError> {
        self.release(folder, cut, self.batch(), why).await
    }

    /// Marks up to `limit` items released, oldest first, then removes their files.
    async fn release(
        &self,
        folder: Folder,
        cut: &Cutoffs,
        limit: i64,
        why: &'static str,
    ) -> Result<Freed, RetentionError> {
        let released = match folder {
            Folder::Spool => self.store.release_images(cut, self.scope, limit).await?,
            Folder::Outputs => self.store.release_outputs(cut, self.scope, limit).await?,
        };
        let mut freed = Freed::default();
        for (_, path, size) in &released {
            self.remove(folder, path).await;
            freed.files += 1;
            freed.bytes += (*size).max(0) as u64;
        }
        crate::metrics::pruned(folder.name(), why, freed.files, freed.bytes);
        Ok(freed)
    }

    /// With a bucket, the local copies are a cache. Removes the copies of finished items (the
    /// bucket keeps them; whoever needs one fetches it again), least recently written first,
    /// until they take at most `limit` bytes and `need` bytes are freed; never a copy written in
    /// the last minute, which may be being read.
    async fn evict_local_copies(
        &self,
        limit: Option<u64>,
        need: u64,
        why: &'static str,
    ) -> Result<Freed, RetentionError> {
        let mut copies = Vec::new();
        for folder in [Folder::Spool, Folder::Outputs] {
            let root = self.root(folder);
            if root.exists() {
                let files = tokio::task::block_in_place(|| spool::files_by_study(&root))
                    .map_err(|e| RetentionError::Files(e.to_string()))?;
                copies.extend(files.into_iter().filter(|f| f.is_instance()).map(|f| (folder, f)));
            }
        }
        let total: u64 = copies.iter().map(|(_, f)| f.size_bytes).sum();
        let to_free = need.max(limit.map_or(0, |limit| total.saturating_sub(limit)));
        if to_free == 0 {
            crate::metrics::cache(total);
            return Ok(Freed::default());
        }
        copies.retain(|(_, f)| f.age >= RECENTLY_WRITTEN);
        copies.sort_by_key(|(_, copy)| std::cmp::Reverse(copy.age));
        let paths = |folder: Folder| -> Vec<String> {
            copies.iter().filter(|(f, _)| *f == folder).map(|(_, c)| c.relative.clone()).collect()
        };
        let finished_images = self.store.finished_images(&paths(Folder::Spool)).await?;
        let finished_outputs = self.store.finished_outputs(&paths(Folder::Outputs)).await?;
        let mut freed = [Freed::default(), Freed::default()];
        for (folder, copy) in &copies {
            if freed.iter().map(|f| f.bytes).sum::<u64>() >= to_free {
                break;
            }
            let finished = match folder {
                Folder::Spool => &finished_images,
                Folder::Outputs => &finished_outputs,
            };
            if finished.contains(&copy.relative) && std::fs::remove_file(self.local(*folder, &copy.relative)).is_ok() {
                let freed = &mut freed[*folder as usize];
                freed.files += 1;
                freed.bytes += copy.size_bytes;
            }
        }
        for folder in [Folder::Spool, Folder::Outputs] {
            let f = freed[folder as usize];
            // a local copy, not the item: counted apart from what pruning let go
            crate::metrics::pruned(folder.name(), "cache", f.files, f.bytes);
        }
        let [images, objects] = freed;
        crate::metrics::cache(total.saturating_sub(images.bytes + objects.bytes));
        if images.files + objects.files > 0 {
            info!(
                images = images.files,
                objects = objects.files,
                "removed the local copies of {} images and {} objects ({} MiB) that the object store keeps, \
                 least recently written first ({})",
                images.files,
                objects.files,
                (images.bytes + objects.bytes) >> 20,
                why
            );
        }
        Ok(Freed { files: images.files + objects.files, bytes: images.bytes + objects.bytes })
    }

    /// Removes a released file here and in the bucket. A failure is logged and left to the
    /// sweep, which removes the files of released rows.
    async fn remove(&self, folder: Folder, relative: &str) {
        let local = self.local(folder, relative);
        if let Err(e) = std::fs::remove_file(&local) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %local.display(), error = %e, "cannot delete a released file; the next sweep tries again");
            }
        }
        if let Some(bucket) = &self.bucket {
            if let Err(e) = bucket.delete(folder.area(), relative).await {
                warn!(error = %e, "cannot delete a released object; the next sweep tries again");
            }
        }
    }

    fn local(&self, folder: Folder, relative: &str) -> PathBuf {
        self.root(folder).join(relative)
    }

    fn root(&self, folder: Folder) -> PathBuf {
        match folder {
            Folder::Spool => self.spool.root().to_path_buf(),
            Folder::Outputs => self.outputs_dir.clone(),
        }
    }

    async fn report_kept(&self) -> Result<(), RetentionError> {
        let (images, outputs) = self.store.kept().await?;
        let now = self.store.now();
        for (area, kept) in [("spool", images), ("outputs", outputs)] {
            let oldest = kept.oldest.map_or(0, |t| (now - t).max(0) as u64);
            crate::metrics::kept(area, kept.files, kept.bytes, Duration::from_millis(oldest));
        }
        Ok(())
    }

    /// Removes what nothing will ever delete otherwise: files of released rows, temporaries of
    /// stopped processes, fetches that never finished, output files without rows; and registers
    /// spool files (and bucket objects) without rows, older than the commit window, as recovery
    /// does at start-up.
    ///
    /// `own_temporaries`: this process is the node itself, so the temporary files of its node
    /// that it did not write are a stopped process's (never true for a command run beside it).
    pub async fn sweep(&self, own_temporaries: bool) -> Result<Swept, RetentionError> {
        let mut swept = Swept::default();
        if own_temporaries {
            for temp in self.spool.stale_temporaries() {
                if std::fs::remove_file(&temp).is_ok() {
                    swept.temporaries += 1;
                }
            }
        }
        for folder in [Folder::Spool, Folder::Outputs] {
            let root = self.root(folder);
            if !root.exists() {
                continue;
            }
            let files = tokio::task::block_in_place(|| spool::files_by_study(&root))
                .map_err(|e| RetentionError::Files(e.to_string()))?;
            let (complete, partial): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| f.is_instance());
            for leftover in partial.iter().filter(|f| f.age >= STALE_TEMPORARY) {
                if std::fs::remove_file(root.join(&leftover.relative)).is_ok() {
                    swept.temporaries += 1;
                }
            }
            let found: Vec<(String, Duration)> = complete.into_iter().map(|f| (f.relative, f.age)).collect();
            self.sweep_found(folder, &found, false, &mut swept).await?;
            if let Some(bucket) = &self.bucket {
                match bucket.list(folder.area()).await {
                    Ok(objects) => self.sweep_found(folder, &objects, true, &mut swept).await?,
                    Err(e) => warn!(error = %e, "cannot list the object store for the sweep; the next one tries again"),
                }
            }
        }
        crate::metrics::swept("released", swept.released);
        crate::metrics::swept("orphan_registered", swept.registered);
        crate::metrics::swept("orphan_removed", swept.orphans_removed);
        crate::metrics::swept("temporary", swept.temporaries);
        if swept.total() > 0 {
            let detail = format!(
                "removed {} files of released rows, {} temporaries, {} objects without rows; registered {} images without rows",
                swept.released, swept.temporaries, swept.orphans_removed, swept.registered
            );
            info!("sweep: {detail}");
            self.store.record_event(&Event::new(EventKind::LeftoversSwept).detail(&detail)).await?;
        }
        Ok(swept)
    }

    /// Deals with files (or bucket objects, `in_bucket`) found in `folder`, by their rows.
    async fn sweep_found(
        &self,
        folder: Folder,
        found: &[(String, Duration)],
        in_bucket: bool,
        swept: &mut Swept,
    ) -> Result<(), RetentionError> {
        let paths: Vec<String> = found.iter().map(|(p, _)| p.clone()).collect();
        let rows = match folder {
            Folder::Spool => self.store.spool_rows(&paths).await?,
            Folder::Outputs => self.store.output_rows(&paths).await?,
        };
        for (relative, age) in found {
            match rows.of(relative) {
                Some(false) => {}
                Some(true) => {
                    if in_bucket {
                        if let Some(bucket) = &self.bucket {
                            if bucket.delete(folder.area(), relative).await.is_ok() {
                                swept.released += 1;
                            }
                        }
                    } else if std::fs::remove_file(self.local(folder, relative)).is_ok() {
                        swept.released += 1;
                    }
                }
                None if *age < COMMIT_WINDOW => {}
                None => match folder {
                    Folder::Spool => {
                        if in_bucket {
                            if let Err(e) = self.spool.fetch(relative).await {
                                warn!(path = %relative, error = %e, "cannot fetch an object without rows to register it");
                                continue;
                            }
                        }
                        match self.ingest.register_orphan(relative, &self.analysed).await {
                            Ok(()) => swept.registered += 1,
                            Err(reason) => {
                                warn!(path = %relative, %reason, "a spool file without rows could not be registered; left in place")
                            }
                        }
                    }
                    Folder::Outputs => {
                        self.remove(folder, relative).await;
                        swept.orphans_removed += 1;
                    }
                },
            }
        }
        Ok(())
    }

    /// Runs a round and a sweep every `retention.interval_secs` until shutdown.
    pub fn start(self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        let every = Duration::from_secs(self.rules.interval_secs);
        tokio::spawn(async move {
            loop {
                // with nothing finished left to delete, a receive's wake-up would find nothing either
                let starved = match self.prune().await {
                    Ok(pruned) => pruned.nothing_left,
                    Err(e) => {
                        warn!(error = %e, "pruning failed; it runs again in {every:?}");
                        false
                    }
                };
                if let Err(e) = self.sweep(true).await {
                    warn!(error = %e, "the sweep failed; it runs again in {every:?}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    // a receive found free space below the target
                    _ = self.spool.pressure().notified(), if !starved => {}
                    _ = shutdown.triggered() => return,
                }
            }
        })
    }
}
