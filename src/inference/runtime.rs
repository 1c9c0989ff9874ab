//! ONNX Runtime: finding the library (load-dynamic, no downloads), the one process-wide
//! environment, and a session per model checked against its manifest entry.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use ort::environment::Environment;
use ort::ep::cuda::ConvAlgorithmSearch;
use ort::ep::{ArenaExtendStrategy, ExecutionProvider, CUDA};
use ort::session::Session;
use ort::value::TensorRef;
use rayon::prelude::*;
use tracing::warn;

use super::manifest::{Manifest, ManifestError, ModelSpec, OutputKind, Role};

/// The onnxruntime release the node is built against (its PyPI wheel carries the library).
pub const ONNXRUNTIME_VERSION: &str = "1.32.0";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "the ONNX Runtime library was not found (looked at: {looked}). Install it with \
         `python3 -m pip install onnxruntime=={ONNXRUNTIME_VERSION}` and point inference.onnxruntime \
         (or ORT_DYLIB_PATH) at its onnxruntime/capi/libonnxruntime.so.{ONNXRUNTIME_VERSION}"
    )]
    NotFound { looked: String },
    #[error("cannot load the ONNX Runtime library {path}: {message}")]
    /// A message, not the error: the environment is made once and its failure is kept for every
    /// later caller (ort's error cannot be cloned).
    Load { path: PathBuf, message: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("model {name}: {source}")]
    Session { name: String, source: ort::Error },
    #[error(
        "model {name}: inference.device = \"cuda:{device}\" cannot be used and inference.require_gpu is true: \
         {source} (the GPU build of ONNX Runtime is PyPI's onnxruntime-gpu with its [cuda,cudnn] extras)"
    )]
    GpuRequired { name: String, device: u16, source: ort::Error },
    /// A model gave NaN: no decision can be made of it (a positive would be called, NaN being
    /// below no threshold), and the same image would give it again.
    #[error("model {name} gave NaN (not a number) for this image; it is not analysed")]
    NotANumber { name: String },
    #[error("model {name}: {message}")]
    Shape { name: String, message: String },
}

/// Where the library is looked for, in order: the configured path, `ORT_DYLIB_PATH`, next to
/// the binary, `/usr/lib/pneumotriage`, and the project's `.venv` (what `scripts/test` installs).
pub fn find_onnxruntime(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let mut looked = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    candidates.extend(configured.map(Path::to_path_buf));
    candidates.extend(std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from));
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir);
    }
    dirs.push(PathBuf::from("/usr/lib/pneumotriage"));
    for root in [PathBuf::from("."), PathBuf::from(env!("CARGO_MANIFEST_DIR"))] {
        if let Ok(lib) = std::fs::read_dir(root.join(".venv/lib")) {
            for python in lib.flatten() {
                dirs.push(python.path().join("site-packages/onnxruntime/capi"));
            }
        }
    }
    for dir in dirs {
        candidates.push(dir.join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}")));
        candidates.push(dir.join("libonnxruntime.so"));
    }
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(candidate.display().to_string());
    }
    Err(RuntimeError::NotFound { looked: looked.join(", ") })
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The one ONNX Runtime environment of the process, loading the library on first use.
pub fn environment(library: &Path) -> Result<&'static Environment, RuntimeError> {
    ENVIRONMENT
        .get_or_init(|| {
            ort::init_from(library)
                .map_err(|e| e.to_string())?
                .with_name("pneumotriage")
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|message| RuntimeError::Load { path: library.to_path_buf(), message: message.clone() })
}

pub use crate::domain::Device;

/// How sessions are made: `inference.threads`, `inference.device` and `inference.require_gpu`.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub threads: usize,
    pub device: Device,
    pub require_gpu: bool,
}

pub const CPU_PROVIDER: &str = "CPUExecutionProvider";

/// A loaded model: its manifest entry, an ONNX Runtime session and the execution provider it runs on.
pub struct Model {
    pub spec: ModelSpec,
    pub execution_provider: &'static str,
    /// The input's first dimension when it is not dynamic.
    fixed_batch: Option<usize>,
    /// Shared by the models [`Model::share`] makes; held for a run, not for the copies around it.
    session: Arc<Mutex<Session>>,
}

/// What a model made of some images: each one's probabilities, and how long its runs waited for
/// the session (another worker's batch on it), which is not the model's time.
pub struct Run {
    pub probabilities: Vec<Vec<f32>>,
    pub waited: Duration,
}

impl Model {
    /// Opens a model after checking its sha256, and its input and output against the manifest.
    pub fn open(
        library: &Path,
        manifest: &Manifest,
        role: Role,
        settings: SessionSettings,
    ) -> Result<Model, RuntimeError> {
        let spec = manifest.model(role).clone();
        let bytes = manifest.read_verified(&spec)?;
        let name = spec.name.clone();
        let env = environment(library)?;
        let (session, execution_provider) = session(env, &bytes, settings, &spec.name)?;
        check_shapes(&session, &spec).map_err(|message| RuntimeError::Shape { name, message })?;
        let first = session.inputs()[0].dtype().tensor_shape().and_then(|d| d.iter().next().copied());
        let fixed_batch = first.filter(|&n| n > 0).map(|n| n as usize);
        Ok(Model { spec, execution_provider, fixed_batch, session: Arc::new(Mutex::new(session)) })
    }

    /// The same model on the same session: what a GPU's second worker runs (its runs wait for
    /// the first's; one copy of the model on the device).
    pub fn share(&self) -> Model {
        Model {
            spec: self.spec.clone(),
            execution_provider: self.execution_provider,
            fixed_batch: self.fixed_batch,
            session: self.session.clone(),
        }
    }

    /// The input tensor's (channels, height, width).
    pub fn input_shape(&self) -> (usize, usize, usize) {
        (self.spec.channels as usize, self.spec.height as usize, self.spec.width as usize)
    }

    /// The batch a run of `n` images is padded to (with blank images): the fixed batch size, or
    /// on CUDA the next power of two, so that cuDNN meets only the shapes the warm-up searched.
    pub fn padded_batch(&self, n: usize) -> usize {
        match self.fixed_batch {
            Some(fixed) => fixed,
            None if self.execution_provider != CPU_PROVIDER => n.next_power_of_two(),
            None => n,
        }
    }

    /// [`Model::run`] with a staging buffer of its own, for one-off runs.
    pub fn probabilities(&self, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, RuntimeError> {
        Ok(self.run(inputs, &mut Vec::new())?.probabilities)
    }

    /// Runs images (each a (C, H, W) tensor) in as few runs as the model's batch dimension
    /// allows, and returns each image's probabilities: one value for a classifier, H x W values
    /// for a segmenter. The images are copied into `staging` (kept by the caller from batch to
    /// batch, so that a batch's 200 MB are not faulted in anew) on every core before the session
    /// is taken, and its output is read and made probabilities on every core after it is given
    /// back: a worker holds the session for the run alone.
    pub fn run(&self, inputs: &[&[f32]], staging: &mut Vec<f32>) -> Result<Run, RuntimeError> {
        let mut run = Run { probabilities: Vec::with_capacity(inputs.len()), waited: Duration::ZERO };
        for chunk in inputs.chunks(self.fixed_batch.unwrap_or(usize::MAX)) {
            let output = self.run_batch(chunk, staging, &mut run.waited)?;
            run.probabilities.extend(output);
        }
        Ok(run)
    }

    fn run_batch(
        &self,
        inputs: &[&[f32]],
        staging: &mut Vec<f32>,
        waited: &mut Duration,
    ) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let s = &self.spec;
        let fail = |source: ort::Error| RuntimeError::Session { name: s.name.clone(), source };
        let (c, h, w) = self.input_shape();
        let each = c * h * w;
        if let Some(wrong) = inputs.iter().find(|input| input.len() != each) {
            let message = format!("an input of {} values where {c}x{h}x{w} = {each} are expected", wrong.len());
            return Err(RuntimeError::Shape { name: s.name.clone(), message });
        }
        let batch = self.padded_batch(inputs.len());
        staging.resize(batch * each, 0.0);
        staging.par_chunks_mut(each).enumerate().for_each(|(i, slot)| match inputs.get(i) {
            Some(input) => slot.copy_from_slice(input),
            None => slot.fill(0.0),
        });
        let asked = Instant::now();
        let output = {
            let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
            *waited += asked.elapsed();
            let input = TensorRef::from_array_view(([batch, c, h, w], &staging[..])).map_err(fail)?;
            let mut outputs = session.run(ort::inputs![s.input.as_str() => input]).map_err(fail)?;
            outputs.remove(s.output.as_str()).ok_or_else(|| RuntimeError::Shape {
                name: s.name.clone(),
                message: format!("the run gave no output {}", s.output),
            })?
        };
        let (_, values) = output.try_extract_tensor::<f32>().map_err(fail)?;
        let per_image = values.len() / batch;
        let probabilities: Vec<Vec<f32>> = values
            .par_chunks_exact(per_image.max(1))
            .take(inputs.len())
            .map(|image| match s.output_kind {
                OutputKind::Probabilities => image.to_vec(),
                OutputKind::Logits => image.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
            })
            .collect();
        if probabilities.par_iter().any(|image| image.iter().any(|v| v.is_nan())) {
            return Err(RuntimeError::NotANumber { name: s.name.clone() });
        }
        Ok(probabilities)
    }
}

/// The session's one input and output are the manifest's, the input (batch, C, H, W).
fn check_shapes(session: &Session, s: &ModelSpec) -> Result<(), String> {
    let [input] = session.inputs() else { return Err("the model must have exactly one input".into()) };
    let [output] = session.outputs() else { return Err("the model must have exactly one output".into()) };
    if input.name() != s.input || output.name() != s.output {
        return Err(format!(
            "tensors are {} -> {}, the manifest says {} -> {}",
            input.name(),
            output.name(),
            s.input,
            s.output
        ));
    }
    let shape: Vec<i64> = input.dtype().tensor_shape().map(|d| d.iter().copied().collect()).unwrap_or_default();
    let expected = [s.channels as i64, s.height as i64, s.width as i64];
    if shape.len() != 4 || shape[1..] != expected {
        return Err(format!("input shape is {shape:?}, the manifest says (batch, {expected:?})"));
    }
    Ok(())
}

/// A session on the configured device. CUDA that cannot be used (a CPU-only library, no driver,
/// missing CUDA libraries) fails when `require_gpu` is set, else falls back to the CPU with a
/// warning: ONNX Runtime's own fallback is silent.
fn session(
    env: &Environment,
    model: &[u8],
    settings: SessionSettings,
    name: &str,
) -> Result<(Session, &'static str), RuntimeError> {
    let threads = settings.threads.max(1);
    if let Device::Cuda(id) = settings.device {
        let cuda = Session::builder(env)
            .and_then(|b| Ok(b.with_intra_threads(threads)?))
            .and_then(|b| {
                Ok(b.with_execution_providers([CUDA::default()
                    .with_device_id(i32::from(id))
                    // the fastest convolution for each shape, found once by the warm-up
                    .with_conv_algorithm_search(ConvAlgorithmSearch::Exhaustive)
                    .with_conv_max_workspace(true)
                    // grow the memory arena by what is asked, not by powers of two: a U-Net at
                    // 1024 with a batch would otherwise reserve gigabytes it never uses
                    .with_arena_extend_strategy(ArenaExtendStrategy::SameAsRequested)
                    .build()
                    .error_on_failure()])?)
            })
            .and_then(|mut b| b.commit_from_memory(model));
        match cuda {
            Ok(session) => return Ok((session, CUDA::NAME)),
            Err(source) if settings.require_gpu => {
                return Err(RuntimeError::GpuRequired { name: name.to_string(), device: id, source })
            }
            Err(e) => warn!(model = name, error = %e, "CUDA device {id} cannot be used; running on the CPU"),
        }
    }
    // ONNX Runtime's threads spin while waiting for work by default: right on cores of their
    // own, wrong beside the receiver, the senders and a batch's preparation
    let session = Session::builder(env)
        .and_then(|b| Ok(b.with_intra_threads(threads)?))
        .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
        .and_then(|mut b| b.commit_from_memory(model))
        .map_err(|source| RuntimeError::Session { name: name.to_string(), source })?;
    Ok((session, CPU_PROVIDER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_library_is_the_one_the_scripts_install() {
        let requirements = include_str!("../../tests/requirements.txt");
        let pin = format!("onnxruntime=={ONNXRUNTIME_VERSION}");
        assert!(requirements.lines().any(|l| l.trim() == pin), "tests/requirements.txt must pin {pin}");
    }
}
