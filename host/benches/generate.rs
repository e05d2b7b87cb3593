//! Text generation with SmolLM2-135M-Instruct (fp32 and int8): time to first
//! token for a 64-token prompt, and decode speed over 32 new tokens, greedy,
//! one thread:
//!
//! - Outpost: the `generate` stage in its sandbox, the key/value cache kept
//!   by the host, on tract and on ONNX Runtime;
//! - the same ONNX file run directly by ONNX Runtime (`ort`, the library
//!   Outpost loads) and by tract, in the same loop: prefill, argmax, then one
//!   token per step with the cache fed back as values;
//! - Outpost on ONNX Runtime again, sampling (temperature 0.7, top-p 0.9):
//!   what drawing from the distribution costs in the stage beside argmax.
//!
//! ```text
//! target/py/bin/python host/pipelines/smollm2/convert.py
//! cargo bench -p outpost-host --bench generate [-- --quick] [--rounds N] [--only ort] [--control] [--json PATH]
//! ```
//!
//! `--only ort` leaves tract out (its int8 run takes minutes), for the
//! ONNX Runtime rows alone. `--control` adds the direct loop on a second
//! session of the same file: how far two identical runs land apart.
//!
//! Ratios are against ONNX Runtime direct, measured in the same run; the
//! variants take turns, and each number is a median. Outpost's cost over
//! ONNX Runtime direct is also given as the median of per-round
//! differences, and, measured inside Outpost's own run, as the time its call
//! spent outside the runtime per token ("outside": `StageTiming::elapsed`
//! less `runtime`): the stage's WebAssembly, the host's wasi-nn glue and
//! tensor conversions, and emitting each token. Unlike the comparison
//! between two sessions, it does not move with where each session's weights
//! lie in memory.
//!
//! With a Python that has `llama_cpp` (`host/benches/llama_cpp_env.sh` makes
//! target/llama-py; or `OUTPOST_LLAMA_PYTHON`), a last row: llama.cpp on the
//! original Q4_1 GGUF, the same prompt and loop (`host/benches/llamacpp_bench.py`),
//! its ratio against ONNX Runtime direct on the fp32 model.

#![allow(clippy::unwrap_used)]

use anyhow::{Context, Result, bail};
use outpost_host::backend::onnxruntime::session_builder;
use outpost_host::backend::{BackendName, BackendOptions};
use outpost_host::{ElementType, EngineOptions, Host, Pipeline, Tensor};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROMPT: usize = 64;
const NEW: usize = 32;
const LAYERS: usize = 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from)
}

/// What one generation took: to the first token, and per token after it.
#[derive(Clone, Copy)]
struct Timing {
    first: Duration,
    per_token: Duration,
    /// Outpost only: the time its call spent outside the runtime (the
    /// stage's WebAssembly, the host's wasi-nn glue and tensor conversions,
    /// emitting), per token.
    outside: Option<Duration>,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// A prompt of exactly `PROMPT` token ids (ordinary text tokens).
fn prompt() -> Vec<i64> {
    (0..PROMPT as i64)
        .map(|i| 1000 + (i * 37) % 20000)
        .collect()
}

/// How the sampled row draws its tokens (the other rows are greedy).
const SAMPLED: &str = "temperature = 0.7, top_p = 0.9, seed = 1";

/// A pipeline of the `generate` stage alone on `model`, input `input_ids`,
/// with `sampling` (stage config entries) added.
fn pipeline(host: &Host, dir: &Path, model: &str, sampling: &str) -> Result<Pipeline> {
    let sampling = if sampling.is_empty() {
        String::new()
    } else {
        format!(", {sampling}")
    };
    let toml = format!(
        r#"
[pipeline]
name = "generate-bench"
inputs = ["input_ids"]
[models.lm]
path = "{model}"
[models.lm.cache]
inputs = "past_key_values.{{}}"
outputs = "present.{{}}"
axis = 2
attention_mask = "attention_mask"
position_ids = "position_ids"
max_context = 512
last_position = ["logits"]
[[stages]]
name = "generate"
component = "{plugins}/generate.wasm"
models = ["lm"]
config = {{ model = "lm", max_new_tokens = {NEW}, stop = []{sampling} }}
"#,
        model = dir.join(model).display(),
        plugins = target_dir().join("wasm32-wasip2/plugin").display(),
    );
    let path = target_dir().join("bench/generate-bench.toml");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, toml)?;
    Ok(host.load_pipeline(&path)?)
}

fn outpost_once(pipeline: &Pipeline) -> Result<(Timing, Vec<i64>)> {
    let stamps: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let sink_stamps = stamps.clone();
    let sink = outpost_host::stage::Sink::new(move |_: &str, _: Vec<Tensor>| {
        sink_stamps.lock().unwrap().push(Instant::now());
        true
    });
    let ids = prompt();
    let input = Tensor {
        name: "input_ids".into(),
        dims: vec![1, PROMPT as u32],
        element_type: ElementType::I64,
        data: ids.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let start = Instant::now();
    let mut timings = Vec::new();
    let outputs = pipeline.run_streaming(vec![input], None, &mut timings, Some(sink))?;
    let outside = timings
        .iter()
        .map(|t| t.elapsed.saturating_sub(t.runtime))
        .sum::<Duration>()
        / NEW as u32;
    let stamps = stamps.lock().unwrap().clone();
    if stamps.len() != NEW {
        bail!("generated {} tokens, not {NEW}", stamps.len());
    }
    let tokens = outputs
        .iter()
        .find(|t| t.name == "token_ids")
        .context("no token_ids")?
        .data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Ok((
        Timing {
            first: stamps[0] - start,
            per_token: (stamps[NEW - 1] - stamps[0]) / (NEW as u32 - 1),
            outside: Some(outside),
        },
        tokens,
    ))
}

fn argmax_last(logits: &[f32], vocab: usize) -> i64 {
    let row = &logits[logits.len() - vocab..];
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as i64
}

/// The greedy loop the direct runs share, timed: `step(ids, past)` runs
/// the model on the new `ids` after `past` cached positions (keeping its
/// own cache) and returns the next token; first the whole prompt, then one
/// token at a time.
fn greedy(mut step: impl FnMut(&[i64], usize) -> Result<i64>) -> Result<(Timing, Vec<i64>)> {
    let start = Instant::now();
    let mut tokens = Vec::with_capacity(NEW);
    let mut ids = prompt();
    let mut len = 0usize;
    let mut first_at = start;
    while tokens.len() < NEW {
        let token = step(&ids, len)?;
        len += ids.len();
        tokens.push(token);
        if tokens.len() == 1 {
            first_at = Instant::now();
        }
        ids = vec![token];
    }
    Ok((
        Timing {
            first: first_at - start,
            per_token: (Instant::now() - first_at) / (NEW as u32 - 1),
            outside: None,
        },
        tokens,
    ))
}

/// ONNX Runtime called directly: the same loop, the cache fed back as the
/// values ONNX Runtime returned.
fn ort_once(session: &mut ort::session::Session) -> Result<(Timing, Vec<i64>)> {
    use ort::session::SessionInputValue;
    use ort::value::{DynValue, Tensor as OrtTensor};
    let names: Vec<String> = session
        .inputs()
        .iter()
        .map(|i| i.name().to_owned())
        .collect();
    let mut past: Vec<DynValue> = (0..2 * LAYERS)
        .map(|_| {
            OrtTensor::<f32>::from_array((vec![1i64, 3, 0, 64], Vec::<f32>::new()))
                .map(|t| t.into_dyn())
        })
        .collect::<std::result::Result<_, _>>()?;
    greedy(|ids, len| {
        let n = ids.len();
        let mut inputs: Vec<(String, SessionInputValue)> = Vec::new();
        for name in &names {
            let value: SessionInputValue = match name.as_str() {
                "input_ids" => OrtTensor::from_array((vec![1i64, n as i64], ids.to_vec()))?
                    .into_dyn()
                    .into(),
                "attention_mask" => {
                    OrtTensor::from_array((vec![1i64, (len + n) as i64], vec![1i64; len + n]))?
                        .into_dyn()
                        .into()
                }
                "position_ids" => OrtTensor::from_array((
                    vec![1i64, n as i64],
                    (len as i64..(len + n) as i64).collect::<Vec<_>>(),
                ))?
                .into_dyn()
                .into(),
                other => {
                    let i = layer_slot(other).context("unexpected input")?;
                    SessionInputValue::from(&past[i])
                }
            };
            inputs.push((name.clone(), value));
        }
        let mut outputs = session.run(inputs)?;
        let logits = outputs.remove("logits").context("logits")?;
        let (shape, data) = logits.try_extract_tensor::<f32>()?;
        let token = argmax_last(data, shape[2] as usize);
        let mut next = Vec::with_capacity(2 * LAYERS);
        for l in 0..LAYERS {
            for kind in ["key", "value"] {
                next.push(
                    outputs
                        .remove(format!("present.{l}.{kind}"))
                        .context("present")?,
                );
            }
        }
        past = next;
        Ok(token)
    })
}

fn layer_slot(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("past_key_values.")?;
    let (layer, kind) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    Some(2 * layer + usize::from(kind == "value"))
}

/// tract called directly, with its own optimisation of the model.
fn tract_once(plan: &Arc<tract_onnx::prelude::TypedRunnableModel>) -> Result<(Timing, Vec<i64>)> {
    use tract_onnx::prelude::*;
    let inputs: Vec<String> = plan
        .model()
        .input_outlets()?
        .iter()
        .map(|o| plan.model().node(o.node).name.clone())
        .collect();
    let mut past: Vec<TValue> = (0..2 * LAYERS)
        .map(|_| Tensor::zero::<f32>(&[1, 3, 0, 64]).map(IntoTValue::into_tvalue))
        .collect::<TractResult<_>>()?;
    greedy(|ids, len| {
        let n = ids.len();
        let mut values: TVec<TValue> = tvec!();
        for name in &inputs {
            values.push(match name.as_str() {
                "input_ids" => tensor1(ids).into_shape(&[1, n])?.into_tvalue(),
                "attention_mask" => tensor1(&vec![1i64; len + n])
                    .into_shape(&[1, len + n])?
                    .into_tvalue(),
                "position_ids" => tensor1(&(len as i64..(len + n) as i64).collect::<Vec<_>>())
                    .into_shape(&[1, n])?
                    .into_tvalue(),
                other => past[layer_slot(other).context("unexpected input")?].clone(),
            });
        }
        let mut outputs = plan.run(values)?;
        let logits = outputs.remove(0);
        let vocab = logits.shape()[2];
        let view = logits.to_plain_array_view::<f32>()?;
        let token = argmax_last(view.as_slice().context("contiguous logits")?, vocab);
        past = outputs.into_iter().collect();
        Ok(token)
    })
}

/// llama.cpp on the Q4_1 GGUF through llama-cpp-python, when a Python with
/// it is at hand: its row, printed and returned.
fn llama_cpp(
    dir: &Path,
    rounds: usize,
    ort_rate: f64,
    ort_tokens: &[i64],
) -> Result<Option<Value>> {
    let python = std::env::var_os("OUTPOST_LLAMA_PYTHON")
        .map_or_else(|| target_dir().join("llama-py/bin/python"), PathBuf::from);
    if !python.exists() {
        println!(
            "llama.cpp: skipped ({} is missing; host/benches/llama_cpp_env.sh makes it)",
            python.display()
        );
        return Ok(None);
    }
    let ids: Vec<String> = prompt().iter().map(i64::to_string).collect();
    let out = std::process::Command::new(&python)
        .arg(repo().join("host/benches/llamacpp_bench.py"))
        .arg(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .args(["--prompt", &ids.join(",")])
        .args(["--new", &NEW.to_string(), "--rounds", &rounds.to_string()])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "host/benches/llamacpp_bench.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got: Value = serde_json::from_slice(&out.stdout)?;
    let (first, per_token) = (
        got["ttft_ms"].as_f64().context("ttft_ms")?,
        got["ms_per_token"].as_f64().context("ms_per_token")?,
    );
    let rate = 1e3 / per_token;
    let tokens: Vec<i64> = got["tokens"]
        .as_array()
        .context("tokens")?
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    println!(
        "{:<6} {:<26} {:>10.1} {:>9.1} {:>9.2} {:>11.3}",
        "q4_1",
        "llama.cpp (GGUF)",
        first,
        per_token,
        rate,
        rate / ort_rate
    );
    Ok(Some(json!({
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "runtime": format!("llama.cpp (llama-cpp-python {})", got["version"].as_str().unwrap_or("?")),
        "ttft_ms": first,
        "ms_per_token": per_token,
        "tokens_per_s": rate,
        "vs_ort_direct_fp32": rate / ort_rate,
        "same_tokens_as_ort_direct_fp32": tokens == ort_tokens,
    })))
}

fn main() -> Result<()> {
    let mut rounds = 5;
    let mut with_tract = true;
    let mut control = false;
    let mut json_path = target_dir().join("bench/generate.json");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => rounds = 1,
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .context("--rounds needs a count of at least 1")?;
            }
            "--only" => match args.next().as_deref() {
                Some("ort") => with_tract = false,
                other => bail!("--only takes `ort`, not {other:?}"),
            },
            "--control" => control = true,
            "--json" => json_path = args.next().context("--json needs a path")?.into(),
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; use --quick, --rounds N, --only ort, --control and/or --json PATH"
            ),
        }
    }
    let dir = target_dir().join("models/smollm2");
    if !dir.join("model.onnx").exists() {
        bail!(
            "{} is missing: run `target/py/bin/python host/pipelines/smollm2/convert.py`",
            dir.display()
        );
    }
    let library = std::env::var_os("OUTPOST_ONNXRUNTIME_LIB").map_or_else(
        || target_dir().join("onnxruntime/libonnxruntime.so"),
        PathBuf::from,
    );
    let ort_options = BackendOptions {
        force: Some(BackendName::Onnxruntime),
        onnxruntime_library: Some(library),
        onnxruntime_threads: Some(1),
    };
    let tract_options = BackendOptions {
        force: Some(BackendName::Tract),
        ..BackendOptions::default()
    };
    let mut rows = Vec::new();
    println!(
        "# SmolLM2-135M: {PROMPT}-token prompt, {NEW} new tokens, greedy, 1 thread, median of {rounds}"
    );
    println!(
        "{:<6} {:<26} {:>10} {:>9} {:>9} {:>11} {:>14}",
        "model", "runtime", "TTFT ms", "ms/token", "tokens/s", "vs ORT tok/s", "outside µs/tok"
    );
    let mut fp32_ort_rate = None;
    for model in ["model.onnx", "model-int8.onnx"] {
        let host = |options: &BackendOptions| -> Result<Host> {
            Ok(Host::new(&EngineOptions::default())?.with_backend_options(options.clone()))
        };
        let on_tract = with_tract
            .then(|| pipeline(&host(&tract_options)?, &dir, model, ""))
            .transpose()?;
        let ort_host = host(&ort_options)?;
        let on_ort = pipeline(&ort_host, &dir, model, "")?;
        let on_ort_sampled = pipeline(&ort_host, &dir, model, SAMPLED)?;
        let bytes = std::fs::read(dir.join(model))?;
        let direct = || -> Result<ort::session::Session> {
            Ok(session_builder(&ort_options)
                .map_err(anyhow::Error::msg)?
                .with_intra_threads(1)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .commit_from_memory(&bytes)?)
        };
        let mut session = direct()?;
        // The control: the same direct loop on a second session of the same
        // file. How far apart two identical sessions land (where their
        // weights lie in memory) bounds what the comparison can resolve.
        let mut second = control.then(direct).transpose()?;
        let plan = if with_tract {
            use tract_onnx::prelude::*;
            Some(
                tract_onnx::onnx()
                    .model_for_read(&mut std::io::Cursor::new(&bytes))?
                    .into_optimized()?
                    .into_runnable()?,
            )
        } else {
            None
        };
        let names = [
            "Outpost (tract)",
            "Outpost (ONNX Runtime)",
            "ONNX Runtime direct",
            "tract direct",
            "Outpost (ORT), sampled",
            "ORT direct, 2nd session",
        ];
        let mut samples: Vec<Vec<Timing>> = vec![Vec::new(); names.len()];
        let mut tokens: Vec<Vec<i64>> = vec![Vec::new(); names.len()];
        for _ in 0..rounds {
            for (v, slot) in samples.iter_mut().enumerate() {
                let (timing, generated) = match (v, &on_tract, &plan) {
                    (0, Some(on_tract), _) => outpost_once(on_tract)?,
                    (1, ..) => outpost_once(&on_ort)?,
                    (2, ..) => ort_once(&mut session)?,
                    (3, _, Some(plan)) => tract_once(plan)?,
                    (4, ..) => outpost_once(&on_ort_sampled)?,
                    (5, ..) => match second.as_mut() {
                        Some(second) => ort_once(second)?,
                        None => continue,
                    },
                    _ => continue,
                };
                slot.push(timing);
                tokens[v] = generated;
            }
        }
        let summary: Vec<Option<Timing>> = samples
            .iter()
            .map(|s| {
                (!s.is_empty()).then(|| Timing {
                    first: median(s.iter().map(|t| t.first).collect()),
                    per_token: median(s.iter().map(|t| t.per_token).collect()),
                    outside: s
                        .iter()
                        .map(|t| t.outside)
                        .collect::<Option<Vec<_>>>()
                        .map(median),
                })
            })
            .collect();
        let ort_rate = 1.0
            / summary[2]
                .context("ONNX Runtime direct ran")?
                .per_token
                .as_secs_f64();
        if model == "model.onnx" {
            fp32_ort_rate = Some((ort_rate, tokens[2].clone()));
        }
        for (v, name) in names.iter().enumerate() {
            let Some(Timing {
                first,
                per_token,
                outside,
            }) = summary[v]
            else {
                continue;
            };
            let rate = 1.0 / per_token.as_secs_f64();
            let outside_us = outside.map(|d| d.as_secs_f64() * 1e6);
            println!(
                "{:<6} {:<26} {:>10.1} {:>9.1} {:>9.2} {:>11.3} {:>14}",
                if model.contains("int8") {
                    "int8"
                } else {
                    "fp32"
                },
                name,
                first.as_secs_f64() * 1e3,
                per_token.as_secs_f64() * 1e3,
                rate,
                rate / ort_rate,
                outside_us.map_or_else(String::new, |us| format!(
                    "{us:.0} ({:.1} %)",
                    us / 1e4 * rate
                ))
            );
            rows.push(json!({
                "model": model,
                "runtime": name,
                "ttft_ms": first.as_secs_f64() * 1e3,
                "ms_per_token": per_token.as_secs_f64() * 1e3,
                "tokens_per_s": rate,
                "vs_ort_direct": rate / ort_rate,
                "outside_runtime_us_per_token": outside_us,
                "sampling": if v == 4 { SAMPLED } else { "greedy" },
                "same_tokens_as_ort_direct": tokens[v] == tokens[2],
            }));
        }
        // Outpost's cost over ONNX Runtime direct, round by round: the two
        // ran back to back, so drift between rounds cancels out.
        // Seconds, signed: in a noisy round Outpost may come out ahead.
        let paired = |of: fn(&Timing) -> Duration| {
            let mut differences: Vec<f64> = samples[1]
                .iter()
                .zip(&samples[2])
                .map(|(outpost, direct)| of(outpost).as_secs_f64() - of(direct).as_secs_f64())
                .collect();
            differences.sort_by(f64::total_cmp);
            differences[differences.len() / 2]
        };
        let (per_token, first) = (paired(|t| t.per_token), paired(|t| t.first));
        let share = per_token * ort_rate;
        println!(
            "{:<6} Outpost's cost over ONNX Runtime direct (median of paired rounds): {:.3} ms/token ({:.1} %), {:.1} ms to the first token",
            "",
            per_token * 1e3,
            share * 1e2,
            first * 1e3
        );
        rows.push(json!({
            "model": model,
            "boundary_ms_per_token": per_token * 1e3,
            "boundary_share": share,
            "boundary_ttft_ms": first * 1e3,
        }));
    }
    if let Some((ort_rate, ort_tokens)) = fp32_ort_rate {
        rows.extend(llama_cpp(&dir, rounds, ort_rate, &ort_tokens)?);
    }
    let result: Value =
        json!({ "prompt_tokens": PROMPT, "new_tokens": NEW, "rounds": rounds, "rows": rows });
    std::fs::create_dir_all(json_path.parent().unwrap())?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&result)?)?;
    println!("results in {}", json_path.display());
    Ok(())
}
