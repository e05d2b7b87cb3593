//! Where tract spends a model's time, by operator kind: the model is
//! optimised as the host's tract backend does it (or, with `--plain`, by
//! tract's own passes alone), then run on token ids of the given shape with
//! every node timed.
//!
//!     cargo run -p outpost-host --example tract_profile -- \
//!         host/pipelines/minilm/fetched/minilm-l6-int8.onnx 128 1 [RUNS] [--plain]
//!
//! Inputs whose name mentions `mask` get ones, `type` zeros, others token ids.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::eval;

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let plain = args.iter().any(|a| a == "--plain");
    args.retain(|a| a != "--plain");
    let model = args
        .first()
        .context("usage: tract_profile MODEL.onnx [SEQ] [BATCH] [RUNS]")?;
    let number = |i: usize, default: usize| -> Result<usize> {
        args.get(i)
            .map_or(Ok(default), |a| a.parse().with_context(|| a.clone()))
    };
    let (seq, batch, runs) = (number(1, 128)?, number(2, 1)?, number(3, 20)?);

    let typed = tract_onnx::onnx().model_for_path(model)?.into_typed()?;
    let plan = if plain {
        typed.into_optimized()?
    } else {
        outpost_host::backend::tract::optimise(typed)?
    }
    .into_runnable()?;
    let inputs: TVec<TValue> = plan
        .model()
        .input_outlets()?
        .iter()
        .map(|o| {
            let name = &plan.model().node(o.node).name;
            let values: Vec<i64> = (0..batch * seq)
                .map(|i| {
                    if name.contains("mask") {
                        1
                    } else if name.contains("type") {
                        0
                    } else {
                        1000 + (i % 997) as i64
                    }
                })
                .collect();
            Ok(Tensor::from_shape(&[batch, seq], &values)?.into_tvalue())
        })
        .collect::<Result<_>>()?;

    let mut state = plan.spawn()?;
    let mut by_op: HashMap<String, (Duration, usize)> = HashMap::new();
    let mut by_node: HashMap<usize, Duration> = HashMap::new();
    let mut total = Duration::ZERO;
    for run in 0..=runs {
        let started = Instant::now();
        state.run_plan_with_eval(inputs.clone(), |ctx, op_state, node, input| {
            let t = Instant::now();
            let out = eval(ctx, op_state, node, input);
            if run > 0 {
                let e = by_op.entry(node.op().name().to_string()).or_default();
                e.0 += t.elapsed();
                e.1 += 1;
                *by_node.entry(node.id).or_default() += t.elapsed();
            }
            out
        })?;
        if run > 0 {
            total += started.elapsed();
        }
    }
    let per_run = |d: Duration| d.as_secs_f64() * 1e3 / runs as f64;
    println!(
        "{model} ({}): batch {batch}, sequence {seq}: {:.2} ms per run (mean of {runs})",
        if plain {
            "tract's passes"
        } else {
            "as Outpost runs it"
        },
        per_run(total)
    );
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by_key(|(_, (time, _))| std::cmp::Reverse(*time));
    for (op, (time, calls)) in ops.iter().take(12) {
        println!(
            "  {op:<28} {:>8.2} ms {:>5.1} %  ({} nodes)",
            per_run(*time),
            100.0 * time.as_secs_f64() / total.as_secs_f64(),
            calls / runs
        );
    }
    let mut nodes: Vec<_> = by_node.into_iter().collect();
    nodes.sort_by_key(|(_, time)| std::cmp::Reverse(*time));
    println!("slowest nodes:");
    for (id, time) in nodes.iter().take(8) {
        let node = plan.model().node(*id);
        let inputs: Vec<String> = node
            .inputs
            .iter()
            .map(|i| {
                format!(
                    "{:?}",
                    plan.model().outlet_fact(*i).map(|f| f.shape.clone())
                )
            })
            .collect();
        println!(
            "  {:>7.3} ms  {} [{}] inputs {}",
            per_run(*time),
            node.name,
            node.op().name(),
            inputs.join(" ")
        );
    }
    Ok(())
}
