//! The models: the manifest that describes them (`manifest`), ONNX Runtime sessions that run
//! them (`runtime`), the decision policies and priority rules over their outputs (`decision`),
//! the checks an image passes before a model sees it (`checks`), and the analysis of images from
//! pixels to results (`analyse`), and batches of files or images through them with each
//! failure kept to its image (`batch`).

pub mod analyse;
pub mod batch;
pub mod checks;
pub mod decision;
pub mod manifest;
pub mod rle;
pub mod runtime;
pub mod selection;

pub use manifest::{Manifest, ModelSpec, Role};
pub use runtime::{find_onnxruntime, Model, RuntimeError};
