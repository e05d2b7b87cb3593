//! A key/value cache the host keeps between computes of one wasi-nn
//! execution context, for generative models (DESIGN §17).
//!
//! A decoder exported with its cache as inputs and outputs
//! (`past_key_values.*` in, `present.*` out) would have a stage send the
//! whole cache back and forth on every token: megabytes through the guest
//! per token, and a cache the stage could alter. Instead the pipeline
//! declares the wiring (`[models.NAME.cache]`); stages see the model
//! without those tensors (and without the attention mask and positions,
//! which the host fills); each execution context holds its cache in the
//! backend's own form, never copied to bytes, charged to the stage. A new
//! execution context is a new sequence.

use super::{
    Held, Model, ModelFailure, ModelSignature, Predicted, RunInput, RunOutput, SharedModel, Want,
    catch_panic, check_input, check_named, order_inputs, output_bytes,
};
use crate::bindings::{Dim, ElementType, TensorSpec};
use crate::pipeline::spec::CacheSpec;
use std::collections::HashMap;
use wasmtime_wasi_nn::backend::NamedTensor;
use wasmtime_wasi_nn::wit::Tensor as NnTensor;

/// A model whose execution contexts keep a key/value cache.
pub struct KvModel {
    inner: SharedModel,
    /// What stages see: the inner model without the tensors the host fills.
    signature: ModelSignature,
    wiring: Wiring,
}

/// How the inner model's inputs and outputs are fed and kept.
struct Wiring {
    /// Where each input of the inner model comes from, in its order.
    sources: Vec<Source>,
    /// For each output of the inner model: the cache slot it refills, or
    /// `None` for an output the stage receives.
    outputs: Vec<Option<usize>>,
    /// For each output of the inner model, how the backend hands it back:
    /// held (the cache), only its last position (`last_position`), or whole.
    wants: Vec<Want>,
    slots: Vec<Slot>,
    axis: usize,
    /// Which of the stage's inputs counts the new positions.
    tokens: usize,
    max_context: u32,
    /// `[models.NAME.cache]`, for messages.
    table: String,
}

enum Source {
    /// The stage's input with this index (in the visible signature).
    Stage(usize),
    Mask(ElementType),
    Positions(ElementType),
    Cache(usize),
}

/// One cache tensor: an input fed by an output of the previous compute.
struct Slot {
    output: String,
    ty: ElementType,
    /// Its dimensions when empty, from the stage's inputs.
    dims: Vec<SlotDim>,
}

enum SlotDim {
    Fixed(u32),
    /// The cache axis: zero while empty.
    Axis,
    /// The size of dimension `dim` of the stage's input `input`.
    From {
        input: usize,
        dim: usize,
    },
}

/// The cache of one execution context.
#[derive(Default)]
pub struct KvState {
    /// Positions held.
    len: u32,
    /// One value per slot; empty before the first compute.
    values: Vec<Box<dyn Held>>,
}

impl KvState {
    /// Bytes the cache holds.
    pub fn bytes(&self) -> usize {
        self.values.iter().map(|v| v.byte_len()).sum()
    }

    /// Positions the cache holds.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether nothing has been computed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `pattern` split around its one `{}`.
fn split_pattern<'a>(pattern: &'a str, key: &str) -> Result<(&'a str, &'a str), String> {
    match pattern.split_once("{}") {
        Some((prefix, suffix)) if !suffix.contains("{}") => Ok((prefix, suffix)),
        _ => Err(format!(
            "{key} = \"{pattern}\" must contain '{{}}' exactly once, standing for the part cache inputs and outputs share (e.g. \"past_key_values.{{}}\")"
        )),
    }
}

fn key_of<'a>(name: &'a str, (prefix, suffix): (&str, &str)) -> Option<&'a str> {
    name.strip_prefix(prefix)?
        .strip_suffix(suffix)
        .filter(|k| !k.is_empty())
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl KvModel {
    /// Wraps `inner` with the cache `spec` declares; the error says which
    /// key of `[models.NAME.cache]` does not fit the model, and why.
    pub fn new(inner: SharedModel, spec: &CacheSpec) -> Result<Self, String> {
        let table = format!("[models.{}.cache]", inner.name());
        let wrong = |why: String| format!("{table}: {why}");
        let signature = inner.signature();
        let in_pattern = split_pattern(&spec.inputs, "inputs").map_err(wrong)?;
        let out_pattern = split_pattern(&spec.outputs, "outputs").map_err(wrong)?;
        if spec.max_context == 0 {
            return Err(wrong("max_context must be at least 1".into()));
        }
        let find = |key: &str, name: &str| -> Result<usize, String> {
            signature
                .inputs
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| {
                    wrong(format!(
                        "{key} = \"{name}\" is not an input of the model; its inputs are: {}",
                        names(&signature.inputs)
                    ))
                })
        };
        let mask = spec
            .attention_mask
            .as_deref()
            .map(|n| find("attention_mask", n))
            .transpose()?;
        let positions = spec
            .position_ids
            .as_deref()
            .map(|n| find("position_ids", n))
            .transpose()?;
        let tokens = find("tokens", &spec.tokens)?;

        let cache_outputs: HashMap<&str, usize> = signature
            .outputs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| key_of(&s.name, out_pattern).map(|k| (k, i)))
            .collect();
        let mut sources = Vec::with_capacity(signature.inputs.len());
        let mut outputs = vec![None; signature.outputs.len()];
        let mut slots = Vec::new();
        let mut visible_inputs = Vec::new();
        let mut cache_inputs = Vec::new();
        for (i, input) in signature.inputs.iter().enumerate() {
            let host_filled = |what: &str, ty: Option<ElementType>| match ty {
                Some(ty @ (ElementType::I64 | ElementType::I32)) => Ok(ty),
                _ => Err(wrong(format!(
                    "the host fills '{}' ({what}) with integers, but the model declares it {}",
                    input.name,
                    input.shape_string()
                ))),
            };
            if Some(i) == mask {
                sources.push(Source::Mask(host_filled(
                    "attention_mask",
                    input.element_type,
                )?));
            } else if Some(i) == positions {
                sources.push(Source::Positions(host_filled(
                    "position_ids",
                    input.element_type,
                )?));
            } else if let Some(key) = key_of(&input.name, in_pattern) {
                let output = *cache_outputs.get(key).ok_or_else(|| {
                    wrong(format!(
                        "cache input '{}' has no output '{}{key}{}' to be fed from; the model's outputs are: {}",
                        input.name,
                        out_pattern.0,
                        out_pattern.1,
                        names(&signature.outputs)
                    ))
                })?;
                outputs[output] = Some(slots.len());
                sources.push(Source::Cache(slots.len()));
                cache_inputs.push(i);
                slots.push((i, output));
            } else {
                sources.push(Source::Stage(visible_inputs.len()));
                visible_inputs.push(input.clone());
            }
        }
        if slots.is_empty() {
            return Err(wrong(format!(
                "no input of the model matches inputs = \"{}\"; its inputs are: {}",
                spec.inputs,
                names(&signature.inputs)
            )));
        }
        if let Some((_, output)) = outputs
            .iter()
            .zip(&signature.outputs)
            .find(|(slot, o)| slot.is_none() && key_of(&o.name, out_pattern).is_some())
        {
            return Err(wrong(format!(
                "cache output '{}' feeds no input matching \"{}\"",
                output.name, spec.inputs
            )));
        }
        let tokens = match &sources[tokens] {
            Source::Stage(v) => *v,
            _ => {
                return Err(wrong(format!(
                    "tokens = \"{}\" must be an input the stage gives, not one the host fills",
                    spec.tokens
                )));
            }
        };
        let slots = slots
            .into_iter()
            .map(|(input, output)| {
                let input = &signature.inputs[input];
                let shape = input.shape_string();
                let ty = input.element_type.ok_or_else(|| {
                    wrong(format!(
                        "cache input '{}' has an element type the host cannot hold",
                        input.name
                    ))
                })?;
                let dims = input.dims.as_ref().ok_or_else(|| {
                    wrong(format!("cache input '{}' has no declared shape", input.name))
                })?;
                if spec.axis >= dims.len() {
                    return Err(wrong(format!(
                        "axis = {} but cache input '{}' has rank {} ({shape})",
                        spec.axis,
                        input.name,
                        dims.len()
                    )));
                }
                let dims = dims
                    .iter()
                    .enumerate()
                    .map(|(d, dim)| match dim {
                        Dim::Symbol(_) if d == spec.axis => Ok(SlotDim::Axis),
                        Dim::Fixed(n) if d == spec.axis => Err(wrong(format!(
                            "dimension {d} of cache input '{}' ({shape}) is fixed at {n}; the cache axis must grow",
                            input.name
                        ))),
                        Dim::Fixed(n) => Ok(SlotDim::Fixed(*n)),
                        Dim::Symbol(s) => visible_inputs
                            .iter()
                            .enumerate()
                            .find_map(|(v, spec)| {
                                spec.dims
                                    .iter()
                                    .flatten()
                                    .position(|x| matches!(x, Dim::Symbol(t) if t == s))
                                    .map(|k| SlotDim::From { input: v, dim: k })
                            })
                            .ok_or_else(|| {
                                wrong(format!(
                                    "dimension {d} ({s}) of cache input '{}' is not a dimension of any input a stage gives, so the host cannot size the empty cache",
                                    input.name
                                ))
                            }),
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(Slot {
                    output: signature.outputs[output].name.clone(),
                    ty,
                    dims,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut visible_outputs: Vec<TensorSpec> = signature
            .outputs
            .iter()
            .zip(&outputs)
            .filter(|(_, slot)| slot.is_none())
            .map(|(o, _)| o.clone())
            .collect();
        let last = last_positions(
            &spec.last_position,
            &visible_inputs[tokens],
            &mut visible_outputs,
        )
        .map_err(wrong)?;
        let mut cut = last.into_iter();
        let wants = outputs
            .iter()
            .map(|slot| match slot {
                Some(_) => Want::Held,
                None => cut.next().flatten().map_or(Want::Bytes, Want::Last),
            })
            .collect();
        Ok(Self {
            signature: ModelSignature {
                inputs: visible_inputs,
                outputs: visible_outputs,
            },
            wiring: Wiring {
                sources,
                outputs,
                wants,
                slots,
                axis: spec.axis,
                tokens,
                max_context: spec.max_context,
                table,
            },
            inner,
        })
    }

    /// The most positions a context may hold.
    pub fn max_context(&self) -> u32 {
        self.wiring.max_context
    }

    /// What a compute on `inputs` after `state` will make, before anything
    /// runs, as far as the input shapes tell: the outputs the stage
    /// receives and the grown cache. `None` for inputs the compute will
    /// refuse anyway (it says why).
    pub fn predicted(&self, state: &KvState, inputs: &[NamedTensor]) -> Option<Predicted> {
        let visible = &self.signature.inputs;
        let symbols = check_named(self.inner.name(), visible, inputs).ok()?;
        let dims_of = |i: usize| {
            let name = &visible.get(i)?.name;
            Some(&inputs.iter().find(|t| &t.name == name)?.tensor.dimensions)
        };
        let new = *dims_of(self.wiring.tokens)?.last()?;
        let total = state.len.checked_add(new)?;
        if new == 0 || total > self.wiring.max_context {
            return None;
        }
        let cache = self
            .wiring
            .slots
            .iter()
            .map(|slot| {
                slot.dims
                    .iter()
                    .try_fold(slot.ty.size(), |n, d| {
                        let d = match d {
                            SlotDim::Fixed(d) => *d as usize,
                            SlotDim::Axis => total as usize,
                            SlotDim::From { input, dim } => *dims_of(*input)?.get(*dim)? as usize,
                        };
                        Some(n.saturating_mul(d))
                    })
                    .unwrap_or(0)
            })
            .fold(0, usize::saturating_add);
        Some(Predicted {
            outputs: output_bytes(&self.signature.outputs, &symbols),
            tensors: self.signature.outputs.len(),
            cache: Some(cache),
        })
    }

    /// Runs the model on the stage's `inputs` (new positions only) and the
    /// context's cache, keeps the grown cache in `state`, and returns the
    /// outputs the stage receives. On any failure `state` is unchanged.
    pub fn compute(
        &self,
        state: &mut KvState,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, ModelFailure> {
        let name = self.inner.name();
        let ordered = order_inputs(name, &self.signature.inputs, inputs)?;
        let mut symbols = HashMap::new();
        for (spec, tensor) in self.signature.inputs.iter().zip(&ordered) {
            check_input(name, spec, tensor, &mut symbols)?;
        }
        let w = &self.wiring;
        let tokens = &ordered[w.tokens].dimensions;
        let new = tokens.last().copied().unwrap_or(0);
        if new == 0 {
            return Err(format!(
                "model '{name}': input '{}' brings no new positions (its last dimension is 0)",
                self.signature.inputs[w.tokens].name
            )
            .into());
        }
        let batch = if tokens.len() > 1 { tokens[0] } else { 1 };
        let total = state.len.saturating_add(new);
        if total > w.max_context {
            return Err(format!(
                "model '{name}': this execution context would hold {total} positions ({} cached + {new} new), over max_context = {} ({}); start a new execution context for a new sequence, or shorten the prompt",
                state.len, w.max_context, w.table
            )
            .into());
        }
        let stage_dims: Vec<Vec<u32>> = ordered.iter().map(|t| t.dimensions.clone()).collect();
        let mut stage_inputs: Vec<Option<NnTensor>> = ordered.into_iter().map(Some).collect();
        let mut values = Vec::with_capacity(w.sources.len());
        for source in &w.sources {
            values.push(match source {
                Source::Stage(i) => RunInput::Bytes(stage_inputs[*i].take().ok_or_else(|| {
                    ModelFailure::from(format!("model '{name}': a stage input was wired twice"))
                })?),
                Source::Mask(ty) => RunInput::Bytes(integers(
                    *ty,
                    &[batch, total],
                    (0..batch).flat_map(|_| std::iter::repeat_n(1, total as usize)),
                )),
                Source::Positions(ty) => RunInput::Bytes(integers(
                    *ty,
                    &[batch, new],
                    (0..batch).flat_map(|_| (state.len..total).map(i64::from)),
                )),
                Source::Cache(slot) => match state.values.get(*slot) {
                    Some(held) => RunInput::Held(held.as_ref()),
                    None => RunInput::Bytes(self.empty(*slot, &stage_dims)?),
                },
            });
        }
        let outputs = catch_panic(name, "computing", || self.inner.run_held(values, &w.wants))?;
        if outputs.len() != w.outputs.len() {
            return Err(format!(
                "model '{name}' returned {} outputs but declares {}",
                outputs.len(),
                w.outputs.len()
            )
            .into());
        }
        let mut grown: Vec<Option<Box<dyn Held>>> = (0..w.slots.len()).map(|_| None).collect();
        let mut visible = Vec::with_capacity(self.signature.outputs.len());
        let mut specs = self.signature.outputs.iter();
        for (output, slot) in outputs.into_iter().zip(&w.outputs) {
            match (output, slot) {
                (RunOutput::Held(held), Some(slot)) => {
                    let dims = held.dims();
                    if dims.get(w.axis).copied() != Some(total as usize) {
                        return Err(format!(
                            "model '{name}': cache output '{}' has shape {dims:?}, but after {total} positions its axis {} should be {total}; check axis in {}",
                            w.slots[*slot].output, w.axis, w.table
                        )
                        .into());
                    }
                    grown[*slot] = Some(held);
                }
                (RunOutput::Bytes(tensor), None) => {
                    let spec = specs.next().ok_or_else(|| {
                        ModelFailure::from(format!("model '{name}' returned too many outputs"))
                    })?;
                    visible.push(NamedTensor {
                        name: spec.name.clone(),
                        tensor,
                    });
                }
                _ => {
                    return Err(format!(
                        "model '{name}': the backend did not keep the cache outputs it was asked to"
                    )
                    .into());
                }
            }
        }
        state.values = grown.into_iter().flatten().collect();
        state.len = total;
        Ok(visible)
    }

    /// An empty cache tensor for `slot`, sized from the stage's inputs.
    fn empty(&self, slot: usize, inputs: &[Vec<u32>]) -> Result<NnTensor, ModelFailure> {
        let slot = &self.wiring.slots[slot];
        let dimensions = slot
            .dims
            .iter()
            .map(|d| match d {
                SlotDim::Fixed(n) => Some(*n),
                SlotDim::Axis => Some(0),
                SlotDim::From { input, dim } => inputs.get(*input)?.get(*dim).copied(),
            })
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| {
                ModelFailure::from(format!(
                    "model '{}': cannot size the empty cache '{}'",
                    self.inner.name(),
                    slot.output
                ))
            })?;
        let ty = slot.ty.to_nn().ok_or_else(|| {
            ModelFailure::from(format!(
                "model '{}': cache '{}' of {} cannot be held",
                self.inner.name(),
                slot.output,
                slot.ty
            ))
        })?;
        Ok(NnTensor {
            dimensions,
            ty,
            data: Vec::new(),
        })
    }
}

/// For each output the stage receives, the axis `last_position` cuts to its
/// last position: the dimension the tokens input counts new positions
/// along. That dimension becomes 1 in what the stage sees.
fn last_positions(
    wanted: &[String],
    tokens: &TensorSpec,
    outputs: &mut [TensorSpec],
) -> Result<Vec<Option<usize>>, String> {
    let mut last = vec![None; outputs.len()];
    if wanted.is_empty() {
        return Ok(last);
    }
    let Some(Dim::Symbol(new)) = tokens.dims.as_ref().and_then(|d| d.last()) else {
        return Err(format!(
            "last_position needs the new positions to be a named dimension, but input '{}' is {}",
            tokens.name,
            tokens.shape_string()
        ));
    };
    for name in wanted {
        let Some(i) = outputs.iter().position(|o| &o.name == name) else {
            return Err(format!(
                "last_position names '{name}', which is not an output the stage receives; those are: {}",
                names(outputs)
            ));
        };
        let output = &mut outputs[i];
        let shape = output.shape_string();
        let axes: Vec<usize> = output
            .dims
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, d)| matches!(d, Dim::Symbol(s) if s == new))
            .map(|(a, _)| a)
            .collect();
        let [axis] = axes[..] else {
            return Err(format!(
                "last_position names '{name}' ({shape}), which does not have exactly one dimension '{new}' (the new positions of input '{}')",
                tokens.name
            ));
        };
        if let Some(dims) = output.dims.as_mut() {
            dims[axis] = Dim::Fixed(1);
        }
        last[i] = Some(axis);
    }
    Ok(last)
}

/// A tensor of integers of type `ty` (i64 or i32), little-endian.
fn integers(ty: ElementType, dims: &[u32], values: impl Iterator<Item = i64>) -> NnTensor {
    let mut data = Vec::new();
    for v in values {
        if ty == ElementType::I32 {
            data.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            data.extend_from_slice(&v.to_le_bytes());
        }
    }
    NnTensor {
        dimensions: dims.to_vec(),
        ty: ty.to_nn().unwrap_or(wasmtime_wasi_nn::wit::TensorType::I64),
        data,
    }
}

impl Model for KvModel {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &ModelSignature {
        &self.signature
    }

    fn describe(&self) -> String {
        format!(
            "{}, key/value cache of up to {} positions per execution context",
            self.inner.describe(),
            self.wiring.max_context
        )
    }

    fn run(&self, _inputs: Vec<NnTensor>) -> Result<Vec<NnTensor>, String> {
        Err(format!(
            "model '{}' keeps a key/value cache per execution context; it runs only through wasi-nn's compute on a graph-execution-context",
            self.inner.name()
        ))
    }

    fn kv(&self) -> Option<&KvModel> {
        Some(self)
    }
}
