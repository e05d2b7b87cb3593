//! `outpost serve`: the device service. Loads and verifies signed bundles
//! as `run` does, then serves each pipeline as a KServe v2 model over HTTP
//! and gRPC until SIGTERM or SIGINT, when it drains: readiness goes false,
//! listeners close, requests in flight finish within the grace period.

pub mod config;
mod error;
mod generate;
mod grpc;
mod http;
mod kserve;
mod listen;
mod metrics;
mod models;
mod updates;

use crate::trust;
use anyhow::{Context, Result, bail};
use config::{LogFormat, Settings};
use hyper_util::server::graceful::GracefulShutdown;
use listen::{Limits, Protocol};
use models::{App, Served};
use outpost_host::backend::{BackendName, BackendOptions};
use outpost_host::device::DeviceState;
use outpost_host::{Allocator, Bounds, EngineOptions, Host};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Runs `outpost serve` (or, with `check`, validates and exits).
pub fn run(flags: config::Flags, check: bool) -> Result<ExitCode> {
    let settings = Settings::resolve(flags)?;
    init_logs(settings.log_format);
    let loaded = load(&settings, check)?;
    let models = loaded.models.clone();
    if check {
        outln!("configuration: {}", settings.source);
        for m in &models {
            outln!(
                "model '{}' version {}: inputs {}; outputs {}; {} at once, queue {}, deadline {} ms",
                m.name,
                m.version,
                list(&m.inputs),
                list(&m.outputs),
                m.admission().concurrency,
                m.admission().queue,
                m.admission().deadline.as_millis()
            );
        }
        outln!(
            "ok: {} bundle(s) verified and loaded; would listen on http {}{}",
            models.len(),
            settings.http,
            settings
                .grpc
                .map(|g| format!(", grpc {g}"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let token = match &settings.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("listen.token_file {}: cannot read it", path.display()))?;
            let token = text.trim();
            if token.len() < 16 {
                bail!(
                    "listen.token_file {}: the token must be at least 16 characters (e.g. 32 random hex digits)",
                    path.display()
                );
            }
            Some(token.as_bytes().to_vec())
        }
        None => None,
    };
    let tls = match &settings.tls {
        Some((cert, key)) => Some((
            listen::tls_acceptor(cert, key, Protocol::Http)?,
            listen::tls_acceptor(cert, key, Protocol::Grpc)?,
        )),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outpost-serve")
        .build()
        .context("cannot start the async runtime")?;
    let mut app = App::new(models, token);
    app.state_dir = Some(trust::state_dir(settings.state_dir.as_deref()));
    let app = Arc::new(app);
    if let Some(updates) = settings.updates.clone() {
        updates::start(updates::Agent::new(
            &settings,
            updates,
            loaded,
            app.clone(),
        )?)?;
    }
    let follows_fleet = settings.updates.is_some();
    let state = trust::state_dir(settings.state_dir.as_deref());
    let code = runtime.block_on(serve(settings, app, tls));
    // Runs that outlived their request (answered 504 meanwhile) are not
    // waited for: the drain is over.
    runtime.shutdown_background();
    if follows_fleet
        && code.is_ok()
        && let Err(e) = outpost_host::fleet::agent::probation_stopped_cleanly(&state)
    {
        tracing::warn!(error = %e, "cannot record the clean stop during probation");
    }
    code
}

fn list(tensors: &[(String, Option<outpost_host::TensorSpec>)]) -> String {
    tensors
        .iter()
        .map(|(n, s)| {
            let (_, datatype, shape) = kserve::tensor_metadata(n, s.as_ref());
            format!("{n} {datatype}{shape:?}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("OUTPOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // A second initialisation (tests) keeps the first.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// What `load` made: the host, the models, and what the update agent needs.
struct Loaded {
    host: Host,
    models: Vec<Arc<Served>>,
    device: DeviceState,
    policy: outpost_host::policy::DevicePolicy,
    /// The version installed from the fleet, loaded but not yet accepted
    /// (the service restarted during its probation), and how long its
    /// probation has run.
    on_probation: Option<(updates::Candidate, std::time::Duration)>,
    /// Why the version on probation was rolled back at start, if it was.
    rolled_back: Option<String>,
}

/// Verifies and loads every bundle (and, with `[updates]`, the version the
/// fleet installed last); any failure stops the start.
fn load(settings: &Settings, check: bool) -> Result<Loaded> {
    let options = EngineOptions {
        allocator: match settings.allocator.as_deref() {
            None | Some("auto") => None,
            Some("pooling") => Some(Allocator::Pooling),
            Some("on-demand") => Some(Allocator::OnDemand),
            Some(other) => bail!(
                "{}: engine.allocator '{other}' is not one of auto, pooling, on-demand",
                settings.source
            ),
        },
        bounds: match settings.memory_bounds.as_deref() {
            None | Some("auto") => None,
            Some("guard-pages") => Some(Bounds::GuardPages),
            Some("explicit") => Some(Bounds::Explicit),
            Some(other) => bail!(
                "{}: engine.memory_bounds '{other}' is not one of auto, guard-pages, explicit",
                settings.source
            ),
        },
        fuel: settings.fuel,
        pool_instances: settings
            .pool_instances
            .unwrap_or(EngineOptions::default().pool_instances),
        ..EngineOptions::default()
    };
    let backends = BackendOptions {
        force: settings
            .backend
            .as_deref()
            .map(str::parse::<BackendName>)
            .transpose()
            .map_err(|e| anyhow::anyhow!("{}: engine.backend: {e}", settings.source))?,
        onnxruntime_library: settings.onnxruntime_lib.clone(),
        onnxruntime_threads: settings.onnxruntime_threads,
    };
    let mut host = Host::new(&options)?.with_backend_options(backends);
    tracing::info!(layout = %host.runtime().layout(), "engine ready");
    let device = DeviceState::open(&trust::state_dir(settings.state_dir.as_deref()))?;
    if settings.component_cache {
        host = host.with_component_cache(&device.cache_dir(), device.cache_key()?);
    }
    let policy = trust::policy(settings.policy.as_deref())?;
    host = host.with_precompiled(policy.precompiled.allow);
    let mut served: Vec<Arc<Served>> = Vec::new();
    for path in &settings.bundles {
        let Bundle {
            verified,
            pipeline,
            running,
        } = load_bundle(&host, &device, settings, &policy, path)?;
        if !check {
            device
                .accept(&verified, &running)
                .with_context(|| format!("bundle {}", path.display()))?;
        }
        add_model(&mut served, settings, &verified, pipeline, path)?;
    }
    let mut on_probation = None;
    let mut rolled_back = None;
    if let Some(updates) = &settings.updates {
        let state = trust::state_dir(settings.state_dir.as_deref());
        let updater = updates::updater(&state, updates, &settings.trust)?;
        let fleet = FleetStart {
            updater: &updater,
            updates,
            check,
        };
        let (chosen, rollback) = fleet.choose(&host, &device, settings, &policy)?;
        rolled_back = rollback;
        if let Some((path, bundle, probation)) = chosen {
            let Bundle {
                verified,
                pipeline,
                running,
            } = bundle;
            if probation.is_none() && !check {
                device
                    .accept(&verified, &running)
                    .with_context(|| format!("bundle {}", path.display()))?;
            }
            let model = add_model(&mut served, settings, &verified, pipeline, &path)?;
            if let Some(record) = probation {
                on_probation = Some((
                    updates::Candidate {
                        installed: outpost_host::fleet::agent::installed_of(&verified),
                        verified,
                        running,
                        served: model,
                    },
                    record.served(),
                ));
            }
        }
    }
    // With the pooling allocator, instances come from a fixed pool: every
    // stage of every model may hold `concurrency` of them at once.
    let needed: usize = served
        .iter()
        .map(|s| s.admission().concurrency * s.pipeline.stages().len())
        .sum();
    if let Some(pool) = host.runtime().pool_instances()
        && needed > pool as usize
    {
        bail!(
            "the models need up to {needed} stage instances at once (requests.concurrency x stages, summed), more than the instance pool's {pool}; raise engine.pool_instances, lower requests.concurrency, or use engine.allocator = \"on-demand\""
        );
    }
    if settings.warm && !check {
        for s in &served {
            s.pipeline
                .warm(s.admission().concurrency)
                .with_context(|| format!("model '{}': warming its stages", s.name))?;
        }
    }
    for name in settings.pipelines.keys() {
        if !served.iter().any(|s| &s.name == name) {
            bail!(
                "{}: [pipelines.{name}] configures a model no bundle provides; the bundles provide: {}",
                settings.source,
                served
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(Loaded {
        host,
        models: served,
        device,
        policy,
        on_probation,
        rolled_back,
    })
}

/// Serves a loaded bundle as a model named after it.
fn add_model(
    served: &mut Vec<Arc<Served>>,
    settings: &Settings,
    verified: &outpost_signing::bundle::VerifiedBundle,
    pipeline: outpost_host::Pipeline,
    path: &Path,
) -> Result<Arc<Served>> {
    let info = &verified.manifest().bundle;
    if served.iter().any(|s| s.name == info.name) {
        bail!(
            "two bundles are named '{}' ({} is the second); a model name is served once",
            info.name,
            path.display()
        );
    }
    tracing::info!(
        model = %info.name,
        version = info.version,
        manifest = %verified.manifest_digest(),
        "bundle verified and loaded"
    );
    let model = Arc::new(Served::new(
        info.name.clone(),
        info.version.to_string(),
        pipeline,
        settings.admission(&info.name),
    ));
    served.push(model.clone());
    Ok(model)
}

/// A bundle verified, loaded and health-checked.
struct Bundle {
    verified: outpost_signing::bundle::VerifiedBundle,
    pipeline: outpost_host::Pipeline,
    running: outpost_signing::evidence::RunningBundle,
}

fn load_bundle(
    host: &Host,
    device: &DeviceState,
    settings: &Settings,
    policy: &outpost_host::policy::DevicePolicy,
    path: &Path,
) -> Result<Bundle> {
    let context = || format!("bundle {}", path.display());
    let (verified, _provenance, _staging) = device
        .open_verified(path, &settings.trust, policy)
        .with_context(context)?;
    let pipeline = host.load_bundle(&verified).with_context(context)?;
    pipeline.run_checks().with_context(context)?;
    let running = crate::running_bundle(&verified, &pipeline);
    Ok(Bundle {
        verified,
        pipeline,
        running,
    })
}

/// Picks what the service runs from the fleet at start.
struct FleetStart<'a> {
    updater: &'a outpost_host::fleet::Updater,
    updates: &'a config::UpdateSettings,
    check: bool,
}

/// The fleet version to serve: its folder, the loaded bundle, and its
/// probation record when it is still on probation.
type Chosen = (
    std::path::PathBuf,
    Bundle,
    Option<outpost_host::fleet::agent::ProbationRecord>,
);

impl FleetStart<'_> {
    /// The fleet's current version. One above what the device accepted is
    /// still on probation (the service stopped during it): the start is
    /// counted, and when the service has started too often with it on
    /// probation (it may be what kills the service), or it no longer
    /// loads, it is rejected and the previous version serves instead.
    /// Also returns why it rolled back, if it did.
    fn choose(
        &self,
        host: &Host,
        device: &DeviceState,
        settings: &Settings,
        policy: &outpost_host::policy::DevicePolicy,
    ) -> Result<(Option<Chosen>, Option<String>)> {
        let current = self.updater.current()?;
        let Some(installed) = current.current else {
            return Ok((None, None));
        };
        let dir = self.updater.installed_dir(&installed);
        let on_probation = device
            .accepted(&installed.bundle)?
            .is_none_or(|(accepted, _)| accepted < installed.version);
        if !on_probation || self.check {
            let bundle = load_bundle(host, device, settings, policy, &dir)?;
            return Ok((Some((dir, bundle, None)), None));
        }
        // Rejected already: the service stopped between recording that
        // and making the previous version current again.
        let rejected = self
            .updater
            .rejected()
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.manifest_digest == installed.manifest_digest);
        let reason = if let Some(rejected) = rejected {
            rejected.reason
        } else {
            // Bookkeeping that cannot be written must not stop the service.
            let record = self
                .updater
                .resume_probation(&installed)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot record the start during probation");
                    outpost_host::fleet::agent::ProbationRecord {
                        manifest_digest: installed.manifest_digest.clone(),
                        served_ms: 0,
                        starts: 1,
                    }
                });
            if record.starts > self.updates.max_restarts {
                format!(
                    "the service started {} times with it on probation (updates.max_restarts is {})",
                    record.starts, self.updates.max_restarts
                )
            } else {
                match load_bundle(host, device, settings, policy, &dir) {
                    Ok(bundle) => return Ok((Some((dir, bundle, Some(record))), None)),
                    Err(e) => format!("it no longer loads: {e:#}"),
                }
            }
        };
        tracing::warn!(
            model = %installed.bundle,
            version = installed.version,
            reason,
            "rolling back the version on probation"
        );
        let warn = |what: &str, e: outpost_host::fleet::FleetError| {
            tracing::warn!(error = %e, "cannot record {what}");
        };
        if let Err(e) = self.updater.reject(&installed, &reason) {
            warn("the rejection", e);
        }
        let back = self.updater.roll_back().unwrap_or_else(|e| {
            warn("the rollback", e);
            current.previous.clone()
        });
        if let Err(e) = self.updater.end_probation() {
            warn("the end of probation", e);
        }
        let why = format!(
            "{} version {} rolled back at start: {reason}",
            installed.bundle, installed.version
        );
        let Some(previous) = back else {
            return Ok((None, Some(why)));
        };
        let dir = self.updater.installed_dir(&previous);
        let bundle = load_bundle(host, device, settings, policy, &dir)?;
        Ok((Some((dir, bundle, None)), Some(why)))
    }
}

async fn serve(
    settings: Settings,
    app: Arc<App>,
    tls: Option<(tokio_rustls::TlsAcceptor, tokio_rustls::TlsAcceptor)>,
) -> Result<ExitCode> {
    let bind = |address| async move {
        TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))
    };
    let mut signals = ShutdownSignals::new()?;
    let http_listener = bind(settings.http).await?;
    let grpc_listener = match settings.grpc {
        Some(address) => Some(bind(address).await?),
        None => None,
    };
    let (stop, stopped) = watch::channel(false);
    let graceful = Arc::new(GracefulShutdown::new());
    // Each listener has its own cap: connections squatting on one cannot
    // lock out the other (and its health checks).
    let limits = || Limits {
        header_read_timeout: settings.header_read_timeout,
        max_header_bytes: settings.max_header_bytes,
        connections: Arc::new(Semaphore::new(settings.max_connections)),
    };
    let http_address = http_listener.local_addr()?;
    let grpc_address = grpc_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let router = http::router(Arc::new(http::HttpState {
        app: app.clone(),
        max_body_bytes: settings.max_body_bytes,
        body_read_timeout: settings.body_read_timeout,
        openai_bodies: Arc::new(tokio::sync::Semaphore::new(
            app.models()
                .iter()
                .map(|m| m.admission().concurrency + m.admission().queue)
                .sum::<usize>()
                .max(1),
        )),
    }));
    let mut loops = Vec::new();
    loops.push(tokio::spawn(listen::accept_loop(
        http_listener,
        Protocol::Http,
        router,
        tls.as_ref().map(|t| t.0.clone()),
        limits(),
        stopped.clone(),
        graceful.clone(),
    )));
    if let Some(listener) = grpc_listener {
        loops.push(tokio::spawn(listen::accept_loop(
            listener,
            Protocol::Grpc,
            grpc::service(app.clone(), settings.max_body_bytes),
            tls.as_ref().map(|t| t.1.clone()),
            limits(),
            stopped.clone(),
            graceful.clone(),
        )));
    }
    tracing::info!(
        http = %http_address,
        grpc = %grpc_address.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        tls = tls.is_some(),
        models = app.models().len(),
        "listening"
    );
    let signal = signals.recv().await;
    tracing::info!(
        signal,
        grace_ms = settings.drain_grace.as_millis() as u64,
        "draining: not ready, no new connections, requests in flight finish"
    );
    app.drain();
    // Load balancers see "not ready" before connections are refused.
    tokio::time::sleep(settings.drain_delay).await;
    let _ = stop.send(true);
    for l in loops {
        let _ = l.await;
    }
    // The accept loops are done, so this is the last reference; the
    // connections hold watchers only.
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        tracing::error!("connections could not be told to finish; exiting");
        return Ok(ExitCode::FAILURE);
    };
    match tokio::time::timeout(settings.drain_grace, graceful.shutdown()).await {
        Ok(()) => {
            tracing::info!("drained; exiting");
            Ok(ExitCode::SUCCESS)
        }
        Err(_) => {
            tracing::warn!(
                "the grace period (requests.drain_grace_ms) ended with requests still in flight; exiting"
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made: made before
/// the listeners accept, so that a stop sent as soon as the service
/// answers (a supervisor, a test) drains it instead of killing it.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// The first of them to come.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
