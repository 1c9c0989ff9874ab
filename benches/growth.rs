//! Growth benchmark: what the worklist, a `/metrics` scrape and a job claim cost once the
//! database holds a busy year of records (docs/benchmarks.md, "A year of records").
//!
//! Method: a few studies are recorded through the store as the node records them (an image, its
//! job, a result with SEG and SR and their deliveries, HL7 messages; one image not analysed,
//! with its notice and report), then every table is copied onto itself, ids and foreign keys
//! shifted and unique UIDs suffixed, until it holds the number of studies asked for; the copies
//! are received later, as new studies are. Then, median of 5: one worklist page (the 1000 most
//! recent studies with their states, what `/api/studies` reads), the counts `/metrics` and
//! `status` read, and the claims of a job, a delivery and a message with nothing due (what every
//! worker and sender does between items), on an empty database and on the grown one.
//!
//! Run: `cargo bench --bench growth`. Environment: `GROWTH_BENCH_STUDIES` (comma-separated sizes,
//! default `200000`), `GROWTH_BENCH_POSTGRES` (`0` to leave PostgreSQL out; its admin URL is the
//! tests' `PNEUMOTRIAGE_TEST_PG`), `GROWTH_BENCH_KEEP=1` (keep the PostgreSQL database, to EXPLAIN
//! what it is slow at). It prints figures and asserts nothing about speed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pneumotriage::domain::{Decision, DestinationKind, EventKind, MessageRule, ObjectKind, Policy, Priority};
use pneumotriage::store::{JobEnd, JobScope, NewInstance, NewOutput, NewResult, Store};

mod support;
use support::Mode;

/// Text columns that must stay unique: suffixed in each copy.
const UNIQUE_TEXT: [&str; 4] = ["study_instance_uid", "sop_instance_uid", "path", "control_id"];
/// Foreign keys, by the table they point at.
const FOREIGN: [(&str, &str); 6] = [
    ("study_id", "studies"),
    ("instance_id", "instances"),
    ("job_id", "jobs"),
    ("result_id", "results"),
    ("notice_id", "notices"),
    ("output_id", "outputs"),
];
/// Parents first.
const TABLES: [&str; 8] = ["studies", "instances", "jobs", "results", "notices", "outputs", "deliveries", "messages"];

fn instance(study: &str, uid: &str) -> NewInstance {
    NewInstance {
        header: pneumotriage::domain::InstanceHeader {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
            sop_instance_uid: uid.into(),
            study_instance_uid: study.into(),
            patient_name: Some("Doe^Jane".into()),
            modality: Some("CR".into()),
            ..Default::default()
        },
        version: 1,
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        calling_ae: "MODALITY".into(),
        peer_address: "127.0.0.1:1".into(),
        path: format!("{study}/{uid}.dcm"),
        size_bytes: 7_000_000,
        skip_reason: None,
        event_kind: EventKind::InstanceStored,
    }
}

fn result(priority: Priority) -> NewResult {
    let model = |name: &str| [name.to_string(), "1.0.0".into(), "ab".repeat(32)];
    NewResult {
        policy: Policy::Cascade,
        decision: if priority == Priority::Routine { Decision::Negative } else { Decision::Positive },
        priority,
        probability: if priority == Priority::Routine { 0.02 } else { 0.93 },
        width: 2048,
        height: 2048,
        mask_rle: "-1".into(),
        mask_area_px: 0,
        mask_area_mm2: None,
        classifier: model("classifier"),
        segmenter: model("segmenter"),
        execution_provider: "CPUExecutionProvider",
        timings_ms: [9.0, 20.0, 30.0, 5.0],
    }
}

fn output(kind: ObjectKind, uid: &str) -> NewOutput {
    NewOutput {
        kind,
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.88.34".into(),
        sop_instance_uid: uid.into(),
        path: format!("{uid}.dcm"),
        size_bytes: 10_000,
        destinations: vec!["pacs".into()],
    }
}

/// Ten studies as the node records them: nine analysed (one urgent, two review, six routine),
/// one not analysed; their objects delivered and their messages sent.
async fn record_templates(store: &Store) -> Result<()> {
    let rules = [MessageRule {
        destination: "ris".into(),
        kind: DestinationKind::Hl7,
        priorities: Priority::ALL.to_vec(),
        settle: Duration::ZERO,
        not_analysed: true,
    }];
    for n in 0..10 {
        let (study, uid) =
            (format!("1.2.826.0.1.3680043.10.1447.70.{n}"), format!("1.2.826.0.1.3680043.10.1447.71.{n}"));
        store.record_instance(&instance(&study, &uid)).await?;
        let job = store.claim_job(Duration::from_secs(60), JobScope::AnySpool).await?.context("a job")?;
        let outputs = [output(ObjectKind::Sr, &format!("{uid}.1")), output(ObjectKind::Seg, &format!("{uid}.2"))];
        if n == 9 {
            store
                .record_not_analysed(&job, JobEnd::Skipped, "input check: near-constant image", &outputs[..1], &rules)
                .await?;
            continue;
        }
        let priority = match n {
            0 => Priority::Urgent,
            1 | 2 => Priority::Review,
            _ => Priority::Routine,
        };
        store.record_result(&job, &result(priority), &outputs, &rules).await?;
    }
    // sent, as nearly all of a year's are
    let lease = Duration::from_secs(60);
    while let Some(delivery) = store.claim_delivery("pacs", lease, JobScope::AnySpool).await? {
        store.delivery_done(&delivery, pneumotriage::audit::Peer { ae_title: "PACS", address: "127.0.0.1" }).await?;
    }
    while let Some(message) = store.claim_message("ris", lease).await? {
        store.message_done(&message, "127.0.0.1:2575").await?;
    }
    Ok(())
}

/// The column names of `table`.
async fn columns(store: &Store, table: &str) -> Result<Vec<String>> {
    let sql = match store.backend() {
        pneumotriage::store::Backend::Sqlite => "SELECT name FROM pragma_table_info($1) ORDER BY cid",
        pneumotriage::store::Backend::Postgres => {
            "SELECT CAST(column_name AS TEXT) FROM information_schema.columns WHERE table_name = $1 \
             ORDER BY ordinal_position"
        }
    };
    let rows: Vec<(String,)> = sqlx::query_as(sql).bind(table).fetch_all(store.pool()).await?;
    Ok(rows.into_iter().map(|(c,)| c).collect())
}

/// Copies every table onto itself once: ids and foreign keys shifted by the table's largest id,
/// unique texts suffixed with `round`, reception times moved `later_ms` on.
async fn double(store: &Store, round: usize, later_ms: i64) -> Result<()> {
    let mut offsets = std::collections::HashMap::new();
    for table in TABLES {
        let (max,): (Option<i64>,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT MAX(id) FROM {table}"))).fetch_one(store.pool()).await?;
        offsets.insert(table, max.unwrap_or(0));
    }
    let mut tx = store.pool().begin().await?;
    for table in TABLES {
        let names = columns(store, table).await?;
        let values: Vec<String> = names
            .iter()
            .map(|c| {
                if c == "id" {
                    format!("id + {}", offsets[table])
                } else if let Some((_, parent)) = FOREIGN.iter().find(|(fk, _)| fk == c) {
                    format!("{c} + {}", offsets[parent])
                } else if UNIQUE_TEXT.contains(&c.as_str()) {
                    format!("{c} || '.{round}'")
                } else if c.ends_with("received_at") {
                    format!("{c} + {later_ms}")
                } else {
                    c.clone()
                }
            })
            .collect();
        // PostgreSQL's ids are identity columns: given here, as SQLite's are
        let overriding = match store.backend() {
            pneumotriage::store::Backend::Postgres => "OVERRIDING SYSTEM VALUE",
            pneumotriage::store::Backend::Sqlite => "",
        };
        let sql = format!(
            "INSERT INTO {table} ({}) {overriding} SELECT {} FROM {table}",
            names.join(", "),
            values.join(", ")
        );
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn count_studies(store: &Store) -> Result<i64> {
    Ok(sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM studies").fetch_one(store.pool()).await?.0)
}

/// The median of 5 runs of `f`, in ms.
async fn median_ms<F, Fut, T>(mut f: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = pneumotriage::store::Result<T>>,
{
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        f().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[2])
}

struct Figures {
    /// `/api/studies?limit=50`, the page's own refresh.
    page_ms: f64,
    worklist_ms: f64,
    counts_ms: f64,
    claim_ms: f64,
    /// Claims of a delivery to the PACS and of a message to the RIS, with nothing due.
    delivery_claim_ms: f64,
    message_claim_ms: f64,
}

async fn measure(store: &Store) -> Result<Figures> {
    let page_ms = median_ms(|| store.worklist(None, 50, JobScope::AnySpool)).await?;
    let worklist_ms = median_ms(|| store.worklist(None, 1000, JobScope::AnySpool)).await?;
    let counts_ms = median_ms(|| store.counts()).await?;
    let lease = Duration::from_secs(60);
    let claim_ms = median_ms(|| store.claim_job(lease, JobScope::AnySpool)).await?;
    let delivery_claim_ms = median_ms(|| store.claim_delivery("pacs", lease, JobScope::AnySpool)).await?;
    let message_claim_ms = median_ms(|| store.claim_message("ris", lease)).await?;
    Ok(Figures { page_ms, worklist_ms, counts_ms, claim_ms, delivery_claim_ms, message_claim_ms })
}

async fn run(label: &str, url: &str, sizes: &[usize]) -> Result<()> {
    let store = Store::connect(url, 4, "bench").await?;
    store.migrate().await?;
    let empty = measure(&store).await?;
    record_templates(&store).await?;
    let mut round = 0;
    for &size in sizes {
        let started = Instant::now();
        while (count_studies(&store).await? as usize) < size {
            round += 1;
            double(&store, round, 60_000 * round as i64).await?;
        }
        // what the node's retention round does every minute: the counts the triggers appended
        // while the tables grew are folded into the tallies
        store.fold_tallies().await?;
        if store.backend() == pneumotriage::store::Backend::Postgres {
            // what autovacuum does after such growth: statistics, without which the planner
            // misjudges, and the space of the folded changes reclaimed
            sqlx::query("VACUUM ANALYZE").execute(store.pool()).await?;
        }
        let grown_s = started.elapsed().as_secs_f64();
        let studies = count_studies(&store).await?;
        let grown = measure(&store).await?;
        println!(
            "{label:<10} {studies:>9} studies (grown in {grown_s:.0} s): page of 50 {:.1} ms, of 1000 {:.1} ms, \
             counts {:.1} ms, claims of a job {:.2} ms, a delivery {:.2} ms, a message {:.2} ms \
             (empty database: {:.1} / {:.1} / {:.1} / {:.2} / {:.2} / {:.2} ms)",
            grown.page_ms,
            grown.worklist_ms,
            grown.counts_ms,
            grown.claim_ms,
            grown.delivery_claim_ms,
            grown.message_claim_ms,
            empty.page_ms,
            empty.worklist_ms,
            empty.counts_ms,
            empty.claim_ms,
            empty.delivery_claim_ms,
            empty.message_claim_ms
        );
    }
    store.close().await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mode = Mode::of_this_run("growth");
    if mode == Mode::Skip {
        return Ok(());
    }
    let sizes: Vec<usize> = match std::env::var("GROWTH_BENCH_STUDIES") {
        Ok(list) => {
            list.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>().context("GROWTH_BENCH_STUDIES")?
        }
        Err(_) if mode == Mode::Quick => vec![200],
        Err(_) => vec![200_000],
    };
    let dir = tempfile::tempdir()?;
    run("SQLite", &format!("sqlite://{}/growth.db", dir.path().display()), &sizes).await?;
    if std::env::var("GROWTH_BENCH_POSTGRES").as_deref() != Ok("0") {
        let admin = std::env::var("PNEUMOTRIAGE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
        let name = format!("pt_growth_{}", std::process::id());
        let admin_store = Store::connect(&admin, 1, "bench").await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(admin_store.pool()).await?;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let outcome = run("PostgreSQL", &format!("{base}/{name}"), &sizes).await;
        if std::env::var("GROWTH_BENCH_KEEP").as_deref() == Ok("1") {
            println!("kept for EXPLAIN: {base}/{name}");
        } else {
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
                .execute(admin_store.pool())
                .await?;
        }
        outcome?;
    }
    Ok(())
}
