//! An S3-compatible object store for the object-storage spool's tests: moto's server (Python,
//! from tests/requirements.txt) on a free port, with one bucket. moto speaks S3's REST API
//! (path-style buckets, XML listings and errors, conditional PUT with If-None-Match, multipart
//! uploads) and keeps objects in memory; it does not check request signatures.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::python::python;

pub struct S3 {
    child: Child,
    pub port: u16,
    pub bucket: String,
}

impl S3 {
    /// Starts the server and creates the bucket `pneumotriage-test`.
    pub fn start() -> S3 {
        let port = free_port();
        let child = Command::new(python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto's server starts (tests/requirements.txt)");
        let s3 = S3 { child, port, bucket: "pneumotriage-test".into() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto's server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        ureq::put(&s3.url(&s3.bucket)).send_empty().expect("the bucket is created");
        s3
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The `[object_store]` section of a node keeping its spool under `prefix` of the bucket.
    pub fn config(&self, prefix: &str) -> String {
        format!(
            "[object_store]\nurl = \"s3://{}/{prefix}\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             access_key_id = \"pneumotriage\"\nsecret_access_key = \"not-checked-by-moto\"\n",
            self.bucket, self.port
        )
    }

    /// The keys under `prefix`, sorted (at most 1000: one listing).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let url = format!("{}?list-type=2&prefix={prefix}", self.url(&self.bucket));
        let body = ureq::get(&url).call().unwrap().into_body().read_to_string().unwrap();
        assert_eq!(elements(&body, "IsTruncated"), ["false"], "one listing holds every key");
        let mut keys = elements(&body, "Key");
        keys.sort();
        keys
    }
}

/// The texts of the `<name>` elements of an S3 XML listing (keys are UIDs and slashes: no
/// escapes to undo).
fn elements(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    xml.split(&open).skip(1).filter_map(|rest| rest.split_once(&close).map(|(text, _)| text.to_string())).collect()
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
