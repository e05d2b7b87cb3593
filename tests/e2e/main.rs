//! End-to-end tests: the real `outpost` binary and host library running real
//! components built from `plugins/` and `tests/plugins/`, real models.
#![allow(clippy::unwrap_used)]

mod allocator;
mod backends;
mod bundles;
mod cache;
mod compat;
mod demo;
mod device_state;
mod fleet;
mod generate;
mod image;
mod languages;
mod minilm;
mod model_inputs;
mod pipeline_errors;
mod precompiled;
mod serve;
mod serve_generate;
mod stage_errors;
mod test_stage;
