//! A wasi-nn program as they were written before components: a wasm32-wasip1
//! command using the `wasi-nn` crate (witx ABI, `wasi_ephemeral_nn`).
//!
//! Usage: `wasi-nn-classic MODEL ID...`. Runs the named preloaded model on
//! `input_ids` = [[ID...]] with an all-ones `attention_mask` and prints output 0
//! as a JSON array of f32.

use std::process::ExitCode;
use wasi_nn::{ExecutionTarget, GraphBuilder, GraphEncoding, TensorType};

fn main() -> ExitCode {
    match run() {
        Ok(values) => {
            let text: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            println!("[{}]", text.join(","));
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("wasi-nn-classic: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<Vec<f32>, String> {
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or("usage: wasi-nn-classic MODEL ID...")?;
    let ids = args
        .map(|a| a.parse::<i64>().map_err(|e| format!("token id '{a}': {e}")))
        .collect::<Result<Vec<i64>, String>>()?;
    let mask = vec![1i64; ids.len()];
    let dims = [1, ids.len()];

    let graph = GraphBuilder::new(GraphEncoding::Onnx, ExecutionTarget::CPU)
        .build_from_cache(&model)
        .map_err(|e| format!("load-by-name '{model}': {e}"))?;
    let mut context = graph
        .init_execution_context()
        .map_err(|e| format!("init: {e}"))?;
    context
        .set_input(0, TensorType::I64, &dims, &ids)
        .map_err(|e| format!("input 0: {e}"))?;
    context
        .set_input(1, TensorType::I64, &dims, &mask)
        .map_err(|e| format!("input 1: {e}"))?;
    context.compute().map_err(|e| format!("compute: {e}"))?;
    let mut out = vec![0f32; 4096];
    let bytes = context
        .get_output(0, &mut out)
        .map_err(|e| format!("output 0: {e}"))?;
    out.truncate(bytes / std::mem::size_of::<f32>());
    Ok(out)
}
