//! Host-side bindings for the `streaming-stage` world in `wit/`: the
//! `stage` world plus `outpost:plugin/partials`, so components built for
//! either run (one that never emits simply does not import it).
//!
//! The exports are called by `stage`; the `wasi:nn` imports are served by
//! `crate::nn`, whose types stand for the interfaces' resources.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "streaming-stage",
    path: "../wit",
    // Every host function may trap (a stage past its wasi-nn limits).
    imports: { default: trappable },
    with: {
        "wasi:nn/graph.graph": crate::nn::GraphEntry,
        "wasi:nn/tensor.tensor": crate::nn::TensorEntry,
        "wasi:nn/inference.graph-execution-context": crate::nn::ContextEntry,
        "wasi:nn/errors.error": crate::nn::ErrorEntry,
    },
});

/// The world's exports, as the rest of the host calls them.
pub type Stage = StreamingStage;
/// A component linked and ready to instantiate.
pub type StagePre<T> = StreamingStagePre<T>;

// `Config`, `StageInfo`, `Tensor` and `StageError` are in scope at the root
// through the world's `use`.
pub use outpost::plugin::types::{
    Dim, ElementType, ErrorKind, File, StageError as GuestError, TensorSpec,
};
