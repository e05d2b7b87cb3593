//! The compatibility path: wasi-nn programs written before components (core
//! modules for wasm32-wasip1 using the `wasi_ephemeral_nn` witx ABI) run
//! against the same preloaded models, by name.

use crate::backend::{Diagnostics, SharedModel, granted_models};
use crate::engine::{EPOCH_TICK, Runtime};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Duration;
use wasmtime::{Linker, Module, Store, Trap};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi_nn::witx::WasiNnCtx;

struct CompatHost {
    wasi: WasiP1Ctx,
    nn: WasiNnCtx,
}

/// Why a program could not be run to completion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompatError {
    /// The module could not be read, compiled or linked.
    #[error("{}: {message}", path.display())]
    Load {
        /// The module file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// The program trapped.
    #[error("{}: trapped: {message}", path.display())]
    Trap {
        /// The module file.
        path: std::path::PathBuf,
        /// The trap, with the backend's words when wasi-nn failed.
        message: String,
    },
    /// The program ran past its deadline.
    #[error("{}: timed out after {} ms", path.display(), limit.as_millis())]
    Timeout {
        /// The module file.
        path: std::path::PathBuf,
        /// The deadline.
        limit: Duration,
    },
}

#[cfg(feature = "cranelift")]
fn compile(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Module, String> {
    Module::new(engine, bytes).map_err(|e| format!("not a core WebAssembly module: {e:#}"))
}

#[cfg(not(feature = "cranelift"))]
fn compile(_engine: &wasmtime::Engine, _bytes: &[u8]) -> Result<Module, String> {
    Err("this host has no compiler (built without the `cranelift` feature), and core modules are compiled on the device; run them on a host built with it".to_owned())
}

/// Runs the command module in `path` with `args` (the program name is
/// prepended), stdout and stderr inherited, nothing else granted, and the
/// given models loadable by name. Returns the program's exit code.
pub fn exec(
    runtime: &Runtime,
    path: &Path,
    models: &[(String, SharedModel)],
    args: &[String],
    timeout: Duration,
) -> Result<i32, CompatError> {
    let load = |message: String| CompatError::Load {
        path: path.to_owned(),
        message,
    };
    let engine = runtime.engine();
    let bytes = std::fs::read(path).map_err(|e| load(format!("cannot read: {e}")))?;
    let module = compile(engine, &bytes).map_err(load)?;
    let mut linker: Linker<CompatHost> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |h: &mut CompatHost| &mut h.wasi)
        .and_then(|()| {
            wasmtime_wasi_nn::witx::add_to_linker(&mut linker, |h: &mut CompatHost| &mut h.nn)
        })
        .map_err(|e| load(format!("{e:#}")))?;

    let program = path.file_name().map_or_else(
        || "program".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let wasi = WasiCtxBuilder::new()
        .inherit_stdout()
        .inherit_stderr()
        .arg(&program)
        .args(args)
        .build_p1();
    let diagnostics = Diagnostics::default();
    let nn = WasiNnCtx::new(Vec::new(), granted_models(models, &diagnostics));
    let mut store = Store::new(engine, CompatHost { wasi, nn });
    let ticks = timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1);
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
    store.epoch_deadline_trap();

    // The witx glue in wasmtime-wasi-nn panics on a guest pointer it cannot
    // convert; catch that here so a bad program cannot take the host down.
    let outcome = catch_unwind(AssertUnwindSafe(|| -> wasmtime::Result<()> {
        let instance = linker.instantiate(&mut store, &module)?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call(&mut store, ())
    }));
    let trap = |message: String| {
        let message = match diagnostics.take() {
            Some(detail) => format!("{message}; the backend said: {detail}"),
            None => message,
        };
        CompatError::Trap {
            path: path.to_owned(),
            message,
        }
    };
    match outcome {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                Ok(exit.0)
            } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                Err(CompatError::Timeout {
                    path: path.to_owned(),
                    limit: timeout,
                })
            } else {
                Err(trap(format!("{e:#}")))
            }
        }
        Err(_) => Err(trap(
            "the program passed wasi-nn an argument the host could not read".into(),
        )),
    }
}
