//! One stage of a pipeline: its compiled component, the instances that serve
//! it, and the limits armed around every call.

use crate::backend::{Diagnostics, SharedModel};
use crate::bindings::{self, Config, ErrorKind, GuestError, StageInfo, Tensor};
use crate::engine::{EPOCH_TICK, Metering};
use crate::error::StageError;
use crate::nn::{NnLedger, NnState, NnView};
use crate::sandbox::{Denials, Grants, StageLog, wasi_ctx};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Limits armed on every call into a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageLimits {
    /// Largest linear memory, in bytes.
    pub memory_bytes: usize,
    /// Most bytes of wasi-nn tensors, contexts and outputs the stage may hold
    /// in the host at once (outside its linear memory, so not seen by the
    /// memory limiter).
    pub nn_memory_bytes: usize,
    /// Most wasi-nn resources the stage may hold at once.
    pub nn_resources: usize,
    /// Most table elements.
    pub table_elements: usize,
    /// Wall-clock deadline of one call, not counting time inside models.
    pub timeout: Duration,
    /// Deadline for the time one call spends inside models.
    pub inference_timeout: Duration,
    /// Deterministic CPU budget of one call (needs an engine with fuel).
    pub fuel: Option<u64>,
    /// Most tensor bytes one call may return.
    pub max_output_bytes: usize,
}

impl Default for StageLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            nn_memory_bytes: 256 << 20,
            nn_resources: 256,
            table_elements: 100_000,
            timeout: Duration::from_secs(10),
            inference_timeout: Duration::from_secs(60),
            fuel: None,
            max_output_bytes: 64 << 20,
        }
    }
}

/// Idle instances kept per stage unless [`LoadedStage::set_pool_size`] says
/// otherwise; more concurrent requests instantiate fresh ones, which are
/// dropped afterwards.
pub const DEFAULT_POOL_SIZE: usize = 4;

/// How long one call into a stage took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageTiming {
    /// Wall-clock time of the call, from taking an instance to checked
    /// outputs (including a fresh instance's `init` when none was idle).
    pub elapsed: Duration,
    /// Of which, time inside models: the runtime's work and the host's
    /// conversions and checks around it.
    pub inference: Duration,
    /// Of `inference`, time inside the runtimes themselves (tract's plans,
    /// ONNX Runtime's sessions). `elapsed - runtime` is what the sandbox
    /// and the host add to the model's own work.
    pub runtime: Duration,
}

/// The state of one stage instance's store.
pub struct StageHost {
    wasi: WasiCtx,
    table: ResourceTable,
    nn: NnState,
    limiter: StageLimiter,
    diagnostics: Diagnostics,
    denials: Denials,
    /// When the current call started, and its deadline for time outside
    /// models.
    call_started: Instant,
    timeout: Duration,
    /// The request's deadline, when it has one: the call is interrupted at
    /// whichever comes first.
    deadline: Option<Instant>,
    /// Where `emit` sends partial outputs during the current call, when the
    /// request streams.
    sink: Option<Sink>,
    /// When the current call last emitted, if it has.
    last_emit: Option<Instant>,
    /// Bytes the current call has emitted: partial outputs, together, are
    /// bounded like the outputs a call returns.
    emitted_bytes: usize,
    /// The current call's token deadline (its sink's), kept after the call
    /// to explain an interruption.
    token_deadline: Option<Duration>,
    /// The stage's name, for the sink.
    stage: String,
    /// The most bytes one `emit` may carry (`limits.max_output_mib`).
    max_emit_bytes: usize,
}

/// Where a stage's partial outputs go during a streaming request, and how
/// long a stage may go between two of them.
#[derive(Clone)]
pub struct Sink {
    send: Arc<SendPartial>,
    token_deadline: Option<Duration>,
}

/// Called with the stage's name and what it emitted; returns whether anyone
/// still listens.
type SendPartial = dyn Fn(&str, Vec<Tensor>) -> bool + Send + Sync;

impl Sink {
    /// A sink calling `send` for each partial output. `send` runs on the
    /// stage's thread, inside its call: it must hand the outputs on, not
    /// wait for the client. When it returns false (nobody listens any
    /// more), `emit` tells the stage so, and a well-behaved stage stops.
    pub fn new(send: impl Fn(&str, Vec<Tensor>) -> bool + Send + Sync + 'static) -> Self {
        Self {
            send: Arc::new(send),
            token_deadline: None,
        }
    }

    /// Interrupts a stage that, once it has emitted, goes longer than `gap`
    /// without emitting again ([`StageError::TokenDeadline`]); time inside
    /// models counts. Before its first partial output a stage has only the
    /// request's deadline (a prompt's prefill may take long).
    #[must_use]
    pub fn with_token_deadline(mut self, gap: Duration) -> Self {
        self.token_deadline = Some(gap);
        self
    }

    /// This sink, with what a stage emits renamed as its pipeline wires the
    /// stage's outputs (`(stage's name, pipeline's name)` pairs), so partial
    /// outputs carry the names the final ones do.
    #[must_use]
    pub fn renamed(&self, names: &[(String, String)]) -> Self {
        if names.iter().all(|(stage, pipeline)| stage == pipeline) {
            return self.clone();
        }
        let names = names.to_vec();
        let send = self.send.clone();
        Self {
            send: Arc::new(move |stage: &str, mut outputs: Vec<Tensor>| {
                for tensor in &mut outputs {
                    if let Some((_, pipeline)) = names.iter().find(|(s, _)| *s == tensor.name) {
                        tensor.name.clone_from(pipeline);
                    }
                }
                send(stage, outputs)
            }),
            token_deadline: self.token_deadline,
        }
    }
}

impl StageHost {
    /// How long the current call has until the token deadline, when it
    /// streams with one and has emitted.
    fn token_time_left(&self) -> Option<Duration> {
        Some(
            self.token_deadline?
                .saturating_sub(self.last_emit?.elapsed()),
        )
    }
}

impl bindings::outpost::plugin::partials::Host for StageHost {
    fn emit(&mut self, outputs: Vec<Tensor>) -> wasmtime::Result<bool> {
        let bytes: usize = outputs.iter().map(|t| t.data.len()).sum();
        if bytes > self.max_emit_bytes {
            return Err(wasmtime::format_err!(
                "stage '{}' emitted {bytes} bytes at once, over its output limit of {} bytes (limits.max_output_mib)",
                self.stage,
                self.max_emit_bytes
            ));
        }
        let total = self.emitted_bytes.saturating_add(bytes);
        if total > self.max_emit_bytes {
            return Err(wasmtime::format_err!(
                "stage '{}' emitted {total} bytes of partial outputs in this call, over its output limit of {} bytes (limits.max_output_mib)",
                self.stage,
                self.max_emit_bytes
            ));
        }
        self.emitted_bytes = total;
        self.last_emit = Some(Instant::now());
        Ok(match &self.sink {
            Some(sink) => (sink.send)(&self.stage, outputs),
            None => true,
        })
    }
}

impl WasiView for StageHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Memory and table limits, remembering whether a limit was what failed.
struct StageLimiter {
    memory_bytes: usize,
    table_elements: usize,
    hit_memory_limit: bool,
}

impl ResourceLimiter for StageLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit_memory_limit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }
}

/// Links WASI (nothing granted) and wasi-nn for stage components. Built once
/// per engine and shared by every stage.
pub fn stage_linker(engine: &Engine) -> wasmtime::Result<Linker<StageHost>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    crate::nn::add_to_linker(&mut linker, |h: &mut StageHost| {
        NnView::new(&mut h.table, &mut h.nn)
    })?;
    bindings::outpost::plugin::partials::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
        &mut linker,
        |h: &mut StageHost| h,
    )?;
    Ok(linker)
}

/// A stage ready to serve: compiled, linked, configured, described.
pub struct LoadedStage {
    pipeline: String,
    name: String,
    engine: Engine,
    pre: bindings::StagePre<StageHost>,
    config: Config,
    models: Vec<(String, SharedModel)>,
    limits: StageLimits,
    grants: Grants,
    metering: Metering,
    info: StageInfo,
    idle: Mutex<Vec<Instance>>,
    pool_size: AtomicUsize,
    live: Arc<AtomicUsize>,
    log: Arc<StageLog>,
}

struct Instance {
    store: Store<StageHost>,
    stage: bindings::Stage,
    _live: LiveInstance,
}

/// Counts an instance among the stage's live ones while it exists.
struct LiveInstance(Arc<AtomicUsize>);

impl LiveInstance {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything needed to bring a stage up, apart from the engine and linker.
pub struct StageSetup {
    /// The pipeline's name, for messages.
    pub pipeline: String,
    /// The stage's name.
    pub name: String,
    /// Its configuration: the `config` table as JSON texts, and its files.
    pub config: Config,
    /// The models it may load, by the names the pipeline gives them.
    pub models: Vec<(String, SharedModel)>,
    /// Its limits.
    pub limits: StageLimits,
    /// What it may touch.
    pub grants: Grants,
    /// What the engine checks.
    pub metering: Metering,
}

impl LoadedStage {
    /// Links `component`, creates a first instance, runs its `init` and
    /// `describe`, and keeps the instance for the first request.
    pub fn new(
        linker: &Linker<StageHost>,
        component: &Component,
        setup: StageSetup,
    ) -> Result<Self, StageLoadError> {
        let pre = linker
            .instantiate_pre(component)
            .and_then(bindings::StagePre::new)
            .map_err(|e| StageLoadError::Link(format!("{e:#}")))?;
        let setup_name = setup.name.clone();
        let mut stage = Self {
            pipeline: setup.pipeline,
            name: setup.name,
            engine: linker.engine().clone(),
            pre,
            config: setup.config,
            models: setup.models,
            limits: setup.limits,
            grants: setup.grants,
            metering: setup.metering,
            info: StageInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
            },
            idle: Mutex::new(Vec::new()),
            pool_size: AtomicUsize::new(DEFAULT_POOL_SIZE),
            live: Arc::new(AtomicUsize::new(0)),
            log: StageLog::new(&setup_name),
        };
        let mut instance = stage
            .instantiate_until(None)
            .map_err(StageLoadError::Stage)?;
        stage.arm(&mut instance.store);
        stage.info = instance
            .stage
            .call_describe(&mut instance.store)
            .map_err(|e| StageLoadError::Stage(stage.classify(e, &instance.store)))?;
        stage.release(instance);
        Ok(stage)
    }

    /// The stage's name in the pipeline.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the stage said about itself.
    pub fn info(&self) -> &StageInfo {
        &self.info
    }

    /// Its limits.
    pub fn limits(&self) -> &StageLimits {
        &self.limits
    }

    /// How many idle instances the stage keeps for the next requests: a
    /// service sets it to the number of requests it runs at once, so a
    /// burst does not pay `init` again for each request.
    pub fn set_pool_size(&self, size: usize) {
        self.pool_size.store(size, Ordering::Relaxed);
        if let Ok(mut idle) = self.idle.lock() {
            idle.truncate(size);
        }
    }

    /// Creates fresh instances (running their `init`) until `count` are
    /// idle, or the pool is full.
    pub fn warm(&self, count: usize) -> Result<(), StageError> {
        let target = count.min(self.pool_size.load(Ordering::Relaxed));
        while self.idle_instances() < target {
            let instance = self.instantiate_until(None)?;
            self.release(instance);
        }
        Ok(())
    }

    /// Instances that exist now, idle or serving a request.
    pub fn live_instances(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Instances waiting for a request.
    pub fn idle_instances(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// Bytes the idle instances hold in key/value caches (none once their
    /// calls have ended).
    pub fn idle_cache_bytes(&self) -> usize {
        self.idle.lock().map_or(0, |idle| {
            idle.iter().map(|i| i.store.data().nn.cache_bytes()).sum()
        })
    }

    /// Runs one request through the stage. Outputs are checked against what
    /// the stage declared. An instance that trapped or hit a limit is dropped;
    /// the next request gets a fresh one.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, StageError> {
        self.run_until(inputs, None).map(|(outputs, _)| outputs)
    }

    /// [`run`](Self::run), interrupted at `deadline` if it has one (then
    /// [`StageError::DeadlineExceeded`]), and timed.
    pub fn run_until(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
    ) -> Result<(Vec<Tensor>, StageTiming), StageError> {
        self.run_streaming(inputs, deadline, None)
    }

    /// [`run_until`](Self::run_until), with what the stage emits while it
    /// runs handed to `sink`.
    pub fn run_streaming(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
        sink: Option<Sink>,
    ) -> Result<(Vec<Tensor>, StageTiming), StageError> {
        let started = Instant::now();
        let mut instance = match self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            Some(instance) => instance,
            // The request's deadline covers a fresh instance's `init` too.
            None => self.instantiate_until(deadline)?,
        };
        self.arm(&mut instance.store);
        self.arm_deadline(&mut instance.store, deadline);
        let token_deadline = sink.as_ref().and_then(|s| s.token_deadline);
        let host = instance.store.data_mut();
        host.token_deadline = token_deadline;
        host.sink = sink;
        // Look in once per gap from the start, so the token deadline is
        // armed from the first partial output on.
        if self.metering.epochs
            && let Some(gap) = token_deadline
        {
            let request_left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let first_look = request_left.map_or(gap, |left| left.min(gap));
            if first_look < self.limits.timeout {
                instance.store.set_epoch_deadline(ticks(first_look));
            }
        }
        let result = instance.stage.call_run(&mut instance.store, &inputs);
        instance.store.data_mut().sink = None;
        let timing = StageTiming {
            elapsed: started.elapsed(),
            inference: instance.store.data().diagnostics.inference_time(),
            runtime: instance.store.data().diagnostics.runtime_time(),
        };
        match result {
            Ok(Ok(outputs)) => {
                // An instance that returned bad tensors is not trusted with
                // the next request.
                self.check_outputs(&outputs)?;
                self.release(instance);
                Ok((outputs, timing))
            }
            Ok(Err(reported)) => {
                // A stage that caught a limit, a denial or a backend panic
                // and reported it itself is dropped all the same: it may
                // have been half-way through something when refused.
                // `reported` already turns those into their own variants.
                let error = self.reported(reported, &instance.store);
                if matches!(error, StageError::Reported { .. }) {
                    self.release(instance);
                }
                Err(error)
            }
            Err(e) => Err(self.classify(e, &instance.store)),
        }
    }

    /// Creates a fresh instance and runs its `init`, then drops it: what a
    /// request costs when no idle instance is at hand (for benchmarks).
    pub fn instantiate_fresh(&self) -> Result<(), StageError> {
        self.instantiate_until(None).map(drop)
    }

    /// A fresh instance with `init` done, by `deadline` if there is one.
    fn instantiate_until(&self, deadline: Option<Instant>) -> Result<Instance, StageError> {
        let diagnostics = Diagnostics::with_inference_limit(self.limits.inference_timeout);
        let denials = Denials::new(self.log.clone());
        let wasi = wasi_ctx(&self.grants, &denials).map_err(|message| StageError::Instantiate {
            pipeline: self.pipeline.clone(),
            stage: self.name.clone(),
            message,
        })?;
        let host = StageHost {
            wasi,
            table: ResourceTable::new(),
            // No backends: guests cannot load model bytes of their own, only
            // the models granted to them, by name.
            nn: NnState::new(
                &self.models,
                diagnostics.clone(),
                NnLedger::new(self.limits.nn_memory_bytes, self.limits.nn_resources),
            ),
            limiter: StageLimiter {
                memory_bytes: self.limits.memory_bytes,
                table_elements: self.limits.table_elements,
                hit_memory_limit: false,
            },
            diagnostics,
            denials,
            call_started: Instant::now(),
            timeout: self.limits.timeout,
            deadline: None,
            sink: None,
            last_emit: None,
            emitted_bytes: 0,
            token_deadline: None,
            stage: self.name.clone(),
            max_emit_bytes: self.limits.max_output_bytes,
        };
        let mut store = Store::new(&self.engine, host);
        if self.metering.limits {
            store.limiter(|h| &mut h.limiter);
        }
        // The epoch deadline is only a check-in: time spent inside models is
        // taken off what the stage has used, so a slow model cannot make its
        // stage time out (inference has a deadline of its own).
        store.epoch_deadline_callback(|ctx| {
            let host = ctx.data();
            let used = host
                .call_started
                .elapsed()
                .saturating_sub(host.diagnostics.inference_time());
            let mut left = host.timeout.checked_sub(used).unwrap_or_default();
            // The request's deadline counts time inside models too.
            if let Some(deadline) = host.deadline {
                left = left.min(deadline.saturating_duration_since(Instant::now()));
            }
            // So does the token deadline. Until the first partial output,
            // look in at least once per gap, so the deadline is armed soon
            // after it.
            if let Some(gap) = host.token_deadline {
                left = left.min(host.token_time_left().unwrap_or(gap));
            }
            Ok(if left.is_zero() {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Continue(ticks(left))
            })
        });
        self.arm(&mut store);
        self.arm_deadline(&mut store, deadline);
        let stage = self.pre.instantiate(&mut store).map_err(|e| {
            if let Some(full) = e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
                return StageError::PoolExhausted {
                    pipeline: self.pipeline.clone(),
                    stage: self.name.clone(),
                    message: full.to_string(),
                };
            }
            match self.classify(e, &store) {
                StageError::Trap { trap, .. } => StageError::Instantiate {
                    pipeline: self.pipeline.clone(),
                    stage: self.name.clone(),
                    message: trap,
                },
                other => other,
            }
        })?;
        match stage.call_init(&mut store, &self.config) {
            Ok(Ok(())) => Ok(Instance {
                store,
                stage,
                _live: LiveInstance::new(&self.live),
            }),
            Ok(Err(reported)) => Err(self.reported(reported, &store)),
            Err(e) => Err(self.classify(e, &store)),
        }
    }

    /// Re-arms the per-call limits.
    fn arm(&self, store: &mut Store<StageHost>) {
        if self.metering.epochs {
            store.set_epoch_deadline(ticks(self.limits.timeout));
        }
        if self.metering.fuel {
            // Without a budget the stage still runs on a metered engine.
            let _ = store.set_fuel(self.limits.fuel.unwrap_or(u64::MAX));
        }
        let host = store.data_mut();
        host.limiter.hit_memory_limit = false;
        host.nn.ledger_mut().clear_exceeded();
        host.nn.new_call();
        host.call_started = Instant::now();
        host.diagnostics.reset();
        host.denials.reset();
        host.deadline = None;
        host.last_emit = None;
        host.emitted_bytes = 0;
        host.token_deadline = None;
    }

    /// Interrupts the next call at the request's deadline, if that comes
    /// before the stage's own.
    fn arm_deadline(&self, store: &mut Store<StageHost>, deadline: Option<Instant>) {
        store.data_mut().deadline = deadline;
        if self.metering.epochs
            && let Some(deadline) = deadline
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < self.limits.timeout {
                store.set_epoch_deadline(ticks(left));
            }
        }
    }

    fn release(&self, mut instance: Instance) {
        // What the call filled in key/value caches is not kept while the
        // instance waits for the next request.
        let host = instance.store.data_mut();
        NnView::new(&mut host.table, &mut host.nn).end_call();
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.pool_size.load(Ordering::Relaxed)
        {
            idle.push(instance);
        }
    }

    fn reported(&self, error: GuestError, store: &Store<StageHost>) -> StageError {
        if let Some(e) = self.limit_or_denial(store, &error.message) {
            return e;
        }
        let mut message = error.message;
        if error.kind == ErrorKind::Inference
            && let Some(detail) = store.data().diagnostics.take()
        {
            message = format!("{message}; the backend said: {detail}");
        }
        StageError::Reported {
            pipeline: self.pipeline.clone(),
            stage: self.name.clone(),
            kind: error.kind,
            message,
        }
    }

    /// A limit or a denied capability behind a failure, which explains it
    /// better than the trap or error it surfaced as.
    fn limit_or_denial(&self, store: &Store<StageHost>, then: &str) -> Option<StageError> {
        let (pipeline, stage) = (self.pipeline.clone(), self.name.clone());
        let host = store.data();
        if host.limiter.hit_memory_limit {
            return Some(StageError::MemoryLimit {
                pipeline,
                stage,
                limit_mib: (self.limits.memory_bytes >> 20) as u64,
                detail: "its linear memory may not grow past it (limits.memory_mib)".to_owned(),
            });
        }
        if let Some(exceeded) = host.nn.ledger().exceeded() {
            return Some(StageError::MemoryLimit {
                pipeline,
                stage,
                limit_mib: (self.limits.nn_memory_bytes >> 20) as u64,
                detail: exceeded.to_owned(),
            });
        }
        if let Some((model, message)) = host.diagnostics.panicked() {
            return Some(StageError::BackendPanic {
                pipeline,
                stage,
                model,
                message,
            });
        }
        if host.diagnostics.inference_timed_out() {
            return Some(StageError::InferenceTimeout {
                pipeline,
                stage,
                limit_ms: millis(self.limits.inference_timeout),
            });
        }
        host.denials
            .first()
            .map(|denied| StageError::CapabilityDenied {
                pipeline,
                stage,
                message: format!("{denied}; then: {then}"),
            })
    }

    fn classify(&self, error: wasmtime::Error, store: &Store<StageHost>) -> StageError {
        let (pipeline, stage) = (self.pipeline.clone(), self.name.clone());
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt)
                if store
                    .data()
                    .deadline
                    .is_some_and(|deadline| Instant::now() >= deadline) =>
            {
                return StageError::DeadlineExceeded { pipeline, stage };
            }
            Some(Trap::Interrupt) if store.data().token_time_left() == Some(Duration::ZERO) => {
                return StageError::TokenDeadline {
                    pipeline,
                    stage,
                    limit_ms: store.data().token_deadline.map_or(0, millis),
                };
            }
            Some(Trap::Interrupt) => {
                return StageError::Timeout {
                    pipeline,
                    stage,
                    limit_ms: millis(self.limits.timeout),
                };
            }
            Some(Trap::OutOfFuel) => {
                return StageError::OutOfFuel {
                    pipeline,
                    stage,
                    limit: self.limits.fuel.unwrap_or(u64::MAX),
                };
            }
            _ => {}
        }
        if let Some(e) = self.limit_or_denial(store, &format!("{error}")) {
            return e;
        }
        let backtrace = error
            .downcast_ref::<WasmBacktrace>()
            .map(|bt| bt.to_string());
        let trap = match error.downcast_ref::<Trap>() {
            Some(code) => code.to_string(),
            None => format!("{error:#}"),
        };
        StageError::Trap {
            pipeline,
            stage,
            trap,
            backtrace,
        }
    }

    fn check_outputs(&self, outputs: &[Tensor]) -> Result<(), StageError> {
        let size: usize = outputs.iter().map(|t| t.data.len()).sum();
        if size > self.limits.max_output_bytes {
            return Err(StageError::OutputTooLarge {
                pipeline: self.pipeline.clone(),
                stage: self.name.clone(),
                size,
                limit: self.limits.max_output_bytes,
            });
        }
        let bad = |message: String| StageError::BadOutput {
            pipeline: self.pipeline.clone(),
            stage: self.name.clone(),
            message,
        };
        let open = self.info.outputs.iter().any(|s| s.is_wildcard());
        for tensor in outputs {
            tensor.check_layout().map_err(bad)?;
            match self.info.outputs.iter().find(|s| s.name == tensor.name) {
                Some(spec) => spec.check(tensor).map_err(bad)?,
                None if open => {}
                None => {
                    return Err(bad(format!(
                        "tensor '{}' was not declared; the stage declares: {}",
                        tensor.name,
                        self.info
                            .outputs
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        for spec in self.info.outputs.iter().filter(|s| !s.is_wildcard()) {
            if !outputs.iter().any(|t| t.name == spec.name) {
                return Err(bad(format!("declared output '{}' is missing", spec.name)));
            }
        }
        Ok(())
    }
}

/// Why a stage could not be brought up.
#[derive(Debug)]
pub enum StageLoadError {
    /// The component does not fit the `stage` world or its imports.
    Link(String),
    /// The first instance failed in `init` or `describe`.
    Stage(StageError),
}

/// Epoch ticks covering `d`, at least one.
fn ticks(d: Duration) -> u64 {
    u64::try_from(d.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1)).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
