//! The node's counters and histograms, in one process-wide registry (as Prometheus clients
//! keep theirs): the SCP, the pipeline and the outbox count what they do, `/metrics` reads it.
//! What lives in the database (queue depth, deliveries by state) is read at scrape time
//! instead, so that it is right across restarts and nodes.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::domain::{Decision, Priority, SkipCause};
use crate::inference::checks::InputStatistics;

pub type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    associations: Family<Labels, Counter>,
    instances: Family<Labels, Counter>,
    results: Family<Labels, Counter>,
    skipped: Family<Labels, Counter>,
    deliveries: Family<Labels, Counter>,
    stage_seconds: Family<Labels, Histogram>,
    inference_seconds: Histogram,
    model_results: Family<Labels, Counter>,
    model_probability: Family<Labels, Histogram>,
    input_mean: Family<Labels, Histogram>,
    input_deviation: Family<Labels, Histogram>,
    object_store_seconds: Family<Labels, Histogram>,
    ingest_step_seconds: Family<Labels, Histogram>,
    http_refused: Family<Labels, Counter>,
    selection: Family<Labels, Counter>,
    not_analysed: Family<Labels, Counter>,
    pruned_files: Family<Labels, Counter>,
    pruned_bytes: Family<Labels, Counter>,
    swept_files: Family<Labels, Counter>,
    kept_files: Family<Labels, Gauge>,
    kept_bytes: Family<Labels, Gauge>,
    oldest_kept_seconds: Family<Labels, Gauge>,
    disk_free_bytes: Gauge,
    disk_pressure: Gauge,
    cache_bytes: Gauge,
    audit_sent: Family<Labels, Counter>,
    audit_failures: Family<Labels, Counter>,
    audit_dropped: Family<Labels, Counter>,
}

/// How many results of each classifier version make its drift baseline
/// (`pneumotriage_model_baseline_results`).
pub const BASELINE_RESULTS: i64 = 200;

/// Twenty buckets over 0 to 1: probabilities, and the displayed image's mean and spread.
fn unit_histogram() -> Histogram {
    Histogram::new(linear_buckets(0.05, 0.05, 20))
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("pneumotriage");
    let associations = Family::<Labels, Counter>::default();
    registry.register("associations", "DICOM associations requested of the SCP, by outcome", associations.clone());
    let instances = Family::<Labels, Counter>::default();
    registry.register("instances", "C-STORE requests answered, by outcome", instances.clone());
    let results = Family::<Labels, Counter>::default();
    registry.register("results", "Images analysed, by decision and priority", results.clone());
    let deliveries = Family::<Labels, Counter>::default();
    registry.register("delivery_attempts", "Attempts to deliver an object, by outcome", deliveries.clone());
    let skipped = Family::<Labels, Counter>::default();
    registry.register(
        "skipped",
        "Images not analysed, by the rule that turned them away: applicability or an input check",
        skipped.clone(),
    );
    let stage_seconds = Family::<Labels, Histogram>::new_with_constructor(seconds_histogram);
    registry.register(
        "stage_seconds",
        "Time per stage: receive (a C-STORE), decode, preprocess, inference, postprocess, deliver",
        stage_seconds.clone(),
    );
    let inference_seconds = seconds_histogram();
    registry.register("model_inference_seconds", "ONNX Runtime time per image, all models", inference_seconds.clone());
    // drift: per classifier version ("name version"), what the models see and say
    let model_results = Family::<Labels, Counter>::default();
    registry.register("model_results", "Images analysed, by classifier version and decision", model_results.clone());
    let model_probability = Family::<Labels, Histogram>::new_with_constructor(unit_histogram);
    registry.register(
        "model_probability",
        "The classifier's probability, by classifier version",
        model_probability.clone(),
    );
    let input_mean = Family::<Labels, Histogram>::new_with_constructor(unit_histogram);
    registry.register("input_mean", "Mean of the displayed image (0 to 1), by classifier version", input_mean.clone());
    let input_deviation = Family::<Labels, Histogram>::new_with_constructor(unit_histogram);
    registry.register(
        "input_deviation",
        "Standard deviation of the displayed image (0 to 1), by classifier version",
        input_deviation.clone(),
    );
    let object_store_seconds = Family::<Labels, Histogram>::new_with_constructor(seconds_histogram);
    registry.register(
        "object_store_seconds",
        "Time per object-store operation (upload, fetch), by operation and outcome",
        object_store_seconds.clone(),
    );
    let ingest_step_seconds = Family::<Labels, Histogram>::new_with_constructor(seconds_histogram);
    registry.register(
        "ingest_step_seconds",
        "Time per step of making a received instance durable: durable (version lookup, fsync, header check, rename) and record (the database commit)",
        ingest_step_seconds.clone(),
    );
    let http_refused = Family::<Labels, Counter>::default();
    registry.register(
        "http_connections_refused",
        "HTTP connections closed unserved because a connection limit was reached, by limit",
        http_refused.clone(),
    );
    let selection = Family::<Labels, Counter>::default();
    registry.register(
        "selection",
        "Images the selection rules decided, by the rule that decided (none: no rule matched) and whether it selected",
        selection.clone(),
    );
    let not_analysed = Family::<Labels, Counter>::default();
    registry.register(
        "not_analysed_reports",
        "Images the selection rules chose and the node reported \"not analysed\", by how their job ended (skipped by an input check, failed, quarantined)",
        not_analysed.clone(),
    );
    let pruned_files = Family::<Labels, Counter>::default();
    registry.register(
        "pruned_files",
        "Files retention deleted, by area (spool, outputs) and why (age, disk_pressure)",
        pruned_files.clone(),
    );
    let pruned_bytes = Family::<Labels, Counter>::default();
    registry.register("pruned_bytes", "Bytes of the files retention deleted, by area and why", pruned_bytes.clone());
    let swept_files = Family::<Labels, Counter>::default();
    registry.register(
        "swept_files",
        "Leftover files the sweeps removed or registered, by kind (released, orphan_registered, orphan_removed, temporary, fetch)",
        swept_files.clone(),
    );
    let kept_files = Family::<Labels, Gauge>::default();
    registry.register(
        "kept_files",
        "Files kept, by area (spool, outputs), at the last pruning round",
        kept_files.clone(),
    );
    let kept_bytes = Family::<Labels, Gauge>::default();
    registry.register("kept_bytes", "Bytes kept, by area, at the last pruning round", kept_bytes.clone());
    let oldest_kept_seconds = Family::<Labels, Gauge>::default();
    registry.register(
        "oldest_kept_seconds",
        "Age of the oldest file kept, by area, at the last pruning round",
        oldest_kept_seconds.clone(),
    );
    let disk_free_bytes = Gauge::default();
    registry.register("disk_free_bytes", "Free space of the spool's file system", disk_free_bytes.clone());
    let cache_bytes = Gauge::default();
    registry.register(
        "cache_bytes",
        "Bytes of the local copies of object-store items under data_dir, at the last pruning round (0 without an object store)",
        cache_bytes.clone(),
    );
    let disk_pressure = Gauge::default();
    registry.register(
        "disk_pressure",
        "1 while free space is below retention.free_target_mb (oldest finished items are deleted early), 2 while nothing finished is left to delete",
        disk_pressure.clone(),
    );
    let audit_sent = Family::<Labels, Counter>::default();
    registry.register(
        "audit_records_sent",
        "Audit records sent to each repository (over TLS, a record sent again after a broken connection counts again)",
        audit_sent.clone(),
    );
    let audit_failures = Family::<Labels, Counter>::default();
    registry.register(
        "audit_send_failures",
        "Attempts to reach an audit repository that failed, by repository",
        audit_failures.clone(),
    );
    let audit_dropped = Family::<Labels, Counter>::default();
    registry.register(
        "audit_dropped",
        "Audit records dropped unsent because more than audit.max_backlog waited, by repository",
        audit_dropped.clone(),
    );
    Metrics {
        audit_sent,
        audit_failures,
        audit_dropped,
        pruned_files,
        pruned_bytes,
        swept_files,
        kept_files,
        kept_bytes,
        oldest_kept_seconds,
        disk_free_bytes,
        disk_pressure,
        cache_bytes,
        not_analysed,
        selection,
        http_refused,
        registry,
        associations,
        instances,
        results,
        skipped,
        deliveries,
        stage_seconds,
        inference_seconds,
        model_results,
        model_probability,
        input_mean,
        input_deviation,
        object_store_seconds,
        ingest_step_seconds,
    }
});

/// An association accepted or rejected.
pub fn association(accepted: bool) {
    let outcome = if accepted { "accepted" } else { "rejected" };
    METRICS.associations.get_or_create(&vec![("outcome", outcome.into())]).inc();
}

/// A C-STORE answered: `stored`, `duplicate`, `refused` (0xA9xx, 0x01xx, 0x02xx),
/// `out_of_resources` (0xA7xx) or `failed` (0xCxxx); and how long it took.
pub fn instance(outcome: &'static str, took: Duration) {
    METRICS.instances.get_or_create(&vec![("outcome", outcome.into())]).inc();
    stage("receive", took);
}

/// An image the selection rules decided: the rule (`None`: none matched), and whether it selected.
pub fn selection(rule: Option<&str>, selected: bool) {
    let labels = vec![
        ("rule", rule.unwrap_or("none").to_string()),
        ("action", if selected { "select" } else { "exclude" }.to_string()),
    ];
    METRICS.selection.get_or_create(&labels).inc();
}

/// An HTTP connection closed unserved, and the limit it met.
pub fn http_connection_refused(limit: crate::http::listener::Refused) {
    METRICS.http_refused.get_or_create(&vec![("limit", limit.as_str().into())]).inc();
}

/// An image reported "not analysed", and how its job ended.
pub fn not_analysed(ending: &'static str) {
    METRICS.not_analysed.get_or_create(&vec![("ending", ending.into())]).inc();
}

/// Files retention deleted from `area` (`spool`, `outputs`), and why (`age`, `disk_pressure`).
pub fn pruned(area: &'static str, why: &'static str, files: u64, bytes: u64) {
    let labels = vec![("area", area.into()), ("why", why.into())];
    METRICS.pruned_files.get_or_create(&labels).inc_by(files);
    METRICS.pruned_bytes.get_or_create(&labels).inc_by(bytes);
}

/// Leftover files a sweep dealt with, by kind.
pub fn swept(kind: &'static str, files: u64) {
    METRICS.swept_files.get_or_create(&vec![("kind", kind.into())]).inc_by(files);
}

/// What `area` keeps: files, bytes, and the age of its oldest file.
pub fn kept(area: &'static str, files: i64, bytes: i64, oldest: Duration) {
    let labels = vec![("area", area.into())];
    METRICS.kept_files.get_or_create(&labels).set(files);
    METRICS.kept_bytes.get_or_create(&labels).set(bytes);
    METRICS.oldest_kept_seconds.get_or_create(&labels).set(oldest.as_secs() as i64);
}

/// The spool's free space, and where it stands against the target (0 fine, 1 under pressure,
/// 2 under pressure with nothing finished left to delete).
pub fn disk(free_bytes: u64, pressure: i64) {
    METRICS.disk_free_bytes.set(free_bytes.min(i64::MAX as u64) as i64);
    METRICS.disk_pressure.set(pressure);
}

/// What the local copies of the object store's items take, after a round's eviction.
pub fn cache(bytes: u64) {
    METRICS.cache_bytes.set(bytes.min(i64::MAX as u64) as i64);
}

/// A repository's audit counters, at 0 until something happens (so that alerts see them).
pub fn audit_repository(repository: &str) {
    let labels = vec![("repository", repository.to_string())];
    METRICS.audit_sent.get_or_create(&labels).inc_by(0);
    METRICS.audit_failures.get_or_create(&labels).inc_by(0);
    METRICS.audit_dropped.get_or_create(&labels).inc_by(0);
}

/// Audit records sent to `repository`.
pub fn audit_sent(repository: &str, records: u64) {
    METRICS.audit_sent.get_or_create(&vec![("repository", repository.to_string())]).inc_by(records);
}

/// A failed attempt to reach `repository`.
pub fn audit_send_failed(repository: &str) {
    METRICS.audit_failures.get_or_create(&vec![("repository", repository.to_string())]).inc();
}

/// Audit records dropped above the backlog limit.
pub fn audit_dropped(repository: &str, records: u64) {
    METRICS.audit_dropped.get_or_create(&vec![("repository", repository.to_string())]).inc_by(records);
}

/// An image the pipeline did not analyse, and the rule why.
pub fn skipped(cause: SkipCause) {
    METRICS.skipped.get_or_create(&vec![("cause", cause.as_str().into())]).inc();
}

/// An image analysed, with its stages' times in milliseconds.
pub fn result(decision: Decision, priority: Priority, stages_ms: [(&'static str, f64); 4]) {
    let labels = vec![("decision", decision.as_str().into()), ("priority", priority.as_str().into())];
    METRICS.results.get_or_create(&labels).inc();
    for (name, ms) in stages_ms {
        stage(name, Duration::from_secs_f64(ms.max(0.0) / 1000.0));
        if name == "inference" {
            METRICS.inference_seconds.observe(ms.max(0.0) / 1000.0);
        }
    }
}

/// What a classifier version said of an image, and what the image looked like: the drift
/// metrics (`model` is "name version").
pub fn drift(model: &str, decision: Decision, probability: f32, input: InputStatistics) {
    let labels = vec![("model", model.to_string()), ("decision", decision.as_str().into())];
    METRICS.model_results.get_or_create(&labels).inc();
    let model = vec![("model", model.to_string())];
    METRICS.model_probability.get_or_create(&model).observe(f64::from(probability));
    METRICS.input_mean.get_or_create(&model).observe(f64::from(input.mean));
    METRICS.input_deviation.get_or_create(&model).observe(f64::from(input.deviation));
}

/// A delivery attempt: `delivered`, `retry` or `failed`.
pub fn delivery(outcome: &'static str, took: Duration) {
    METRICS.deliveries.get_or_create(&vec![("outcome", outcome.into())]).inc();
    stage("deliver", took);
}

/// An operation on the object store (`upload`, `fetch`): `ok`, `missing` (not in the bucket),
/// `conflict` (other bytes under an instance's key) or `error`; and how long it took.
pub fn object_store(operation: &'static str, outcome: &'static str, took: Duration) {
    let labels = vec![("operation", operation.into()), ("outcome", outcome.into())];
    METRICS.object_store_seconds.get_or_create(&labels).observe(took.as_secs_f64());
}

fn stage(name: &'static str, took: Duration) {
    METRICS.stage_seconds.get_or_create(&vec![("stage", name.into())]).observe(took.as_secs_f64());
}

/// A step of making a received instance durable (`durable`, `record`), and how long it took:
/// with the `receive` stage (the whole C-STORE), where an instance's time went.
pub fn ingest_step(step: &'static str, took: Duration) {
    METRICS.ingest_step_seconds.get_or_create(&vec![("step", step.into())]).observe(took.as_secs_f64());
}

/// A gauge family read at scrape time: `(name, help, [(labels, value)])`, e.g. the jobs by
/// state.
pub type ReadGauge<'a> = (&'a str, &'a str, Vec<(Labels, i64)>);

/// Rows of `(value, count)` as a gauge's `label="value"` rows.
pub fn labelled<T: std::fmt::Display>(label: &'static str, rows: &[(T, i64)]) -> Vec<(Labels, i64)> {
    rows.iter().map(|(value, n)| (vec![(label, value.to_string())], *n)).collect()
}

/// The registry in Prometheus' text format, followed by gauges read now.
pub fn render(gauges: &[ReadGauge<'_>]) -> String {
    let mut out = String::new();
    let mut now = Registry::with_prefix("pneumotriage");
    for (name, help, rows) in gauges {
        let family = Family::<Labels, Gauge>::default();
        for (labels, value) in rows {
            family.get_or_create(labels).set(*value);
        }
        now.register(*name, *help, family);
    }
    // encoding into a String cannot fail; each registry ends with "# EOF"
    let _ = encode(&mut out, &METRICS.registry);
    let mut more = String::new();
    let _ = encode(&mut more, &now);
    out.truncate(out.trim_end().strip_suffix("# EOF").map_or(out.len(), str::len));
    out.push_str(&more);
    out
}
