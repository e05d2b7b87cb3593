//! The native backend: ONNX Runtime, loaded at run time from its shared
//! library, so building Outpost downloads nothing and a device without the
//! library still runs every tract pipeline.
//!
//! The library comes from [`BackendOptions::onnxruntime_library`], else
//! `$ORT_DYLIB_PATH`, else `libonnxruntime.so` beside the executable or on
//! the loader's path; one library per process. A model's target picks the
//! execution providers: `cpu` runs on ONNX Runtime's CPU provider; `gpu`
//! registers TensorRT and CUDA, each when the library has it, and fails when
//! neither can be registered.

use super::{
    BackendOptions, ExecutionTarget, Held, Model, ModelSignature, RunInput, RunOutput, Want,
    last_position,
};
use crate::bindings::{Dim, ElementType, TensorSpec};
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::SessionBuilder;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor, TensorElementType, ValueType};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use wasmtime_wasi_nn::wit::Tensor as NnTensor;

const HINT: &str = "install ONNX Runtime's shared library (`python3 host/onnxruntime/fetch.py DIR` extracts a pinned, checked one) and pass `--onnxruntime-lib PATH` or set ORT_DYLIB_PATH";

/// The loaded library: one per process.
struct Library {
    path: PathBuf,
    environment: Environment,
}

static LIBRARY: Mutex<Option<Arc<Library>>> = Mutex::new(None);

fn library(options: &BackendOptions) -> Result<Arc<Library>, String> {
    let mut slot = LIBRARY.lock().unwrap_or_else(PoisonError::into_inner);
    let wanted = options
        .onnxruntime_library
        .clone()
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"));
    if let Some(loaded) = &*slot {
        if options.onnxruntime_library.is_some() && loaded.path != wanted {
            return Err(format!(
                "ONNX Runtime is already loaded from {} in this process and cannot be swapped for {}",
                loaded.path.display(),
                wanted.display()
            ));
        }
        return Ok(loaded.clone());
    }
    let builder = ort::init_from(&wanted).map_err(|e| format!("{e}; {HINT}"))?;
    let environment = builder
        .with_name("outpost")
        .with_telemetry(false)
        .build()
        .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", wanted.display()))?;
    let loaded = Arc::new(Library {
        path: wanted,
        environment,
    });
    *slot = Some(loaded.clone());
    Ok(loaded)
}

/// A session builder on the library this process uses for the backend
/// (loading it as [`OrtModel::load`] would): for tools and benchmarks that
/// want plain ONNX Runtime sessions beside the host's. ONNX Runtime allows
/// one environment per process, so they must share the host's.
pub fn session_builder(options: &BackendOptions) -> Result<SessionBuilder, String> {
    let library = library(options)?;
    Session::builder(&library.environment).map_err(|e| e.to_string())
}

/// The execution providers the loaded library was built with, of those
/// Outpost knows how to use.
fn available_providers() -> Vec<&'static str> {
    let known: [(&str, ort::Result<bool>); 3] = [
        (ep::CPU::NAME, ep::CPU::is_available()),
        (ep::CUDA::NAME, ep::CUDA::is_available()),
        (ep::TensorRT::NAME, ep::TensorRT::is_available()),
    ];
    known
        .into_iter()
        .filter(|(_, available)| matches!(available, Ok(true)))
        .map(|(name, _)| name)
        .collect()
}

/// Registers provider `E` when the library has it, noting what took and why
/// what did not.
fn try_register<E: ExecutionProvider + Default>(
    builder: &mut SessionBuilder,
    registered: &mut Vec<&'static str>,
    failures: &mut Vec<String>,
) {
    match E::is_available().and_then(|available| {
        if available {
            E::default().register(builder).map(|()| true)
        } else {
            Ok(false)
        }
    }) {
        Ok(true) => registered.push(E::NAME),
        Ok(false) => {}
        Err(e) => failures.push(format!("{}: {e}", E::NAME)),
    }
}

/// Registers TensorRT then CUDA, each when the library has it; at least one
/// must take.
fn register_gpu(
    builder: &mut SessionBuilder,
    library: &Library,
) -> Result<Vec<&'static str>, String> {
    let (mut registered, mut failures) = (Vec::new(), Vec::new());
    try_register::<ep::TensorRT>(builder, &mut registered, &mut failures);
    try_register::<ep::CUDA>(builder, &mut registered, &mut failures);
    if registered.is_empty() {
        let mut message = format!(
            "target \"gpu\" needs ONNX Runtime's TensorRT or CUDA execution provider, but the library at {} offers {}",
            library.path.display(),
            available_providers().join(", ")
        );
        for failure in failures {
            message.push_str("; ");
            message.push_str(&failure);
        }
        message.push_str(
            "; use a GPU build of ONNX Runtime (the onnxruntime-gpu wheel's library) with its CUDA libraries installed, or set target = \"cpu\"",
        );
        return Err(message);
    }
    Ok(registered)
}

/// A model loaded into an ONNX Runtime session, shared by every instance
/// that uses it.
pub struct OrtModel {
    name: String,
    // `Session::run` takes `&mut`; requests to one model take turns. The
    // time waiting counts as inference time.
    session: Mutex<Session>,
    signature: ModelSignature,
    providers: Vec<&'static str>,
    target: ExecutionTarget,
}

impl OrtModel {
    /// Loads the ONNX model in `bytes`, which the pipeline calls `name`,
    /// into a session on `target`.
    pub fn load(
        name: &str,
        bytes: &[u8],
        target: ExecutionTarget,
        options: &BackendOptions,
    ) -> Result<Self, String> {
        let library = library(options)?;
        let mut builder = Session::builder(&library.environment).map_err(|e| e.to_string())?;
        if let Some(threads) = options.onnxruntime_threads {
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| format!("intra-op threads {threads}: {e}"))?;
        }
        let providers = match target {
            ExecutionTarget::Cpu => vec![ep::CPU::NAME],
            ExecutionTarget::Gpu => register_gpu(&mut builder, &library)?,
            ExecutionTarget::Tpu => {
                return Err(format!(
                    "no ONNX Runtime execution provider serves target \"tpu\" in this host; the library at {} offers {}",
                    library.path.display(),
                    available_providers().join(", ")
                ));
            }
        };
        let session = builder
            .commit_from_memory(bytes)
            .map_err(|e| format!("cannot load the model: {e}"))?;
        let specs = |outlets: &[ort::value::Outlet]| -> Vec<TensorSpec> {
            outlets
                .iter()
                .map(|o| spec_of(o.name(), o.dtype()))
                .collect()
        };
        let signature = ModelSignature {
            inputs: specs(session.inputs()),
            outputs: specs(session.outputs()),
        };
        Ok(Self {
            name: name.to_owned(),
            session: Mutex::new(session),
            signature,
            providers,
            target,
        })
    }
}

impl Model for OrtModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn describe(&self) -> String {
        format!(
            "onnxruntime ({}: {})",
            self.target,
            self.providers.join(", ")
        )
    }

    fn run(&self, inputs: Vec<NnTensor>) -> Result<Vec<NnTensor>, String> {
        let inputs = inputs.into_iter().map(RunInput::Bytes).collect();
        self.run_held(inputs, &[])?
            .into_iter()
            .map(|output| match output {
                RunOutput::Bytes(tensor) => Ok(tensor),
                RunOutput::Held(_) => Err(format!("model '{}': an output was held", self.name)),
            })
            .collect()
    }

    fn run_held(
        &self,
        inputs: Vec<RunInput<'_>>,
        wants: &[Want],
    ) -> Result<Vec<RunOutput>, String> {
        // Inputs given as bytes are converted and dropped before the run;
        // held ones are lent to it.
        let values = self
            .signature
            .inputs
            .iter()
            .zip(inputs)
            .map(|(spec, input)| match input {
                RunInput::Bytes(tensor) => to_ort(&tensor)
                    .map_err(|e| format!("model '{}' input '{}': {e}", self.name, spec.name)),
                RunInput::Held(held) => held
                    .as_any()
                    .downcast_ref::<OrtHeld>()
                    .map(|h| SessionInputValue::from(&h.0))
                    .ok_or_else(|| {
                        format!(
                            "model '{}' input '{}': a value ONNX Runtime did not make",
                            self.name, spec.name
                        )
                    }),
            })
            .collect::<Result<Vec<SessionInputValue>, String>>()?;
        let waiting = std::time::Instant::now();
        let mut session = self.session.lock().unwrap_or_else(PoisonError::into_inner);
        super::note_wait(waiting.elapsed());
        let mut outputs = super::in_runtime(|| session.run(values.as_slice()))
            .map_err(|e| format!("model '{}' failed while computing: {e}", self.name))?;
        self.signature
            .outputs
            .iter()
            .zip(wants.iter().chain(std::iter::repeat(&Want::Bytes)))
            .map(|(spec, &want)| {
                let value = outputs.remove(&spec.name).ok_or_else(|| {
                    format!("model '{}' returned no output '{}'", self.name, spec.name)
                })?;
                match want {
                    Want::Held => Ok(RunOutput::Held(Box::new(OrtHeld(value)))),
                    Want::Bytes => from_ort(&value, None),
                    Want::Last(axis) => from_ort(&value, Some(axis)),
                }
                .map_err(|e| format!("model '{}' output '{}': {e}", self.name, spec.name))
            })
            .collect()
    }
}

/// A value ONNX Runtime made and keeps for the next run (a key/value
/// cache): given back by reference, never copied out.
struct OrtHeld(DynValue);

impl Held for OrtHeld {
    fn dims(&self) -> Vec<usize> {
        match self.0.dtype() {
            ValueType::Tensor { shape, .. } => shape
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(0))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn byte_len(&self) -> usize {
        match self.0.dtype() {
            ValueType::Tensor { ty, .. } => {
                self.dims().iter().product::<usize>()
                    * element_type(*ty).map_or(1, ElementType::size)
            }
            _ => 0,
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn spec_of(name: &str, dtype: &ValueType) -> TensorSpec {
    match dtype {
        ValueType::Tensor {
            ty,
            shape,
            dimension_symbols,
        } => TensorSpec {
            name: name.to_owned(),
            element_type: element_type(*ty),
            dims: Some(
                shape
                    .iter()
                    .zip(dimension_symbols.iter())
                    .enumerate()
                    .map(|(i, (&n, symbol))| match u32::try_from(n) {
                        Ok(n) => Dim::Fixed(n),
                        // An unnamed dynamic size is its own symbol.
                        Err(_) if symbol.is_empty() => Dim::Symbol(format!("{name}.{i}")),
                        Err(_) => Dim::Symbol(symbol.clone()),
                    })
                    .collect(),
            ),
        },
        _ => TensorSpec {
            name: name.to_owned(),
            element_type: None,
            dims: None,
        },
    }
}

fn element_type(ty: TensorElementType) -> Option<ElementType> {
    Some(match ty {
        TensorElementType::Float16 => ElementType::F16,
        TensorElementType::Bfloat16 => ElementType::Bf16,
        TensorElementType::Float32 => ElementType::F32,
        TensorElementType::Float64 => ElementType::F64,
        TensorElementType::Uint8 => ElementType::U8,
        TensorElementType::Int32 => ElementType::I32,
        TensorElementType::Int64 => ElementType::I64,
        _ => return None,
    })
}

/// An element type that crosses as little-endian bytes.
trait Element: PrimitiveTensorElementType + Copy + std::fmt::Debug + 'static {
    const SIZE: usize;
    fn read(bytes: &[u8]) -> Self;
    /// Writes its bytes into `out`, which is `SIZE` long.
    fn write(self, out: &mut [u8]);
}

macro_rules! element {
    ($($t:ty => $n:literal, $read:expr, $write:expr;)*) => {$(
        impl Element for $t {
            const SIZE: usize = $n;
            fn read(bytes: &[u8]) -> Self {
                let mut raw = [0u8; $n];
                raw.copy_from_slice(bytes);
                $read(raw)
            }
            fn write(self, out: &mut [u8]) {
                out.copy_from_slice(&$write(self));
            }
        }
    )*};
}

element! {
    u8 => 1, u8::from_le_bytes, u8::to_le_bytes;
    i32 => 4, i32::from_le_bytes, i32::to_le_bytes;
    i64 => 8, i64::from_le_bytes, i64::to_le_bytes;
    f32 => 4, f32::from_le_bytes, f32::to_le_bytes;
    f64 => 8, f64::from_le_bytes, f64::to_le_bytes;
    half::f16 => 2, half::f16::from_le_bytes, half::f16::to_le_bytes;
    half::bf16 => 2, half::bf16::from_le_bytes, half::bf16::to_le_bytes;
}

fn typed<T: Element>(tensor: &NnTensor) -> Result<SessionInputValue<'static>, String> {
    let shape: Vec<i64> = tensor.dimensions.iter().map(|&d| i64::from(d)).collect();
    let data: Vec<T> = tensor.data.chunks_exact(T::SIZE).map(T::read).collect();
    Tensor::from_array((shape, data))
        .map(|t| SessionInputValue::from(t.into_dyn()))
        .map_err(|e| e.to_string())
}

fn to_ort(tensor: &NnTensor) -> Result<SessionInputValue<'static>, String> {
    match ElementType::from_nn(tensor.ty) {
        ElementType::U8 => typed::<u8>(tensor),
        ElementType::I32 => typed::<i32>(tensor),
        ElementType::I64 => typed::<i64>(tensor),
        ElementType::F32 => typed::<f32>(tensor),
        ElementType::F64 => typed::<f64>(tensor),
        ElementType::F16 => typed::<half::f16>(tensor),
        ElementType::Bf16 => typed::<half::bf16>(tensor),
        ElementType::Utf8 => Err("ONNX Runtime models take no utf8 tensors through wasi-nn".into()),
    }
}

/// The bytes of `value`'s elements, or of those in `runs` only.
fn bytes_of<T: Element>(
    value: &DynValue,
    runs: Option<&[Range<usize>]>,
) -> Result<Vec<u8>, String> {
    let (_, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
    let whole = 0..data.len();
    let runs = runs.unwrap_or(std::slice::from_ref(&whole));
    let mut out = vec![0u8; runs.iter().map(ExactSizeIterator::len).sum::<usize>() * T::SIZE];
    let mut at = out.chunks_exact_mut(T::SIZE);
    for run in runs {
        let elements = data
            .get(run.clone())
            .ok_or_else(|| format!("elements {run:?} are past its {} elements", data.len()))?;
        // Elements first: a zip advances its first iterator before it
        // finds the second one empty.
        for (&x, bytes) in elements.iter().zip(at.by_ref()) {
            x.write(bytes);
        }
    }
    Ok(out)
}

/// `value` as bytes, whole or (`last`) only its last position along
/// that axis.
fn from_ort(value: &DynValue, last: Option<usize>) -> Result<RunOutput, String> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(format!("{} is not a tensor", value.dtype()));
    };
    let element =
        element_type(*ty).ok_or_else(|| format!("element type {ty} cannot cross wasi-nn"))?;
    let mut dimensions: Vec<u32> = shape
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| format!("dimension {d} does not fit wasi-nn")))
        .collect::<Result<_, _>>()?;
    let runs = match last {
        Some(axis) => {
            // An overflowing shape is refused by `last_position`.
            let len = dimensions
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
                .unwrap_or(0);
            let (cut, runs) = last_position(&dimensions, axis, len)
                .map_err(|why| format!("last_position: {why}"))?;
            dimensions = cut;
            Some(runs)
        }
        None => None,
    };
    let runs = runs.as_deref();
    let data = match element {
        ElementType::U8 => bytes_of::<u8>(value, runs),
        ElementType::I32 => bytes_of::<i32>(value, runs),
        ElementType::I64 => bytes_of::<i64>(value, runs),
        ElementType::F32 => bytes_of::<f32>(value, runs),
        ElementType::F64 => bytes_of::<f64>(value, runs),
        ElementType::F16 => bytes_of::<half::f16>(value, runs),
        ElementType::Bf16 => bytes_of::<half::bf16>(value, runs),
        ElementType::Utf8 => Err("string outputs cannot cross wasi-nn".into()),
    }?;
    let ty = element
        .to_nn()
        .ok_or_else(|| format!("element type {element} cannot cross wasi-nn"))?;
    Ok(RunOutput::Bytes(NnTensor {
        dimensions,
        ty,
        data,
    }))
}
