//! `outpost`: the command-line face of the Outpost host.

/// `println!` for a command's output. A reader that goes away early
/// (`outpost run ... | grep -q x`) makes this return [`StdoutClosed`] from
/// the enclosing function instead of panicking as `println!` does.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::StdoutClosed)?
    }};
}

mod fleet;
mod new_stage;
mod report;
mod requests;
mod serve;
mod test_stage;
mod trust;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use outpost_host::backend::{BackendName, BackendOptions, ModelSettings, SharedModel, load_model};
use outpost_host::device::DeviceState;
use outpost_host::{Allocator, Bounds, EngineOptions, Host, Pipeline, RunError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// What `outpost --version` prints: what precompiled artifacts must match,
/// and what this build can do.
fn long_version() -> &'static str {
    let features: Vec<&str> = [
        (cfg!(feature = "cranelift"), "cranelift"),
        (cfg!(feature = "precompile"), "precompile"),
        (cfg!(feature = "onnxruntime"), "onnxruntime"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let text = format!(
        "{}\ntarget: {}\nwasmtime: {}\nfeatures: {}",
        env!("CARGO_PKG_VERSION"),
        outpost_host::engine::TARGET,
        outpost_host::engine::WASMTIME_VERSION,
        if features.is_empty() {
            "none (no compiler: runs precompiled bundles only; tract only)".to_owned()
        } else {
            features.join(", ")
        }
    );
    Box::leak(text.into_boxed_str())
}

/// Outpost runs pipelines of sandboxed WebAssembly stages on edge devices.
/// Stages call models through wasi-nn; the host preloads the models and runs
/// them with tract or, where the pipeline or --backend asks, ONNX Runtime.
#[derive(Parser)]
#[command(name = "outpost", version, long_version = long_version(), about, long_about = None)]
struct Cli {
    /// Print more: Wasm backtraces of stages that trap.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// How instances get memory: `pooling` (fast, reserves address space up
    /// front), `on-demand`, or `auto` (pooling where the address space allows).
    /// [default: auto]
    #[arg(long, global = true, value_parser = ["auto", "pooling", "on-demand"])]
    allocator: Option<String>,
    /// How stages are kept inside their memory: `guard-pages` (fastest; 4 GiB
    /// of address space per memory), `explicit` (bounds checks in compiled
    /// code; fits 39-bit boards and `ulimit -v`), or `auto` (guard pages where
    /// the address space allows). [default: auto]
    #[arg(long, global = true, value_parser = ["auto", "guard-pages", "explicit"])]
    memory_bounds: Option<String>,
    /// Meter fuel, so stages may set limits.fuel (a deterministic CPU budget).
    #[arg(long, global = true)]
    fuel: bool,
    /// Run every model on this backend (`tract` or `onnxruntime`), whatever
    /// the pipeline names; the same signed bundle runs either way.
    #[arg(long, global = true, value_name = "BACKEND")]
    backend: Option<BackendName>,
    /// ONNX Runtime's shared library (default: $ORT_DYLIB_PATH, else
    /// libonnxruntime.so beside outpost or on the loader's path).
    #[arg(long, global = true, value_name = "PATH")]
    onnxruntime_lib: Option<PathBuf>,
    /// Intra-op threads of each ONNX Runtime session (default: ONNX
    /// Runtime's, one per physical core).
    #[arg(long, global = true, value_name = "N")]
    onnxruntime_threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum New {
    /// A stage skeleton in its own directory (outside this repository):
    /// manifest, source, a test input and its expected output, and a README
    /// with the commands that build it and try it (`outpost test-stage`).
    ///
    /// Example: outpost new stage my-filter --lang python --sdk-path ~/outpost/guest-sdk
    Stage {
        /// The stage's name: lowercase letters, digits, '-' and '_'.
        name: String,
        /// The language it is written in.
        #[arg(long, default_value = "rust", value_parser = ["rust", "python", "js", "c"])]
        lang: String,
        /// Where to write it [default: ./NAME]; it must not exist.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Take the guest SDK from this checkout (the Outpost repository's
        /// `guest-sdk/`) instead of crates.io.
        #[arg(long, value_name = "DIR", conflicts_with = "sdk_git")]
        sdk_path: Option<PathBuf>,
        /// Take the guest SDK from this git repository (the Outpost
        /// workspace) instead of crates.io.
        #[arg(long, value_name = "URL")]
        sdk_git: Option<String>,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline on one or more requests and print the results as JSON.
    ///
    /// Each --input or --input-file is one request. Text goes to a pipeline
    /// input that takes utf8; a file goes as raw bytes (u8), as text (utf8),
    /// or, ending in .json, as tensors: {"name": {"dims": [..], "type": "f32",
    /// "data": [..]}, ...}.
    ///
    /// Example: outpost run host/pipelines/demo/intent.toml --input "stop the conveyor"
    Run {
        /// A signed bundle (directory or archive), or with --insecure-unsigned
        /// a pipeline file (TOML).
        pipeline: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
        /// Text for the pipeline's input, as [NAME=]TEXT. Repeat for more requests.
        #[arg(short, long, value_name = "[NAME=]TEXT")]
        input: Vec<String>,
        /// A file for the pipeline's input, as [NAME=]PATH. Repeat for more requests.
        #[arg(short = 'f', long, value_name = "[NAME=]PATH")]
        input_file: Vec<String>,
        /// Print what stages emit while they run (e.g. tokens as they are
        /// generated) as it comes, one JSON object per line
        /// ({"request", "stage", "partial"}), then the report on one line.
        #[arg(long)]
        stream: bool,
    },
    /// Start something new for a plugin author: `outpost new stage NAME`
    /// writes a buildable stage skeleton.
    New {
        #[command(subcommand)]
        what: New,
    },
    /// Run one stage's component alone, without a pipeline: on inputs given
    /// as text or tensors, with the config, models and files it needs.
    /// Prints its outputs as JSON, or with --expect compares them and exits
    /// non-zero, naming each difference, when they are not as expected.
    ///
    /// Example: outpost test-stage target/wasm32-wasip2/release/my_stage.wasm
    /// --input-file input.json --config top_k=3 --file labels=labels.txt
    /// --expect expected.json
    TestStage {
        /// The stage's component (.wasm).
        component: PathBuf,
        /// Text for one of the stage's inputs, as NAME=TEXT. Repeat for more inputs.
        #[arg(short, long, value_name = "NAME=TEXT")]
        input: Vec<String>,
        /// Tensors for the stage's inputs, as JSON: {"NAME": {"dims": [..],
        /// "type": "f32", "data": [..]}, ...} (a string is utf8 text).
        #[arg(short = 'f', long, value_name = "PATH")]
        input_file: Vec<PathBuf>,
        /// One key of the stage's config, as KEY=VALUE (VALUE in TOML: 3,
        /// 0.5, true, "text", [1, 2]; a bare word is text). Repeat for more.
        #[arg(short, long, value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// A model the stage loads by NAME, from the ONNX file at PATH.
        #[arg(long, value_name = "NAME=PATH")]
        model: Vec<String>,
        /// A file the stage opens by NAME.
        #[arg(long, value_name = "NAME=PATH")]
        file: Vec<String>,
        /// The outputs expected, as tensors in JSON (those named are compared;
        /// others are ignored).
        #[arg(long, value_name = "PATH")]
        expect: Option<PathBuf>,
        /// How far an f32/f64 output may be from the expected value (relative
        /// above 1 in magnitude).
        #[arg(long, default_value_t = 1e-5)]
        tolerance: f64,
    },
    /// Serve signed bundles as KServe v2 models over HTTP and gRPC, until
    /// SIGTERM or SIGINT (then drain: requests in flight finish).
    ///
    /// Settings come from the config file (/etc/outpost/outpost.toml, or
    /// --config); flags override it. Listens on loopback unless configured
    /// otherwise; a public address needs TLS and a token file, or
    /// --insecure-listen.
    ///
    /// Example: outpost serve --trust root.json intent-demo.bundle
    Serve {
        /// Signed bundles to serve (replace the config file's `bundles`).
        bundles: Vec<PathBuf>,
        /// The configuration file [default: /etc/outpost/outpost.toml, if present].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Trust root(s), oldest first (replace the config's `trust`).
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// Device state directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Device policy (TOML).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// HTTP address, IP:PORT [default: 127.0.0.1:8000].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// gRPC address, IP:PORT, or "" for none [default: 127.0.0.1:8001].
        #[arg(long, value_name = "ADDR")]
        grpc_listen: Option<String>,
        /// Allow a non-loopback address without TLS and tokens.
        #[arg(long)]
        insecure_listen: bool,
        /// Log lines as `human` text or `json` objects [default: human].
        #[arg(long, value_parser = ["human", "json"])]
        log_format: Option<String>,
        /// Compile every component afresh instead of using the precompiled cache.
        #[arg(long)]
        no_cache: bool,
        /// Check the configuration and bundles (verify, load), then exit.
        #[arg(long)]
        check: bool,
    },
    /// Load a pipeline and show its models, stages and the tensors between them.
    Inspect {
        /// A signed bundle, or with --insecure-unsigned a pipeline file.
        pipeline: PathBuf,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Create a signing key: the secret (mode 0600) at PATH, the public key at PATH.pub.
    Keygen {
        /// Where to write the secret key.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Create a trust root: the publisher keys a device trusts, how many must
    /// sign, until when. To rotate, create a higher version signed by the
    /// threshold of the old keys and of the new.
    Root {
        /// A public key file (PATH.pub from keygen). Repeatable.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Signatures a bundle needs.
        #[arg(long)]
        threshold: u32,
        /// RFC 3339 expiry, e.g. 2027-12-31T00:00:00Z.
        #[arg(long)]
        expires: String,
        /// Root version; each rotation increases it.
        #[arg(long, default_value_t = 1)]
        version: u64,
        /// Key id to refuse from now on. Repeatable.
        #[arg(long)]
        revoke: Vec<String>,
        /// Secret key to sign the root with. Repeatable.
        #[arg(long = "sign")]
        sign: Vec<PathBuf>,
        /// Where to write the root (JSON, a DSSE envelope).
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Make an unsigned bundle directory from a pipeline: every model,
    /// component and file becomes a blob named by its sha256.
    Bundle {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Bundle name (a-z 0-9 . _ -).
        #[arg(long)]
        name: String,
        /// Bundle version; devices refuse versions lower than one they accepted.
        #[arg(long)]
        version: u64,
        /// The directory to create.
        #[arg(short, long)]
        out: PathBuf,
        /// Also carry each component compiled to native code for these
        /// target triples (comma-separated, e.g.
        /// aarch64-unknown-linux-gnu,x86_64-unknown-linux-gnu), so hosts
        /// without a compiler can run the bundle and others skip compiling
        /// (where their policy allows precompiled code).
        #[arg(long, value_delimiter = ',', value_name = "TARGETS")]
        precompile: Vec<String>,
    },
    /// Add a signature to a bundle directory.
    Sign {
        /// The bundle directory.
        bundle: PathBuf,
        /// The secret key.
        #[arg(long)]
        key: PathBuf,
    },
    /// Pack a bundle directory into one archive file for transport.
    Pack {
        /// The bundle directory.
        bundle: PathBuf,
        /// The archive to write.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Check a bundle against trust roots: who signed, whether the threshold is
    /// met, every blob's digest. Exits non-zero if anything fails.
    Verify {
        /// The bundle (directory or archive).
        bundle: PathBuf,
        /// Trust root(s), oldest first, continuing from the root this device
        /// accepted before (which is used when none is given).
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// Device state directory (accepted versions).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Device policy (TOML), e.g. requiring provenance from named builders.
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Attach a signed provenance statement (in-toto / SLSA v1 in DSSE) to a
    /// bundle directory: which source and builder produced its digests.
    Provenance {
        /// The bundle directory.
        bundle: PathBuf,
        /// The builder's secret key.
        #[arg(long)]
        key: PathBuf,
        /// The builder's identity, e.g. https://ci.example.com/outpost-builder.
        #[arg(long)]
        builder: String,
        /// The source repository.
        #[arg(long)]
        repo: String,
        /// The source commit.
        #[arg(long)]
        commit: String,
    },
    /// Print signed evidence of what this device runs: host version and binary
    /// digest, device key, bundle and every stage and model digest, the nonce.
    Attest {
        /// The verifier's nonce.
        #[arg(long)]
        nonce: String,
        /// Device state directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Check a device's evidence against its public key, the nonce sent and
    /// the bundle it should run. Exits non-zero on any mismatch.
    VerifyEvidence {
        /// The evidence (JSON from `outpost attest`).
        evidence: PathBuf,
        /// The device's public key file (STATE/device.key.pub).
        #[arg(long)]
        device_key: PathBuf,
        /// The nonce that was sent.
        #[arg(long)]
        nonce: String,
        /// The bundle the device should run.
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Trust root(s) for --bundle, oldest first.
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// Oldest acceptable evidence, in seconds.
        #[arg(long, default_value_t = 300)]
        max_age_s: i64,
        /// State directory used while opening --bundle.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },

    /// Fleet repositories: make one, point groups at bundles, re-sign.
    Fleet {
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// Add a signed bundle to a fleet repository: its blobs (those the
    /// repository lacks) and its head, checked against --trust first.
    Publish {
        /// The bundle (directory or archive).
        bundle: PathBuf,
        #[command(flatten)]
        repo: fleet::RepoArgs,
        /// The publishers' trust root(s), oldest first.
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// State directory used while checking the bundle.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Push the blobs to this OCI repository (oci://HOST[:PORT]/REPO:TAG,
        /// or oci+http:// without TLS) instead of the repository's blobs/;
        /// devices fetch them from the registry.
        #[arg(long, value_name = "REFERENCE")]
        oci: Option<String>,
    },
    /// Push a signed bundle to an OCI registry as an artifact
    /// (oci://HOST[:PORT]/REPO:TAG, or oci+http:// for a registry without
    /// TLS); prints the reference pinned by digest.
    Push {
        /// The bundle (directory or archive).
        bundle: PathBuf,
        /// Where to: oci://HOST[:PORT]/REPO:TAG.
        reference: String,
        /// The publishers' trust root(s), oldest first.
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// State directory used while checking the bundle.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Check the fleet repository once and install this group's version if
    /// it is not what the device runs: fetch what is missing, verify at both
    /// layers, load, then make it current. Prints a JSON report.
    Update {
        /// One check, then exit (the service checks on its own).
        #[arg(long, required = true)]
        once: bool,
        #[command(flatten)]
        args: fleet::UpdateArgs,
        /// Compile every component afresh instead of using the precompiled cache.
        #[arg(long)]
        no_cache: bool,
    },
    /// Show what this device runs from its fleet, and what it ran before.
    Status {
        /// Device state directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },

    /// Run a wasi-nn program built for wasm32-wasip1 (the witx `wasi_ephemeral_nn`
    /// ABI) against preloaded models, which it loads by name.
    ///
    /// Example: outpost exec prog.wasm --model intent=intent.onnx -- 101 2644 102
    Exec {
        /// The program (a core module with `_start`).
        program: PathBuf,
        /// A model to preload, as NAME=PATH (ONNX, run by tract unless
        /// --backend says otherwise). Repeatable.
        #[arg(short, long, value_name = "NAME=PATH")]
        model: Vec<String>,
        /// Wall-clock limit in milliseconds.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
        /// Arguments passed to the program.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// Where a pipeline comes from and how it is trusted.
#[derive(clap::Args)]
struct SourceArgs {
    /// Trust root(s) to verify a bundle against, oldest first. The device
    /// keeps the newest root it accepted and moves forward only: a chain
    /// must continue from it (consecutive versions), and without --trust it
    /// is used as is.
    #[arg(long)]
    trust: Vec<PathBuf>,
    /// Run a pipeline file without any signature check. Development only.
    #[arg(long)]
    insecure_unsigned: bool,
    /// Device state directory (accepted bundle versions, staging, the
    /// precompiled component cache).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Compile every component afresh instead of using the precompiled cache.
    #[arg(long)]
    no_cache: bool,
    /// Device policy (TOML), e.g. requiring provenance from named builders.
    #[arg(long)]
    policy: Option<PathBuf>,
}

/// Writing a command's output to stdout failed.
#[derive(Debug)]
struct StdoutClosed(std::io::Error);

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing the output to stdout: {}", self.0)
    }
}

impl std::error::Error for StdoutClosed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    match dispatch(cli) {
        Ok(code) => code,
        // The reader took what it wanted and left, as `head` and `grep -q`
        // do; the work is done, so this is success, quietly.
        Err(error)
            if error
                .downcast_ref::<StdoutClosed>()
                .is_some_and(|e| e.0.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            if verbose
                && let Some(trace) = error.downcast_ref::<RunError>().and_then(|e| match e {
                    RunError::Stage(s) => s.backtrace(),
                    _ => None,
                })
            {
                eprintln!("wasm backtrace:\n{trace}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: libraries that
/// put their cause's text in their own message (tough does) would otherwise
/// repeat it at every level of `{:#}`.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    let options = EngineOptions {
        allocator: match cli.allocator.as_deref() {
            Some("pooling") => Some(Allocator::Pooling),
            Some("on-demand") => Some(Allocator::OnDemand),
            _ => None,
        },
        bounds: match cli.memory_bounds.as_deref() {
            Some("guard-pages") => Some(Bounds::GuardPages),
            Some("explicit") => Some(Bounds::Explicit),
            _ => None,
        },
        fuel: cli.fuel,
        ..EngineOptions::default()
    };
    let backends = BackendOptions {
        force: cli.backend,
        onnxruntime_library: cli.onnxruntime_lib,
        onnxruntime_threads: cli.onnxruntime_threads,
    };
    let verbose = cli.verbose;
    let host = || -> Result<Host> {
        let host = Host::new(&options)?.with_backend_options(backends.clone());
        if verbose {
            eprintln!("engine: {}", host.runtime().layout());
        }
        Ok(host)
    };
    match cli.command {
        Command::Run {
            pipeline,
            source,
            input,
            input_file,
            stream,
        } => {
            let host = cached(host()?, &source)?;
            let pipeline = load(&host, &pipeline, &source, true)?;
            requests::run(&pipeline, &input, &input_file, stream)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::New {
            what:
                New::Stage {
                    name,
                    lang,
                    dir,
                    sdk_path,
                    sdk_git,
                },
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = match (&sdk_path, &sdk_git) {
                (Some(path), _) => new_stage::Sdk::Path(path),
                (None, Some(url)) => new_stage::Sdk::Git(url),
                (None, None) => new_stage::Sdk::Published,
            };
            new_stage::stage(new_stage::Lang::parse(&lang)?, &name, &dir, &sdk)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::TestStage {
            component,
            input,
            input_file,
            config,
            model,
            file,
            expect,
            tolerance,
        } => {
            let ok = test_stage::run(
                &host()?,
                &test_stage::Args {
                    component: &component,
                    inputs: &input,
                    input_files: &input_file,
                    config: &config,
                    models: &model,
                    files: &file,
                    expect: expect.as_deref(),
                    tolerance,
                },
            )?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Keygen { out } => trust::keygen(&out).map(|()| ExitCode::SUCCESS),
        Command::Root {
            keys,
            threshold,
            expires,
            version,
            revoke,
            sign,
            out,
        } => trust::root_create(trust::RootArgs {
            keys: &keys,
            threshold,
            expires: &expires,
            version,
            revoke: &revoke,
            sign: &sign,
            out: &out,
        })
        .map(|()| ExitCode::SUCCESS),
        Command::Bundle {
            pipeline,
            name,
            version,
            out,
            precompile,
        } => {
            let bundle = outpost_host::bundling::create_bundle(
                &pipeline,
                &name,
                version,
                &precompile,
                &out,
            )?;
            outln!(
                "bundle '{name}' version {version} -> {} ({} blobs, manifest {}); sign it with: outpost sign {} --key KEY",
                out.display(),
                bundle.manifest().blobs.len(),
                bundle.manifest_digest(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign { bundle, key } => trust::sign(&bundle, &key).map(|()| ExitCode::SUCCESS),
        Command::Pack { bundle, out } => {
            outpost_signing::bundle::pack(&bundle, &out)?;
            outln!("{} -> {}", bundle.display(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            bundle,
            trust,
            state_dir,
            policy,
        } => {
            let policy = trust::policy(policy.as_deref())?;
            trust::verify(
                &bundle,
                &trust,
                &policy,
                &trust::state_dir(state_dir.as_deref()),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Provenance {
            bundle,
            key,
            builder,
            repo,
            commit,
        } => {
            trust::attach_provenance(&bundle, &key, &builder, &repo, &commit)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Attest { nonce, state_dir } => {
            trust::attest(&trust::state_dir(state_dir.as_deref()), &nonce)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::VerifyEvidence {
            evidence,
            device_key,
            nonce,
            bundle,
            trust,
            max_age_s,
            state_dir,
        } => {
            trust::verify_evidence(trust::EvidenceArgs {
                evidence: &evidence,
                device_key: &device_key,
                nonce: &nonce,
                bundle: bundle.as_deref(),
                trust: &trust,
                max_age_s,
                state: &trust::state_dir(state_dir.as_deref()),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            bundles,
            config,
            trust,
            state_dir,
            policy,
            listen,
            grpc_listen,
            insecure_listen,
            log_format,
            no_cache,
            check,
        } => {
            let flags = serve::config::Flags {
                config,
                bundles,
                trust,
                state_dir,
                policy,
                listen,
                grpc_listen,
                insecure_listen,
                log_format: match log_format.as_deref() {
                    Some("json") => Some(serve::config::LogFormat::Json),
                    Some(_) => Some(serve::config::LogFormat::Human),
                    None => None,
                },
                no_cache,
                allocator: cli.allocator,
                memory_bounds: cli.memory_bounds,
                fuel: cli.fuel,
                backend: backends.force.map(|b| b.to_string()),
                onnxruntime_lib: backends.onnxruntime_library,
                onnxruntime_threads: backends.onnxruntime_threads,
            };
            serve::run(flags, check)
        }
        Command::Fleet { command } => fleet::fleet(command).map(|()| ExitCode::SUCCESS),
        Command::Publish {
            bundle,
            repo,
            trust,
            state_dir,
            oci,
        } => fleet::publish(
            &bundle,
            &repo,
            &trust,
            &trust::state_dir(state_dir.as_deref()),
            oci.as_deref(),
        )
        .map(|()| ExitCode::SUCCESS),
        Command::Push {
            bundle,
            reference,
            trust,
            state_dir,
        } => fleet::push(
            &bundle,
            &reference,
            &trust,
            &trust::state_dir(state_dir.as_deref()),
        )
        .map(|()| ExitCode::SUCCESS),
        Command::Update {
            once: _,
            args,
            no_cache,
        } => {
            let policy = trust::policy(args.policy())?;
            let mut host = host()?.with_precompiled(policy.precompiled.allow);
            if !no_cache {
                let device = DeviceState::open(&args.state_dir())?;
                host = host.with_component_cache(&device.cache_dir(), device.cache_key()?);
            }
            fleet::update(&args, host).map(|()| ExitCode::SUCCESS)
        }
        Command::Status { state_dir } => {
            fleet::status(&trust::state_dir(state_dir.as_deref())).map(|()| ExitCode::SUCCESS)
        }
        Command::Inspect { pipeline, source } => {
            let host = cached(host()?, &source)?;
            let pipeline = load(&host, &pipeline, &source, false)?;

            outln!("{}", report::json_text(&report::inspect(&pipeline)));
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec {
            program,
            model,
            timeout_ms,
            args,
        } => {
            let host = host()?;
            let models = model
                .iter()
                .map(|m| preload(m, &backends))
                .collect::<Result<Vec<_>>>()?;
            let code = outpost_host::compat::exec(
                host.runtime(),
                &program,
                &models,
                &args,
                Duration::from_millis(timeout_ms),
            )?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}

/// The host as the device's policy and cache settings make it: precompiled
/// artifacts where the policy allows them, the component cache unless
/// `--no-cache`.
fn cached(host: Host, source: &SourceArgs) -> Result<Host> {
    let policy = trust::policy(source.policy.as_deref())?;
    let host = host.with_precompiled(policy.precompiled.allow);
    if source.no_cache {
        return Ok(host);
    }
    let device = DeviceState::open(&trust::state_dir(source.state_dir.as_deref()))?;
    // The MAC key lives beside the device key, not in the cache directory.
    let key = device.cache_key()?;
    Ok(host.with_component_cache(&device.cache_dir(), key))
}

/// Loads a signed bundle, or an unsigned pipeline file when the operator
/// explicitly asks for it. `accept` records the bundle's version so older
/// ones are refused later.
fn load(host: &Host, path: &Path, source: &SourceArgs, accept: bool) -> Result<Pipeline> {
    let is_pipeline_file = path.extension().is_some_and(|e| e == "toml");
    if is_pipeline_file {
        if !source.insecure_unsigned {
            bail!(
                "{} is an unsigned pipeline file; run a signed bundle (outpost bundle, sign, then run BUNDLE --trust ROOT), or pass --insecure-unsigned while developing",
                path.display()
            );
        }
        eprintln!(
            "warning: --insecure-unsigned: running {} without any signature check",
            path.display()
        );
        return Ok(host.load_pipeline(path)?);
    }
    if source.insecure_unsigned {
        bail!("--insecure-unsigned applies to pipeline files only; a bundle is always verified");
    }
    let device = DeviceState::open(&trust::state_dir(source.state_dir.as_deref()))?;
    let policy = trust::policy(source.policy.as_deref())?;
    let (verified, _provenance, _staging) = device.open_verified(path, &source.trust, &policy)?;
    let pipeline = host.load_bundle(&verified)?;
    if accept {
        device.accept(&verified, &running_bundle(&verified, &pipeline))?;
    }
    Ok(pipeline)
}

fn running_bundle(
    verified: &outpost_signing::bundle::VerifiedBundle,
    pipeline: &Pipeline,
) -> outpost_signing::evidence::RunningBundle {
    let info = &verified.manifest().bundle;
    outpost_signing::evidence::RunningBundle {
        name: info.name.clone(),
        version: info.version,
        manifest: verified.manifest_digest().to_string(),
        stages: pipeline
            .stages()
            .iter()
            .map(|s| {
                (
                    s.stage().name().to_owned(),
                    s.component_digest().to_string(),
                )
            })
            .collect(),
        precompiled: pipeline
            .stages()
            .iter()
            .filter_map(|s| match s.code_origin() {
                outpost_host::CodeOrigin::Precompiled(artifact) => {
                    Some((s.stage().name().to_owned(), artifact.to_string()))
                }
                _ => None,
            })
            .collect(),
        models: pipeline
            .models()
            .iter()
            .map(|m| (m.name.clone(), m.digest.to_string()))
            .collect(),
    }
}

fn preload(arg: &str, backends: &BackendOptions) -> Result<(String, SharedModel)> {
    let Some((name, path)) = arg.split_once('=') else {
        bail!("--model {arg}: expected NAME=PATH, e.g. --model intent=intent.onnx");
    };
    let bytes =
        std::fs::read(path).with_context(|| format!("model '{name}': cannot read {path}"))?;
    let model = load_model(name, &bytes, ModelSettings::default(), backends)
        .with_context(|| format!("model '{name}' ({path})"))?;
    Ok((name.to_owned(), model))
}
