//! The served pipelines and how requests reach them: a per-pipeline limit
//! on requests running at once, a bounded queue in front of it (full: 503
//! at once), deadlines (504), and the run itself on the blocking pool, off
//! the async threads.

use super::config::Admission;
use super::error::{ApiError, Class};
use super::kserve::{self, WireInput};
use super::metrics::{FailureLabels, Metrics, PipelineLabel, StageLabels};
use outpost_host::stage::Sink;
use outpost_host::{Pipeline, Tensor, TensorSpec};
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One pipeline as a KServe model.
pub struct Served {
    /// The model name: the bundle's name.
    pub name: String,
    /// The model version: the bundle's version.
    pub version: String,
    pub pipeline: Arc<Pipeline>,
    /// Each pipeline input with what its first stage declared for it.
    pub inputs: Vec<(String, Option<TensorSpec>)>,
    /// Each pipeline output with what its stage declared for it.
    pub outputs: Vec<(String, Option<TensorSpec>)>,
    admission: Admission,
    slots: Arc<Semaphore>,
    entered: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    label: PipelineLabel,
    /// Requests this version answered, and those that failed inside it
    /// (stage failures, 500): what probation judges after a swap.
    answered: AtomicU64,
    failed: AtomicU64,
}

impl Served {
    pub fn new(name: String, version: String, pipeline: Pipeline, admission: Admission) -> Self {
        let inputs = pipeline.inputs().to_vec();
        let outputs = pipeline
            .outputs()
            .iter()
            .map(|o| (o.clone(), pipeline.output_spec(o)))
            .collect();
        // As many warm instances per stage as requests may run at once.
        pipeline.set_pool_size(admission.concurrency);
        Self {
            label: PipelineLabel {
                pipeline: name.clone(),
            },
            name,
            version,
            pipeline: Arc::new(pipeline),
            inputs,
            outputs,
            slots: Arc::new(Semaphore::new(admission.concurrency)),
            admission,
            entered: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(AtomicUsize::new(0)),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Requests this version answered, and how many of them failed inside
    /// it.
    pub fn outcomes(&self) -> (u64, u64) {
        (
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// Requests taken in but not running: waiting for a slot, or still
    /// being read.
    pub fn waiting(&self) -> usize {
        self.entered
            .load(Ordering::Relaxed)
            .saturating_sub(self.running())
    }

    /// Takes a request in, before its body is read, or refuses it at once
    /// (503) when `concurrency` run and `queue` more are already in: what a
    /// model holds in memory is bounded by that many request bodies.
    pub fn enter(&self) -> Result<Entry, ApiError> {
        let limit = self.admission.concurrency + self.admission.queue;
        match self
            .entered
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            }) {
            Ok(_) => Ok(Entry(self.entered.clone())),
            Err(_) => Err(ApiError::new(
                Class::Unavailable,
                "overloaded",
                format!(
                    "model '{}' is overloaded: {} requests running and {} waiting (requests.concurrency, requests.queue); retry later",
                    self.name, self.admission.concurrency, self.admission.queue
                ),
            )),
        }
    }

    /// Requests running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Checks a request tensor against this model's inputs (known, not
    /// given twice, the declared type and shape) and adds it to `inputs`.
    pub fn add_input(&self, inputs: &mut Vec<Tensor>, input: WireInput) -> Result<(), ApiError> {
        if inputs.iter().any(|t| t.name == input.name) {
            return Err(ApiError::bad_request(format!(
                "input '{}' is given twice",
                input.name
            )));
        }
        let Some((_, spec)) = self.inputs.iter().find(|(n, _)| *n == input.name) else {
            return Err(ApiError::bad_request(format!(
                "model '{}' has no input '{}'; it takes: {}",
                self.name,
                input.name,
                names(&self.inputs)
            )));
        };
        inputs.push(kserve::to_tensor(input, spec.as_ref())?);
        Ok(())
    }

    /// Checks that a request asks for an output the model gives.
    pub fn check_output(&self, name: &str) -> Result<(), ApiError> {
        if self.outputs.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        Err(ApiError::bad_request(format!(
            "model '{}' has no output '{name}'; it gives: {}",
            self.name,
            names(&self.outputs)
        )))
    }

    /// Checks a version named in a request path.
    pub fn check_version(&self, version: Option<&str>) -> Result<(), ApiError> {
        match version {
            Some(v) if !v.is_empty() && v != self.version => Err(ApiError::not_found(format!(
                "model '{}' has version {}, not {v}",
                self.name, self.version
            ))),
            _ => Ok(()),
        }
    }

    /// Runs one request taken in by [`enter`](Self::enter): waits for a
    /// slot, runs the pipeline on the blocking pool, and gives up
    /// waiting at the deadline: the deadline is the configured one, or what
    /// the request asked for when that is less. A run past its deadline is
    /// also interrupted inside its stage.
    pub async fn infer(
        &self,
        entry: &Entry,
        inputs: Vec<Tensor>,
        asked: Option<Duration>,
        metrics: &Metrics,
    ) -> Result<Vec<Tensor>, ApiError> {
        self.infer_streaming(entry, inputs, asked, None, metrics)
            .await
    }

    /// [`infer`](Self::infer), handing `sink` what stages emit while they
    /// run (generated tokens), with this model's token deadline.
    pub async fn infer_streaming(
        &self,
        _entry: &Entry,
        inputs: Vec<Tensor>,
        asked: Option<Duration>,
        sink: Option<Sink>,
        metrics: &Metrics,
    ) -> Result<Vec<Tensor>, ApiError> {
        let sink = match (sink, self.admission.token_deadline) {
            (Some(sink), Some(gap)) => Some(sink.with_token_deadline(gap)),
            (sink, _) => sink,
        };
        let started = Instant::now();
        let result = self
            .admit_and_run(inputs, asked, sink, started, metrics)
            .await;
        Metrics::observe(
            &metrics.request_seconds.get_or_create(&self.label),
            started.elapsed(),
        );
        result
    }

    /// Counts a request to this model, and its failure by kind: the front
    /// ends call it once per request, whether it failed while being read,
    /// checked or run.
    pub fn count<T>(&self, metrics: &Metrics, result: &Result<T, ApiError>) {
        metrics.requests.get_or_create(&self.label).inc();
        self.answered.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            if e.class == Class::Internal {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
            if e.class == Class::Internal {
                tracing::warn!(model = %self.name, kind = e.kind, error = %e.message, "request failed");
            } else {
                tracing::debug!(model = %self.name, kind = e.kind, error = %e.message, "request refused");
            }
            metrics
                .failures
                .get_or_create(&FailureLabels {
                    pipeline: self.name.clone(),
                    kind: e.kind.to_owned(),
                })
                .inc();
        }
    }

    async fn admit_and_run(
        &self,
        inputs: Vec<Tensor>,
        asked: Option<Duration>,
        sink: Option<Sink>,
        started: Instant,
        metrics: &Metrics,
    ) -> Result<Vec<Tensor>, ApiError> {
        let budget = asked.map_or(self.admission.deadline, |a| a.min(self.admission.deadline));
        let deadline = started + budget;
        let permit = self.admit(deadline, budget).await?;
        Metrics::observe(
            &metrics.queue_wait_seconds.get_or_create(&self.label),
            started.elapsed(),
        );
        let pipeline = self.pipeline.clone();
        let running = Running::new(&self.running);
        let work = tokio::task::spawn_blocking(move || {
            // The slot is held until the run ends, even if the client has
            // been answered 504 meanwhile: the limit bounds real work.
            let _permit = permit;
            let _running = running;
            let mut timings = Vec::new();
            let result = pipeline.run_streaming(inputs, Some(deadline), &mut timings, sink);
            (result, timings)
        });
        let (result, timings) =
            match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), work).await {
                Ok(Ok(done)) => done,
                Ok(Err(join)) => {
                    return Err(ApiError::new(
                        Class::Internal,
                        "Internal",
                        format!("pipeline '{}': the run was lost: {join}", self.name),
                    ));
                }
                Err(_) => {
                    return Err(ApiError::new(
                        Class::DeadlineExceeded,
                        "DeadlineExceeded",
                        format!(
                            "model '{}': no answer within the request's deadline of {} ms",
                            self.name,
                            budget.as_millis()
                        ),
                    ));
                }
            };
        for (step, timing) in self.pipeline.stages().iter().zip(&timings) {
            let labels = StageLabels {
                pipeline: self.name.clone(),
                stage: step.stage().name().to_owned(),
            };
            Metrics::observe(
                &metrics.stage_seconds.get_or_create(&labels),
                timing.elapsed,
            );
            Metrics::observe(
                &metrics.inference_seconds.get_or_create(&labels),
                timing.inference,
            );
        }
        result.map_err(ApiError::from_run)
    }

    async fn admit(
        &self,
        deadline: Instant,
        budget: Duration,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        let closed = || {
            ApiError::new(
                Class::Unavailable,
                "draining",
                "the server is shutting down; retry on another instance",
            )
        };
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(closed()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {}
        }
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(deadline),
            self.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(ApiError::new(
                Class::DeadlineExceeded,
                "QueueTimeout",
                format!(
                    "model '{}': the request's deadline of {} ms passed while it waited in the queue",
                    self.name,
                    budget.as_millis()
                ),
            )),
        }
    }
}

/// A request's place among those a model has taken in (running, queued,
/// or still arriving); given back when dropped, however the request ends.
pub struct Entry(Arc<AtomicUsize>);

impl Drop for Entry {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a run while it lasts.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything both front ends share.
pub struct App {
    /// The models served; a swap replaces one, and requests that took the
    /// old one finish on it.
    models: RwLock<Vec<Arc<Served>>>,
    pub metrics: Metrics,
    ready: AtomicBool,
    /// The bearer token requests must carry, when one is configured.
    token: Option<Vec<u8>>,
    /// What `/status` shows: the state directory whose fleet status it reads.
    pub state_dir: Option<std::path::PathBuf>,
}

impl App {
    pub fn new(models: Vec<Arc<Served>>, token: Option<Vec<u8>>) -> Self {
        Self {
            models: RwLock::new(models),
            metrics: Metrics::new(),
            ready: AtomicBool::new(true),
            token,
            state_dir: None,
        }
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Readiness goes false (load balancers stop sending), admission stops.
    pub fn drain(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// The models served now.
    pub fn models(&self) -> Vec<Arc<Served>> {
        self.models
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Serves `served` in place of the model of the same name (or beside
    /// the others); returns the one it replaced. New requests go to it at
    /// once; requests that took the old one finish on it.
    pub fn swap(&self, served: Arc<Served>) -> Option<Arc<Served>> {
        let mut models = self
            .models
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match models.iter_mut().find(|m| m.name == served.name) {
            Some(slot) => Some(std::mem::replace(slot, served)),
            None => {
                models.push(served);
                None
            }
        }
    }

    /// Stops serving model `name` (a first version that failed probation,
    /// with nothing to roll back to).
    pub fn remove(&self, name: &str) {
        self.models
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|m| m.name != name);
    }

    pub fn model(&self, name: &str, version: Option<&str>) -> Result<Arc<Served>, ApiError> {
        let models = self
            .models
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let served = models.iter().find(|m| m.name == name).ok_or_else(|| {
            ApiError::not_found(format!(
                "unknown model '{name}'; this server serves: {}",
                models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        served.check_version(version)?;
        Ok(served.clone())
    }

    /// Checks an `Authorization` header value against the configured token.
    pub fn authorize(&self, header: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = header.and_then(|h| h.strip_prefix(b"Bearer "));
        match given {
            Some(given) if constant_time_eq(given, token) => Ok(()),
            Some(_) => Err(ApiError::new(
                Class::Unauthorized,
                "unauthorized",
                "the bearer token is not valid",
            )),
            None => Err(ApiError::new(
                Class::Unauthorized,
                "unauthorized",
                "this server needs a bearer token: send the header 'Authorization: Bearer TOKEN'",
            )),
        }
    }
}

/// Compares the sha256 digests of both, byte by byte without an early exit:
/// the time taken says nothing about where they differ, or the token's
/// length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// `a, b, c`: the names of tensors, for messages.
pub fn names(tensors: &[(String, Option<TensorSpec>)]) -> String {
    tensors
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
