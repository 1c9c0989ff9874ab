//! The models: the manifest that describes them, and ONNX Runtime sessions that run them.
//! The decision policy (cascade or segmentation) comes with the pipeline.

pub mod analyze;
pub mod decision;
pub mod manifest;
pub mod rle;
pub mod runtime;

pub use manifest::{Manifest, ModelSpec, Role};
pub use runtime::{find_onnxruntime, Model, RuntimeError};
