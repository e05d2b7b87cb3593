//! Write Outpost pipeline stages in Rust.
//!
//! A stage is a type that implements [`Stage`], exported with [`export_stage!`]
//! and built for `wasm32-wasip2`. The host creates an instance, calls
//! [`Stage::init`] once with the stage's configuration from the pipeline, and then
//! [`Stage::run`] for every request. Everything crossing the boundary is a named
//! [`Tensor`]; models are reached through [`nn::Model`] (wasi-nn), by the name
//! the pipeline gives them.
//!
//! A complete stage that scales every `f32` element of its input:
//!
//! ```
//! use outpost_guest::{Config, Dim, ElementType, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec};
//!
//! struct Scale {
//!     factor: f32,
//! }
//!
//! impl Stage for Scale {
//!     fn init(config: &Config) -> Result<Self, StageError> {
//!         Ok(Scale { factor: config.get_or("factor", 1.0)? })
//!     }
//!
//!     fn describe(&self) -> StageInfo {
//!         let any_shape = || TensorSpec::new("x", ElementType::F32).any_shape();
//!         StageInfo::new("scale", "0.1.0", "multiplies every element by `factor`")
//!             .input(any_shape())
//!             .output(any_shape())
//!     }
//!
//!     fn run(&mut self, mut inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
//!         let x = inputs.take("x")?;
//!         let scaled: Vec<f32> = x.to_f32()?.iter().map(|v| v * self.factor).collect();
//!         Ok(vec![Tensor::from_f32("x", x.dims.clone(), &scaled)?])
//!     }
//! }
//!
//! outpost_guest::export_stage!(Scale);
//! # fn main() {}
//! ```
#![deny(missing_docs)]

extern crate self as outpost_guest;

#[doc(hidden)]
pub mod bindings;
mod config;
mod error;
mod info;
pub mod nn;
mod stage;
mod tensor;

pub use bindings::outpost::plugin::types::{
    Config as RawConfig, Dim, ElementType, ErrorKind, StageError, StageInfo, Tensor, TensorSpec,
};
pub use config::Config;
pub use stage::{Inputs, Stage};

/// Sends `outputs` to the request's client now, while the stage is still
/// running (e.g. each token as it is generated). Returns false once nobody
/// listens any more: the client went away, so the stage should stop and
/// return. Outside a streaming request the outputs go nowhere and it
/// returns true. One call may carry at most the stage's output limit.
pub fn emit(outputs: &[Tensor]) -> bool {
    bindings::outpost::plugin::partials::emit(outputs)
}

/// Items the [`export_stage!`] macro expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::bindings::Guest;
    pub use crate::stage::{StageSlot, describe, init, run};
    pub use wit_bindgen;
}

/// Exports a type implementing [`Stage`] as the component's `stage` world.
///
/// Use it once per plugin crate, at the crate root: `outpost_guest::export_stage!(MyStage);`
#[macro_export]
macro_rules! export_stage {
    ($stage:ty) => {
        const _: () = {
            ::std::thread_local! {
                static OUTPOST_STAGE: $crate::__private::StageSlot<$stage> =
                    $crate::__private::StageSlot::new();
            }

            struct OutpostStageExport;

            impl $crate::__private::Guest for OutpostStageExport {
                fn init(
                    config: $crate::RawConfig,
                ) -> ::core::result::Result<(), $crate::StageError> {
                    $crate::__private::init(&OUTPOST_STAGE, config)
                }
                fn describe() -> $crate::StageInfo {
                    $crate::__private::describe(&OUTPOST_STAGE)
                }
                fn run(
                    inputs: ::std::vec::Vec<$crate::Tensor>,
                ) -> ::core::result::Result<::std::vec::Vec<$crate::Tensor>, $crate::StageError>
                {
                    $crate::__private::run(&OUTPOST_STAGE, inputs)
                }
            }

    $crate::bindings::export!(OutpostStageExport with_types_in $crate::bindings);
        };
    };
}
