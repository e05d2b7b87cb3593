//! Tensors of the wrong type or shape sent into a model are refused with a
//! message naming the model, the input, what it expects and what came.

use outpost_e2e::{INFER_ONLY_PIPELINE, Run, Scratch, outpost};
use serde_json::{Value, json};

fn run_with(request: Value) -> Run {
    let scratch = Scratch::new();
    let pipeline = scratch.pipeline(INFER_ONLY_PIPELINE);
    let input = scratch.write("request.json", request.to_string());
    outpost(&[
        "run".as_ref(),
        "--insecure-unsigned".as_ref(),
        pipeline.as_os_str(),
        "-f".as_ref(),
        input.as_os_str(),
    ])
}

fn ids(dims: &[u32], ty: &str) -> Value {
    let n: u32 = dims.iter().product();
    json!({ "dims": dims, "type": ty, "data": vec![2; n as usize] })
}

#[test]
fn correct_tensors_run() {
    let run = run_with(
        json!({ "input_ids": ids(&[2, 4], "i64"), "attention_mask": ids(&[2, 4], "i64") }),
    );
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.json()["results"][0]["outputs"]["logits"]["dims"],
        json!([2, 8])
    );
}

#[test]
fn wrong_element_type() {
    run_with(json!({ "input_ids": ids(&[1, 4], "f32"), "attention_mask": ids(&[1, 4], "i64") }))
        .expect_error(&[
            "stage 'infer'",
            "model 'intent' input 'input_ids' expects i64[batch, sequence] but got f32[1, 4]",
        ]);
}

#[test]
fn wrong_rank() {
    run_with(json!({ "input_ids": ids(&[4], "i64"), "attention_mask": ids(&[1, 4], "i64") }))
        .expect_error(&["model 'intent' input 'input_ids'", "rank 1 is not 2"]);
}

#[test]
fn inconsistent_symbolic_dimensions() {
    run_with(json!({ "input_ids": ids(&[1, 4], "i64"), "attention_mask": ids(&[1, 5], "i64") }))
        .expect_error(&[
            "model 'intent' input 'attention_mask'",
            "sequence",
            "is 5 but another input has sequence = 4",
        ]);
}

#[test]
fn unknown_tensor_in_the_request() {
    run_with(json!({ "input_ids": ids(&[1, 4], "i64"), "attention_mask": ids(&[1, 4], "i64"), "extra": ids(&[1], "i64") }))
        .expect_error(&["unexpected input 'extra'"]);
}

#[test]
fn malformed_request_file() {
    run_with(json!({ "input_ids": { "dims": [1, 2], "type": "i64", "data": [1, 2, 3] }, "attention_mask": ids(&[1, 2], "i64") }))
        .expect_error(&["tensor 'input_ids'", "carries 24 bytes"]);
    run_with(json!({ "input_ids": { "dims": [1], "type": "int", "data": [1] } }))
        .expect_error(&["unknown type 'int'"]);
}
