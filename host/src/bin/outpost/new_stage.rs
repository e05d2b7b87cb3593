//! `outpost new stage`: a buildable stage skeleton for a plugin author,
//! outside this repository, in Rust, Python, JavaScript or C: manifest or
//! build script, source, a test input with its expected output, and a README
//! with the commands that build and try it. Every language's skeleton is the
//! same stage (x times `factor`), so the test files are shared.

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

/// The languages a skeleton can be written in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

impl Lang {
    /// From `--lang`'s value (clap allows only these).
    pub fn parse(lang: &str) -> Result<Self> {
        Ok(match lang {
            "rust" => Lang::Rust,
            "python" => Lang::Python,
            "js" => Lang::Js,
            "c" => Lang::C,
            other => bail!("--lang {other}: use rust, python, js or c"),
        })
    }
}

/// Writes a stage named `name` in `lang` into `dir` (which must not exist).
pub fn stage(lang: Lang, name: &str, dir: &Path, sdk: &Sdk<'_>) -> Result<()> {
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
    let sdk_dir = match sdk {
        Sdk::Path(path) => {
            let path = std::fs::canonicalize(path)
                .with_context(|| format!("--sdk-path: no directory {}", path.display()))?;
            if !path.join("Cargo.toml").exists() || !path.join("wit/stage.wit").exists() {
                bail!(
                    "--sdk-path {}: not the guest SDK (expected Cargo.toml and wit/stage.wit; it is `guest-sdk/` in the Outpost repository)",
                    path.display()
                );
            }
            Some(path)
        }
        _ => None,
    };
    let (files, build, try_it) = match lang {
        Lang::Rust => rust(name, sdk_dir.as_deref(), sdk),
        other => scripted(other, name, sdk_dir.as_deref(), sdk)?,
    };
    for (file, text) in &files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        #[cfg(unix)]
        if file.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", path.display()))?;
        }
    }
    outln!(
        "stage '{name}' -> {}\n  build: cd {} && {build}\n  try:   {try_it}",
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// What a skeleton is: its files, and the commands that build and try it.
type Skeleton = (Vec<(&'static str, String)>, String, String);

/// `text` as one word for bash, whatever it holds.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// `outpost test-stage` on the skeleton's component with its own test.
fn try_command(component: &str) -> String {
    format!(
        "outpost test-stage {component} -f test/input.json --config factor=2 --expect test/expected.json"
    )
}

/// A Rust stage: a crate of its own depending on `outpost-guest`.
fn rust(name: &str, sdk_dir: Option<&Path>, sdk: &Sdk<'_>) -> Skeleton {
    let dependency = match (sdk, sdk_dir) {
        (Sdk::Path(_), Some(path)) => format!(
            "outpost-guest = {{ path = {} }}",
            toml_string(&path.display().to_string())
        ),
        (Sdk::Git(url), _) => format!(
            "outpost-guest = {{ git = {}, package = \"outpost-guest\" }}",
            toml_string(url)
        ),
        _ => "outpost-guest = \"0.1\"".to_owned(),
    };
    let crate_name = name.replace('-', "_");
    let files: [(&'static str, String); 5] = [
        ("Cargo.toml", cargo_toml(name, &dependency)),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        ("test/input.json", TEST_INPUT.to_owned()),
        ("test/expected.json", TEST_EXPECTED.to_owned()),
        (
            "README.md",
            README
                .replace(
                    "{test_and_use}",
                    &TEST_AND_USE.replace(
                        "{component}",
                        &format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
                    ),
                )
                .replace("{name}", name)
                .replace("{crate}", &crate_name)
                .replace("{dependency}", &dependency),
        ),
    ];
    (
        files.into(),
        "cargo build --release --target wasm32-wasip2".to_owned(),
        try_command(&format!("target/wasm32-wasip2/release/{crate_name}.wasm")),
    )
}

/// A Python, JavaScript or C stage: its source and a `build.sh` that finds
/// the SDK in the Outpost repository's `guest-sdk/` (until the SDKs are
/// published), at the path given, or cloned from the git repository given.
fn scripted(lang: Lang, name: &str, sdk_dir: Option<&Path>, sdk: &Sdk<'_>) -> Result<Skeleton> {
    let (language, toolchain) = match lang {
        Lang::Python => ("Python", "componentize-py"),
        Lang::Js => ("JavaScript", "componentize-js"),
        _ => ("C", "clang, wasi-libc and outpost-guest-c"),
    };
    // Bash text that sets SDK to the guest SDK's directory. A C stage needs
    // none: outpost-guest-c carries the C SDK.
    let find_sdk = match (lang, sdk, sdk_dir) {
        (Lang::C, ..) => String::new(),
        (_, Sdk::Path(_), Some(path)) => format!(
            "SDK=${{OUTPOST_GUEST_SDK:-{}}}\n",
            shell_quote(&path.display().to_string())
        ),
        // Cloned once, whole or not at all: an interrupted clone is retried.
        (_, Sdk::Git(url), _) => format!(
            "if [ -z \"${{OUTPOST_GUEST_SDK:-}}\" ] && ! [ -d .outpost/repo ]; then\n    rm -rf .outpost/cloning\n    git clone --depth 1 {} .outpost/cloning\n    mv .outpost/cloning .outpost/repo\nfi\nSDK=\"${{OUTPOST_GUEST_SDK:-.outpost/repo/guest-sdk}}\"\n",
            shell_quote(url)
        ),
        _ => bail!(
            "the {language} SDK is not published yet: give --sdk-path PATH/TO/outpost/guest-sdk (a checkout of the Outpost repository) or --sdk-git URL (a git repository holding it)"
        ),
    };
    let module = name.replace('-', "_");
    let (source, text, build) = match lang {
        Lang::Python => (
            "app.py",
            PY_APP.to_owned(),
            format!(
                "componentize-py -d \"$SDK/wit\" -w streaming-stage componentize app -p . -p \"$SDK/python\" -o {module}.wasm"
            ),
        ),
        Lang::Js => (
            "stage.js",
            JS_STAGE.to_owned(),
            format!(
                "[ -d node_modules ] || npm install --no-audit --no-fund\nmkdir -p build\ncp stage.js \"$SDK/js/outpost-guest.js\" build/\n# No http, fetch or clocks: the host serves none of the first two.\nnpx componentize-js build/stage.js --wit \"$SDK/wit\" --world-name streaming-stage -d http fetch-event clocks -o {module}.wasm"
            ),
        ),
        _ => (
            "stage.c",
            C_STAGE.to_owned(),
            format!(
                "outpost-guest-c bindings --out build\nclang --target=wasm32-wasi -O2 -Wall -Wextra -I build stage.c build/outpost.c build/stage.c \\\n    build/stage_component_type.o -mexec-model=reactor -Wl,--strip-debug -o build/core.wasm\noutpost-guest-c componentize build/core.wasm --out {module}.wasm"
            ),
        ),
    };
    let script = format!(
        "#!/usr/bin/env bash\n# Builds {module}.wasm, the stage '{name}' in {language} ({toolchain}; see README.md).\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n{find_sdk}{build}\n"
    );
    let readme = SCRIPTED_README
        .replace(
            "{test_and_use}",
            &TEST_AND_USE.replace("{component}", &format!("{module}.wasm")),
        )
        .replace("{name}", name)
        .replace("{module}", &module)
        .replace("{language}", language)
        .replace("{source}", source)
        .replace(
            "{sdk_note}",
            if lang == Lang::C {
                "The C SDK (`outpost.h`) and the bindings come from `outpost-guest-c bindings`,\nwhich `build.sh` runs into `build/`."
            } else {
                "The SDK is the `guest-sdk/` directory of the Outpost repository: `build.sh` finds\nit where `outpost new stage` was told (set `OUTPOST_GUEST_SDK` to use another)."
            },
        )
        .replace("{setup}", match lang {
            Lang::Python => PY_SETUP,
            Lang::Js => JS_SETUP,
            _ => C_SETUP,
        });
    let mut files = vec![
        (source, text.replace("{name}", name)),
        ("build.sh", script),
        ("test/input.json", TEST_INPUT.to_owned()),
        ("test/expected.json", TEST_EXPECTED.to_owned()),
        ("README.md", readme),
    ];
    if lang == Lang::Js {
        files.push(("package.json", JS_PACKAGE.replace("{name}", name)));
    }
    Ok((
        files,
        "./build.sh".to_owned(),
        try_command(&format!("{module}.wasm")),
    ))
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

{test_and_use}
The SDK comes from: `{dependency}` (Cargo.toml). Until `outpost-guest` is on
crates.io, point it at a checkout of the Outpost repository:
`outpost-guest = { path = "PATH/TO/outpost/guest-sdk" }`, or at a git repository holding it:
`outpost-guest = { git = "URL", package = "outpost-guest" }`.
"#;

const PY_APP: &str = r#""""The stage `{name}`: multiplies every element of its f32 input `x` by
the config key `factor` (default 1). Replace `run` with your own work."""

import outpost_guest as og


class Scale(og.Stage):
    def __init__(self, config: og.Config):
        # Unknown keys are refused, naming the ones the stage knows.
        config.deny_unknown(["factor"])
        self.factor = config.get_typed("factor", float, 1.0)

    def describe(self) -> og.StageInfo:
        x = og.spec("x", og.ElementType.F32)
        return og.stage_info("{name}", "0.1.0", "multiplies x by `factor`", inputs=[x], outputs=[x])

    def run(self, inputs: og.Inputs) -> list:
        x = inputs.take("x")
        return [og.from_f32("x", x.dims, [v * self.factor for v in og.to_f32(x)])]


# What componentize-py exports.
WitWorld = og.export_stage(Scale)
"#;

const PY_SETUP: &str = "    python3 -m venv .venv && .venv/bin/pip install componentize-py==0.25.1\n    PATH=\"$PWD/.venv/bin:$PATH\" ./build.sh";

const JS_STAGE: &str = r#"// The stage `{name}`: multiplies every element of its f32 input `x` by
// the config key `factor` (default 1). Replace `run` with your own work.

import * as og from './outpost-guest.js';

class Scale {
  constructor(config) {
    // Unknown keys are refused, naming the ones the stage knows.
    config.denyUnknown(['factor']);
    this.factor = config.getTyped('factor', 'number', 1);
  }

  describe() {
    const x = og.spec('x', 'f32');
    return og.stageInfo('{name}', '0.1.0', 'multiplies x by `factor`', [x], [x]);
  }

  run(inputs) {
    const x = inputs.take('x');
    return [og.fromF32('x', x.dims, Array.from(og.toF32(x), (v) => v * this.factor))];
  }
}

export const { init, describe, run } = og.exportStage(Scale);
"#;

const JS_PACKAGE: &str = r#"{
  "name": "{name}",
  "private": true,
  "type": "module",
  "devDependencies": {
    "@bytecodealliance/componentize-js": "0.23.0",
    "@bytecodealliance/preview2-shim": "0.25.0"
  }
}
"#;

const JS_SETUP: &str = "    ./build.sh    # installs componentize-js with npm the first time";

const C_STAGE: &str = r#"/* The stage `{name}`: multiplies every element of its f32 input `x` by
 * the config key `factor` (default 1). Replace `exports_stage_run`'s work
 * with your own. */
#include <stdlib.h>

#include "outpost.h"

static double factor = 1.0;

bool exports_stage_init(stage_config_t *config, stage_stage_error_t *err) {
    /* Unknown keys are refused, naming the ones the stage knows. */
    static const char *const known[] = {"factor"};
    bool ok = outpost_config_deny_unknown(config, known, 1, err) &&
              outpost_config_number(config, "factor", 1.0, &factor, err);
    stage_config_free(config);
    return ok;
}

void exports_stage_describe(stage_stage_info_t *ret) {
    outpost_info(ret, "{name}", "0.1.0", "multiplies x by `factor`", 1, 1);
    outpost_spec(&ret->inputs.ptr[0], "x", OUTPOST_F32, NULL, OUTPOST_ANY_RANK);
    outpost_spec(&ret->outputs.ptr[0], "x", OUTPOST_F32, NULL, OUTPOST_ANY_RANK);
}

bool exports_stage_run(stage_list_tensor_t *inputs, stage_list_tensor_t *ret,
                       stage_stage_error_t *err) {
    const stage_tensor_t *x = outpost_input(inputs, "x", err);
    size_t count = 0;
    float *values = x != NULL ? outpost_to_f32(x, &count, err) : NULL;
    bool ok = values != NULL;
    if (ok) {
        for (size_t i = 0; i < count; i++) {
            values[i] = (float)(values[i] * factor);
        }
        outpost_outputs(ret, 1);
        ok = outpost_tensor(&ret->ptr[0], "x", OUTPOST_F32, x->dims.ptr, x->dims.len, values,
                            count * sizeof(float), err);
    }
    free(values);
    stage_list_tensor_free(inputs);
    return ok;
}
"#;

const C_SETUP: &str = "    sudo apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32   # Debian 12\n    cargo install --path PATH/TO/outpost/guest-sdk/c    # outpost-guest-c (or --git URL outpost-guest-c)\n    ./build.sh";

/// The part of every skeleton's README on its test and on using it.
const TEST_AND_USE: &str = r#"`test/input.json` holds the stage's inputs and `test/expected.json` the outputs it
must give, as tensors in JSON (`{"NAME": {"dims": [..], "type": "f32", "data": [..]}}`).
`outpost test-stage` also takes `--file NAME=PATH` and `--model NAME=PATH` for stages
that open files or call models.

In a pipeline:

    [[stages]]
    name = "{name}"
    component = "{component}"
    config = { factor = 2.0 }
"#;

const SCRIPTED_README: &str = r#"# {name}

An Outpost pipeline stage, written in {language} with the Outpost guest SDK
(`{source}`; `build.sh` makes `{module}.wasm`, a WebAssembly component).

{setup}
    outpost test-stage {module}.wasm -f test/input.json --config factor=2 --expect test/expected.json

{test_and_use}
{sdk_note}
"#;
