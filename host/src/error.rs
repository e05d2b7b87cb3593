//! The ways loading or running a pipeline can fail.

use crate::bindings::ErrorKind;
use std::fmt;
use std::path::PathBuf;

/// A failure of one stage while a pipeline runs. Every variant names the
/// pipeline and the stage; the host discards the instance that failed (except
/// after [`StageError::Reported`], where the stage itself is sound) and keeps
/// serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// The stage returned an error of its own.
    #[error("pipeline '{pipeline}', stage '{stage}': {kind}: {message}")]
    Reported {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// What kind of error the stage reported.
        kind: ErrorKind,
        /// The stage's message, with the backend's own words appended when
        /// inference failed.
        message: String,
    },
    /// The stage trapped: a panic, an out-of-bounds access, a stack overflow.
    #[error("pipeline '{pipeline}', stage '{stage}' trapped: {trap}")]
    Trap {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// The trap code or message.
        trap: String,
        /// The Wasm backtrace, when one was captured.
        backtrace: Option<String>,
    },
    /// The stage ran past its wall-clock deadline.
    #[error(
        "pipeline '{pipeline}', stage '{stage}' timed out after {limit_ms} ms (limits.timeout_ms)"
    )]
    Timeout {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// The deadline.
        limit_ms: u64,
    },
    /// The stage tried to grow its memory past its limit, or to hold more
    /// wasi-nn tensors, contexts and outputs in the host than it may.
    #[error(
        "pipeline '{pipeline}', stage '{stage}' exceeded its memory limit of {limit_mib} MiB: {detail}"
    )]
    MemoryLimit {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// The limit that was hit.
        limit_mib: u64,
        /// Which memory: its linear memory (`limits.memory_mib`) or what it
        /// holds through wasi-nn in the host (`limits.nn_memory_mib`,
        /// `limits.nn_resources`).
        detail: String,
    },
    /// The backend panicked while running a model for the stage. The panic
    /// was caught: the request fails, the host and the model carry on.
    #[error(
        "pipeline '{pipeline}', stage '{stage}': inference failed: model '{model}': the backend panicked: {message}"
    )]
    BackendPanic {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// The model's name in the pipeline.
        model: String,
        /// The panic's message.
        message: String,
    },
    /// The stage returned tensors that are not what it declared, or whose
    /// bytes do not match their shape.
    #[error("pipeline '{pipeline}', stage '{stage}' returned a bad output: {message}")]
    BadOutput {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// What was wrong.
        message: String,
    },
    /// The stage used up its fuel (`limits.fuel`), a deterministic CPU budget.
    #[error("pipeline '{pipeline}', stage '{stage}' ran out of fuel ({limit} units, limits.fuel)")]
    OutOfFuel {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// The budget.
        limit: u64,
    },
    /// The stage returned more tensor bytes than it may.
    #[error(
        "pipeline '{pipeline}', stage '{stage}' returned {size} bytes of tensors, over its limit of {limit} (limits.max_output_mib)"
    )]
    OutputTooLarge {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// What it returned.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// Time inside a model went past the stage's inference deadline.
    #[error(
        "pipeline '{pipeline}', stage '{stage}': inference ran past its {limit_ms} ms deadline (limits.inference_timeout_ms)"
    )]
    InferenceTimeout {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// The deadline.
        limit_ms: u64,
    },
    /// The stage failed after the host refused it something it was not
    /// granted.
    #[error("pipeline '{pipeline}', stage '{stage}': capability denied: {message}")]
    CapabilityDenied {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// What was refused and which grant would allow it, then how the
        /// stage failed.
        message: String,
    },
    /// The request's deadline passed while the stage ran. The instance is
    /// dropped (it was interrupted), the host carries on.
    #[error("pipeline '{pipeline}', stage '{stage}': the request's deadline passed")]
    DeadlineExceeded {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
    },
    /// A streaming request's stage went longer than the token deadline
    /// between two partial outputs. The instance is dropped (it was
    /// interrupted), the host carries on.
    #[error(
        "pipeline '{pipeline}', stage '{stage}': no partial output within the token deadline of {limit_ms} ms since the last one (the server's token_deadline_ms, under [requests] or [pipelines.NAME])"
    )]
    TokenDeadline {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// The longest gap allowed between two partial outputs.
        limit_ms: u64,
    },
    /// The pooling allocator's instances are all in use: the host's
    /// capacity, not the stage, is at fault.
    #[error(
        "pipeline '{pipeline}', stage '{stage}': the instance pool is full ({message}); raise engine.pool_instances or lower requests.concurrency"
    )]
    PoolExhausted {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// What wasmtime reported.
        message: String,
    },
    /// A fresh instance of the stage could not be created.
    #[error("pipeline '{pipeline}', stage '{stage}' could not be instantiated: {message}")]
    Instantiate {
        /// The pipeline's name.
        pipeline: String,
        /// The stage's name.
        stage: String,
        /// Why.
        message: String,
    },
}

impl StageError {
    /// The variant's name (`Trap`, `MemoryLimit`, ...; a reported error
    /// adds its kind: `Reported(invalid input)` is `InvalidInput`): what
    /// services report and count failures by.
    pub fn kind(&self) -> &'static str {
        match self {
            StageError::Reported { kind, .. } => match kind {
                ErrorKind::InvalidConfig => "InvalidConfig",
                ErrorKind::InvalidInput => "InvalidInput",
                ErrorKind::Inference => "Inference",
                ErrorKind::Internal => "Internal",
            },
            StageError::Trap { .. } => "Trap",
            StageError::Timeout { .. } => "Timeout",
            StageError::MemoryLimit { .. } => "MemoryLimit",
            StageError::BackendPanic { .. } => "BackendPanic",
            StageError::BadOutput { .. } => "BadOutput",
            StageError::OutOfFuel { .. } => "OutOfFuel",
            StageError::OutputTooLarge { .. } => "OutputTooLarge",
            StageError::InferenceTimeout { .. } => "InferenceTimeout",
            StageError::CapabilityDenied { .. } => "CapabilityDenied",
            StageError::DeadlineExceeded { .. } => "DeadlineExceeded",
            StageError::TokenDeadline { .. } => "TokenDeadline",
            StageError::Instantiate { .. } => "Instantiate",
            StageError::PoolExhausted { .. } => "PoolExhausted",
        }
    }

    /// The Wasm backtrace of a trap, for `-v` output.
    pub fn backtrace(&self) -> Option<&str> {
        match self {
            StageError::Trap { backtrace, .. } => backtrace.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::InvalidConfig => "invalid config",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Inference => "inference failed",
            ErrorKind::Internal => "internal error",
        })
    }
}

/// A pipeline that cannot be loaded: the file, a model, a component, or a
/// stage's declared tensors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The pipeline file is not valid TOML or does not follow the schema.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The pipeline file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The pipeline file parses but says something impossible.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The pipeline file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A model could not be loaded by its backend.
    #[error("model '{model}' ({}): {message}", path.display())]
    Model {
        /// The model's name in the pipeline.
        model: String,
        /// Its file.
        path: PathBuf,
        /// Why it could not be loaded.
        message: String,
    },
    /// A stage's component could not be compiled or linked.
    #[error("stage '{stage}' ({}): {message}", path.display())]
    Component {
        /// The stage's name.
        stage: String,
        /// Its component file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A stage failed while the pipeline was being prepared (in `init` or
    /// `describe`).
    #[error(transparent)]
    Stage(#[from] StageError),
    /// A bundle's blob failed its check.
    #[error(transparent)]
    Bundle(#[from] outpost_signing::Error),
}

/// A request that did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The request's tensors are not what the pipeline takes.
    #[error("pipeline '{pipeline}': bad request: {message}")]
    Input {
        /// The pipeline's name.
        pipeline: String,
        /// What was wrong.
        message: String,
    },
    /// The request's deadline passed between stages.
    #[error("pipeline '{pipeline}': the request's deadline passed before stage '{stage}'")]
    DeadlineExceeded {
        /// The pipeline's name.
        pipeline: String,
        /// The stage that was next.
        stage: String,
    },
    /// A stage failed.
    #[error(transparent)]
    Stage(#[from] StageError),
}

impl RunError {
    /// Whether the request's deadline is what failed it.
    pub fn is_deadline(&self) -> bool {
        matches!(
            self,
            RunError::DeadlineExceeded { .. }
                | RunError::Stage(
                    StageError::DeadlineExceeded { .. } | StageError::TokenDeadline { .. }
                )
        )
    }
}
