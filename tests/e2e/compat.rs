//! The compatibility path: a wasm32-wasip1 program using the `wasi-nn` crate
//! (witx ABI) runs against the host's preloaded models.

use outpost_e2e::{
    INFER_ONLY_PIPELINE, Scratch, classic_program, demo_dir, outpost, tensor_values,
};
use serde_json::json;

/// Token ids of "stop the conveyor" in the demo vocabulary, with [CLS]/[SEP].
fn stop_the_conveyor_ids() -> Vec<i64> {
    let vocab = std::fs::read_to_string(demo_dir().join("vocab.txt")).unwrap();
    let id = |w: &str| vocab.lines().position(|l| l == w).unwrap() as i64;
    vec![
        id("[CLS]"),
        id("stop"),
        id("the"),
        id("conveyor"),
        id("[SEP]"),
    ]
}

#[test]
fn witx_program_matches_the_component_pipeline() {
    let ids = stop_the_conveyor_ids();
    let model = format!("intent={}", demo_dir().join("intent.onnx").display());
    let program = classic_program();
    let mut args = vec![
        "exec".to_owned(),
        program.display().to_string(),
        "--model".into(),
        model,
        "--".into(),
        "intent".into(),
    ];
    args.extend(ids.iter().map(i64::to_string));
    let run = outpost(&args);
    assert!(run.ok, "{}", run.stderr);
    let classic: Vec<f64> = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(classic.len(), 8);

    // The same ids through a component pipeline of one `infer` stage.
    let scratch = Scratch::new();
    let pipeline = scratch.pipeline(INFER_ONLY_PIPELINE);
    let n = ids.len() as u32;
    let request = json!({
        "input_ids": { "dims": [1, n], "type": "i64", "data": ids },
        "attention_mask": { "dims": [1, n], "type": "i64", "data": vec![1; ids.len()] },
    });
    let input = scratch.write("request.json", request.to_string());
    let run = outpost(&[
        "run".as_ref(),
        "--insecure-unsigned".as_ref(),
        pipeline.as_os_str(),
        "--input-file".as_ref(),
        input.as_os_str(),
    ]);
    assert!(run.ok, "{}", run.stderr);
    let component = tensor_values(&run.json()["results"][0]["outputs"]["logits"]);
    for (a, b) in classic.iter().zip(&component) {
        assert!(
            (a - b).abs() < 1e-5,
            "witx {classic:?} vs component {component:?}"
        );
    }
}

#[test]
fn witx_program_asking_for_an_unknown_model_fails_cleanly() {
    let model = format!("intent={}", demo_dir().join("intent.onnx").display());
    let program = classic_program();
    let run = outpost(&[
        "exec",
        program.to_str().unwrap(),
        "--model",
        &model,
        "--",
        "no-such-model",
        "1",
        "2",
    ]);
    assert!(!run.ok);
    assert!(run.stderr.contains("no-such-model"), "{}", run.stderr);
}

#[test]
fn exec_rejects_a_malformed_model_argument() {
    let program = classic_program();
    let run = outpost(&["exec", program.to_str().unwrap(), "--model", "intent.onnx"]);
    run.expect_error(&["NAME=PATH"]);
}
