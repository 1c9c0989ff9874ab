//! pneumotriage: a DICOM node that receives chest radiographs, keeps them durably, triages them
//! for pneumothorax, sends the results back to the PACS and the RIS, and serves a worklist.
//! README.md says how to use it; docs/architecture.md draws the flow and its rules.
//!
//! # Layout
//!
//! The modules follow an image through the node: **receive → keep → analyse → make → send**,
//! then what people see of it, and what runs all of it.

// Receive: DICOM on the wire, and TLS for every link.
/// Upper layer, DIMSE, conformance, the storage SCP, the bounded walk of every data set, the SCU.
pub mod dicom;
/// TLS for the DICOM listener and destinations, MLLP and HTTPS (rustls, PEM files).
pub mod tls;

// Keep: acknowledge only what is durable.
/// Received bytes to a durable, recorded instance; start-up recovery.
pub mod ingest;
/// Durable files: temporary, fsynced, renamed; paths from sanitized UIDs.
pub mod spool;
/// The S3-compatible object store that keeps the durable copy when configured.
pub mod bucket;
/// Every SQL statement: instances, jobs, results, the outbox, the worklist (SQLite, PostgreSQL).
pub mod store;
/// Pulling studies from the PACS: C-FIND, then C-MOVE to this node (`fetch`, the catch-up).
pub mod sources;
/// Deleting what nothing needs any more: time rules, disk pressure, sweeps of leftover files.
pub mod retention;

// Analyse: pixels to a decision.
/// Checked decoding within a pixel budget, LUTs, MONOCHROME1, resize to the model's input.
pub mod imaging;
/// The manifest, ONNX Runtime, the input checks, the decision and priority rules.
pub mod inference;
/// The workers: claim a job, analyse, make the objects, record it all in one transaction.
pub mod pipeline;

// Make: what the analysis becomes for other systems.
/// The one registry of coded concepts (DICOM, SNOMED CT, LOINC, UCUM, HL7 tables).
pub mod codes;
/// The SEG, SR and secondary capture builders and the rendered views (pure).
pub mod results;
/// The HL7 v2 ORU, FHIR Bundle and webhook body made from one study's facts (pure).
pub mod messages;

// Send: the durable outbox.
/// The senders per destination: C-STORE of objects, messages over MLLP and HTTP(S).
pub mod outbox;

// Show: what people and monitoring read.
/// Health, readiness, metrics, the worklist API and page, verdicts (axum on hyper).
pub mod http;
/// The process-wide Prometheus registry.
pub mod metrics;
/// Shadow-version comparisons and radiologists' verdicts per classifier version.
pub mod reports;
/// The models measured on a labelled set (SIIM-ACR layout).
pub mod evaluate;

// Run: what everything above shares.
/// The typed configuration, a file per section, each with its defaults and its checks.
pub mod config;
/// The vocabulary: priorities, decisions, states, kinds, and a study message's facts.
pub mod domain;
/// IHE ATNA audit records (DICOM PS3.15 A.5) and the repositories they are sent to.
pub mod audit;
/// The one stop signal.
pub mod shutdown;
/// Log set-up; peer strings escaped.
pub mod logging;
/// Fuzz entry points over every untrusted path (`cargo test` runs a short round).
pub mod fuzz;

/// The implementation identity the node gives in its associations and in the file meta header
/// of every file it writes (PS3.7 D.3.3.2); the class UID is under the project's UID root.
pub const IMPLEMENTATION_CLASS_UID: &str = "1.2.826.0.1.3680043.10.1447.1";
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("PNEUMOTRIAGE_", env!("CARGO_PKG_VERSION_MAJOR"));

/// Keeps memory freed by one image for the next instead of returning it to the kernel.
///
/// An analysis allocates a few buffers of tens of MB (the file, the decoded frame, the display
/// image); glibc serves those from fresh mmaps and unmaps them when freed, so every image pays
/// a page fault per 4 KiB touched, which on virtual machines costs more than the decoding itself.
/// Served from the heap, and with the heap trimmed only above 256 MiB, they are reused. Called
/// once at start-up, before any thread exists.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
