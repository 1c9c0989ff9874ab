//! The model manifest (`models/manifest.toml`, documented in models/README.md): what each ONNX
//! model is and how to feed it. The node trusts a model file only if its sha256 matches.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::imaging::Preprocess;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read the model manifest {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Classifier,
    Segmenter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Logits,
    Probabilities,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Thresholds {
    pub classifier: f32,
    pub mask: f32,
    pub min_mask_area_px: u32,
    pub triplet_top: f32,
    pub triplet_min_area_px: u32,
    pub triplet_bottom: f32,
}

#[derive(Debug, Clone, Deserialize)]
struct PreprocessSpec {
    voi: String,
    resize: String,
    mean: f32,
    std: f32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub role: Role,
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub file: String,
    pub sha256: String,
    pub input: String,
    pub output: String,
    pub layout: String,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub output_kind: OutputKind,
    pub intended_use: String,
    preprocess: PreprocessSpec,
}

impl ModelSpec {
    /// Name, version and sha256: what a result row records of the model that made it.
    pub fn identity(&self) -> [String; 3] {
        [self.name.clone(), self.version.clone(), self.sha256.clone()]
    }

    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            height: self.height,
            width: self.width,
            channels: self.channels,
            mean: self.preprocess.mean,
            std: self.preprocess.std,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub notice: String,
    pub thresholds: Thresholds,
    pub models: Vec<ModelSpec>,
    /// The directory model files are relative to; not a key of the file.
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Manifest {
    /// Reads and validates a manifest.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text =
            crate::config::read_named_text(path).map_err(|source| ManifestError::Read { path: path.into(), source })?;
        let invalid = |message: String| ManifestError::Invalid { path: path.into(), message };
        let mut manifest: Manifest = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        manifest.dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        if manifest.format != 1 {
            return Err(invalid(format!("format {} is not supported (1 is)", manifest.format)));
        }
        for role in [Role::Classifier, Role::Segmenter] {
            let n = manifest.models.iter().filter(|m| m.role == role).count();
            if n != 1 {
                return Err(invalid(format!("{n} models with role {role:?}; exactly one is needed")));
            }
        }
        for (i, m) in manifest.models.iter().enumerate() {
            let bad = |what: &str| invalid(format!("models[{i}].{what}"));
            if m.layout != "NCHW" {
                return Err(bad("layout: only NCHW is supported"));
            }
            if !matches!(m.channels, 1 | 3) || m.height == 0 || m.width == 0 {
                return Err(bad("height/width/channels: positive sizes and 1 or 3 channels"));
            }
            if m.preprocess.voi != "window" || m.preprocess.resize != "bilinear" || m.preprocess.std <= 0.0 {
                return Err(bad("preprocess: voi = \"window\", resize = \"bilinear\" and a positive std"));
            }
            if Path::new(&m.file).components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(bad("file: a relative path inside the manifest's directory"));
            }
        }
        Ok(manifest)
    }

    pub fn model(&self, role: Role) -> &ModelSpec {
        self.models.iter().find(|m| m.role == role).expect("load checked that every role is present")
    }

    pub fn path_of(&self, model: &ModelSpec) -> PathBuf {
        self.dir.join(&model.file)
    }

    /// Reads a model file, refusing it unless its sha256 is the manifest's.
    pub fn read_verified(&self, model: &ModelSpec) -> Result<Vec<u8>, ManifestError> {
        let path = self.path_of(model);
        let bytes = crate::config::read_named_file(&path, crate::config::MODEL_FILE_LIMIT)
            .map_err(|source| ManifestError::Read { path: path.clone(), source })?;
        let actual = format!("{:x}", Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&model.sha256) {
            return Err(ManifestError::Invalid {
                path,
                message: format!("sha256 is {actual}, the manifest says {}: not the model it describes", model.sha256),
            });
        }
        Ok(bytes)
    }
}
