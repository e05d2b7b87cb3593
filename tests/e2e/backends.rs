//! Backends: one signed bundle runs on tract and on ONNX Runtime (the native
//! backend, loaded from the pinned library `host/onnxruntime/fetch.py`
//! extracts) with the same results; a pipeline names its backend and target
//! per model, the device may override the backend, and what a device cannot
//! do is refused with the fix named.

use crate::bundles::{AssertOk, Publisher};
use crate::minilm::SENTENCES;
use outpost_e2e::{Run, Scratch, cosine, demo_dir, onnxruntime_lib, outpost, repo, tensor_values};
use std::path::Path;

fn native_args() -> Vec<String> {
    vec![
        "--onnxruntime-lib".into(),
        onnxruntime_lib().display().to_string(),
        "--onnxruntime-threads".into(),
        "1".into(),
    ]
}

fn embeddings(run: &Run) -> Vec<Vec<f64>> {
    run.assert_ok();
    run.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| tensor_values(&r["outputs"]["sentence_embedding"]))
        .collect()
}

fn same_embeddings_from_one_signed_bundle(pipeline: &str) {
    let p = Publisher::new();
    let bundle = p.bundle(
        &repo().join("host/pipelines/minilm").join(pipeline),
        "minilm",
        1,
        "minilm",
        &["a", "b"],
    );
    let run_on = |backend: Option<&str>| {
        let mut args = vec!["run".to_owned(), bundle.display().to_string()];
        args.extend(p.trust_args(&["root1.json"]));
        if let Some(backend) = backend {
            args.extend(["--backend".to_owned(), backend.to_owned()]);
            args.extend(native_args());
        }
        for s in SENTENCES {
            args.extend(["-i".to_owned(), s.to_owned()]);
        }
        outpost(&args)
    };
    let tract = embeddings(&run_on(None));
    let native = embeddings(&run_on(Some("onnxruntime")));
    assert_eq!(tract.len(), SENTENCES.len());
    for ((sentence, a), b) in SENTENCES.iter().zip(&tract).zip(&native) {
        assert_eq!(a.len(), 384);
        let c = cosine(a, b);
        assert!(
            c >= 0.9999,
            "{pipeline}: {sentence:?}: tract vs onnxruntime cosine {c}"
        );
    }

    let mut args = vec!["inspect".to_owned(), bundle.display().to_string()];
    args.extend(p.trust_args(&["root1.json"]));
    args.extend(["--backend".to_owned(), "onnxruntime".to_owned()]);
    args.extend(native_args());
    let inspect = outpost(&args);
    inspect.assert_ok();
    assert_eq!(
        inspect.json()["models"][0]["backend"],
        "onnxruntime (cpu: CPUExecutionProvider)"
    );
}

#[test]
fn minilm_l3_bundle_embeds_the_same_on_tract_and_onnxruntime() {
    same_embeddings_from_one_signed_bundle("minilm-l3.toml");
}

#[test]
fn minilm_l6_int8_bundle_embeds_the_same_on_tract_and_onnxruntime() {
    same_embeddings_from_one_signed_bundle("minilm-l6-int8.toml");
}

/// The demo pipeline with its model's `backend` and `target` lines replaced.
fn demo_pipeline(scratch: &Scratch, model_lines: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(demo_dir().join("intent.toml"))
        .unwrap()
        .replace("backend = \"tract\"", model_lines)
        .replace("path = \"intent.onnx\"", "path = \"{demo}/intent.onnx\"")
        .replace("\"vocab.txt\"", "\"{demo}/vocab.txt\"")
        .replace("\"labels.txt\"", "\"{demo}/labels.txt\"")
        .replace("../../../target/wasm32-wasip2/plugin", "{plugins}");
    scratch.pipeline(&text)
}

fn classify(pipeline: &Path, extra: &[String]) -> Run {
    let mut args = vec![
        "run".to_owned(),
        "--insecure-unsigned".to_owned(),
        pipeline.display().to_string(),
        "-i".to_owned(),
        "stop the conveyor".to_owned(),
    ];
    args.extend_from_slice(extra);
    outpost(&args)
}

fn top(run: &Run) -> (String, f64) {
    run.assert_ok();
    let outputs = &run.json()["results"][0]["outputs"];
    let labels = outputs["labels"].as_str().unwrap();
    let label = labels.split('\t').next().unwrap().to_owned();
    (label, tensor_values(&outputs["scores"])[0])
}

#[test]
fn a_pipeline_names_onnxruntime_and_a_device_may_run_it_on_tract() {
    let scratch = Scratch::new();
    let pipeline = demo_pipeline(&scratch, "backend = \"onnxruntime\"\ntarget = \"cpu\"");
    let (label, native) = top(&classify(&pipeline, &native_args()));
    assert_eq!(label, "stop_conveyor");
    let (label, tract) = top(&classify(&pipeline, &["--backend".into(), "tract".into()]));
    assert_eq!(label, "stop_conveyor");
    assert!((native - tract).abs() < 1e-5, "{native} vs {tract}");
}

#[test]
fn targets_the_device_cannot_serve_are_refused_naming_the_fix() {
    let scratch = Scratch::new();
    let gpu = demo_pipeline(&scratch, "backend = \"onnxruntime\"\ntarget = \"gpu\"");
    // The pinned library is ONNX Runtime's CPU build.
    classify(&gpu, &native_args()).expect_error(&[
        "model 'intent'",
        "target \"gpu\" needs ONNX Runtime's TensorRT or CUDA execution provider",
        "offers CPUExecutionProvider",
        "onnxruntime-gpu",
        "or set target = \"cpu\"",
    ]);
    // Forced onto tract, the same pipeline runs on the CPU.
    assert_eq!(
        top(&classify(&gpu, &["--backend".into(), "tract".into()])).0,
        "stop_conveyor"
    );

    let tpu = demo_pipeline(&scratch, "backend = \"onnxruntime\"\ntarget = \"tpu\"");
    classify(&tpu, &native_args()).expect_error(&["model 'intent'", "target \"tpu\""]);

    let tract_gpu = demo_pipeline(&scratch, "backend = \"tract\"\ntarget = \"gpu\"");
    classify(&tract_gpu, &[]).expect_error(&[
        "model 'intent'",
        "backend 'tract' cannot run on target 'gpu'",
        "backend = \"onnxruntime\"",
    ]);

    let unknown = demo_pipeline(&scratch, "backend = \"tensorflow\"");
    classify(&unknown, &[]).expect_error(&["unknown variant `tensorflow`", "tract", "onnxruntime"]);
}

#[test]
fn a_model_onnxruntime_cannot_read_is_named() {
    let scratch = Scratch::new();
    let model = scratch.write("broken.onnx", b"\x08\x07 this is not a protobuf model");
    let text = std::fs::read_to_string(demo_pipeline(&scratch, "backend = \"onnxruntime\""))
        .unwrap()
        .replace(
            &demo_dir().join("intent.onnx").display().to_string(),
            &model.display().to_string(),
        );
    let pipeline = scratch.write("broken.toml", text);
    classify(&pipeline, &native_args()).expect_error(&[
        "model 'intent'",
        &model.display().to_string(),
        "onnxruntime: cannot load the model",
    ]);
}

#[test]
fn a_missing_onnxruntime_library_is_named_with_the_fix() {
    let scratch = Scratch::new();
    let pipeline = demo_pipeline(&scratch, "backend = \"onnxruntime\"");
    let missing = scratch.path().join("no/libonnxruntime.so");
    classify(
        &pipeline,
        &["--onnxruntime-lib".into(), missing.display().to_string()],
    )
    .expect_error(&[
        "model 'intent'",
        &missing.display().to_string(),
        "host/onnxruntime/fetch.py",
        "--onnxruntime-lib",
    ]);
    // Not a library at all.
    let bogus = scratch.write("libonnxruntime.so", "not a shared object");
    classify(
        &pipeline,
        &["--onnxruntime-lib".into(), bogus.display().to_string()],
    )
    .expect_error(&["model 'intent'", &bogus.display().to_string()]);
}
