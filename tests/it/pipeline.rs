//! Analysis on arrival: storescu sends synthetic radiographs with known masks (and images that
//! must not be analysed) to a running node, whose workers write `results` rows; on SQLite and
//! on PostgreSQL.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{pydicom_data, python, storescu, synthetic_images, synthetic_truth, text, tool, Backend, Setup};
use pneumotriage::evaluate::dice;
use pneumotriage::inference::rle::paint_rle;

/// (SOP Instance UID, job state, job reason, decision, priority, mask RLE, width, height).
type Row = (String, String, Option<String>, Option<String>, Option<String>, Option<String>, Option<i64>, Option<i64>);

fn rows(setup: &Setup) -> Vec<Row> {
    setup.with_store(async |store| {
        sqlx::query_as(
            "SELECT i.sop_instance_uid, j.state, j.reason, r.decision, r.priority, r.mask_rle, r.width, r.height \
             FROM instances i JOIN jobs j ON j.instance_id = i.id LEFT JOIN results r ON r.instance_id = i.id \
             ORDER BY i.id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    })
}

/// Waits until no job is queued or running.
fn wait_analysed(setup: &Setup, expected_jobs: i64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let open = setup.count("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')");
        let all = setup.count("SELECT COUNT(*) FROM jobs");
        if open == 0 && all == expected_jobs {
            return;
        }
        assert!(Instant::now() < deadline, "{open} of {all} jobs still open: {:?}", rows(setup));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn make_bad_images(source: &Path, out: &Path) {
    let made =
        std::process::Command::new(python()).arg(tool("make_bad_images.py")).arg(source).arg(out).output().unwrap();
    assert!(made.status.success(), "{}", text(&made));
}

fn analyses_what_arrives(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    let files = synthetic_images(&images, 8, 77);
    let truth = synthetic_truth(&images);
    let bad = work.path().join("bad");
    make_bad_images(&files[0], &bad);

    let setup = Setup::analysing(backend, "");
    let node = setup.start();
    // The bad ones first: each must fail or be skipped alone, and the rest be analysed after them.
    let tibia = pydicom_data("RG3_UNCR.dcm");
    let mut order = vec![bad.join("short_pixels.dcm"), bad.join("color.dcm"), tibia.clone()];
    order.extend(files.iter().cloned());
    let sent: Vec<&Path> = order.iter().map(|p| p.as_path()).collect();
    let out = storescu(setup.port, &[], &sent);
    assert!(out.status.success(), "{}", text(&out));
    wait_analysed(&setup, sent.len() as i64);

    let rows = rows(&setup);
    let by_uid = |path: &Path| {
        let uid = common::sop_instance_uid(path);
        rows.iter().find(|r| r.0 == uid).unwrap_or_else(|| panic!("no row for {}", path.display())).clone()
    };
    let short = by_uid(&bad.join("short_pixels.dcm"));
    assert_eq!(short.1, "failed", "{short:?}");
    // found before any decoder runs
    assert!(short.2.as_deref().unwrap().starts_with("pixel data inconsistent with the data set"), "{short:?}");
    let color = by_uid(&bad.join("color.dcm"));
    assert_eq!(color.1, "skipped", "{color:?}");
    assert!(color.2.as_deref().unwrap().contains("not a grayscale image"), "{color:?}");
    let tibia_row = by_uid(&tibia);
    assert_eq!(tibia_row.1, "skipped");
    assert!(tibia_row.2.as_deref().unwrap().contains("Body Part Examined"), "{tibia_row:?}");
    // counted by the rule that turned them away
    let (status, _, metrics) = common::http_request(setup.http_port, "GET", "/metrics", &[], "").unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.contains("pneumotriage_skipped_total{cause=\"applicability\"} 1"), "{metrics}");
    assert!(metrics.contains("pneumotriage_skipped_total{cause=\"selection\"} 1"), "{metrics}");

    let (mut positives, mut negatives) = (0, 0);
    for file in &files {
        let row = by_uid(file);
        assert_eq!(row.1, "done", "{row:?}");
        let id = file.file_stem().unwrap().to_string_lossy().into_owned();
        let (w, h) = (row.6.unwrap() as usize, row.7.unwrap() as usize);
        let mut expected = vec![false; w * h];
        for rle in &truth[&id] {
            paint_rle(&mut expected, rle, w, h).unwrap();
        }
        let mut found = vec![false; w * h];
        paint_rle(&mut found, row.5.as_deref().unwrap(), w, h).unwrap();
        if expected.iter().any(|&b| b) {
            positives += 1;
            assert_eq!(row.3.as_deref(), Some("positive"), "{id}");
            assert_ne!(row.4.as_deref(), Some("routine"), "{id}: a positive is never routine");
            let d = dice(&found, &expected);
            assert!(d >= 0.7, "{id}: mask Dice {d:.3} is below 0.7");
        } else {
            negatives += 1;
            assert_eq!(row.3.as_deref(), Some("negative"), "{id}");
            assert_eq!(row.4.as_deref(), Some("routine"), "{id}");
        }
    }
    assert!(positives > 0 && negatives > 0, "the set has both: {positives} positive, {negatives} negative");
    // A study takes its images' highest priority; every synthetic image is its own study.
    assert_eq!(
        setup.count("SELECT COUNT(*) FROM studies WHERE priority IN ('urgent', 'review')"),
        positives,
        "one flagged study per positive"
    );
    assert_eq!(setup.count("SELECT COUNT(*) FROM events WHERE kind = 'analysis_failed'"), 1);
    // Each positive's SEG is written under <data_dir>/outputs and recorded with its result.
    let outputs: Vec<(String, String, String)> = setup.with_store(async |store| {
        sqlx::query_as(
            "SELECT o.sop_class_uid, o.path, i.sop_instance_uid FROM outputs o \
             JOIN results r ON r.id = o.result_id JOIN instances i ON i.id = r.instance_id WHERE o.kind = 'seg'",
        )
        .fetch_all(store.pool())
        .await
        .unwrap()
    });
    assert_eq!(outputs.len() as i64, positives, "{outputs:?}");
    for (class, path, source) in &outputs {
        assert_eq!(class, "1.2.840.10008.5.1.4.1.1.66.4");
        let file = setup.dir.path().join("var/outputs").join(path);
        let seg = dicom_object::open_file(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let referenced = seg.element(dicom_dictionary_std::tags::REFERENCED_SERIES_SEQUENCE).unwrap().items().unwrap()
            [0]
        .element(dicom_dictionary_std::tags::REFERENCED_INSTANCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0]
            .element(dicom_dictionary_std::tags::REFERENCED_SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string();
        assert_eq!(&referenced, source);
        let check = std::process::Command::new("dciodvfy").arg("-new").arg(&file).output().unwrap();
        assert!(check.status.success() && !text(&check).contains("Error"), "{}", text(&check));
    }
    assert_eq!(
        setup.count(
            "SELECT COUNT(*) FROM results WHERE classifier_sha256 = '' OR execution_provider <> 'CPUExecutionProvider'"
        ),
        0,
        "results name their models and where they ran"
    );
    let log = node.log();
    assert!(log.contains("models loaded") && log.contains("CPUExecutionProvider"), "{log}");
    assert!(log.contains("analysis failed"), "{log}");
}

/// A spool file damaged while the node was down (cut in the middle of its pixel data), among
/// others waiting: they are analysed in one batch when the node comes back, and the damaged one
/// leaves the batch before the models and fails alone, with the reason.
fn truncated_spool_file_fails_alone(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let files = synthetic_images(&work.path().join("images"), 6, 5);
    let mut setup = Setup::new(backend); // analysis off: the jobs wait
    let node = setup.start();
    let sent: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    assert!(storescu(setup.port, &[], &sent).status.success());
    drop(node);
    let damaged = &setup.instances()[2];
    let spooled = setup.spool_dir().join(&damaged.2);
    let size = std::fs::metadata(&spooled).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&spooled).unwrap().set_len(size / 2).unwrap();

    setup.inference =
        format!("models = \"{}/models/manifest.toml\"\nbatch_size = 8\nworkers = 1\n", env!("CARGO_MANIFEST_DIR"));
    setup.write_config("", "", common::DEFAULT_PEERS);
    let node = setup.start();
    wait_analysed(&setup, 6);
    let rows = rows(&setup);
    for (i, row) in rows.iter().enumerate() {
        if i == 2 {
            assert_eq!(row.1, "failed", "{row:?}");
            assert!(row.2.is_some(), "a reason is recorded");
        } else {
            assert_eq!(row.1, "done", "{row:?}");
        }
    }
    let log = node.log();
    assert_eq!(log.matches("batch=5").count(), 5, "the five good images were analysed together: {log}");
}

on_both_backends!(analyses_what_arrives, truncated_spool_file_fails_alone);

/// `device = "cuda"` on a machine (or an ONNX Runtime build) without CUDA: with `require_gpu`
/// the node refuses to start and says why; without it, it runs on the CPU and says so.
#[test]
fn cuda_falls_back_to_the_cpu_unless_a_gpu_is_required() {
    if std::path::Path::new("/dev/nvidia0").exists() {
        eprintln!("a GPU is present: the fallback cannot be shown here");
        return;
    }
    let setup = Setup::analysing(Backend::Sqlite, "device = \"cuda\"\nrequire_gpu = true");
    let out = setup.cli(&["serve"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let message = text(&out);
    assert!(message.contains("require_gpu") && message.contains("onnxruntime-gpu"), "{message}");

    let setup = Setup::analysing(Backend::Sqlite, "device = \"cuda:0\"");
    let node = setup.start();
    let log = node.log();
    assert!(log.contains("CUDA device 0 cannot be used; running on the CPU"), "{log}");
    assert!(
        log.contains("execution_provider=\"CPUExecutionProvider\"") || log.contains("CPUExecutionProvider"),
        "{log}"
    );
}
