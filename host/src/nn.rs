//! wasi-nn as stages see it: the WIT interfaces (`graph`, `tensor`,
//! `inference`, `errors`) served by the host, with every resource a stage
//! creates in the host charged to that stage.
//!
//! A stage's linear memory is bounded by its `ResourceLimiter`, but a tensor
//! it constructs is copied into the host, an execution context holds model
//! state there, and every output and error is a host allocation too. Left
//! uncounted, a stage with `memory_mib = 64` that builds tensors in a loop
//! grows the host without bound. So each resource is weighed when it is
//! created and released when it is dropped or consumed: bytes against
//! `limits.nn_memory_mib` (default `memory_mib`), entries against
//! `limits.nn_resources`. A stage that would pass either traps, the call
//! fails with `StageError::MemoryLimit`, and the instance is dropped.
//!
//! Models come only from the host's preloaded, verified set, by name
//! (`load-by-name`); `load` of model bytes from a guest is refused.

use crate::backend::kv::KvState;
use crate::backend::{Diagnostics, Predicted, SharedModel};
use crate::bindings::wasi::nn::{errors, graph, inference, tensor};
use std::collections::HashMap;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi_nn::backend::NamedTensor;
use wasmtime_wasi_nn::wit::Tensor as NnTensor;

/// Bytes charged for a resource beyond its data: the host's bookkeeping.
const ENTRY_OVERHEAD: usize = 64;

/// What a stage's wasi-nn resources hold in the host, and its limits.
#[derive(Debug)]
pub struct NnLedger {
    bytes: usize,
    /// Of `bytes`, what key/value caches hold.
    cached: usize,
    entries: usize,
    max_bytes: usize,
    max_entries: usize,
    /// What was refused, once a limit was hit.
    exceeded: Option<String>,
}

impl NnLedger {
    /// An empty ledger with these limits.
    pub fn new(max_bytes: usize, max_entries: usize) -> Self {
        Self {
            bytes: 0,
            cached: 0,
            entries: 0,
            max_bytes,
            max_entries,
            exceeded: None,
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Resources held now.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// What passed a limit, if anything did since the last [`NnLedger::clear_exceeded`].
    pub fn exceeded(&self) -> Option<&str> {
        self.exceeded.as_deref()
    }

    /// Forgets a breach (a new call starts on a sound instance).
    pub fn clear_exceeded(&mut self) {
        self.exceeded = None;
    }

    /// Charges one resource of `bytes`, or refuses it, remembering why.
    fn charge(&mut self, what: &str, bytes: usize) -> wasmtime::Result<Charge> {
        let weight = bytes.saturating_add(ENTRY_OVERHEAD);
        let bytes_after = self.bytes.saturating_add(weight);
        let refusal = if self.entries >= self.max_entries {
            Some(format!(
                "a new wasi-nn {what} would be its resource number {}, over the limit of {} (limits.nn_resources); drop tensors and contexts it no longer needs",
                self.entries + 1,
                self.max_entries
            ))
        } else if bytes_after > self.max_bytes {
            let caches = if self.cached > 0 {
                format!(" ({} of them in key/value caches)", self.cached)
            } else {
                String::new()
            };
            Some(format!(
                "a new wasi-nn {what} of {bytes} bytes would make the stage hold {bytes_after} bytes in the host{caches}, over its limit of {} MiB (limits.nn_memory_mib)",
                self.max_bytes >> 20
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            self.exceeded.get_or_insert(message.clone());
            return Err(wasmtime::Error::msg(message));
        }
        self.bytes = bytes_after;
        self.entries += 1;
        Ok(Charge(weight))
    }

    /// Refuses, before a compute of `model` runs, one whose results
    /// (`predicted` from its input shapes) would take the stage over its
    /// limit: its outputs, and a cache that replaces one charged `replaced`
    /// bytes (`cache_before` of them its cache).
    fn check_room(
        &mut self,
        model: &str,
        predicted: Predicted,
        replaced: usize,
        cache_before: usize,
    ) -> wasmtime::Result<()> {
        // As `charge` will weigh them: data, shape and bookkeeping.
        let outputs = predicted
            .outputs
            .saturating_add(predicted.tensors.saturating_mul(ENTRY_OVERHEAD));
        let cache = predicted.cache.map(|c| c.saturating_add(ENTRY_OVERHEAD));
        let bytes = outputs.saturating_add(cache.unwrap_or(0));
        let bytes_after = self.bytes.saturating_sub(replaced).saturating_add(bytes);
        if bytes_after <= self.max_bytes {
            return Ok(());
        }
        let (made, held) = match predicted.cache {
            Some(cache) => (
                format!(
                    "{} bytes of outputs and a key/value cache of {cache} bytes",
                    predicted.outputs
                ),
                format!(
                    " ({} of them in key/value caches)",
                    self.cached
                        .saturating_sub(cache_before)
                        .saturating_add(cache)
                ),
            ),
            None => (
                format!("{} bytes of outputs", predicted.outputs),
                String::new(),
            ),
        };
        let message = format!(
            "a compute of model '{model}' would make {made} (predicted from its input shapes, before running) and the stage hold {bytes_after} bytes in the host{held}, over its limit of {} MiB (limits.nn_memory_mib); send fewer or shorter sequences",
            self.max_bytes >> 20
        );
        self.exceeded.get_or_insert(message.clone());
        Err(wasmtime::Error::msg(message))
    }

    /// Key/value caches went from holding `before` bytes to `after` (for
    /// messages: the bytes themselves are charged as their contexts).
    fn note_cache(&mut self, before: usize, after: usize) {
        self.cached = self.cached.saturating_sub(before).saturating_add(after);
    }

    fn release(&mut self, charge: Charge) {
        self.bytes = self.bytes.saturating_sub(charge.0);
        self.entries = self.entries.saturating_sub(1);
    }
}

/// What one resource was charged.
#[derive(Debug)]
struct Charge(usize);

/// A `graph`: a preloaded model.
pub struct GraphEntry {
    model: SharedModel,
    charge: Charge,
}

/// A `tensor` the stage made or a model returned.
pub struct TensorEntry {
    tensor: NnTensor,
    charge: Charge,
}

/// A `graph-execution-context`: for a model with a key/value cache, one
/// sequence, whose cache it holds (and is charged for).
pub struct ContextEntry {
    model: SharedModel,
    charge: Charge,
    kv: KvState,
    /// The call during which `kv` was last extended.
    call: u64,
}

/// An `error`.
pub struct ErrorEntry {
    code: errors::ErrorCode,
    message: String,
    charge: Charge,
}

/// The wasi-nn state of one stage instance.
pub struct NnState {
    models: HashMap<String, SharedModel>,
    diagnostics: Diagnostics,
    ledger: NnLedger,
    /// Counts the calls into the stage: a key/value cache lives within one.
    call: u64,
    /// Execution contexts that filled a cache during this call (their
    /// table slots), freed when it ends.
    caching: Vec<u32>,
}

impl NnState {
    /// The models `models` (by the names the pipeline gives them), with
    /// failures and inference time recorded in `diagnostics`, and resources
    /// bounded by `ledger`.
    pub fn new(
        models: &[(String, SharedModel)],
        diagnostics: Diagnostics,
        ledger: NnLedger,
    ) -> Self {
        Self {
            models: models.iter().cloned().collect(),
            diagnostics,
            ledger,
            call: 0,
            caching: Vec::new(),
        }
    }

    /// A new call into the stage begins. Key/value caches do not outlive
    /// the call that filled them: instances are pooled across requests,
    /// and one request's tokens must never shape another's answer (nor a
    /// full cache fail every request after it). A context kept across
    /// calls starts its next compute on an empty cache.
    pub fn new_call(&mut self) {
        self.call = self.call.wrapping_add(1);
    }

    /// Bytes its execution contexts hold in key/value caches.
    pub fn cache_bytes(&self) -> usize {
        self.ledger.cached
    }

    /// What the stage's resources hold.
    pub fn ledger(&self) -> &NnLedger {
        &self.ledger
    }

    /// The ledger, to clear a breach.
    pub fn ledger_mut(&mut self) -> &mut NnLedger {
        &mut self.ledger
    }
}

/// The view the generated bindings call into.
pub struct NnView<'a> {
    table: &'a mut ResourceTable,
    state: &'a mut NnState,
}

impl<'a> NnView<'a> {
    /// A view of one store's resource table and wasi-nn state.
    pub fn new(table: &'a mut ResourceTable, state: &'a mut NnState) -> Self {
        Self { table, state }
    }

    /// A call into the stage ended: the caches its contexts filled are
    /// freed now, not when the context next computes, so an idle instance
    /// kept for later requests holds none.
    pub fn end_call(&mut self) {
        for rep in std::mem::take(&mut self.state.caching) {
            // A context the stage dropped (its slot empty, or reused by
            // another resource) is gone already.
            let Ok(entry) = self
                .table
                .get_mut(&Resource::<ContextEntry>::new_borrow(rep))
            else {
                continue;
            };
            let cache = std::mem::take(&mut entry.kv);
            self.state.ledger.note_cache(cache.bytes(), 0);
            // The context is charged for itself again. That cannot pass a
            // limit: the stage holds less than a moment ago.
            self.state
                .ledger
                .release(std::mem::replace(&mut entry.charge, Charge(0)));
            if let Ok(charge) = self.state.ledger.charge("execution context", 0) {
                entry.charge = charge;
            }
        }
    }

    /// A wasi-nn error for the guest, charged like any resource.
    fn error(
        &mut self,
        code: errors::ErrorCode,
        message: String,
    ) -> wasmtime::Result<Resource<ErrorEntry>> {
        let charge = self.state.ledger.charge("error", message.len())?;
        Ok(self.table.push(ErrorEntry {
            code,
            message,
            charge,
        })?)
    }

    /// What a compute gives the guest: its outputs as tensors, or an error,
    /// each charged.
    fn computed(&mut self, result: Result<Vec<NamedTensor>, String>) -> ComputeResult {
        match result {
            Ok(outputs) => {
                let mut resources = Vec::with_capacity(outputs.len());
                for NamedTensor { name, tensor } in outputs {
                    resources.push((name, self.push_tensor(tensor)?));
                }
                Ok(Ok(resources))
            }
            Err(message) => Ok(Err(self.error(errors::ErrorCode::RuntimeError, message)?)),
        }
    }

    fn push_tensor(&mut self, tensor: NnTensor) -> wasmtime::Result<Resource<TensorEntry>> {
        let bytes = tensor.data.len() + 4 * tensor.dimensions.len();
        let charge = self.state.ledger.charge("tensor", bytes)?;
        Ok(self.table.push(TensorEntry { tensor, charge })?)
    }
}

struct HasNn;

impl HasData for HasNn {
    type Data<'a> = NnView<'a>;
}

/// Adds wasi-nn's WIT interfaces, served by [`NnView`], to `linker`.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    graph::add_to_linker::<T, HasNn>(linker, view)?;
    tensor::add_to_linker::<T, HasNn>(linker, view)?;
    inference::add_to_linker::<T, HasNn>(linker, view)?;
    errors::add_to_linker::<T, HasNn>(linker, view)?;
    Ok(())
}

type NnResult<T> = wasmtime::Result<Result<Resource<T>, Resource<ErrorEntry>>>;

/// What `compute` gives the guest: named output tensors, or an error.
type ComputeResult =
    wasmtime::Result<Result<Vec<(String, Resource<TensorEntry>)>, Resource<ErrorEntry>>>;

impl graph::Host for NnView<'_> {
    fn load(
        &mut self,
        _builder: Vec<graph::GraphBuilder>,
        _encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> NnResult<GraphEntry> {
        let message = "stages cannot load model bytes of their own: the host preloads the models the signed pipeline grants this stage; use load-by-name".to_owned();
        self.state.diagnostics.record(message.clone());
        Ok(Err(self.error(errors::ErrorCode::Security, message)?))
    }

    fn load_by_name(&mut self, name: String) -> NnResult<GraphEntry> {
        let Some(model) = self.state.models.get(&name).cloned() else {
            let mut granted: Vec<&str> = self.state.models.keys().map(String::as_str).collect();
            granted.sort_unstable();
            let message = format!(
                "no model '{name}' is granted to this stage; it may load: {}",
                if granted.is_empty() {
                    "none".to_owned()
                } else {
                    granted.join(", ")
                }
            );
            self.state.diagnostics.record(message.clone());
            return Ok(Err(self.error(errors::ErrorCode::NotFound, message)?));
        };
        let charge = self.state.ledger.charge("graph", name.len())?;
        Ok(Ok(self.table.push(GraphEntry { model, charge })?))
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(&mut self, graph: Resource<GraphEntry>) -> NnResult<ContextEntry> {
        let model = self.table.get(&graph)?.model.clone();
        let charge = self.state.ledger.charge("execution context", 0)?;
        Ok(Ok(self.table.push(ContextEntry {
            model,
            charge,
            kv: KvState::default(),
            call: self.state.call,
        })?))
    }

    fn drop(&mut self, graph: Resource<GraphEntry>) -> wasmtime::Result<()> {
        let entry = self.table.delete(graph)?;
        self.state.ledger.release(entry.charge);
        Ok(())
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    fn new(
        &mut self,
        dimensions: tensor::TensorDimensions,
        ty: tensor::TensorType,
        data: tensor::TensorData,
    ) -> wasmtime::Result<Resource<TensorEntry>> {
        self.push_tensor(NnTensor {
            dimensions,
            ty: nn_type(ty),
            data,
        })
    }

    fn dimensions(
        &mut self,
        tensor: Resource<TensorEntry>,
    ) -> wasmtime::Result<tensor::TensorDimensions> {
        Ok(self.table.get(&tensor)?.tensor.dimensions.clone())
    }

    fn ty(&mut self, tensor: Resource<TensorEntry>) -> wasmtime::Result<tensor::TensorType> {
        Ok(wit_type(self.table.get(&tensor)?.tensor.ty))
    }

    fn data(&mut self, tensor: Resource<TensorEntry>) -> wasmtime::Result<tensor::TensorData> {
        Ok(self.table.get(&tensor)?.tensor.data.clone())
    }

    fn drop(&mut self, tensor: Resource<TensorEntry>) -> wasmtime::Result<()> {
        let entry = self.table.delete(tensor)?;
        self.state.ledger.release(entry.charge);
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    fn compute(
        &mut self,
        context: Resource<ContextEntry>,
        inputs: Vec<(String, Resource<TensorEntry>)>,
    ) -> ComputeResult {
        let model = self.table.get(&context)?.model.clone();
        // The inputs are handed over: they leave the table, and the ledger.
        let mut named = Vec::with_capacity(inputs.len());
        for (name, resource) in inputs {
            let entry = self.table.delete(resource)?;
            self.state.ledger.release(entry.charge);
            named.push(NamedTensor {
                name,
                tensor: entry.tensor,
            });
        }
        let diagnostics = self.state.diagnostics.clone();
        if let Some(kv) = model.kv() {
            let entry = self.table.get_mut(&context)?;
            let mut cache = std::mem::take(&mut entry.kv);
            let before = cache.bytes();
            if entry.call != self.state.call {
                cache = KvState::default();
                entry.call = self.state.call;
            }
            // The cache after this compute replaces the one charged now.
            // Inputs the compute will refuse predict nothing: it says why.
            if let Some(predicted) = kv.predicted(&cache, &named)
                && let Err(e) =
                    self.state
                        .ledger
                        .check_room(model.name(), predicted, entry.charge.0, before)
            {
                entry.kv = cache;
                return Err(e);
            }
            let result = diagnostics.timed(|| kv.compute(&mut cache, named));
            // The context weighs what its cache holds now: a cache that
            // outgrows the stage's limits traps it (MemoryLimit), as any
            // other wasi-nn allocation would.
            let entry = self.table.get_mut(&context)?;
            self.state
                .ledger
                .release(std::mem::replace(&mut entry.charge, Charge(0)));
            self.state.ledger.note_cache(before, cache.bytes());
            entry.charge = self.state.ledger.charge(
                &format!("key/value cache of {} positions", cache.len()),
                cache.bytes(),
            )?;
            if !cache.is_empty() && !self.state.caching.contains(&context.rep()) {
                self.state.caching.push(context.rep());
            }
            entry.kv = cache;
            return self.computed(result);
        }
        if let Some(predicted) = model.predicted(&named) {
            self.state
                .ledger
                .check_room(model.name(), predicted, 0, 0)?;
        }
        let result = diagnostics.timed(|| model.compute(named));
        self.computed(result)
    }

    fn drop(&mut self, context: Resource<ContextEntry>) -> wasmtime::Result<()> {
        let entry = self.table.delete(context)?;
        self.state.ledger.note_cache(entry.kv.bytes(), 0);
        self.state.ledger.release(entry.charge);
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    fn code(&mut self, error: Resource<ErrorEntry>) -> wasmtime::Result<errors::ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    fn data(&mut self, error: Resource<ErrorEntry>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.message.clone())
    }

    fn drop(&mut self, error: Resource<ErrorEntry>) -> wasmtime::Result<()> {
        let entry = self.table.delete(error)?;
        self.state.ledger.release(entry.charge);
        Ok(())
    }
}

fn nn_type(ty: tensor::TensorType) -> wasmtime_wasi_nn::wit::TensorType {
    use tensor::TensorType as W;
    use wasmtime_wasi_nn::wit::TensorType as N;
    match ty {
        W::Fp16 => N::Fp16,
        W::Fp32 => N::Fp32,
        W::Fp64 => N::Fp64,
        W::Bf16 => N::Bf16,
        W::U8 => N::U8,
        W::I32 => N::I32,
        W::I64 => N::I64,
    }
}

fn wit_type(ty: wasmtime_wasi_nn::wit::TensorType) -> tensor::TensorType {
    use tensor::TensorType as W;
    use wasmtime_wasi_nn::wit::TensorType as N;
    match ty {
        N::Fp16 => W::Fp16,
        N::Fp32 => W::Fp32,
        N::Fp64 => W::Fp64,
        N::Bf16 => W::Bf16,
        N::U8 => W::U8,
        N::I32 => W::I32,
        N::I64 => W::I64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_refuses_past_either_limit_and_frees_on_release() {
        let mut ledger = NnLedger::new(1000, 3);
        let a = ledger.charge("tensor", 400).unwrap();
        assert_eq!(ledger.bytes(), 400 + ENTRY_OVERHEAD);
        let e = ledger.charge("tensor", 600).unwrap_err().to_string();
        assert!(e.contains("limits.nn_memory_mib"), "{e}");
        assert!(ledger.exceeded().is_some());
        ledger.clear_exceeded();
        ledger.release(a);
        assert_eq!((ledger.bytes(), ledger.entries()), (0, 0));
        let _held: Vec<Charge> = (0..3)
            .map(|_| ledger.charge("context", 0).unwrap())
            .collect();
        let e = ledger.charge("context", 0).unwrap_err().to_string();
        assert!(e.contains("limits.nn_resources"), "{e}");
    }

    #[test]
    fn a_predicted_step_replaces_the_cache_its_context_holds() {
        let mut ledger = NnLedger::new(10_000, 10);
        let context = ledger.charge("key/value cache", 6_000).unwrap();
        ledger.note_cache(0, 6_000);
        // The next step grows the cache to 7,000 bytes and returns 500: it
        // fits, since the 7,000 replace the 6,000.
        let step = Predicted {
            outputs: 500,
            tensors: 1,
            cache: Some(7_000),
        };
        ledger.check_room("lm", step, context.0, 6_000).unwrap();
        // Counted on top of the old cache it would not.
        assert!(ledger.check_room("lm", step, 0, 0).is_err());
        ledger.clear_exceeded();
        // 500 + 64 of outputs and 9,400 + 64 of cache pass 10,000 by 28.
        let big = Predicted {
            outputs: 500,
            tensors: 1,
            cache: Some(9_400),
        };
        let e = ledger
            .check_room("lm", big, context.0, 6_000)
            .unwrap_err()
            .to_string();
        for needle in [
            "model 'lm' would make 500 bytes of outputs and a key/value cache of 9400 bytes",
            "the stage hold 10028 bytes in the host (9400 of them in key/value caches)",
            "limits.nn_memory_mib",
        ] {
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
        assert!(ledger.exceeded().is_some());
        // Nothing was charged by predicting.
        assert_eq!(ledger.bytes(), 6_000 + ENTRY_OVERHEAD);
    }
}
