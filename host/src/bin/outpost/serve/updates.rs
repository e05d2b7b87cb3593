//! The update agent inside `outpost serve`: on a thread of its own, it
//! checks the fleet repository every interval (with jitter), installs what
//! the group is assigned, loads it, runs its health checks, swaps it in
//! (requests in flight finish on the old version, new ones go to the new),
//! and watches it on probation: too many failed requests and the previous
//! version is swapped back, the new one rejected and not retried.
//!
//! A version is recorded as accepted (older ones refused from then on) only
//! once its probation passed, so a rollback never goes below what the
//! device accepted.

use super::Loaded;
use super::config::{Settings, UpdateSettings};
use super::metrics::KindLabel;
use super::models::{App, Served};
use anyhow::{Context, Result};
use outpost_host::Host;
use outpost_host::device::DeviceState;
use outpost_host::fleet::agent::{Installed, installed, installed_of, now};
use outpost_host::fleet::{FleetError, FleetStatus, UpdateOutcome, Updater, UpdaterOptions};
use outpost_host::policy::DevicePolicy;
use outpost_signing::bundle::VerifiedBundle;
use outpost_signing::evidence::RunningBundle;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a swap took: loading, checking and warming the new version
/// (off the request path), and replacing it in the model list (the only
/// moment requests can notice: a write lock).
struct SwapTimes {
    prepared: Duration,
    swapped: Duration,
}

/// The instance pool cannot hold the old and the new version at once.
#[derive(Debug)]
struct NoCapacity(String);

impl std::fmt::Display for NoCapacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoCapacity {}

/// The updater for these settings.
pub fn updater(state: &Path, settings: &UpdateSettings, trust: &[PathBuf]) -> Result<Updater> {
    Ok(Updater::new(
        state,
        UpdaterOptions {
            repo: settings.repository.clone(),
            group: settings.group.clone(),
            fleet_root: settings.fleet_root.clone(),
            trust: trust.to_vec(),
            stall: settings.stall,
            ca_file: settings.ca_file.clone(),
        },
    )?)
}

/// A version swapped in and not yet accepted.
pub struct Candidate {
    pub installed: Installed,
    pub verified: VerifiedBundle,
    pub running: RunningBundle,
    pub served: Arc<Served>,
}

struct Probation {
    candidate: Candidate,
    /// What it replaced (kept loaded for a rollback without delay).
    replaced: Option<Arc<Served>>,
    /// Time served on probation before this process started.
    credit: Duration,
    /// When this process took it on.
    started: Instant,
    /// When the time served was last written down.
    persisted: Instant,
}

impl Probation {
    fn new(candidate: Candidate, replaced: Option<Arc<Served>>, credit: Duration) -> Self {
        Self {
            candidate,
            replaced,
            credit,
            started: Instant::now(),
            persisted: Instant::now(),
        }
    }

    /// Time served on probation: the window counts only time the service
    /// ran with the version, never time it was down.
    fn served(&self) -> Duration {
        self.credit + self.started.elapsed()
    }
}

/// The agent and everything it works with.
pub struct Agent {
    updates: UpdateSettings,
    trust: Vec<PathBuf>,
    warm: bool,
    admission: Box<dyn Fn(&str) -> super::config::Admission + Send>,
    host: Host,
    device: DeviceState,
    policy: DevicePolicy,
    updater: Updater,
    app: Arc<App>,
    probation: Option<Probation>,
    /// A newer version installed while another was on probation: it is
    /// swapped in by the first check after the verdict.
    pending: Option<Installed>,
    status: FleetStatus,
}

impl Agent {
    pub fn new(
        settings: &Settings,
        updates: UpdateSettings,
        loaded: Loaded,
        app: Arc<App>,
    ) -> Result<Self> {
        let state = crate::trust::state_dir(settings.state_dir.as_deref());
        let updater = updater(&state, &updates, &settings.trust)?;
        let defaults = settings.defaults;
        let pipelines = settings.pipelines.clone();
        // The window runs on from the time served before the restart.
        let probation = loaded
            .on_probation
            .map(|(candidate, served)| Probation::new(candidate, None, served));
        let status = FleetStatus {
            phase: if probation.is_some() {
                "probation"
            } else if loaded.rolled_back.is_some() {
                "rolled-back"
            } else {
                "idle"
            }
            .into(),
            last_error_kind: loaded.rolled_back.as_ref().map(|_| "probation".into()),
            last_error: loaded.rolled_back,
            ..FleetStatus::default()
        };
        if status.last_error.is_some() {
            app.metrics.fleet_rollbacks.inc();
        }
        let agent = Self {
            updates,
            trust: settings.trust.clone(),
            warm: settings.warm,
            admission: Box::new(move |name| pipelines.get(name).copied().unwrap_or(defaults)),
            host: loaded.host,
            device: loaded.device,
            policy: loaded.policy,
            updater,
            app,
            probation,
            pending: None,
            status,
        };
        // What the last process recorded is not this one's state.
        agent.record();
        Ok(agent)
    }

    fn record(&self) {
        if let Err(e) = self.updater.record_status(&self.status) {
            tracing::warn!(error = %e, "cannot record the update status");
        }
    }

    /// The wait before the next check: the interval times 1 ± jitter.
    fn next_wait(&self) -> Duration {
        let mut byte = [0u8; 2];
        let unit = match getrandom::fill(&mut byte) {
            Ok(()) => f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX),
            Err(_) => 0.5,
        };
        let factor = 1.0 + self.updates.jitter * (2.0 * unit - 1.0);
        self.updates.interval.mul_f64(factor.max(0.0))
    }

    fn run(mut self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "update agent: cannot start its runtime; no updates");
                return;
            }
        };
        let mut next_check = Instant::now();
        loop {
            // Probation does not stop the checks, but they read metadata
            // only (bounded, quick): staleness and a newer target are seen
            // at once, and nothing long holds up the verdict. The newer
            // version is fetched and swapped in right after it.
            if self.probation.is_some() && self.judge() && self.pending.is_some() {
                next_check = Instant::now();
            }
            if Instant::now() >= next_check {
                if self.probation.is_some() {
                    self.check_metadata(&runtime);
                } else {
                    self.check(&runtime);
                }
                next_check = Instant::now() + self.next_wait();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One check: fetch and verify, and when something new is assigned,
    /// install, load, check and swap it in.
    fn check(&mut self, runtime: &tokio::runtime::Runtime) {
        self.status.phase = "checking".into();
        let result = runtime.block_on(self.updater.check(&self.device, &self.policy));
        self.status.last_check = Some(now());
        let app = self.app.clone();
        let metrics = &app.metrics;
        match result {
            Ok(report) => {
                metrics.fleet_stale.set(0);
                self.status.stale = false;
                self.status.metadata_expires = Some(report.metadata_expires.clone());
                self.status.target = Some(report.assignment.clone());
                self.status.last_error = None;
                self.status.last_error_kind = None;
                self.status.phase = "serving".into();
                self.pending = None;
                match &report.outcome {
                    UpdateOutcome::UpToDate => {}
                    UpdateOutcome::Rejected { reason } => {
                        tracing::debug!(
                            reason,
                            "the assigned version was rejected before; not retried"
                        );
                    }
                    UpdateOutcome::Staged { dir } => {
                        let target = installed(&report.assignment);
                        match self.swap_in(dir) {
                            Ok(times) => {
                                tracing::info!(
                                    model = %target.bundle,
                                    version = target.version,
                                    prepare_ms = times.prepared.as_millis() as u64,
                                    swap_us = times.swapped.as_micros() as u64,
                                    fetched_bytes = report.blob_bytes_fetched,
                                    fetched_blobs = report.blobs_fetched,
                                    reused_blobs = report.blobs_reused,
                                    "new version swapped in; on probation"
                                );
                                self.status.phase = "probation".into();
                            }
                            Err(e) => {
                                let reason = format!("{e:#}");
                                // Not the version's fault: no rejection.
                                let kind = if e.downcast_ref::<NoCapacity>().is_some() {
                                    "capacity"
                                } else {
                                    let _ = self.updater.reject(&target, &reason);
                                    "install"
                                };
                                tracing::warn!(model = %target.bundle, version = target.version, error = %reason, kind, "new version not swapped in; the current one keeps serving");
                                self.status.phase = "failed".into();
                                self.status.last_error = Some(reason);
                                self.status.last_error_kind = Some(kind.into());
                                metrics
                                    .fleet_check_failures
                                    .get_or_create(&KindLabel { kind: kind.into() })
                                    .inc();
                            }
                        }
                    }
                }
            }
            Err(e) => self.check_failed(&e),
        }
        self.record();
    }

    /// A check during probation: the fleet metadata and the group's
    /// assignment only. A newer target is remembered, to be fetched and
    /// swapped in once the version on probation has its verdict.
    fn check_metadata(&mut self, runtime: &tokio::runtime::Runtime) {
        let result = runtime.block_on(self.updater.assignment());
        self.status.last_check = Some(now());
        match result {
            Ok((assignment, expires)) => {
                self.app.metrics.fleet_stale.set(0);
                self.status.stale = false;
                self.status.metadata_expires = Some(expires);
                self.status.last_error = None;
                self.status.last_error_kind = None;
                self.status.phase = "probation".into();
                let target = installed(&assignment);
                let on_probation = self.probation.as_ref().map(|p| &p.candidate.installed);
                self.pending = (on_probation != Some(&target)).then(|| {
                    tracing::info!(
                        model = %target.bundle,
                        version = target.version,
                        "a newer version is assigned; it is fetched once the one on probation has its verdict"
                    );
                    target
                });
                self.status.target = Some(assignment);
            }
            Err(e) => self.check_failed(&e),
        }
        self.record();
    }

    fn check_failed(&mut self, e: &FleetError) {
        let metrics = &self.app.metrics;
        let stale = matches!(e, FleetError::Expired { .. });
        metrics.fleet_stale.set(i64::from(stale));
        metrics
            .fleet_check_failures
            .get_or_create(&KindLabel {
                kind: e.kind().into(),
            })
            .inc();
        tracing::warn!(error = %e, kind = e.kind(), "update check failed; serving what runs");
        self.status.stale = stale;
        self.status.phase = if stale { "stale" } else { "failed" }.into();
        self.status.last_error = Some(e.to_string());
        self.status.last_error_kind = Some(e.kind().into());
    }

    /// Loads the installed bundle, runs its checks, warms it, swaps it in
    /// and starts its probation.
    fn swap_in(&mut self, dir: &Path) -> Result<SwapTimes> {
        let started = Instant::now();
        let (verified, _provenance, _staging) = self
            .device
            .open_verified(dir, &self.trust, &self.policy)
            .with_context(|| format!("installed bundle {}", dir.display()))?;
        let pipeline = self.host.load_bundle(&verified).map_err(|e| {
            let full = matches!(
                &e,
                outpost_host::PipelineError::Stage(outpost_host::StageError::PoolExhausted { .. })
            );
            let e = anyhow::Error::new(e).context(format!("loading {}", dir.display()));
            if full {
                anyhow::Error::new(NoCapacity(format!(
                    "{e:#}; the version is tried again at the next check"
                )))
            } else {
                e
            }
        })?;
        let info = &verified.manifest().bundle;
        let admission = (self.admission)(&info.name);
        // Through the swap and the probation after it, the old version
        // stays loaded beside the new: both hold instances of the pool.
        if let Some(pool) = self.host.runtime().pool_instances() {
            let held: usize = self
                .app
                .models()
                .iter()
                .map(|s| s.admission().concurrency * s.pipeline.stages().len())
                .sum();
            let wanted = admission.concurrency * pipeline.stages().len();
            if held + wanted > pool as usize {
                return Err(anyhow::Error::new(NoCapacity(format!(
                    "the models served hold up to {held} stage instances and {} version {} needs {wanted} more while both are loaded, beyond the instance pool's {pool}; raise engine.pool_instances (or lower requests.concurrency); the version is tried again at the next check",
                    info.name, info.version
                ))));
            }
        }
        pipeline.run_checks()?;
        let served = Arc::new(Served::new(
            info.name.clone(),
            info.version.to_string(),
            pipeline,
            admission,
        ));
        if self.warm
            && let Err(e) = served.pipeline.warm(admission.concurrency)
        {
            let full = matches!(
                &e,
                outpost_host::RunError::Stage(outpost_host::StageError::PoolExhausted { .. })
            );
            let e = anyhow::Error::new(e).context("warming its stages");
            return Err(if full {
                anyhow::Error::new(NoCapacity(format!(
                    "{e:#}; the version is tried again at the next check"
                )))
            } else {
                e
            });
        }
        let running = crate::running_bundle(&verified, &served.pipeline);
        let installed = installed_of(&verified);
        // Current first on disk, then in memory: a crash between the two
        // restarts on the new version, still on probation.
        self.updater.activate(installed.clone())?;
        if let Err(e) = self.updater.begin_probation(&installed) {
            // Without the record a restart begins the window anew.
            tracing::warn!(error = %e, "cannot record the start of probation");
        }
        let prepared = started.elapsed();
        let swap_started = Instant::now();
        let replaced = self.app.swap(served.clone());
        let swapped = swap_started.elapsed();
        self.app.metrics.fleet_swaps.inc();
        self.probation = Some(Probation::new(
            Candidate {
                installed,
                verified,
                running,
                served,
            },
            replaced,
            Duration::ZERO,
        ));
        Ok(SwapTimes { prepared, swapped })
    }

    /// Judges the version on probation: too many failures roll it back;
    /// the window passing accepts it. Returns whether probation ended.
    fn judge(&mut self) -> bool {
        let Some(probation) = &mut self.probation else {
            return false;
        };
        // Time served, written down now and then: a restart resumes the
        // window from there (losing at most this much).
        // Not once the service drains: the clean stop's own record must be
        // the last write.
        if probation.persisted.elapsed() >= Duration::from_secs(5) && self.app.ready() {
            probation.persisted = Instant::now();
            if let Err(e) = self.updater.probation_progress(probation.served()) {
                tracing::warn!(error = %e, "cannot record the time served on probation");
            }
        }
        let (answered, failed) = probation.candidate.served.outcomes();
        let rate = if answered == 0 {
            0.0
        } else {
            failed as f64 / answered as f64
        };
        if answered >= self.updates.min_requests && rate > self.updates.max_failure_rate {
            let reason = format!(
                "failed {failed} of {answered} requests on probation ({:.0}% > updates.max_failure_rate {:.0}%)",
                rate * 100.0,
                self.updates.max_failure_rate * 100.0
            );
            self.roll_back(&reason);
            true
        } else if probation.served() >= self.updates.probation {
            let Some(probation) = self.probation.take() else {
                return false;
            };
            let c = &probation.candidate;
            match self.device.accept(&c.verified, &c.running) {
                Ok(()) => {
                    let _ = self.updater.end_probation();
                    tracing::info!(model = %c.installed.bundle, version = c.installed.version, answered, failed, "probation passed; version accepted");
                    self.status.phase = "serving".into();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "probation passed but the version could not be recorded as accepted");
                    self.status.last_error = Some(e.to_string());
                }
            }
            self.record();
            true
        } else {
            false
        }
    }

    fn roll_back(&mut self, reason: &str) {
        let Some(probation) = self.probation.take() else {
            return;
        };
        let bad = &probation.candidate.installed;
        tracing::warn!(model = %bad.bundle, version = bad.version, reason, "rolling back");
        let _ = self.updater.reject(bad, reason);
        let restored = match probation.replaced {
            Some(old) => Some(old),
            None => self.load_previous(),
        };
        match restored {
            Some(old) => {
                self.app.swap(old);
            }
            None => {
                self.app.remove(&bad.bundle);
            }
        }
        if let Err(e) = self.updater.roll_back() {
            tracing::error!(error = %e, "cannot record the rollback");
        }
        let _ = self.updater.end_probation();
        self.app.metrics.fleet_rollbacks.inc();
        self.status.phase = "rolled-back".into();
        self.status.last_error = Some(format!(
            "{} version {} rolled back: {reason}",
            bad.bundle, bad.version
        ));
        self.status.last_error_kind = Some("probation".into());
        self.record();
    }

    /// Loads the previous version from disk (the service restarted during
    /// probation, so it is not in memory).
    fn load_previous(&self) -> Option<Arc<Served>> {
        let previous = self.updater.current().ok()?.previous?;
        let dir = self.updater.installed_dir(&previous);
        let load = || -> Result<Arc<Served>> {
            let (verified, _p, _s) = self.device.open_verified(&dir, &self.trust, &self.policy)?;
            let pipeline = self.host.load_bundle(&verified)?;
            let info = &verified.manifest().bundle;
            Ok(Arc::new(Served::new(
                info.name.clone(),
                info.version.to_string(),
                pipeline,
                (self.admission)(&info.name),
            )))
        };
        load()
            .inspect_err(
                |e| tracing::error!(error = %format!("{e:#}"), "cannot load the previous version"),
            )
            .ok()
    }
}

/// Starts the agent on a thread of its own.
pub fn start(agent: Agent) -> Result<()> {
    std::thread::Builder::new()
        .name("outpost-update".into())
        .spawn(move || agent.run())
        .context("cannot start the update agent")?;
    Ok(())
}
