#![doc = include_str!("../README.md")]
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
