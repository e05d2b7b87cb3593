//! `outpost-guest-c`: what a C author needs besides clang and wasi-libc.
//!
//! - `outpost-guest-c bindings --out DIR` writes the stage world's C
//!   bindings (`stage.h`, `stage.c` and `stage_component_type.o`, made by
//!   wit-bindgen's C generator from the WIT the host binds) and the C SDK
//!   (`outpost.h`, `outpost.c`).
//! - `outpost-guest-c componentize CORE.wasm --out STAGE.wasm` turns the
//!   module clang links (`--target=wasm32-wasi -mexec-model=reactor`) into a
//!   stage component: it records the world the module was written against
//!   and serves wasi-libc's preview 1 calls with preview 2 through the WASI
//!   adapter of the wasmtime line the host runs.
//!
//! The bindings are for the `streaming-stage` world named `stage` in C, so a
//! stage may also `emit` partial outputs; a component imports only what its
//! code calls, so one that never emits is a plain `stage`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use wit_bindgen_core::wit_parser::{Resolve, WorldId};

const STAGE_WIT: &str = include_str!("../../wit/stage.wit");
const WASI_NN_WIT: &str = include_str!("../../wit/deps/wasi-nn/wasi-nn.wit");
const SDK_HEADER: &str = include_str!("../include/outpost.h");
const SDK_SOURCE: &str = include_str!("outpost.c");

/// The world the bindings are generated for, and the name C code sees.
const WORLD: &str = "streaming-stage";
const C_NAME: &str = "stage";

#[derive(Parser)]
#[command(
    version,
    about = "C bindings, SDK and componentizing for Outpost stages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the stage world's C bindings (stage.h, stage.c,
    /// stage_component_type.o) and the C SDK (outpost.h, outpost.c) into a
    /// directory.
    Bindings {
        /// The directory to write into (created when missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Turn the module clang linked (wasm32-wasi, -mexec-model=reactor) into
    /// a stage component.
    Componentize {
        /// The core WebAssembly module.
        core: PathBuf,
        /// Where to write the component.
        #[arg(long, short)]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bindings { out } => bindings(&out),
        Command::Componentize { core, out } => componentize(&core, &out),
    }
}

/// The stage WIT, as the host binds it.
fn stage_world() -> Result<(Resolve, WorldId)> {
    let mut resolve = Resolve::default();
    resolve
        .push_str("wit/deps/wasi-nn/wasi-nn.wit", WASI_NN_WIT)
        .context("parsing the wasi-nn WIT this tool carries")?;
    let package = resolve
        .push_str("wit/stage.wit", STAGE_WIT)
        .context("parsing the stage WIT this tool carries")?;
    let world = resolve
        .select_world(&[package], Some(WORLD))
        .context("finding the stage world")?;
    Ok((resolve, world))
}

fn bindings(out: &Path) -> Result<()> {
    let (mut resolve, world) = stage_world()?;
    let mut files = wit_bindgen_core::Files::default();
    // Also writes stage_component_type.o, which records the world in the
    // module it is linked into (stage.c refers to it, so it must be).
    let options = wit_bindgen_c::Opts {
        rename_world: Some(C_NAME.to_owned()),
        ..Default::default()
    };
    options
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("generating the C bindings")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let sdk = [
        ("outpost.h", SDK_HEADER.as_bytes()),
        ("outpost.c", SDK_SOURCE.as_bytes()),
    ];
    for (name, contents) in files.iter().chain(sdk) {
        let path = out.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Whether the module already says which world it was written against (a
/// `component-type` custom section, as wit-bindgen's object file adds). A
/// module built without it (another compiler, another bindings generator)
/// gets the stage world recorded here.
fn has_world(module: &[u8]) -> Result<bool> {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        match payload? {
            wasmparser::Payload::Version {
                encoding: wasmparser::Encoding::Component,
                ..
            } => bail!("this is already a component, not a core module"),
            wasmparser::Payload::CustomSection(section)
                if section.name().starts_with("component-type") =>
            {
                return Ok(true);
            }
            _ => {}
        }
    }
    Ok(false)
}

fn componentize(core: &Path, out: &Path) -> Result<()> {
    let mut module =
        std::fs::read(core).with_context(|| format!("reading the module {}", core.display()))?;
    let recorded =
        has_world(&module).with_context(|| format!("{} is not a core module", core.display()))?;
    if !recorded {
        let (resolve, world) = stage_world()?;
        wit_component::embed_component_metadata(
            &mut module,
            &resolve,
            world,
            wit_component::StringEncoding::UTF8,
        )
        .context("recording the stage world in the module")?;
    }
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|encoder| {
            encoder.adapter(
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
        })
        .and_then(|encoder| encoder.encode())
        .with_context(|| {
            format!(
                "making a stage component of {}: link it with clang --target=wasm32-wasi \
                 -mexec-model=reactor, with the generated stage.c, and define \
                 exports_stage_init, exports_stage_describe and exports_stage_run",
                core.display()
            )
        })?;
    std::fs::write(out, component).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
