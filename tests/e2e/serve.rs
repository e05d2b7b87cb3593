//! `outpost serve`: the real server process on loopback, driven by the real
//! `tritonclient` (HTTP with binary data, HTTP JSON-only, gRPC) and by raw
//! HTTP for the requests no polite client sends.

use crate::bundles::Publisher;
use outpost_e2e::{outpost, plugin, python, repo};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A running `outpost serve`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) http: String,
    grpc: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `outpost serve ARGS` on ephemeral loopback ports and waits
    /// until it listens, or returns its log if it exits first.
    pub(crate) fn try_start(args: &[String]) -> Result<Server, String> {
        let mut command = Command::new(outpost_e2e::outpost_bin());
        command.arg("serve");
        if !args.iter().any(|a| a == "--listen") {
            command.args(["--listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .args(args)
            .current_dir(repo())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening") {
                    let field = |key: &str| {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix(key))
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let _ = tx.send((field("http="), field("grpc=")));
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok((http, grpc)) = rx.recv_timeout(Duration::from_millis(100)) {
                return Ok(Server {
                    child,
                    http,
                    grpc,
                    log,
                });
            }
            if let Ok(Some(_)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                return Err(log.lock().unwrap().clone());
            }
            assert!(Instant::now() < deadline, "serve did not start in time");
        }
    }

    pub(crate) fn start(args: &[String]) -> Server {
        Self::try_start(args).unwrap_or_else(|log| panic!("outpost serve failed:\n{log}"))
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub(crate) fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 exchange (`Connection: close`): status, head, body.
pub(crate) fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer (413) and close before taking all of a large
    // body; what it said is still there to read.
    let _ = stream.write_all(&bytes);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    Reply::parse(&raw)
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    fn parse(raw: &[u8]) -> Reply {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        Reply {
            status,
            head,
            body: raw[split + 4..].to_vec(),
        }
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub(crate) fn infer_json(server: &Server, model: &str, request: &Value) -> Reply {
    http(
        &server.http,
        "POST",
        &format!("/v2/models/{model}/infer"),
        &[("content-type", "application/json")],
        request.to_string().as_bytes(),
    )
}

pub(crate) fn text_request(input: &str, text: &str) -> Value {
    json!({"inputs": [{"name": input, "datatype": "BYTES", "shape": [1], "data": [text]}]})
}

/// Runs `tests/serve/triton_client.py` (the real tritonclient).
fn triton(protocol: &str, url: &str, model: &str, requests: &Value, extra: &[&str]) -> Value {
    let dir = outpost_e2e::Scratch::new();
    let file = dir.write("requests.json", requests.to_string());
    let out = Command::new(python())
        .arg(repo().join("tests/serve/triton_client.py"))
        .args(["--protocol", protocol, "--url", url, "--model", model])
        .args(extra)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "triton_client.py {protocol} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `outpost run`'s outputs in KServe's terms: text is BYTES [1].
fn kserve_outputs(run_outputs: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (name, value) in run_outputs.as_object().unwrap() {
        let entry = match value {
            Value::String(s) => json!({"datatype": "BYTES", "shape": [1], "data": [s]}),
            t => {
                let datatype = match t["type"].as_str().unwrap() {
                    "f32" => "FP32",
                    "i64" => "INT64",
                    other => panic!("unexpected type {other}"),
                };
                json!({"datatype": datatype, "shape": t["dims"], "data": t["data"]})
            }
        };
        out.insert(name.clone(), entry);
    }
    Value::Object(out)
}

/// Outputs equal, f32 values compared as f32 (bit for bit after the trip
/// through JSON).
fn assert_same_outputs(got: &Value, want: &Value, what: &str) {
    let (got, want) = (got.as_object().unwrap(), want.as_object().unwrap());
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}"
    );
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g["datatype"], w["datatype"], "{what}: {name}");
        assert_eq!(g["shape"], w["shape"], "{what}: {name}");
        let (gd, wd) = (g["data"].as_array().unwrap(), w["data"].as_array().unwrap());
        assert_eq!(gd.len(), wd.len(), "{what}: {name}");
        for (a, b) in gd.iter().zip(wd) {
            match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => assert_eq!(x as f32, y as f32, "{what}: {name}"),
                _ => assert_eq!(a, b, "{what}: {name}"),
            }
        }
    }
}

fn run_outputs(p: &Publisher, bundle: &Path, text: &str) -> Value {
    let mut args = vec![
        "run".to_owned(),
        bundle.display().to_string(),
        "-i".into(),
        text.into(),
    ];
    args.extend(p.trust_args(&["root1.json"]));
    let run = outpost(&args);
    assert!(run.ok, "{}", run.stderr);
    kserve_outputs(&run.json()["results"][0]["outputs"])
}

fn serve_args(p: &Publisher, bundles: &[&Path], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = bundles.iter().map(|b| b.display().to_string()).collect();
    args.extend(p.trust_args(&["root1.json"]));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// A pipeline of the hostile test stage doing `attack`.
pub(crate) fn hostile_bundle(p: &Publisher, name: &str, config: &str, limits: &str) -> PathBuf {
    let toml = format!(
        "[pipeline]\nname = \"{name}\"\ninputs = [\"x\"]\n[[stages]]\nname = \"work\"\ncomponent = \"{}\"\nconfig = {{ {config} }}\nlimits = {{ {limits} }}\n",
        plugin("hostile").display()
    );
    let path = p.path(&format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    p.bundle(&path, name, 1, name, &["a", "b"])
}

pub(crate) fn config_file(p: &Publisher, name: &str, text: &str) -> PathBuf {
    let path = p.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

const DEMO_TEXTS: [&str; 3] = [
    "stop the conveyor",
    "fly to the red building",
    "take a picture of the gate",
];

#[test]
fn tritonclient_over_http_and_grpc_gets_what_outpost_run_gets() {
    let p = Publisher::new();
    let demo = p.demo_bundle("demo", 1, &["a", "b"]);
    let minilm = p.bundle(
        &repo().join("host/pipelines/minilm/minilm-l3.toml"),
        "minilm-l3",
        1,
        "minilm",
        &["a", "b"],
    );
    let server = Server::start(&serve_args(&p, &[&demo, &minilm], &[]));
    for (model, bundle, texts) in [
        ("intent-demo", &demo, &DEMO_TEXTS[..]),
        (
            "minilm-l3",
            &minilm,
            &["A man is eating food.", "Ünïcödé — text"][..],
        ),
    ] {
        let requests: Vec<Value> = texts
            .iter()
            .map(|t| json!([{"name": "text", "datatype": "BYTES", "shape": [1], "data": [t]}]))
            .collect();
        let wants: Vec<Value> = texts.iter().map(|t| run_outputs(&p, bundle, t)).collect();
        for (protocol, url) in [
            ("http-binary", &server.http),
            ("http-json", &server.http),
            ("grpc", &server.grpc),
        ] {
            let got = triton(protocol, url, model, &Value::Array(requests.clone()), &[]);
            let what = format!("{model} over {protocol}");
            assert_eq!(got["live"], true, "{what}");
            assert_eq!(got["ready"], true, "{what}");
            assert_eq!(got["model_ready"], true, "{what}");
            assert_eq!(got["metadata"]["name"], model, "{what}");
            assert_eq!(got["metadata"]["versions"], json!(["1"]), "{what}");
            assert_eq!(
                got["metadata"]["inputs"],
                json!([{"name": "text", "datatype": "BYTES", "shape": [1]}]),
                "{what}"
            );
            for (result, want) in got["results"].as_array().unwrap().iter().zip(&wants) {
                assert_same_outputs(&result["outputs"], want, &what);
            }
        }
    }
    // The metadata says what the outputs are, -1 for symbolic sizes.
    let meta = http(&server.http, "GET", "/v2/models/minilm-l3", &[], b"").json();
    assert_eq!(
        meta["outputs"],
        json!([{"name": "sentence_embedding", "datatype": "FP32", "shape": [-1, -1]}])
    );
    let metrics = http(&server.http, "GET", "/metrics", &[], b"").text();
    for needle in [
        "outpost_requests_total{pipeline=\"intent-demo\"}",
        "outpost_stage_seconds_bucket{",
        "outpost_inference_seconds_count{pipeline=\"minilm-l3\",stage=\"infer\"}",
        "outpost_stage_instances{pipeline=\"intent-demo\",stage=\"tokenize\",state=\"idle\"}",
        "outpost_queue_depth{pipeline=\"minilm-l3\"} 0",
        "process_resident_memory_bytes",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
}

#[test]
fn bad_requests_get_clear_errors_and_the_server_carries_on() {
    let p = Publisher::new();
    let demo = p.demo_bundle("demo", 1, &["a", "b"]);
    let config = config_file(&p, "outpost.toml", "[listen]\nmax_body_mib = 1\n");
    let config = config.display().to_string();
    let server = Server::start(&serve_args(&p, &[&demo], &["--config", &config]));
    let post = |path: &str, body: &[u8]| http(&server.http, "POST", path, &[], body);
    let cases: Vec<(Reply, u16, &str)> = vec![
        (
            post("/v2/models/intent-demo/infer", b"{\"inputs\": [,]}"),
            400,
            "not a valid KServe v2 inference request",
        ),
        (
            infer_json(
                &server,
                "intent-demo",
                &json!({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}),
            ),
            400,
            "input 'text': the pipeline takes BYTES here, not FP32",
        ),
        (
            infer_json(
                &server,
                "intent-demo",
                &json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}),
            ),
            400,
            "shape [2] holds 2 elements but 1 came",
        ),
        (
            infer_json(&server, "intent-demo", &text_request("words", "hi")),
            400,
            "model 'intent-demo' has no input 'words'; it takes: text",
        ),
        (
            infer_json(&server, "no-such-model", &text_request("text", "hi")),
            404,
            "unknown model 'no-such-model'; this server serves: intent-demo",
        ),
        (
            post(
                "/v2/models/intent-demo/versions/7/infer",
                text_request("text", "hi").to_string().as_bytes(),
            ),
            404,
            "model 'intent-demo' has version 1, not 7",
        ),
        (
            post("/v2/models/intent-demo/infer", &vec![b' '; 2 << 20]),
            413,
            "over this server's limit of 1048576 bytes",
        ),
        (
            http(
                &server.http,
                "POST",
                "/v2/models/intent-demo/infer",
                &[("inference-header-content-length", "999999")],
                b"{}",
            ),
            400,
            "Inference-Header-Content-Length is 999999",
        ),
        (
            http(&server.http, "GET", "/v3/nothing", &[], b""),
            404,
            "no endpoint GET /v3/nothing",
        ),
    ];
    for (reply, status, needle) in cases {
        assert_eq!(reply.status, status, "{reply:?}");
        assert!(
            reply.error().contains(needle),
            "{needle:?} not in {reply:?}"
        );
    }
    // Binary data that does not add up.
    let head = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]})
        .to_string();
    let mut body = head.clone().into_bytes();
    body.extend([200, 0, 0, 0, b'a', b'b', b'c', b'd']);
    let length = head.len().to_string();
    let reply = http(
        &server.http,
        "POST",
        "/v2/models/intent-demo/infer",
        &[("inference-header-content-length", &length)],
        &body,
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(reply.error().contains("says it has 200 bytes"), "{reply:?}");
    // And after all that, a good request is answered.
    let reply = infer_json(
        &server,
        "intent-demo",
        &text_request("text", "stop the conveyor"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let labels = &reply.json()["outputs"][0]["data"][0];
    assert!(
        labels.as_str().unwrap().starts_with("stop_conveyor"),
        "{labels}"
    );
    let metrics = http(&server.http, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains(
            "outpost_request_failures_total{pipeline=\"intent-demo\",kind=\"bad_request\"}"
        ),
        "{metrics}"
    );
}

#[test]
fn a_public_address_without_tls_is_refused_and_bad_bundles_stop_the_start() {
    let p = Publisher::new();
    let demo = p.demo_bundle("demo", 1, &["a", "b"]);
    let mut args = serve_args(&p, &[&demo], &[]);
    args.extend([
        "--listen".into(),
        "0.0.0.0:0".into(),
        "--grpc-listen".into(),
        "".into(),
    ]);
    let log = Server::try_start(&args).err().expect("must refuse");
    assert!(
        log.contains("refusing to serve HTTP on 0.0.0.0:0") && log.contains("--insecure-listen"),
        "{log}"
    );
    // One signature short of the threshold: the whole start is refused.
    let weak = p.demo_bundle("weak", 2, &["a"]);
    let log = Server::try_start(&serve_args(&p, &[&demo, &weak], &[]))
        .err()
        .expect("must refuse");
    assert!(log.contains(&format!("bundle {}", weak.display())), "{log}");
    // More instances than the pooling allocator holds: refused at start,
    // not a failed request later.
    let small_pool = config_file(
        &p,
        "small-pool.toml",
        "[engine]\nallocator = \"pooling\"\npool_instances = 4\n[requests]\nconcurrency = 2\n",
    );
    let small_pool = small_pool.display().to_string();
    let log = Server::try_start(&serve_args(&p, &[&demo], &["--config", &small_pool]))
        .err()
        .expect("must refuse");
    assert!(
        log.contains("the models need up to 6 stage instances at once")
            && log.contains("engine.pool_instances"),
        "{log}"
    );
    // --check verifies and loads, then exits.
    let mut args = serve_args(&p, &[&demo], &["--check", "--log-format", "json"]);
    args.insert(0, "serve".into());
    let run = outpost(&args);
    assert!(run.ok, "{}", run.stderr);
    // Logs as JSON lines.
    let lines: Vec<Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The engine's memory layout comes first, then each bundle.
    assert_eq!(
        lines[0]["fields"]["message"], "engine ready",
        "{}",
        run.stderr
    );
    assert!(
        lines[0]["fields"]["layout"]
            .as_str()
            .is_some_and(|l| l.contains("guard pages")),
        "{}",
        run.stderr
    );
    let line = &lines[1];
    assert_eq!(
        line["fields"]["message"], "bundle verified and loaded",
        "{line}"
    );
    assert_eq!(line["fields"]["model"], "intent-demo", "{line}");
    assert!(
        run.stdout
            .contains("model 'intent-demo' version 1: inputs text BYTES[1]"),
        "{}",
        run.stdout
    );
}

fn self_signed(p: &Publisher) -> (PathBuf, PathBuf) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert_path = config_file(p, "cert.pem", &cert.cert.pem());
    let key_path = config_file(p, "key.pem", &cert.signing_key.serialize_pem());
    (cert_path, key_path)
}

#[test]
fn tls_and_tokens() {
    let p = Publisher::new();
    let demo = p.demo_bundle("demo", 1, &["a", "b"]);
    let (cert, _key) = self_signed(&p);
    let token = "0123456789abcdef0123456789abcdef";
    config_file(&p, "token", &format!("{token}\n"));
    let config = config_file(
        &p,
        "outpost.toml",
        "[listen]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\ntoken_file = \"token\"\n",
    );
    let config = config.display().to_string();
    let server = Server::start(&serve_args(&p, &[&demo], &["--config", &config]));
    let requests = json!([[{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["stop the conveyor"]}]]);
    let want = run_outputs(&p, &demo, "stop the conveyor");
    let ca = cert.display().to_string();
    let https = server.http.replace("127.0.0.1", "localhost");
    let grpcs = server.grpc.replace("127.0.0.1", "localhost");
    for (protocol, url) in [("http-binary", &https), ("grpc", &grpcs)] {
        let ok = triton(
            protocol,
            url,
            "intent-demo",
            &requests,
            &["--ssl", "--ca", &ca, "--token", token],
        );
        assert_same_outputs(&ok["results"][0]["outputs"], &want, protocol);
        for bad in [
            &["--ssl", "--ca", &ca][..],
            &["--ssl", "--ca", &ca, "--token", "not-the-token-at-all"],
        ] {
            let refused = triton(protocol, url, "intent-demo", &requests, bad);
            let error = &refused["results"][0];
            assert!(
                error["status"]
                    .as_str()
                    .unwrap()
                    .contains(if protocol == "grpc" {
                        "UNAUTHENTICATED"
                    } else {
                        "401"
                    }),
                "{protocol} {bad:?}: {error}"
            );
        }
    }
    // Plain HTTP to the TLS port is told so, in plain HTTP.
    let reply = http(&server.http, "GET", "/v2", &[], b"");
    assert_eq!(reply.status, 400);
    assert!(reply.head.contains("application/json"), "{reply:?}");
    assert!(reply.error().contains("HTTPS only"), "{reply:?}");
}

#[test]
fn each_api_gets_its_errors_in_its_own_shape() {
    let p = Publisher::new();
    let demo = p.demo_bundle("demo", 1, &["a", "b"]);
    let token = "0123456789abcdef0123456789abcdef";
    config_file(&p, "token", &format!("{token}\n"));
    let config = config_file(&p, "outpost.toml", "[listen]\ntoken_file = \"token\"\n");
    let config = config.display().to_string();
    let server = Server::start(&serve_args(&p, &[&demo], &["--config", &config]));
    let bearer = format!("Bearer {token}");
    let openai_error = |reply: &Reply, status: u16, kind: &str, words: &[&str]| {
        assert_eq!(reply.status, status, "{reply:?}");
        let error = &reply.json()["error"];
        assert_eq!(error["type"], kind, "{reply:?}");
        let message = error["message"].as_str().unwrap();
        for w in words {
            assert!(message.contains(w), "{w:?} not in {message}");
        }
    };
    // OpenAI clients read {"error": {"message", "type", ...}}: a missing or
    // wrong API key, and an endpoint that does not exist.
    for auth in [&[][..], &[("authorization", "Bearer not-the-token")]] {
        let reply = http(&server.http, "GET", "/v1/models", auth, b"");
        openai_error(&reply, 401, "authentication_error", &["token"]);
        assert!(reply.head.contains("www-authenticate: Bearer"), "{reply:?}");
        let reply = http(&server.http, "POST", "/v1/chat/completions", auth, b"{}");
        openai_error(&reply, 401, "authentication_error", &["token"]);
    }
    let reply = http(
        &server.http,
        "POST",
        "/v1/embeddings",
        &[("authorization", &bearer)],
        b"{}",
    );
    openai_error(
        &reply,
        404,
        "not_found_error",
        &["/v1/embeddings", "/v1/chat/completions"],
    );
    let models = http(
        &server.http,
        "GET",
        "/v1/models",
        &[("authorization", &bearer)],
        b"",
    );
    assert_eq!(models.status, 200, "{models:?}");
    // KServe clients read {"error": "..."}.
    let reply = http(&server.http, "GET", "/v2", &[], b"");
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.error().contains("token"), "{reply:?}");
    let reply = http(&server.http, "GET", "/v3", &[], b"");
    assert_eq!(reply.status, 404, "{reply:?}");
    assert!(reply.error().contains("no endpoint GET /v3"), "{reply:?}");
}

#[test]
fn generate_refuses_a_pipeline_whose_names_clash_with_its_reply_fields() {
    let p = Publisher::new();
    // The demo with its `labels` output named `model_name`, which a generate
    // reply uses for the model's name.
    let demo = outpost_e2e::demo_dir();
    let toml = outpost_e2e::demo_pipeline_text()
        .replace("\"labels.txt\"", &format!("{:?}", demo.join("labels.txt")))
        .replace(
            "outputs = [\"labels\", \"scores\"]",
            "outputs = [\"model_name\", \"scores\"]",
        )
        .replace(
            "config = { top_k = 3 }",
            "config = { top_k = 3 }\noutputs = { labels = \"model_name\", scores = \"scores\" }",
        )
        .replace("expect_label = { labels =", "expect_label = { model_name =");
    let path = p.path("clash.toml");
    std::fs::write(&path, toml).unwrap();
    let bundle = p.bundle(&path, "clash", 1, "clash.bundle", &["a", "b"]);
    let server = Server::start(&serve_args(&p, &[&bundle], &[]));
    let body = json!({ "text": "stop the conveyor" }).to_string();
    for endpoint in ["generate", "generate_stream"] {
        let reply = http(
            &server.http,
            "POST",
            &format!("/v2/models/clash/{endpoint}"),
            &[],
            body.as_bytes(),
        );
        assert_eq!(reply.status, 400, "{endpoint}: {reply:?}");
        for w in [
            "an output named 'model_name'",
            "id, model_name, model_version",
            "/infer",
        ] {
            assert!(reply.error().contains(w), "{w:?} not in {reply:?}");
        }
    }
    // /infer keeps serving it.
    let reply = infer_json(
        &server,
        "clash",
        &json!({ "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["stop the conveyor"]}] }),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.text().contains("stop_conveyor"), "{reply:?}");
}

#[test]
fn many_clients_at_once_all_get_correct_answers() {
    let p = Publisher::new();
    let demo = p.demo_bundle("demo", 1, &["a", "b"]);
    let server = Server::start(&serve_args(&p, &[&demo], &[]));
    let want = run_outputs(&p, &demo, "stop the conveyor");
    let report = load(&server, "intent-demo", "text", "stop the conveyor", 32, 50);
    assert_eq!(report["ok"], 1600, "{report}");
    let outputs = report["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 1, "{report}");
    let got: Value = serde_json::from_str(outputs[0].as_str().unwrap()).unwrap();
    assert_same_outputs(&got, &want, "under load");
}

/// Runs `tests/serve/load_client.py` (tritonclient.http, one client per thread).
fn load(
    server: &Server,
    model: &str,
    input: &str,
    text: &str,
    clients: u32,
    requests: u32,
) -> Value {
    let out = Command::new(python())
        .arg(repo().join("tests/serve/load_client.py"))
        .args([
            "--url",
            &server.http,
            "--model",
            model,
            "--input-name",
            input,
        ])
        .args(["--text", text, "--timeout-s", "120"])
        .args([
            "--clients",
            &clients.to_string(),
            "--requests",
            &requests.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "load_client.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn overload_is_refused_at_once_and_nothing_hangs() {
    let p = Publisher::new();
    let slow = hostile_bundle(&p, "slow", "attack = \"spin\", iterations = 30000000", "");
    let config = config_file(
        &p,
        "outpost.toml",
        "[requests]\nconcurrency = 1\nqueue = 4\n",
    );
    let config = config.display().to_string();
    let server = Server::start(&serve_args(&p, &[&slow], &["--config", &config]));
    let started = Instant::now();
    let report = load(&server, "slow", "x", "go", 64, 1);
    let ok = report["ok"].as_u64().unwrap();
    let refused = report["errors"]["503"].as_u64().unwrap_or(0);
    assert!(ok >= 1 && refused >= 1, "{report}");
    assert_eq!(
        ok + refused,
        64,
        "every request answered, 200 or 503: {report}"
    );
    assert_eq!(
        report["outputs"].as_array().unwrap().len(),
        1,
        "every 200 carries the same, right answer: {report}"
    );
    assert!(
        report["outputs"][0].as_str().unwrap().contains("30000000"),
        "{report}"
    );
    // Bounded: at most 1 running + 4 queued were ever accepted at once, so
    // no client waited for 64 runs.
    eprintln!("64 clients answered in {:?}", started.elapsed());
}

#[test]
fn a_failing_pipeline_does_not_disturb_its_neighbour() {
    let p = Publisher::new();
    let demo = p.demo_bundle("demo", 1, &["a", "b"]);
    let looping = hostile_bundle(&p, "looping", "attack = \"loop\"", "timeout_ms = 100");
    let trapping = hostile_bundle(&p, "trapping", "attack = \"recurse\"", "");
    let server = Server::start(&serve_args(&p, &[&demo, &looping, &trapping], &[]));
    let want = run_outputs(&p, &demo, "stop the conveyor");
    let addr = server.http.clone();
    let attackers: Vec<_> = [("looping", "Timeout"), ("trapping", "Trap")]
        .into_iter()
        .map(|(model, kind)| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let reply = http(
                        &addr,
                        "POST",
                        &format!("/v2/models/{model}/infer"),
                        &[],
                        text_request("x", "go").to_string().as_bytes(),
                    );
                    assert_eq!(reply.status, 500, "{reply:?}");
                    assert!(reply.error().starts_with(&format!("{kind}: ")), "{reply:?}");
                }
            })
        })
        .collect();
    let report = load(&server, "intent-demo", "text", "stop the conveyor", 8, 25);
    for a in attackers {
        a.join().unwrap();
    }
    assert_eq!(report["ok"], 200, "{report}");
    let got: Value = serde_json::from_str(report["outputs"][0].as_str().unwrap()).unwrap();
    assert_same_outputs(&got, &want, "beside failing pipelines");
    let metrics = http(&server.http, "GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("outpost_request_failures_total{pipeline=\"trapping\",kind=\"Trap\"} 20"),
        "{metrics}"
    );
}

#[test]
fn deadlines_answer_504_and_the_next_request_is_served() {
    let p = Publisher::new();
    let slow = hostile_bundle(
        &p,
        "slow",
        "attack = \"spin\", iterations = 3000000000",
        "timeout_ms = 60000",
    );
    let quick = hostile_bundle(&p, "quick", "attack = \"spin\", iterations = 1000", "");
    let config = config_file(&p, "outpost.toml", "[pipelines.slow]\ndeadline_ms = 300\n");
    let config = config.display().to_string();
    let server = Server::start(&serve_args(&p, &[&slow, &quick], &["--config", &config]));
    let started = Instant::now();
    let reply = infer_json(&server, "slow", &text_request("x", "go"));
    assert_eq!(reply.status, 504, "{reply:?}");
    assert!(reply.error().contains("deadline"), "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // The same over gRPC, as a status code.
    let requests = json!([[{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["go"]}]]);
    let got = triton("grpc", &server.grpc, "slow", &requests, &[]);
    let result = &got["results"][0];
    assert_eq!(result["status"], "StatusCode.DEADLINE_EXCEEDED", "{result}");
    assert!(
        result["error"].as_str().unwrap().contains("deadline"),
        "{result}"
    );
    // A request may ask for less than the configured deadline (Triton's
    // timeout parameter, in microseconds).
    let mut asking = text_request("x", "go");
    asking["parameters"] = json!({"timeout": 50_000});
    let reply = infer_json(&server, "quick", &asking);
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = infer_json(&server, "slow", &asking);
    assert_eq!(reply.status, 504, "{reply:?}");
    let reply = infer_json(&server, "quick", &text_request("x", "go"));
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[test]
fn sigterm_drains_requests_in_flight_then_exits_zero() {
    let p = Publisher::new();
    let slow = hostile_bundle(&p, "slow", "attack = \"spin\", iterations = 100000000", "");
    let config = config_file(
        &p,
        "outpost.toml",
        "[requests]\nconcurrency = 2\nqueue = 16\n",
    );
    let config = config.display().to_string();
    let mut server = Server::start(&serve_args(&p, &[&slow], &["--config", &config]));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let addr = server.http.clone();
            std::thread::spawn(move || infer_json_at(&addr, "slow", &text_request("x", "go")))
        })
        .collect();
    // Wait until all 16 are in: running or queued.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = http(&server.http, "GET", "/metrics", &[], b"").text();
        let gauge = |name: &str| -> u64 {
            metrics
                .lines()
                .find(|l| l.starts_with(&format!("{name}{{pipeline=\"slow\"}}")))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        if gauge("outpost_in_flight") + gauge("outpost_queue_depth") == 16 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "16 requests never got in:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.signal("TERM");
    for client in clients {
        let reply = client.join().unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let status = server.wait(Duration::from_secs(60));
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(server.log().contains("drained"), "{}", server.log());
}

fn infer_json_at(addr: &str, model: &str, request: &Value) -> Reply {
    http(
        addr,
        "POST",
        &format!("/v2/models/{model}/infer"),
        &[("content-type", "application/json")],
        request.to_string().as_bytes(),
    )
}

#[test]
fn slow_and_oversized_clients_are_cut_off_and_others_served() {
    let p = Publisher::new();
    let demo = p.demo_bundle("demo", 1, &["a", "b"]);
    let config = config_file(
        &p,
        "outpost.toml",
        "[listen]\nheader_read_timeout_ms = 300\nbody_read_timeout_ms = 300\n",
    );
    let config = config.display().to_string();
    let server = Server::start(&serve_args(&p, &[&demo], &["--config", &config]));
    let open = || {
        let s = TcpStream::connect(&server.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    // A head that never ends, and a body that never comes: both cut off.
    let mut stalled_head = open();
    stalled_head
        .write_all(b"POST /v2/models/intent-demo/infer HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let mut stalled_body = open();
    stalled_body
        .write_all(b"POST /v2/models/intent-demo/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"inp")
        .unwrap();
    // A gRPC connection that never says anything (HTTP/2 has no head
    // timeout of its own).
    let mut silent_grpc = TcpStream::connect(&server.grpc).unwrap();
    silent_grpc
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // Meanwhile others are served.
    let reply = infer_json(
        &server,
        "intent-demo",
        &text_request("text", "stop the conveyor"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stalled_head.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a stalled request head held its connection"
    );
    let mut rest = Vec::new();
    let _ = stalled_body.read_to_end(&mut rest);
    let reply = Reply::parse(&rest);
    assert_eq!(reply.status, 408, "{reply:?}");
    assert!(reply.error().contains("body_read_timeout_ms"), "{reply:?}");
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = silent_grpc.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a silent gRPC connection was kept open"
    );
    // A head past the limit (16 KiB) is refused.
    let big = "x".repeat(64 << 10);
    let reply = http(&server.http, "GET", "/v2", &[("x-padding", &big)], b"");
    assert_eq!(reply.status, 431, "{reply:?}");
    let reply = infer_json(
        &server,
        "intent-demo",
        &text_request("text", "stop the conveyor"),
    );
    assert_eq!(reply.status, 200, "{reply:?}");
}
