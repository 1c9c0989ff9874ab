//! Operations: the HTTP side on a node that has analysed synthetic positives and negatives
//! (health, readiness, the worklist API's order, aging and filters, the token, metrics that
//! count what happened, the overlay), the worklist page in headless Chromium, `status`, and a
//! SIGTERM during a transfer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common;
use crate::common::{http_request, storescu, synthetic_images, text, tool, Backend, Setup};

const TOKEN: &str = "0123456789abcdef-test-token";

/// `GET path` on the node's HTTP port: status, head, body.
fn get(setup: &Setup, path: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    http_request(setup.http_port, "GET", path, &headers, "").unwrap()
}

fn get_json(setup: &Setup, path: &str) -> serde_json::Value {
    let (status, _, body) = get(setup, path, Some(TOKEN));
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn rank(priority: &str) -> u8 {
    ["urgent", "review", "routine"].iter().position(|p| *p == priority).unwrap() as u8
}

/// A node with a token that has analysed six synthetic radiographs (one study each), and, given
/// a PACS port, delivers its results there.
fn analysed_node(backend: Backend, dir: &Path, pacs: Option<u16>) -> (Setup, common::Node, Vec<PathBuf>) {
    let files = synthetic_images(&dir.join("images"), 6, 77);
    let mut setup = Setup::analysing(backend, "");
    setup.http = format!("token = \"{TOKEN}\"");
    if let Some(port) = pacs {
        setup.tail = format!(
            "[[destinations]]\nname = \"pacs\"\nae_title = \"{}\"\nhost = \"127.0.0.1\"\nport = {port}\n",
            common::orthanc::AET
        );
    }
    setup.write_config("", "", common::DEFAULT_PEERS);
    let node = setup.start();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    assert!(storescu(setup.port, &[], &refs).status.success());
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'", files.len() as i64);
    (setup, node, files)
}

fn the_http_api_orders_ages_filters_and_counts(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let pacs = common::orthanc::start();
    let (setup, _node, files) = analysed_node(backend, work.path(), Some(pacs.dicom_port));
    setup.wait_count("SELECT COUNT(*) FROM deliveries WHERE state <> 'delivered'", 0);
    let delivered = setup.count("SELECT COUNT(*) FROM deliveries");

    // health is open; everything else needs the token
    let (status, _, body) = get(&setup, "/healthz", None);
    assert_eq!((status, String::from_utf8_lossy(&body).contains("alive")), (200, true));
    let ready = {
        let (status, _, body) = get(&setup, "/readyz", None);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    assert_eq!(ready["ready"], true, "{ready}");
    for path in ["/api/studies", "/metrics", "/api/status"] {
        let (status, head, body) = get(&setup, path, None);
        assert_eq!(status, 401, "{path}");
        assert!(head.to_lowercase().contains("www-authenticate: bearer"), "{head}");
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(error["error"].as_str().unwrap().contains("token"), "{error}");
        assert_eq!(get(&setup, path, Some("wrong-token-wrong-token")).0, 401, "{path} with a wrong token");
    }

    // reading order: effective priority, then the longest wait
    let listed = get_json(&setup, "/api/studies");
    let studies = listed["studies"].as_array().unwrap();
    assert_eq!(studies.len(), files.len(), "{listed}");
    let key = |s: &serde_json::Value| {
        (rank(s["effective_priority"].as_str().unwrap()), s["first_received_at"].as_i64().unwrap())
    };
    assert!(studies.windows(2).all(|w| key(&w[0]) <= key(&w[1])), "not in reading order: {listed}");
    let priorities: Vec<&str> = studies.iter().map(|s| s["priority"].as_str().unwrap()).collect();
    assert!(priorities.contains(&"routine") && priorities.iter().any(|p| *p != "routine"), "{priorities:?}");
    assert!(studies.iter().all(|s| s["state"] == "analysed" && s["delivery"] == "delivered"), "{listed}");

    // aging: a routine study that waited three hours is listed with the review ones, first of them
    let routine = studies.iter().rev().find(|s| s["priority"] == "routine").unwrap();
    let uid = routine["study_instance_uid"].as_str().unwrap().to_string();
    let backdate = format!(
        "UPDATE studies SET first_received_at = first_received_at - 10800000 WHERE study_instance_uid = '{uid}'"
    );
    setup.with_store(async |store| {
        sqlx::query(sqlx::AssertSqlSafe(backdate)).execute(store.pool()).await.unwrap();
    });
    let aged = get_json(&setup, "/api/studies");
    let aged = aged["studies"].as_array().unwrap();
    let position = aged.iter().position(|s| s["study_instance_uid"] == uid.as_str()).unwrap();
    let moved = &aged[position];
    assert_eq!((moved["effective_priority"].as_str(), moved["aged"].as_bool()), (Some("review"), Some(true)));
    assert!(moved["waiting_secs"].as_i64().unwrap() >= 10800, "{moved}");
    assert!(aged[..position].iter().all(|s| s["effective_priority"] == "urgent"), "first of the review studies");

    // filters
    let routine_only = get_json(&setup, "/api/studies?priority=routine");
    let routine_only = routine_only["studies"].as_array().unwrap();
    assert!(!routine_only.is_empty() && routine_only.iter().all(|s| s["effective_priority"] == "routine"));
    assert_eq!(routine_only.len(), priorities.iter().filter(|p| **p == "routine").count() - 1, "the aged one left");
    let none = get_json(&setup, "/api/studies?state=waiting");
    assert_eq!(none["studies"].as_array().unwrap().len(), 0);
    let (status, _, body) = get(&setup, "/api/studies?priority=soon", Some(TOKEN));
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("`soon` is not one of"), "{}", String::from_utf8_lossy(&body));

    // one study, and its overlay
    let first = studies[0]["study_instance_uid"].as_str().unwrap();
    let detail = get_json(&setup, &format!("/api/studies/{first}"));
    let instance = &detail["instances"][0];
    assert_eq!(instance["priority"], studies[0]["priority"], "{detail}");
    let objects = instance["objects"].as_array().unwrap();
    assert!(objects.iter().any(|o| o["kind"] == "seg" && o["state"] == "delivered"), "an urgent study's SEG: {detail}");
    let overlay = instance["overlay_url"].as_str().unwrap();
    let (status, head, png) = get(&setup, overlay, Some(TOKEN));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&png));
    assert!(head.contains("image/png") && png.starts_with(b"\x89PNG"), "{head}");
    assert_eq!(get(&setup, "/api/studies/1.2.3.4", Some(TOKEN)).0, 404);

    // metrics count what happened
    let (status, head, metrics) = get(&setup, "/metrics", Some(TOKEN));
    let metrics = String::from_utf8(metrics).unwrap();
    assert_eq!(status, 200, "{metrics}");
    assert!(head.contains("text/plain"), "{head}");
    let n = files.len();
    for line in [
        "pneumotriage_associations_total{outcome=\"accepted\"} 1".to_string(),
        format!("pneumotriage_instances_total{{outcome=\"stored\"}} {n}"),
        // where each stored instance's time went: its file made durable, its rows committed
        format!("pneumotriage_ingest_step_seconds_count{{step=\"durable\"}} {n}"),
        format!("pneumotriage_ingest_step_seconds_count{{step=\"record\"}} {n}"),
        format!("pneumotriage_jobs{{state=\"done\"}} {n}"),
        format!("pneumotriage_stage_seconds_count{{stage=\"inference\"}} {n}"),
        format!("pneumotriage_model_inference_seconds_count {n}"),
        format!("pneumotriage_deliveries{{state=\"delivered\"}} {delivered}"),
        format!("pneumotriage_delivery_attempts_total{{outcome=\"delivered\"}} {delivered}"),
        format!("pneumotriage_stage_seconds_count{{stage=\"deliver\"}} {delivered}"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in:\n{metrics}");
    }
    let results: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("pneumotriage_results_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(results, n as u64, "{metrics}");
    // the drift metrics: per classifier version, what it said and what it saw
    let sum_of = |prefix: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains("model=\"pneumotriage-demo-classifier "))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    for family in [
        "pneumotriage_model_results_total{",
        "pneumotriage_model_probability_count{",
        "pneumotriage_input_mean_count{",
        "pneumotriage_input_deviation_count{",
        "pneumotriage_model_baseline_results{",
    ] {
        assert_eq!(sum_of(family), n as u64, "{family} in:\n{metrics}");
    }
    std::fs::write(work.path().join("metrics.txt"), &metrics).unwrap();
    if let Ok(dir) = std::env::var("PNEUMOTRIAGE_TEST_ARTIFACTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(Path::new(&dir).join(format!("metrics-{backend:?}.txt")), &metrics).unwrap();
    }

    // `status` says the same as the database
    let out = setup.cli(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["jobs"]["done"], n as i64, "{status}");
    assert_eq!(status["deliveries"]["delivered"], delivered, "{status}");
    let analysed: i64 = status["results"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(analysed, n as i64, "{status}");
    let out = setup.cli(&["status"]);
    assert!(text(&out).contains(&format!("{n} done")), "{}", text(&out));
}

/// The page in headless Chromium: it loads, lists the studies in the API's order with their
/// badges, and a screenshot is written (`PNEUMOTRIAGE_TEST_ARTIFACTS`, or the test's directory).
#[test]
fn the_worklist_page_lists_studies_in_priority_order() {
    let work = tempfile::tempdir().unwrap();
    let (mut setup, node, _) = analysed_node(Backend::Sqlite, work.path(), None);
    // the page itself holds no data; without a token it asks for one, so this node has none
    drop(node);
    setup.http = String::new();
    setup.write_config("", "", common::DEFAULT_PEERS);
    let _node = setup.start();
    // waits of a working morning: every study a different one, a routine one past the aging rule
    let studies = get_json(&setup, "/api/studies")["studies"].as_array().unwrap().clone();
    let routine = studies.iter().rev().find(|s| s["priority"] == "routine").unwrap()["study_instance_uid"].clone();
    for (i, study) in studies.iter().enumerate() {
        let minutes = if study["study_instance_uid"] == routine { 150 } else { 7 + 11 * i as i64 };
        let sql = format!(
            "UPDATE studies SET first_received_at = first_received_at - {} WHERE study_instance_uid = '{}'",
            minutes * 60_000,
            study["study_instance_uid"].as_str().unwrap()
        );
        setup.with_store(async |store| {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(store.pool()).await.unwrap();
        });
    }
    let order: Vec<String> = get_json(&setup, "/api/studies")["studies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["study_instance_uid"].as_str().unwrap().to_string())
        .collect();

    let page = format!("http://127.0.0.1:{}/", setup.http_port);
    let chromium = |args: &[&str], url: &str| common::chromium(work.path(), args, url);
    let dom = String::from_utf8(chromium(&["--dump-dom"], &page).stdout).unwrap();
    let body = dom.split("<tbody id=\"rows\">").nth(1).and_then(|b| b.split("</tbody>").next()).unwrap_or("");
    let rows: Vec<&str> = body.split("data-uid=\"").skip(1).map(|rest| &rest[..rest.find('"').unwrap()]).collect();
    assert_eq!(rows, order, "the page lists the studies in the API's order:\n{dom}");
    assert!(dom.contains("class=\"badge urgent\"") || dom.contains("class=\"badge review\""), "{dom}");
    assert!(body.contains(">aged<"), "the routine study past the aging rule is marked: {body}");

    let dir = std::env::var("PNEUMOTRIAGE_TEST_ARTIFACTS").map(PathBuf::from).unwrap_or(work.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("worklist.png");
    let _ = std::fs::remove_file(&shot);
    // with the first study opened, as a link to it does
    let linked = format!("{page}#study={}", order[0]);
    chromium(&["--window-size=1600,760", &format!("--screenshot={}", shot.display())], &linked);
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
}

/// SIGTERM while storescu is sending: the association in progress is finished, every image
/// storescu was told is stored is recorded, new associations are not taken, and the node exits 0.
fn sigterm_lets_the_transfer_in_progress_finish(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let series = work.path().join("series");
    let made = Command::new(common::python())
        .arg(tool("make_series.py"))
        .arg(&series)
        .args(["60", "--size", "1200"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&series).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let setup = Setup::new(backend);
    // systemd's side of Type=notify: a datagram socket named by NOTIFY_SOCKET
    let notify_path = work.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut node = setup.start_with_env(&[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    let mut message = [0u8; 256];
    let n = notify.recv(&mut message).expect("the node notifies systemd");
    assert!(String::from_utf8_lossy(&message[..n]).contains("READY=1"), "{:?}", &message[..n]);
    let mut sender = Command::new("/usr/bin/storescu");
    sender.args(["-aet", "STORESCU", "-aec", "PNEUMOTRIAGE", "127.0.0.1"]).arg(setup.port.to_string()).args(&files);
    let storescu = std::thread::spawn(move || sender.output());
    node.wait_for_log("instance stored");
    let terminated = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &node.pid().to_string()]).status().unwrap().success());
    let n = notify.recv(&mut message).expect("the node tells systemd it is stopping");
    assert!(String::from_utf8_lossy(&message[..n]).contains("STOPPING=1"), "{:?}", &message[..n]);
    let out = storescu.join().unwrap().unwrap();
    assert!(out.status.success(), "storescu: {}", text(&out));
    let status = node.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", node.log());
    let log = node.log();
    assert!(log.contains("waiting up to"), "the signal came while the association was open:\n{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(terminated.elapsed() < Duration::from_secs(60));
    assert_eq!(setup.instances().len(), files.len(), "every image acknowledged is recorded");
}

on_both_backends!(the_http_api_orders_ages_filters_and_counts, sigterm_lets_the_transfer_in_progress_finish);
