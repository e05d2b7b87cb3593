//! Which backend runs a model, and where: the pipeline names a preference
//! per model, the device operator may override it for the whole host.

use super::SharedModel;
use super::tract::{TractGraph, TractLoadError};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// The backends a model can name: `backend = "tract"` in a pipeline.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendName {
    /// tract-onnx: in-process, pure Rust, every CPU.
    #[default]
    Tract,
    /// ONNX Runtime, loaded at run time from its shared library (CPU, or
    /// CUDA / TensorRT execution providers for `target = "gpu"`).
    Onnxruntime,
}

impl BackendName {
    /// The name as pipelines and the command line spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendName::Tract => "tract",
            BackendName::Onnxruntime => "onnxruntime",
        }
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tract" => Ok(BackendName::Tract),
            "onnxruntime" => Ok(BackendName::Onnxruntime),
            other => Err(format!(
                "unknown backend '{other}'; the backends are: tract, onnxruntime"
            )),
        }
    }
}

/// wasi-nn's `execution-target`: where a model should run. A pipeline gives
/// it per model (`target = "gpu"`); guests load models by name and never
/// choose.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionTarget {
    /// The CPU.
    #[default]
    Cpu,
    /// A GPU: ONNX Runtime's TensorRT or CUDA execution provider.
    Gpu,
    /// A tensor accelerator; no backend of this host serves one yet.
    Tpu,
}

impl ExecutionTarget {
    /// The name as pipelines spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionTarget::Cpu => "cpu",
            ExecutionTarget::Gpu => "gpu",
            ExecutionTarget::Tpu => "tpu",
        }
    }
}

impl fmt::Display for ExecutionTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a pipeline asks of one model's backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelSettings {
    /// The backend it names (the device may force another).
    pub backend: BackendName,
    /// Where it should run.
    pub target: ExecutionTarget,
    /// tract only: keep up to this many plans specialised to concrete input
    /// shapes (0: one symbolic plan for every shape). See
    /// [`TractGraph::load`](super::tract::TractGraph::load).
    pub specialize: usize,
}

/// The device operator's side of the backend choice.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// Run every model on this backend, whatever its pipeline names. The
    /// same signed bundle then runs on a device with or without ONNX
    /// Runtime. Forced onto tract, a model with a GPU target runs on the CPU.
    pub force: Option<BackendName>,
    /// The ONNX Runtime shared library. Unset: `$ORT_DYLIB_PATH`, else
    /// `libonnxruntime.so` beside the executable or on the loader's path.
    pub onnxruntime_library: Option<PathBuf>,
    /// Intra-op threads of each ONNX Runtime session. Unset: ONNX Runtime's
    /// default (one per physical core).
    pub onnxruntime_threads: Option<usize>,
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadModelError {
    /// tract could not parse, type or optimise the model.
    #[error("tract: {0}")]
    Tract(#[from] TractLoadError),
    /// ONNX Runtime could not be loaded, or could not load the model.
    #[error("onnxruntime: {0}")]
    Onnxruntime(String),
    /// The backend panicked while loading the model; the host carries on.
    #[error("{backend} panicked while loading the model: {message}")]
    Panicked {
        /// The backend.
        backend: BackendName,
        /// The panic's message.
        message: String,
    },
    /// This host was built without the backend.
    #[error(
        "the model asks for backend '{0}', which this outpost was built without; rebuild it with `--features {0}`, or run the model on tract with `--backend tract`"
    )]
    NotBuilt(BackendName),
    /// The backend cannot run anything on the target.
    #[error("backend '{backend}' cannot run on target '{target}': {hint}")]
    Target {
        /// The backend.
        backend: BackendName,
        /// The target the pipeline asked for.
        target: ExecutionTarget,
        /// What to do instead.
        hint: &'static str,
    },
}

/// Loads the ONNX model in `bytes`, which the pipeline calls `name`, on the
/// backend and target the pipeline asks for, unless `options` overrides the
/// backend. A panic inside the backend (a model it cannot digest) becomes
/// [`LoadModelError::Panicked`].
pub fn load_model(
    name: &str,
    bytes: &[u8],
    settings: ModelSettings,
    options: &BackendOptions,
) -> Result<SharedModel, LoadModelError> {
    let backend = options.force.unwrap_or(settings.backend);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load_unguarded(name, bytes, settings, options)
    }))
    .unwrap_or_else(|payload| {
        Err(LoadModelError::Panicked {
            backend,
            message: super::panic_message(payload.as_ref()),
        })
    })
}

fn load_unguarded(
    name: &str,
    bytes: &[u8],
    settings: ModelSettings,
    options: &BackendOptions,
) -> Result<SharedModel, LoadModelError> {
    let target = settings.target;
    match options.force.unwrap_or(settings.backend) {
        BackendName::Tract => {
            if target != ExecutionTarget::Cpu && options.force.is_none() {
                return Err(LoadModelError::Target {
                    backend: BackendName::Tract,
                    target,
                    hint: "tract runs on the CPU; set backend = \"onnxruntime\" for a GPU, or target = \"cpu\"",
                });
            }
            Ok(Arc::new(TractGraph::load(
                name,
                bytes,
                settings.specialize,
            )?))
        }
        BackendName::Onnxruntime => load_onnxruntime(name, bytes, target, options),
    }
}

#[cfg(feature = "onnxruntime")]
fn load_onnxruntime(
    name: &str,
    bytes: &[u8],
    target: ExecutionTarget,
    options: &BackendOptions,
) -> Result<SharedModel, LoadModelError> {
    let model = super::onnxruntime::OrtModel::load(name, bytes, target, options)
        .map_err(LoadModelError::Onnxruntime)?;
    Ok(Arc::new(model))
}

#[cfg(not(feature = "onnxruntime"))]
fn load_onnxruntime(
    _: &str,
    _: &[u8],
    _: ExecutionTarget,
    _: &BackendOptions,
) -> Result<SharedModel, LoadModelError> {
    Err(LoadModelError::NotBuilt(BackendName::Onnxruntime))
}
