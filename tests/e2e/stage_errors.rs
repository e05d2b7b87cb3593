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
    let cases: [(&str, IsExpected, &str); 4] = [
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
