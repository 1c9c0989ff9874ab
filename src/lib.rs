//! pneumotriage: a DICOM node that receives chest radiographs, keeps them durably, triages them
//! for pneumothorax, sends the results back to the PACS and serves a worklist. See README.md, and
//! docs/architecture.md for the map.

pub mod bucket;
pub mod config;
pub mod delivery;
pub mod dicom;
pub mod domain;
pub mod evaluate;
pub mod fuzz;
pub mod http;
pub mod imaging;
pub mod inference;
pub mod ingest;
pub mod logging;
pub mod messages;
pub mod metrics;
pub mod pipeline;
pub mod results;
pub mod review;
pub mod scan;
pub mod shutdown;
pub mod spool;
pub mod store;

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
