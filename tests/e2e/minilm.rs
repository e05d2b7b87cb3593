//! The real pipeline: MiniLM sentence embeddings through tokenizer -> infer ->
//! mean-pool match ONNX Runtime's, and the tokenizer matches Hugging Face's.

use outpost_e2e::{Scratch, cosine, fetched, outpost, reference, repo, tensor_values};
use serde_json::json;

/// Sentences the MiniLM tests embed: paraphrases, unrelated ones, non-ASCII.
pub(crate) const SENTENCES: [&str; 8] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "Le café coûte 3,50 € — naïve résumé!",
];

fn embed_with_outpost(pipeline: &str, sentences: &[&str]) -> Vec<Vec<f64>> {
    let path = repo().join("host/pipelines/minilm").join(pipeline);
    let mut args = vec![
        "run".to_owned(),
        "--insecure-unsigned".to_owned(),
        path.display().to_string(),
    ];
    for s in sentences {
        args.push("--input".into());
        args.push((*s).to_owned());
    }
    let run = outpost(&args);
    assert!(run.ok, "{}", run.stderr);
    run.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let t = &r["outputs"]["sentence_embedding"];
            assert_eq!(t["dims"], json!([1, 384]));
            tensor_values(t)
        })
        .collect()
}

fn embed_with_onnxruntime(model: &str, output: &str, sentences: &[&str]) -> Vec<Vec<f64>> {
    let model = fetched(model);
    let tokenizer = fetched("tokenizer.json");
    let out = reference(
        &[
            "embed",
            model.to_str().unwrap(),
            tokenizer.to_str().unwrap(),
            output,
        ],
        &json!(sentences),
    );
    serde_json::from_value(out).unwrap()
}

fn check_against_onnxruntime(pipeline: &str, model: &str, output: &str) {
    let ours = embed_with_outpost(pipeline, &SENTENCES);
    let theirs = embed_with_onnxruntime(model, output, &SENTENCES);
    for ((sentence, a), b) in SENTENCES.iter().zip(&ours).zip(&theirs) {
        let c = cosine(a, b);
        assert!(
            c >= 0.9999,
            "{pipeline}: {sentence:?}: cosine {c} with ONNX Runtime"
        );
    }
    // Paraphrases are closer than unrelated sentences.
    let same = cosine(&ours[0], &ours[1]);
    for unrelated in [2, 4, 5, 6] {
        let other = cosine(&ours[0], &ours[unrelated]);
        assert!(
            same > other,
            "{pipeline}: paraphrase {same} <= unrelated {other} ({})",
            SENTENCES[unrelated]
        );
    }
}

#[test]
fn minilm_l3_matches_onnxruntime() {
    check_against_onnxruntime("minilm-l3.toml", "minilm-l3.onnx", "onnx::Shape_422");
}

#[test]
fn minilm_l6_int8_matches_onnxruntime() {
    check_against_onnxruntime(
        "minilm-l6-int8.toml",
        "minilm-l6-int8.onnx",
        "last_hidden_state",
    );
}

/// Padded to 128 tokens and run on a plan specialised to that shape.
#[test]
fn minilm_l6_int8_on_a_shape_specialised_plan_matches_onnxruntime() {
    check_against_onnxruntime(
        "minilm-l6-int8-fixed.toml",
        "minilm-l6-int8.onnx",
        "last_hidden_state",
    );
}

#[test]
fn tokenizer_matches_hugging_face() {
    let tokenizer = fetched("tokenizer.json");
    let sentences = [
        "Hello, world!",
        "Outpost's tokenizer: WordPiece (uncased).",
        "Ünïcödé àccents get stripped; 東京 splits per character.",
        "unaffable hyperparameterization",
        "tabs\tand  spaces\r\u{0007}bell",
        "",
    ];
    let scratch = Scratch::new();
    let pipeline = scratch.pipeline(&format!(
        r#"
[pipeline]
name = "tokens"
inputs = ["text"]
outputs = ["input_ids"]
[[stages]]
name = "tokenize"
component = "{{plugins}}/bert_tokenizer.wasm"
files = {{ tokenizer = "{}" }}
"#,
        tokenizer.display()
    ));
    let expected = reference(
        &["tokenize", tokenizer.to_str().unwrap()],
        &json!(sentences),
    );
    for (sentence, expected) in sentences.iter().zip(expected.as_array().unwrap()) {
        // Newlines would separate batch rows, so the text goes in as JSON.
        let input = scratch.write("text.json", json!({ "text": sentence }).to_string());
        let run = outpost(&[
            "run".as_ref(),
            "--insecure-unsigned".as_ref(),
            pipeline.as_os_str(),
            "-f".as_ref(),
            input.as_os_str(),
        ]);
        assert!(run.ok, "{}", run.stderr);
        let ids = &run.json()["results"][0]["outputs"]["input_ids"]["data"];
        let ids: Vec<i64> = serde_json::from_value(ids.clone()).unwrap();
        let expected: Vec<i64> = serde_json::from_value(expected.clone()).unwrap();
        assert_eq!(ids, expected, "{sentence:?}");
    }
}

#[test]
fn a_batch_of_lines_embeds_each_line() {
    let scratch = Scratch::new();
    let input = scratch.write(
        "batch.txt",
        "A man is eating food.\nA monkey is playing drums.\n",
    );
    let path = repo().join("host/pipelines/minilm/minilm-l3.toml");
    let run = outpost(&[
        "run".as_ref(),
        "--insecure-unsigned".as_ref(),
        path.as_os_str(),
        "-f".as_ref(),
        input.as_os_str(),
    ]);
    assert!(run.ok, "{}", run.stderr);
    let t = &run.json()["results"][0]["outputs"]["sentence_embedding"];
    assert_eq!(t["dims"], json!([2, 384]));
    let values = tensor_values(t);
    let single = embed_with_outpost("minilm-l3.toml", &["A monkey is playing drums."]);
    let c = cosine(&values[384..], &single[0]);
    assert!(c > 0.9999, "batched row differs from single: cosine {c}");
}

#[test]
fn minilm_runs_from_a_signed_bundle() {
    let scratch = Scratch::new();
    let key = scratch.path().join("publisher.key");
    assert!(outpost(&["keygen".as_ref(), "--out".as_ref(), key.as_os_str()]).ok);
    let root = scratch.path().join("root.json");
    let public = scratch.path().join("publisher.key.pub");
    let run = outpost(&[
        "root".as_ref(),
        "--key".as_ref(),
        public.as_os_str(),
        "--threshold".as_ref(),
        "1".as_ref(),
        "--expires".as_ref(),
        "2099-01-01T00:00:00Z".as_ref(),
        "--sign".as_ref(),
        key.as_os_str(),
        "--out".as_ref(),
        root.as_os_str(),
    ]);
    assert!(run.ok, "{}", run.stderr);
    let bundle = scratch.path().join("minilm");
    let pipeline = repo().join("host/pipelines/minilm/minilm-l3.toml");
    let run = outpost(&[
        "bundle".as_ref(),
        pipeline.as_os_str(),
        "--name".as_ref(),
        "minilm-l3".as_ref(),
        "--version".as_ref(),
        "1".as_ref(),
        "--out".as_ref(),
        bundle.as_os_str(),
    ]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        outpost(&[
            "sign".as_ref(),
            bundle.as_os_str(),
            "--key".as_ref(),
            key.as_os_str()
        ])
        .ok
    );
    let state = scratch.path().join("state");
    let run = outpost(&[
        "run".as_ref(),
        bundle.as_os_str(),
        "--trust".as_ref(),
        root.as_os_str(),
        "--state-dir".as_ref(),
        state.as_os_str(),
        "-i".as_ref(),
        SENTENCES[0].as_ref(),
    ]);
    assert!(run.ok, "{}", run.stderr);
    let signed = tensor_values(&run.json()["results"][0]["outputs"]["sentence_embedding"]);
    let unsigned = embed_with_outpost("minilm-l3.toml", &SENTENCES[..1]);
    assert_eq!(signed, unsigned[0]);
}

#[test]
fn time_inside_the_model_does_not_count_against_the_stage() {
    // The int8 model takes tens of milliseconds a call on this kind of
    // machine; the infer stage's own deadline is one millisecond.
    let scratch = Scratch::new();
    let text =
        std::fs::read_to_string(repo().join("host/pipelines/minilm/minilm-l6-int8.toml")).unwrap();
    let dir = repo().join("host/pipelines/minilm");
    let text = text
        .replace("\"fetched/", &format!("\"{}/fetched/", dir.display()))
        .replace("\"../../../target/wasm32-wasip2/plugin", "\"{plugins}")
        .replace(
            "config = { model = \"minilm\" }",
            "config = { model = \"minilm\" }\nlimits = { timeout_ms = 1 }",
        );
    let pipeline = scratch.pipeline(&text);
    let long = "The quick brown fox jumps over the lazy dog near the riverbank at dawn. ".repeat(6);
    let run = outpost(&[
        "run".as_ref(),
        "--insecure-unsigned".as_ref(),
        pipeline.as_os_str(),
        "-i".as_ref(),
        long.as_ref(),
    ]);
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(
        run.json()["results"][0]["outputs"]["sentence_embedding"]["dims"],
        json!([1, 384])
    );
}
