//! Stages written in C, Python and JavaScript (`plugins/languages.sh`) on
//! the same WIT as the Rust ones: each language's `classify` answers as the
//! Rust `classify` does, in the demo pipeline and alone on hostile inputs and
//! configs, and every failure is a typed error the host reports.

use outpost_e2e::{Scratch, demo_dir, demo_pipeline_text, host_with_component_cache, plugin};
use outpost_host::{ElementType, EngineOptions, Host, Pipeline, RunError, Tensor};

/// The stage in each language, as `plugins/languages.sh` names it.
const LANGUAGES: [&str; 3] = ["c_classify", "py_classify", "js_classify"];

/// One host for a test, with a component cache kept across runs: the
/// Python and JavaScript components carry their interpreters (12-18 MB), which
/// take seconds to compile.
fn host() -> Host {
    host_with_component_cache(&EngineOptions::default())
}

fn component(name: &str) -> String {
    plugin(name).display().to_string()
}

/// Whether two f32 values are the same up to two units in the last place:
/// wasi-libc's `expf` and the interpreters' `exp` (in double, then rounded)
/// may differ by one, and a softmax's division by their sum by one more.
/// NaN matches NaN, of the same sign where `nan_sign` (a NaN that was
/// computed has whatever sign the engine gives it: Wasm leaves it open, and
/// a JavaScript engine has one NaN; a NaN passed through is data).
fn close(a: f32, b: f32, nan_sign: bool) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan()
            && b.is_nan()
            && (!nan_sign || a.is_sign_negative() == b.is_sign_negative());
    }
    a == b || (i64::from(a.to_bits()) - i64::from(b.to_bits())).abs() <= 2
}

/// The same outputs: names, types, shapes and bytes, f32 values as [`close`].
fn assert_same(what: &str, rust: &[Tensor], other: &[Tensor], nan_sign: bool) {
    assert_eq!(rust.len(), other.len(), "{what}: {rust:?} vs {other:?}");
    for (a, b) in rust.iter().zip(other) {
        assert_eq!(
            (&a.name, &a.dims, a.element_type),
            (&b.name, &b.dims, b.element_type),
            "{what}"
        );
        if a.element_type == ElementType::F32 {
            let values = |t: &Tensor| -> Vec<f32> {
                t.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            };
            let (x, y) = (values(a), values(b));
            assert!(
                x.iter().zip(&y).all(|(p, q)| close(*p, *q, nan_sign)),
                "{what}: tensor '{}': {x:?} vs {y:?}",
                a.name
            );
        } else {
            assert_eq!(
                a.data,
                b.data,
                "{what}: tensor '{}': {:?} vs {:?}",
                a.name,
                String::from_utf8_lossy(&a.data),
                String::from_utf8_lossy(&b.data)
            );
        }
    }
}

/// The same answer: equal outputs, or the same error (the pipelines differ
/// only in their component, so the host's own errors read the same too).
fn assert_same_answer(
    what: &str,
    rust: Result<Vec<Tensor>, RunError>,
    other: Result<Vec<Tensor>, RunError>,
    nan_sign: bool,
) {
    match (rust, other) {
        (Ok(a), Ok(b)) => assert_same(what, &a, &b, nan_sign),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{what}"),
        (a, b) => panic!("{what}: the Rust stage answered {a:?}, the other {b:?}"),
    }
}

#[test]
fn stages_in_c_python_and_javascript_answer_as_the_rust_stage_in_the_demo() {
    let scratch = Scratch::new();
    let host = host();
    scratch.write(
        "labels.txt",
        std::fs::read(demo_dir().join("labels.txt")).unwrap(),
    );
    let demo = demo_pipeline_text();
    let rust = host
        .load_pipeline(&scratch.write("rust.toml", &demo))
        .unwrap();
    let texts = [
        "stop the conveyor",
        "take off",
        "land now please",
        "",
        "Émile says: STOP 🚀 漢字 the line!!",
    ];
    for lang in LANGUAGES {
        let text = demo.replace(&plugin("classify").display().to_string(), &component(lang));
        assert_ne!(text, demo, "the demo's classify stage was not replaced");
        let pipeline = host
            .load_pipeline(&scratch.write(&format!("{lang}.toml"), &text))
            .unwrap_or_else(|e| panic!("{lang}: {e}"));
        for input in texts {
            let run = |p: &Pipeline| p.run(vec![Tensor::text("text", input)]);
            let (a, b) = (run(&rust).unwrap(), run(&pipeline).unwrap());
            assert_same(&format!("{lang} on {input:?}"), &a, &b, false);
        }
    }
}

/// A pipeline of the stage alone, taking `logits` straight from the request.
fn classify_alone(component: &str, config: &str) -> String {
    format!(
        "[pipeline]\nname = \"classify-alone\"\ninputs = [\"logits\"]\noutputs = [\"scores\", \"indices\", \"labels\"]\n\
         [[stages]]\nname = \"classify\"\ncomponent = \"{component}\"\ninputs = [\"logits\"]\nconfig = {{ {config} }}\n"
    )
}

fn logits(dims: Vec<u32>, values: &[f32]) -> Tensor {
    Tensor {
        name: "logits".into(),
        dims,
        element_type: ElementType::F32,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

#[test]
fn every_language_gives_the_rust_stages_answer_to_hostile_inputs() {
    let scratch = Scratch::new();
    let host = host();
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let inputs: Vec<(&str, Tensor)> = vec![
        (
            "a batch of 3",
            logits(
                vec![3, 4],
                &[
                    0.5, -1.0, 2.0, 0.1, 3.0, 3.0, -2.0, 0.0, -7.5, 1e-3, 1e-3, 8.0,
                ],
            ),
        ),
        (
            "ties keep the lower index first",
            logits(vec![1, 4], &[1.0; 4]),
        ),
        ("a NaN", logits(vec![1, 4], &[nan, 1.0, 2.0, 3.0])),
        // x86's default NaN (0/0) has its sign bit set: Rust's total order
        // puts it below -inf, which a JavaScript engine's one NaN would not.
        (
            "a negative NaN",
            logits(vec![1, 4], &[1.0, f32::from_bits(0xFFC0_0000), 2.0, -inf]),
        ),
        (
            "infinities",
            logits(vec![2, 4], &[inf, 1.0, 2.0, 3.0, -inf, -inf, -inf, -inf]),
        ),
        ("huge values", logits(vec![1, 4], &[1e30, -1e30, 0.0, 5.0])),
        ("an empty batch", logits(vec![0, 4], &[])),
        (
            "the wrong class count",
            logits(vec![1, 3], &[1.0, 2.0, 3.0]),
        ),
        ("the wrong rank", logits(vec![4], &[1.0, 2.0, 3.0, 4.0])),
        ("bytes that do not fill the shape", {
            let mut t = logits(vec![2, 4], &[1.0; 8]);
            t.data.truncate(30);
            t
        }),
        (
            "the wrong type",
            Tensor {
                name: "logits".into(),
                dims: vec![1, 4],
                element_type: ElementType::I64,
                data: vec![0; 32],
            },
        ),
        ("text", Tensor::text("logits", "1 2 3 4")),
    ];
    let configs = [
        "labels = [\"a\", \"b\", \"c\", \"d\"], top_k = 2",
        "labels = [\"a\", \"b\", \"c\", \"d\"], top_k = 4, softmax = false",
    ];
    for config in configs {
        let rust = host
            .load_pipeline(&scratch.write(
                "rust.toml",
                classify_alone(&plugin("classify").display().to_string(), config),
            ))
            .unwrap();
        for lang in LANGUAGES {
            let path = scratch.write(
                &format!("{lang}.toml"),
                classify_alone(&component(lang), config),
            );
            let pipeline = host
                .load_pipeline(&path)
                .unwrap_or_else(|e| panic!("{lang}: {e}"));
            for (what, input) in &inputs {
                let what = format!("{lang}, {config}: {what}");
                // Without softmax, scores are the inputs' own values.
                let passed_through = config.contains("softmax = false");
                assert_same_answer(
                    &what,
                    rust.run(vec![input.clone()]),
                    pipeline.run(vec![input.clone()]),
                    passed_through,
                );
            }
        }
    }
}

#[test]
fn every_language_refuses_the_configs_the_rust_stage_refuses_with_the_same_words() {
    let scratch = Scratch::new();
    let host = host();
    scratch.write("labels", "x\n  y  \n\nz\n");
    scratch.write("not-utf8", [0x66, 0x6f, 0xff, 0x0a]);
    let configs = [
        // Accepted: labels from a file, blank lines and spaces dropped.
        ("a labels file", "top_k = 3", "labels = \"labels\""),
        ("no labels", "top_k = 1", ""),
        ("an empty list", "labels = []", ""),
        ("labels that are not strings", "labels = [1, 2]", ""),
        ("labels twice", "labels = [\"a\"]", "labels = \"labels\""),
        ("a file that is not UTF-8", "", "labels = \"not-utf8\""),
        ("top_k of 0", "labels = [\"a\", \"b\"], top_k = 0", ""),
        (
            "top_k past the labels",
            "labels = [\"a\", \"b\"], top_k = 3",
            "",
        ),
        (
            "top_k as text",
            "labels = [\"a\", \"b\"], top_k = \"2\"",
            "",
        ),
        (
            "softmax as a number",
            "labels = [\"a\", \"b\"], softmax = 1",
            "",
        ),
        ("an unknown key", "labels = [\"a\"], temperature = 2.0", ""),
    ];
    let load = |component: &str, name: &str, config: &str, files: &str| {
        let mut toml = classify_alone(component, config);
        if !files.is_empty() {
            toml.push_str(&format!("files = {{ {files} }}\n"));
        }
        host.load_pipeline(&scratch.write(&format!("{name}.toml"), toml))
            .map(|p| {
                p.run(vec![logits(vec![1, 3], &[3.0, 1.0, 2.0])])
                    .map(|out| String::from_utf8_lossy(&out[2].data).into_owned())
            })
            .map_err(|e| {
                // The file names differ; what follows them must not.
                let text = e.to_string();
                text[text.find(".toml").unwrap_or(0)..].to_owned()
            })
    };
    for (what, config, files) in configs {
        let rust = load(
            &plugin("classify").display().to_string(),
            "rust",
            config,
            files,
        );
        for lang in LANGUAGES {
            let other = load(&component(lang), lang, config, files);
            match (&rust, &other) {
                (Ok(Ok(a)), Ok(Ok(b))) => assert_eq!(a, b, "{lang}: {what}"),
                (Err(a), Err(b)) => assert!(
                    a.contains("invalid config") && (a == b || gist(a) == gist(b)),
                    "{lang}: {what}:\n  Rust: {a}\n  {lang}: {b}"
                ),
                (a, b) => panic!("{lang}: {what}: the Rust stage answered {a:?}, {lang} {b:?}"),
            }
        }
    }
}

/// What a config error is about: its message up to where each language's
/// own words begin (a JSON reader's, a UTF-8 decoder's), e.g. "config key
/// 'top_k'" or "file 'labels' is not UTF-8".
fn gist(error: &str) -> &str {
    let message = error
        .split_once("invalid config: ")
        .map_or(error, |(_, m)| m);
    [": ", " = ", " must be "]
        .iter()
        .filter_map(|cut| message.find(cut))
        .min()
        .map_or(message, |end| &message[..end])
}

#[test]
fn python_and_javascript_stages_run_a_model_through_their_sdks() {
    let scratch = Scratch::new();
    let host = host();
    let model = demo_dir().join("intent.onnx").display().to_string();
    // The Rust `infer` stage on the same ids is the reference.
    let rust = host
        .load_pipeline(&scratch.write(
            "rust.toml",
            format!(
                "[pipeline]\nname = \"infer\"\ninputs = [\"input_ids\", \"attention_mask\"]\n[models.intent]\npath = \"{model}\"\n\
                 [[stages]]\nname = \"infer\"\ncomponent = \"{}\"\nmodels = [\"intent\"]\nconfig = {{ model = \"intent\" }}\n",
                plugin("infer").display()
            ),
        ))
        .unwrap();
    let ids = |name: &str, values: [i64; 3]| Tensor {
        name: name.into(),
        dims: vec![1, 3],
        element_type: ElementType::I64,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    let expected = rust
        .run(vec![
            ids("input_ids", [2, 5, 7]),
            ids("attention_mask", [1, 1, 1]),
        ])
        .unwrap();
    for name in ["py_hostile", "js_hostile"] {
        let pipeline = host
            .load_pipeline(&scratch.write(
                &format!("{name}.toml"),
                format!(
                    "[pipeline]\nname = \"infer\"\ninputs = [\"x\"]\n[models.intent]\npath = \"{model}\"\n\
                     [[stages]]\nname = \"infer\"\ncomponent = \"{}\"\nmodels = [\"intent\"]\nconfig = {{ attack = \"infer\" }}\n",
                    component(name)
                ),
            ))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = pipeline.run(vec![Tensor::text("x", "go")]).unwrap();
        assert_eq!(out.len(), 1, "{name}: {out:?}");
        assert_eq!(
            (&out[0].dims, out[0].element_type, &out[0].data),
            (
                &expected[0].dims,
                expected[0].element_type,
                &expected[0].data
            ),
            "{name}: the model's output through the SDK"
        );
    }
}
