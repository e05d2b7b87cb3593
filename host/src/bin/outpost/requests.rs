//! `outpost run`: turning arguments into requests, running them, printing
//! the results.

use crate::report::json_text;
use anyhow::{Context, Result, bail};
use outpost_host::{ElementType, Pipeline, Tensor};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

pub fn run(pipeline: &Pipeline, texts: &[String], files: &[String], stream: bool) -> Result<()> {
    if texts.is_empty() && files.is_empty() {
        bail!("nothing to run: give at least one --input TEXT or --input-file PATH");
    }
    let mut requests = Vec::new();
    for text in texts {
        let (name, value) = target(pipeline, text)?;
        requests.push((
            Value::String(value.to_owned()),
            text_request(pipeline, name, value)?,
        ));
    }
    for file in files {
        // A .json file names its own tensors.
        let (name, value) = if file.ends_with(".json") {
            ("", file.as_str())
        } else {
            target(pipeline, file)?
        };
        requests.push((
            Value::String(value.to_owned()),
            file_request(pipeline, name, Path::new(value))?,
        ));
    }
    let mut results = Vec::with_capacity(requests.len());
    for (request, (label, inputs)) in requests.into_iter().enumerate() {
        let start = Instant::now();
        // With --stream, what stages emit while they run is printed at once,
        // one JSON object per line; stdout closing stops the request.
        let sink: Option<outpost_host::stage::Sink> = stream.then(|| {
            outpost_host::stage::Sink::new(
                move |stage: &str, outputs: Vec<outpost_host::Tensor>| {
                    use std::io::Write as _;
                    let outputs: serde_json::Map<String, Value> = outputs
                        .iter()
                        .map(|t| (t.name.clone(), t.to_json()))
                        .collect();
                    let line = json!({ "request": request, "stage": stage, "partial": outputs });
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
                },
            )
        });
        let outputs = pipeline.run_streaming(inputs, None, &mut Vec::new(), sink)?;
        let elapsed = start.elapsed();
        let outputs: serde_json::Map<String, Value> = outputs
            .iter()
            .map(|t| (t.name.clone(), t.to_json()))
            .collect();
        results.push(json!({ "input": label, "outputs": outputs, "latency_ms": elapsed.as_secs_f64() * 1e3 }));
    }
    let report = json!({ "pipeline": pipeline.name(), "results": results });
    if stream {
        // Every line one JSON object, the report last.
        outln!("{report}");
    } else {
        outln!("{}", json_text(&report));
    }
    Ok(())
}

/// Splits `[NAME=]VALUE`; without a name, the pipeline must have one input.
fn target<'a>(pipeline: &'a Pipeline, arg: &'a str) -> Result<(&'a str, &'a str)> {
    if let Some((name, value)) = arg.split_once('=')
        && pipeline.inputs().iter().any(|(n, _)| n == name)
    {
        return Ok((name, value));
    }
    match pipeline.inputs() {
        [(only, _)] => Ok((only.as_str(), arg)),
        inputs => bail!(
            "pipeline '{}' takes several inputs ({}); write NAME=VALUE",
            pipeline.name(),
            inputs
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn declared_type(pipeline: &Pipeline, name: &str) -> Option<ElementType> {
    pipeline
        .inputs()
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, spec)| spec.as_ref()?.element_type)
}

fn text_request(pipeline: &Pipeline, name: &str, text: &str) -> Result<Vec<Tensor>> {
    match declared_type(pipeline, name) {
        Some(ElementType::Utf8) | None => Ok(vec![Tensor::text(name, text)]),
        Some(other) => bail!(
            "pipeline input '{name}' takes {other}, not text; give it with --input-file (raw bytes, or tensors in .json)"
        ),
    }
}

fn file_request(pipeline: &Pipeline, name: &str, path: &Path) -> Result<Vec<Tensor>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read input file {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        let value: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        return outpost_host::tensor::tensors_from_json(&value)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    match declared_type(pipeline, name) {
        Some(ElementType::Utf8) => {
            let text = String::from_utf8(bytes)
                .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
            Ok(vec![Tensor::text(name, &text)])
        }
        _ => Ok(vec![Tensor::bytes(name, bytes)]),
    }
}
