//! Safe models in production, after the input checks: shadow versions recorded beside
//! production and never sent, and radiologists' verdicts through the API and the worklist page
//! (headless Chromium), with the reports computed from them.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common;
use crate::common::{http_request, storescu, synthetic_images, text, tool, Backend, Setup};

const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/manifest.toml");

/// Runs a command that prints JSON, and parses it.
fn cli_json(setup: &Setup, args: &[&str]) -> Value {
    let out = setup.cli(args);
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)))
}

/// Two shadows of the demo models, one that calls every image positive and one that calls none,
/// beside production on six synthetic radiographs delivered to Orthanc: each shadow has a row
/// per image, the report counts exactly the flips production's decisions imply, and only
/// production's objects are made and reach the PACS.
fn shadow_versions_are_recorded_beside_production_and_never_sent(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let files = synthetic_images(&work.path().join("images"), 6, 77);
    let pacs = common::orthanc::start();
    let mut setup = Setup::analysing(backend, "");
    setup.tail = format!(
        "[[inference.shadow]]\nname = \"all-positive\"\nmodels = \"{MODELS}\"\nclassifier_threshold = 0.0\n\
         [[inference.shadow]]\nname = \"none-positive\"\nmodels = \"{MODELS}\"\nclassifier_threshold = 1.0\n\
         [[destinations]]\nname = \"pacs\"\nae_title = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n",
        common::orthanc::AET,
        pacs.dicom_port
    );
    setup.write_config("", "", common::DEFAULT_PEERS);
    let node = setup.start();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    assert!(storescu(setup.port, &[], &refs).status.success());
    setup.wait_count("SELECT COUNT(*) FROM shadow_results", 2 * files.len() as i64);
    setup.wait_count("SELECT COUNT(*) FROM deliveries WHERE state <> 'delivered'", 0);
    let log = node.log();
    assert!(log.contains("shadow version loaded") && log.contains("all-positive"), "{log}");

    let positives = setup.count("SELECT COUNT(*) FROM results WHERE decision <> 'negative'");
    let negatives = files.len() as i64 - positives;
    assert!(positives > 0 && negatives > 0, "the seed 77 set has both: {positives} positive(s)");
    assert_eq!(setup.count("SELECT COUNT(*) FROM results"), files.len() as i64);
    for (shadow, decision) in [("all-positive", "negative"), ("none-positive", "positive")] {
        let sql = format!(
            "SELECT COUNT(*) FROM shadow_results WHERE shadow = '{shadow}' AND outcome = 'analysed' \
             AND decision <> '{decision}'"
        );
        assert_eq!(setup.count(&sql), files.len() as i64, "{shadow}: every image, none {decision}");
    }
    // never sent: the objects are production's (an SR each, a SEG per positive with a mask), and
    // the PACS holds those and nothing else
    let made = setup.count("SELECT COUNT(*) FROM outputs");
    let expected = files.len() as i64 + setup.count("SELECT COUNT(*) FROM results WHERE decision = 'positive'");
    assert_eq!(made, expected, "objects of production's results only");
    assert_eq!(setup.count("SELECT COUNT(*) FROM deliveries"), made);
    assert_eq!(pacs.get("/instances").as_array().unwrap().len() as i64, made, "the PACS has production's objects only");

    let report = cli_json(&setup, &["shadow-report", "--json"]);
    let by_name = |name: &str| report.as_array().unwrap().iter().find(|c| c["shadow"] == name).unwrap().clone();
    let all = by_name("all-positive");
    assert_eq!((all["compared"].as_i64(), all["flips_to_positive"].as_i64()), (Some(6), Some(negatives)), "{all}");
    assert_eq!((all["flips_to_negative"].as_i64(), all["agreed"].as_i64()), (Some(0), Some(positives)), "{all}");
    let none = by_name("none-positive");
    assert_eq!((none["flips_to_negative"].as_i64(), none["flips_to_positive"].as_i64()), (Some(positives), Some(0)));
    assert!(none["mean_probability_shift"].as_f64().unwrap().abs() < 1e-9, "same models, same probabilities: {none}");
    assert_eq!(none["shadow_model"], all["production_model"]);
    // the period: nothing was analysed before yesterday
    let old = cli_json(&setup, &["shadow-report", "--json", "--until", "1day"]);
    assert_eq!(old.as_array().unwrap().len(), 0, "{old}");
    let out = setup.cli(&["shadow-report", "--shadow", "all-positive"]);
    let printed = text(&out);
    assert!(out.status.success() && printed.contains(&format!("negative -> positive   {negatives}")), "{printed}");
    assert!(!printed.contains("none-positive"), "{printed}");
    println!("{printed}");
}

const LEE: &str = "lee-token-0123456789abcdef";
const PARK: &str = "park-token-0123456789abcdef";
const SHARED: &str = "shared-token-0123456789abcdef";

fn post(setup: &Setup, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    headers.push(("Content-Type", "application/json"));
    let (status, _, body) = http_request(setup.http_port, "POST", path, &headers, body).unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn get(setup: &Setup, path: &str) -> Value {
    let auth = format!("Bearer {LEE}");
    let (status, _, body) = http_request(setup.http_port, "GET", path, &[("Authorization", &auth)], "").unwrap();
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Verdicts from two named radiologists through the API (and one through the page in headless
/// Chromium): who and when are recorded, the shared token and no token are refused, bad bodies
/// get 400 and unknown results 404, a later verdict supersedes, and `verdict-report` gives PPV,
/// the flip rates and sensitivity from them.
fn verdicts_through_the_api_and_the_page_make_the_report(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let files = synthetic_images(&work.path().join("images"), 6, 77);
    let mut setup = Setup::analysing(backend, "");
    setup.http = format!(
        "token = \"{SHARED}\"\n[[http.tokens]]\nname = \"dr.lee\"\ntoken = \"{LEE}\"\n\
         [[http.tokens]]\nname = \"dr.park\"\ntoken = \"{PARK}\"\n"
    );
    setup.write_config("", "", common::DEFAULT_PEERS);
    let _node = setup.start();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    assert!(storescu(setup.port, &[], &refs).status.success());
    setup.wait_count("SELECT COUNT(*) FROM jobs WHERE state = 'done'", files.len() as i64);

    // every analysed image of every study, with its result's id
    let mut results: Vec<(String, i64, bool)> = Vec::new();
    for study in get(&setup, "/api/studies")["studies"].as_array().unwrap() {
        let uid = study["study_instance_uid"].as_str().unwrap().to_string();
        for i in get(&setup, &format!("/api/studies/{uid}"))["instances"].as_array().unwrap() {
            assert!(i["verdict"].is_null(), "{i}");
            results.push((uid.clone(), i["result_id"].as_i64().unwrap(), i["decision"] != "negative"));
        }
    }
    let positives: Vec<&(String, i64, bool)> = results.iter().filter(|r| r.2).collect();
    let negatives: Vec<&(String, i64, bool)> = results.iter().filter(|r| !r.2).collect();
    assert!(positives.len() >= 2 && negatives.len() >= 2, "{results:?}");
    let path = |id: i64| format!("/api/results/{id}/verdict");

    // who may give one, and what
    let agree = r#"{"verdict": "agree"}"#;
    assert_eq!(post(&setup, &path(positives[0].1), None, agree).0, 401);
    let (status, error) = post(&setup, &path(positives[0].1), Some(SHARED), agree);
    assert_eq!(status, 403, "the shared token has no name: {error}");
    assert!(error["error"].as_str().unwrap().contains("[[http.tokens]]"), "{error}");
    let (status, error) = post(&setup, &path(positives[0].1), Some(LEE), r#"{"verdict": "maybe"}"#);
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().unwrap().contains("`maybe`"), "{error}");
    assert_eq!(post(&setup, &path(positives[0].1), Some(LEE), "not json").0, 400);
    // JSON only: a form on another page of the site (text/plain: no preflight) cannot post one
    let lee = format!("Bearer {LEE}");
    let as_form = [("Authorization", lee.as_str()), ("Content-Type", "text/plain")];
    let (status, _, _) = http_request(setup.http_port, "POST", &path(positives[0].1), &as_form, agree).unwrap();
    assert_eq!(status, 415);
    // a query string as long as a URL may be: refused before it reaches the audit trail
    let long = format!("/api/studies?priority={}", "a".repeat(3000));
    assert_eq!(http_request(setup.http_port, "GET", &long, &[("Authorization", lee.as_str())], "").unwrap().0, 414);
    assert_eq!(post(&setup, &path(999_999), Some(LEE), agree).0, 404);
    assert_eq!(post(&setup, "/api/results/x/verdict", Some(LEE), agree).0, 404);

    // dr.lee agrees with the first positive after first disagreeing; dr.park disagrees with the
    // second; dr.lee agrees with the first negative; the page records dr.park's on the second
    let (status, first) = post(&setup, &path(positives[0].1), Some(LEE), r#"{"verdict": "disagree"}"#);
    assert_eq!(status, 201, "{first}");
    let (status, changed) =
        post(&setup, &path(positives[0].1), Some(LEE), r#"{"verdict": "agree", "note": "apical, small"}"#);
    assert_eq!(status, 201, "{changed}");
    assert_eq!((changed["reviewer"].as_str(), changed["note"].as_str()), (Some("dr.lee"), Some("apical, small")));
    assert!(changed["id"].as_i64() > first["id"].as_i64());
    assert_eq!(post(&setup, &path(positives[1].1), Some(PARK), r#"{"verdict": "disagree"}"#).0, 201);
    assert_eq!(post(&setup, &path(negatives[0].1), Some(LEE), agree).0, 201);
    let page = Command::new(common::python())
        .arg(tool("page_verdict.py"))
        .arg(format!("http://127.0.0.1:{}/", setup.http_port))
        .args([PARK, &negatives[1].0, &negatives[1].1.to_string(), "disagree", "small left apical PTX missed"])
        .output()
        .unwrap();
    assert!(page.status.success(), "the page in Chromium: {}", text(&page));
    let shown: Value = serde_json::from_slice(&page.stdout).unwrap();
    let said = shown["said"].as_str().unwrap();
    assert!(said.starts_with("Disagreed by dr.park") && said.contains("small left apical PTX missed"), "{said}");

    // the study shows the latest verdict, with who and when
    let study = get(&setup, &format!("/api/studies/{}", negatives[1].0));
    let shown = study["instances"].as_array().unwrap().iter().find(|i| i["result_id"] == negatives[1].1).unwrap();
    assert_eq!(
        (shown["verdict"].as_str(), shown["verdict_by"].as_str()),
        (Some("disagree"), Some("dr.park")),
        "{shown}"
    );
    assert_eq!(shown["verdict_note"], "small left apical PTX missed");
    let study = get(&setup, &format!("/api/studies/{}", positives[0].0));
    let shown = study["instances"].as_array().unwrap().iter().find(|i| i["result_id"] == positives[0].1).unwrap();
    assert_eq!((shown["verdict"].as_str(), shown["verdict_by"].as_str()), (Some("agree"), Some("dr.lee")), "{shown}");
    assert_eq!(setup.count("SELECT COUNT(*) FROM verdicts"), 5, "every verdict is kept");

    // TP 1, FP 1, TN 1, FN 1
    let report = cli_json(&setup, &["verdict-report", "--json"]);
    let [summary] = report.as_array().unwrap().as_slice() else { panic!("one classifier version: {report}") };
    assert_eq!((summary["results"].as_i64(), summary["reviewed"].as_i64()), (Some(6), Some(4)), "{summary}");
    for key in ["ppv", "flip_rate_positive_to_negative", "flip_rate_negative_to_positive", "sensitivity", "specificity"]
    {
        assert_eq!(summary[key].as_f64(), Some(0.5), "{key}: {summary}");
    }
    let out = setup.cli(&["verdict-report", "--since", "1h"]);
    assert!(out.status.success() && text(&out).contains("50.0 %"), "{}", text(&out));
    println!("{}", text(&out));
    let out = setup.cli(&["verdict-report", "--since", "next tuesday"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("neither a date"), "{}", text(&out));
}

on_both_backends!(
    shadow_versions_are_recorded_beside_production_and_never_sent,
    verdicts_through_the_api_and_the_page_make_the_report
);

/// The page's escaping, run as the page runs it (node): values from images (a skip reason quotes
/// the tags it read) reach element text and quoted attributes alike, so quotes are escaped too.
#[test]
fn the_page_escapes_what_images_say_for_attributes_too() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/worklist.html")).unwrap();
    let escape = page.lines().find(|l| l.starts_with("const text = ")).expect("the page's text()");
    let hostile = r#"species "x onmouseover=import('//evil/x.js') y" <b>&"#;
    let out = Command::new("node")
        .arg("-e")
        .arg(format!("{escape}\nprocess.stdout.write(text(process.argv[1]))"))
        .arg(hostile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let escaped = String::from_utf8(out.stdout).unwrap();
    assert_eq!(escaped, "species &quot;x onmouseover=import(&#39;//evil/x.js&#39;) y&quot; &lt;b&gt;&amp;");
}
