//! `outpost test-stage`: one stage's component run alone, with its config,
//! files and models given on the command line, its outputs compared with
//! what is expected.

use outpost_e2e::{Scratch, demo_dir, outpost, plugin};
use serde_json::json;

fn classify_args(scratch: &Scratch, expect: Option<&str>) -> Vec<String> {
    let labels = scratch.write("labels.txt", "stop_conveyor\nfly\nphoto\n");
    let input = scratch.write(
        "in.json",
        json!({ "logits": { "dims": [1, 3], "type": "f32", "data": [0.1, 2.0, 0.5] } }).to_string(),
    );
    let mut args: Vec<String> = vec![
        "test-stage".into(),
        plugin("classify").display().to_string(),
        "-f".into(),
        input.display().to_string(),
        "--config".into(),
        "top_k=2".into(),
        "--file".into(),
        format!("labels={}", labels.display()),
    ];
    if let Some(expected) = expect {
        let path = scratch.write("expected.json", expected);
        args.extend(["--expect".into(), path.display().to_string()]);
    }
    args
}

#[test]
fn a_stage_runs_alone_and_its_outputs_are_compared_with_what_is_expected() {
    let scratch = Scratch::new();
    // Without --expect: its outputs.
    let out = outpost(&classify_args(&scratch, None));
    assert!(out.ok, "{}", out.stderr);
    let outputs = &out.json()["outputs"];
    assert_eq!(outputs["labels"], "fly\tphoto");
    assert_eq!(outputs["indices"]["data"], json!([1, 2]));
    // softmax(0.1, 2.0, 0.5) = 0.1227, 0.8204... of top 2: within 1e-5.
    let expected = json!({
        "labels": "fly\tphoto",
        "indices": { "dims": [1, 2], "type": "i64", "data": [1, 2] },
        "scores": outputs["scores"],
    });
    let ok = outpost(&classify_args(&scratch, Some(&expected.to_string())));
    assert!(ok.ok, "{}", ok.stderr);
    assert!(
        ok.stdout.contains("ok: 3 output(s) as expected"),
        "{}",
        ok.stdout
    );
    // Each difference is named, and the command fails.
    let wrong = json!({
        "labels": "photo\tfly",
        "indices": { "dims": [1, 2], "type": "i32", "data": [1, 2] },
        "scores": { "dims": [1, 2], "type": "f32", "data": [0.5, 0.1] },
        "extra": "x",
    });
    outpost(&classify_args(&scratch, Some(&wrong.to_string()))).expect_error(&[
        "does not give what",
        "no output 'extra'; the stage gave:",
        "output 'labels' is \"fly\\tphoto\", expected \"photo\\tfly\"",
        "output 'indices' is i64[1, 2], expected i32[1, 2]",
        "output 'scores' element 0 is",
        "(1 more elements differ)",
    ]);
}

#[test]
fn a_stage_with_a_model_runs_alone_and_bad_inputs_get_the_stages_error() {
    let scratch = Scratch::new();
    let ids: Vec<i64> = (0..32).map(|i| if i < 4 { 101 + i } else { 0 }).collect();
    let mask: Vec<i64> = (0..32).map(|i| i64::from(i < 4)).collect();
    let input = scratch.write(
        "ids.json",
        json!({
            "input_ids": { "dims": [1, 32], "type": "i64", "data": ids },
            "attention_mask": { "dims": [1, 32], "type": "i64", "data": mask },
        })
        .to_string(),
    );
    let model = format!("intent={}", demo_dir().join("intent.onnx").display());
    let infer = plugin("infer").display().to_string();
    let out = outpost(&[
        "test-stage",
        &infer,
        "-f",
        &input.display().to_string(),
        "--model",
        &model,
        "--config",
        "model=intent",
    ]);
    assert!(out.ok, "{}", out.stderr);
    let logits = &out.json()["outputs"]["logits"];
    assert_eq!(logits["type"], "f32", "{logits}");
    assert_eq!(logits["dims"][0], 1, "{logits}");
    // Text where the model wants ids: the stage's own error, named.
    outpost(&[
        "test-stage",
        &infer,
        "--input",
        "input_ids=hello",
        "--model",
        &model,
        "--config",
        "model=intent",
    ])
    .expect_error(&[
        "stage 'infer' takes 'attention_mask'",
        "give every input the stage takes",
    ]);
    // Both inputs, the ids as text: the stage's own typed error.
    let text_ids = outpost(&[
        "test-stage",
        &infer,
        "--input",
        "input_ids=hello",
        "--input",
        "attention_mask=1",
        "--model",
        &model,
        "--config",
        "model=intent",
    ]);
    text_ids.expect_error(&["stage 'infer'", "input_ids"]);
    assert!(
        !text_ids.stderr.contains("pipeline.toml"),
        "{}",
        text_ids.stderr
    );
    // A model file that is not there is named.
    outpost(&[
        "test-stage",
        &infer,
        "--input",
        "x=1",
        "--model",
        "intent=/nonexistent/intent.onnx",
    ])
    .expect_error(&["--model: no file /nonexistent/intent.onnx"]);
}

/// `outpost test-stage` on a skeleton's component with its own test files,
/// with `factor` as its config.
fn own_test(component: &std::path::Path, dir: &std::path::Path, factor: &str) -> outpost_e2e::Run {
    outpost(&[
        "test-stage",
        &component.display().to_string(),
        "-f",
        &dir.join("test/input.json").display().to_string(),
        "--config",
        &format!("factor={factor}"),
        "--expect",
        &dir.join("test/expected.json").display().to_string(),
    ])
}

#[test]
fn outpost_new_stage_writes_a_stage_that_builds_and_passes_its_own_test() {
    let scratch = Scratch::new();
    let dir = scratch.path().join("my-scale");
    let sdk = outpost_e2e::repo().join("guest-sdk");
    let new = |name: &str, dir: &std::path::Path, sdk: &std::path::Path| {
        outpost(&[
            "new",
            "stage",
            name,
            "--dir",
            &dir.display().to_string(),
            "--sdk-path",
            &sdk.display().to_string(),
        ])
    };
    let out = new("my-scale", &dir, &sdk);
    assert!(out.ok, "{}", out.stderr);
    // It builds on its own, outside this workspace, with what cargo has.
    let build = std::process::Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--offline",
        ])
        .current_dir(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    // And passes the test it came with.
    let component = dir.join("target/wasm32-wasip2/release/my_scale.wasm");
    let with_factor = |factor: &str| own_test(&component, &dir, factor);
    let test = with_factor("2");
    assert!(test.ok, "{}\n{}", test.stdout, test.stderr);
    // With another factor it does not, and says where.
    with_factor("3")
        .expect_error(&["output 'x' element 0 is 3.0, expected 2.0 (3 more elements differ)"]);
    // Nothing is overwritten; names and SDK paths are checked.
    new("my-scale", &dir, &sdk).expect_error(&["exists already"]);
    new("My Scale", &scratch.path().join("b"), &sdk).expect_error(&["stage name 'My Scale'"]);
    new("ok", &scratch.path().join("c"), scratch.path()).expect_error(&["not the guest SDK"]);
}

#[test]
fn outpost_new_stage_in_python_javascript_and_c_builds_and_passes_its_own_test() {
    let scratch = Scratch::new();
    let sdk = outpost_e2e::repo().join("guest-sdk");
    let target = outpost_e2e::target_dir();
    // The toolchains `plugins/languages.sh` installed, first on PATH.
    let path = [
        target.join("py/bin"),
        target.join("js-toolchain/node_modules/.bin"),
        target.join("c-stages"),
    ]
    .iter()
    .map(|p| p.display().to_string())
    .chain(std::env::var("PATH").ok())
    .collect::<Vec<_>>()
    .join(":");
    for lang in ["python", "js", "c"] {
        let dir = scratch.path().join(format!("my-{lang}"));
        let new = outpost(&[
            "new",
            "stage",
            "my-scale",
            "--lang",
            lang,
            "--dir",
            &dir.display().to_string(),
            "--sdk-path",
            &sdk.display().to_string(),
        ]);
        assert!(new.ok, "{lang}: {}", new.stderr);
        if lang == "js" {
            // What `npm install` would fetch, already here.
            std::os::unix::fs::symlink(
                target.join("js-toolchain/node_modules"),
                dir.join("node_modules"),
            )
            .unwrap();
        }
        let build = std::process::Command::new(dir.join("build.sh"))
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            build.status.success(),
            "{lang}: {}{}",
            String::from_utf8_lossy(&build.stdout),
            String::from_utf8_lossy(&build.stderr)
        );
        let component = dir.join("my_scale.wasm");
        let with_factor = |factor: &str| own_test(&component, &dir, factor);
        let test = with_factor("2");
        assert!(test.ok, "{lang}: {}\n{}", test.stdout, test.stderr);
        with_factor("3").expect_error(&["output 'x' element 0 is 3.0, expected 2.0"]);
        with_factor("\"two\"").expect_error(&["invalid config", "config key 'factor'"]);
    }
    // The other languages' SDKs are not published: without a path or a git
    // repository, the command says what to give.
    outpost(&[
        "new",
        "stage",
        "x",
        "--lang",
        "python",
        "--dir",
        &scratch.path().join("x").display().to_string(),
    ])
    .expect_error(&["the Python SDK is not published yet: give --sdk-path"]);
}
