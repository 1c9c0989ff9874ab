//! The models: the manifest that describes them (`manifest`), ONNX Runtime sessions that run
//! them (`runtime`), the decision policies and priority rules over their outputs (`decision`),
//! the checks an image passes before a model sees it (`checks`), and the analysis of images from
//! pixels to results (`analyze`).

pub mod analyze;
pub mod checks;
pub mod decision;
pub mod manifest;
pub mod rle;
pub mod runtime;

pub use manifest::{Manifest, ModelSpec, Role};
pub use runtime::{find_onnxruntime, Model, RuntimeError};
