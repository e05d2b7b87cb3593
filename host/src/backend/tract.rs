//! The tract-onnx backend: pure Rust, runs on every CPU Outpost supports.
//!
//! A model is parsed, typed and optimised once, when the host preloads it;
//! each request only binds its inputs' concrete sizes to the model's symbolic
//! dimensions (batch, sequence) and runs the plan.

use super::{Diagnostics, ModelSignature};
use crate::bindings::{Dim, ElementType, TensorSpec};
use std::collections::HashMap;
use std::sync::Arc;
use tract_onnx::prelude::*;
use wasmtime_wasi_nn::backend::{
    BackendError, BackendExecutionContext, BackendGraph, Id, NamedTensor,
};
use wasmtime_wasi_nn::wit::Tensor as NnTensor;
use wasmtime_wasi_nn::{ExecutionContext, Graph};

/// A model loaded into tract, shared by every instance that uses it.
pub struct TractGraph {
    name: String,
    plan: Arc<TypedRunnableModel>,
    signature: ModelSignature,
}

/// Why tract could not load a model.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TractLoadError(String);

impl TractGraph {
    /// Parses, types and optimises the ONNX model in `bytes`, which the
    /// pipeline calls `name`.
    pub fn load(name: &str, bytes: &[u8]) -> Result<Self, TractLoadError> {
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
        let plan = typed
            .into_optimized()
            .map_err(|e| fail("optimisation failed", e))?
            .into_runnable()
            .map_err(|e| fail("could not build an execution plan", e))?;
        Ok(Self {
            name: name.to_owned(),
            plan,
            signature,
        })
    }

    /// The model's declared inputs and outputs.
    pub fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    /// Runs the model on `inputs`, matched to the model's inputs by name, and
    /// returns every output under its declared name.
    pub fn compute(&self, inputs: Vec<NamedTensor>) -> Result<Vec<NamedTensor>, String> {
        let mut by_name: HashMap<String, NnTensor> =
            inputs.into_iter().map(|t| (t.name, t.tensor)).collect();
        let mut ordered = Vec::with_capacity(self.signature.inputs.len());
        for spec in &self.signature.inputs {
            let tensor = by_name.remove(&spec.name).ok_or_else(|| {
                format!(
                    "model '{}' needs input '{}' ({}), which was not given",
                    self.name,
                    spec.name,
                    spec.shape_string()
                )
            })?;
            ordered.push(tensor);
        }
        if let Some(extra) = by_name.keys().next() {
            return Err(format!(
                "model '{}' has no input '{extra}'; its inputs are: {}",
                self.name,
                self.input_names()
            ));
        }
        self.run_ordered(ordered)
    }

    fn input_names(&self) -> String {
        self.signature
            .inputs
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Runs on inputs given in the model's input order.
    fn run_ordered(&self, inputs: Vec<NnTensor>) -> Result<Vec<NamedTensor>, String> {
        let mut values: TVec<TValue> = TVec::with_capacity(inputs.len());
        let mut symbols: HashMap<&str, u32> = HashMap::new();
        for (spec, tensor) in self.signature.inputs.iter().zip(inputs) {
            self.check_input(spec, &tensor, &mut symbols)?;
            values.push(
                to_tract(&tensor)
                    .map_err(|e| format!("model '{}' input '{}': {e}", self.name, spec.name))?
                    .into_tvalue(),
            );
        }
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| format!("model '{}' failed while computing: {e:#}", self.name))?;
        outputs
            .into_iter()
            .zip(&self.signature.outputs)
            .map(|(value, spec)| {
                let tensor = from_tract(&value)
                    .map_err(|e| format!("model '{}' output '{}': {e}", self.name, spec.name))?;
                Ok(NamedTensor {
                    name: spec.name.clone(),
                    tensor,
                })
            })
            .collect()
    }

    /// Element type, rank, fixed sizes, and consistent symbolic sizes.
    fn check_input<'a>(
        &self,
        spec: &'a TensorSpec,
        tensor: &NnTensor,
        symbols: &mut HashMap<&'a str, u32>,
    ) -> Result<(), String> {
        let got = format!("{}{:?}", ElementType::from_nn(tensor.ty), tensor.dimensions);
        let wrong = |why: String| {
            format!(
                "model '{}' input '{}' expects {} but got {got}: {why}",
                self.name,
                spec.name,
                spec.shape_string()
            )
        };
        if let Some(ty) = spec.element_type
            && ty.to_nn() != Some(tensor.ty)
        {
            return Err(wrong(format!(
                "element type {} is not {ty}",
                ElementType::from_nn(tensor.ty)
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
    let expected =
        crate::tensor::element_count(&tensor.dimensions).and_then(|n| n.checked_mul(ty.size()));
    if expected != Some(tensor.data.len()) {
        return Err(format!(
            "shape {:?} of {ty} needs {} bytes but the tensor carries {}",
            tensor.dimensions,
            expected.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
            tensor.data.len()
        ));
    }
    let mut t = Tensor::zero_dt(dt, &shape).map_err(|e| e.to_string())?;
    t.as_bytes_mut().copy_from_slice(&tensor.data);
    Ok(t)
}

fn from_tract(value: &TValue) -> Result<NnTensor, String> {
    let ty = element_type(value.datum_type())
        .and_then(ElementType::to_nn)
        .ok_or_else(|| format!("element type {:?} cannot cross wasi-nn", value.datum_type()))?;
    let dimensions = value
        .shape()
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| format!("dimension {d} exceeds u32")))
        .collect::<Result<_, _>>()?;
    Ok(NnTensor {
        dimensions,
        ty,
        data: value.as_bytes().to_vec(),
    })
}

/// The graph handed to one store's wasi-nn: a shared handle on a
/// [`TractGraph`] plus that store's [`Diagnostics`].
struct TractNnGraph {
    graph: Arc<TractGraph>,
    diagnostics: Diagnostics,
}

impl TractGraph {
    /// This model as a wasi-nn graph for one store, whose failures are
    /// recorded in `diagnostics`.
    pub fn to_nn_graph(self: &Arc<Self>, diagnostics: &Diagnostics) -> Graph {
        let boxed: Box<dyn BackendGraph> = Box::new(TractNnGraph {
            graph: self.clone(),
            diagnostics: diagnostics.clone(),
        });
        Graph::from(boxed)
    }
}

impl BackendGraph for TractNnGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let n = self.graph.signature.inputs.len();
        let context: Box<dyn BackendExecutionContext> = Box::new(TractContext {
            graph: self.graph.clone(),
            diagnostics: self.diagnostics.clone(),
            inputs: vec![None; n],
            outputs: Vec::new(),
        });
        Ok(ExecutionContext::from(context))
    }
}

/// One execution context: inputs set by index (witx) or passed to `compute`
/// by name (WIT).
struct TractContext {
    graph: Arc<TractGraph>,
    diagnostics: Diagnostics,
    inputs: Vec<Option<NnTensor>>,
    outputs: Vec<NamedTensor>,
}

impl TractContext {
    fn fail(&self, message: String) -> BackendError {
        self.diagnostics.record(message.clone());
        BackendError::BackendAccess(wasmtime::Error::msg(message))
    }
}

impl TractContext {
    fn index_of(&self, id: &Id, specs: &[TensorSpec], what: &str) -> Result<usize, BackendError> {
        match id {
            Id::Index(i) if (*i as usize) < specs.len() => Ok(*i as usize),
            Id::Name(n) => specs.iter().position(|s| &s.name == n).ok_or_else(|| {
                self.fail(format!(
                    "model '{}' has no {what} named '{n}'",
                    self.graph.name
                ))
            }),
            Id::Index(i) => Err(self.fail(format!(
                "model '{}' has {} {what}s; index {i} is out of range",
                self.graph.name,
                specs.len()
            ))),
        }
    }
}

impl BackendExecutionContext for TractContext {
    fn set_input(&mut self, id: Id, tensor: &NnTensor) -> Result<(), BackendError> {
        let i = self.index_of(&id, &self.graph.signature.inputs, "input")?;
        self.inputs[i] = Some(tensor.clone());
        Ok(())
    }

    fn get_output(&mut self, id: Id) -> Result<NnTensor, BackendError> {
        let i = self.index_of(&id, &self.graph.signature.outputs, "output")?;
        self.outputs
            .get(i)
            .map(|t| t.tensor.clone())
            .ok_or_else(|| {
                self.fail(format!(
                    "model '{}': call compute before reading outputs",
                    self.graph.name
                ))
            })
    }

    fn compute(
        &mut self,
        inputs: Option<Vec<NamedTensor>>,
    ) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        match inputs {
            Some(named) => {
                let started = std::time::Instant::now();
                let result = self.graph.compute(named);
                self.diagnostics
                    .add_inference(started.elapsed())
                    .map_err(|e| self.fail(e))?;
                result.map(Some).map_err(|e| self.fail(e))
            }
            None => {
                let mut ordered = Vec::with_capacity(self.inputs.len());
                for (i, slot) in self.inputs.iter().enumerate() {
                    ordered.push(slot.clone().ok_or_else(|| {
                        self.fail(format!(
                            "model '{}': input {i} ('{}') was not set",
                            self.graph.name, self.graph.signature.inputs[i].name
                        ))
                    })?);
                }
                let started = std::time::Instant::now();
                let result = self.graph.run_ordered(ordered);
                self.diagnostics
                    .add_inference(started.elapsed())
                    .map_err(|e| self.fail(e))?;
                self.outputs = result.map_err(|e| self.fail(e))?;
                Ok(None)
            }
        }
    }
}
