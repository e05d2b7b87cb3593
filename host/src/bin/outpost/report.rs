//! What `outpost inspect` shows, and the JSON layout every command prints.

use outpost_host::Pipeline;
use serde_json::{Value, json};

pub fn inspect(pipeline: &Pipeline) -> Value {
    let specs = |specs: &[outpost_host::TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| json!({ "name": s.name, "shape": s.shape_string() }))
            .collect()
    };
    let models: Vec<Value> = pipeline
        .models()
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "path": m.path.display().to_string(),
                "backend": m.backend(),
                "digest": m.digest.to_string(),
                "inputs": specs(&m.signature().inputs),
                "outputs": specs(&m.signature().outputs),
            })
        })
        .collect();
    let stages: Vec<Value> = pipeline
        .stages()
        .iter()
        .map(|s| {
            let info = s.stage().info();
            let pairs = |it: Vec<(&str, &str)>| -> Vec<Value> {
                it.into_iter().map(|(stage, pipe)| json!({ "stage": stage, "pipeline": pipe })).collect()
            };
            json!({
                "name": s.stage().name(),
                "component": s.component().display().to_string(),
                "digest": s.component_digest().to_string(),
                "code": s.code_origin().to_string(),
                "plugin": { "name": info.name, "version": info.version, "description": info.description },
                "declared_inputs": specs(&info.inputs),
                "declared_outputs": specs(&info.outputs),
                "inputs": pairs(s.input_names().collect()),
                "outputs": pairs(s.output_names().collect()),
                "models": s.models(),
                "limits": {
                    "memory_mib": s.stage().limits().memory_bytes >> 20,
                    "timeout_ms": s.stage().limits().timeout.as_millis() as u64,
                },
            })
        })
        .collect();
    json!({
        "pipeline": pipeline.name(),
        "version": pipeline.version(),
        "description": pipeline.description(),
        "inputs": pipeline.inputs().iter().map(|(n, s)| json!({
            "name": n,
            "shape": s.as_ref().map(|s| s.shape_string()),
        })).collect::<Vec<_>>(),
        "outputs": pipeline.outputs(),
        "models": models,
        "stages": stages,
    })
}

/// Indented JSON, except that arrays of plain values (tensor data, shapes)
/// stay on one line: a 384-float embedding is one line, not 384.
pub fn json_text(value: &Value) -> String {
    fn write(out: &mut String, value: &Value, indent: usize) {
        let pad = |n: usize| "  ".repeat(n);
        match value {
            Value::Array(items) if items.iter().all(|v| !v.is_array() && !v.is_object()) => {
                out.push_str(&Value::Array(items.clone()).to_string());
            }
            Value::Array(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    write(out, item, indent + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(indent));
                out.push(']');
            }
            Value::Object(map) if !map.is_empty() => {
                out.push_str("{\n");
                for (i, (key, item)) in map.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push_str(": ");
                    write(out, item, indent + 1);
                    out.push_str(if i + 1 < map.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(indent));
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(&mut out, value, 0);
    out
}
