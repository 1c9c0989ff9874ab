//! Receiving from real peers: every accepted transfer syntax, dcmtk and pynetdicom, versions
//! and duplicates, and what the CLI shows afterwards. Each test runs on SQLite and PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;
use crate::common::{
    assert_same_pixels, deid_cat, pydicom_data, run, sop_instance_uid, storescu, text, Backend, Setup,
};

fn echo_is_answered(backend: Backend) {
    let setup = Setup::new(backend);
    let node = setup.start();
    let out = Command::new("/usr/bin/echoscu")
        .args(["-v", "-aec", "PNEUMOTRIAGE", "127.0.0.1", &setup.port.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Received Echo Response (Success)"), "{}", text(&out));
    node.wait_for_log("association ended: released");
    setup.wait_count("SELECT COUNT(*) FROM events WHERE kind = 'association_accepted' AND peer_ae = 'ECHOSCU'", 1);
}

/// Sends `file` with storescu `args`, then checks the newest row for its UID: the transfer
/// syntax it arrived in, a queued job, and a spool file that decodes to the same pixels.
fn send_and_check(setup: &Setup, file: &Path, args: &[&str], expected_ts: &str) {
    let out = storescu(setup.port, args, &[file]);
    assert!(out.status.success(), "storescu {args:?} {}: {}", file.display(), text(&out));
    let uid = sop_instance_uid(file);
    let rows: Vec<_> = setup.instances().into_iter().filter(|r| r.0 == uid).collect();
    assert_eq!(rows.len(), 1, "one row for {uid}: {rows:?}");
    let (_, version, path, ts, job) = &rows[0];
    assert_eq!(*version, 1);
    assert_eq!(ts, expected_ts, "{}", file.display());
    assert_eq!(job, "queued");
    assert_same_pixels(file, &setup.spool_dir().join(path));
}

/// Re-encodes RG1 with a dcmtk codec tool, with a new SOP Instance UID.
fn reencode(tool: &str, extra: &[&str], dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let src = pydicom_data("RG1_UNCR.dcm");
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["+ua", src.to_str().unwrap(), out.to_str().unwrap()]);
    run(tool, &args);
    out
}

fn every_accepted_syntax_round_trips_from_dcmtk(backend: Backend) {
    let setup = Setup::new(backend);
    let _node = setup.start();
    let work = tempfile::tempdir().unwrap();
    send_and_check(&setup, &pydicom_data("RG1_UNCR.dcm"), &[], "1.2.840.10008.1.2.1");
    let jpeg = reencode("dcmcjpeg", &[], work.path(), "rg1_jpeg_lossless.dcm");
    send_and_check(&setup, &jpeg, &["-xs"], "1.2.840.10008.1.2.4.70");
    let rle = reencode("dcmcrle", &[], work.path(), "rg1_rle.dcm");
    send_and_check(&setup, &rle, &["-xr"], "1.2.840.10008.1.2.5");
    send_and_check(&setup, &pydicom_data("RG1_J2KR.dcm"), &["-xv"], "1.2.840.10008.1.2.4.90");
    let jpeg_ls = reencode("dcmcjpls", &[], work.path(), "rg1_jpeg_ls.dcm");
    send_and_check(&setup, &jpeg_ls, &["-xt"], "1.2.840.10008.1.2.4.80");
    send_and_check(&setup, &deid_cat(), &[], "1.2.840.10008.1.2.1");
    assert_eq!(setup.count("SELECT COUNT(*) FROM studies"), 2, "the RG1 variants share a study; the cat has its own");
}

fn pynetdicom_storescu_is_received(backend: Backend) {
    let setup = Setup::new(backend);
    let _node = setup.start();
    let file = deid_cat();
    let out = Command::new(common::python())
        .args(["-m", "pynetdicom", "storescu", "-aet", "PYNETDICOM", "-aec", "PNEUMOTRIAGE", "127.0.0.1"])
        .arg(setup.port.to_string())
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rows = setup.instances();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_same_pixels(&file, &setup.spool_dir().join(&rows[0].2));
}

/// The spool holds exactly the bytes that were sent, behind a file meta header of ours.
fn data_set_bytes_are_kept_as_received(backend: Backend) {
    let setup = Setup::new(backend);
    let _node = setup.start();
    let file = pydicom_data("RG1_UNCR.dcm");
    let (data, ts) = common::scu::dataset_of(&file);
    let class = "1.2.840.10008.5.1.4.1.1.1";
    let uid = sop_instance_uid(&file);
    let mut assoc = common::scu::associate(setup.port, &[(class, &ts)]).unwrap();
    let ctx = common::scu::context_id(&assoc, class);
    assert_eq!(common::scu::store(&mut assoc, ctx, class, &uid, &data), 0x0000);
    assoc.release().unwrap();
    let rows = setup.instances();
    let stored = setup.spool_dir().join(&rows[0].2);
    let (kept, kept_ts) = common::scu::dataset_of(&stored);
    assert_eq!(kept_ts, ts);
    assert!(kept == data, "the spool file's data set must be the received bytes");
}

fn same_bytes_twice_is_one_job_and_new_bytes_are_a_new_version(backend: Backend) {
    let setup = Setup::new(backend);
    let node = setup.start();
    let original = pydicom_data("RG1_UNCR.dcm");
    for _ in 0..2 {
        let out = storescu(setup.port, &[], &[&original]);
        assert!(out.status.success(), "{}", text(&out));
    }
    node.wait_for_log("instance already stored with the same bytes");
    assert_eq!(setup.count("SELECT COUNT(*) FROM jobs"), 1);
    setup.wait_count("SELECT COUNT(*) FROM events WHERE kind = 'instance_duplicate'", 1);

    // Same UID, different bytes: JPEG lossless keeps the UID unless told otherwise.
    let work = tempfile::tempdir().unwrap();
    let jpeg = work.path().join("same_uid_jpeg.dcm");
    run("dcmcjpeg", &[original.to_str().unwrap(), jpeg.to_str().unwrap()]);
    assert_eq!(sop_instance_uid(&jpeg), sop_instance_uid(&original));
    let out = storescu(setup.port, &["-xs"], &[&jpeg]);
    assert!(out.status.success(), "{}", text(&out));
    let rows = setup.instances();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].1, rows[1].1), (1, 2));
    assert!(rows[1].2.ends_with(".v2.dcm"), "{}", rows[1].2);
    assert_eq!(setup.count("SELECT COUNT(*) FROM jobs WHERE state = 'queued'"), 2);
    assert_eq!(setup.count("SELECT instance_count FROM studies"), 2);
}

fn cli_lists_studies_and_instances(backend: Backend) {
    let setup = Setup::new(backend);
    let node = setup.start();
    let file = deid_cat();
    assert!(storescu(setup.port, &[], &[&file]).status.success());
    drop(node);
    let out = setup.cli(&["instances", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["sop_instance_uid"], sop_instance_uid(&file).as_str());
    assert_eq!(rows[0]["job_state"], "queued");
    let out = setup.cli(&["studies"]);
    let table = text(&out);
    assert!(out.status.success(), "{table}");
    assert!(table.contains("STUDY INSTANCE UID"), "{table}");
    assert_eq!(table.lines().count(), 2, "a header and one study:\n{table}");
}

/// Patient data stays out of the log at info level (the default).
fn patient_names_stay_out_of_the_log(backend: Backend) {
    let setup = Setup::new(backend);
    let node = setup.start();
    let images = tempfile::tempdir().unwrap();
    let made = Command::new(common::python())
        .arg(common::tool("make_series.py"))
        .arg(images.path())
        .args(["1", "--size", "64"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    let file = images.path().join("dx0000.dcm");
    assert!(storescu(setup.port, &[], &[&file]).status.success());
    let log = node.wait_for_log("instance stored");
    assert!(log.contains(&sop_instance_uid(&file)), "the instance is logged by UID");
    for patient_data in ["Series0", "PT00000", "ACC00000"] {
        assert!(!log.contains(patient_data), "{patient_data} is in the log:\n{log}");
    }
}

on_both_backends!(
    patient_names_stay_out_of_the_log,
    echo_is_answered,
    every_accepted_syntax_round_trips_from_dcmtk,
    pynetdicom_storescu_is_received,
    data_set_bytes_are_kept_as_received,
    same_bytes_twice_is_one_job_and_new_bytes_are_a_new_version,
    cli_lists_studies_and_instances,
);
