//! Inference through wasi-nn: load a model the host preloaded, by name, and
//! run it on named tensors.

use crate::bindings::wasi::nn::{errors, graph, inference, tensor};
use crate::{ElementType, StageError, Tensor};

/// A model the pipeline gives this stage, ready to compute.
pub struct Model {
    name: String,
    context: inference::GraphExecutionContext,
    graph: graph::Graph,
}

impl Model {
    /// Loads the model the pipeline registered as `name` and creates an
    /// execution context for it.
    pub fn load(name: &str) -> Result<Self, StageError> {
        let graph = graph::load_by_name(name).map_err(|e| nn_error(name, "load-by-name", &e))?;
        let context = graph
            .init_execution_context()
            .map_err(|e| nn_error(name, "init-execution-context", &e))?;
        Ok(Self {
            name: name.to_owned(),
            context,
            graph,
        })
    }

    /// The name the model was loaded by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs the model on `inputs` (matched to the model's inputs by name) and
    /// returns every output, named as in the model.
    pub fn compute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, StageError> {
        compute(&self.name, &self.context, inputs)
    }

    /// A new execution context of this model. For a model the pipeline
    /// gives a key/value cache (`[models.NAME.cache]`), a session is one
    /// sequence: the host keeps its cache, so each [`Session::compute`]
    /// sends only the new tokens; the cache is freed when the session is
    /// dropped. Start a new session for each new sequence.
    pub fn session(&self) -> Result<Session<'_>, StageError> {
        let context = self
            .graph
            .init_execution_context()
            .map_err(|e| nn_error(&self.name, "init-execution-context", &e))?;
        Ok(Session {
            model: self,
            context,
        })
    }
}

/// One execution context of a [`Model`]: for models with a key/value cache,
/// one sequence.
pub struct Session<'m> {
    model: &'m Model,
    context: inference::GraphExecutionContext,
}

impl Session<'_> {
    /// Runs the model on `inputs` in this session; with a key/value cache,
    /// `inputs` are the new positions only, and the host adds the cached
    /// ones.
    pub fn compute(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, StageError> {
        compute(&self.model.name, &self.context, inputs)
    }
}

fn compute(
    model: &str,
    context: &inference::GraphExecutionContext,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, StageError> {
    let mut named = Vec::with_capacity(inputs.len());
    for t in inputs {
        let ty = nn_type(t.element_type).ok_or_else(|| {
            StageError::invalid_input(format!(
                "tensor '{}' of {} cannot be given to model '{model}': wasi-nn has no such element type",
                t.name,
                t.element_type.name(),
            ))
        })?;
        named.push((t.name.clone(), tensor::Tensor::new(&t.dims, ty, &t.data)));
    }
    let outputs = context
        .compute(named)
        .map_err(|e| nn_error(model, "compute", &e))?;
    Ok(outputs
        .into_iter()
        .map(|(name, t)| Tensor {
            name,
            dims: t.dimensions(),
            element_type: element_type(t.ty()),
            data: t.data(),
        })
        .collect())
}

fn nn_error(model: &str, call: &str, e: &errors::Error) -> StageError {
    StageError::inference(format!(
        "model '{model}': {call} failed ({:?}): {}",
        e.code(),
        e.data()
    ))
}

fn nn_type(ty: ElementType) -> Option<tensor::TensorType> {
    Some(match ty {
        ElementType::F16 => tensor::TensorType::Fp16,
        ElementType::F32 => tensor::TensorType::Fp32,
        ElementType::F64 => tensor::TensorType::Fp64,
        ElementType::Bf16 => tensor::TensorType::Bf16,
        ElementType::U8 => tensor::TensorType::U8,
        ElementType::I32 => tensor::TensorType::I32,
        ElementType::I64 => tensor::TensorType::I64,
        ElementType::Utf8 => return None,
    })
}

fn element_type(ty: tensor::TensorType) -> ElementType {
    match ty {
        tensor::TensorType::Fp16 => ElementType::F16,
        tensor::TensorType::Fp32 => ElementType::F32,
        tensor::TensorType::Fp64 => ElementType::F64,
        tensor::TensorType::Bf16 => ElementType::Bf16,
        tensor::TensorType::U8 => ElementType::U8,
        tensor::TensorType::I32 => ElementType::I32,
        tensor::TensorType::I64 => ElementType::I64,
    }
}
