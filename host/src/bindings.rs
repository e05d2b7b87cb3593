//! Host-side bindings for the `stage` world in `wit/`.
//!
//! Only the exports are used from here: the `wasi:nn` imports are served by
//! `wasmtime_wasi_nn::wit::add_to_linker`, so the generated import traits stay
//! unimplemented.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    world: "stage",
    path: "../wit",
});

// `Config`, `StageInfo`, `Tensor` and `StageError` are in scope at the root
// through the world's `use`.
pub use outpost::plugin::types::{
    Dim, ElementType, ErrorKind, File, StageError as GuestError, TensorSpec,
};
