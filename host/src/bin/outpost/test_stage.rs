//! `outpost test-stage`: one stage's component run alone, on inputs from a
//! file, its outputs printed or compared with what is expected. What a
//! stage author runs before the stage goes into a pipeline.

use crate::report::json_text;
use anyhow::{Context, Result, bail};
use outpost_host::{ElementType, Host, Tensor};
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};

pub struct Args<'a> {
    pub component: &'a Path,
    pub inputs: &'a [String],
    pub input_files: &'a [PathBuf],
    pub config: &'a [String],
    pub models: &'a [String],
    pub files: &'a [String],
    pub expect: Option<&'a Path>,
    pub tolerance: f64,
}

/// Runs the stage; `Ok(false)` when its outputs are not what `--expect`
/// holds (the differences printed).
pub fn run(host: &Host, args: &Args<'_>) -> Result<bool> {
    let mut inputs = Vec::new();
    for arg in args.inputs {
        let (name, text) = arg.split_once('=').with_context(|| {
            format!("--input '{arg}': write NAME=TEXT (the stage input's name)")
        })?;
        inputs.push(Tensor::text(name, text));
    }
    for path in args.input_files {
        inputs.extend(tensors_in(path, "--input-file")?);
    }
    if inputs.is_empty() {
        bail!("nothing to run: give --input NAME=TEXT or --input-file TENSORS.json");
    }
    let scratch = Scratch::new()?;
    let pipeline = scratch.pipeline(args, &inputs)?;
    let pipeline = match host.load_pipeline(&pipeline) {
        Ok(p) => p,
        // The pipeline file is this command's own: its path means nothing
        // to the user.
        Err(e) => {
            let why = format!("{e:#}").replace(&format!("{}: ", pipeline.display()), "");
            let hint = if why.contains("neither a pipeline input") {
                " (give every input the stage takes: --input NAME=TEXT or --input-file)"
            } else {
                ""
            };
            bail!("cannot run stage {}: {why}{hint}", args.component.display())
        }
    };
    let outputs = pipeline.run(inputs)?;
    let got: Map<String, Value> = outputs
        .iter()
        .map(|t| (t.name.clone(), t.to_json()))
        .collect();
    let Some(expect) = args.expect else {
        outln!("{}", json_text(&json!({ "outputs": got })));
        return Ok(true);
    };
    let expected = tensors_in(expect, "--expect")?;
    let differences = compare(&expected, &outputs, args.tolerance);
    if differences.is_empty() {
        outln!(
            "ok: {} output(s) as expected ({})",
            expected.len(),
            expect.display()
        );
        return Ok(true);
    }
    eprintln!(
        "stage {} does not give what {} expects:",
        args.component.display(),
        expect.display()
    );
    for d in &differences {
        eprintln!("  {d}");
    }
    eprintln!("its outputs: {}", Value::Object(got));
    Ok(false)
}

fn tensors_in(path: &Path, flag: &str) -> Result<Vec<Tensor>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag}: cannot read {}", path.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{flag} {}: not JSON; write {{\"NAME\": {{\"dims\": [..], \"type\": \"f32\", \"data\": [..]}}}}",
            path.display()
        )
    })?;
    outpost_host::tensor::tensors_from_json(&value)
        .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))
}

/// What differs between `expected` and `got`: missing outputs, shapes,
/// types, and values (floats within `tolerance`, relative above 1).
fn compare(expected: &[Tensor], got: &[Tensor], tolerance: f64) -> Vec<String> {
    let mut differences = Vec::new();
    for want in expected {
        let Some(have) = got.iter().find(|t| t.name == want.name) else {
            differences.push(format!(
                "no output '{}'; the stage gave: {}",
                want.name,
                got.iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            continue;
        };
        if have.element_type != want.element_type || have.dims != want.dims {
            differences.push(format!(
                "output '{}' is {}{:?}, expected {}{:?}",
                want.name, have.element_type, have.dims, want.element_type, want.dims
            ));
            continue;
        }
        if want.element_type == ElementType::Utf8 {
            if have.data != want.data {
                differences.push(format!(
                    "output '{}' is {:?}, expected {:?}",
                    want.name,
                    String::from_utf8_lossy(&have.data),
                    String::from_utf8_lossy(&want.data)
                ));
            }
            continue;
        }
        let (have_values, want_values) = (numbers(have), numbers(want));
        let mut wrong = have_values
            .iter()
            .zip(&want_values)
            .enumerate()
            .filter(|(_, (h, w))| !close(h, w, want.element_type, tolerance));
        if let Some((i, (h, w))) = wrong.next() {
            let more = wrong.count();
            differences.push(format!(
                "output '{}' element {i} is {h}, expected {w}{}",
                want.name,
                if more > 0 {
                    format!(" ({more} more elements differ)")
                } else {
                    String::new()
                }
            ));
        }
    }
    differences
}

/// A numeric tensor's elements, as its JSON form writes them (f16 and bf16
/// as their bits).
fn numbers(tensor: &Tensor) -> Vec<Value> {
    match tensor.to_json().get("data") {
        Some(Value::Array(values)) => values.clone(),
        _ => Vec::new(),
    }
}

/// f32 and f64 within `tolerance` (relative above 1); the rest exactly.
fn close(have: &Value, want: &Value, ty: ElementType, tolerance: f64) -> bool {
    match (ty, have.as_f64(), want.as_f64()) {
        (ElementType::F32 | ElementType::F64, Some(h), Some(w)) => {
            (h - w).abs() <= tolerance * w.abs().max(1.0)
        }
        _ => have == want,
    }
}

/// A directory of its own for the one-stage pipeline, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "outpost-test-stage-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }

    /// A pipeline of the one stage, its inputs those given, its models and
    /// files those named, its config the `--config` entries.
    fn pipeline(&self, args: &Args<'_>, inputs: &[Tensor]) -> Result<PathBuf> {
        let absolute = |path: &str, flag: &str| -> Result<String> {
            let path =
                std::fs::canonicalize(path).with_context(|| format!("{flag}: no file {path}"))?;
            Ok(toml_string(&path.display().to_string()))
        };
        let pair = |arg: &'_ str, flag: &str| -> Result<(String, String)> {
            let (name, value) = arg
                .split_once('=')
                .with_context(|| format!("{flag} '{arg}': write NAME=PATH"))?;
            Ok((name.to_owned(), value.to_owned()))
        };
        let names: Vec<String> = inputs.iter().map(|t| toml_string(&t.name)).collect();
        let mut text = format!(
            "[pipeline]\nname = \"test-stage\"\ninputs = [{}]\n",
            names.join(", ")
        );
        let mut model_names = Vec::new();
        for arg in args.models {
            let (name, path) = pair(arg, "--model")?;
            text.push_str(&format!(
                "[models.{}]\npath = {}\n",
                toml_string(&name),
                absolute(&path, "--model")?
            ));
            model_names.push(toml_string(&name));
        }
        let mut files = Vec::new();
        for arg in args.files {
            let (name, path) = pair(arg, "--file")?;
            files.push(format!(
                "{} = {}",
                toml_string(&name),
                absolute(&path, "--file")?
            ));
        }
        let mut config = Vec::new();
        for entry in args.config {
            let (key, value) = entry.split_once('=').with_context(|| {
                format!(
                    "--config '{entry}': write KEY=VALUE, VALUE in TOML (3, 0.5, \"text\", [1, 2])"
                )
            })?;
            let line = format!("{} = {}", toml_string(key.trim()), value.trim());
            // A bare word is meant as text.
            let line = if toml::from_str::<toml::Table>(&line).is_ok() {
                line
            } else {
                format!(
                    "{} = {}",
                    toml_string(key.trim()),
                    toml_string(value.trim())
                )
            };
            config.push(line);
        }
        let component = absolute(&args.component.display().to_string(), "component")?;
        let stage = args
            .component
            .file_stem()
            .map_or_else(|| "stage".to_owned(), |s| s.to_string_lossy().into_owned());
        text.push_str(&format!(
            "[[stages]]\nname = {}\ncomponent = {component}\nmodels = [{}]\nfiles = {{ {} }}\nconfig = {{ {} }}\n",
            toml_string(&stage),
            model_names.join(", "),
            files.join(", "),
            config.join(", ")
        ));
        toml::from_str::<toml::Table>(&text)
            .with_context(|| format!("the arguments do not make a pipeline:\n{text}"))?;
        let path = self.0.join("pipeline.toml");
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `s` as a TOML basic string.
pub fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
