//! The tract-onnx backend: pure Rust, runs on every CPU Outpost supports.
//!
//! A model is parsed, typed and optimised once, when the host preloads it;
//! each request only binds its inputs' concrete sizes to the model's symbolic
//! dimensions (batch, sequence) and runs the plan. Execution states (the
//! per-node value slots, constants and operator states tract sets up before
//! a run) are kept between requests and reused.

mod bounds;
mod gather;
mod prepack;

use super::{Held, Model, ModelSignature, RunInput, RunOutput, Want, last_position};
use crate::bindings::{Dim, ElementType, TensorSpec};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::model::TypedSimpleState;
use wasmtime_wasi_nn::wit::{Tensor as NnTensor, TensorType};

/// Idle execution states kept per model: as many as requests ran at once,
/// up to this many.
const MAX_IDLE_STATES: usize = 8;

/// A model loaded into tract, shared by every instance that uses it.
pub struct TractGraph {
    name: String,
    signature: ModelSignature,
    /// The plan for every shape: sizes are bound when a request runs.
    general: Runner,
    /// Plans for particular shapes, when the pipeline asks for them.
    specialized: Option<Specialized>,
    /// Inputs that index tables, checked before every run.
    index_bounds: Vec<bounds::IndexBound>,
}

/// A plan and the execution states kept for it.
struct Runner {
    plan: Arc<TypedRunnableModel>,
    idle: Mutex<Vec<TypedSimpleState>>,
}

impl Runner {
    fn new(plan: Arc<TypedRunnableModel>) -> Self {
        Self {
            plan,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn run(&self, model: &str, values: TVec<TValue>) -> Result<TVec<TValue>, String> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut state = match idle {
            Some(state) => state,
            None => self
                .plan
                .spawn()
                .map_err(|e| format!("model '{model}': cannot prepare a run: {e:#}"))?,
        };
        // A state whose run failed is dropped, not reused.
        let outputs = super::in_runtime(|| state.run(values))
            .map_err(|e| format!("model '{model}' failed while computing: {e:#}"))?;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_STATES {
            idle.push(state);
        }
        Ok(outputs)
    }
}

/// Symbol values, sorted by name: the shape a specialised plan is for.
type ShapeKey = Vec<(String, i64)>;

/// Plans specialised to concrete sizes of the model's symbolic dimensions,
/// made on first use of each shape from the simplified model, least
/// recently used dropped first. With sizes known, tract picks its fast
/// kernels for broadcasting arithmetic (on the int8 MiniLM at sequence 128:
/// 46 ms symbolic, 21 ms specialised).
struct Specialized {
    source: TypedModel,
    capacity: usize,
    /// Most recently used last. A slot is filled once, by the first request
    /// of its shape; requests of the same shape arriving meanwhile wait for
    /// that plan instead of making their own. `None`: specialising this
    /// shape failed; the general plan serves it.
    plans: Mutex<Vec<(ShapeKey, PlanSlot)>>,
    /// Plans made so far (for tests: one per shape, however many requests
    /// asked at once).
    built: AtomicUsize,
}

type PlanSlot = Arc<OnceLock<Option<Arc<Runner>>>>;

impl Specialized {
    fn runner(&self, key: ShapeKey) -> Option<Arc<Runner>> {
        let slot = {
            let mut plans = self.plans.lock().unwrap_or_else(PoisonError::into_inner);
            match plans.iter().position(|(k, _)| *k == key) {
                Some(i) => {
                    let entry = plans.remove(i);
                    let slot = entry.1.clone();
                    plans.push(entry);
                    slot
                }
                None => {
                    if plans.len() >= self.capacity {
                        plans.remove(0);
                    }
                    let slot = PlanSlot::default();
                    plans.push((key.clone(), slot.clone()));
                    slot
                }
            }
        };
        // Made without holding the list's lock: other shapes keep being
        // served while this one is optimised.
        slot.get_or_init(|| {
            self.built.fetch_add(1, Ordering::Relaxed);
            self.specialize(&key)
                .ok()
                .map(|plan| Arc::new(Runner::new(plan)))
        })
        .clone()
    }

    fn specialize(&self, key: &ShapeKey) -> TractResult<Arc<TypedRunnableModel>> {
        let values = key
            .iter()
            .map(|(name, value)| (self.source.symbols.sym(name), TDim::Val(*value)))
            .collect();
        optimised(self.source.set_symbols(&values)?)?.into_runnable()
    }
}

/// Why tract could not load a model.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TractLoadError(String);

impl TractGraph {
    /// Parses, types and optimises the ONNX model in `bytes`, which the
    /// pipeline calls `name`. With `specialize` > 0, up to that many plans
    /// specialised to the concrete shapes requests bring are kept besides
    /// the general one; the first request of each new shape waits while its
    /// plan is made (tract optimising the model again: ~50 ms for the int8
    /// MiniLM), so this pays off where shapes repeat, e.g. behind a tokenizer
    /// padding to max_length.
    pub fn load(name: &str, bytes: &[u8], specialize: usize) -> Result<Self, TractLoadError> {
        let fail = |what: &str, e: TractError| TractLoadError(format!("{what}: {e:#}"));
        let model = tract_onnx::onnx()
            .model_for_read(&mut std::io::Cursor::new(bytes))
            .map_err(|e| fail("not a readable ONNX model", e))?;
        // tract renames outputs while optimising (`y` can become `y.low`), so
        // the declared names are taken here, before, and mapped by position.
        let input_names = outlet_names(
            &model,
            model.input_outlets().map_err(|e| fail("inputs", e))?,
        );
        let output_names = outlet_names(
            &model,
            model.output_outlets().map_err(|e| fail("outputs", e))?,
        );
        let typed = model
            .into_typed()
            .map_err(|e| fail("type analysis failed", e))?;
        let specs =
            |names: &[String], outlets: &[OutletId]| -> Result<Vec<TensorSpec>, TractLoadError> {
                names
                    .iter()
                    .zip(outlets)
                    .map(|(n, &o)| {
                        let fact = typed.outlet_fact(o).map_err(|e| fail("facts", e))?;
                        Ok(spec_of(n, fact))
                    })
                    .collect()
            };
        let signature = ModelSignature {
            inputs: specs(
                &input_names,
                typed.input_outlets().map_err(|e| fail("inputs", e))?,
            )?,
            outputs: specs(
                &output_names,
                typed.output_outlets().map_err(|e| fail("outputs", e))?,
            )?,
        };
        let simplified = simplify(typed).map_err(|e| fail("simplification failed", e))?;
        let index_bounds =
            bounds::index_bounds(&simplified).map_err(|e| fail("index analysis failed", e))?;
        let specialized = (specialize > 0).then(|| Specialized {
            source: simplified.clone(),
            capacity: specialize,
            plans: Mutex::new(Vec::new()),
            built: AtomicUsize::new(0),
        });
        let plan = optimised(simplified)
            .map_err(|e| fail("optimisation failed", e))?
            .into_runnable()
            .map_err(|e| fail("could not build an execution plan", e))?;
        Ok(Self {
            name: name.to_owned(),
            signature,
            general: Runner::new(plan),
            specialized,
            index_bounds,
        })
    }

    /// The sizes the inputs give the model's symbolic dimensions.
    fn shape_key(&self, inputs: Vec<&NnTensor>) -> ShapeKey {
        let mut key: ShapeKey = Vec::new();
        for (spec, tensor) in self.signature.inputs.iter().zip(inputs) {
            for (dim, &size) in spec.dims.iter().flatten().zip(&tensor.dimensions) {
                if let Dim::Symbol(s) = dim
                    && !key.iter().any(|(k, _)| k == s)
                {
                    key.push((s.clone(), i64::from(size)));
                }
            }
        }
        key.sort();
        key
    }
}

/// tract's simplification plus moving embedding-table lookups in front of
/// the table's dequantization (see `gather.rs`).
fn simplify(typed: TypedModel) -> TractResult<TypedModel> {
    let mut model = typed.into_decluttered()?;
    gather::gather_before_dequantize(&mut model)?;
    Ok(model)
}

/// Applies the patch `next` finds until it finds none; returns how many it
/// applied. Each patch renumbers nodes, so `next` looks again from the
/// start every time.
fn apply_all(
    model: &mut TypedModel,
    next: fn(&TypedModel) -> TractResult<Option<TypedModelPatch>>,
) -> TractResult<usize> {
    let mut applied = 0;
    while let Some(patch) = next(model)? {
        patch.apply(model)?;
        applied += 1;
    }
    if applied > 0 {
        model.compact()?;
    }
    Ok(applied)
}

/// tract's optimisation, then constant operands packed once (see
/// `prepack.rs`).
fn optimised(simplified: TypedModel) -> TractResult<TypedModel> {
    let mut model = simplified.into_optimized()?;
    prepack::pack_constant_operands(&mut model)?;
    Ok(model)
}

/// Simplifies and optimises a typed model as this backend runs it (its
/// general plan): for tools and benchmarks that run tract directly.
pub fn optimise(typed: TypedModel) -> TractResult<TypedModel> {
    optimised(simplify(typed)?)
}

impl Model for TractGraph {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn describe(&self) -> String {
        match &self.specialized {
            Some(s) => format!("tract (cpu, up to {} shape-specialised plans)", s.capacity),
            None => "tract (cpu)".to_owned(),
        }
    }

    fn run(&self, inputs: Vec<NnTensor>) -> Result<Vec<NnTensor>, String> {
        let inputs = inputs.into_iter().map(RunInput::Bytes).collect();
        let outputs = self.run_values(inputs, true)?;
        outputs
            .iter()
            .zip(&self.signature.outputs)
            .map(|(value, spec)| {
                from_tract(value)
                    .map_err(|e| format!("model '{}' output '{}': {e}", self.name, spec.name))
            })
            .collect()
    }

    fn run_held(
        &self,
        inputs: Vec<RunInput<'_>>,
        wants: &[Want],
    ) -> Result<Vec<RunOutput>, String> {
        // A cache grows by every run, so no shape repeats: the general plan.
        let outputs = self.run_values(inputs, false)?;
        outputs
            .into_iter()
            .zip(&self.signature.outputs)
            .zip(wants.iter().chain(std::iter::repeat(&Want::Bytes)))
            .map(|((value, spec), &want)| {
                match want {
                    Want::Held => Ok(RunOutput::Held(Box::new(TractHeld(
                        value.into_arc_tensor(),
                    )))),
                    Want::Bytes => from_tract(&value).map(RunOutput::Bytes),
                    Want::Last(axis) => last_of(&value, axis).map(RunOutput::Bytes),
                }
                .map_err(|e| format!("model '{}' output '{}': {e}", self.name, spec.name))
            })
            .collect()
    }
}

/// A tensor tract made and keeps for the next run (a key/value cache):
/// fed back as the input it was, without a copy.
struct TractHeld(Arc<Tensor>);

impl Held for TractHeld {
    fn dims(&self) -> Vec<usize> {
        self.0.shape().to_vec()
    }

    fn byte_len(&self) -> usize {
        self.0.len() * self.0.datum_type().size_of()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl TractGraph {
    /// Checks index inputs given as bytes, converts them, and runs the plan
    /// for their shape.
    fn run_values(
        &self,
        inputs: Vec<RunInput<'_>>,
        specialize: bool,
    ) -> Result<TVec<TValue>, String> {
        for bound in &self.index_bounds {
            if let (Some(spec), Some(RunInput::Bytes(tensor))) = (
                self.signature.inputs.get(bound.input),
                inputs.get(bound.input),
            ) {
                bounds::check_indices(&self.name, &spec.name, bound, tensor)?;
            }
        }
        let runner = if specialize {
            let bytes: Option<Vec<&NnTensor>> = inputs
                .iter()
                .map(|i| match i {
                    RunInput::Bytes(t) => Some(t),
                    RunInput::Held(_) => None,
                })
                .collect();
            bytes.and_then(|tensors| {
                self.specialized
                    .as_ref()
                    .and_then(|s| s.runner(self.shape_key(tensors)))
            })
        } else {
            None
        };
        let values = self
            .signature
            .inputs
            .iter()
            .zip(inputs)
            .map(|(spec, input)| match input {
                RunInput::Bytes(tensor) => to_tract(&tensor)
                    .map(IntoTValue::into_tvalue)
                    .map_err(|e| format!("model '{}' input '{}': {e}", self.name, spec.name)),
                RunInput::Held(held) => held
                    .as_any()
                    .downcast_ref::<TractHeld>()
                    .map(|h| h.0.clone().into_tvalue())
                    .ok_or_else(|| {
                        format!(
                            "model '{}' input '{}': a value tract did not make",
                            self.name, spec.name
                        )
                    }),
            })
            .collect::<Result<TVec<TValue>, String>>()?;
        runner
            .as_deref()
            .unwrap_or(&self.general)
            .run(&self.name, values)
    }
}

fn outlet_names(model: &InferenceModel, outlets: &[OutletId]) -> Vec<String> {
    outlets
        .iter()
        .map(|&o| {
            model
                .outlet_label(o)
                .unwrap_or(&model.node(o.node).name)
                .to_owned()
        })
        .collect()
}

fn spec_of(name: &str, fact: &TypedFact) -> TensorSpec {
    let dims = fact
        .shape
        .iter()
        .map(|d| match d.to_i64() {
            Ok(n) => Dim::Fixed(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(_) => Dim::Symbol(d.to_string()),
        })
        .collect();
    TensorSpec {
        name: name.to_owned(),
        element_type: element_type(fact.datum_type),
        dims: Some(dims),
    }
}

fn element_type(dt: DatumType) -> Option<ElementType> {
    Some(match dt {
        DatumType::F16 => ElementType::F16,
        DatumType::F32 => ElementType::F32,
        DatumType::F64 => ElementType::F64,
        DatumType::U8 => ElementType::U8,
        DatumType::I32 => ElementType::I32,
        DatumType::I64 => ElementType::I64,
        _ => return None,
    })
}

fn datum_type(ty: ElementType) -> Option<DatumType> {
    Some(match ty {
        ElementType::F16 => DatumType::F16,
        ElementType::F32 => DatumType::F32,
        ElementType::F64 => DatumType::F64,
        ElementType::U8 => DatumType::U8,
        ElementType::I32 => DatumType::I32,
        ElementType::I64 => DatumType::I64,
        ElementType::Bf16 | ElementType::Utf8 => return None,
    })
}

fn to_tract(tensor: &NnTensor) -> Result<Tensor, String> {
    let ty = ElementType::from_nn(tensor.ty);
    let dt = datum_type(ty).ok_or_else(|| format!("tract has no {ty} tensors"))?;
    let shape: Vec<usize> = tensor.dimensions.iter().map(|&d| d as usize).collect();
    let mut t = Tensor::zero_dt(dt, &shape).map_err(|e| e.to_string())?;
    let bytes = t.as_bytes_mut();
    if bytes.len() != tensor.data.len() {
        return Err(format!(
            "shape {:?} of {ty} needs {} bytes but the tensor carries {}",
            tensor.dimensions,
            bytes.len(),
            tensor.data.len()
        ));
    }
    bytes.copy_from_slice(&tensor.data);
    Ok(t)
}

fn from_tract(value: &TValue) -> Result<NnTensor, String> {
    let (ty, dimensions) = nn_type_and_shape(value)?;
    Ok(NnTensor {
        dimensions,
        ty,
        data: value.as_bytes().to_vec(),
    })
}

/// Only the last position of `value` along `axis`, as bytes: the rest is
/// never copied (`last_position`).
fn last_of(value: &TValue, axis: usize) -> Result<NnTensor, String> {
    let (ty, dims) = nn_type_and_shape(value)?;
    let (dimensions, runs) =
        last_position(&dims, axis, value.len()).map_err(|why| format!("last_position: {why}"))?;
    let size = value.datum_type().size_of();
    let bytes = value.as_bytes();
    let mut data =
        Vec::with_capacity(runs.iter().map(ExactSizeIterator::len).sum::<usize>() * size);
    for run in runs {
        let part = bytes
            .get(run.start * size..run.end * size)
            .ok_or_else(|| format!("elements {run:?} are past its {} elements", value.len()))?;
        data.extend_from_slice(part);
    }
    Ok(NnTensor {
        dimensions,
        ty,
        data,
    })
}

fn nn_type_and_shape(value: &TValue) -> Result<(TensorType, Vec<u32>), String> {
    let ty = element_type(value.datum_type())
        .and_then(ElementType::to_nn)
        .ok_or_else(|| format!("element type {:?} cannot cross wasi-nn", value.datum_type()))?;
    let dimensions = value
        .shape()
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| format!("dimension {d} exceeds u32")))
        .collect::<Result<_, _>>()?;
    Ok((ty, dimensions))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Sixteen requests bringing the same new shape at once make one
    /// specialised plan between them (the others wait for it), not sixteen.
    #[test]
    fn a_new_shape_is_specialised_once_under_concurrent_requests() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/demo/intent.onnx");
        let graph = TractGraph::load("intent", &std::fs::read(path).unwrap(), 4).unwrap();
        let specialized = graph.specialized.as_ref().unwrap();
        let key: ShapeKey = graph
            .signature
            .inputs
            .iter()
            .flat_map(|s| s.dims.iter().flatten())
            .filter_map(|d| match d {
                Dim::Symbol(s) => Some((s.clone(), 7)),
                Dim::Fixed(_) => None,
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        assert!(!key.is_empty(), "the demo model has symbolic dimensions");
        let barrier = std::sync::Barrier::new(16);
        let runners: Vec<Option<Arc<Runner>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        specialized.runner(key.clone())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(specialized.built.load(Ordering::Relaxed), 1);
        let first = runners[0].as_ref().expect("the shape specialises");
        assert!(
            runners
                .iter()
                .all(|r| Arc::ptr_eq(r.as_ref().unwrap(), first))
        );
    }
}
