//! What Outpost costs against what a user would otherwise run, in one run,
//! on the same inputs, on this machine:
//!
//! - MiniLM-L3 (fp32) and MiniLM-L6 (int8) at sequence lengths 16, 64, 128
//!   and batch 1 and 8: the whole pipeline (tokenizer, model, pooling, each
//!   stage sandboxed) and its model stage alone, on tract and on ONNX
//!   Runtime, against the model called directly through tract and directly
//!   through ONNX Runtime on the same thread count (one);
//! - a fresh instance per request, pooling allocator against on-demand;
//! - a call into an empty stage and back, and a 1 MiB tensor in and out;
//! - bounds checks: the same stages with guard pages and with explicit
//!   checks (what 39-bit boards and `ulimit -v` get);
//! - cold start (engine, pipeline load, first request), compiling the
//!   components against loading them from the precompiled cache.
//!
//! ```text
//! bash host/benches/run.sh            # fetches what it needs, then:
//! cargo bench -p outpost-host --bench outpost [-- --quick] [--json PATH] [--only SECTION]
//! ```
//!
//! Variants are measured in rotation, so drift in the machine's speed falls
//! on all of them alike, each timed run right after an untimed one of its
//! own (caches warm for it); every number is a median. Results go to stdout as
//! tables and to `target/bench/outpost.json`.

#![allow(clippy::unwrap_used)]

use anyhow::{Context, Result, bail};
use outpost_host::backend::onnxruntime::session_builder;
use outpost_host::backend::{BackendName, BackendOptions};
use outpost_host::{Allocator, Bounds, ElementType, EngineOptions, Host, Pipeline, Tensor};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Args {
    quick: bool,
    json: PathBuf,
    /// Run this section alone (its key in the JSON result).
    only: Option<String>,
}

const SECTIONS: [&str; 6] = [
    "minilm",
    "instantiation",
    "boundary",
    "bounds",
    "cold_start",
    "languages",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from)
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        json: target_dir().join("bench/outpost.json"),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--json" => args.json = it.next().context("--json needs a path")?.into(),
            "--only" => {
                let section = it.next().context("--only needs a section")?;
                if !SECTIONS.contains(&section.as_str()) {
                    bail!("--only {section}: use one of {}", SECTIONS.join(", "));
                }
                args.only = Some(section);
            }
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => bail!("unknown argument {other}; use --quick, --json PATH, --only SECTION"),
        }
    }
    Ok(args)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

/// Words that are one token each in the bert-base-uncased vocabulary.
const WORDS: [&str; 16] = [
    "the", "man", "is", "eating", "bread", "while", "a", "woman", "plays", "violin", "near", "old",
    "harbour", "and", "sun", "sets",
];

/// `batch` lines of text that tokenize to exactly `seq` tokens each
/// (`[CLS]` and `[SEP]` included).
fn text(seq: usize, batch: usize) -> String {
    let line: Vec<&str> = (0..seq - 2).map(|i| WORDS[i % WORDS.len()]).collect();
    vec![line.join(" "); batch].join("\n")
}

fn i64s(t: &Tensor) -> Vec<i64> {
    t.data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// One model: everything a request can go through, loaded once.
struct ModelBench {
    label: &'static str,
    on_tract: Pipeline,
    on_ort: Pipeline,
    on_tract_specialized: Pipeline,
    tract_plan: std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>,
    outpost_plan: std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>,
    ort_session: ort::session::Session,
    input_names: Vec<String>,
}

/// The model as tract's own passes optimise it, or as Outpost's backend
/// does (its general plan).
fn load_tract_plan(
    bytes: &[u8],
    as_outpost: bool,
) -> Result<std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>> {
    use tract_onnx::prelude::*;
    let typed = tract_onnx::onnx()
        .model_for_read(&mut std::io::Cursor::new(bytes))?
        .into_typed()?;
    let optimised = if as_outpost {
        outpost_host::backend::tract::optimise(typed)?
    } else {
        typed.into_optimized()?
    };
    optimised.into_runnable()
}

/// `pipeline` (in host/pipelines/minilm) with its model asking tract for
/// shape-specialised plans, written under target/bench.
fn specialised_copy(pipeline: &Path) -> Result<PathBuf> {
    let dir = pipeline.parent().context("pipeline has no directory")?;
    let text = std::fs::read_to_string(pipeline)?
        .replace(
            "path = \"fetched/",
            &format!("specialize = 2\npath = \"{}/fetched/", dir.display()),
        )
        .replace(
            "tokenizer = \"fetched/",
            &format!("tokenizer = \"{}/fetched/", dir.display()),
        )
        .replace("../../../target", &target_dir().display().to_string());
    let out = target_dir()
        .join("bench")
        .join(pipeline.file_name().context("pipeline has no name")?);
    std::fs::create_dir_all(target_dir().join("bench"))?;
    std::fs::write(&out, text)?;
    Ok(out)
}

impl ModelBench {
    fn load(
        label: &'static str,
        pipeline: &str,
        model_file: &str,
        tract_host: &Host,
        ort_host: &Host,
        ort: &BackendOptions,
    ) -> Result<Self> {
        let path = repo().join("host/pipelines/minilm").join(pipeline);
        let on_tract = tract_host.load_pipeline(&path).with_context(|| {
            format!(
                "{} (fetch the models: python3 host/pipelines/minilm/fetch_models.py)",
                path.display()
            )
        })?;
        let on_ort = ort_host.load_pipeline(&path)?;
        let on_tract_specialized = tract_host.load_pipeline(&specialised_copy(&path)?)?;
        let bytes = std::fs::read(
            repo()
                .join("host/pipelines/minilm/fetched")
                .join(model_file),
        )?;
        let input_names = on_tract.models()[0]
            .signature()
            .inputs
            .iter()
            .map(|s| s.name.clone())
            .collect();
        let ort_session = session_builder(ort)
            .map_err(anyhow::Error::msg)?
            .with_intra_threads(1)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .commit_from_memory(&bytes)?;
        Ok(Self {
            label,
            on_tract,
            on_ort,
            on_tract_specialized,
            tract_plan: load_tract_plan(&bytes, false)?,
            outpost_plan: load_tract_plan(&bytes, true)?,
            ort_session,
            input_names,
        })
    }
}

const VARIANTS: [&str; 8] = [
    "outpost pipeline, tract",
    "outpost model stage, tract",
    "tract direct",
    "tract direct, Outpost's plan",
    "onnxruntime direct",
    "outpost pipeline, onnxruntime",
    "outpost model stage, onnxruntime",
    "outpost model stage, tract, shape-specialised",
];

fn bench_shape(m: &mut ModelBench, seq: usize, batch: usize, quick: bool) -> Result<Value> {
    use tract_onnx::prelude::{IntoTValue, TVec, Tensor as TractTensor};
    let request = || vec![Tensor::text("text", &text(seq, batch))];
    let tokens = m.on_tract.stages()[0].stage().run(request())?;
    let by_name = |name: &str| tokens.iter().find(|t| t.name == name).cloned();
    for t in &tokens {
        if t.dims != [batch as u32, seq as u32] {
            bail!(
                "{} tokenized to {:?}, wanted [{batch}, {seq}]",
                t.name,
                t.dims
            );
        }
    }
    // What each model stage takes, under its stage-side names.
    let stage_inputs = |p: &Pipeline| -> Result<Vec<Tensor>> {
        p.stages()[1]
            .input_names()
            .map(|(stage, pipe)| {
                let mut t = by_name(pipe).with_context(|| format!("no token tensor {pipe}"))?;
                t.name = stage.to_owned();
                Ok(t)
            })
            .collect()
    };
    let (tract_stage_in, ort_stage_in) = (stage_inputs(&m.on_tract)?, stage_inputs(&m.on_ort)?);
    let specialized_in = stage_inputs(&m.on_tract_specialized)?;
    let direct: Vec<(String, Vec<usize>, Vec<i64>)> = m
        .input_names
        .iter()
        .map(|n| {
            let t = by_name(n).with_context(|| format!("no token tensor {n}"))?;
            Ok((
                n.clone(),
                t.dims.iter().map(|&d| d as usize).collect(),
                i64s(&t),
            ))
        })
        .collect::<Result<_>>()?;
    let tract_inputs = || -> Result<TVec<_>> {
        direct
            .iter()
            .map(|(_, shape, v)| Ok(TractTensor::from_shape(shape, v)?.into_tvalue()))
            .collect()
    };
    // Outpost's general plan, with its execution state reused as the
    // backend does: the model stage minus the sandbox.
    let mut state = m.outpost_plan.spawn()?;

    let mut run = |variant: usize| -> Result<Duration> {
        match variant {
            0 => time(|| Ok(m.on_tract.run(request())?)),
            1 => {
                let given = tract_stage_in.clone();
                time(|| Ok(m.on_tract.stages()[1].stage().run(given)?))
            }
            2 => time(|| m.tract_plan.run(tract_inputs()?)),
            3 => time(|| state.run(tract_inputs()?)),
            4 => time(|| {
                // In the model's input order, as the backend passes them.
                let inputs = direct
                    .iter()
                    .map(|(_, shape, v)| {
                        let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
                        let t = ort::value::Tensor::from_array((shape, v.clone()))?;
                        Ok(ort::session::SessionInputValue::from(t.into_dyn()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let outputs = m.ort_session.run(inputs.as_slice())?;
                drop(outputs);
                Ok(())
            }),
            5 => time(|| Ok(m.on_ort.run(request())?)),
            6 => {
                let given = ort_stage_in.clone();
                time(|| Ok(m.on_ort.stages()[1].stage().run(given)?))
            }
            _ => {
                let given = specialized_in.clone();
                time(|| Ok(m.on_tract_specialized.stages()[1].stage().run(given)?))
            }
        }
    };
    // Warm up, and size the run: about 4 s per shape (1 s with --quick).
    let mut round = Duration::ZERO;
    for _ in 0..2 {
        round = Duration::ZERO;
        for v in 0..VARIANTS.len() {
            round += run(v)?;
        }
    }
    let budget = if quick { 1.0 } else { 4.0 };
    let rounds =
        ((budget / (2.0 * round.as_secs_f64())) as usize).clamp(if quick { 3 } else { 7 }, 200);
    let mut samples = vec![Vec::with_capacity(rounds); VARIANTS.len()];
    for _ in 0..rounds {
        for (v, s) in samples.iter_mut().enumerate() {
            // Each timed run follows an untimed one of the same variant, so
            // every variant is timed with its own weights warm in the caches,
            // as on a device serving that one pipeline.
            run(v)?;
            s.push(run(v)?);
        }
    }
    let medians: Vec<Duration> = samples.into_iter().map(median).collect();
    let r = |a: usize, b: usize| medians[a].as_secs_f64() / medians[b].as_secs_f64();
    let ratios = json!({
        "outpost_pipeline_tract/tract_direct": r(0, 2),
        "outpost_model_stage_tract/tract_direct": r(1, 2),
        "outpost_model_stage_tract/outposts_plan_direct": r(1, 3),
        "outposts_plan_direct/tract_direct": r(3, 2),
        "tract_direct/onnxruntime_direct": r(2, 4),
        "outpost_model_stage_tract/onnxruntime_direct": r(1, 4),
        "outpost_model_stage_tract_specialised/onnxruntime_direct": r(7, 4),
        "outpost_pipeline_onnxruntime/onnxruntime_direct": r(5, 4),
        "outpost_model_stage_onnxruntime/onnxruntime_direct": r(6, 4),
    });
    println!(
        "{:<8} {seq:>4} {batch:>3} {rounds:>4} |{}| {:>5.2} {:>5.2} {:>5.2} {:>5.2} {:>5.2} {:>5.2} {:>5.2}",
        m.label,
        medians
            .iter()
            .map(|d| format!("{:>7.2}", ms(*d)))
            .collect::<String>(),
        r(1, 3),
        r(0, 2),
        r(2, 4),
        r(1, 4),
        r(7, 4),
        r(5, 4),
        r(6, 4),
    );
    Ok(json!({
        "model": m.label,
        "sequence": seq,
        "batch": batch,
        "rounds": rounds,
        "median_ms": VARIANTS.iter().zip(&medians).map(|(v, d)| (v.to_string(), json!(ms(*d)))).collect::<BTreeMap<_, _>>(),
        "ratios": ratios,
    }))
}

fn models(args: &Args, ort: &BackendOptions) -> Result<Vec<Value>> {
    let tract_host = Host::new(&EngineOptions::default())?;
    let ort_host = Host::new(&EngineOptions::default())?.with_backend_options(ort.clone());
    let mut benches = vec![
        ModelBench::load(
            "L3 fp32",
            "minilm-l3.toml",
            "minilm-l3.onnx",
            &tract_host,
            &ort_host,
            ort,
        )?,
        ModelBench::load(
            "L6 int8",
            "minilm-l6-int8.toml",
            "minilm-l6-int8.onnx",
            &tract_host,
            &ort_host,
            ort,
        )?,
    ];
    println!("\n## MiniLM: medians in ms (one thread for tract and ONNX Runtime)");
    println!(
        "columns: {}",
        VARIANTS
            .iter()
            .enumerate()
            .map(|(i, v)| format!("[{i}] {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "ratios: 1/3 the sandbox (model stage over the same plan called directly), 0/2 whole \
         pipeline over plain tract, 2/4 plain tract over ONNX Runtime, 1/4 and 7/4 Outpost on \
         tract (general, shape-specialised) over ONNX Runtime, 5/4 and 6/4 Outpost on ONNX \
         Runtime (pipeline, model stage) over ONNX Runtime"
    );
    println!(
        "{:<8} {:>4} {:>3} {:>4} |{}| {:>5} {:>5} {:>5} {:>5} {:>5} {:>5} {:>5}",
        "model",
        "seq",
        "bat",
        "runs",
        (0..VARIANTS.len())
            .map(|i| format!("{:>7}", format!("[{i}]")))
            .collect::<String>(),
        "1/3",
        "0/2",
        "2/4",
        "1/4",
        "7/4",
        "5/4",
        "6/4"
    );
    let shapes: &[(usize, usize)] = &[(16, 1), (64, 1), (128, 1), (16, 8), (64, 8), (128, 8)];
    let mut rows = Vec::new();
    for m in &mut benches {
        for &(seq, batch) in shapes {
            rows.push(bench_shape(m, seq, batch, args.quick)?);
        }
    }
    Ok(rows)
}

fn instantiation(args: &Args) -> Result<Vec<Value>> {
    let rounds = if args.quick { 20 } else { 200 };
    println!("\n## A fresh instance per request (instantiate + init), median µs of {rounds}");
    let mut rows = Vec::new();
    for pipeline in [
        "host/pipelines/demo/intent.toml",
        "host/pipelines/minilm/minilm-l3.toml",
    ] {
        let mut per_allocator = BTreeMap::new();
        for allocator in [Allocator::Pooling, Allocator::OnDemand] {
            let host = Host::new(&EngineOptions {
                allocator: Some(allocator),
                ..EngineOptions::default()
            })?;
            let p = host.load_pipeline(&repo().join(pipeline))?;
            let mut stages = BTreeMap::new();
            let mut total = 0.0;
            for step in p.stages() {
                let mut times = Vec::with_capacity(rounds);
                for _ in 0..rounds {
                    times.push(time(|| Ok(step.stage().instantiate_fresh()?))?);
                }
                let t = us(median(times));
                total += t;
                stages.insert(step.stage().name().to_owned(), t);
            }
            println!(
                "{pipeline:<40} {:<10} pipeline {total:>9.1} µs   stages: {}",
                format!("{allocator:?}"),
                stages
                    .iter()
                    .map(|(n, t)| format!("{n} {t:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            per_allocator.insert(
                format!("{allocator:?}").to_lowercase(),
                json!({"pipeline_us": total, "stages_us": stages}),
            );
        }
        rows.push(json!({"pipeline": pipeline, "allocators": per_allocator}));
    }
    Ok(rows)
}

fn boundary(args: &Args) -> Result<Value> {
    let component = target_dir().join("wasm32-wasip2/plugin/echo.wasm");
    if !component.exists() {
        bail!(
            "{} is missing: build the plugins with `cargo plugins`",
            component.display()
        );
    }
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("echo.toml");
    std::fs::write(
        &path,
        format!(
            "[pipeline]\nname = \"echo\"\ninputs = [\"x\"]\n[[stages]]\nname = \"echo\"\ncomponent = \"{}\"\ninputs = [\"x\"]\n",
            component.display()
        ),
    )?;
    let host = Host::new(&EngineOptions::default())?;
    let pipeline = host.load_pipeline(&path)?;
    let stage = pipeline.stages()[0].stage();

    let (batches, per_batch) = if args.quick { (20, 200) } else { (200, 1000) };
    let mut per_call = Vec::with_capacity(batches);
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..per_batch {
            stage.run(Vec::new())?;
        }
        per_call.push(start.elapsed() / per_batch);
    }
    let empty = median(per_call);

    let mib = Tensor {
        name: "x".into(),
        dims: vec![256 * 1024],
        element_type: ElementType::F32,
        data: vec![7; 1 << 20],
    };
    let rounds = if args.quick { 50 } else { 500 };
    let (mut crossing, mut copying) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let given = mib.clone();
        crossing.push(time(|| Ok(stage.run(vec![given])?))?);
        copying.push(time(|| {
            drop(std::hint::black_box(mib.clone()));
            Ok(())
        })?);
    }
    let (crossing, copying) = (median(crossing), median(copying));
    println!("\n## The stage boundary (an echo stage: returns what it is given)");
    println!(
        "empty call into a stage and back       {:>9.0} ns",
        empty.as_secs_f64() * 1e9
    );
    println!(
        "1 MiB tensor in and back out           {:>9.1} µs",
        us(crossing)
    );
    println!(
        "  the same bytes copied once in Rust   {:>9.1} µs",
        us(copying)
    );
    Ok(json!({
        "empty_call_ns": empty.as_secs_f64() * 1e9,
        "one_mib_round_trip_us": us(crossing),
        "one_mib_host_copy_us": us(copying),
    }))
}

/// What explicit bounds checks cost: stages that do their own work in Wasm
/// (the tokenizer, mean pooling over [8, 128, 384]) and the whole MiniLM-L3
/// pipeline, on warm instances, with each memory layout.
fn bounds(args: &Args) -> Result<Vec<Value>> {
    let rounds = if args.quick { 10 } else { 200 };
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let plugin = |name: &str| target_dir().join(format!("wasm32-wasip2/plugin/{name}.wasm"));
    let tokenizer = repo().join("host/pipelines/minilm/fetched/tokenizer.json");
    let tokenize = dir.join("bounds-tokenize.toml");
    std::fs::write(
        &tokenize,
        format!(
            "[pipeline]\nname = \"tokenize\"\ninputs = [\"text\"]\n[[stages]]\nname = \"tokenize\"\ncomponent = \"{}\"\nfiles = {{ tokenizer = \"{}\" }}\nconfig = {{ max_length = 128 }}\n",
            plugin("bert_tokenizer").display(),
            tokenizer.display()
        ),
    )?;
    let pool = dir.join("bounds-pool.toml");
    std::fs::write(
        &pool,
        format!(
            "[pipeline]\nname = \"pool\"\ninputs = [\"token_embeddings\", \"attention_mask\"]\n[[stages]]\nname = \"pool\"\ncomponent = \"{}\"\n",
            plugin("mean_pool").display()
        ),
    )?;
    let (batch, seq, hidden) = (8u32, 128u32, 384u32);
    let embeddings = Tensor {
        name: "token_embeddings".into(),
        dims: vec![batch, seq, hidden],
        element_type: ElementType::F32,
        data: (0..batch * seq * hidden)
            .flat_map(|i| ((i % 97) as f32 / 97.0).to_le_bytes())
            .collect(),
    };
    let mask = Tensor {
        name: "attention_mask".into(),
        dims: vec![batch, seq],
        element_type: ElementType::I64,
        data: (0..batch * seq).flat_map(|_| 1i64.to_le_bytes()).collect(),
    };
    let cases: Vec<(&str, PathBuf, Vec<Tensor>)> = vec![
        (
            "tokenize, 128 tokens",
            tokenize,
            vec![Tensor::text("text", &text(128, 1))],
        ),
        ("mean pool, [8, 128, 384]", pool, vec![embeddings, mask]),
        (
            "minilm-l3 pipeline, seq 128",
            repo().join("host/pipelines/minilm/minilm-l3.toml"),
            vec![Tensor::text("text", &text(128, 1))],
        ),
    ];
    let layouts = [
        (Allocator::Pooling, Bounds::GuardPages),
        (Allocator::Pooling, Bounds::Explicit),
        (Allocator::OnDemand, Bounds::Explicit),
    ];
    println!(
        "\n## Bounds checks: guard pages against explicit checks, warm instances, median µs of {rounds}"
    );
    let mut rows = Vec::new();
    for (label, path, inputs) in cases {
        let hosts = layouts
            .iter()
            .map(|&(allocator, bounds)| {
                let host = Host::new(&EngineOptions {
                    allocator: Some(allocator),
                    bounds: Some(bounds),
                    ..EngineOptions::default()
                })?;
                assert_eq!(host.runtime().layout().bounds, bounds);
                let pipeline = host.load_pipeline(&path)?;
                Ok((host, pipeline))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut samples = vec![Vec::with_capacity(rounds); layouts.len()];
        for _ in 0..rounds {
            for (i, (_, pipeline)) in hosts.iter().enumerate() {
                pipeline.run(inputs.clone())?;
                samples[i].push(time(|| Ok(pipeline.run(inputs.clone())?))?);
            }
        }
        let medians: Vec<f64> = samples.into_iter().map(|s| us(median(s))).collect();
        let ratio = |i: usize| medians[i] / medians[0];
        println!(
            "{label:<32} guard pages {:>9.1}   explicit (pool) {:>9.1} ({:.3}x)   explicit (on demand) {:>9.1} ({:.3}x)",
            medians[0],
            medians[1],
            ratio(1),
            medians[2],
            ratio(2)
        );
        rows.push(json!({
            "case": label,
            "guard_pages_us": medians[0],
            "explicit_pooling_us": medians[1],
            "explicit_on_demand_us": medians[2],
            "explicit_over_guard_pages": ratio(1),
        }));
    }
    Ok(rows)
}

/// How long a new host takes to load `pipeline` (compiling its components,
/// or taking them from `cache`) and answer `input` once.
fn first_request(pipeline: &Path, cache: Option<&Path>, input: &Tensor) -> Result<Duration> {
    time(|| {
        let mut host = Host::new(&EngineOptions::default())?;
        if let Some(cache) = cache {
            let key = outpost_host::cache::CacheKey::load_or_create(&cache.join("cache.key"))?;
            host = host.with_component_cache(cache, key);
        }
        let p = host.load_pipeline(pipeline)?;
        p.run(vec![input.clone()])?;
        Ok(())
    })
}

fn cold_start(args: &Args) -> Result<Vec<Value>> {
    let rounds = if args.quick { 2 } else { 5 };
    let cache = target_dir().join("bench/cache");
    let _ = std::fs::remove_dir_all(&cache);
    println!("\n## Cold start: engine, pipeline load and first request, median ms of {rounds}");
    let mut rows = Vec::new();
    for pipeline in [
        "host/pipelines/demo/intent.toml",
        "host/pipelines/minilm/minilm-l3.toml",
    ] {
        let path = repo().join(pipeline);
        let start = |cached: bool| {
            first_request(
                &path,
                cached.then_some(cache.as_path()),
                &Tensor::text("text", "stop the conveyor"),
            )
        };
        start(true)?; // fills the cache
        let (mut jit, mut warm) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            jit.push(start(false)?);
            warm.push(start(true)?);
        }
        let (jit, warm) = (median(jit), median(warm));
        println!(
            "{pipeline:<40} compiling {:>8.1} ms   from cache {:>8.1} ms",
            ms(jit),
            ms(warm)
        );
        rows.push(json!({"pipeline": pipeline, "jit_ms": ms(jit), "cached_ms": ms(warm)}));
    }
    Ok(rows)
}

/// The same stage (`classify`: softmax, top-k, labels) written in Rust, C,
/// Python and JavaScript (`plugins/languages.sh`): what each language costs
/// in size, compilation, start and per call, on the same small tensor.
fn languages(args: &Args) -> Result<Vec<Value>> {
    let (starts, calls) = if args.quick { (1, 50) } else { (3, 2000) };
    let dir = target_dir().join("bench/languages");
    let cache = dir.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&dir)?;
    println!(
        "\n## One stage in four languages (classify, 8 classes, batch 1): load median of {starts}, calls median of {calls}"
    );
    println!(
        "{:<12} {:>10} {:>12} {:>12} {:>16} {:>10}",
        "language", "size KB", "compile ms", "cached ms", "instance+init µs", "call µs"
    );
    let logits = Tensor {
        name: "logits".into(),
        dims: vec![1, 8],
        element_type: ElementType::F32,
        data: [0.5f32, -1.0, 2.0, 0.1, 3.0, 1.5, -2.0, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    };
    let mut rows = Vec::new();
    for (language, name) in [
        ("rust", "classify"),
        ("c", "c_classify"),
        ("python", "py_classify"),
        ("javascript", "js_classify"),
    ] {
        let component = target_dir().join(format!("wasm32-wasip2/plugin/{name}.wasm"));
        if !component.exists() {
            bail!(
                "{} is missing: build it with `cargo plugins` and `bash plugins/languages.sh`",
                component.display()
            );
        }
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[pipeline]\nname = \"{name}\"\ninputs = [\"logits\"]\n[[stages]]\nname = \"classify\"\ncomponent = \"{}\"\nconfig = {{ labels = [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\"], top_k = 3 }}\n",
                component.display()
            ),
        )?;
        // Load (compile or take from the cache) and answer once, as a
        // device's first request after a start does.
        let start = |cached: bool| first_request(&path, cached.then_some(cache.as_path()), &logits);
        start(true)?; // fills the cache
        let (mut jit, mut warm) = (Vec::new(), Vec::new());
        for _ in 0..starts {
            jit.push(start(false)?);
            warm.push(start(true)?);
        }
        let host = Host::new(&EngineOptions::default())?;
        let p = host.load_pipeline(&path)?;
        let stage = p.stages()[0].stage();
        let fresh = (0..calls.min(200))
            .map(|_| time(|| Ok(stage.instantiate_fresh()?)))
            .collect::<Result<Vec<_>>>()?;
        let mut per_call = Vec::with_capacity(calls);
        for _ in 0..calls {
            let input = logits.clone();
            per_call.push(time(|| Ok(stage.run(vec![input])?))?);
        }
        let size = std::fs::metadata(&component)?.len();
        let (jit, warm, fresh, call) = (median(jit), median(warm), median(fresh), median(per_call));
        println!(
            "{language:<12} {:>10.0} {:>12.1} {:>12.1} {:>16.1} {:>10.1}",
            size as f64 / 1024.0,
            ms(jit),
            ms(warm),
            us(fresh),
            us(call)
        );
        rows.push(json!({
            "language": language,
            "component": name,
            "component_bytes": size,
            "compile_and_first_request_ms": ms(jit),
            "cached_start_and_first_request_ms": ms(warm),
            "fresh_instance_and_init_us": us(fresh),
            "call_us": us(call),
        }));
    }
    Ok(rows)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let library = std::env::var_os("OUTPOST_ONNXRUNTIME_LIB").map_or_else(
        || target_dir().join("onnxruntime/libonnxruntime.so"),
        PathBuf::from,
    );
    if !library.exists() {
        bail!(
            "{} is missing: fetch it with `python3 host/onnxruntime/fetch.py`",
            library.display()
        );
    }
    let ort = BackendOptions {
        force: Some(BackendName::Onnxruntime),
        onnxruntime_library: Some(library.clone()),
        onnxruntime_threads: Some(1),
    };
    let machine = json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "arch": std::env::consts::ARCH,
        "debug_assertions": cfg!(debug_assertions),
        "onnxruntime_library": library.display().to_string(),
        "quick": args.quick,
    });
    println!("# Outpost benchmark ({machine})");
    let started = Instant::now();
    let mut result = serde_json::Map::new();
    result.insert("machine".into(), machine);
    let runs = |section: &str| args.only.as_deref().is_none_or(|only| only == section);
    if runs("minilm") {
        result.insert("minilm".into(), json!(models(&args, &ort)?));
    }
    if runs("instantiation") {
        result.insert("instantiation".into(), json!(instantiation(&args)?));
    }
    if runs("boundary") {
        result.insert("boundary".into(), boundary(&args)?);
    }
    if runs("bounds") {
        result.insert("bounds".into(), json!(bounds(&args)?));
    }
    if runs("cold_start") {
        result.insert("cold_start".into(), json!(cold_start(&args)?));
    }
    if runs("languages") {
        result.insert("languages".into(), json!(languages(&args)?));
    }
    result.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
    let result = Value::Object(result);
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&result)?)?;
    println!(
        "\n{:.0} s; results in {}",
        started.elapsed().as_secs_f64(),
        args.json.display()
    );
    Ok(())
}
