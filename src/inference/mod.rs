//! The models: the manifest that describes them (`manifest`), ONNX Runtime sessions that run
//! them (`runtime`), the decision policies and priority rules over their outputs (`decision`),
//! and the analysis of one image from pixels to a result (`analyze`).

pub mod analyze;
pub mod decision;
pub mod manifest;
pub mod rle;
pub mod runtime;

pub use manifest::{Manifest, ModelSpec, Role};
pub use runtime::{find_onnxruntime, Model, RuntimeError};
