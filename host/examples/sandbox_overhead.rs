//! What the sandbox's checks cost per request: epoch interruption and the
//! memory limiter on and off (and fuel on), in one run. Fresh instantiation
//! (pooling vs on-demand) is measured by the benchmark (`host/benches`).
//!
//!     cargo run -p outpost-host --example sandbox_overhead -- host/pipelines/minilm/minilm-l3.toml
//!
//! Requests rotate between the configurations so that drift in the machine's
//! speed falls on all of them alike.

use anyhow::{Context, Result};
use outpost_host::{EngineOptions, Host, Pipeline, Tensor};
use std::time::{Duration, Instant};

const SENTENCE: &str =
    "A man is eating a piece of bread while he watches the sun set over the old harbour.";
const ROUNDS: usize = 150;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "host/pipelines/minilm/minilm-l3.toml".into());
    let configs: [(&str, EngineOptions); 5] = [
        ("epochs + limiter (default)", EngineOptions::default()),
        (
            "no epochs",
            EngineOptions {
                epoch_interruption: false,
                ..EngineOptions::default()
            },
        ),
        (
            "no limiter",
            EngineOptions {
                resource_limits: false,
                ..EngineOptions::default()
            },
        ),
        (
            "neither",
            EngineOptions {
                epoch_interruption: false,
                resource_limits: false,
                ..EngineOptions::default()
            },
        ),
        (
            "epochs + limiter + fuel",
            EngineOptions {
                fuel: true,
                ..EngineOptions::default()
            },
        ),
    ];
    let mut loaded: Vec<(&str, Host, Pipeline)> = Vec::new();
    for (name, options) in configs {
        let host = Host::new(&options)?;
        let pipeline = host
            .load_pipeline(path.as_ref())
            .with_context(|| path.clone())?;
        loaded.push((name, host, pipeline));
    }
    let input = |p: &Pipeline| vec![Tensor::text(&p.inputs()[0].0, SENTENCE)];
    for (_, _, p) in &loaded {
        for _ in 0..10 {
            p.run(input(p))?;
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); loaded.len()];
    for _ in 0..ROUNDS {
        for (i, (_, _, p)) in loaded.iter().enumerate() {
            let start = Instant::now();
            p.run(input(p))?;
            samples[i].push(start.elapsed());
        }
    }
    let medians: Vec<Duration> = samples.into_iter().map(median).collect();
    let neither = medians[3];
    println!("pipeline {path}: per-request median over {ROUNDS} rounds");
    for ((name, _, _), m) in loaded.iter().zip(&medians) {
        println!(
            "  {name:<28} {:>8.3} ms   x{:.4} of neither",
            ms(*m),
            m.as_secs_f64() / neither.as_secs_f64()
        );
    }

    Ok(())
}
