//! Per-request latency of a pipeline end to end versus its model called
//! directly through tract, in one process on one thread.
//!
//!     cargo run -p outpost-host --example latency -- host/pipelines/minilm/minilm-l3.toml
//!
//! The direct run gets exactly the tensors the pipeline's first stage (the
//! tokenizer) produces, so the difference is what the sandbox costs: the
//! stages' own work plus crossing into and out of Wasm.

use anyhow::{Context, Result, bail};
use outpost_host::{EngineOptions, Host, Tensor};
use std::time::{Duration, Instant};
use wasmtime_wasi_nn::backend::NamedTensor;

const SENTENCE: &str =
    "A man is eating a piece of bread while he watches the sun set over the old harbour.";
const RUNS: usize = 200;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "host/pipelines/minilm/minilm-l3.toml".into());
    let host = Host::new(&EngineOptions::default())?;
    let pipeline = host
        .load_pipeline(path.as_ref())
        .with_context(|| path.clone())?;
    let [model] = pipeline.models() else {
        bail!("{path}: expected a pipeline with exactly one model")
    };
    let input = || vec![Tensor::text(&pipeline.inputs()[0].0, SENTENCE)];

    let tokens = pipeline.stages()[0].stage().run(input())?;
    let direct_inputs = || -> Vec<NamedTensor> {
        model
            .signature()
            .inputs
            .iter()
            .filter_map(|spec| tokens.iter().find(|t| t.name == spec.name))
            .map(|t| NamedTensor {
                name: t.name.clone(),
                tensor: wasmtime_wasi_nn::Tensor::new(
                    t.dims.clone(),
                    t.element_type
                        .to_nn()
                        .unwrap_or(wasmtime_wasi_nn::wit::TensorType::Fp32),
                    t.data.clone(),
                ),
            })
            .collect()
    };

    for _ in 0..10 {
        pipeline.run(input())?;
        model
            .graph()
            .compute(direct_inputs())
            .map_err(anyhow::Error::msg)?;
    }
    let (mut outpost, mut direct) = (Vec::with_capacity(RUNS), Vec::with_capacity(RUNS));
    for _ in 0..RUNS {
        let start = Instant::now();
        pipeline.run(input())?;
        outpost.push(start.elapsed());
        let start = Instant::now();
        model
            .graph()
            .compute(direct_inputs())
            .map_err(anyhow::Error::msg)?;
        direct.push(start.elapsed());
    }
    let (outpost, direct) = (median(outpost), median(direct));
    let seq = tokens
        .iter()
        .find(|t| t.name == "input_ids")
        .map_or(0, |t| t.dims[1]);
    println!(
        "pipeline {} ({} tokens, {RUNS} runs, medians)",
        pipeline.name(),
        seq
    );
    println!(
        "  outpost end to end : {:>9.3} ms",
        outpost.as_secs_f64() * 1e3
    );
    println!(
        "  tract direct       : {:>9.3} ms",
        direct.as_secs_f64() * 1e3
    );
    println!(
        "  ratio              : {:>9.3}",
        outpost.as_secs_f64() / direct.as_secs_f64()
    );
    Ok(())
}
