//! The demo pipeline, as the README runs it.

use outpost_e2e::{outpost, tensor_values};

#[test]
fn demo_classifies_device_commands() {
    let cases = [
        ("stop the conveyor", "stop_conveyor"),
        ("fly to the red building", "fly_to"),
        ("please take a picture of the gate", "take_photo"),
        ("how much battery is left?", "status_report"),
        ("Return HOME now!", "return_home"),
    ];
    let mut args = vec![
        "run".to_owned(),
        "--insecure-unsigned".to_owned(),
        "host/pipelines/demo/intent.toml".to_owned(),
    ];
    for (text, _) in &cases {
        args.push("--input".into());
        args.push((*text).to_owned());
    }
    let run = outpost(&args);
    assert!(run.ok, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["pipeline"], "intent-demo");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), cases.len());
    for ((text, expected), result) in cases.iter().zip(results) {
        assert_eq!(result["input"], *text);
        let labels = result["outputs"]["labels"].as_str().unwrap();
        assert_eq!(
            labels.split('\t').next(),
            Some(*expected),
            "{text}: {labels}"
        );
        let scores = tensor_values(&result["outputs"]["scores"]);
        assert_eq!(scores.len(), 3);
        assert!(
            scores[0] > 0.5 && scores.windows(2).all(|w| w[0] >= w[1]),
            "{scores:?}"
        );
    }
}

#[test]
fn inspect_shows_stages_models_and_shapes() {
    let run = outpost(&[
        "inspect",
        "--insecure-unsigned",
        "host/pipelines/demo/intent.toml",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let info = run.json();
    let stages: Vec<&str> = info["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["tokenize", "infer", "classify"]);
    assert_eq!(info["models"][0]["name"], "intent");
    let model = std::fs::read(outpost_e2e::demo_dir().join("intent.onnx")).unwrap();
    assert_eq!(
        info["models"][0]["digest"],
        outpost_signing::Digest::of(&model).to_string()
    );
    assert!(
        info["stages"][0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert_eq!(
        info["models"][0]["inputs"][0]["shape"],
        "i64[batch, sequence]"
    );
    assert_eq!(info["models"][0]["outputs"][0]["shape"], "f32[batch, 8]");
    assert_eq!(info["stages"][0]["plugin"]["name"], "bert-tokenizer");
    assert_eq!(info["inputs"][0]["shape"], "utf8[bytes]");
}

#[test]
fn help_explains_the_commands() {
    let run = outpost(&["--help"]);
    assert!(run.ok);
    for command in ["run", "inspect", "exec"] {
        assert!(run.stdout.contains(command), "{}", run.stdout);
    }
    let run = outpost(&["run", "--help"]);
    assert!(
        run.stdout.contains("--input") && run.stdout.contains("Example"),
        "{}",
        run.stdout
    );
}

/// `outpost run` of the demo on one input, its output not yet directed.
fn demo_run() -> std::process::Command {
    let mut command = std::process::Command::new(outpost_e2e::outpost_bin());
    command
        .args([
            "run",
            "--insecure-unsigned",
            "host/pipelines/demo/intent.toml",
        ])
        .args(["--input", "stop the conveyor"])
        .current_dir(outpost_e2e::repo());
    command
}

/// `outpost run ... | grep -q label` closes the pipe once it has seen the
/// label; the run's work is done, so that is a quiet success, not a panic.
/// Here the reader is gone before the first byte is written.
#[test]
fn output_into_a_closed_pipe_is_a_quiet_success() {
    let mut child = demo_run()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Output that cannot be written for another reason (a full disk) is an
/// error that says so.
#[test]
fn output_to_a_full_device_is_an_error_naming_stdout() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = demo_run().stdout(full).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("writing the output to stdout") && stderr.contains("No space left"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
