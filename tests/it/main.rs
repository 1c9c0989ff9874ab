//! The integration tests, in one binary: the node's binary and library driven against real
//! peers (dcmtk, pynetdicom, Orthanc, headless Chromium), real databases (a fresh SQLite file or
//! PostgreSQL database per test) and real images. One binary, so that ONNX Runtime, sqlx and the
//! DICOM crates are linked once, not once per file. Run one module with `cargo test --test it
//! receive::`, one test with its full name, e.g. `refusals::sqlite::idle_association_is_aborted`.

// First: `on_both_backends!` is defined there and used by the modules below.
#[macro_use]
mod common;

mod audit;
mod cli;
mod crash;
mod delivery;
mod dicomweb;
mod edges;
mod encryption;
mod fhir;
mod hl7;
mod hostile;
mod imaging;
mod infer;
mod inference;
mod layout;
mod messages;
mod nodes;
mod not_analysed;
mod operations;
mod package;
mod pipeline;
mod pull;
mod receive;
mod retention;
mod refusals;
mod results;
mod review;
mod selection;
mod signin;
mod store;
mod upgrade;
