//! What the node makes of an analysis for people and other systems: the rendered views
//! (`infer --out`, the worklist's overlay and the secondary capture), the DICOM Segmentation,
//! the structured report and the secondary capture, built from one shared context, with the
//! UIDs they are given (their codes come from `crate::codes`). It knows nothing of the database.

pub mod common;
pub mod context;
pub mod objects;
pub mod overlay;
pub mod sc;
pub mod seg;
pub mod sr;
pub mod uid;

pub use common::{Built, ObjectUids, ResultsError};
pub use context::{dicom_now, Context, Models, Series};
pub use objects::{make_not_analysed, make_objects, MadeObject, ObjectRoute, OutputSettings};
