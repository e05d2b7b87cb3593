//! wasi-nn backends: how a preloaded model turns tensors into tensors.
//!
//! Each backend implements the `wasmtime_wasi_nn::backend` traits so that the
//! host can register its graphs in the `wasi:nn` registry that guests reach
//! through `load-by-name`.

pub mod tract;

use crate::bindings::TensorSpec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tract::TractGraph;
use wasmtime_wasi_nn::{Graph, GraphRegistry, Registry};

/// What a backend learned about a model when it loaded it.
#[derive(Clone, Debug)]
pub struct ModelSignature {
    /// The model's inputs, in the order the model declares them.
    pub inputs: Vec<TensorSpec>,
    /// The model's outputs, in the order the model declares them.
    pub outputs: Vec<TensorSpec>,
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
    inference_time: Duration,
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

    /// Time spent in models during the current call.
    pub fn inference_time(&self) -> Duration {
        self.with(|s| s.inference_time)
    }

    /// Whether the current call went over its inference limit.
    pub fn inference_timed_out(&self) -> bool {
        self.with(|s| s.inference_timed_out)
    }

    /// Starts a new call: no failure, no inference time.
    pub fn reset(&self) {
        self.with(|s| {
            s.last_error = None;
            s.inference_time = Duration::ZERO;
            s.inference_timed_out = false;
        });
    }
}

/// The wasi-nn registry of one store: exactly the models its code was
/// granted, under the names the pipeline gives them.
pub fn granted_models(models: &[(String, Arc<TractGraph>)], diagnostics: &Diagnostics) -> Registry {
    let graphs = models
        .iter()
        .map(|(name, graph)| (name.clone(), graph.to_nn_graph(diagnostics)))
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
