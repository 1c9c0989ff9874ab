//! Retention: months of a site's work simulated in seconds on the store's clock (images,
//! results, objects, deliveries and messages as the node writes them, one destination down for
//! three days), pruning each simulated day; kill -9 during pruning; disk pressure on a small
//! real file system; what `prune --dry-run` says; a released image on the worklist and API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{self, Backend, Setup, TestDb};
use pneumotriage::config::{Config, Uses};
use pneumotriage::domain::{DestinationKind, EventKind, InstanceHeader, MessageRule, ObjectKind, Priority};
use pneumotriage::ingest::Ingest;
use pneumotriage::retention::Retention;
use pneumotriage::spool::Spool;
use pneumotriage::store::{JobEnd, JobScope, NewInstance, NewOutput, Store};

/// The PACS the simulated deliveries reach, as their audit records would name it.
const PACS: pneumotriage::audit::Peer<'static> = pneumotriage::audit::Peer { ae_title: "PACS", address: "127.0.0.1" };

const DAY: Duration = Duration::from_secs(86_400);
/// The simulations' `[retention]`: the defaults, with patient attributes kept 60 days.
const SIMULATION: &str = "patient_data_days = 60\nbatch = 50\n";
/// The destination that is down on days [`DOWN`].
const ARCHIVE: &str = "archive";
const DOWN: std::ops::Range<u32> = 40..43;

/// A simulated site: the node's store, spool and outputs, its retention, and a day counter.
struct Site {
    store: Store,
    retention: Retention,
    spool: PathBuf,
    outputs: PathBuf,
    bucket: Option<Arc<pneumotriage::bucket::Bucket>>,
    day: u32,
    image: u64,
}

/// The bytes of a "small image": pruning never reads them, only their size counts.
const IMAGE_BYTES: usize = 6000;
const OBJECT_BYTES: usize = 1500;

impl Site {
    /// A site keeping its files under `data`; `extra` is added to `[retention]` (and may open
    /// sections of its own). The configuration is written to `data/pneumotriage.toml` too.
    async fn open(db: &TestDb, data: &Path, extra: &str) -> Site {
        // 2 MiB free is always there: no disk pressure, unless `extra` sets another target
        let target = if extra.contains("free_target_mb") { "" } else { "free_target_mb = 2\n" };
        let text = format!(
            "[node]\ndata_dir = \"{}\"\nname = \"sim\"\nmin_free_disk_mb = 1\n[dicom]\naccept_any = true\n\
             [inference]\nmodels = \"{}/models/manifest.toml\"\n\
             [database]\nurl = \"{}\"\n[retention]\n{target}{extra}",
            data.display(),
            env!("CARGO_MANIFEST_DIR"),
            db.url
        );
        std::fs::write(data.join("pneumotriage.toml"), &text).unwrap();
        let config = Config::parse(&text, "simulation.toml", data.to_path_buf(), Uses::Everything).unwrap();
        // auditing on, as at a site: the records of what retention deletes wait in the database
        let auditor = pneumotriage::audit::Auditor {
            source_id: "sim".into(),
            site_id: None,
            ae_title: "PNEUMOTRIAGE".into(),
            host: "sim".into(),
            process_id: 1,
            repositories: vec!["siem".into()],
        };
        let store = Store::connect(&db.url, 4, "sim").await.unwrap().with_auditor(Some(auditor));
        store.migrate().await.unwrap();
        let (spool, _) = Spool::open(&config.spool_dir(), "sim", 1 << 20, 1 << 30).unwrap();
        let bucket = pneumotriage::bucket::Bucket::open(&config).unwrap();
        let spool = Arc::new(spool.with_bucket(bucket.clone()));
        let ingest = Arc::new(Ingest::new(spool.clone(), store.clone()));
        let retention =
            Retention::new(&config, store.clone(), ingest, spool.clone(), bucket.clone(), Box::new(|_| true));
        std::fs::create_dir_all(config.outputs_dir()).unwrap();
        let (spool, outputs) = (spool.root().to_path_buf(), config.outputs_dir());
        Site { store, retention, spool, outputs, bucket, day: 0, image: 0 }
    }

    fn rules() -> Vec<MessageRule> {
        vec![MessageRule {
            destination: "ris".into(),
            kind: DestinationKind::Webhook,
            priorities: vec![Priority::Urgent, Priority::Review],
            settle: Duration::ZERO,
            not_analysed: false,
        }]
    }

    /// One day: `n` images received, analysed, sent ([`Site::work`]); then the clock moves on
    /// a day and retention runs.
    async fn day(&mut self, n: u64, bucket: Option<&pneumotriage::bucket::Bucket>) {
        self.receive(n, bucket).await;
        self.work().await;
        self.store.clock().advance(DAY);
        self.day += 1;
        let pruned = self.retention.prune().await.unwrap();
        assert!(!pruned.nothing_left && pruned.under_pressure.files == 0, "no disk pressure here: {pruned:?}");
        self.retention.sweep(true).await.unwrap();
    }

    /// `n` images received: their files in the spool (and the bucket), their rows committed.
    async fn receive(&mut self, n: u64, bucket: Option<&pneumotriage::bucket::Bucket>) {
        let study_day = self.day;
        for _ in 0..n {
            self.image += 1;
            let (study, sop) =
                (format!("1.2.826.0.1.{study_day}.{}", self.image / 2), format!("1.2.826.1.{}", self.image));
            let path = format!("{study}/{sop}.dcm");
            let file = self.spool.join(&path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, vec![0u8; IMAGE_BYTES]).unwrap();
            if let Some(bucket) = bucket {
                bucket.upload(pneumotriage::bucket::Area::Spool, &path, &file).await.unwrap();
            }
            let new = NewInstance {
                header: InstanceHeader {
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
                    sop_instance_uid: sop.clone(),
                    study_instance_uid: study.clone(),
                    patient_name: Some(format!("Patient^{}", self.image)),
                    patient_id: Some(format!("P{}", self.image)),
                    ..Default::default()
                },
                version: 1,
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                calling_ae: "MODALITY".into(),
                peer_address: "10.0.0.7:4000".into(),
                path,
                size_bytes: IMAGE_BYTES as i64,
                skip_reason: None,
                event_kind: EventKind::InstanceStored,
            };
            self.store.record_instance(&new).await.unwrap();
        }
    }

    /// The queued images analysed (one in 20 skipped, one in 50 failed), their objects made and
    /// sent to the PACS and the archive (down on [`DOWN`]), their messages sent.
    async fn work(&mut self) {
        let rules = Site::rules();
        let mut made = Vec::new();
        while let Some(job) = self.store.claim_job(Duration::from_secs(300), JobScope::OwnSpool).await.unwrap() {
            match job.instance_id % 50 {
                7 => assert!(self.store.end_job(&job, JobEnd::Failed, "corrupt pixel data").await.unwrap()),
                n if n % 20 == 3 => assert!(self.store.end_job(&job, JobEnd::Skipped, "lateral view").await.unwrap()),
                _ => {
                    let mut result = crate::store::result();
                    result.priority = if job.instance_id % 3 == 0 { Priority::Urgent } else { Priority::Routine };
                    let outputs: Vec<NewOutput> = [(ObjectKind::Seg, "seg"), (ObjectKind::Sr, "sr")]
                        .into_iter()
                        .map(|(kind, name)| {
                            let path = format!("{}/{}.{name}.dcm", job.study_id, job.sop_instance_uid);
                            let file = self.outputs.join(&path);
                            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                            std::fs::write(&file, vec![1u8; OBJECT_BYTES]).unwrap();
                            made.push(path.clone());
                            NewOutput {
                                kind,
                                sop_class_uid: "1.2.840.10008.5.1.4.1.1.66.4".into(),
                                sop_instance_uid: format!(
                                    "{}.{name}",
                                    job.sop_instance_uid.replace("1.2.826.1", "2.25")
                                ),
                                path,
                                size_bytes: OBJECT_BYTES as i64,
                                destinations: vec!["pacs".into(), ARCHIVE.into()],
                            }
                        })
                        .collect();
                    assert!(self.store.record_result(&job, &result, &outputs, &rules).await.unwrap());
                }
            }
        }
        // as the node does, with a bucket: the objects are uploaded before their rows (here,
        // just after: nothing reads them in between)
        if let Some(bucket) = &self.bucket {
            for path in &made {
                bucket.upload(pneumotriage::bucket::Area::Outputs, path, &self.outputs.join(path)).await.unwrap();
            }
        }
        let lease = Duration::from_secs(300);
        while let Some(d) = self.store.claim_delivery("pacs", lease, JobScope::OwnSpool).await.unwrap() {
            assert!(self.store.delivery_done(&d, PACS).await.unwrap());
        }
        let archive_down = DOWN.contains(&self.day);
        let mut deferred = Vec::new();
        while let Some(d) = self.store.claim_delivery(ARCHIVE, lease, JobScope::OwnSpool).await.unwrap() {
            if archive_down {
                deferred.push(d);
            } else {
                assert!(self.store.delivery_done(&d, PACS).await.unwrap());
            }
        }
        for d in deferred {
            // due again only once the simulated day has passed
            assert!(self.store.delivery_retry(&d, "connection refused", DAY / 2).await.unwrap());
        }
        while let Some(m) = self.store.claim_message("ris", lease).await.unwrap() {
            assert!(self.store.message_done(&m, "127.0.0.1:2575").await.unwrap());
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        let (n,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(self.store.pool()).await.unwrap();
        n
    }

    /// Nothing was released before its job, and every delivery and message made from it, had
    /// ended and its time had passed; every kept row has its file, no released one has.
    async fn check_invariants(&self) {
        let days = |n: i64| n * DAY.as_millis() as i64;
        let (week, month, two_days) = (days(7), days(30), days(2));
        let early = format!(
            "SELECT COUNT(*) FROM instances i JOIN jobs j ON j.instance_id = i.id WHERE i.released_at IS NOT NULL AND ( \
               j.state NOT IN ('done', 'skipped', 'failed') \
               OR (j.state = 'done' AND i.released_at < j.updated_at + {week}) \
               OR (j.state <> 'done' AND i.released_at < j.updated_at + {month}) \
               OR EXISTS (SELECT 1 FROM results r JOIN outputs o ON o.result_id = r.id \
                          JOIN deliveries d ON d.output_id = o.id WHERE r.instance_id = i.id \
                            AND (d.state IN ('pending', 'sending') OR i.released_at < d.updated_at + {week})) \
               OR EXISTS (SELECT 1 FROM messages m WHERE m.study_id = i.study_id \
                            AND (m.state IN ('pending', 'sending') OR i.released_at < m.updated_at + {week})))"
        );
        assert_eq!(self.count(&early).await, 0, "an image was released too early (day {})", self.day);
        let early_objects = format!(
            "SELECT COUNT(*) FROM outputs o WHERE o.released_at IS NOT NULL AND EXISTS (SELECT 1 FROM deliveries d \
               WHERE d.output_id = o.id AND (d.state IN ('pending', 'sending') OR o.released_at < d.updated_at + {two_days}))"
        );
        assert_eq!(self.count(&early_objects).await, 0, "an object was released too early (day {})", self.day);
        // the tallies kept by triggers agree with counting every row
        let counts = self.store.counts().await.unwrap();
        let by_state = |sql: &'static str| async move {
            let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(self.store.pool()).await.unwrap();
            rows
        };
        use pneumotriage::store::worklist::by_name as named;
        assert_eq!(
            named(&counts.jobs),
            by_state("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state").await
        );
        assert_eq!(
            named(&counts.deliveries),
            by_state("SELECT state, COUNT(*) FROM deliveries GROUP BY state ORDER BY state").await
        );
        assert_eq!(
            named(&counts.results),
            by_state("SELECT priority, COUNT(*) FROM results GROUP BY priority ORDER BY priority").await
        );
        assert_eq!(counts.messages.iter().map(|m| m.2).sum::<i64>(), self.count("SELECT COUNT(*) FROM messages").await);
        let store = self.store.clone();
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT path, released_at FROM instances").fetch_all(store.pool()).await.unwrap();
        for (path, released) in rows {
            assert_eq!(self.spool.join(&path).exists(), released.is_none(), "{path} on day {}", self.day);
        }
        let rows: Vec<(String, Option<i64>)> =
            sqlx::query_as("SELECT path, released_at FROM outputs").fetch_all(store.pool()).await.unwrap();
        for (path, released) in rows {
            assert_eq!(self.outputs.join(&path).exists(), released.is_none(), "{path} on day {}", self.day);
        }
    }
}

/// Bytes and files under `dir`.
fn disk_use(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                let (b, f) = disk_use(&e.path());
                bytes += b;
                files += f;
            } else {
                bytes += meta.len();
                files += 1;
            }
        }
    }
    (bytes, files)
}

/// The database of a simulation: on PostgreSQL, commits that do not wait for the disk (what is
/// tested is which rows and files go when, not durability; months of rows take seconds).
fn simulation_db(backend: Backend, dir: &Path) -> TestDb {
    let db = TestDb::create(backend, dir);
    if backend == Backend::Postgres {
        let name = db.url.rsplit('/').next().unwrap();
        common::psql(&format!("ALTER DATABASE {name} SET synchronous_commit = off"));
    }
    db
}

fn images_per_day() -> u64 {
    std::env::var("RETENTION_SIM_IMAGES_PER_DAY").ok().and_then(|n| n.parse().ok()).unwrap_or(50)
}

fn one_hundred_twenty_days_reach_a_steady_state_and_release_nothing_early(backend: Backend) {
    // the SQLite file and the spool on tmpfs: a simulated day is hundreds of commits
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let db = simulation_db(backend, dir.path());
    let per_day = images_per_day();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut site = Site::open(&db, dir.path(), SIMULATION).await;
        let mut table = vec![format!("| day | images kept | objects kept | spool MiB | outputs MiB |")];
        let mut by_day = Vec::new();
        let started = std::time::Instant::now();
        while site.day < 120 {
            site.day(per_day, None).await;
            let (spool_bytes, _) = disk_use(&site.spool);
            let (outputs_bytes, _) = disk_use(&site.outputs);
            let kept = site.count("SELECT COUNT(*) FROM instances WHERE released_at IS NULL").await;
            let objects = site.count("SELECT COUNT(*) FROM outputs WHERE released_at IS NULL").await;
            by_day.push((kept, objects, spool_bytes + outputs_bytes));
            if site.day % 10 == 0 || (38..=52).contains(&site.day) {
                table.push(format!(
                    "| {} | {kept} | {objects} | {:.2} | {:.2} |",
                    site.day,
                    spool_bytes as f64 / 1048576.0,
                    outputs_bytes as f64 / 1048576.0
                ));
                site.check_invariants().await;
            }
            if site.day == 49 {
                // the images of the days the archive was down went out on day 43: kept until day 50
                let kept_for_archive = site
                    .count(&format!(
                        "SELECT COUNT(*) FROM instances i JOIN jobs j ON j.instance_id = i.id \
                         WHERE j.state = 'done' AND i.released_at IS NULL AND i.path LIKE '1.2.826.0.1.{}.%'",
                        DOWN.start
                    ))
                    .await;
                assert!(kept_for_archive > 0, "the images waiting for the archive are kept");
            }
        }
        eprintln!("simulated 120 days of {per_day} images a day on {backend:?} in {:.1?}", started.elapsed());
        eprintln!("{}", table.join("\n"));
        site.check_invariants().await;
        // a steady state: a week's images (plus the month of skipped and failed ones) and two
        // days' objects, the same from day 60 to day 120
        let (kept_60, objects_60, bytes_60) = by_day[59];
        let (kept_120, objects_120, bytes_120) = by_day[119];
        let near = |a: i64, b: i64| (a - b).abs() * 10 <= a.max(b);
        assert!(near(kept_60, kept_120) && near(objects_60, objects_120), "{:?} vs {:?}", by_day[59], by_day[119]);
        assert!((bytes_60 as f64 / bytes_120 as f64 - 1.0).abs() < 0.1, "{bytes_60} vs {bytes_120}");
        let expected = per_day as i64 * 7;
        assert!(kept_120 >= expected && kept_120 <= expected * 2, "{kept_120} images kept, a week is {expected}");
        let received = site.count("SELECT COUNT(*) FROM instances").await;
        assert_eq!(received, per_day as i64 * 120, "every row stays");
        // patient attributes leave after 60 days; the record of what was said stays
        let named_old = site
            .count("SELECT COUNT(*) FROM studies WHERE patient_name IS NOT NULL AND study_instance_uid LIKE '1.2.826.0.1.5.%'")
            .await;
        assert_eq!(named_old, 0, "the patient attributes of day 5 are gone after 60 days");
        let named_recent = site
            .count("SELECT COUNT(*) FROM studies WHERE patient_name IS NOT NULL AND study_instance_uid LIKE '1.2.826.0.1.110.%'")
            .await;
        assert!(named_recent > 0, "recent studies keep their patient attributes");
        // and the node's event trail is kept as long: nothing older than 60 days (and a day's
        // round) is left of it
        let old_events = site
            .count("SELECT COUNT(*) FROM events WHERE at < (SELECT MAX(at) FROM events) - CAST(62 AS BIGINT) * 86400000")
            .await;
        assert_eq!(old_events, 0, "events older than patient_data_days are removed");
        assert!(site.count("SELECT COUNT(*) FROM events").await > per_day as i64 * 50, "recent events stay");
        // each removal of patient attributes and each study whose images went left an audit record
        let removed = site.count("SELECT COUNT(*) FROM studies WHERE patient_data_removed_at IS NOT NULL").await;
        let audited = site.count("SELECT COUNT(*) FROM audit_records WHERE event = 'patient_record_deleted'").await;
        assert!(removed > 0 && audited == removed, "{removed} studies lost their patient attributes, {audited} records say so");
        assert!(site.count("SELECT COUNT(*) FROM audit_records WHERE event = 'study_deleted'").await > 0);
        assert_eq!(site.count("SELECT COUNT(*) FROM results").await, site.count("SELECT COUNT(*) FROM jobs WHERE state = 'done'").await);
        site.store.close().await;
    });
}

#[test]
fn with_an_object_store_released_objects_leave_the_bucket() {
    let s3 = crate::common::s3::S3::start();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let db = simulation_db(Backend::Sqlite, dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut site = Site::open(&db, dir.path(), &format!("{SIMULATION}{}", s3.config("sim"))).await;
        let bucket = site.bucket.clone().expect("the site keeps its files in the bucket");
        while site.day < 12 {
            site.day(20, Some(&bucket)).await;
        }
        site.check_invariants().await;
        let kept: Vec<(String,)> = sqlx::query_as("SELECT path FROM instances WHERE released_at IS NULL")
            .fetch_all(site.store.pool())
            .await
            .unwrap();
        let released: Vec<(String,)> = sqlx::query_as("SELECT path FROM instances WHERE released_at IS NOT NULL")
            .fetch_all(site.store.pool())
            .await
            .unwrap();
        assert!(!kept.is_empty() && !released.is_empty());
        let keys = s3.keys("sim/spool/");
        for (path,) in &kept {
            assert!(keys.contains(&format!("sim/spool/{path}")), "{path} is kept in the bucket");
        }
        for (path,) in &released {
            assert!(!keys.contains(&format!("sim/spool/{path}")), "{path} left the bucket");
        }
        assert_eq!(keys.len(), kept.len());
        site.store.close().await;
    });
}

/// With an object store, the node's local copies are a cache: with `cache_mb = 0` a round
/// removes the copies of finished images and delivered objects (none written in the last
/// minute), keeps those of images still to analyse, releases nothing and deletes nothing from
/// the bucket; an evicted image comes back with a fetch, and the sweep finds nothing to do.
#[test]
fn with_an_object_store_local_copies_are_a_cache_with_a_size_limit() {
    let s3 = crate::common::s3::S3::start();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let db = simulation_db(Backend::Sqlite, dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let config = format!("{SIMULATION}{}cache_mb = 0\n", s3.config("cache"));
        let mut site = Site::open(&db, dir.path(), &config).await;
        let bucket = site.bucket.clone().expect("the site keeps its files in the bucket");
        site.receive(10, Some(&bucket)).await;
        site.work().await;
        let objects = site.count("SELECT COUNT(*) FROM outputs").await as usize;
        assert!(objects >= 10, "{objects} objects made");
        // written two minutes ago; then three images arrive, not yet analysed
        age_files(&[&site.spool, &site.outputs]);
        site.receive(3, Some(&bucket)).await;

        let pruned = site.retention.prune().await.unwrap();
        assert_eq!(pruned.evicted.files as usize, 10 + objects, "{pruned:?}");
        assert_eq!((pruned.images.files, pruned.outputs.files, pruned.under_pressure.files), (0, 0, 0), "{pruned:?}");
        let (_, spool_files) = disk_use(&site.spool);
        let (_, output_files) = disk_use(&site.outputs);
        assert_eq!((spool_files, output_files), (3, 0), "only the copies of the images still to analyse stay");
        assert_eq!(site.count("SELECT COUNT(*) FROM instances WHERE released_at IS NOT NULL").await, 0);
        assert_eq!(site.count("SELECT COUNT(*) FROM outputs WHERE released_at IS NOT NULL").await, 0);
        assert_eq!(s3.keys("cache/spool/").len(), 13, "the bucket keeps every image");
        assert_eq!(s3.keys("cache/outputs/").len(), objects, "the bucket keeps every object");

        let (path,): (String,) = sqlx::query_as("SELECT path FROM instances ORDER BY id LIMIT 1")
            .fetch_one(site.store.pool())
            .await
            .unwrap();
        let local = site.spool.join(&path);
        assert!(!local.exists());
        bucket.fetch(pneumotriage::bucket::Area::Spool, &path, &local).await.unwrap();
        assert_eq!(std::fs::metadata(&local).unwrap().len(), IMAGE_BYTES as u64);
        let swept = site.retention.sweep(true).await.unwrap();
        assert_eq!(swept.total(), 0, "{swept:?}");
        site.store.close().await;
    });
}

/// With an object store and free space below the target (1 PiB here), the local copies of
/// finished items go, all of them, and nothing is deleted early: deleting from the bucket would
/// free nothing on this disk, where those items have no copy left.
#[test]
fn under_disk_pressure_local_copies_go_and_the_bucket_keeps_everything() {
    let s3 = crate::common::s3::S3::start();
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let db = simulation_db(Backend::Sqlite, dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let config = format!("{SIMULATION}free_target_mb = {}\n{}", 1u64 << 30, s3.config("pressure"));
        let mut site = Site::open(&db, dir.path(), &config).await;
        let bucket = site.bucket.clone().expect("the site keeps its files in the bucket");
        site.receive(10, Some(&bucket)).await;
        site.work().await;
        let objects = site.count("SELECT COUNT(*) FROM outputs").await;
        age_files(&[&site.spool, &site.outputs]);
        site.receive(3, Some(&bucket)).await;

        let pruned = site.retention.prune().await.unwrap();
        let finished = 10 + objects as u64;
        assert_eq!(pruned.evicted.files, finished, "every finished local copy went: {pruned:?}");
        assert_eq!(pruned.under_pressure.files, 0, "nothing deleted early: {pruned:?}");
        assert!(pruned.nothing_left, "the disk is still short, and nothing here can go: {pruned:?}");
        assert_eq!(s3.keys("pressure/spool/").len(), 13, "the bucket keeps every image");
        assert_eq!(s3.keys("pressure/outputs/").len(), objects as usize, "and every object");
        assert_eq!(site.count("SELECT COUNT(*) FROM instances WHERE released_at IS NOT NULL").await, 0);
        assert_eq!(disk_use(&site.spool).1, 3);
        site.store.close().await;
    });
}

/// Sets the modification time of every file under `dirs` two minutes back: written before the
/// minute in which retention leaves a local copy alone.
fn age_files(dirs: &[&Path]) {
    let aged = std::process::Command::new("find")
        .args(dirs)
        .args(["-type", "f", "-exec", "touch", "-d", "2 minutes ago", "{}", "+"])
        .status()
        .unwrap();
    assert!(aged.success());
}

/// kill -9 while `prune` deletes, five times: no row of a kept image or object without its
/// file, nothing unfinished touched; then a round to its end leaves no file of a released row.
#[test]
fn kill_nine_during_pruning_leaves_no_dangling_row_and_loses_nothing_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(Backend::Sqlite, dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let extra = "images_days = 0\noutputs_days = 0\ninvestigation_days = 0\nbatch = 4\ninterval_secs = 1\n";
    let site = rt.block_on(async {
        let mut site = Site::open(&db, dir.path(), extra).await;
        // finished work to delete, then work still to do: the archive down, jobs still queued
        site.receive(2500, None).await;
        site.work().await;
        site.day = DOWN.start;
        site.receive(100, None).await;
        site.work().await;
        site.receive(50, None).await;
        site
    });
    let config = dir.path().join("pneumotriage.toml");
    let unfinished = |site: &Site| {
        rt.block_on(site.count(
            "SELECT COUNT(*) FROM instances i JOIN jobs j ON j.instance_id = i.id WHERE j.state = 'queued' \
             OR EXISTS (SELECT 1 FROM results r JOIN outputs o ON o.result_id = r.id JOIN deliveries d \
                        ON d.output_id = o.id WHERE r.instance_id = i.id AND d.state = 'pending')",
        ))
    };
    let waiting = unfinished(&site);
    assert!(waiting > 130, "the archive's analysed images and 50 queued ones wait: {waiting}");
    let mut interrupted = Vec::new();
    let released_now = || rt.block_on(site.count("SELECT COUNT(*) FROM instances WHERE released_at IS NOT NULL"));
    let mut released = 0;
    for i in 0..5 {
        let mut prune = std::process::Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
            .args(["prune", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // killed once it has released a few more batches: mid-round, at a different point each time
        let target = released + 40 + 37 * i;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while released_now() < target && prune.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "prune made no progress");
        }
        let finished = prune.try_wait().unwrap().is_some();
        prune.kill().ok();
        prune.wait().unwrap();
        released = released_now();
        let after_ms = target;
        // every kept row has its file; files of released rows may wait for the next sweep
        let store = site.store.clone();
        let rows: Vec<(String, Option<i64>)> =
            rt.block_on(sqlx::query_as("SELECT path, released_at FROM instances").fetch_all(store.pool())).unwrap();
        let mut leftovers = 0;
        for (path, released_at) in &rows {
            let exists = site.spool.join(path).exists();
            assert!(exists || released_at.is_some(), "kill {i}: {path} is kept but its file is gone");
            leftovers += usize::from(exists && released_at.is_some());
        }
        let objects: Vec<(String, Option<i64>)> =
            rt.block_on(sqlx::query_as("SELECT path, released_at FROM outputs").fetch_all(store.pool())).unwrap();
        for (path, released_at) in &objects {
            assert!(site.outputs.join(path).exists() || released_at.is_some(), "kill {i}: object {path} lost");
        }
        assert_eq!(unfinished(&site), waiting, "kill {i}: unfinished work untouched");
        interrupted.push((after_ms, finished, released, leftovers));
    }
    eprintln!("(killed at, prune had finished, images released, files of released rows left): {interrupted:?}");
    assert!(interrupted.iter().all(|(_, finished, _, _)| !finished), "every kill landed mid-round");
    // a round to its end: every file of a released row swept, nothing unfinished released
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .args(["prune", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let store = site.store.clone();
    let rows: Vec<(String, Option<i64>)> =
        rt.block_on(sqlx::query_as("SELECT path, released_at FROM instances").fetch_all(store.pool())).unwrap();
    let kept = rows.iter().filter(|(_, r)| r.is_none()).count();
    for (path, released_at) in &rows {
        assert_eq!(site.spool.join(path).exists(), released_at.is_none(), "{path}");
    }
    assert_eq!(kept as i64, waiting + rt.block_on(site.count("SELECT COUNT(*) FROM jobs WHERE state = 'running'")));
    assert_eq!(unfinished(&site), waiting);
    rt.block_on(site.store.close());
}

/// A tmpfs of `mib` MiB mounted at `path` while it lives: a small real file system to fill.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out =
            common::run("mount", &["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "the disk pressure test mounts a tmpfs (it runs as root): {}",
            common::text(&out)
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A node on a 48 MiB file system, refusing at 8 MiB free and keeping 20 MiB free: with the
/// default (long) retention, the disk fills to the target, the oldest finished images go, and
/// no C-STORE is refused while finished ones remain; with only unfinished ones (analysis off),
/// 0xA700 as before, and the log says that nothing finished was left to delete.
#[test]
fn disk_pressure_deletes_the_oldest_finished_images_before_refusing() {
    let mut setup = Setup::analysing(Backend::Sqlite, "");
    let _disk = Tmpfs::mount(&setup.dir.path().join("var"), 48);
    setup.tail = "[retention]\nfree_target_mb = 20\ninterval_secs = 1\n".into();
    setup.write_config("min_free_disk_mb = 8", "", common::DEFAULT_PEERS);
    let images = common::synthetic_images(&setup.dir.path().join("images"), 40, 31);
    let node = setup.start();
    let done = "SELECT COUNT(*) FROM jobs WHERE state NOT IN ('queued', 'running')";
    for (i, image) in images.iter().enumerate() {
        let out = common::storescu(setup.port, &[], &[image]);
        assert!(out.status.success(), "image {i} refused while finished images remain: {}", common::text(&out));
        setup.wait_count(done, i as i64 + 1);
    }
    let released = setup.count("SELECT COUNT(*) FROM instances WHERE released_at IS NOT NULL");
    let kept = setup.count("SELECT COUNT(*) FROM instances WHERE released_at IS NULL");
    eprintln!("40 images of about 2 MiB on 48 MiB: {released} released under pressure, {kept} kept");
    eprintln!("{}", common::text(&common::run("df", &["-k", setup.dir.path().join("var").to_str().unwrap()])));
    assert!(released >= 15 && kept >= 5, "{released} released, {kept} kept");
    // the oldest went first
    let newest_released = setup.count("SELECT MAX(id) FROM instances WHERE released_at IS NOT NULL");
    let oldest_kept = setup.count("SELECT MIN(id) FROM instances WHERE released_at IS NULL");
    assert!(newest_released < oldest_kept, "released up to {newest_released}, kept from {oldest_kept}");
    assert!(setup.count("SELECT COUNT(*) FROM events WHERE kind = 'disk_pressure'") > 0);
    let (_, _, metrics) = common::http_request(setup.http_port, "GET", "/metrics", &[], "").unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("pneumotriage_pruned_files_total{area=\"spool\",why=\"disk_pressure\"}"), "{metrics}");
    drop(node);

    // only unfinished images: analysis off, so each one waits; refused at the floor as before
    setup.inference = format!("{}enabled = false\n", setup.inference);
    setup.write_config("min_free_disk_mb = 8", "", common::DEFAULT_PEERS);
    let node = setup.start();
    let more = common::synthetic_images(&setup.dir.path().join("more"), 30, 32);
    let mut refused = None;
    for (i, image) in more.iter().enumerate() {
        let out = common::storescu(setup.port, &[], &[image]);
        if !out.status.success() {
            assert!(common::text(&out).contains("Refused: OutOfResources"), "{}", common::text(&out));
            refused = Some(i);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = refused.expect("with nothing finished left, the disk fills and C-STORE is refused");
    eprintln!("analysis off: refused at image {refused} of the second batch");
    node.wait_for_log("nothing finished is left to delete");
    let finished_kept = setup.count(
        "SELECT COUNT(*) FROM instances i JOIN jobs j ON j.instance_id = i.id \
         WHERE j.state = 'done' AND i.released_at IS NULL",
    );
    assert_eq!(finished_kept, 0, "every finished image went before the first refusal");
    let waiting = setup.count("SELECT COUNT(*) FROM jobs WHERE state = 'queued'");
    assert_eq!(waiting, refused as i64, "every image received is kept, waiting for analysis");
}

/// What an admin and a radiologist see of released images, on a node that analysed real ones:
/// `prune --dry-run` lists them and why, deleting nothing; `prune` deletes them; the worklist
/// keeps the study and its result, the overlay answers 410 Gone, `requeue` says why not, and
/// the same image sent again is kept and analysed again as a new version.
fn released_images_stay_on_the_worklist_and_say_so(backend: Backend) {
    let mut setup = Setup::analysing(backend, "");
    // the node's own rounds wait an hour: the commands below do the pruning
    setup.tail = "[retention]\nimages_days = 0\noutputs_days = 0\ninterval_secs = 3600\n".into();
    setup.write_config("", "", common::DEFAULT_PEERS);
    let images = common::synthetic_images(&setup.dir.path().join("images"), 3, 77);
    let _node = setup.start();
    let refs: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
    assert!(common::storescu(setup.port, &[], &refs).status.success());
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'", 3);
    let objects = setup.count("SELECT COUNT(*) FROM outputs");

    let dry = setup.cli(&["prune", "--dry-run"]);
    let said = common::text(&dry);
    eprintln!("pneumotriage prune --dry-run:\n{said}");
    assert!(dry.status.success(), "{said}");
    assert!(said.contains(&format!("would delete 3 images and {objects} objects")), "{said}");
    assert!(said.contains("analysed; it and its deliveries and messages ended"), "{said}");
    assert_eq!(
        setup.count("SELECT COUNT(*) FROM instances WHERE released_at IS NOT NULL"),
        0,
        "a dry run deletes nothing"
    );
    assert_eq!(setup.spool_files().iter().filter(|f| f.ends_with(".dcm")).count(), 3);

    let pruned = setup.cli(&["prune"]);
    eprintln!("pneumotriage prune:\n{}", common::text(&pruned));
    assert!(common::text(&pruned).contains("deleted 3 images"), "{}", common::text(&pruned));
    assert_eq!(setup.spool_files().iter().filter(|f| f.ends_with(".dcm")).count(), 0);
    assert_eq!(setup.count("SELECT COUNT(*) FROM outputs WHERE released_at IS NULL"), 0);

    let uid = common::study_instance_uid(&images[0]);
    let (status, _, body) = common::http_request(setup.http_port, "GET", "/api/studies", &[], "").unwrap();
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let study = listed["studies"].as_array().unwrap().iter().find(|s| s["study_instance_uid"] == uid.as_str()).unwrap();
    assert_eq!(study["images_released"], 1, "{study}");
    assert_eq!(study["state"], "analysed", "the result stays: {study}");
    let (_, _, body) = common::http_request(setup.http_port, "GET", &format!("/api/studies/{uid}"), &[], "").unwrap();
    let detail: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let instance = &detail["instances"][0];
    assert!(instance["released_at"].is_i64() && instance["overlay_url"].is_null(), "{instance}");
    assert!(instance["decision"].is_string(), "the result stays: {instance}");
    let sop = common::sop_instance_uid(&images[0]);
    let (status, _, body) =
        common::http_request(setup.http_port, "GET", &format!("/api/instances/{sop}/overlay.png"), &[], "").unwrap();
    assert_eq!(status, 410, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("released by retention"));

    let id = setup.count(&format!("SELECT id FROM instances WHERE sop_instance_uid = '{sop}'"));
    let requeue = setup.cli(&["requeue", &id.to_string()]);
    assert!(
        !requeue.status.success() && common::text(&requeue).contains("released by retention"),
        "{}",
        common::text(&requeue)
    );

    // sent again: kept as version 2 and analysed again
    assert!(common::storescu(setup.port, &[], &[&images[0]]).status.success());
    setup.wait_count(&format!("SELECT COUNT(*) FROM instances WHERE sop_instance_uid = '{sop}' AND version = 2"), 1);
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'", 4);
}

on_both_backends!(
    one_hundred_twenty_days_reach_a_steady_state_and_release_nothing_early,
    released_images_stay_on_the_worklist_and_say_so
);
