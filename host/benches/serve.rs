//! What serving over the network costs: closed-loop HTTP clients
//! (keep-alive, one connection each) at concurrency 1, 4 and 16 against
//! `outpost serve`, beside the same pipeline called in-process
//! (`Pipeline::run`) by as many threads, in one run on this machine.
//! Reports throughput (serve / in-process) and the latency serve adds at
//! the median and the 99th percentile.
//!
//! ```text
//! bash host/benches/run.sh            # fetches the MiniLM models, then:
//! cargo bench -p outpost-host --bench serve [-- --quick] [--json PATH] [--soak-minutes N]
//! ```
//!
//! `--soak-minutes N` instead saturates the demo pipeline for N minutes
//! (16 clients) and reports errors and the server's RSS growth after a
//! one-minute warm-up.

#![allow(clippy::unwrap_used)]

use anyhow::{Context, Result, bail};
use outpost_host::{EngineOptions, Host, Pipeline, Tensor};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const OUTPOST: &str = env!("CARGO_BIN_EXE_outpost");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

struct Args {
    quick: bool,
    json: PathBuf,
    soak_minutes: Option<u64>,
}

fn parse_args() -> Result<Args> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    let mut args = Args {
        quick: false,
        json: target.join("bench/serve.json"),
        soak_minutes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--json" => args.json = it.next().context("--json needs a path")?.into(),
            "--soak-minutes" => {
                args.soak_minutes = Some(it.next().context("--soak-minutes needs N")?.parse()?)
            }
            "--bench" => {}
            other => bail!("unknown argument {other}; use --quick, --json PATH, --soak-minutes N"),
        }
    }
    Ok(args)
}

fn outpost(args: &[&str]) -> Result<()> {
    let out = Command::new(OUTPOST)
        .args(args)
        .current_dir(repo())
        .output()?;
    if !out.status.success() {
        bail!("outpost {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A key, a root and one signed bundle per pipeline under `dir`.
fn signed_bundles(dir: &Path, pipelines: &[(&str, PathBuf)]) -> Result<Vec<String>> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let p = |name: &str| dir.join(name).display().to_string();
    outpost(&["keygen", "--out", &p("k")])?;
    outpost(&[
        "root",
        "--key",
        &p("k.pub"),
        "--threshold",
        "1",
        "--expires",
        "2099-01-01T00:00:00Z",
        "--sign",
        &p("k"),
        "--out",
        &p("root.json"),
    ])?;
    std::fs::write(dir.join("outpost.toml"), "[requests]\nconcurrency = 16\n")?;
    let mut bundles = Vec::new();
    for (name, toml) in pipelines {
        let out = p(name);
        outpost(&[
            "bundle",
            &toml.display().to_string(),
            "--name",
            name,
            "--version",
            "1",
            "--out",
            &out,
        ])?;
        outpost(&["sign", &out, "--key", &p("k")])?;
        bundles.push(out);
    }
    Ok(bundles)
}

struct Server {
    child: Child,
    http: String,
    log: Arc<std::sync::Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(dir: &Path, bundles: &[String]) -> Result<Server> {
    let mut child = Command::new(OUTPOST)
        .arg("serve")
        .args(bundles)
        .args(["--trust", &dir.join("root.json").display().to_string()])
        .args(["--state-dir", &dir.join("state").display().to_string()])
        .args(["--listen", "127.0.0.1:0", "--grpc-listen", ""])
        // As many requests at once as the in-process side runs threads:
        // the comparison is of the protocol's cost, not of the limit.
        .args(["--config", &dir.join("outpost.toml").display().to_string()])
        .env("OUTPOST_LOG", "warn,outpost=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("http="))
            {
                let _ = tx.send(addr.to_owned());
            }
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let http = rx
        .recv_timeout(Duration::from_secs(300))
        .with_context(|| format!("serve did not start:\n{}", log.lock().unwrap()))?;
    Ok(Server { child, http, log })
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    stream: BufReader<TcpStream>,
    request: Vec<u8>,
}

impl Client {
    fn new(addr: &str, model: &str, text: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let body = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]})
            .to_string();
        let request = format!(
            "POST /v2/models/{model}/infer HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Ok(Self {
            stream: BufReader::new(stream),
            request,
        })
    }

    /// Sends the request and reads the whole response; the status.
    fn call(&mut self) -> Result<u16> {
        self.stream.get_mut().write_all(&self.request)?;
        let mut status = 0;
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                bail!("connection closed");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status == 0 {
                status = l.split_whitespace().nth(1).unwrap_or("0").parse()?;
            } else if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        Ok(status)
    }
}

/// Latencies and throughput of one closed-loop run.
struct Measured {
    per_second: f64,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Measured {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// `threads` workers each calling `work` back to back for `duration`.
fn closed_loop<W>(threads: usize, duration: Duration, make: impl Fn() -> W) -> Measured
where
    W: FnMut() -> bool + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mut work = make();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if work() {
                        latencies.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().unwrap();
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Measured {
        per_second: latencies.len() as f64 / elapsed,
        latencies,
        errors,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let scratch = repo().join("target/bench/serve");
    let minilm = repo().join("host/pipelines/minilm/minilm-l3.toml");
    let mut pipelines = vec![(
        "intent-demo",
        repo().join("host/pipelines/demo/intent.toml"),
        "stop the conveyor",
    )];
    if repo()
        .join("host/pipelines/minilm/fetched/minilm-l3.onnx")
        .exists()
    {
        pipelines.push((
            "minilm-l3",
            minilm,
            "A man is eating food while a dog sleeps under the table.",
        ));
    } else {
        eprintln!("MiniLM not fetched (bash host/benches/run.sh fetches it): demo only");
    }
    let named: Vec<(&str, PathBuf)> = pipelines.iter().map(|(n, p, _)| (*n, p.clone())).collect();
    let bundles = signed_bundles(&scratch, &named)?;
    let server = start_server(&scratch, &bundles)?;
    if let Some(minutes) = args.soak_minutes {
        return soak(&server, minutes);
    }
    let host = Host::new(&EngineOptions::default())?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let duration = Duration::from_secs_f64(if args.quick { 0.5 } else { 5.0 });
    println!(
        "outpost serve (HTTP/1.1 keep-alive, JSON, requests.concurrency = 16) against Pipeline::run in-process, on {cores} cores; {} s per point\n",
        duration.as_secs_f64()
    );
    println!(
        "{:<12} {:>4} {:>12} {:>12} {:>6} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "pipeline",
        "conc",
        "in-proc/s",
        "serve/s",
        "ratio",
        "in p50 µs",
        "in p99 µs",
        "srv p50 µs",
        "srv p99 µs",
        "+p50 µs",
        "+p99 µs"
    );
    let mut rows = Vec::new();
    for (name, toml, text) in &pipelines {
        let pipeline: Arc<Pipeline> = Arc::new(host.load_pipeline(toml)?);
        pipeline.set_pool_size(cores.max(16));
        for concurrency in [1usize, 4, 16] {
            let input = (*text).to_owned();
            // Warm both, untimed.
            let _ = closed_loop(concurrency, duration / 4, || {
                let p = pipeline.clone();
                let input = input.clone();
                move || p.run(vec![Tensor::text("text", &input)]).is_ok()
            });
            let inproc = closed_loop(concurrency, duration, || {
                let p = pipeline.clone();
                let input = input.clone();
                move || p.run(vec![Tensor::text("text", &input)]).is_ok()
            });
            let make_client = || {
                let mut client = Client::new(&server.http, name, text).unwrap();
                move || client.call().is_ok_and(|s| s == 200)
            };
            let _ = closed_loop(concurrency, duration / 4, make_client);
            let served = closed_loop(concurrency, duration, make_client);
            if served.errors > 0 || inproc.errors > 0 {
                bail!(
                    "{name} at {concurrency}: {} serve errors, {} in-process errors\n{}",
                    served.errors,
                    inproc.errors,
                    server.log.lock().unwrap()
                );
            }
            let ratio = served.per_second / inproc.per_second;
            let (ip50, ip99, sp50, sp99) = (
                inproc.percentile(0.5),
                inproc.percentile(0.99),
                served.percentile(0.5),
                served.percentile(0.99),
            );
            println!(
                "{:<12} {:>4} {:>12.1} {:>12.1} {:>6.3} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>9.0} {:>9.0}",
                name,
                concurrency,
                inproc.per_second,
                served.per_second,
                ratio,
                us(ip50),
                us(ip99),
                us(sp50),
                us(sp99),
                us(sp50) - us(ip50),
                us(sp99) - us(ip99)
            );
            rows.push(json!({
                "pipeline": name, "concurrency": concurrency,
                "in_process_per_s": inproc.per_second, "serve_per_s": served.per_second,
                "throughput_ratio": ratio,
                "in_process_p50_us": us(ip50), "in_process_p99_us": us(ip99),
                "serve_p50_us": us(sp50), "serve_p99_us": us(sp99),
                "added_p50_us": us(sp50) - us(ip50), "added_p99_us": us(sp99) - us(ip99),
            }));
        }
    }
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&Value::Array(rows))?,
    )?;
    println!("\nwritten to {}", args.json.display());
    Ok(())
}

fn rss(server: &Server) -> Result<f64> {
    let mut stream = TcpStream::connect(&server.http)?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    text.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .context("no RSS in /metrics")?
        .trim()
        .parse()
        .context("RSS")
}

fn soak(server: &Server, minutes: u64) -> Result<()> {
    let warmup = Duration::from_secs(60);
    println!("soak: demo pipeline, 16 clients, {minutes} min after a 1 min warm-up");
    let make_client = || {
        let mut client = Client::new(&server.http, "intent-demo", "stop the conveyor").unwrap();
        move || client.call().is_ok_and(|s| s == 200)
    };
    let warm = closed_loop(16, warmup, make_client);
    let before = rss(server)?;
    let mut total = 0usize;
    let mut errors = warm.errors;
    let mut peak = before;
    for minute in 0..minutes {
        let m = closed_loop(16, Duration::from_secs(60), make_client);
        total += m.latencies.len();
        errors += m.errors;
        let now = rss(server)?;
        peak = peak.max(now);
        println!(
            "minute {}: {:.0} req/s, p99 {:.0} µs, errors {}, RSS {:.1} MiB",
            minute + 1,
            m.per_second,
            us(m.percentile(0.99)),
            m.errors,
            now / 1048576.0
        );
    }
    let after = rss(server)?;
    println!(
        "soak: {total} requests, {errors} errors; RSS after warm-up {:.1} MiB, at the end {:.1} MiB ({:+.2} %), peak {:.1} MiB",
        before / 1048576.0,
        after / 1048576.0,
        (after - before) / before * 100.0,
        peak / 1048576.0
    );
    if errors > 0 {
        bail!("the soak saw {errors} errors");
    }
    Ok(())
}
