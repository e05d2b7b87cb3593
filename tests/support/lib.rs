//! Support for the end-to-end tests: where the built binary, plugins, models
//! and reference tools are, and scratch directories for pipeline files.
//!
//! The tests need what `tests/run.sh` builds first: the `outpost` binary, the
//! plugin components (`cargo plugins`, `cargo plugins-wasip1`), the fetched
//! MiniLM models and the Python reference environment.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod servers;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from)
}

fn must_exist(path: PathBuf, how: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: {how} (or run tests/run.sh, which does everything)",
        path.display()
    );
    path
}

/// The `outpost` binary of the profile these tests were built with.
pub fn outpost_bin() -> PathBuf {
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/outpost
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    must_exist(
        profile_dir.join("outpost"),
        "build it with `cargo build -p outpost-host`",
    )
}

/// A stage component built by `cargo plugins`, e.g. `plugin("mean_pool")`,
/// or by `plugins/languages.sh` (`c_classify`, `py_classify`, ...).
pub fn plugin(name: &str) -> PathBuf {
    must_exist(
        target_dir()
            .join("wasm32-wasip2/plugin")
            .join(format!("{name}.wasm")),
        "build the plugins with `cargo plugins`, and the C, Python and JavaScript ones with `bash plugins/languages.sh`",
    )
}

/// A host with `options` that keeps compiled components across runs in
/// `target/e2e-scratch/language-cache`: the Python and JavaScript stages
/// carry their interpreters (12-19 MB), which take seconds to compile.
pub fn host_with_component_cache(options: &outpost_host::EngineOptions) -> outpost_host::Host {
    let cache = target_dir().join("e2e-scratch/language-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let key = outpost_host::cache::CacheKey::load_or_create(&cache.join("cache.key")).unwrap();
    outpost_host::Host::new(options)
        .unwrap()
        .with_component_cache(&cache, key)
}

/// The wasm32-wasip1 program built by `cargo plugins-wasip1`.
pub fn classic_program() -> PathBuf {
    must_exist(
        target_dir().join("wasm32-wasip1/plugin/wasi-nn-classic.wasm"),
        "build it with `cargo plugins-wasip1`",
    )
}

/// The demo's directory (model, vocabulary, labels, pipeline).
pub fn demo_dir() -> PathBuf {
    repo().join("host/pipelines/demo")
}

/// The demo pipeline's text with its components, model and vocabulary at
/// absolute paths, so that it can be written anywhere (its labels file
/// stays relative: `labels.txt` beside where it is written, or edit it).
pub fn demo_pipeline_text() -> String {
    let demo = demo_dir();
    let plugins = target_dir().join("wasm32-wasip2/plugin");
    std::fs::read_to_string(demo.join("intent.toml"))
        .unwrap()
        .replace(
            "../../../target/wasm32-wasip2/plugin",
            &plugins.display().to_string(),
        )
        .replace(
            "\"intent.onnx\"",
            &format!("\"{}\"", demo.join("intent.onnx").display()),
        )
        .replace(
            "\"vocab.txt\"",
            &format!("\"{}\"", demo.join("vocab.txt").display()),
        )
}

/// A file fetched by `host/pipelines/minilm/fetch_models.py`.
pub fn fetched(name: &str) -> PathBuf {
    must_exist(
        repo().join("host/pipelines/minilm/fetched").join(name),
        "fetch it with `python3 host/pipelines/minilm/fetch_models.py`",
    )
}

/// ONNX Runtime's shared library for the native backend
/// (`OUTPOST_ONNXRUNTIME_LIB`, else where `host/onnxruntime/fetch.py` puts it).
pub fn onnxruntime_lib() -> PathBuf {
    let path = std::env::var_os("OUTPOST_ONNXRUNTIME_LIB").map_or_else(
        || target_dir().join("onnxruntime/libonnxruntime.so"),
        PathBuf::from,
    );
    must_exist(path, "fetch it with `python3 host/onnxruntime/fetch.py`")
}

/// The Python with numpy, onnxruntime and tokenizers (`OUTPOST_PYTHON`, else
/// the venv `tests/run.sh` makes in target/py).
pub fn python() -> PathBuf {
    let path = std::env::var_os("OUTPOST_PYTHON")
        .map_or_else(|| target_dir().join("py/bin/python"), PathBuf::from);
    must_exist(
        path,
        "create it with `python3 -m venv target/py && target/py/bin/pip install -r tests/requirements.txt`",
    )
}

/// Runs `tests/support/reference.py` with `args`, feeding `stdin_json`.
pub fn reference(args: &[&str], stdin_json: &Value) -> Value {
    let mut child = Command::new(python())
        .arg(repo().join("tests/support/reference.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        stdin_json.to_string().as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "reference.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A pipeline of one `infer` stage on the demo model: request tensors
/// `input_ids` and `attention_mask` in, `logits` out. Use with
/// [`Scratch::pipeline`].
pub const INFER_ONLY_PIPELINE: &str = r#"
[pipeline]
name = "logits"
inputs = ["input_ids", "attention_mask"]
[models.intent]
path = "{demo}/intent.onnx"
[[stages]]
name = "infer"
component = "{plugins}/infer.wasm"
models = ["intent"]
inputs = ["input_ids", "attention_mask"]
config = { model = "intent" }
"#;

/// What one run of the binary did.
pub struct Run {
    /// Exit status was success.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The exit code; `None` when a signal ended it (a crash).
    pub code: Option<i32>,
}

impl Run {
    /// Stdout as JSON; panics with both streams if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts the run failed and its stderr mentions every one of `needles`.
    pub fn expect_error(&self, needles: &[&str]) {
        assert!(
            !self.ok,
            "expected failure, but it succeeded:\n{}",
            self.stdout
        );
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}:\n{}",
                self.stderr
            );
        }
    }
}

/// Runs `outpost` with `args` from the repository root.
pub fn outpost<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    finish(Command::new(outpost_bin()).args(args))
}

/// Runs `outpost` with `args` under `ulimit -v KIB` (the address space a
/// small board or a service's `LimitAS=` leaves), from the repository root.
pub fn outpost_with_address_space<S: AsRef<std::ffi::OsStr>>(kib: u64, args: &[S]) -> Run {
    finish(
        Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
            .arg(outpost_bin())
            .args(args),
    )
}

fn finish(command: &mut Command) -> Run {
    let out: Output = command.current_dir(repo()).output().unwrap();
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        code: out.status.code(),
    }
}

/// A scratch directory under the target directory, removed on drop.
pub struct Scratch(PathBuf);

static SCRATCH: AtomicUsize = AtomicUsize::new(0);

impl Scratch {
    /// A new, empty directory.
    pub fn new() -> Self {
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        let dir = target_dir()
            .join("e2e-scratch")
            .join(format!("{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside, returning its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes a pipeline file whose `{plugins}` and `{demo}` placeholders
    /// are replaced by the plugin and demo directories.
    pub fn pipeline(&self, toml: &str) -> PathBuf {
        let toml = toml
            .replace(
                "{plugins}",
                &target_dir()
                    .join("wasm32-wasip2/plugin")
                    .display()
                    .to_string(),
            )
            .replace("{demo}", &demo_dir().display().to_string());
        self.write("pipeline.toml", toml)
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The numbers in a tensor as printed by `outpost run`.
pub fn tensor_values(tensor: &Value) -> Vec<f64> {
    tensor["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}
