//! Text generation served: `outpost serve` with the signed SmolLM2 chat
//! pipeline, driven by the real `openai` Python client (chat and text
//! completions, streamed as server-sent events and whole), by raw HTTP for
//! KServe's `generate` / `generate_stream`, and by clients that go away or
//! a generation that stalls.

use crate::bundles::Publisher;
use crate::generate::smollm2_pipeline;
use crate::serve::{Server, config_file, hostile_bundle, http};
use outpost_e2e::{Scratch, onnxruntime_lib, python, repo};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository's chat pipeline, its paths made absolute, with `edit`
/// applied to its text, as a signed bundle.
fn chat_bundle(p: &Publisher, edit: &[(&str, &str)]) -> PathBuf {
    let mut toml = smollm2_pipeline("smollm2-chat.toml", "model.onnx");
    for (from, to) in edit {
        assert!(toml.contains(from), "the chat pipeline has no {from:?}");
        toml = toml.replace(from, to);
    }
    let path = p.path("smollm2-chat.toml");
    std::fs::write(&path, toml).unwrap();
    p.bundle(&path, "smollm2-chat", 1, "chat.bundle", &["a", "b"])
}

/// `outpost serve` of `bundle` on ONNX Runtime (fast enough for tests),
/// with `config` as its configuration file.
fn serve(p: &Publisher, bundle: &Path, config: &str) -> Server {
    let config = config_file(p, "outpost.toml", config);
    let mut args = vec![bundle.display().to_string()];
    args.extend(p.trust_args(&["root1.json"]));
    args.extend([
        "--config".into(),
        config.display().to_string(),
        "--backend".into(),
        "onnxruntime".into(),
        "--onnxruntime-lib".into(),
        onnxruntime_lib().display().to_string(),
    ]);
    Server::start(&args)
}

/// Runs `tests/serve/openai_client.py` (the real `openai` client), which
/// does not retry.
fn openai(server: &Server, requests: &Value) -> Value {
    openai_retrying(server, requests, 0)
}

/// Runs the `openai` client, letting it retry as often as `retries`.
fn openai_retrying(server: &Server, requests: &Value, retries: u32) -> Value {
    let scratch = Scratch::new();
    let file = scratch.write("requests.json", requests.to_string());
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/serve/openai_client.py"))
        .args(["--base-url", &format!("http://{}/v1", server.http)])
        .args(["--max-retries", &retries.to_string()])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openai client failed:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A raw `POST /v1/chat/completions` of `body`.
fn chat_post(server: &Server, body: &Value) -> crate::serve::Reply {
    http(
        &server.http,
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    )
}

fn question(q: &str) -> Value {
    json!([{ "role": "user", "content": q }])
}

const FRANCE: &str = "What is the capital of France?";

#[test]
fn the_openai_client_streams_a_chat_completion_and_gets_the_same_text_whole() {
    let p = Publisher::new();
    let bundle = chat_bundle(&p, &[]);
    let server = serve(&p, &bundle, "");
    let chat = |extra: Value| {
        let mut args =
            json!({ "model": "smollm2-chat", "messages": question(FRANCE), "max_tokens": 32 });
        for (k, v) in extra.as_object().unwrap() {
            args[k] = v.clone();
        }
        json!({ "call": "chat", "args": args })
    };
    let out = openai(
        &server,
        &json!([
            chat(json!({ "stream": true, "stream_options": { "include_usage": true } })),
            chat(json!({})),
            chat(json!({ "stream": true, "stop": ["Paris"] })),
            chat(json!({ "max_tokens": 3 })),
            chat(json!({ "n": 2 })),
            chat(json!({ "max_tokens": 100000 })),
            chat(json!({ "model": "nope" })),
            { "call": "completions", "args": { "model": "smollm2-chat", "prompt": "Hi" } },
            chat(json!({ "messages": [{ "role": "tool", "content": "x" }] })),
            chat(json!({ "messages": [{ "role": "tool", "content": "x" }], "stream": true })),
        ]),
    );
    assert_eq!(out["models"], json!(["smollm2-chat"]));
    let results = out["results"].as_array().unwrap();
    let (streamed, whole) = (&results[0], &results[1]);
    // Streamed token by token: many chunks, joined the whole answer.
    let chunks: Vec<&str> = streamed["chunks"]
        .as_array()
        .unwrap_or_else(|| panic!("{streamed}"))
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(chunks.len() > 3, "{streamed}");
    let text = chunks.concat();
    assert_eq!(text, whole["content"].as_str().unwrap(), "{whole}");
    assert!(text.contains("Paris"), "{text}");
    assert_eq!(streamed["finish_reason"], "stop");
    assert_eq!(whole["finish_reason"], "stop");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(
        streamed["ids"].as_array().unwrap().len(),
        1,
        "one id per stream"
    );
    // Usage counts the template's tokens and the reply's (the end of turn
    // not included).
    assert_eq!(streamed["usage"], whole["usage"]);
    let usage = &whole["usage"];
    assert_eq!(usage["prompt_tokens"], 37, "{usage}");
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((3..32).contains(&completion), "{usage}");
    // A stop string ends the text before it, and is never streamed.
    let stopped = &results[2];
    let before: String = stopped["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(before, text[..text.find("Paris").unwrap()], "{stopped}");
    assert_eq!(stopped["finish_reason"], "stop");
    // max_tokens cuts the reply: the first three tokens' text.
    let short = &results[3];
    assert_eq!(short["finish_reason"], "length", "{short}");
    assert_eq!(short["usage"]["completion_tokens"], 3);
    assert!(
        text.starts_with(short["content"].as_str().unwrap()),
        "{short}"
    );
    // Refused, each with a clear message and the right status.
    let refused = |i: usize, status: u64, words: &[&str]| {
        let r = &results[i];
        assert_eq!(r["status"], status, "{r}");
        let e = r["error"].as_str().unwrap();
        for w in words {
            assert!(e.contains(w), "{w:?} not in {e}");
        }
    };
    refused(4, 400, &["'n'", "not supported"]);
    refused(5, 400, &["max_tokens = 100000", "max_new_tokens = 256"]);
    refused(6, 404, &["unknown model 'nope'", "smollm2-chat"]);
    refused(
        7,
        400,
        &["/v1/completions", "'text'", "messages, parameters"],
    );
    refused(
        8,
        400,
        &["messages[0]", "\"tool\"", "system, user, assistant"],
    );
    // Streamed, a request refused before its first token still gets its
    // own status, not a stream that opens with an error.
    refused(9, 400, &["messages[0]", "\"tool\""]);
    // And the server carries on.
    let again = openai(&server, &json!([chat(json!({ "max_tokens": 3 }))]));
    assert_eq!(again["results"][0]["content"], short["content"]);
}

/// The events of a server-sent events body (`data: ...` lines), with the
/// chunked transfer encoding taken off.
fn events(body: &[u8]) -> Vec<String> {
    let mut plain = Vec::new();
    let mut rest = body;
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(rest)));
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        plain.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
    String::from_utf8(plain)
        .unwrap()
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

#[test]
fn kserve_generate_and_generate_stream_give_the_same_tokens() {
    let p = Publisher::new();
    let bundle = chat_bundle(&p, &[]);
    let server = serve(&p, &bundle, "");
    let request = json!({
        "id": "r1",
        "messages": question(FRANCE),
        "parameters": { "max_tokens": 6 },
    });
    let whole = http(
        &server.http,
        "POST",
        "/v2/models/smollm2-chat/generate",
        &[("content-type", "application/json")],
        request.to_string().as_bytes(),
    );
    assert_eq!(
        whole.status,
        200,
        "{}",
        String::from_utf8_lossy(&whole.body)
    );
    let whole = whole.json();
    assert_eq!(whole["model_name"], "smollm2-chat");
    assert_eq!(whole["id"], "r1");
    assert_eq!(whole["finish_reason"], "length");
    let tokens = whole["token_ids"].as_array().unwrap().clone();
    assert_eq!(tokens.len(), 6, "{whole}");
    assert_eq!(whole["input_ids"].as_array().unwrap().len(), 37);
    let stream = http(
        &server.http,
        "POST",
        "/v2/models/smollm2-chat/generate_stream",
        &[("content-type", "application/json")],
        request.to_string().as_bytes(),
    );
    assert_eq!(stream.status, 200);
    let events: Vec<Value> = events(&stream.body)
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // One event per token, then one with what did not stream.
    let (last, partials) = events.split_last().unwrap();
    assert_eq!(partials.len(), 6, "{events:?}");
    let streamed: Vec<Value> = partials.iter().map(|e| e["token_ids"][0].clone()).collect();
    assert_eq!(streamed, tokens);
    let text: String = partials
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, whole["text"].as_str().unwrap());
    assert_eq!(last["finish_reason"], "length");
    assert_eq!(last["input_ids"], whole["input_ids"]);
    assert!(last.get("text").is_none(), "{last}");
    // A field that is no input is refused, naming the inputs.
    let bad = http(
        &server.http,
        "POST",
        "/v2/models/smollm2-chat/generate",
        &[],
        br#"{"text_input": "hi"}"#,
    );
    assert_eq!(bad.status, 400);
    let e = bad.json()["error"].as_str().unwrap().to_owned();
    assert!(
        e.contains("no input 'text_input'") && e.contains("messages, parameters"),
        "{e}"
    );
}

/// A streamed chat request for a reply that would run to the end of the
/// context (no stop tokens, 2000 tokens allowed).
fn endless(server: &Server) -> TcpStream {
    let body = json!({
        "model": "smollm2-chat",
        "messages": question("Count from one to ten thousand, in words."),
        "stream": true,
    })
    .to_string();
    let mut stream = TcpStream::connect(&server.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
}

#[test]
fn a_client_that_goes_away_stops_its_generation() {
    let p = Publisher::new();
    let bundle = chat_bundle(
        &p,
        &[(
            "max_new_tokens = 256, stop = [0, 2]",
            "max_new_tokens = 2000, stop = []",
        )],
    );
    // One request at a time and one waiting: a third request is refused
    // (503) for as long as the first one runs and the second waits.
    let server = serve(&p, &bundle, "[requests]\nconcurrency = 1\nqueue = 1\n");
    let mut client = endless(&server);
    // Tokens arrive...
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while seen.windows(7).filter(|w| w == b"content").count() < 3 {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // A second client waits for the slot, then goes away before it runs:
    // it gives up its place, and is counted as cancelled at once.
    let waiting = endless(&server);
    std::thread::sleep(Duration::from_millis(500));
    let hi = json!({ "model": "smollm2-chat", "messages": question("Hi"), "max_tokens": 1 });
    let busy = chat_post(&server, &hi);
    assert_eq!(busy.status, 503, "the first generation should still run");
    drop(waiting);
    let left = Instant::now();
    loop {
        let metrics = http(&server.http, "GET", "/metrics", &[], b"");
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        if text.contains("kind=\"cancelled\"") {
            break;
        }
        assert!(
            left.elapsed() < Duration::from_secs(10),
            "the waiting request was not cancelled:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // ...then the first client goes away, and the generation stops (about
    // 2000 tokens were left, half a minute and more): the next request is
    // served as soon as its slot is free.
    drop(client);
    let gone = Instant::now();
    loop {
        let next = chat_post(&server, &hi);
        if next.status == 200 {
            break;
        }
        assert_eq!(next.status, 503, "{}", String::from_utf8_lossy(&next.body));
        assert!(
            gone.elapsed() < Duration::from_secs(15),
            "the generation went on after its client left:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_generation_stalled_between_tokens_meets_the_token_deadline() {
    let p = Publisher::new();
    let bundle = chat_bundle(&p, &[]);
    // Each token takes tens of milliseconds: 1 ms between tokens is a stall.
    let server = serve(&p, &bundle, "[requests]\ntoken_deadline_ms = 1\n");
    let request =
        json!({ "model": "smollm2-chat", "messages": question(FRANCE), "max_tokens": 16 });
    // The openai client retries a 5xx twice by default; a deadline would
    // only be met again, so the server tells it not to: one request, one
    // failure.
    let out = openai_retrying(
        &server,
        &json!([{ "call": "chat", "args": request.clone() }]),
        2,
    );
    assert_eq!(out["results"][0]["status"], 504, "{out}");
    let metrics = http(&server.http, "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("outpost_request_failures") && l.contains("TokenDeadline"))
        .collect();
    assert_eq!(failures.len(), 1, "{text}");
    assert!(failures[0].ends_with(" 1"), "retried: {failures:?}");
    let whole = chat_post(&server, &request);
    assert_eq!(
        whole.status,
        504,
        "{}",
        String::from_utf8_lossy(&whole.body)
    );
    let e = whole.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        e.contains("token deadline of 1 ms") && e.contains("stage 'generate'"),
        "{e}"
    );
    assert_eq!(whole.json()["error"]["type"], "timeout_error");
    assert!(whole.head.contains("x-should-retry: false"), "{whole:?}");
    // Streamed: the first token left (so the stream had begun), then the
    // error, as an event.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let reply = chat_post(&server, &streamed);
    assert_eq!(reply.status, 200);
    let events = events(&reply.body);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("token deadline"),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    // The server is still up and answers.
    let ready = http(&server.http, "GET", "/v2/health/ready", &[], b"");
    assert_eq!(ready.status, 200);
}

#[test]
fn a_stage_cannot_shape_a_generate_stream_with_the_names_it_emits() {
    let p = Publisher::new();
    // The stage emits `model_name` again and again, a name the pipeline
    // does not declare and a generate reply uses for the model's name.
    let bundle = hostile_bundle(
        &p,
        "emitter",
        "attack = \"emit-as\", name = \"model_name\"",
        "",
    );
    let mut args = vec![bundle.display().to_string()];
    args.extend(p.trust_args(&["root1.json"]));
    let server = Server::start(&args);
    for _ in 0..2 {
        let reply = http(
            &server.http,
            "POST",
            "/v2/models/emitter/generate_stream",
            &[],
            json!({ "x": "go" }).to_string().as_bytes(),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
        // One event, an error, and the stream ends there.
        let events = events(&reply.body);
        assert_eq!(events.len(), 1, "{events:?}");
        let event: Value = serde_json::from_str(&events[0]).unwrap();
        let e = event["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("a stage emitted an output named 'model_name'"),
            "{event}"
        );
        assert!(event.get("model_name").is_none(), "{event}");
    }
    // The stage saw nobody listening and stopped: the server still answers.
    let ready = http(&server.http, "GET", "/v2/health/ready", &[], b"");
    assert_eq!(ready.status, 200);
}
