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
            // the objects name the model in LO values (Algorithm Name and Version; "name version"
            // in the SEG's Content Description): 64 characters at most, one value each
            let words = format!("{} {}", m.name, m.version);
            if m.name.trim().is_empty() || m.version.trim().is_empty() {
                return Err(bad("name/version: neither may be empty"));
            }
            if words.chars().count() > 64 || words.chars().any(|c| c.is_control() || c == '\\') {
                return Err(bad(
                    "name/version: together, with a space between, at most 64 characters, without a backslash or \
                     a control character (the DICOM objects carry them as LO values)",
                ));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A model's name and version go into the objects as LO values: one that would make an
    /// invalid object is refused when the manifest is read, naming the key.
    #[test]
    fn names_the_objects_cannot_carry_are_refused() {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/manifest.toml");
        let text = std::fs::read_to_string(&demo).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.toml");
        // with its version, "0.1.0", and a space: 58 characters fill the 64
        let (longest, too_long) = ("n".repeat(58), "n".repeat(59));
        for (name, ok) in [
            ("pneumotriage-demo-classifier", true),
            (longest.as_str(), true),
            (too_long.as_str(), false),
            ("back\\slash", false),
            ("tab\tbed", false),
            ("Größe – ok", true),
            (" ", false),
        ] {
            let edited = text.replacen("name = \"pneumotriage-demo-classifier\"", &format!("name = {name:?}"), 1);
            std::fs::write(&path, edited).unwrap();
            match Manifest::load(&path) {
                Ok(_) => assert!(ok, "{name:?} taken"),
                Err(e) => {
                    assert!(!ok, "{name:?} refused: {e}");
                    assert!(e.to_string().contains("models[0].name/version"), "{e}");
                }
            }
        }
    }
}
