//! What the node makes of an analysis for people and other systems: the rendered views
//! (`infer --out`, later the worklist's overlay and the secondary capture), the DICOM
//! Segmentation and the structured report; the UIDs of what it creates.

pub mod codes;
pub mod common;
pub mod objects;
pub mod overlay;
pub mod sc;
pub mod seg;
pub mod sr;
pub mod uid;

pub use objects::{dicom_now, make_objects, MadeObject, OutputSettings};
