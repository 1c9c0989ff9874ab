//! The store: group commit (concurrent arrivals share transactions, a bad row fails alone) and
//! the job queue shared by several nodes (each job claimed once, expired leases taken over).

use std::time::Duration;

use crate::common::{Backend, Setup};
use pneumotriage::domain::{Decision, DestinationKind, EventKind, InstanceHeader, MessageRule, Policy, Priority};
use pneumotriage::store::{JobEnd, JobScope, NewInstance, NewResult, Store};

fn instance(uid: &str, version: i64) -> NewInstance {
    instance_in_study("1.2.99", uid, version)
}

/// A received instance's rows, as ingest would record them.
pub(crate) fn instance_in_study(study: &str, uid: &str, version: i64) -> NewInstance {
    NewInstance {
        header: InstanceHeader {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
            sop_instance_uid: uid.into(),
            study_instance_uid: study.into(),
            ..Default::default()
        },
        version,
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        calling_ae: "TESTSCU".into(),
        peer_address: "127.0.0.1:1".into(),
        path: format!("{study}/{uid}.v{version}.dcm"),
        size_bytes: 10,
        skip_reason: None,
        event_kind: EventKind::InstanceStored,
    }
}

fn concurrent_instances_are_all_committed_and_a_bad_one_fails_alone(backend: Backend) {
    let setup = Setup::new(backend);
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        store.record_instance(&instance("1.2.3.1", 1)).await.unwrap();
        // 40 new instances and one that repeats (uid, version) of the first, all at once
        let mut all: Vec<NewInstance> = (2..42).map(|i| instance(&format!("1.2.3.{i}"), 1)).collect();
        all.insert(20, instance("1.2.3.1", 1));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, new) in all.into_iter().enumerate() {
            let store = store.clone();
            tasks.spawn(async move { (i, store.record_instance(&new).await) });
        }
        let mut results: Vec<_> = tasks.join_all().await;
        results.sort_by_key(|(i, _)| *i);
        let results: Vec<_> = results.into_iter().map(|(_, r)| r).collect();
        for (i, r) in results.iter().enumerate() {
            if i == 20 {
                assert!(r.is_err(), "the repeated version must fail");
            } else {
                assert!(r.is_ok(), "instance {i}: {r:?}");
            }
        }
        let mut ids: Vec<i64> = results.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.instance_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 40);
    });
    assert_eq!(setup.count("SELECT COUNT(*) FROM instances"), 41);
    assert_eq!(setup.count("SELECT COUNT(*) FROM jobs WHERE state = 'queued'"), 41);
    assert_eq!(setup.count("SELECT instance_count FROM studies"), 41, "the failed row left no trace in its study");
}

fn two_nodes_claim_each_job_once_and_take_over_expired_leases(backend: Backend) {
    let setup = Setup::new(backend);
    let url = setup.db.url.clone();
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        for i in 0..30 {
            store.record_instance(&instance(&format!("1.2.5.{i}"), 1)).await.unwrap();
        }
        let a = Store::connect(&url, 4, "node-a").await.unwrap();
        let b = Store::connect(&url, 4, "node-b").await.unwrap();
        // Both nodes claim as fast as they can, three claimers each.
        let mut tasks = tokio::task::JoinSet::new();
        for node in [&a, &b, &a, &b, &a, &b] {
            let node = node.clone();
            tasks.spawn(async move {
                let mut mine = Vec::new();
                while let Some(job) = node.claim_job(Duration::from_secs(60), JobScope::AnySpool).await.unwrap() {
                    mine.push(job.id);
                }
                mine
            });
        }
        let mut claimed: Vec<i64> = tasks.join_all().await.into_iter().flatten().collect();
        claimed.sort();
        let total = claimed.len();
        claimed.dedup();
        assert_eq!((total, claimed.len()), (30, 30), "every job claimed exactly once");

        // A lease that expires: node a stops answering, node b takes the job over.
        store.record_instance(&instance("1.2.5.99", 1)).await.unwrap();
        let lost = a.claim_job(Duration::ZERO, JobScope::AnySpool).await.unwrap().expect("a claims the new job");
        assert_eq!(lost.attempts, 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let taken = b
            .claim_job(Duration::from_secs(60), JobScope::AnySpool)
            .await
            .unwrap()
            .expect("b takes the expired job over");
        assert_eq!((taken.id, taken.attempts), (lost.id, 2));
        assert!(a.claim_job(Duration::from_secs(60), JobScope::AnySpool).await.unwrap().is_none(), "b's lease holds");
        assert!(!a.record_result(&lost, &result(), &[], &[]).await.unwrap(), "a may no longer finish it");
        assert!(!a.end_job(&lost, JobEnd::Failed, "late").await.unwrap());
        assert!(b.record_result(&taken, &result(), &[], &[]).await.unwrap());
        a.close().await;
        b.close().await;
    });
    assert_eq!(setup.count("SELECT COUNT(*) FROM results"), 1);
    assert_eq!(setup.count("SELECT COUNT(*) FROM results WHERE node = 'node-b'"), 1);
    assert_eq!(setup.count("SELECT COUNT(*) FROM jobs WHERE state = 'done'"), 1);
    assert_eq!(
        setup.count("SELECT COUNT(*) FROM studies WHERE priority = 'urgent'"),
        1,
        "the study takes the result's priority"
    );
}

fn a_retried_job_waits_for_its_time_then_counts_its_attempts(backend: Backend) {
    let setup = Setup::new(backend);
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        store.record_instance(&instance("1.2.6.1", 1)).await.unwrap();
        let job = store.claim_job(Duration::from_secs(60), JobScope::AnySpool).await.unwrap().unwrap();
        assert!(store.retry_job(&job, "ONNX Runtime error", Duration::from_millis(300)).await.unwrap());
        assert!(
            store.claim_job(Duration::from_secs(60), JobScope::AnySpool).await.unwrap().is_none(),
            "not before its time"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        let again = store.claim_job(Duration::from_secs(60), JobScope::AnySpool).await.unwrap().expect("due now");
        assert_eq!((again.id, again.attempts), (job.id, 2));
        assert!(store.end_job(&again, JobEnd::Failed, "gave up").await.unwrap());
    });
    assert_eq!(setup.count("SELECT COUNT(*) FROM jobs WHERE state = 'failed' AND reason = 'gave up'"), 1);
    assert_eq!(setup.count("SELECT COUNT(*) FROM events WHERE kind = 'analysis_failed'"), 1);
}

/// A NUL inside a reason (a tag value read from the image, a receiver's error text) is kept as
/// U+FFFD: PostgreSQL refuses NUL in text, and the write would fail at every try.
fn reasons_with_a_nul_are_recorded(backend: Backend) {
    let setup = Setup::new(backend);
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        store.record_instance(&instance("1.2.6.5", 1)).await.unwrap();
        let lease = Duration::from_secs(60);
        let job = store.claim_job(lease, JobScope::AnySpool).await.unwrap().unwrap();
        assert!(store.retry_job(&job, "decoder said \0", Duration::ZERO).await.unwrap());
        let job = store.claim_job(lease, JobScope::AnySpool).await.unwrap().expect("due now");
        let reason = "not selected: Body Part Examined SKULL\0X";
        assert!(store.end_job(&job, JobEnd::Skipped, reason).await.unwrap());
    });
    let kept = "SELECT COUNT(*) FROM jobs WHERE state = 'skipped' AND reason = 'not selected: Body Part Examined SKULL\u{FFFD}X'";
    assert_eq!(setup.count(kept), 1);
}

/// The workers ask for the jobs a node died analysing apart from the others (they are
/// analysed alone in the node), and those come first.
fn interrupted_jobs_are_claimed_apart_and_first(backend: Backend) {
    let setup = Setup::new(backend);
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        let lease = Duration::from_secs(60);
        store.record_instance(&instance("1.2.6.2", 1)).await.unwrap();
        // the node dies while analysing it: recovery re-queues it, interrupted once
        store.claim_job(lease, JobScope::AnySpool).await.unwrap().expect("a job");
        assert_eq!(store.recover_interrupted_jobs(2).await.unwrap().requeued, 1);
        store.record_instance(&instance("1.2.6.3", 1)).await.unwrap();
        assert_eq!(store.due_job(JobScope::AnySpool).await.unwrap(), Some(true), "the interrupted one first");
        let fresh = store.claim_job_of(lease, JobScope::AnySpool, Some(false)).await.unwrap().expect("the new job");
        assert_eq!((fresh.sop_instance_uid.as_str(), fresh.interruptions), ("1.2.6.3", 0));
        assert!(store.claim_job_of(lease, JobScope::AnySpool, Some(false)).await.unwrap().is_none());
        assert_eq!(store.due_job(JobScope::AnySpool).await.unwrap(), Some(true));
        let suspect = store.claim_job_of(lease, JobScope::AnySpool, Some(true)).await.unwrap().expect("the suspect");
        assert_eq!((suspect.sop_instance_uid.as_str(), suspect.interruptions), ("1.2.6.2", 1));
        assert_eq!(store.due_job(JobScope::AnySpool).await.unwrap(), None, "both are in hand");
    });
}

/// Results of one study recorded at once (two workers, or two nodes on one PostgreSQL) leave
/// the study at its highest priority with one message: each result reads the study's priority
/// only once the other's transaction has ended (PostgreSQL's UPDATE of the study would
/// otherwise take the priority of its own snapshot, and each would make its own message).
fn results_of_one_study_recorded_at_once_give_its_priority_and_one_message(backend: Backend) {
    let setup = Setup::new(backend);
    let studies = 12;
    let url = setup.db.url.clone();
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        let rules = [MessageRule {
            destination: "ris".into(),
            kind: DestinationKind::Hl7,
            priorities: vec![Priority::Routine, Priority::Review, Priority::Urgent],
            settle: Duration::from_secs(600),
            not_analysed: false,
        }];
        for s in 0..studies {
            for i in 0..2 {
                store
                    .record_instance(&instance_in_study(&format!("1.2.8.{s}"), &format!("1.2.8.{s}.{i}"), 1))
                    .await
                    .unwrap();
            }
        }
        let mut jobs = Vec::new();
        while let Some(job) = store.claim_job(Duration::from_secs(60), JobScope::AnySpool).await.unwrap() {
            jobs.push(job);
        }
        assert_eq!(jobs.len(), 2 * studies);
        // Another transaction holds the studies while both results of each study are recorded,
        // so that each pair meets where it would race.
        let mut holder = store.pool().begin().await.unwrap();
        sqlx::query("UPDATE studies SET priority = priority").execute(&mut *holder).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for job in jobs {
            let (store, rules) = (Store::connect(&url, 1, "test").await.unwrap(), rules.clone());
            // the first image of each study is a routine negative, the second an urgent positive
            let outcome = if job.sop_instance_uid.ends_with(".0") { negative() } else { result() };
            tasks.spawn(async move { store.record_result(&job, &outcome, &[], &rules).await });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        holder.rollback().await.unwrap();
        for recorded in tasks.join_all().await {
            assert!(recorded.unwrap());
        }
    });
    assert_eq!(setup.count("SELECT COUNT(*) FROM results"), 2 * studies as i64);
    assert_eq!(
        setup.count("SELECT COUNT(*) FROM studies WHERE priority = 'urgent'"),
        studies as i64,
        "a study took the priority of its routine image"
    );
    assert_eq!(setup.count("SELECT COUNT(*) FROM messages"), studies as i64, "one message per study");
    assert_eq!(setup.count("SELECT COUNT(*) FROM messages WHERE priority = 'urgent'"), studies as i64);
}

/// A routine negative result.
fn negative() -> NewResult {
    NewResult {
        decision: Decision::Negative,
        priority: Priority::Routine,
        probability: 0.1,
        mask_rle: String::new(),
        mask_area_px: 0,
        ..result()
    }
}

/// An urgent positive result.
pub(crate) fn result() -> NewResult {
    let model = |name: &str| [name.to_string(), "1".into(), "ab".repeat(32)];
    NewResult {
        policy: Policy::Cascade,
        decision: Decision::Positive,
        priority: Priority::Urgent,
        probability: 0.9,
        width: 10,
        height: 10,
        mask_rle: "5 3".into(),
        mask_area_px: 3,
        mask_area_mm2: None,
        classifier: model("c"),
        segmenter: model("s"),
        execution_provider: "CPUExecutionProvider",
        timings_ms: [1.0, 2.0, 3.0, 4.0],
    }
}

/// The previous release's schema (migrations 0001 to 0008) holding a study with every kind of
/// row, then this release's migrations: they run (SQLite makes tables that others point at
/// again, which failed on any database with deliveries) and every row and reference is kept.
/// The package's upgrade test (tests/it/upgrade.rs) does the same with the released binary.
fn migrations_upgrade_a_database_with_records(backend: Backend) {
    let setup = Setup::new(backend);
    let folder = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let previous = setup.dir.path().join("previous-migrations");
    std::fs::create_dir(&previous).unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(folder);
    let mut copied = 0;
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.as_str() < "0009" {
            std::fs::copy(entry.path(), previous.join(&name)).unwrap();
            copied += 1;
        }
    }
    assert_eq!(copied, 8);
    let rows = [
        "INSERT INTO studies (study_instance_uid, instance_count, first_received_at, last_received_at) \
         VALUES ('1.2.7', 1, 1, 1)",
        "INSERT INTO instances (sop_instance_uid, version, study_id, sop_class_uid, transfer_syntax_uid, calling_ae, \
         peer_address, path, size_bytes, received_at) VALUES ('1.2.7.1', 1, 1, '1.2.840.10008.5.1.4.1.1.1', \
         '1.2.840.10008.1.2.1', 'DR_CHEST1', '10.0.0.1:1', '1.2.7/1.2.7.1.dcm', 10, 1)",
        "INSERT INTO jobs (instance_id, state, created_at, updated_at) VALUES (1, 'done', 1, 1)",
        "INSERT INTO results (instance_id, job_id, policy, decision, priority, probability, width, height, mask_rle, \
         mask_area_px, classifier_name, classifier_version, classifier_sha256, segmenter_name, segmenter_version, \
         segmenter_sha256, execution_provider, decode_ms, preprocess_ms, inference_ms, postprocess_ms, node, created_at) \
         VALUES (1, 1, 'cascade', 'positive', 'urgent', 0.9, 4, 4, '1 2', 2, 'c', '1', 'a', 's', '1', 'b', 'CPU', \
         1, 1, 1, 1, 'n', 1)",
        "INSERT INTO outputs (result_id, kind, sop_class_uid, sop_instance_uid, path, size_bytes, created_at) \
         VALUES (1, 'seg', '1.2.840.10008.5.1.4.1.1.66.4', '1.2.7.2', '1.2.7/1.2.7.2.dcm', 10, 1)",
        "INSERT INTO deliveries (output_id, destination, state, attempts, next_attempt_at, created_at, updated_at, \
         delivered_at) VALUES (1, 'pacs', 'delivered', 1, 1, 1, 1, 1)",
        "INSERT INTO messages (study_id, destination, kind, priority, control_id, state, next_attempt_at, created_at, \
         updated_at) VALUES (1, 'ris', 'hl7', 'urgent', 'PT1', 'delivered', 1, 1, 1)",
        "INSERT INTO verdicts (result_id, verdict, reviewer, created_at) VALUES (1, 'agree', 'dr.lee', 1)",
    ];
    setup.with_store(async |store| {
        let migrator = sqlx::migrate::Migrator::new(previous.as_path()).await.unwrap();
        migrator.run(store.pool()).await.unwrap();
        for sql in rows {
            sqlx::query(sql).execute(store.pool()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        store.migrate().await.expect("this release's migrations run on the previous release's records");
    });
    let kept = setup.count(
        "SELECT COUNT(*) FROM verdicts v JOIN results r ON r.id = v.result_id JOIN outputs o ON o.result_id = r.id \
         JOIN deliveries d ON d.output_id = o.id JOIN instances i ON i.id = r.instance_id \
         JOIN messages m ON m.study_id = i.study_id \
         WHERE d.state = 'delivered' AND m.state = 'delivered' AND o.released_at IS NULL",
    );
    assert_eq!(kept, 1, "a row or a reference was lost");
    // the tallies the worklist counts with start from the rows already there
    let delivered = setup.count("SELECT n FROM tallies WHERE subject = 'deliveries' AND state = 'delivered'");
    assert_eq!(delivered, 1, "the tallies do not count the delivery made before the upgrade");
}

on_both_backends!(
    concurrent_instances_are_all_committed_and_a_bad_one_fails_alone,
    two_nodes_claim_each_job_once_and_take_over_expired_leases,
    a_retried_job_waits_for_its_time_then_counts_its_attempts,
    interrupted_jobs_are_claimed_apart_and_first,
    reasons_with_a_nul_are_recorded,
    results_of_one_study_recorded_at_once_give_its_priority_and_one_message,
    migrations_upgrade_a_database_with_records
);
