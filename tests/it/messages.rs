//! Messages to the systems radiologists read from (HL7 v2, FHIR, webhook): when the outbox
//! makes them (one per study and priority, never for a priority that would fall, a study's
//! images settling into one), checked on the real databases.

use std::time::Duration;

use crate::common::{Backend, Setup};
use crate::store::{instance_in_study, result};
use pneumotriage::domain::{Decision, DestinationKind, Priority};
use pneumotriage::store::{control_id, JobScope, MessageRule, Store};

fn rule(priorities: &[Priority], settle: Duration) -> MessageRule {
    MessageRule { destination: "ris".into(), kind: DestinationKind::Hl7, priorities: priorities.to_vec(), settle }
}

/// Receives an image of `study` and records its result at `priority`, as the pipeline does.
async fn analyse(store: &Store, study: &str, uid: &str, priority: Priority, rules: &[MessageRule]) {
    store.record_instance(&instance_in_study(study, uid, 1)).await.unwrap();
    let job = store.claim_job(Duration::from_secs(60), JobScope::AnySpool).await.unwrap().expect("a job");
    let mut r = result();
    r.priority = priority;
    if priority == Priority::Routine {
        r.decision = Decision::Negative;
    }
    assert!(store.record_result(&job, &r, &[], rules).await.unwrap());
}

/// (priority, state) of every message, oldest first.
fn messages(setup: &Setup) -> Vec<(String, String)> {
    setup.with_store(async |store| {
        sqlx::query_as("SELECT priority, state FROM messages ORDER BY id").fetch_all(store.pool()).await.unwrap()
    })
}

fn pair(priority: &str, state: &str) -> (String, String) {
    (priority.into(), state.into())
}

fn an_urgent_pa_then_a_routine_lateral_give_one_urgent_message(backend: Backend) {
    let setup = Setup::new(backend);
    let rules = [rule(Priority::ALL, Duration::from_secs(30))];
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        analyse(store, "1.2.40", "1.2.40.1", Priority::Urgent, &rules).await;
        analyse(store, "1.2.40", "1.2.40.2", Priority::Routine, &rules).await;
        let m = store.claim_message("ris", Duration::from_secs(60)).await.unwrap().expect("urgent goes at once");
        assert_eq!(m.priority, Priority::Urgent);
        assert_eq!(m.control_id, control_id("ris", "1.2.40", Priority::Urgent));
        assert_eq!(m.control_id.len(), 20, "fits HL7 MSH-10");
    });
    assert_eq!(messages(&setup), [pair("urgent", "sending")]);
}

fn review_then_urgent_give_two_messages(backend: Backend) {
    let setup = Setup::new(backend);
    let rules = [rule(Priority::ALL, Duration::ZERO)];
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        analyse(store, "1.2.41", "1.2.41.1", Priority::Review, &rules).await;
        let review = store.claim_message("ris", Duration::from_secs(60)).await.unwrap().expect("review is due");
        assert!(store.message_done(&review).await.unwrap());
        analyse(store, "1.2.41", "1.2.41.2", Priority::Urgent, &rules).await;
        // a third image at review raises nothing
        analyse(store, "1.2.41", "1.2.41.3", Priority::Review, &rules).await;
        let urgent = store.claim_message("ris", Duration::from_secs(60)).await.unwrap().expect("urgent is due");
        assert_eq!(urgent.priority, Priority::Urgent);
        assert_ne!(urgent.control_id, review.control_id);
    });
    assert_eq!(messages(&setup), [pair("review", "delivered"), pair("urgent", "sending")]);
}

fn a_settling_message_gives_way_to_a_higher_one(backend: Backend) {
    let setup = Setup::new(backend);
    let rules = [rule(Priority::ALL, Duration::from_secs(60))];
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        analyse(store, "1.2.42", "1.2.42.1", Priority::Review, &rules).await;
        assert!(store.claim_message("ris", Duration::from_secs(60)).await.unwrap().is_none(), "review settles");
        analyse(store, "1.2.42", "1.2.42.2", Priority::Urgent, &rules).await;
        let m = store.claim_message("ris", Duration::from_secs(60)).await.unwrap().expect("urgent goes at once");
        assert_eq!(m.priority, Priority::Urgent);
    });
    assert_eq!(messages(&setup), [pair("urgent", "sending")], "the untried review message is superseded");
}

fn another_image_of_the_study_extends_the_settling(backend: Backend) {
    let setup = Setup::new(backend);
    let rules = [rule(Priority::ALL, Duration::from_millis(400))];
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        analyse(store, "1.2.43", "1.2.43.1", Priority::Routine, &rules).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        analyse(store, "1.2.43", "1.2.43.2", Priority::Routine, &rules).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            store.claim_message("ris", Duration::from_secs(60)).await.unwrap().is_none(),
            "500 ms after the first image but 250 ms after the second: still settling"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(store.claim_message("ris", Duration::from_secs(60)).await.unwrap().is_some());
    });
    assert_eq!(messages(&setup), [pair("routine", "sending")]);
}

fn only_the_destinations_priorities_send_a_message(backend: Backend) {
    let setup = Setup::new(backend);
    let rules = [rule(&[Priority::Urgent], Duration::ZERO)];
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        analyse(store, "1.2.44", "1.2.44.1", Priority::Routine, &rules).await;
        analyse(store, "1.2.45", "1.2.45.1", Priority::Review, &rules).await;
        analyse(store, "1.2.45", "1.2.45.2", Priority::Urgent, &rules).await;
    });
    assert_eq!(messages(&setup), [pair("urgent", "pending")]);
}

on_both_backends!(
    an_urgent_pa_then_a_routine_lateral_give_one_urgent_message,
    review_then_urgent_give_two_messages,
    a_settling_message_gives_way_to_a_higher_one,
    another_image_of_the_study_extends_the_settling,
    only_the_destinations_priorities_send_a_message
);
