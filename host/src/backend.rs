//! wasi-nn backends: how a preloaded model turns tensors into tensors.
//!
//! A backend loads a model once into something that implements [`Model`];
//! the host wraps it, per store, in the `wasmtime_wasi_nn::backend` traits so
//! that guests reach it through `load-by-name`. Everything common to all
//! backends lives here: matching inputs by name, checking them against the
//! model's signature before any backend sees them, execution contexts,
//! accounting of inference time, and keeping the backend's own error text.

pub mod kv;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
mod options;
pub mod tract;

pub use options::{
    BackendName, BackendOptions, ExecutionTarget, LoadModelError, ModelSettings, load_model,
};

use crate::bindings::{Dim, ElementType, TensorSpec};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime_wasi_nn::backend::{
    BackendError, BackendExecutionContext, BackendGraph, Id, NamedTensor,
};
use wasmtime_wasi_nn::wit::Tensor as NnTensor;
use wasmtime_wasi_nn::{ExecutionContext, Graph, GraphRegistry, Registry};

/// What a backend learned about a model when it loaded it.
#[derive(Clone, Debug)]
pub struct ModelSignature {
    /// The model's inputs, in the order the model declares them.
    pub inputs: Vec<TensorSpec>,
    /// The model's outputs, in the order the model declares them.
    pub outputs: Vec<TensorSpec>,
}

/// A model loaded by a backend, shared by every instance that may use it.
pub trait Model: Send + Sync {
    /// The name the pipeline gives the model.
    fn name(&self) -> &str;
    /// Its declared inputs and outputs.
    fn signature(&self) -> &ModelSignature;
    /// Which backend runs it and where, for people: `tract (cpu)`.
    fn describe(&self) -> String;
    /// Runs the model on inputs given in its declared order, each already
    /// checked against its declaration (type, rank, fixed and symbolic sizes,
    /// byte length); returns the outputs in their declared order.
    fn run(&self, inputs: Vec<NnTensor>) -> Result<Vec<NnTensor>, String>;

    /// Runs the model with some inputs given as values the backend keeps in
    /// its own form ([`Held`], e.g. a key/value cache) and returns each
    /// output as `wants` asks (by declared position; missing entries are
    /// [`Want::Bytes`]): held outputs are never copied to bytes, and of a
    /// [`Want::Last`] output only the last position is. Inputs come in
    /// declared order; the caller checked the ones given as bytes. Backends
    /// that cannot keep values refuse.
    fn run_held(
        &self,
        _inputs: Vec<RunInput<'_>>,
        _wants: &[Want],
    ) -> Result<Vec<RunOutput>, String> {
        Err(format!(
            "model '{}': {} cannot keep tensors between computes",
            self.name(),
            self.describe()
        ))
    }

    /// The key/value cache wrapper, when this model is one.
    fn kv(&self) -> Option<&kv::KvModel> {
        None
    }
}

/// A tensor a backend keeps in its own form between runs of one execution
/// context, e.g. one layer's key/value cache.
pub trait Held: Send + Sync {
    /// Its shape.
    fn dims(&self) -> Vec<usize>;
    /// The bytes its elements take.
    fn byte_len(&self) -> usize;
    /// For the backend that made it, to take it back.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// An input of [`Model::run_held`].
pub enum RunInput<'a> {
    /// Bytes, as tensors cross wasi-nn.
    Bytes(NnTensor),
    /// A value the same backend returned earlier.
    Held(&'a dyn Held),
}

/// How [`Model::run_held`] hands back one output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// As bytes, whole.
    Bytes,
    /// As bytes, only the last position along this axis, which becomes 1
    /// (`last_position`): the other positions are never copied out.
    Last(usize),
    /// Kept in the backend's form, as [`RunOutput::Held`].
    Held,
}

/// Where the last position along `axis` lies in a row-major tensor of
/// shape `dims` holding `len` elements: the element ranges that make it,
/// in order (one per index of the axes before `axis`), and the shape they
/// make (`axis` becomes 1).
pub fn last_position(
    dims: &[u32],
    axis: usize,
    len: usize,
) -> Result<(Vec<u32>, Vec<std::ops::Range<usize>>), String> {
    let positions = *dims
        .get(axis)
        .ok_or_else(|| format!("shape {dims:?} has no axis {axis}"))? as usize;
    if positions == 0 {
        return Err(format!("shape {dims:?} has no position along axis {axis}"));
    }
    let volume = dims
        .iter()
        .try_fold(1usize, |v, &d| v.checked_mul(d as usize))
        .ok_or_else(|| format!("shape {dims:?} is too large"))?;
    if volume != len {
        return Err(format!(
            "shape {dims:?} does not fit the {len} elements it came with"
        ));
    }
    let mut cut = dims.to_vec();
    cut[axis] = 1;
    // A batch of 0 has nothing to cut.
    let row: usize = dims[axis + 1..].iter().map(|&d| d as usize).product();
    let runs = (0..volume / (positions * row).max(1))
        .map(|outer| {
            let start = (outer * positions + positions - 1) * row;
            start..start + row
        })
        .collect();
    Ok((cut, runs))
}

/// An output of [`Model::run_held`].
pub enum RunOutput {
    /// Bytes, as tensors cross wasi-nn.
    Bytes(NnTensor),
    /// Kept in the backend's form.
    Held(Box<dyn Held>),
}

/// A loaded model as the host holds it.
pub type SharedModel = Arc<dyn Model>;

/// Why running a model failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelFailure {
    /// The inputs were wrong or the backend reported an error.
    Failed(String),
    /// The backend panicked; the panic was caught and the host carries on.
    Panicked {
        /// The model's name in the pipeline.
        model: String,
        /// The panic's message.
        message: String,
    },
}

impl ModelFailure {
    /// What went wrong, for people.
    pub fn message(&self) -> String {
        match self {
            ModelFailure::Failed(message) => message.clone(),
            ModelFailure::Panicked { model, message } => {
                format!("model '{model}': the backend panicked: {message}")
            }
        }
    }
}

impl From<String> for ModelFailure {
    fn from(message: String) -> Self {
        ModelFailure::Failed(message)
    }
}

impl std::fmt::Display for ModelFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// Runs `f`, a call into a backend for `model`, turning a panic into
/// [`ModelFailure::Panicked`]. Backends are large libraries fed with
/// tensors a stage chose; an input one of them does not expect must fail
/// that request, not the process. (Profiles keep `panic = "unwind"` for
/// this; see the workspace's Cargo.toml.)
pub fn catch_panic<T>(
    model: &str,
    doing: &str,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, ModelFailure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(ModelFailure::Failed),
        Err(payload) => Err(ModelFailure::Panicked {
            model: model.to_owned(),
            message: format!("{} (while {doing})", panic_message(payload.as_ref())),
        }),
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

impl dyn Model {
    /// Runs the model on `inputs`, matched to its inputs by name, and returns
    /// every output under its declared name.
    pub fn compute(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, ModelFailure> {
        let ordered = order_inputs(self.name(), &self.signature().inputs, inputs)?;
        self.run_ordered(ordered)
    }

    /// What a compute on `inputs` will make, as far as the input shapes
    /// tell, before anything runs: a stage asking for outputs it may not
    /// hold is refused before the backend allocates them. `None` for inputs
    /// the compute will refuse anyway (it says why).
    pub fn predicted(&self, inputs: &[NamedTensor]) -> Option<Predicted> {
        let signature = self.signature();
        let symbols = check_named(self.name(), &signature.inputs, inputs).ok()?;
        Some(Predicted {
            outputs: output_bytes(&signature.outputs, &symbols),
            tensors: signature.outputs.len(),
            cache: None,
        })
    }

    /// Checks inputs given in the model's declared order, runs the model,
    /// and names its outputs.
    ///
    /// A panic inside the backend does not unwind into the caller: it comes
    /// back as [`ModelFailure::Panicked`]. What a backend keeps between runs
    /// stays sound: tract's execution state of the run that panicked is
    /// dropped with the unwinding, never pooled again; ONNX Runtime keeps
    /// its run state in C++, which Rust panics do not reach, and its session
    /// lock is taken past poisoning.
    pub fn run_ordered(&self, inputs: Vec<NnTensor>) -> Result<Vec<NamedTensor>, ModelFailure> {
        let signature = self.signature();
        let mut symbols: HashMap<&str, u32> = HashMap::new();
        for (spec, tensor) in signature.inputs.iter().zip(&inputs) {
            check_input(self.name(), spec, tensor, &mut symbols)?;
        }
        let outputs = catch_panic(self.name(), "computing", || self.run(inputs))?;
        if outputs.len() != signature.outputs.len() {
            return Err(format!(
                "model '{}' returned {} outputs but declares {}",
                self.name(),
                outputs.len(),
                signature.outputs.len()
            )
            .into());
        }
        Ok(outputs
            .into_iter()
            .zip(&signature.outputs)
            .map(|(tensor, spec)| NamedTensor {
                name: spec.name.clone(),
                tensor,
            })
            .collect())
    }
}

/// What a compute will make, predicted from its input shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Predicted {
    /// Bytes of the outputs the stage receives, their shapes included.
    pub outputs: usize,
    /// How many outputs.
    pub tensors: usize,
    /// Bytes of the key/value cache after the compute, for a model with one.
    pub cache: Option<usize>,
}

/// Bytes the outputs in `specs` will take (data and shape), from the sizes
/// `symbols` binds: outputs with a dimension no input fixes (a size only
/// the run decides) count only their shape.
fn output_bytes(specs: &[TensorSpec], symbols: &HashMap<&str, u32>) -> usize {
    specs
        .iter()
        .map(|spec| {
            let rank = spec.dims.as_ref().map_or(0, Vec::len);
            let data = spec.element_type.and_then(|ty| {
                spec.dims.as_ref()?.iter().try_fold(ty.size(), |n, dim| {
                    let d = match dim {
                        Dim::Fixed(d) => *d as usize,
                        Dim::Symbol(s) => size_of_dim(s, symbols)?,
                    };
                    Some(n.saturating_mul(d))
                })
            });
            data.unwrap_or(0).saturating_add(4 * rank)
        })
        .fold(0, usize::saturating_add)
}

/// The size of a symbolic dimension: a symbol, or sums and products of
/// symbols and integers as tract writes them (`seq+past`, `3*seq`); `None`
/// for anything else.
fn size_of_dim(dim: &str, symbols: &HashMap<&str, u32>) -> Option<usize> {
    dim.split('+').try_fold(0usize, |sum, term| {
        let product = term.split('*').try_fold(1usize, |product, factor| {
            let factor = factor.trim();
            let value = match factor.parse::<usize>() {
                Ok(n) => n,
                Err(_) => *symbols.get(factor)? as usize,
            };
            Some(product.saturating_mul(value))
        })?;
        Some(sum.saturating_add(product))
    })
}

/// The checks a compute makes on `inputs` (matched to `specs` by name),
/// without running anything; the sizes they give the symbolic dimensions.
fn check_named<'a>(
    model: &str,
    specs: &'a [TensorSpec],
    inputs: &[NamedTensor],
) -> Result<HashMap<&'a str, u32>, String> {
    let mut symbols = HashMap::new();
    for spec in specs {
        let input = inputs
            .iter()
            .find(|i| i.name == spec.name)
            .ok_or_else(|| format!("model '{model}' needs input '{}'", spec.name))?;
        check_input(model, spec, &input.tensor, &mut symbols)?;
    }
    if inputs.len() != specs.len() {
        return Err(format!("model '{model}' was given inputs it does not take"));
    }
    Ok(symbols)
}

/// `inputs` in the order of `specs`, matched by name; every one needed, no
/// other.
fn order_inputs(
    model: &str,
    specs: &[TensorSpec],
    inputs: Vec<NamedTensor>,
) -> Result<Vec<NnTensor>, ModelFailure> {
    let mut by_name: HashMap<String, NnTensor> =
        inputs.into_iter().map(|t| (t.name, t.tensor)).collect();
    let mut ordered = Vec::with_capacity(specs.len());
    for spec in specs {
        let tensor = by_name.remove(&spec.name).ok_or_else(|| {
            ModelFailure::from(format!(
                "model '{model}' needs input '{}' ({}), which was not given",
                spec.name,
                spec.shape_string()
            ))
        })?;
        ordered.push(tensor);
    }
    if let Some(extra) = by_name.keys().next() {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "model '{model}' has no input '{extra}'; its inputs are: {}",
            names.join(", ")
        )
        .into());
    }
    Ok(ordered)
}

/// Element type, rank, fixed sizes, consistent symbolic sizes, and a byte
/// length that matches the shape.
fn check_input<'a>(
    model: &str,
    spec: &'a TensorSpec,
    tensor: &NnTensor,
    symbols: &mut HashMap<&'a str, u32>,
) -> Result<(), String> {
    let ty = ElementType::from_nn(tensor.ty);
    // Only a failing check pays for the message.
    let wrong = |why: String| {
        format!(
            "model '{model}' input '{}' expects {} but got {ty}{:?}: {why}",
            spec.name,
            spec.shape_string(),
            tensor.dimensions
        )
    };
    if let Some(expected) = spec.element_type
        && expected.to_nn() != Some(tensor.ty)
    {
        return Err(wrong(format!("element type {ty} is not {expected}")));
    }
    let bytes =
        crate::tensor::element_count(&tensor.dimensions).and_then(|n| n.checked_mul(ty.size()));
    if bytes != Some(tensor.data.len()) {
        return Err(wrong(format!(
            "the shape needs {} bytes but the tensor carries {}",
            bytes.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
            tensor.data.len()
        )));
    }
    let Some(dims) = &spec.dims else {
        return Ok(());
    };
    if dims.len() != tensor.dimensions.len() {
        return Err(wrong(format!(
            "rank {} is not {}",
            tensor.dimensions.len(),
            dims.len()
        )));
    }
    for (i, (dim, &size)) in dims.iter().zip(&tensor.dimensions).enumerate() {
        match dim {
            Dim::Fixed(n) if *n != size => {
                return Err(wrong(format!("dimension {i} must be {n}")));
            }
            Dim::Symbol(s) => match symbols.get(s.as_str()) {
                Some(&bound) if bound != size => {
                    return Err(wrong(format!(
                        "dimension {i} ({s}) is {size} but another input has {s} = {bound}"
                    )));
                }
                _ => {
                    symbols.insert(s.as_str(), size);
                }
            },
            Dim::Fixed(_) => {}
        }
    }
    Ok(())
}

/// What one store's inference did during the current call: the backend's
/// last failure in its own words, and the time spent inside models.
///
/// wasi-nn hands guests a generic "failed while accessing backend"; the host
/// keeps the backend's message here so the error it reports names what was
/// wrong. Time inside a model is counted apart from the stage's own time:
/// it has its own deadline, and it does not eat the stage's.
#[derive(Clone, Default)]
pub struct Diagnostics(Arc<Mutex<NnState>>);

#[derive(Default)]
struct NnState {
    last_error: Option<String>,
    panicked: Option<(String, String)>,
    inference_time: Duration,
    runtime_time: Duration,
    inference_limit: Option<Duration>,
    inference_timed_out: bool,
}

impl Diagnostics {
    /// Accounting whose calls may spend at most `limit` inside models.
    pub fn with_inference_limit(limit: Duration) -> Self {
        let d = Self::default();
        d.with(|s| s.inference_limit = Some(limit));
        d
    }

    fn with<R>(&self, f: impl FnOnce(&mut NnState) -> R) -> R {
        // A panic while holding the lock leaves plain data behind; use it.
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut state)
    }

    /// Remembers `message` as the latest failure.
    pub fn record(&self, message: String) {
        self.with(|s| s.last_error = Some(message));
    }

    /// Remembers a failed model run: its message, and the model and panic
    /// message if the backend panicked.
    pub fn record_failure(&self, failure: &ModelFailure) {
        self.with(|s| {
            s.last_error = Some(failure.message());
            if let ModelFailure::Panicked { model, message } = failure {
                s.panicked = Some((model.clone(), message.clone()));
            }
        });
    }

    /// The model whose backend panicked during the current call, and the
    /// panic's message.
    pub fn panicked(&self) -> Option<(String, String)> {
        self.with(|s| s.panicked.clone())
    }

    /// Takes the latest failure, leaving none.
    pub fn take(&self) -> Option<String> {
        self.with(|s| s.last_error.take())
    }

    /// Adds time spent in a model; fails, naming the limit, once the call's
    /// total passes it.
    pub fn add_inference(&self, elapsed: Duration) -> Result<(), String> {
        self.with(|s| {
            s.inference_time += elapsed;
            match s.inference_limit {
                Some(limit) if s.inference_time > limit => {
                    s.inference_timed_out = true;
                    Err(format!(
                        "inference took {} ms in this call, over its limit of {} ms (limits.inference_timeout_ms)",
                        s.inference_time.as_millis(),
                        limit.as_millis()
                    ))
                }
                _ => Ok(()),
            }
        })
    }

    /// Runs `f` against a model, counting its time as inference, and records
    /// how it failed, if it did.
    pub fn timed<T>(&self, f: impl FnOnce() -> Result<T, ModelFailure>) -> Result<T, String> {
        WAITED.with(|w| w.set(Duration::ZERO));
        IN_RUNTIME.with(|r| r.set(Duration::ZERO));
        let started = Instant::now();
        let result = f();
        let in_runtime = IN_RUNTIME.with(std::cell::Cell::get);
        self.with(|s| s.runtime_time += in_runtime);
        // Waiting for a model another request is using is not inference:
        // under load it would otherwise turn into InferenceTimeout.
        let computing = started
            .elapsed()
            .saturating_sub(WAITED.with(std::cell::Cell::get));
        if let Err(over) = self.add_inference(computing) {
            self.record(over.clone());
            return Err(over);
        }
        result.map_err(|failure| {
            self.record_failure(&failure);
            failure.message()
        })
    }

    /// Time spent in models during the current call.
    pub fn inference_time(&self) -> Duration {
        self.with(|s| s.inference_time)
    }

    /// Of [`inference_time`](Self::inference_time), the time inside the
    /// runtimes themselves (tract's plans, ONNX Runtime's sessions): the
    /// rest went to the host's conversions and checks around them.
    pub fn runtime_time(&self) -> Duration {
        self.with(|s| s.runtime_time)
    }

    /// Whether the current call went over its inference limit.
    pub fn inference_timed_out(&self) -> bool {
        self.with(|s| s.inference_timed_out)
    }

    /// Starts a new call: no failure, no inference time.
    pub fn reset(&self) {
        self.with(|s| {
            s.last_error = None;
            s.panicked = None;
            s.inference_time = Duration::ZERO;
            s.runtime_time = Duration::ZERO;
            s.inference_timed_out = false;
        });
    }
}

thread_local! {
    /// Time the current model call spent waiting for a shared backend
    /// resource (an ONNX Runtime session another request holds).
    static WAITED: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

thread_local! {
    /// Time the current model call spent inside the runtime itself.
    static IN_RUNTIME: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// Runs `f`, the runtime's own work (a plan or a session run), counting its
/// time apart from the host's conversions around it.
pub(crate) fn in_runtime<T>(f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let result = f();
    let took = started.elapsed();
    IN_RUNTIME.with(|r| r.set(r.get() + took));
    result
}

/// Called by a backend on the thread running a model: `waited` of the call
/// went to waiting for another request, not to computing.
#[cfg_attr(not(feature = "onnxruntime"), allow(dead_code))]
pub(crate) fn note_wait(waited: Duration) {
    WAITED.with(|w| w.set(w.get() + waited));
}

/// The wasi-nn registry of one store: exactly the models its code was
/// granted, under the names the pipeline gives them.
pub fn granted_models(models: &[(String, SharedModel)], diagnostics: &Diagnostics) -> Registry {
    let graphs = models
        .iter()
        .map(|(name, model)| {
            let graph: Box<dyn BackendGraph> = Box::new(NnGraph {
                model: model.clone(),
                diagnostics: diagnostics.clone(),
            });
            (name.clone(), Graph::from(graph))
        })
        .collect();
    Registry::from(GrantedModels(graphs))
}

struct GrantedModels(HashMap<String, Graph>);

impl GraphRegistry for GrantedModels {
    fn get(&self, name: &str) -> Option<&Graph> {
        self.0.get(name)
    }
    fn get_mut(&mut self, name: &str) -> Option<&mut Graph> {
        self.0.get_mut(name)
    }
}

/// The graph handed to one store's wasi-nn: a shared model plus that
/// store's [`Diagnostics`].
struct NnGraph {
    model: SharedModel,
    diagnostics: Diagnostics,
}

impl BackendGraph for NnGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let n = self.model.signature().inputs.len();
        let context: Box<dyn BackendExecutionContext> = Box::new(NnContext {
            model: self.model.clone(),
            diagnostics: self.diagnostics.clone(),
            inputs: vec![None; n],
            outputs: Vec::new(),
        });
        Ok(ExecutionContext::from(context))
    }
}

/// One execution context: inputs set by index or name (witx) or passed to
/// `compute` by name (WIT).
struct NnContext {
    model: SharedModel,
    diagnostics: Diagnostics,
    inputs: Vec<Option<NnTensor>>,
    outputs: Vec<NamedTensor>,
}

impl NnContext {
    fn fail(&self, message: String) -> BackendError {
        self.diagnostics.record(message.clone());
        BackendError::BackendAccess(wasmtime::Error::msg(message))
    }

    fn index_of(&self, id: &Id, specs: &[TensorSpec], what: &str) -> Result<usize, BackendError> {
        match id {
            Id::Index(i) if (*i as usize) < specs.len() => Ok(*i as usize),
            Id::Name(n) => specs.iter().position(|s| &s.name == n).ok_or_else(|| {
                self.fail(format!(
                    "model '{}' has no {what} named '{n}'",
                    self.model.name()
                ))
            }),
            Id::Index(i) => Err(self.fail(format!(
                "model '{}' has {} {what}s; index {i} is out of range",
                self.model.name(),
                specs.len()
            ))),
        }
    }

    /// Runs `f` against the model, counting its time as inference.
    fn timed<T>(&self, f: impl FnOnce() -> Result<T, ModelFailure>) -> Result<T, BackendError> {
        self.diagnostics
            .timed(f)
            .map_err(|e| BackendError::BackendAccess(wasmtime::Error::msg(e)))
    }
}

impl BackendExecutionContext for NnContext {
    fn set_input(&mut self, id: Id, tensor: &NnTensor) -> Result<(), BackendError> {
        let i = self.index_of(&id, &self.model.signature().inputs, "input")?;
        self.inputs[i] = Some(tensor.clone());
        Ok(())
    }

    fn get_output(&mut self, id: Id) -> Result<NnTensor, BackendError> {
        let i = self.index_of(&id, &self.model.signature().outputs, "output")?;
        self.outputs
            .get(i)
            .map(|t| t.tensor.clone())
            .ok_or_else(|| {
                self.fail(format!(
                    "model '{}': call compute before reading outputs",
                    self.model.name()
                ))
            })
    }

    fn compute(
        &mut self,
        inputs: Option<Vec<NamedTensor>>,
    ) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        match inputs {
            Some(named) => self.timed(|| self.model.compute(named)).map(Some),
            None => {
                let mut ordered = Vec::with_capacity(self.inputs.len());
                // Inputs stay set: a witx program may compute again.
                for (i, slot) in self.inputs.iter().enumerate() {
                    match slot {
                        Some(t) => ordered.push(t.clone()),
                        None => {
                            let name = &self.model.signature().inputs[i].name;
                            return Err(self.fail(format!(
                                "model '{}': input {i} ('{name}') was not set",
                                self.model.name()
                            )));
                        }
                    }
                }
                self.outputs = self.timed(|| self.model.run_ordered(ordered))?;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn symbolic_output_sizes_are_read_as_tract_and_onnx_write_them() {
        let symbols: HashMap<&str, u32> = [("batch", 2), ("seq", 3), ("past", 5)].into();
        let size = |d: &str| size_of_dim(d, &symbols);
        assert_eq!(size("seq"), Some(3));
        assert_eq!(size("seq+past"), Some(8));
        assert_eq!(size("3*seq"), Some(9));
        assert_eq!(size("2*seq+past+1"), Some(12));
        // What it cannot read counts nothing rather than a guess.
        assert_eq!(size("total"), None);
        assert_eq!(size("seq-1"), None);
        assert_eq!(size("(seq+past)/2"), None);
        let spec = |name: &str, dims: &[&str]| TensorSpec {
            name: name.into(),
            element_type: Some(ElementType::F32),
            dims: Some(
                dims.iter()
                    .map(|d| match d.parse() {
                        Ok(n) => Dim::Fixed(n),
                        Err(_) => Dim::Symbol((*d).into()),
                    })
                    .collect(),
            ),
        };
        let outputs = [
            spec("present", &["batch", "2", "seq+past", "4"]),
            spec("unknown", &["batch", "nonzero"]),
        ];
        // Data and shapes; the unknown one only its shape.
        assert_eq!(output_bytes(&outputs, &symbols), 2 * 2 * 8 * 4 * 4 + 16 + 8);
    }

    /// Time a backend spends waiting for a model another request holds (an
    /// ONNX Runtime session) is not inference: under load it would turn
    /// into InferenceTimeout.
    #[test]
    fn waiting_for_a_shared_model_is_not_inference_time() {
        let d = Diagnostics::with_inference_limit(Duration::from_millis(40));
        let result = d.timed(|| {
            note_wait(Duration::from_millis(60));
            std::thread::sleep(Duration::from_millis(70));
            Ok(())
        });
        assert!(result.is_ok(), "{result:?}");
        assert!(d.inference_time() < Duration::from_millis(40));
        assert!(d.inference_time() >= Duration::from_millis(10));
        // Without a wait the same call is over the limit.
        let e = d.timed(|| {
            std::thread::sleep(Duration::from_millis(50));
            Ok(())
        });
        assert!(e.unwrap_err().contains("over its limit of 40 ms"));
    }

    #[test]
    fn time_inside_the_runtime_is_counted_apart_from_the_hosts_work() {
        let d = Diagnostics::default();
        d.timed(|| {
            std::thread::sleep(Duration::from_millis(20));
            in_runtime(|| std::thread::sleep(Duration::from_millis(30)));
            Ok(())
        })
        .unwrap();
        assert!(d.runtime_time() >= Duration::from_millis(30));
        assert!(d.inference_time() >= d.runtime_time() + Duration::from_millis(20));
        // A second model call in the same stage call adds to both.
        d.timed(|| {
            in_runtime(|| std::thread::sleep(Duration::from_millis(10)));
            Ok(())
        })
        .unwrap();
        assert!(d.runtime_time() >= Duration::from_millis(40));
        // Time in the runtime outside a model call counts nowhere.
        in_runtime(|| std::thread::sleep(Duration::from_millis(10)));
        let before = d.runtime_time();
        d.timed(|| Ok(())).unwrap();
        assert_eq!(d.runtime_time(), before);
        d.reset();
        assert_eq!(d.runtime_time(), Duration::ZERO);
    }

    #[test]
    fn the_last_position_is_found_per_sequence_and_shapes_are_checked() {
        // [2 sequences, 3 positions, 2 values]: rows 2 and 5 are the last.
        let (dims, runs) = last_position(&[2, 3, 2], 1, 12).unwrap();
        assert_eq!(dims, [2, 1, 2]);
        assert_eq!(runs, [4..6, 10..12]);
        // The last axis: one element per sequence.
        let (dims, runs) = last_position(&[2, 3], 1, 6).unwrap();
        assert_eq!((dims, runs), (vec![2, 1], vec![2..3, 5..6]));
        // The first axis: one run of everything after it.
        let (dims, runs) = last_position(&[3, 2], 0, 6).unwrap();
        assert_eq!(dims, [1, 2]);
        assert_eq!(runs, std::iter::once(4..6).collect::<Vec<_>>());
        // A batch of 0 cuts to nothing.
        let (dims, runs) = last_position(&[0, 3, 2], 1, 0).unwrap();
        assert_eq!((dims, runs), (vec![0, 1, 2], vec![]));
        let wrong = |dims: &[u32], axis, len| last_position(dims, axis, len).unwrap_err();
        assert!(wrong(&[2, 3], 2, 6).contains("has no axis 2"));
        assert!(wrong(&[2, 0, 4], 1, 0).contains("no position along axis 1"));
        assert!(wrong(&[2, 3, 2], 1, 11).contains("does not fit the 11 elements"));
        assert!(wrong(&[u32::MAX, u32::MAX, u32::MAX], 1, 1).contains("too large"));
    }
}
