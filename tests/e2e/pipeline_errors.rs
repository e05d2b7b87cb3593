//! Every mistake a pipeline file can hold gets an error naming the file and
//! the key, stage or model at fault, and saying what to do.

use outpost_e2e::{Run, Scratch, outpost};

/// A working three-stage pipeline; tests break one thing at a time.
const GOOD: &str = r#"
[pipeline]
name = "intent"
inputs = ["text"]

[models.intent]
path = "{demo}/intent.onnx"

[[stages]]
name = "tokenize"
component = "{plugins}/bert_tokenizer.wasm"
inputs = ["text"]
outputs = ["input_ids", "attention_mask"]
files = { vocab = "{demo}/vocab.txt" }

[[stages]]
name = "infer"
component = "{plugins}/infer.wasm"
models = ["intent"]
inputs = ["input_ids", "attention_mask"]
config = { model = "intent" }

[[stages]]
name = "classify"
component = "{plugins}/classify.wasm"
files = { labels = "{demo}/labels.txt" }
"#;

fn inspect(toml: &str) -> Run {
    let scratch = Scratch::new();
    let path = scratch.pipeline(toml);
    outpost(&[
        "inspect".as_ref(),
        "--insecure-unsigned".as_ref(),
        path.as_os_str(),
    ])
}

fn broken(from: &str, to: &str) -> Run {
    assert!(
        GOOD.contains(from),
        "test bug: {from:?} not in the good pipeline"
    );
    inspect(&GOOD.replacen(from, to, 1))
}

#[test]
fn the_unbroken_pipeline_loads() {
    let run = inspect(GOOD);
    assert!(run.ok, "{}", run.stderr);
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    broken(
        "inputs = [\"text\"]\n\n[models",
        "inptus = [\"text\"]\n\n[models",
    )
    .expect_error(&["pipeline.toml", "unknown field `inptus`", "line"]);
    broken("[models.intent]\n", "[models.intent]\nformat = \"onnx\"\n")
        .expect_error(&["unknown field `format`"]);
    broken("name = \"tokenize\"\n", "name = \"tokenize\"\nconfg = {}\n")
        .expect_error(&["unknown field `confg`"]);
}

#[test]
fn bad_toml_syntax_is_located() {
    inspect("[pipeline\nname = 1").expect_error(&["pipeline.toml", "line 1"]);
}

#[test]
fn unknown_backend_is_refused() {
    broken(
        "path = \"{demo}/intent.onnx\"",
        "path = \"{demo}/intent.onnx\"\nbackend = \"openvino\"",
    )
    .expect_error(&["unknown variant `openvino`", "tract"]);
}

#[test]
fn missing_model_file_names_the_file() {
    broken("{demo}/intent.onnx", "{demo}/nope.onnx").expect_error(&["nope.onnx", "cannot read"]);
}

#[test]
fn model_that_is_not_onnx_names_the_model() {
    broken("{demo}/intent.onnx", "{demo}/labels.txt").expect_error(&[
        "model 'intent'",
        "labels.txt",
        "ONNX",
    ]);
}

#[test]
fn stage_using_an_undefined_model() {
    broken("models = [\"intent\"]", "models = [\"intnet\"]").expect_error(&[
        "stage 'infer'",
        "'intnet'",
        "[models.intnet]",
        "defined models: intent",
    ]);
}

#[test]
fn stage_input_nobody_produces() {
    broken(
        "inputs = [\"input_ids\", \"attention_mask\"]",
        "inputs = [\"input_ids\", \"attention_masks\"]",
    )
    .expect_error(&[
        "stage 'infer'",
        "'attention_masks'",
        "available:",
        "attention_mask",
    ]);
}

#[test]
fn stage_inputs_that_do_not_match_the_previous_outputs_by_type() {
    // classify wants f32 logits; feed it the tokenizer's i64 ids instead.
    broken(
        "files = { labels = \"{demo}/labels.txt\" }",
        "files = { labels = \"{demo}/labels.txt\" }\ninputs = { logits = \"input_ids\" }",
    )
    .expect_error(&[
        "stage 'classify'",
        "'logits'",
        "f32[batch, 8]",
        "stage 'tokenize'",
        "i64",
        "element type",
    ]);
}

#[test]
fn model_input_left_unconnected() {
    broken(
        "inputs = [\"input_ids\", \"attention_mask\"]\nconfig",
        "inputs = [\"input_ids\"]\nconfig",
    )
    .expect_error(&[
        "stage 'infer'",
        "needs input 'attention_mask'",
        "i64[batch, sequence]",
    ]);
}

#[test]
fn stage_output_it_does_not_declare() {
    broken(
        "outputs = [\"input_ids\", \"attention_mask\"]",
        "outputs = [\"input_ids\", \"attention_mask\", \"embeddings\"]",
    )
    .expect_error(&[
        "stage 'tokenize'",
        "no output 'embeddings'",
        "token_type_ids",
    ]);
}

#[test]
fn duplicate_stage_names() {
    broken("name = \"classify\"", "name = \"tokenize\"")
        .expect_error(&["two stages are named 'tokenize'"]);
}

#[test]
fn missing_component_says_how_to_build_it() {
    broken("{plugins}/infer.wasm", "{plugins}/inference.wasm").expect_error(&[
        "stage 'infer'",
        "inference.wasm",
        "cargo plugins",
    ]);
}

#[test]
fn file_that_is_not_a_component() {
    broken("{plugins}/infer.wasm", "{demo}/intent.onnx")
        .expect_error(&["stage 'infer'", "not a valid component"]);
}

#[test]
fn component_that_is_not_a_stage() {
    let scratch = Scratch::new();
    // A valid component exporting nothing of the stage world.
    let empty = scratch.write("empty.wasm", b"\0asm\x0d\0\x01\0");
    broken("{plugins}/infer.wasm", &empty.display().to_string()).expect_error(&[
        "stage 'infer'",
        "does not implement the outpost:plugin `stage` world",
    ]);
}

#[test]
fn missing_stage_file() {
    broken("{demo}/labels.txt", "{demo}/labels.csv").expect_error(&["labels.csv", "cannot read"]);
}

#[test]
fn stage_rejecting_its_config_names_the_stage_and_key() {
    broken(
        "files = { labels = \"{demo}/labels.txt\" }",
        "files = { labels = \"{demo}/labels.txt\" }\nconfig = { top_k = 0 }",
    )
    .expect_error(&["stage 'classify'", "invalid config", "top_k = 0"]);
    broken(
        "config = { model = \"intent\" }",
        "config = { model = \"intent\", modle = 1 }",
    )
    .expect_error(&["stage 'infer'", "unknown config key 'modle'"]);
    broken("config = { model = \"intent\" }", "config = { model = 7 }")
        .expect_error(&["stage 'infer'", "'model'"]);
}

#[test]
fn model_the_stage_was_not_granted() {
    // The stage asks wasi-nn for "intent" but the pipeline grants it nothing.
    broken("models = [\"intent\"]\n", "").expect_error(&[
        "stage 'infer'",
        "load-by-name",
        "NotFound",
    ]);
}

#[test]
fn pipeline_output_nobody_produces() {
    broken(
        "inputs = [\"text\"]\n",
        "inputs = [\"text\"]\noutputs = [\"label\"]\n",
    )
    .expect_error(&["outputs names 'label'", "available:", "labels"]);
}

#[test]
fn pipeline_without_inputs_or_stages() {
    broken("inputs = [\"text\"]", "inputs = []").expect_error(&["inputs is empty"]);
    inspect("stages = []\n[pipeline]\nname = \"x\"\ninputs = [\"text\"]\n")
        .expect_error(&["no [[stages]]"]);
}

#[test]
fn bad_grants_and_limits_are_named() {
    broken(
        "config = { model = \"intent\" }",
        "config = { model = \"intent\" }\ngrants = { network = [\"localhost\"] }",
    )
    .expect_error(&["stage 'infer' grants network \"localhost\", which is not an ip:port address"]);
    broken(
        "config = { model = \"intent\" }",
        "config = { model = \"intent\" }\ngrants = { files = [] }",
    )
    .expect_error(&[
        "unknown field `files`",
        "`env`, `dirs`, `network`, `clocks`",
    ]);
    broken(
        "config = { model = \"intent\" }",
        "config = { model = \"intent\" }\nlimits = { memory_mib = 4096 }",
    )
    .expect_error(&["limits.memory_mib = 4096, above the host's largest memory of 1024 MiB"]);
    // 2^44 MiB used to wrap around to a limit of 0 bytes when shifted into
    // bytes; it saturates and is refused like any limit past the host's.
    broken(
        "config = { model = \"intent\" }",
        "config = { model = \"intent\" }\nlimits = { memory_mib = 17592186044416 }",
    )
    .expect_error(&["above the host's largest memory of 1024 MiB"]);
}
