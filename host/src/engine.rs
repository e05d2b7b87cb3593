//! The one wasmtime [`Engine`] a host runs everything on, how it allocates
//! instances, and the ticker that drives epoch deadlines.

use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the ticker advances the engine's epoch; deadlines are counted in
/// these ticks, so a timeout fires at most one tick late.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How instances get their memories and tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Allocator {
    /// Slots reserved up front and reused, with copy-on-write memory images:
    /// instantiation is a few microseconds.
    Pooling,
    /// Every instance maps its own memory; the choice where the address space
    /// cannot hold the pool's reservation (39-bit boards).
    OnDemand,
}

/// What the host wants of its engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// `None`: try pooling, fall back to on-demand if the pool cannot be
    /// reserved.
    pub allocator: Option<Allocator>,
    /// Instances the pool holds at once (across all stages and pipelines).
    pub pool_instances: u32,
    /// The largest linear memory any stage may be configured with.
    pub max_memory_bytes: usize,
    /// Meter fuel, so stages can have a deterministic CPU budget
    /// (`limits.fuel`). Costs some speed in every stage.
    pub fuel: bool,
    /// Epoch interruption (wall-clock deadlines). Off removes the stages'
    /// time limits: only for measuring what they cost.
    pub epoch_interruption: bool,
    /// Memory and table limits. Off removes them: only for measuring what
    /// they cost.
    pub resource_limits: bool,
}

/// What the engine checks while stages run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metering {
    /// Fuel is counted.
    pub fuel: bool,
    /// Epoch deadlines interrupt.
    pub epochs: bool,
    /// Memory and tables are limited.
    pub limits: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            allocator: None,
            pool_instances: 128,
            max_memory_bytes: 1 << 30,
            fuel: false,
            epoch_interruption: true,
            resource_limits: true,
        }
    }
}

/// An engine, its allocator, and its epoch ticker.
pub struct Runtime {
    engine: Engine,
    allocator: Allocator,
    metering: Metering,
    max_memory_bytes: usize,
    pool_instances: u32,
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the WebAssembly engine: {0}")]
pub struct EngineError(String);

impl EngineError {
    pub(crate) fn new(message: String) -> Self {
        Self(message)
    }
}

impl Runtime {
    /// Builds the engine. With no allocator chosen, a pooling engine is tried
    /// first and on-demand allocation is used if the pool's address-space
    /// reservation fails.
    pub fn new(options: &EngineOptions) -> Result<Self, EngineError> {
        let (engine, allocator) = match options.allocator {
            Some(kind) => (build(options, kind)?, kind),
            None => match build(options, Allocator::Pooling) {
                Ok(engine) => (engine, Allocator::Pooling),
                Err(_) => (build(options, Allocator::OnDemand)?, Allocator::OnDemand),
            },
        };
        start_ticker(&engine)?;
        Ok(Self {
            engine,
            allocator,
            metering: Metering {
                fuel: options.fuel,
                epochs: options.epoch_interruption,
                limits: options.resource_limits,
            },
            max_memory_bytes: options.max_memory_bytes,
            pool_instances: options.pool_instances,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The allocator in use.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// With the pooling allocator, how many component instances can exist
    /// at once; `None` on demand (no fixed limit).
    pub fn pool_instances(&self) -> Option<u32> {
        (self.allocator == Allocator::Pooling).then_some(self.pool_instances)
    }

    /// Whether the engine meters fuel.
    pub fn fuel(&self) -> bool {
        self.metering.fuel
    }

    /// What the engine checks while stages run.
    pub fn metering(&self) -> Metering {
        self.metering
    }

    /// The largest linear memory a stage may be given.
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }
}

fn build(options: &EngineOptions, allocator: Allocator) -> Result<Engine, EngineError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(options.epoch_interruption);
    config.consume_fuel(options.fuel);
    if allocator == Allocator::Pooling {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(options.pool_instances);
        pool.total_core_instances(options.pool_instances * 4);
        pool.total_memories(options.pool_instances * 2);
        pool.total_tables(options.pool_instances * 4);
        pool.max_memory_size(options.max_memory_bytes);
        pool.max_memories_per_component(4);
        pool.max_tables_per_component(8);
        pool.max_core_instances_per_component(16);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).map_err(|e| EngineError(format!("{e:#}")))
}

/// Starts the one thread per engine that advances the epoch every
/// [`EPOCH_TICK`]; stores turn that into per-call deadlines. It runs as long
/// as the engine does: stages and pipelines hold the engine, so they keep
/// their deadlines even after the `Host` that made them is dropped (a ticker
/// stopped with the host left a served pipeline without any timeout). It
/// ends within a tick of the last engine handle going away.
fn start_ticker(engine: &Engine) -> Result<(), EngineError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("outpost-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        // Without a ticker no deadline could fire: refuse to run at all.
        .map_err(|e| EngineError(format!("cannot start the epoch ticker thread: {e}")))?;
    Ok(())
}
