//! A private Orthanc (Debian's `orthanc` package) per test: a real PACS for the node to deliver its
//! results to, checked through Orthanc's REST API rather than by trusting our own SCU.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The AE title Orthanc answers to (it accepts any called AE title anyway).
pub const AET: &str = "ORTHANC";

/// A running Orthanc with its storage, index and log in a temporary directory; killed when dropped.
pub struct Orthanc {
    pub dicom_port: u16,
    pub http_port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// One instance as Orthanc stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInstance {
    /// The series' Modality, as the sender wrote it (e.g. "SEG", "SR", "OT", "CR"); empty if absent.
    pub modality: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_instance_uid: String,
}

/// The binary: /usr/sbin is not on every user's PATH.
fn program() -> Option<PathBuf> {
    let sbin = Path::new("/usr/sbin/Orthanc");
    if sbin.exists() {
        return Some(sbin.into());
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join("Orthanc")).find(|p| p.exists())
}

/// Starts Orthanc on two free ports and waits until its REST API answers (well under a second
/// here; 60 s allowed for loaded machines). The DICOM server is listening by then: Orthanc
/// starts it before the HTTP server.
pub fn start() -> Orthanc {
    start_with(json!({}))
}

/// The DICOMweb plugin (Debian's `orthanc-dicomweb`), to load with [`start_with`].
pub const DICOMWEB_PLUGIN: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

/// Starts Orthanc as [`start`] does, with `extra`'s keys set in its configuration (e.g. the
/// modalities it may send to, a plugin and its section).
pub fn start_with(extra: Value) -> Orthanc {
    let program = program().expect("Orthanc not found: Debian's orthanc package is needed: scripts/test installs it");
    let dir = tempfile::tempdir().unwrap();
    let (dicom_port, http_port) = (super::free_port(), super::free_port());
    // Defaults otherwise: Orthanc accepts every transfer syntax and every storage SOP class known
    // to DCMTK (SEG, Comprehensive 3D SR, Secondary Capture, CR, DX...) from any AE.
    let config = json!({
        "Name": "pneumotriage-test",
        "StorageDirectory": dir.path().join("storage"),
        "IndexDirectory": dir.path().join("index"),
        "StorageCompression": false,
        "Plugins": [],
        "LuaScripts": [],
        "HttpServerEnabled": true,
        "HttpPort": http_port,
        "RemoteAccessAllowed": false,
        "AuthenticationEnabled": false,
        "HttpCompressionEnabled": false,
        "KeepAlive": false,
        "OrthancExplorerEnabled": false,
        "WebDavEnabled": false,
        "DicomServerEnabled": true,
        "DicomAet": AET,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": false,
        "DicomAlwaysAllowEcho": true,
        "DicomAlwaysAllowStore": true,
        "UnknownSopClassAccepted": false,
        "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
        "SaveJobs": false
    });
    let mut config = config;
    for (key, value) in extra.as_object().expect("the extra configuration is an object") {
        config[key] = value.clone();
    }
    let config_path = dir.path().join("orthanc.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let log = File::create(dir.path().join("orthanc.log")).unwrap();
    let child = Command::new(&program)
        .arg(&config_path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{}: {e}: Debian's orthanc package is needed: scripts/test installs it", program.display())
        });
    // Built before waiting, so that a panic below kills the child on unwinding.
    let mut orthanc = Orthanc { dicom_port, http_port, child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _, _)) = super::http_request(http_port, "GET", "/system", &[], "") {
            return orthanc;
        }
        if let Some(status) = orthanc.child.try_wait().unwrap() {
            panic!("Orthanc exited ({status}) before answering:\n{}", orthanc.log_tail());
        }
        if Instant::now() > deadline {
            panic!("Orthanc did not answer on port {http_port} within 60 s:\n{}", orthanc.log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Orthanc {
    /// Orthanc's log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("orthanc.log")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn call(&self, method: &str, path: &str, body: &str) -> Value {
        let (status, _, response) = super::http_request(self.http_port, method, path, &[], body)
            .unwrap_or_else(|e| panic!("Orthanc {method} {path}: {e}\n{}", self.log_tail()));
        let text = String::from_utf8_lossy(&response);
        assert_eq!(status, 200, "Orthanc {method} {path}: {text}");
        serde_json::from_slice(&response).unwrap_or_else(|e| panic!("Orthanc {method} {path}: {e}: {text}"))
    }

    /// `GET path` of the REST API, which must answer 200 with JSON.
    pub fn get(&self, path: &str) -> Value {
        self.call("GET", path, "")
    }

    /// `POST path` of the REST API with `body`, which must answer 200 with JSON.
    pub fn post(&self, path: &str, body: &str) -> Value {
        self.call("POST", path, body)
    }

    /// Every instance of every series of the study; empty if Orthanc has no such study.
    pub fn instances_of_study(&self, study_instance_uid: &str) -> Vec<StoredInstance> {
        // /tools/lookup answers [{"ID", "Path", "Type": "Study"|"Series"|...}], [] if unknown.
        let found = self.post("/tools/lookup", study_instance_uid);
        let Some(study) = found.as_array().unwrap().iter().find(|r| r["Type"] == "Study") else {
            return Vec::new();
        };
        let str_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let mut instances = Vec::new();
        for series in self.get(&format!("/studies/{}/series", str_of(&study["ID"]))).as_array().unwrap() {
            let tags = &series["MainDicomTags"];
            for instance in series["Instances"].as_array().unwrap() {
                let id = str_of(instance);
                let main = self.get(&format!("/instances/{id}"));
                // The SOP class is not a main DICOM tag; Orthanc records it as metadata on reception.
                let metadata = self.get(&format!("/instances/{id}/metadata?expand"));
                instances.push(StoredInstance {
                    modality: str_of(&tags["Modality"]),
                    sop_class_uid: str_of(&metadata["SopClassUid"]),
                    sop_instance_uid: str_of(&main["MainDicomTags"]["SOPInstanceUID"]),
                    series_instance_uid: str_of(&tags["SeriesInstanceUID"]),
                });
            }
        }
        instances
    }

    /// The stored file of the instance with this SOP Instance UID, as Orthanc keeps it.
    pub fn file(&self, sop_instance_uid: &str) -> Vec<u8> {
        let found = self.post("/tools/lookup", sop_instance_uid);
        let id = found.as_array().unwrap().iter().find(|r| r["Type"] == "Instance").expect("Orthanc has the instance")
            ["ID"]
            .as_str()
            .unwrap()
            .to_string();
        let (status, _, body) = super::http_request(self.http_port, "GET", &format!("/instances/{id}/file"), &[], "")
            .unwrap_or_else(|e| panic!("Orthanc GET /instances/{id}/file: {e}"));
        assert_eq!(status, 200, "Orthanc GET /instances/{id}/file");
        body
    }

    /// Polls until the study has at least `n` instances or `timeout` passes; returns what is there.
    pub fn wait_for_instances(&self, study_instance_uid: &str, n: usize, timeout: Duration) -> Vec<StoredInstance> {
        let deadline = Instant::now() + timeout;
        loop {
            let instances = self.instances_of_study(study_instance_uid);
            if instances.len() >= n || Instant::now() > deadline {
                return instances;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        // SIGKILL: SIGTERM takes Orthanc 2-4 s, and its storage goes with the directory anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
