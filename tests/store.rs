//! The store's group commit: concurrent arrivals share transactions, and a bad row fails alone.

mod common;

use common::{Backend, Setup};
use pneumotriage::store::{InstanceHeader, NewInstance};

fn instance(uid: &str, version: i64) -> NewInstance {
    NewInstance {
        header: InstanceHeader {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
            sop_instance_uid: uid.into(),
            study_instance_uid: "1.2.99".into(),
            ..Default::default()
        },
        version,
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        calling_ae: "TESTSCU".into(),
        peer_address: "127.0.0.1:1".into(),
        path: format!("1.2.99/{uid}.v{version}.dcm"),
        size_bytes: 10,
        skip_reason: None,
        event_kind: "instance_stored",
    }
}

fn concurrent_instances_are_all_committed_and_a_bad_one_fails_alone(backend: Backend) {
    let setup = Setup::new(backend);
    setup.with_store(async |store| {
        let _ = tracing_subscriber::fmt().with_env_filter("pneumotriage=debug").with_test_writer().try_init();
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

on_both_backends!(concurrent_instances_are_all_committed_and_a_bad_one_fails_alone);
