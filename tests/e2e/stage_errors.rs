//! Stages that fail: each failure is a typed error naming the pipeline and
//! stage, and the host goes on serving the next request.

use outpost_e2e::{Scratch, outpost, plugin};
use outpost_host::{EngineOptions, Host, RunError, StageError, Tensor};

fn fail_pipeline(scratch: &Scratch, mode: &str) -> std::path::PathBuf {
    let toml = format!(
        r#"
[pipeline]
name = "failing"
inputs = ["x"]
[[stages]]
name = "misbehave"
component = "{}"
config = {{ mode = "{mode}" }}
"#,
        plugin("fail").display()
    );
    scratch.write(&format!("{mode}.toml"), toml)
}

fn x(values: &[f32]) -> Tensor {
    Tensor {
        name: "x".into(),
        dims: vec![values.len() as u32],
        element_type: outpost_host::ElementType::F32,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

#[test]
fn each_failure_is_typed_and_the_next_request_is_served() {
    let scratch = Scratch::new();
    let host = Host::new(&EngineOptions::default()).unwrap();
    let ok = host.load_pipeline(&fail_pipeline(&scratch, "ok")).unwrap();

    type IsExpected = fn(&StageError) -> bool;
    let cases: [(&str, IsExpected, &str); 5] = [
        (
            "error",
            |e| matches!(e, StageError::Reported { .. }),
            "asked to fail",
        ),
        (
            "panic",
            |e| matches!(e, StageError::Trap { .. }),
            "unreachable",
        ),
        (
            "bad-length",
            |e| matches!(e, StageError::BadOutput { .. }),
            "carries 3 bytes",
        ),
        (
            "bad-type",
            |e| matches!(e, StageError::BadOutput { .. }),
            "element type i64 is not f32",
        ),
        // Issue 9: utf8 outputs were checked for length only.
        (
            "bad-utf8",
            |e| matches!(e, StageError::BadOutput { .. }),
            "tensor 'x' is utf8 but its bytes are not valid UTF-8",
        ),
    ];
    for (mode, is_expected, words) in cases {
        let pipeline = host.load_pipeline(&fail_pipeline(&scratch, mode)).unwrap();
        for _ in 0..3 {
            let error = match pipeline.run(vec![x(&[1.0, 2.0])]) {
                Err(RunError::Stage(e)) => e,
                other => panic!("mode {mode}: expected a stage error, got {other:?}"),
            };
            assert!(is_expected(&error), "mode {mode}: {error:?}");
            let message = error.to_string();
            assert!(
                message.contains("pipeline 'failing', stage 'misbehave'"),
                "{message}"
            );
            assert!(message.contains(words), "mode {mode}: {message}");
            // Another pipeline in the same host is unaffected.
            let out = ok.run(vec![x(&[3.0])]).unwrap();
            assert_eq!(out[0].data, 3.0f32.to_le_bytes());
        }
    }
}

#[test]
fn a_trap_keeps_its_backtrace() {
    let scratch = Scratch::new();
    let host = Host::new(&EngineOptions::default()).unwrap();
    let pipeline = host
        .load_pipeline(&fail_pipeline(&scratch, "panic"))
        .unwrap();
    let Err(RunError::Stage(error)) = pipeline.run(vec![x(&[1.0])]) else {
        panic!("expected a trap")
    };
    let trace = error.backtrace().expect("a wasm backtrace");
    assert!(trace.contains("fail"), "{trace}");
}

#[test]
fn the_cli_prints_one_line_and_the_backtrace_under_verbose() {
    let scratch = Scratch::new();
    let path = fail_pipeline(&scratch, "panic");
    let input = scratch.write(
        "x.json",
        r#"{"x": {"dims": [1], "type": "f32", "data": [1.0]}}"#,
    );
    let run = outpost(&[
        "run".as_ref(),
        "--insecure-unsigned".as_ref(),
        path.as_os_str(),
        "-f".as_ref(),
        input.as_os_str(),
    ]);
    run.expect_error(&["stage 'misbehave' trapped"]);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with("warning: --insecure-unsigned"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    let run = outpost(&[
        "-v".as_ref(),
        "run".as_ref(),
        "--insecure-unsigned".as_ref(),
        path.as_os_str(),
        "-f".as_ref(),
        input.as_os_str(),
    ]);
    run.expect_error(&["wasm backtrace"]);
}

#[test]
fn a_stage_failing_in_init_stops_the_load() {
    let scratch = Scratch::new();
    let run = outpost(&[
        "inspect".as_ref(),
        "--insecure-unsigned".as_ref(),
        fail_pipeline(&scratch, "init-error").as_os_str(),
    ]);
    run.expect_error(&["stage 'misbehave'", "invalid config", "refusing to start"]);
}

#[test]
fn a_request_missing_its_input_is_refused() {
    let scratch = Scratch::new();
    let host = Host::new(&EngineOptions::default()).unwrap();
    let pipeline = host.load_pipeline(&fail_pipeline(&scratch, "ok")).unwrap();
    let error = pipeline.run(vec![]).unwrap_err().to_string();
    assert!(error.contains("missing input 'x'"), "{error}");
    let mut bad = x(&[1.0]);
    bad.data.pop();
    let error = pipeline.run(vec![bad]).unwrap_err().to_string();
    assert!(error.contains("carries 3 bytes"), "{error}");
}

fn intent_pipeline(scratch: &Scratch, limits: &str) -> std::path::PathBuf {
    let toml = outpost_e2e::INFER_ONLY_PIPELINE.replace(
        "config = { model = \"intent\" }",
        &format!("config = {{ model = \"intent\" }}\nlimits = {{ {limits} }}"),
    );
    scratch.pipeline(&toml)
}

fn ids() -> Vec<Tensor> {
    let t = |name: &str| Tensor {
        name: name.into(),
        dims: vec![1, 3],
        element_type: outpost_host::ElementType::I64,
        data: [2i64, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    vec![t("input_ids"), t("attention_mask")]
}

#[test]
fn inference_has_a_deadline_of_its_own() {
    let scratch = Scratch::new();
    let host = Host::new(&EngineOptions::default()).unwrap();
    let pipeline = host
        .load_pipeline(&intent_pipeline(&scratch, "inference_timeout_ms = 0"))
        .unwrap();
    match pipeline.run(ids()) {
        Err(RunError::Stage(e @ StageError::InferenceTimeout { limit_ms: 0, .. })) => {
            assert!(
                e.to_string()
                    .contains("stage 'infer': inference ran past its 0 ms deadline"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    let relaxed = host
        .load_pipeline(&intent_pipeline(&scratch, "inference_timeout_ms = 60000"))
        .unwrap();
    assert_eq!(relaxed.run(ids()).unwrap()[0].dims, [1, 8]);
}

#[test]
fn fuel_needs_a_metering_host() {
    let scratch = Scratch::new();
    let host = Host::new(&EngineOptions::default()).unwrap();
    let error = host
        .load_pipeline(&intent_pipeline(&scratch, "fuel = 1000"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("sets limits.fuel, but this host does not meter fuel; start it with --fuel"),
        "{error}"
    );
    let metered = Host::new(&EngineOptions {
        fuel: true,
        ..EngineOptions::default()
    })
    .unwrap();
    let pipeline = metered
        .load_pipeline(&intent_pipeline(&scratch, "fuel = 100000000"))
        .unwrap();
    assert_eq!(pipeline.run(ids()).unwrap()[0].dims, [1, 8]);
}

/// A backend that panics on every run, as tract did on token ids past its
/// vocabulary (issue 9), standing in for any backend bug a stage's inputs
/// can reach.
struct PanickingBackend {
    signature: outpost_host::backend::ModelSignature,
}

impl outpost_host::backend::Model for PanickingBackend {
    fn name(&self) -> &str {
        "intent"
    }
    fn signature(&self) -> &outpost_host::backend::ModelSignature {
        &self.signature
    }
    fn describe(&self) -> String {
        "a backend that panics".into()
    }
    fn run(
        &self,
        _inputs: Vec<wasmtime_wasi_nn::wit::Tensor>,
    ) -> Result<Vec<wasmtime_wasi_nn::wit::Tensor>, String> {
        panic!("range start index 21152 out of range for slice of length 864")
    }
}

#[test]
fn a_backend_panic_fails_the_request_not_the_host() {
    use outpost_host::stage::{LoadedStage, StageLimits, StageSetup, stage_linker};
    let runtime = outpost_host::Runtime::new(&EngineOptions::default()).unwrap();
    let engine = runtime.engine();
    let linker = stage_linker(engine).unwrap();
    let component = wasmtime::component::Component::from_file(engine, plugin("hostile")).unwrap();
    let ids = |name: &str| outpost_host::TensorSpec {
        name: name.into(),
        element_type: Some(outpost_host::ElementType::I64),
        dims: None,
    };
    let model: outpost_host::backend::SharedModel = std::sync::Arc::new(PanickingBackend {
        signature: outpost_host::backend::ModelSignature {
            inputs: vec![ids("input_ids"), ids("attention_mask")],
            outputs: vec![ids("logits")],
        },
    });
    let config = outpost_host::bindings::Config {
        entries: vec![("attack".into(), "\"bad-ids\"".into())],
        files: Vec::new(),
    };
    let stage = LoadedStage::new(
        &linker,
        &component,
        StageSetup {
            pipeline: "panicky".into(),
            name: "attacker".into(),
            config,
            models: vec![("intent".into(), model)],
            limits: StageLimits::default(),
            grants: Default::default(),
            metering: runtime.metering(),
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    for _ in 0..3 {
        match stage.run(vec![Tensor::text("x", "go")]) {
            Err(StageError::BackendPanic {
                pipeline,
                stage,
                model,
                message,
            }) => {
                assert_eq!((pipeline.as_str(), stage.as_str()), ("panicky", "attacker"));
                assert_eq!(model, "intent");
                assert!(message.contains("out of range for slice"), "{message}");
            }
            other => panic!("expected a backend panic, got {other:?}"),
        }
    }
}
