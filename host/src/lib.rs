//! The Outpost host: runs pipelines of sandboxed WebAssembly stages whose
//! inference goes through wasi-nn to backends the host owns.
//!
//! ```no_run
//! use outpost_host::{EngineOptions, Host, Tensor};
//!
//! let host = Host::new(&EngineOptions::default())?;
//! let pipeline = host.load_pipeline("host/pipelines/demo/intent.toml".as_ref())?;
//! let outputs = pipeline.run(vec![Tensor::text("text", "stop the conveyor")])?;
//! println!("{}", outputs[0].to_json());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
pub mod bindings;
pub mod bundling;
pub mod cache;
pub mod compat;
pub mod device;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod nn;
pub mod pipeline;
pub mod policy;
pub mod sandbox;
pub mod stage;
pub mod tensor;

pub use bindings::{Dim, ElementType, Tensor, TensorSpec};
pub use engine::{
    AddressSpace, Allocator, Bounds, EngineOptions, Layout, MIN_POOL_INSTANCES, Runtime,
};
pub use error::{PipelineError, RunError, StageError};
pub use pipeline::{CodeOrigin, Host, Pipeline};
