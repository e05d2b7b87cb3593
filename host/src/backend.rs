//! wasi-nn backends: how a preloaded model turns tensors into tensors.
//!
//! Each backend implements the `wasmtime_wasi_nn::backend` traits so that the
//! host can register its graphs in the `wasi:nn` registry that guests reach
//! through `load-by-name`.

pub mod tract;

use crate::bindings::TensorSpec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

/// The last failure a backend reported to one store's guest.
///
/// wasi-nn hands guests a generic "failed while accessing backend"; the
/// host keeps the backend's own words here so the error it reports for the
/// stage says what was wrong with the tensors or the model.
#[derive(Clone, Default)]
pub struct Diagnostics(Arc<Mutex<Option<String>>>);

impl Diagnostics {
    /// Remembers `message` as the latest failure.
    pub fn record(&self, message: String) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(message);
        }
    }

    /// Takes the latest failure, leaving none.
    pub fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut last| last.take())
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
