//! Messages to the systems radiologists read from (HL7 v2, FHIR, webhook): when the outbox
//! makes them (one per study and priority, never for a priority that would fall, a study's
//! images settling into one), checked on the real databases; then the node end to end against
//! real receivers (`mllp_receiver.py` validated by hl7apy and python-hl7, `https_receiver.py`
//! validated by fhir.resources), through refusals, outages and a kill -9.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{
    free_port, http_request, make_certificates, python, run, storescu, synthetic_images, synthetic_truth, text, tool,
    Backend, Setup, DEFAULT_PEERS,
};
use crate::store::{instance_in_study, result};
use crate::{fhir, hl7};
use pneumotriage::domain::MessageRule;
use pneumotriage::domain::{Decision, DestinationKind, Priority};
use pneumotriage::store::{control_id, JobEnd, JobScope, Store};

fn rule(priorities: &[Priority], settle: Duration) -> MessageRule {
    MessageRule {
        destination: "ris".into(),
        kind: DestinationKind::Hl7,
        priorities: priorities.to_vec(),
        settle,
        not_analysed: true,
    }
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
        assert_eq!(m.priority, Some(Priority::Urgent));
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
        assert!(store.message_done(&review, "127.0.0.1:2575").await.unwrap());
        analyse(store, "1.2.41", "1.2.41.2", Priority::Urgent, &rules).await;
        // a third image at review raises nothing
        analyse(store, "1.2.41", "1.2.41.3", Priority::Review, &rules).await;
        let urgent = store.claim_message("ris", Duration::from_secs(60)).await.unwrap().expect("urgent is due");
        assert_eq!(urgent.priority, Some(Priority::Urgent));
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
        assert_eq!(m.priority, Some(Priority::Urgent));
    });
    assert_eq!(messages(&setup), [pair("urgent", "sending")], "the untried review message is superseded");
}

/// A message that failed for a while is outranked like one not tried yet: review is never sent
/// after urgent, whether it was waiting to be tried again or on the wire when urgent came.
fn a_message_tried_before_a_higher_one_is_never_sent_after_it(backend: Backend) {
    let setup = Setup::new(backend);
    let rules = [rule(Priority::ALL, Duration::ZERO)];
    let lease = Duration::from_secs(60);
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        // waiting for another try when urgent comes
        analyse(store, "1.2.46", "1.2.46.1", Priority::Review, &rules).await;
        let review = store.claim_message("ris", lease).await.unwrap().expect("review is due");
        assert!(store.message_retry(&review, "connection refused", Duration::ZERO).await.unwrap());
        analyse(store, "1.2.46", "1.2.46.2", Priority::Urgent, &rules).await;
        let m = store.claim_message("ris", lease).await.unwrap().expect("urgent is due");
        assert_eq!(m.priority, Some(Priority::Urgent));
        assert!(store.message_done(&m, "127.0.0.1:2575").await.unwrap());
        assert!(store.claim_message("ris", lease).await.unwrap().is_none(), "review is not sent after urgent");

        // on the wire when urgent comes: urgent waits for its answer, then review is not tried again
        analyse(store, "1.2.47", "1.2.47.1", Priority::Review, &rules).await;
        let review = store.claim_message("ris", lease).await.unwrap().expect("review is due");
        analyse(store, "1.2.47", "1.2.47.2", Priority::Urgent, &rules).await;
        assert!(store.claim_message("ris", lease).await.unwrap().is_none(), "urgent waits for the review on the wire");
        assert!(store.message_retry(&review, "no ACK", Duration::ZERO).await.unwrap());
        let m = store.claim_message("ris", lease).await.unwrap().expect("urgent is due");
        assert_eq!(m.priority, Some(Priority::Urgent));
        assert!(store.message_done(&m, "127.0.0.1:2575").await.unwrap());
        assert!(store.claim_message("ris", lease).await.unwrap().is_none(), "review is not tried again");
    });
    assert_eq!(messages(&setup), [pair("urgent", "delivered"), pair("urgent", "delivered")]);
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

/// A message below urgent is not sent while other images of its study are queued or being
/// analysed (a backlog, or another worker): their results may raise it. Urgent goes at once.
fn a_message_below_urgent_waits_for_the_studys_other_images(backend: Backend) {
    let setup = Setup::new(backend);
    let rules = [rule(Priority::ALL, Duration::ZERO)];
    let lease = Duration::from_secs(60);
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        for uid in ["1.2.44.1", "1.2.44.2"] {
            store.record_instance(&instance_in_study("1.2.44", uid, 1)).await.unwrap();
        }
        let pa = store.claim_job(lease, JobScope::AnySpool).await.unwrap().expect("the PA");
        let mut routine = result();
        (routine.priority, routine.decision) = (Priority::Routine, Decision::Negative);
        assert!(store.record_result(&pa, &routine, &[], &rules).await.unwrap());
        assert!(store.claim_message("ris", lease).await.unwrap().is_none(), "the lateral is queued");
        let lateral = store.claim_job(lease, JobScope::AnySpool).await.unwrap().expect("the lateral");
        assert!(store.claim_message("ris", lease).await.unwrap().is_none(), "the lateral is being analysed");
        assert!(store.record_result(&lateral, &routine, &[], &rules).await.unwrap());
        let m = store.claim_message("ris", lease).await.unwrap().expect("both analysed: the message goes");
        assert_eq!(m.priority, Some(Priority::Routine));

        // an urgent first image does not wait for the second
        for uid in ["1.2.45.1", "1.2.45.2"] {
            store.record_instance(&instance_in_study("1.2.45", uid, 1)).await.unwrap();
        }
        let pa = store.claim_job(lease, JobScope::AnySpool).await.unwrap().expect("the PA");
        assert!(store.record_result(&pa, &result(), &[], &rules).await.unwrap());
        let m = store.claim_message("ris", lease).await.unwrap().expect("urgent goes at once");
        assert_eq!(m.priority, Some(Priority::Urgent));
    });
    assert_eq!(messages(&setup), [pair("routine", "sending"), pair("urgent", "sending")]);
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

/// Receives an image of `study` that the node could not analyse, and reports it as the pipeline
/// does.
async fn not_analysed(store: &Store, study: &str, uid: &str, rules: &[MessageRule]) {
    store.record_instance(&instance_in_study(study, uid, 1)).await.unwrap();
    let job = store.claim_job(Duration::from_secs(60), JobScope::AnySpool).await.unwrap().expect("a job");
    let reason = "input check: patient age 12.0 years is below inference.checks.min_age_years (18)";
    assert!(store.record_not_analysed(&job, JobEnd::Skipped, reason, &[], rules).await.unwrap());
}

/// (priority or "not analysed", state) of every message, oldest first.
fn messages_with_notices(setup: &Setup) -> Vec<(String, String)> {
    setup.with_store(async |store| {
        let rows: Vec<(Option<String>, String)> =
            sqlx::query_as("SELECT priority, state FROM messages ORDER BY id").fetch_all(store.pool()).await.unwrap();
        rows.into_iter().map(|(p, s)| (p.unwrap_or_else(|| "not analysed".into()), s)).collect()
    })
}

/// A study none of whose images could be analysed gets one "not analysed" message per
/// destination, after the settling wait; a result of another of its images, arriving within it,
/// supersedes it (never sent), and once the study has a result no such message is made.
fn a_result_within_the_settling_supersedes_the_not_analysed_message(backend: Backend) {
    let setup = Setup::new(backend);
    let rules = [rule(Priority::ALL, Duration::from_secs(30))];
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        not_analysed(store, "1.2.50", "1.2.50.1", &rules).await;
        not_analysed(store, "1.2.50", "1.2.50.2", &rules).await;
        assert!(store.claim_message("ris", Duration::from_secs(60)).await.unwrap().is_none(), "settling");
    });
    assert_eq!(messages_with_notices(&setup), [pair("not analysed", "pending")], "one per study and destination");
    setup.with_store(async |store| {
        analyse(store, "1.2.50", "1.2.50.3", Priority::Urgent, &rules).await;
        // the study has a result now: a later unanalysable image reports nothing more
        not_analysed(store, "1.2.50", "1.2.50.4", &rules).await;
    });
    assert_eq!(messages_with_notices(&setup), [pair("urgent", "pending")]);
}

/// Once a "not analysed" message was sent, the study's result follows it even at a priority the
/// destination does not otherwise take, so that the receiver is never left with "not analysed";
/// the message names the same study under its own control ID.
fn a_result_after_a_sent_not_analysed_message_follows_it_whatever_the_priorities(backend: Backend) {
    let setup = Setup::new(backend);
    let rules = [rule(&[Priority::Urgent], Duration::ZERO)];
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        not_analysed(store, "1.2.51", "1.2.51.1", &rules).await;
        let told = store.claim_message("ris", Duration::from_secs(60)).await.unwrap().expect("due at once");
        assert_eq!(told.priority, None);
        assert_eq!(told.control_id, pneumotriage::store::not_analysed_control_id("ris", "1.2.51"));
        let said = store.study_message(&told, "").await.unwrap();
        assert_eq!(
            said.not_analysed(),
            Some("input check: patient age 12.0 years is below inference.checks.min_age_years (18)")
        );
        assert!(store.message_done(&told, "127.0.0.1:2575").await.unwrap());
        analyse(store, "1.2.51", "1.2.51.2", Priority::Routine, &rules).await;
        // another study's routine result is still not sent to this destination
        analyse(store, "1.2.52", "1.2.52.1", Priority::Routine, &rules).await;
        let result = store.claim_message("ris", Duration::from_secs(60)).await.unwrap().expect("the result follows");
        assert_eq!(result.priority, Some(Priority::Routine));
        assert_ne!(result.control_id, told.control_id);
        assert_eq!(store.study_message(&result, "").await.unwrap().priority(), Some(Priority::Routine));
    });
    assert_eq!(messages_with_notices(&setup), [pair("not analysed", "delivered"), pair("routine", "sending")]);
}

/// A destination with `not_analysed = false` gets no such message.
fn a_destination_can_decline_not_analysed_messages(backend: Backend) {
    let setup = Setup::new(backend);
    let rules = [MessageRule { not_analysed: false, ..rule(Priority::ALL, Duration::ZERO) }];
    setup.with_store(async |store| {
        store.migrate().await.unwrap();
        not_analysed(store, "1.2.53", "1.2.53.1", &rules).await;
    });
    assert_eq!(messages_with_notices(&setup), []);
}

on_both_backends!(
    an_urgent_pa_then_a_routine_lateral_give_one_urgent_message,
    review_then_urgent_give_two_messages,
    a_settling_message_gives_way_to_a_higher_one,
    a_message_tried_before_a_higher_one_is_never_sent_after_it,
    another_image_of_the_study_extends_the_settling,
    a_message_below_urgent_waits_for_the_studys_other_images,
    only_the_destinations_priorities_send_a_message,
    a_result_within_the_settling_supersedes_the_not_analysed_message,
    a_result_after_a_sent_not_analysed_message_follows_it_whatever_the_priorities,
    a_destination_can_decline_not_analysed_messages,
    a_positive_and_a_negative_image_give_one_valid_urgent_oru
);

// ---- end to end ----

const STUDY: &str = "1.2.826.0.1.3680043.10.1447.77.1";
const ACCESSION: &str = "A|1^2~3&4";
const DESCRIPTION: &str = "XR CHEST|PA^2~&";

/// A node that analyses with the demo models and sends to the `[[destinations]]` in `tail`.
fn node_sending_to(backend: Backend, tail: &str) -> Setup {
    let mut setup = Setup::analysing(backend, "");
    setup.tail = tail.to_string();
    setup.http = "public_url = \"https://triage.example.org/\"".into();
    setup.write_config("", "", DEFAULT_PEERS);
    setup
}

fn hl7_destination(port: u16, extra: &str) -> String {
    format!(
        "[[destinations]]\nname = \"ris\"\nkind = \"hl7\"\nhost = \"127.0.0.1\"\nport = {port}\n\
         retry_initial_secs = 1\nretry_max_secs = 2\ntimeout_secs = 5\n{extra}\n\
         [destinations.hl7]\nreceiving_application = \"RIS\"\n"
    )
}

/// A positive and a negative synthetic radiograph, rewritten into `study` for patient
/// Müller^Jörg, with the HL7 delimiters in the accession number and the description.
fn positive_and_negative(dir: &Path, study: &str) -> [PathBuf; 2] {
    let synthetic = dir.join("synthetic");
    let files = synthetic_images(&synthetic, 6, 77);
    let truth = synthetic_truth(&synthetic);
    let positive =
        |f: &&PathBuf| truth[&f.file_stem().unwrap().to_string_lossy().into_owned()].iter().any(|r| r.trim() != "-1");
    let pos = files.iter().find(positive).expect("a positive");
    let neg = files.iter().find(|f| !positive(f)).expect("a negative");
    let out = dir.join(study);
    let made = run(
        &python(),
        &[
            tool("restudy.py").to_str().unwrap(),
            out.to_str().unwrap(),
            study,
            pos.to_str().unwrap(),
            neg.to_str().unwrap(),
            "--patient-name",
            "Müller^Jörg",
            "--patient-id",
            "PAT1",
            "--issuer",
            "HOSP",
            "--accession",
            ACCESSION,
            "--description",
            DESCRIPTION,
            "--birth-date",
            "19700101",
            "--sex",
            "M",
        ],
    );
    assert!(made.status.success(), "{}", text(&made));
    [out.join("1.dcm"), out.join("2.dcm")]
}

/// MSH-10 of an HL7 message.
fn msh10(message: &str) -> &str {
    message.split('\r').next().and_then(|msh| msh.split('|').nth(9)).unwrap_or_default()
}

/// Keeps a message as sent under `PNEUMOTRIAGE_TEST_ARTIFACTS`, when it is set.
fn keep_artifact(name: &str, bytes: &[u8]) {
    if let Ok(dir) = std::env::var("PNEUMOTRIAGE_TEST_ARTIFACTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(Path::new(&dir).join(name), bytes).unwrap();
    }
}

pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn a_positive_and_a_negative_image_give_one_valid_urgent_oru(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let ris = hl7::Receiver::start("AA", &[]);
    // a negative analysed first waits 5 s: the positive's urgent message then says it all
    let setup = node_sending_to(backend, &hl7_destination(ris.port, "settle_secs = 5"));
    let [positive, negative] = positive_and_negative(work.path(), STUDY);
    let _node = setup.start();
    let sent = storescu(setup.port, &[], &[&positive, &negative]);
    assert!(sent.status.success(), "{}", text(&sent));
    setup.wait_count("SELECT COUNT(*) FROM results", 2);
    assert_eq!(setup.count("SELECT COUNT(*) FROM results WHERE priority = 'urgent'"), 1, "the positive is urgent");
    setup.wait_count("SELECT COUNT(*) FROM messages WHERE state = 'delivered'", 1);
    std::thread::sleep(Duration::from_secs(6));
    let received = ris.received();
    assert_eq!(received.len(), 1, "one message for the study: {received:?}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM messages"), 1);

    keep_artifact(&format!("oru-r01-{backend:?}.hl7"), received[0].as_bytes());
    let check = hl7::check(&received[0]);
    assert!(check.valid, "hl7apy: {}\n{}", check.errors, received[0].replace('\r', "\n"));
    assert_eq!(check.hl7apy, check.python_hl7, "the parsers disagree");
    let read = &check.hl7apy;
    assert_eq!(read["control_id"], control_id("ris", STUDY, Priority::Urgent).as_str());
    assert_eq!(read["name"][0], "Müller");
    assert_eq!(read["name"][1], "Jörg");
    assert_eq!(read["patient_id"], "PAT1");
    assert_eq!(read["issuer"], "HOSP");
    assert_eq!(read["birth_date"], "19700101");
    assert_eq!((&read["placer"], &read["filler"]), (&ACCESSION.into(), &ACCESSION.into()));
    assert_eq!(read["procedure"], DESCRIPTION);
    assert_eq!(read["priority_obr27"], "S");
    assert_eq!(read["finding"], "52101004", "present");
    assert_eq!(read["study_uid"], STUDY);
    let uids = |kind: &str| -> serde_json::Value {
        setup.with_store(async |store| {
            let rows: Vec<(String,)> =
                sqlx::query_as("SELECT sop_instance_uid FROM outputs WHERE kind = $1 ORDER BY id")
                    .bind(kind)
                    .fetch_all(store.pool())
                    .await
                    .unwrap();
            serde_json::json!(rows.into_iter().map(|(u,)| u).collect::<Vec<_>>())
        })
    };
    // the urgent message went as soon as the positive was analysed: its objects, maybe not yet
    // the negative's SR
    for kind in ["sr", "seg"] {
        let (sent, made) = (read[format!("{kind}_uids")].as_array().unwrap().clone(), uids(kind));
        assert!(
            !sent.is_empty() && sent.iter().all(|u| made.as_array().unwrap().contains(u)),
            "{kind}: {sent:?} of {made}"
        );
    }
}

fn a_refused_message_fails_once_until_retried(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let ris = hl7::Receiver::start("AR", &[]);
    let setup = node_sending_to(backend, &hl7_destination(ris.port, "settle_secs = 0"));
    let [positive, _] = positive_and_negative(work.path(), STUDY);
    let _node = setup.start();
    assert!(storescu(setup.port, &[], &[&positive]).status.success());
    setup.wait_count("SELECT COUNT(*) FROM messages WHERE state = 'failed' AND attempts = 1", 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ris.received().len(), 1, "AR: one attempt, no loop");
    let listed = text(&setup.cli(&["deliveries", "--failed"]));
    assert!(listed.contains("m1") && listed.contains("hl7") && listed.contains("failed"), "{listed}");
    let status = text(&setup.cli(&["status"]));
    assert!(status.contains("messages: 0 pending, 0 sending, 0 delivered, 1 failed"), "{status}");

    std::fs::write(&ris.answer_file, "AA").unwrap();
    let retried = setup.cli(&["retry", "m1"]);
    assert!(retried.status.success(), "{}", text(&retried));
    setup.wait_count("SELECT COUNT(*) FROM messages WHERE state = 'delivered'", 1);
    let received = ris.received();
    assert_eq!(received.len(), 2);
    assert_eq!(msh10(&received[0]), msh10(&received[1]), "a resend carries the same control ID");
    let (code, _, body) = http_request(setup.http_port, "GET", &format!("/api/studies/{STUDY}"), &[], "").unwrap();
    assert_eq!(code, 200);
    let study: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(study["messages"][0]["state"], "delivered", "{study}");
    assert_eq!(study["messages"][0]["kind"], "hl7", "{study}");
}

fn a_receiver_down_then_up_gets_every_message_once(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let setup = node_sending_to(backend, &hl7_destination(port, "settle_secs = 0"));
    let [positive, _] = positive_and_negative(work.path(), STUDY);
    let [_, negative] = positive_and_negative(&work.path().join("second"), "1.2.826.0.1.3680043.10.1447.77.2");
    let node = setup.start();
    assert!(storescu(setup.port, &[], &[&positive, &negative]).status.success());
    setup.wait_count("SELECT COUNT(*) FROM messages WHERE attempts >= 3", 2);
    let ris = hl7::Receiver::start_on(port, "AA", &[]);
    setup.wait_count("SELECT COUNT(*) FROM messages WHERE state = 'delivered'", 2);
    std::thread::sleep(Duration::from_secs(2));
    let mut ids: Vec<String> = ris.received().iter().map(|m| msh10(m).to_string()).collect();
    ids.sort();
    let mut expected = [
        control_id("ris", STUDY, Priority::Urgent),
        control_id("ris", "1.2.826.0.1.3680043.10.1447.77.2", Priority::Routine),
    ];
    expected.sort();
    assert_eq!(ids, expected, "each message once");
    assert!(node.log().contains("message will be sent again"), "{}", node.log());
}

fn a_node_killed_before_the_ack_sends_again_after_restart(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    // no ACK: the node waits (30 s) with the message `sending` when it is killed
    let ris = hl7::Receiver::start("none", &[]);
    let setup = node_sending_to(
        backend,
        &hl7_destination(ris.port, "settle_secs = 0").replace("timeout_secs = 5", "timeout_secs = 30"),
    );
    let [positive, _] = positive_and_negative(work.path(), STUDY);
    let mut node = setup.start();
    assert!(storescu(setup.port, &[], &[&positive]).status.success());
    wait_until("the message reaches the receiver", || ris.received().len() == 1);
    assert_eq!(setup.count("SELECT COUNT(*) FROM messages WHERE state = 'sending'"), 1);
    node.kill9();
    std::fs::write(&ris.answer_file, "AA").unwrap();
    let _node = setup.start();
    setup.wait_count("SELECT COUNT(*) FROM messages WHERE state = 'delivered'", 1);
    let received = ris.received();
    assert_eq!(received.len(), 2, "sent again after the restart");
    assert_eq!(msh10(&received[1]), control_id("ris", STUDY, Priority::Urgent));
    assert_eq!(msh10(&received[0]), msh10(&received[1]));
}

/// FHIR over HTTPS (the CA made by openssl, a bearer token) and a signed webhook, from one study.
fn fhir_and_webhook_receive_the_study(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    make_certificates(&certs);
    let ehr = fhir::Receiver::https(&certs, &[]);
    let hooks_dir = work.path().join("hooks");
    std::fs::create_dir_all(&hooks_dir).unwrap();
    let secret = "a-webhook-secret-of-some-length";
    let hook = fhir::Receiver::start(&hooks_dir, &["--secret", secret]);
    let tail = format!(
        "[[destinations]]\nname = \"ehr\"\nkind = \"fhir\"\nurl = \"https://localhost:{}/fhir\"\nsettle_secs = 0\n\
         [destinations.tls]\nca_file = \"{}\"\n[destinations.fhir]\nbearer_token = \"token-of-the-ehr\"\n\
         [[destinations]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{}/hook\"\nsettle_secs = 0\n\
         [destinations.webhook]\nsecret = \"{secret}\"\n",
        ehr.port,
        certs.join("ca.crt").display(),
        hook.port
    );
    let setup = node_sending_to(backend, &tail);
    let [positive, _] = positive_and_negative(work.path(), STUDY);
    let _node = setup.start();
    assert!(storescu(setup.port, &[], &[&positive]).status.success());
    setup.wait_count("SELECT COUNT(*) FROM messages WHERE state = 'delivered'", 2);

    let (bundle, request) = ehr.request(1);
    keep_artifact("fhir-bundle.json", &bundle);
    let verdict = fhir::check(work.path(), &bundle);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(request["headers"]["authorization"], "Bearer token-of-the-ehr", "{request}");
    let bundle: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    let task = bundle["entry"].as_array().unwrap().iter().find(|e| e["resource"]["resourceType"] == "Task").unwrap();
    assert_eq!(task["resource"]["priority"], "stat", "urgent maps to stat");

    let (body, request) = hook.request(1);
    assert_eq!(request["signature_ok"], true, "{request}");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["priority"], "urgent");
    assert_eq!(body["study"]["study_instance_uid"], STUDY);
    assert_eq!(body["study"]["accession_number"], ACCESSION);
    assert_eq!(body["control_id"], control_id("hook", STUDY, Priority::Urgent).as_str());
    assert_eq!(body["link"], format!("https://triage.example.org/#study={STUDY}").as_str());
    let metrics = http_request(setup.http_port, "GET", "/metrics", &[], "").unwrap();
    let metrics = String::from_utf8_lossy(&metrics.2).into_owned();
    assert!(metrics.contains("pneumotriage_messages{kind=\"fhir\",state=\"delivered\"} 1"), "{metrics}");
    assert!(metrics.contains("pneumotriage_messages{kind=\"webhook\",state=\"delivered\"} 1"), "{metrics}");
}

mod end_to_end {
    use crate::common::Backend;

    #[test]
    fn a_refused_message_fails_once_until_retried() {
        super::a_refused_message_fails_once_until_retried(Backend::Sqlite)
    }

    #[test]
    fn a_receiver_down_then_up_gets_every_message_once() {
        super::a_receiver_down_then_up_gets_every_message_once(Backend::Postgres)
    }

    #[test]
    fn a_node_killed_before_the_ack_sends_again_after_restart() {
        super::a_node_killed_before_the_ack_sends_again_after_restart(Backend::Sqlite)
    }

    #[test]
    fn fhir_and_webhook_receive_the_study() {
        super::fhir_and_webhook_receive_the_study(Backend::Postgres)
    }
}
