//! Generative models: the key/value cache the host keeps per execution
//! context (`[models.NAME.cache]`), checked on a toy decoder whose outputs
//! show what the host fed it, and SmolLM2-135M generating token for token
//! what ONNX Runtime's own greedy loop generates.

use outpost_e2e::{Run, Scratch, onnxruntime_lib, outpost, python, reference, repo, target_dir};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const WIRING: &str = r#"
[models.toy.cache]
inputs = "past.{}"
outputs = "present.{}"
axis = 2
attention_mask = "attention_mask"
position_ids = "position_ids"
max_context = 6
"#;

/// A pipeline of one `infer` stage on the toy decoder, with `cache` as its
/// `[models.toy.cache]` table. `infer` keeps one execution context for the
/// life of its instance, so consecutive requests continue one sequence.
fn toy(scratch: &Scratch, cache: &str) -> PathBuf {
    let model = scratch.path().join("toy.onnx");
    reference(&["toy-decoder", &model.display().to_string()], &json!({}));
    scratch.pipeline(&format!(
        r#"
[pipeline]
name = "toy"
inputs = ["input_ids"]
[models.toy]
path = "{}"
{cache}
[[stages]]
name = "infer"
component = "{{plugins}}/infer.wasm"
models = ["toy"]
config = {{ model = "toy" }}
"#,
        model.display()
    ))
}

fn ids(scratch: &Scratch, name: &str, ids: &[i64]) -> PathBuf {
    scratch.write(
        name,
        json!({ "input_ids": { "dims": [1, ids.len()], "type": "i64", "data": ids } }).to_string(),
    )
}

fn run(pipeline: &Path, files: &[PathBuf], extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--insecure-unsigned".into(),
        pipeline.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    for f in files {
        args.push("-f".into());
        args.push(f.display().to_string());
    }
    outpost(&args)
}

/// `outpost run` of `pipeline` on one text prompt, with `extra` flags.
fn run_text(pipeline: &Path, text: &str, extra: &[&str]) -> Run {
    let mut args = vec![
        "run".to_owned(),
        "--insecure-unsigned".to_owned(),
        pipeline.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["-i".to_owned(), text.to_owned()]);
    outpost(&args)
}

fn onnxruntime() -> Vec<String> {
    vec![
        "--backend".into(),
        "onnxruntime".into(),
        "--onnxruntime-lib".into(),
        onnxruntime_lib().display().to_string(),
    ]
}

#[test]
fn the_host_fills_mask_and_positions_and_each_request_starts_a_new_sequence() {
    let scratch = Scratch::new();
    let pipeline = toy(&scratch, WIRING);
    let first = ids(&scratch, "first.json", &[1, 2, 3]);
    let second = ids(&scratch, "second.json", &[4]);
    let ort = onnxruntime();
    for backend in [vec![], ort.iter().map(String::as_str).collect::<Vec<_>>()] {
        let out = run(&pipeline, &[first.clone(), second.clone()], &backend);
        assert!(out.ok, "{backend:?}: {}", out.stderr);
        let results = &out.json()["results"];
        let outputs = |i: usize, name: &str| results[i]["outputs"][name]["data"].clone();
        // The stage sent only input_ids; the host added the rest.
        assert_eq!(outputs(0, "positions"), json!([0, 1, 2]), "{backend:?}");
        assert_eq!(outputs(0, "mask_sum"), json!([3]), "{backend:?}");
        assert_eq!(outputs(0, "cache_sum"), json!([48.0]), "{backend:?}");
        // `infer` keeps its execution context across requests, but a cache
        // lives within one request: the second starts at position 0, and
        // nothing of the first request's tokens is in its cache.
        assert_eq!(outputs(1, "positions"), json!([0]), "{backend:?}");
        assert_eq!(outputs(1, "mask_sum"), json!([1]), "{backend:?}");
        assert_eq!(outputs(1, "cache_sum"), json!([32.0]), "{backend:?}");
        // The cache never reaches the stage.
        let names: Vec<&String> = results[1]["outputs"].as_object().unwrap().keys().collect();
        assert!(!names.iter().any(|n| n.starts_with("present")), "{names:?}");
    }
}

#[test]
fn last_position_gives_the_stage_only_each_sequences_last_position() {
    let scratch = Scratch::new();
    let wiring = WIRING.replace(
        "max_context = 6",
        "max_context = 6\nlast_position = [\"logits\", \"positions\"]",
    );
    let pipeline = toy(&scratch, &wiring);
    // Two sequences of three new positions each.
    let batch = scratch.write(
        "batch.json",
        json!({ "input_ids": { "dims": [2, 3], "type": "i64", "data": [1, 2, 3, 4, 5, 6] } })
            .to_string(),
    );
    let ort = onnxruntime();
    for backend in [vec![], ort.iter().map(String::as_str).collect::<Vec<_>>()] {
        let out = run(&pipeline, std::slice::from_ref(&batch), &backend);
        assert!(out.ok, "{backend:?}: {}", out.stderr);
        let outputs = &out.json()["results"][0]["outputs"];
        // logits = ids × (1, 2, 3), of each sequence's last id only.
        assert_eq!(outputs["logits"]["dims"], json!([2, 1, 3]), "{backend:?}");
        assert_eq!(
            outputs["logits"]["data"],
            json!([3.0, 6.0, 9.0, 6.0, 12.0, 18.0]),
            "{backend:?}"
        );
        assert_eq!(outputs["positions"]["dims"], json!([2, 1]), "{backend:?}");
        assert_eq!(outputs["positions"]["data"], json!([2, 2]), "{backend:?}");
        // The cache still holds every position: 3 per sequence.
        assert_eq!(outputs["mask_sum"]["data"], json!([6]), "{backend:?}");
    }
    // The stage sees the cut dimension in the model's signature.
    let inspect = outpost(&[
        "inspect",
        "--insecure-unsigned",
        &pipeline.display().to_string(),
    ]);
    assert!(inspect.ok, "{}", inspect.stderr);
    assert!(
        inspect.stdout.contains("\"f32[batch, 1, 3]\""),
        "{}",
        inspect.stdout
    );
}

/// `input_ids` of `batch` sequences of `len` tokens each.
fn batch_of_ids(scratch: &Scratch, name: &str, batch: usize, len: usize) -> PathBuf {
    let ids: Vec<i64> = (0..batch * len).map(|i| (i % 7) as i64).collect();
    scratch.write(
        name,
        json!({ "input_ids": { "dims": [batch, len], "type": "i64", "data": ids } }).to_string(),
    )
}

#[test]
fn a_batch_whose_cache_would_pass_the_limit_is_refused_before_it_runs() {
    let scratch = Scratch::new();
    let pipeline = toy(&scratch, WIRING);
    let limited = std::fs::read_to_string(&pipeline).unwrap().replace(
        "config = { model = \"toy\" }",
        "config = { model = \"toy\" }\nlimits = { nn_memory_mib = 1 }",
    );
    std::fs::write(&pipeline, limited).unwrap();
    // 480 KB of ids (allowed) asking for 20,000 sequences: their cache
    // would be 3.84 MB. The host says so before the backend makes it.
    let huge = batch_of_ids(&scratch, "huge.json", 20_000, 3);
    // 840 KB of ids, 7 positions each.
    let long = batch_of_ids(&scratch, "long.json", 15_000, 7);
    let ort = onnxruntime();
    for backend in [vec![], ort.iter().map(String::as_str).collect::<Vec<_>>()] {
        run(&pipeline, std::slice::from_ref(&huge), &backend).expect_error(&[
            "stage 'infer' exceeded its memory limit of 1 MiB",
            "a compute of model 'toy' would make 1200032 bytes of outputs and a key/value cache of 3840000 bytes",
            "predicted from its input shapes, before running",
            "limits.nn_memory_mib",
        ]);
        // Past max_context, the same batch is told that, not a memory
        // limit: inputs are checked before their outputs are predicted.
        let out = run(&pipeline, std::slice::from_ref(&long), &backend);
        out.expect_error(&["would hold 7 positions (0 cached + 7 new), over max_context = 6"]);
        assert!(!out.stderr.contains("memory limit"), "{}", out.stderr);
        // A batch that fits still runs.
        let small = ids(&scratch, "small.json", &[1, 2, 3]);
        let out = run(&pipeline, &[small], &backend);
        assert!(out.ok, "{backend:?}: {}", out.stderr);
    }
}

#[test]
fn a_model_whose_outputs_would_pass_the_limit_is_refused_before_it_runs() {
    // The toy decoder without a cache table: the stage gives every input,
    // and a batch of 20,000 asks for 1.68 MB of outputs.
    let scratch = Scratch::new();
    let model = scratch.path().join("toy.onnx");
    reference(&["toy-decoder", &model.display().to_string()], &json!({}));
    let pipeline = scratch.pipeline(&format!(
        r#"
[pipeline]
name = "plain"
inputs = ["input_ids", "attention_mask", "position_ids", "past.a", "past.b"]
[models.toy]
path = "{}"
[[stages]]
name = "infer"
component = "{{plugins}}/infer.wasm"
models = ["toy"]
config = {{ model = "toy" }}
limits = {{ nn_memory_mib = 1 }}
"#,
        model.display()
    ));
    let batch = 20_000;
    let ones = json!({ "dims": [batch, 1], "type": "i64", "data": vec![1; batch] });
    let empty = json!({ "dims": [batch, 2, 0, 4], "type": "f32", "data": [] });
    let inputs = scratch.write(
        "inputs.json",
        json!({
            "input_ids": ones,
            "attention_mask": ones,
            "position_ids": ones,
            "past.a": empty,
            "past.b": empty,
        })
        .to_string(),
    );
    let ort = onnxruntime();
    for backend in [vec![], ort.iter().map(String::as_str).collect::<Vec<_>>()] {
        // tract names the cache outputs' length `seq+past`, ONNX Runtime
        // `total`, as the file declares: both are read.
        run(&pipeline, std::slice::from_ref(&inputs), &backend).expect_error(&[
            "stage 'infer' exceeded its memory limit of 1 MiB",
            "a compute of model 'toy' would make 1680064 bytes of outputs (predicted",
            "before running",
        ]);
    }
}

#[test]
fn an_idle_instance_keeps_no_cache_between_requests() {
    // `infer` keeps its execution context for the life of its instance;
    // the cache its request filled is freed when the call ends, not held
    // by the pooled instance until its next request.
    let scratch = Scratch::new();
    let pipeline = toy(&scratch, WIRING);
    let host = outpost_host::Host::new(&outpost_host::EngineOptions::default()).unwrap();
    let pipeline = host.load_pipeline(&pipeline).unwrap();
    let stage = pipeline.stages()[0].stage();
    let ids = outpost_host::Tensor {
        name: "input_ids".into(),
        dims: vec![1, 3],
        element_type: outpost_host::ElementType::I64,
        data: [1i64, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    for _ in 0..2 {
        let outputs = pipeline.run(vec![ids.clone()]).unwrap();
        let sum = outputs.iter().find(|t| t.name == "cache_sum").unwrap();
        // The run had its cache: 3 positions of 2 × 4 values, 1 + 2 + 3.
        assert_eq!(sum.data, 48f32.to_le_bytes());
        assert_eq!(stage.idle_instances(), 1);
        assert_eq!(stage.idle_cache_bytes(), 0);
    }
}

/// Each stage call reports the time inside the runtime apart from the
/// rest: the benchmark's measure of what the sandbox and the host add.
#[test]
fn a_calls_timing_separates_the_runtimes_own_work_on_both_backends() {
    use outpost_host::backend::{BackendName, BackendOptions};
    let scratch = Scratch::new();
    let toy = toy(&scratch, WIRING);
    let ort = BackendOptions {
        force: Some(BackendName::Onnxruntime),
        onnxruntime_library: Some(onnxruntime_lib()),
        onnxruntime_threads: Some(1),
    };
    let ids = outpost_host::Tensor {
        name: "input_ids".into(),
        dims: vec![1, 3],
        element_type: outpost_host::ElementType::I64,
        data: [1i64, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    for options in [BackendOptions::default(), ort] {
        let host = outpost_host::Host::new(&outpost_host::EngineOptions::default())
            .unwrap()
            .with_backend_options(options.clone());
        let pipeline = host.load_pipeline(&toy).unwrap();
        let mut timings = Vec::new();
        pipeline
            .run_with(vec![ids.clone()], None, &mut timings)
            .unwrap();
        let [t] = timings[..] else {
            panic!("{timings:?}")
        };
        assert!(t.runtime > std::time::Duration::ZERO, "{options:?}: {t:?}");
        assert!(t.runtime <= t.inference, "{options:?}: {t:?}");
        assert!(t.inference <= t.elapsed, "{options:?}: {t:?}");
    }
    // A stage that runs no model spends no time in a runtime.
    let host = outpost_host::Host::new(&outpost_host::EngineOptions::default()).unwrap();
    let demo = host
        .load_pipeline(&outpost_e2e::demo_dir().join("intent.toml"))
        .unwrap();
    let text = outpost_host::Tensor::text("text", "turn on the lights");
    let mut timings = Vec::new();
    demo.run_with(vec![text], None, &mut timings).unwrap();
    assert_eq!(timings.len(), 3, "{timings:?}");
    assert_eq!(timings[0].runtime, std::time::Duration::ZERO, "tokenizer");
    assert!(timings[1].runtime > std::time::Duration::ZERO, "infer");
}

#[test]
fn a_prompt_past_max_context_is_refused_naming_the_limit() {
    let scratch = Scratch::new();
    let pipeline = toy(&scratch, WIRING);
    let seven = ids(&scratch, "seven.json", &[1, 2, 3, 4, 5, 6, 7]);
    run(&pipeline, &[seven], &[]).expect_error(&[
        "model 'toy'",
        "would hold 7 positions (0 cached + 7 new), over max_context = 6 ([models.toy.cache])",
        "start a new execution context",
    ]);
}

#[test]
fn cache_tables_that_do_not_fit_the_model_are_refused_at_load() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "inputs = \"past.{}\"",
            "inputs = \"past\"",
            &["inputs = \"past\" must contain '{}' exactly once"],
        ),
        (
            "outputs = \"present.{}\"",
            "outputs = \"next.{}\"",
            &["cache input 'past.a' has no output 'next.a'", "present.a"],
        ),
        (
            "axis = 2",
            "axis = 1",
            &["dimension 1 of cache input 'past.a'", "is fixed at 2"],
        ),
        (
            "axis = 2",
            "axis = 4",
            &["axis = 4 but cache input 'past.a' has rank 4"],
        ),
        (
            "attention_mask = \"attention_mask\"",
            "attention_mask = \"mask\"",
            &[
                "attention_mask = \"mask\" is not an input of the model",
                "input_ids",
            ],
        ),
        (
            "max_context = 6",
            "max_context = 0",
            &["max_context must be at least 1"],
        ),
        ("axis = 2", "axis = 2\nsize = 3", &["unknown field `size`"]),
        (
            "max_context = 6",
            "max_context = 6\nlast_position = [\"present.a\"]",
            &[
                "last_position names 'present.a', which is not an output the stage receives",
                "logits, positions, mask_sum, cache_sum",
            ],
        ),
        (
            "max_context = 6",
            "max_context = 6\nlast_position = [\"mask_sum\"]",
            &[
                "last_position names 'mask_sum' (i64[])",
                "exactly one dimension 'seq' (the new positions of input 'input_ids')",
            ],
        ),
    ];
    for (from, to, needles) in cases {
        let scratch = Scratch::new();
        let pipeline = toy(&scratch, &WIRING.replace(from, to));
        let mut expected = vec!["[models.toy.cache]"];
        if to.contains("size") {
            expected.clear();
        }
        expected.extend_from_slice(needles);
        outpost(&[
            "inspect",
            "--insecure-unsigned",
            &pipeline.display().to_string(),
        ])
        .expect_error(&expected);
    }
}

// SmolLM2-135M-Instruct, converted by host/pipelines/smollm2/convert.py.

fn smollm2_dir() -> PathBuf {
    let dir = target_dir().join("models/smollm2");
    assert!(
        dir.join("model.onnx").exists() && dir.join("tokenizer.json").exists(),
        "{} is missing: run `target/py/bin/python host/pipelines/smollm2/convert.py` (tests/run.sh does)",
        dir.display()
    );
    dir
}

/// The repository's SmolLM2 pipeline with `config` for its generate stage.
fn smollm2(scratch: &Scratch, model: &str, generate: &str, limits: &str) -> PathBuf {
    let toml = smollm2_pipeline("smollm2.toml", model).replace(
        "config = { model = \"lm\", max_new_tokens = 64, stop = [0, 2] }",
        &format!("config = {{ model = \"lm\", {generate} }}\n{limits}"),
    );
    assert!(
        toml.contains(generate),
        "the pipeline's generate config changed"
    );
    scratch.write("smollm2.toml", toml)
}

/// The repository's pipeline `file` of host/pipelines/smollm2, its paths
/// made absolute, on the converted `model`.
pub(crate) fn smollm2_pipeline(file: &str, model: &str) -> String {
    let dir = smollm2_dir();
    std::fs::read_to_string(repo().join("host/pipelines/smollm2").join(file))
        .unwrap()
        .replace(
            "../../../target/models/smollm2/model.onnx",
            &dir.join(model).display().to_string(),
        )
        .replace(
            "../../../target/models/smollm2/tokenizer.json",
            &dir.join("tokenizer.json").display().to_string(),
        )
        .replace(
            "../../../target/wasm32-wasip2/plugin",
            &target_dir()
                .join("wasm32-wasip2/plugin")
                .display()
                .to_string(),
        )
}

const PROMPTS: [&str; 8] = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is 12 + 7?",
    "Translate 'good morning' into Spanish.",
    "Give me three tips for staying focused while studying.",
    "Write a Python function that returns the square of a number.",
    "Why is the sky blue?",
    "Café, naïve, 東京, 🚀: name the languages.",
];

/// ONNX Runtime's greedy decoding in Python (prefill, then one token per
/// step), as host/pipelines/smollm2/reference.py does it.
fn python_greedy(model: &str, scratch: &Scratch, n: u32) -> Vec<(Vec<i64>, Vec<i64>)> {
    let out = scratch.path().join(format!("reference-{model}.json"));
    let mut command = std::process::Command::new(python());
    command
        .arg(repo().join("host/pipelines/smollm2/reference.py"))
        .arg("--dir")
        .arg(smollm2_dir())
        .args(["--models", model, "-n", &n.to_string(), "--json"])
        .arg(&out);
    for p in PROMPTS {
        command.args(["-p", p]);
    }
    let status = command.output().unwrap();
    assert!(
        status.status.success(),
        "reference.py: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let results = doc
        .get(model)
        .and_then(Value::as_array)
        .or_else(|| doc.as_array())
        .unwrap_or_else(|| panic!("unexpected reference output: {doc}"));
    results
        .iter()
        .map(|r| {
            let ids = |k: &str| -> Vec<i64> {
                r[k].as_array()
                    .unwrap_or_else(|| panic!("no {k} in {r}"))
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect()
            };
            (ids("prompt_ids"), ids("new_ids"))
        })
        .collect()
}

fn outpost_greedy(pipeline: &Path, extra: &[String]) -> Vec<(Vec<i64>, Vec<i64>)> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--insecure-unsigned".into(),
        pipeline.display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    for p in PROMPTS {
        args.push("-i".into());
        args.push(p.into());
    }
    let out = outpost(&args);
    assert!(out.ok, "{}", out.stderr);
    out.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let ids = |k: &str| -> Vec<i64> {
                r["outputs"][k]["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect()
            };
            (ids("input_ids"), ids("token_ids"))
        })
        .collect()
}

#[test]
fn smollm2_greedy_tokens_equal_onnx_runtime_on_tract_and_on_onnx_runtime() {
    let scratch = Scratch::new();
    let expected = python_greedy("model.onnx", &scratch, 32);
    assert_eq!(expected.len(), PROMPTS.len());
    let pipeline = smollm2(&scratch, "model.onnx", "max_new_tokens = 32, stop = []", "");
    for backend in [vec![], onnxruntime()] {
        let got = outpost_greedy(&pipeline, &backend);
        for (i, ((want_prompt, want_new), (got_prompt, got_new))) in
            expected.iter().zip(&got).enumerate()
        {
            assert_eq!(
                got_prompt, want_prompt,
                "{backend:?} prompt {i}: {}",
                PROMPTS[i]
            );
            assert_eq!(got_new.len(), 32, "{backend:?} prompt {i}");
            assert_eq!(got_new, want_new, "{backend:?} prompt {i}: {}", PROMPTS[i]);
        }
    }
}

#[test]
fn smollm2_answers_and_stops_at_the_end_of_its_turn() {
    let scratch = Scratch::new();
    let pipeline = smollm2(
        &scratch,
        "model.onnx",
        "max_new_tokens = 64, stop = [0, 2]",
        "",
    );
    let out = run_text(&pipeline, "What is the capital of France?", &[]);
    assert!(out.ok, "{}", out.stderr);
    let outputs = &out.json()["results"][0]["outputs"];
    let n = outputs["token_ids"]["dims"][1].as_u64().unwrap();
    assert!(n > 0 && n < 64, "stopped at <|im_end|>: {outputs}");
    let text = outputs["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
}

#[test]
fn a_cache_over_the_stage_memory_limit_is_a_memory_limit_and_names_the_cache() {
    let scratch = Scratch::new();
    // 46 KiB of cache per position; the prompt's logits (49152 floats per
    // position) pass, the cache outgrows 8 MiB within the 512 new tokens.
    let pipeline = smollm2(
        &scratch,
        "model.onnx",
        "max_new_tokens = 512, stop = []",
        "limits = { nn_memory_mib = 8 }",
    );
    run_text(&pipeline, "Hi", &[]).expect_error(&[
        "stage 'generate' exceeded its memory limit of 8 MiB",
        "in key/value caches)",
        "limits.nn_memory_mib",
    ]);
}

#[test]
fn a_long_prompt_fits_the_stage_because_it_gets_only_the_last_positions_logits() {
    let scratch = Scratch::new();
    let with = smollm2(&scratch, "model.onnx", "max_new_tokens = 1, stop = []", "");
    let line = "last_position = [\"logits\"]\n";
    let toml = std::fs::read_to_string(&with).unwrap();
    assert!(toml.contains(line), "{toml}");
    let without = scratch.write("without.toml", toml.replace(line, ""));
    // ~1,500 tokens: every position's logits would be 295 MB, over the
    // default stage memory of 256 MiB.
    let prompt = "the sea ".repeat(750);
    let ort = onnxruntime();
    let ort: Vec<&str> = ort.iter().map(String::as_str).collect();
    let out = run_text(&with, &prompt, &ort);
    assert!(out.ok, "{}", out.stderr);
    let outputs = &out.json()["results"][0]["outputs"];
    let positions = outputs["input_ids"]["dims"][1].as_u64().unwrap();
    assert!(positions > 1400, "{positions} prompt positions");
    assert_eq!(outputs["token_ids"]["dims"], json!([1, 1]));
    run_text(&without, &prompt, &ort)
        .expect_error(&["stage 'generate' exceeded its memory limit of 256 MiB"]);
}

#[test]
fn a_generation_that_never_stops_meets_its_deadline() {
    let scratch = Scratch::new();
    let pipeline = smollm2(
        &scratch,
        "model.onnx",
        "max_new_tokens = 100000, stop = []",
        "limits = { inference_timeout_ms = 1500 }",
    );
    run_text(&pipeline, "Hi", &[]).expect_error(&[
        "stage 'generate': inference ran past its 1500 ms deadline (limits.inference_timeout_ms)",
    ]);
}

#[test]
fn tokens_stream_out_one_by_one_as_they_are_generated() {
    let scratch = Scratch::new();
    let pipeline = smollm2(&scratch, "model.onnx", "max_new_tokens = 8, stop = []", "");
    let out = run_text(&pipeline, "Hi", &["--stream"]);
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (report, partials) = lines.split_last().unwrap();
    let streamed: Vec<i64> = partials
        .iter()
        .map(|p| {
            assert_eq!(p["stage"], "generate", "{p}");
            assert_eq!(p["partial"]["token_ids"]["dims"], json!([1, 1]), "{p}");
            p["partial"]["token_ids"]["data"][0].as_i64().unwrap()
        })
        .collect();
    let returned: Vec<i64> = report["results"][0]["outputs"]["token_ids"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(streamed.len(), 8);
    assert_eq!(streamed, returned);
    // The text pieces, joined, are the text returned at the end.
    let pieces: String = partials
        .iter()
        .map(|p| p["partial"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        pieces,
        report["results"][0]["outputs"]["text"].as_str().unwrap()
    );
    assert!(!pieces.is_empty());
}

#[test]
fn a_generation_past_max_context_stops_with_an_error_naming_the_limit() {
    let scratch = Scratch::new();
    let pipeline = smollm2(&scratch, "model.onnx", "max_new_tokens = 64, stop = []", "");
    let toml = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("max_context = 2048", "max_context = 40");
    std::fs::write(&pipeline, toml).unwrap();
    // The chat prompt of "Hi" is 31 tokens; after 10 generated tokens the cache
    // holds 40 positions, and feeding the 10th back would make 41.
    run_text(&pipeline, "Hi", &[]).expect_error(&[
        "stage 'generate'",
        "would hold 41 positions (40 cached + 1 new), over max_context = 40 ([models.lm.cache])",
    ]);
}

#[test]
fn partial_outputs_carry_the_names_the_pipeline_gives_them() {
    let scratch = Scratch::new();
    let toml = smollm2_pipeline("smollm2.toml", "model.onnx")
        .replace(
            r#"outputs = ["input_ids", "token_ids", "text"]"#,
            r#"outputs = ["token_ids", "reply"]"#,
        )
        .replace(
            "config = { model = \"lm\", max_new_tokens = 64, stop = [0, 2] }",
            "config = { model = \"lm\", max_new_tokens = 4, stop = [] }\noutputs = { text = \"reply\", token_ids = \"token_ids\" }",
        );
    assert!(toml.contains("\"reply\"]") && toml.contains("text = \"reply\""));
    let pipeline = scratch.write("renamed.toml", toml);
    let out = run_text(&pipeline, "Hi", &["--stream"]);
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (report, partials) = lines.split_last().unwrap();
    assert_eq!(partials.len(), 4, "{lines:?}");
    let mut pieces = String::new();
    for p in partials {
        // The stage emits `text`; the pipeline calls it `reply`.
        assert!(p["partial"].get("text").is_none(), "{p}");
        pieces.push_str(p["partial"]["reply"].as_str().unwrap());
    }
    assert_eq!(
        pieces,
        report["results"][0]["outputs"]["reply"].as_str().unwrap()
    );
}
