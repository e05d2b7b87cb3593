//! `outpost new stage`: a buildable stage skeleton for a plugin author,
//! outside this repository: manifest, source, a test input with its
//! expected output, and a README with the commands that build and try it.

use crate::test_stage::toml_string;
use anyhow::{Context, Result, bail};
use std::path::Path;

/// Where the skeleton takes the guest SDK from.
pub enum Sdk<'a> {
    /// crates.io, once the SDK is published there.
    Published,
    /// A checkout of the Outpost repository's `guest-sdk`.
    Path(&'a Path),
    /// A git repository holding the Outpost workspace.
    Git(&'a str),
}

/// Writes a Rust stage named `name` into `dir` (which must not exist).
pub fn rust(name: &str, dir: &Path, sdk: &Sdk<'_>) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "stage name '{}': use 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter (it becomes the crate's and the component's name)",
            name.chars().take(40).collect::<String>()
        );
    }
    if dir.exists() {
        bail!(
            "{} exists already; give a new directory (--dir) so that nothing is overwritten",
            dir.display()
        );
    }
    let dependency = match sdk {
        Sdk::Published => "outpost-guest = \"0.1\"".to_owned(),
        Sdk::Path(path) => {
            let path = std::fs::canonicalize(path)
                .with_context(|| format!("--sdk-path: no directory {}", path.display()))?;
            if !path.join("Cargo.toml").exists() || !path.join("wit/stage.wit").exists() {
                bail!(
                    "--sdk-path {}: not the guest SDK (expected Cargo.toml and wit/stage.wit; it is `guest-sdk/` in the Outpost repository)",
                    path.display()
                );
            }
            format!(
                "outpost-guest = {{ path = {} }}",
                toml_string(&path.display().to_string())
            )
        }
        Sdk::Git(url) => format!(
            "outpost-guest = {{ git = {}, package = \"outpost-guest\" }}",
            toml_string(url)
        ),
    };
    let crate_name = name.replace('-', "_");
    let files: [(&str, String); 5] = [
        ("Cargo.toml", cargo_toml(name, &dependency)),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        ("test/input.json", TEST_INPUT.to_owned()),
        ("test/expected.json", TEST_EXPECTED.to_owned()),
        (
            "README.md",
            README
                .replace("{name}", name)
                .replace("{crate}", &crate_name)
                .replace("{dependency}", &dependency),
        ),
    ];
    for (file, text) in &files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    outln!(
        "stage '{name}' -> {}\n  build: cd {} && cargo build --release --target wasm32-wasip2\n  try:   outpost test-stage target/wasm32-wasip2/release/{crate_name}.wasm -f test/input.json --config factor=2 --expect test/expected.json",
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn cargo_toml(name: &str, dependency: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A stage is a WebAssembly component: build it with
#   cargo build --release --target wasm32-wasip2
[lib]
crate-type = ["cdylib"]

[dependencies]
{dependency}

# Its own workspace, wherever the directory is.
[workspace]

# Stages ship small: a panic in a stage is a trap the host contains.
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
panic = "abort"
strip = "debuginfo"
"#
    )
}

const LIB_RS: &str = r#"//! The stage `{name}`: multiplies every element of its f32 input `x` by
//! the config key `factor` (default 1). Replace `run` with your own work.

use outpost_guest::{Config, ElementType, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec};

struct Scale {
    factor: f32,
}

impl Stage for Scale {
    fn init(config: &Config) -> Result<Self, StageError> {
        // Unknown keys are refused, naming the ones the stage knows.
        config.deny_unknown(&["factor"])?;
        Ok(Scale {
            factor: config.get_or("factor", 1.0)?,
        })
    }

    fn describe(&self) -> StageInfo {
        let x = || TensorSpec::new("x", ElementType::F32).any_shape();
        StageInfo::new("{name}", env!("CARGO_PKG_VERSION"), "multiplies x by `factor`")
            .input(x())
            .output(x())
    }

    fn run(&mut self, mut inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
        let x = inputs.take("x")?;
        let y: Vec<f32> = x.to_f32()?.iter().map(|v| v * self.factor).collect();
        Ok(vec![Tensor::from_f32("x", x.dims.clone(), &y)?])
    }
}

outpost_guest::export_stage!(Scale);
"#;

const TEST_INPUT: &str = r#"{"x": {"dims": [2, 2], "type": "f32", "data": [1.0, -2.0, 0.5, 4.0]}}
"#;

const TEST_EXPECTED: &str = r#"{"x": {"dims": [2, 2], "type": "f32", "data": [2.0, -4.0, 1.0, 8.0]}}
"#;

const README: &str = r#"# {name}

An Outpost pipeline stage, written with the Rust guest SDK (`outpost-guest`).

    rustup target add wasm32-wasip2
    cargo build --release --target wasm32-wasip2
    outpost test-stage target/wasm32-wasip2/release/{crate}.wasm \
        -f test/input.json --config factor=2 --expect test/expected.json

`test/input.json` holds the stage's inputs and `test/expected.json` the outputs it
must give, as tensors in JSON (`{"NAME": {"dims": [..], "type": "f32", "data": [..]}}`).
`outpost test-stage` also takes `--file NAME=PATH` and `--model NAME=PATH` for stages
that open files or call models.

In a pipeline:

    [[stages]]
    name = "{name}"
    component = "target/wasm32-wasip2/release/{crate}.wasm"
    config = { factor = 2.0 }

The SDK comes from: `{dependency}` (Cargo.toml). Until `outpost-guest` is on
crates.io, point it at a checkout of the Outpost repository:
`outpost-guest = { path = "PATH/TO/outpost/guest-sdk" }`, or at a git repository holding it:
`outpost-guest = { git = "URL", package = "outpost-guest" }`.
"#;
