//! Several nodes on one database. Each with its own spool (two machines): a node analyses only
//! the images it received, another node's images wait for it, and `handover` settles them when
//! that node is renamed or gone. On one shared spool (a directory on shared storage, or a bucket
//! of an object store): any node analyses any image, and takes over a dead node's work.

use pneumotriage::store::JobScope;

use crate::common::s3::S3;
use crate::common::{
    assert_same_pixels, free_port, http_request, sop_instance_uid, storescu, synthetic_images, text, Backend, Setup,
    DEFAULT_PEERS,
};
use crate::crash::acknowledged;
use crate::delivery::Pacs;

/// A `[[destinations]]` entry: the test PACS (storescp) on `port`, retried every second or two.
fn to_pacs(port: u16) -> String {
    format!(
        "[[destinations]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         retry_initial_secs = 1\nretry_max_secs = 2\n"
    )
}

#[test]
fn a_node_analyses_only_the_images_it_keeps() {
    let work = tempfile::tempdir().unwrap();
    // one PACS for both nodes: each sends only the objects it made (its data directory)
    let pacs_port = free_port();
    let inbox = work.path().join("pacs");
    // node A receives with analysis off, so its images wait in the shared queue
    let mut a = Setup::with(Backend::Postgres, "", "");
    a.tail = to_pacs(pacs_port);
    let (b_config, b_port) = {
        // node B analyses
        a.inference = a.inference.replace("enabled = false", "");
        a.write_config("", "", DEFAULT_PEERS);
        let b = a.second_node("node-b");
        a.inference.push_str("enabled = false\n");
        a.write_config("", "", DEFAULT_PEERS);
        b
    };
    let for_a = synthetic_images(&work.path().join("a"), 6, 31);
    let for_b = synthetic_images(&work.path().join("b"), 2, 32);
    let node_a = a.start();
    let sent = storescu(a.port, &[], &for_a.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    assert!(sent.status.success(), "{}", text(&sent));
    a.wait_count("SELECT COUNT(*) FROM jobs WHERE state = 'queued'", 6);

    let node_b = a.start_config(&b_config, &[]);
    node_b.wait_for_log("wait for it to analyse them");
    let sent = storescu(b_port, &[], &for_b.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    assert!(sent.status.success(), "{}", text(&sent));
    a.wait_count("SELECT COUNT(*) FROM results WHERE node = 'node-b'", 2);
    // before node affinity, B claimed A's images and failed them all: "the spool file is missing"
    assert_eq!(a.count("SELECT COUNT(*) FROM jobs WHERE state = 'failed'"), 0);
    assert_eq!(a.count("SELECT COUNT(*) FROM jobs WHERE state = 'queued'"), 6, "A's images wait for A");
    // B's worklist says why they wait
    let url = a.db.url.clone();
    let waiting = |scope| {
        a.with_store(async |_| {
            let b = pneumotriage::store::Store::connect(&url, 2, "node-b").await.unwrap();
            let listed = b.worklist(None, 100, scope).await.unwrap();
            b.close().await;
            listed.into_iter().filter_map(|s| s.waiting_for_node).collect::<Vec<_>>()
        })
    };
    let own = waiting(JobScope::OwnSpool);
    assert_eq!(own.len(), 6, "{own:?}");
    assert!(own.iter().all(|n| n == "test-node"), "{own:?}");
    // on a shared spool (or a bucket) any node analyses them: none waits for A
    assert_eq!(waiting(JobScope::AnySpool), Vec::<String>::new());

    // A with its analysis on analyses its own images, B none of them
    drop(node_a);
    a.inference = a.inference.replace("enabled = false", "");
    a.write_config("", "", DEFAULT_PEERS);
    let _node_a = a.start();
    a.wait_count("SELECT COUNT(*) FROM results WHERE node = 'test-node'", 6);
    assert_eq!(a.count("SELECT COUNT(*) FROM results WHERE node = 'node-b'"), 2);
    assert_eq!(a.count("SELECT COUNT(*) FROM jobs WHERE state = 'failed'"), 0);
    // The PACS was down so far: both nodes have been retrying, B its objects and A its own.
    // Before delivery affinity, B's senders took A's objects too and failed them ("cannot read").
    a.wait_count("SELECT COUNT(*) FROM deliveries WHERE attempts < 3", 0);
    let _pacs = Pacs::start(pacs_port, &inbox, false);
    a.wait_count(
        "SELECT COUNT(*) FROM deliveries WHERE state = 'delivered'",
        a.count("SELECT COUNT(*) FROM deliveries"),
    );
    assert_eq!(a.count("SELECT COUNT(*) FROM deliveries WHERE state = 'failed'"), 0);
    let made = a.count("SELECT COUNT(*) FROM outputs");
    assert!(made >= 8, "an SR per image at least: {made}");
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count() as i64, made, "the PACS has every object");
    drop(node_b);
}

on_both_backends!(handover_gives_another_nodes_images_to_this_one_or_fails_them);

fn handover_gives_another_nodes_images_to_this_one_or_fails_them(backend: Backend) {
    let setup = Setup::new(backend);
    let work = tempfile::tempdir().unwrap();
    let files = synthetic_images(&work.path().join("images"), 2, 33);
    let node = setup.start();
    let sent = storescu(setup.port, &[], &files.iter().map(|p| p.as_path()).collect::<Vec<_>>());
    assert!(sent.status.success(), "{}", text(&sent));
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE state = 'queued'", 2);
    drop(node);

    // renamed: the images it kept are the new name's
    let moved = setup.cli(&["handover", "--from", "test-node", "--to", "node-renamed"]);
    assert!(moved.status.success(), "{}", text(&moved));
    assert!(text(&moved).contains("2 instance(s) of node test-node handed over to node node-renamed"));
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances WHERE node = 'node-renamed'"), 2);

    // gone with its spool: the waiting analyses fail with the reason, and can be re-queued
    let failed = setup.cli(&["handover", "--from", "node-renamed", "--fail"]);
    assert!(failed.status.success(), "{}", text(&failed));
    assert_eq!(
        setup.count(
            "SELECT COUNT(*) FROM jobs WHERE state = 'failed' AND reason LIKE 'spool unavailable: node node-renamed%'"
        ),
        2
    );
    assert_eq!(setup.count("SELECT COUNT(*) FROM events WHERE kind IN ('instances_handed_over', 'jobs_abandoned')"), 2);
}

/// Two nodes on one spool (shared storage: here one directory) and one database: node A is
/// killed (-9) while it receives, analyses and delivers a stream; node B takes over A's claimed
/// jobs and deliveries when their lease expires. Every acknowledged image is analysed exactly
/// once and every object reaches the PACS.
#[test]
fn on_a_shared_spool_another_node_finishes_a_killed_nodes_work() {
    let work = tempfile::tempdir().unwrap();
    let pacs_port = free_port();
    let inbox = work.path().join("pacs");
    let _pacs = Pacs::start(pacs_port, &inbox, false);
    let mut a = Setup::analysing(Backend::Postgres, "");
    a.tail = to_pacs(pacs_port);
    a.write_config("shared_spool = true\nlease_secs = 3", "", DEFAULT_PEERS);
    let (b_config, _) = a.second_node("node-b");
    // one spool: B's data directory is A's
    let text = std::fs::read_to_string(&b_config).unwrap().replace("data_dir = \"var-node-b\"", "data_dir = \"var\"");
    std::fs::write(&b_config, text).unwrap();
    let images = synthetic_images(&work.path().join("images"), 24, 35);

    let mut node_a = a.start();
    let _node_b = a.start_config(&b_config, &[]);
    let sender = {
        let (port, files) = (a.port, images.clone());
        std::thread::spawn(move || storescu(port, &[], &files.iter().map(|p| p.as_path()).collect::<Vec<_>>()))
    };
    // kill A mid-stream, once it has analysed a few and while it holds a job
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while a.count("SELECT COUNT(*) FROM results WHERE node = 'test-node'") < 3
        || a.count("SELECT COUNT(*) FROM jobs WHERE state = 'running' AND claimed_by = 'test-node'") == 0
    {
        assert!(std::time::Instant::now() < deadline, "A analyses nothing");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    node_a.kill9();
    let _ = sender.join();
    let acknowledged = a.count("SELECT COUNT(*) FROM instances");
    assert!(acknowledged >= 3, "{acknowledged}");
    // what A held when it died (it may have finished a job between the check and the kill)
    let held = a.count("SELECT COUNT(*) FROM jobs WHERE state = 'running' AND claimed_by = 'test-node'");

    // B finishes everything A had: jobs and deliveries under A's expired leases included
    a.wait_count("SELECT COUNT(*) FROM jobs WHERE state <> 'done'", 0);
    assert_eq!(a.count("SELECT COUNT(*) FROM results"), acknowledged, "each acknowledged image analysed once");
    assert!(a.count("SELECT COUNT(*) FROM results WHERE node = 'node-b'") > 0);
    assert_eq!(a.count("SELECT COUNT(*) FROM jobs WHERE interruptions = 1"), held, "B took over each job A held, once");
    a.wait_count("SELECT COUNT(*) FROM deliveries WHERE state <> 'delivered'", 0);
    let made = a.count("SELECT COUNT(*) FROM outputs");
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count() as i64, made, "the PACS has every object");
}

/// Two nodes on one database and one object-storage spool (each its own data directory, so its
/// own cache: two machines). Images go to both; node A is killed (-9) mid-stream. Either node
/// analyses either's images (fetched from the bucket), B takes over what A held, and every
/// acknowledged image is analysed exactly once, its objects delivered once each.
#[test]
fn on_an_object_store_spool_either_node_analyses_any_image_and_finishes_a_killed_nodes_work() {
    let work = tempfile::tempdir().unwrap();
    let s3 = S3::start();
    let pacs_port = free_port();
    let inbox = work.path().join("pacs");
    let _pacs = Pacs::start(pacs_port, &inbox, false);
    let mut a = Setup::analysing(Backend::Postgres, "");
    a.tail = format!("{}{}", to_pacs(pacs_port), s3.config("site-a"));
    a.write_config("lease_secs = 3", "", DEFAULT_PEERS);
    let (b_config, b_port) = a.second_node("node-b");
    let for_a = synthetic_images(&work.path().join("a"), 24, 36);
    let for_b = synthetic_images(&work.path().join("b"), 8, 37);

    let mut node_a = a.start();
    assert!(node_a.log().contains("instances and outputs are kept in the object store"), "{}", node_a.log());
    let node_b = a.start_config(&b_config, &[]);
    let send = |port: u16, files: &[std::path::PathBuf]| {
        let files = files.to_vec();
        std::thread::spawn(move || storescu(port, &[], &files.iter().map(|p| p.as_path()).collect::<Vec<_>>()))
    };
    let (to_a, to_b) = (send(a.port, &for_a), send(b_port, &for_b));
    // kill A mid-stream, once it has received and analysed a few and while it holds a job
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while a.count("SELECT COUNT(*) FROM instances WHERE node = 'test-node'") < 10
        || a.count("SELECT COUNT(*) FROM results WHERE node = 'test-node'") < 3
        || a.count("SELECT COUNT(*) FROM jobs WHERE state = 'running' AND claimed_by = 'test-node'") == 0
    {
        assert!(std::time::Instant::now() < deadline, "A analyses nothing");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    node_a.kill9();
    let _ = to_a.join();
    let sent_to_b = to_b.join().unwrap();
    assert!(sent_to_b.status.success(), "{}", text(&sent_to_b));
    let acknowledged = a.count("SELECT COUNT(*) FROM instances");
    assert!(acknowledged >= 10 + 8, "{acknowledged}");
    let held = a.count("SELECT COUNT(*) FROM jobs WHERE state = 'running' AND claimed_by = 'test-node'");

    a.wait_count("SELECT COUNT(*) FROM jobs WHERE state <> 'done'", 0);
    assert_eq!(a.count("SELECT COUNT(*) FROM results"), acknowledged, "each acknowledged image analysed");
    assert_eq!(
        a.count("SELECT COUNT(*) FROM (SELECT instance_id FROM results GROUP BY instance_id HAVING COUNT(*) > 1) t"),
        0,
        "no image analysed twice"
    );
    assert_eq!(a.count("SELECT COUNT(*) FROM jobs WHERE interruptions = 1"), held, "B took over each job A held, once");
    // B read A's images from the bucket: its cache had none of them
    let fetched = "SELECT COUNT(*) FROM results r JOIN instances i ON i.id = r.instance_id \
                   WHERE r.node = 'node-b' AND i.node = 'test-node'";
    let fetched_by_b = a.count(fetched);
    assert!(fetched_by_b > 0, "B analysed none of A's images");
    // and says so in its metrics: each image it did not receive was fetched once
    let b_text = std::fs::read_to_string(&b_config).unwrap();
    let b_http = b_text.split("[http]\nbind = \"127.0.0.1:").nth(1).unwrap();
    let b_http: u16 = b_http[..b_http.find('"').unwrap()].parse().unwrap();
    let (_, _, metrics) = http_request(b_http, "GET", "/metrics", &[], "").unwrap();
    let metrics = String::from_utf8(metrics).unwrap();
    let count = |labels: &str| -> i64 {
        let line = format!("pneumotriage_object_store_seconds_count{{{labels}}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |n| n.parse().unwrap())
    };
    assert!(count("operation=\"fetch\",outcome=\"ok\"") >= fetched_by_b, "{metrics}");
    assert_eq!(count("operation=\"upload\",outcome=\"error\""), 0, "{metrics}");

    // every object delivered, each delivery once
    a.wait_count("SELECT COUNT(*) FROM deliveries WHERE state <> 'delivered'", 0);
    let made = a.count("SELECT COUNT(*) FROM outputs");
    assert_eq!(a.count("SELECT COUNT(*) FROM deliveries"), made, "a delivery per object");
    assert_eq!(std::fs::read_dir(&inbox).unwrap().count() as i64, made, "the PACS has every object");
    eprintln!(
        "object-store failover: {acknowledged} acknowledged ({} by A, {} by B), results by A {} and by B {} \
         ({fetched_by_b} of them A's images), {held} taken over from A, {made} objects delivered",
        a.count("SELECT COUNT(*) FROM instances WHERE node = 'test-node'"),
        a.count("SELECT COUNT(*) FROM instances WHERE node = 'node-b'"),
        a.count("SELECT COUNT(*) FROM results WHERE node = 'test-node'"),
        a.count("SELECT COUNT(*) FROM results WHERE node = 'node-b'"),
    );

    // the bucket holds every acknowledged instance and every object, under the site's prefix
    let keys = s3.keys("site-a/");
    let paths = a.with_store(async |store| {
        let instances: Vec<(String,)> =
            sqlx::query_as("SELECT path FROM instances").fetch_all(store.pool()).await.unwrap();
        let outputs: Vec<(String,)> = sqlx::query_as("SELECT path FROM outputs").fetch_all(store.pool()).await.unwrap();
        (instances, outputs)
    });
    for (path,) in &paths.0 {
        assert!(keys.contains(&format!("site-a/spool/{path}")), "{path} is not in the bucket");
    }
    for (path,) in &paths.1 {
        assert!(keys.contains(&format!("site-a/outputs/{path}")), "{path} is not in the bucket");
    }
    drop(node_b);
}

/// The bucket's rules for an instance's key, against the S3-compatible server: a second upload of
/// the same bytes counts as stored (a retry, or recovery after a crash between the upload and the
/// commit), other bytes are refused while they may be another node's, and a missing object is
/// told apart from a failing store.
#[test]
fn an_instance_in_the_bucket_is_never_replaced_by_other_bytes() {
    use pneumotriage::bucket::{Area, Bucket, BucketError};
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("pneumotriage.toml");
    std::fs::write(
        &config_path,
        format!("[[dicom.peers]]\nae_title = \"X\"\n{}timeout_secs = 2\n", s3.config("rules")),
    )
    .unwrap();
    let config = pneumotriage::config::Config::load(&config_path, pneumotriage::config::Uses::Everything).unwrap();
    let bucket = Bucket::open(&config).unwrap().expect("a bucket is configured");
    let (first, other) = (dir.path().join("first.dcm"), dir.path().join("other.dcm"));
    std::fs::write(&first, b"DICM first bytes").unwrap();
    std::fs::write(&other, b"DICM other bytes").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        bucket.check("test-node").await.unwrap();
        bucket.upload(Area::Spool, "1.2/1.2.3.dcm", &first).await.unwrap();
        bucket.upload(Area::Spool, "1.2/1.2.3.dcm", &first).await.expect("the same bytes again are stored");
        let refused = bucket.upload(Area::Spool, "1.2/1.2.3.dcm", &other).await;
        assert!(matches!(refused, Err(BucketError::Conflict { .. })), "{refused:?}");
        // outputs have UIDs of their own: overwritten, never refused
        bucket.upload(Area::Outputs, "1.2/9.9.dcm", &first).await.unwrap();
        bucket.upload(Area::Outputs, "1.2/9.9.dcm", &other).await.unwrap();

        let cached = dir.path().join("cache/1.2/1.2.3.dcm");
        bucket.fetch(Area::Spool, "1.2/1.2.3.dcm", &cached).await.unwrap();
        assert_eq!(std::fs::read(&cached).unwrap(), b"DICM first bytes");
        let output = dir.path().join("cache/1.2/9.9.dcm");
        bucket.fetch(Area::Outputs, "1.2/9.9.dcm", &output).await.unwrap();
        assert_eq!(std::fs::read(&output).unwrap(), b"DICM other bytes");
        let missing = bucket.fetch(Area::Spool, "1.2/4.5.dcm", &dir.path().join("cache/1.2/4.5.dcm")).await;
        assert!(matches!(missing, Err(BucketError::Missing { .. })), "{missing:?}");
        // no temporary file left beside the cached ones
        assert_eq!(std::fs::read_dir(dir.path().join("cache/1.2")).unwrap().count(), 2);
    });
    assert_eq!(s3.keys("rules/"), ["rules/outputs/1.2/9.9.dcm", "rules/spool/1.2/1.2.3.dcm"]);
    drop(s3);
    // a store that does not answer fails the check, naming the key
    let down = runtime.block_on(bucket.check("test-node"));
    assert!(matches!(down, Err(BucketError::Other { ref key, .. }) if key == "probe/test-node"), "{down:?}");
}

/// A bucket that cannot be used stops the node at start-up, naming the key, rather than refusing
/// every image once it runs.
#[test]
fn a_node_whose_bucket_cannot_be_used_does_not_start() {
    let s3 = S3::start();
    let mut setup = Setup::new(Backend::Sqlite);
    setup.tail = s3.config("site-a").replace("s3://pneumotriage-test/", "s3://no-such-bucket/");
    setup.write_config("", "", DEFAULT_PEERS);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pneumotriage"))
        .args(["serve", "--config"])
        .arg(&setup.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the object store s3://no-such-bucket/site-a cannot be used (object_store in ")
            && stderr.contains("probe/test-node"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-checked-by-moto"), "the secret is never shown: {stderr}");
}

/// With an object-storage spool, a node's disk is a cache: node A is killed (-9) while a modality
/// sends, and its whole data directory is lost with it. Node B, with a data directory of its own,
/// analyses every image A acknowledged, from the bucket, with the pixels that were sent.
#[test]
fn on_an_object_store_spool_no_acknowledged_image_is_lost_with_a_nodes_disk() {
    let s3 = S3::start();
    let work = tempfile::tempdir().unwrap();
    let mut a = Setup::with(Backend::Postgres, "", "");
    a.tail = s3.config("site-a");
    a.inference = a.inference.replace("enabled = false", "");
    a.write_config("", "", DEFAULT_PEERS);
    let (b_config, _) = a.second_node("node-b");
    a.inference.push_str("enabled = false\n");
    a.write_config("", "", DEFAULT_PEERS);
    let files = synthetic_images(&work.path().join("images"), 30, 38);

    let mut node_a = a.start();
    let log_path = work.path().join("storescu.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut sender = std::process::Command::new("/usr/bin/storescu")
        .args(["-v", "-aet", "STORESCU", "-aec", "PNEUMOTRIAGE", "127.0.0.1", &a.port.to_string()])
        .args(&files)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while acknowledged(&std::fs::read_to_string(&log_path).unwrap()).len() < 5 {
        assert!(std::time::Instant::now() < deadline, "storescu made no progress");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    node_a.kill9();
    let _ = sender.wait();
    let sent = acknowledged(&std::fs::read_to_string(&log_path).unwrap());
    assert!(
        sent.len() >= 5 && sent.len() < files.len(),
        "the kill lands mid-stream: {} of {}",
        sent.len(),
        files.len()
    );
    std::fs::remove_dir_all(a.dir.path().join("var")).unwrap();

    let _node_b = a.start_config(&b_config, &[]);
    a.wait_count("SELECT COUNT(*) FROM jobs WHERE state <> 'done'", 0);
    let cache = a.dir.path().join("var-node-b/spool");
    let analysed = a.with_store(async |store| {
        sqlx::query_as::<_, (String, String)>(
            "SELECT i.sop_instance_uid, i.path FROM results r JOIN instances i ON i.id = r.instance_id \
             WHERE r.node = 'node-b'",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    });
    let analysed: std::collections::HashMap<String, String> = analysed.into_iter().collect();
    for file in &sent {
        let path = analysed
            .get(&sop_instance_uid(file))
            .unwrap_or_else(|| panic!("acknowledged {} was not analysed by B", file.display()));
        assert_same_pixels(file, &cache.join(path));
    }
    assert_eq!(a.count("SELECT COUNT(*) FROM results"), a.count("SELECT COUNT(*) FROM instances"));
}
