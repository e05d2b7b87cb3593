//! The one wasmtime [`Engine`] a host runs everything on, how it allocates
//! instances, and the ticker that drives epoch deadlines.

use std::time::Duration;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

mod space;
pub use space::AddressSpace;

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

/// How compiled stages stay inside their linear memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bounds {
    /// Every memory reserves 4 GiB of address space plus a guard region, so
    /// an access outside it faults and compiled code skips bounds checks:
    /// the fastest, but 4 GiB per memory does not fit small address spaces.
    GuardPages,
    /// Memories reserve only what they use plus room to grow, and compiled
    /// code checks every access: for 39-bit boards and `ulimit -v`.
    Explicit,
}

/// What the host wants of its engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// `None`: try pooling, fall back to on-demand if the pool cannot be
    /// reserved.
    pub allocator: Option<Allocator>,
    /// `None`: guard pages where the address space allows, else explicit
    /// checks.
    pub bounds: Option<Bounds>,
    /// Instances the pool holds at once (across all stages and pipelines).
    /// With no allocator chosen, the pool shrinks to what the address space
    /// holds (at least [`MIN_POOL_INSTANCES`]).
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
            bounds: None,
            pool_instances: 128,
            max_memory_bytes: 1 << 30,
            fuel: false,
            epoch_interruption: true,
            resource_limits: true,
        }
    }
}

/// The smallest pool `auto` shrinks the configured one to before it gives
/// up on pooling.
pub const MIN_POOL_INSTANCES: u32 = 16;
/// With on-demand allocation asked for, guard pages need room for this many
/// live memories, else explicit checks are used.
const MIN_GUARDED_INSTANCES: u64 = 32;
/// Linear memories per component instance the pool holds slots for.
const MEMORIES_PER_INSTANCE: u64 = 2;
/// With guard pages: what one memory reserves, and the guard after it.
const GUARDED_RESERVATION: u64 = 4 << 30;
const GUARD: u64 = 32 << 20;
/// With explicit checks: a small guard still lets one check cover nearby
/// offsets; a memory keeps this much room to grow before it moves.
const EXPLICIT_GUARD: u64 = 64 << 10;
const GROWTH_RESERVATION: u64 = 16 << 20;
/// Address space left to the host itself (heap, models, thread stacks,
/// compiled code): at least this, or an eighth of what is available.
const HOST_RESERVE: u64 = 1 << 30;

/// How the engine lays out stage memory: the allocator, the bounds, and the
/// size of the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// How instances get memory.
    pub allocator: Allocator,
    /// How accesses are kept inside a memory.
    pub bounds: Bounds,
    /// With pooling, the instances the pool holds.
    pub pool_instances: u32,
}

impl Layout {
    /// Picks the layout for `options` in `space`. What the options name is
    /// kept; what they leave open is chosen, fastest first: a pool with
    /// guard pages (shrunk to fit, down to [`MIN_POOL_INSTANCES`]), else
    /// explicit bounds checks on demand, which fit anywhere. With on-demand
    /// allocation asked for, guard pages while room for
    /// [`MIN_GUARDED_INSTANCES`] of them remains.
    pub fn plan(options: &EngineOptions, space: &AddressSpace) -> Self {
        let available = space.available();
        let budget = available.saturating_sub(HOST_RESERVE.max(available / 8));
        let max_memory = options.max_memory_bytes as u64;
        let fits_pool = |bounds: Bounds| -> Option<u32> {
            let per_instance = MEMORIES_PER_INSTANCE * slot(bounds, max_memory);
            let fit = (budget / per_instance).min(u64::from(options.pool_instances)) as u32;
            (fit >= options.pool_instances.min(MIN_POOL_INSTANCES)).then_some(fit)
        };
        let guarded_on_demand = budget >= MIN_GUARDED_INSTANCES * slot(Bounds::GuardPages, 0);
        let layout = |allocator, bounds, pool_instances| Self {
            allocator,
            bounds,
            pool_instances,
        };
        let requested = options.pool_instances;
        match options.allocator {
            Some(Allocator::Pooling) => {
                let fitting = if fits_pool(Bounds::GuardPages) == Some(requested) {
                    Bounds::GuardPages
                } else {
                    Bounds::Explicit
                };
                layout(
                    Allocator::Pooling,
                    options.bounds.unwrap_or(fitting),
                    requested,
                )
            }
            Some(Allocator::OnDemand) => {
                let fitting = if guarded_on_demand {
                    Bounds::GuardPages
                } else {
                    Bounds::Explicit
                };
                layout(Allocator::OnDemand, options.bounds.unwrap_or(fitting), 0)
            }
            None => {
                // Room for a guarded pool of MIN_POOL_INSTANCES is room for
                // MIN_GUARDED_INSTANCES guarded memories, so where the pool
                // does not fit, guard pages on demand would not either.
                let preferred = options.bounds.unwrap_or(Bounds::GuardPages);
                match fits_pool(preferred) {
                    Some(fit) => layout(Allocator::Pooling, preferred, fit),
                    None => layout(
                        Allocator::OnDemand,
                        options.bounds.unwrap_or(Bounds::Explicit),
                        0,
                    ),
                }
            }
        }
    }

    /// Address space the pool reserves when the engine is built (nothing on
    /// demand).
    pub fn pool_reservation(&self, max_memory_bytes: usize) -> u64 {
        match self.allocator {
            Allocator::OnDemand => 0,
            Allocator::Pooling => {
                u64::from(self.pool_instances)
                    * MEMORIES_PER_INSTANCE
                    * slot(self.bounds, max_memory_bytes as u64)
            }
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.allocator {
            Allocator::Pooling => write!(f, "pooling ({} instances)", self.pool_instances)?,
            Allocator::OnDemand => f.write_str("on-demand")?,
        }
        match self.bounds {
            Bounds::GuardPages => f.write_str(", guard pages"),
            Bounds::Explicit => f.write_str(", explicit bounds checks"),
        }
    }
}

/// Address space one memory takes in the pool.
fn slot(bounds: Bounds, max_memory: u64) -> u64 {
    match bounds {
        Bounds::GuardPages => GUARDED_RESERVATION + GUARD,
        Bounds::Explicit => max_memory.next_multiple_of(1 << 16) + EXPLICIT_GUARD,
    }
}

/// The target triple this host was built for.
pub const TARGET: &str = env!("OUTPOST_TARGET");

/// The wasmtime release the host embeds (pinned in the workspace manifest;
/// a unit test keeps the two equal). Precompiled code is tied to it.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Everything in an engine's configuration that changes the code it
/// generates, so native code compiled for one configuration is used only by
/// engines with the same. Its [`Display`](std::fmt::Display) form is the
/// engine fingerprint that precompiled artifacts in bundles are keyed by,
/// e.g. `wasmtime-48.0.8 guard-pages epochs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeSettings {
    /// How accesses are kept inside a memory.
    pub bounds: Bounds,
    /// With explicit checks: the fixed reservation of a pooled memory (its
    /// largest size), which lets generated code compare against a constant;
    /// `None` for memories that grow in place or move.
    pub static_reservation: Option<u64>,
    /// Epoch checks in loops and calls.
    pub epochs: bool,
    /// Fuel counting.
    pub fuel: bool,
}

impl CodeSettings {
    /// The code settings of an engine built from `options` with `layout`.
    pub fn of(options: &EngineOptions, layout: Layout) -> Self {
        let static_reservation = (layout.bounds == Bounds::Explicit
            && layout.allocator == Allocator::Pooling)
            .then(|| (options.max_memory_bytes as u64).next_multiple_of(1 << 16));
        Self {
            bounds: layout.bounds,
            static_reservation,
            epochs: options.epoch_interruption,
            fuel: options.fuel,
        }
    }

    /// The configurations `outpost bundle --precompile` compiles for: the
    /// two a host with default options picks between (guard pages where the
    /// address space allows, else explicit checks on demand), with epoch
    /// deadlines and without fuel.
    pub fn published() -> [Self; 2] {
        [Bounds::GuardPages, Bounds::Explicit].map(|bounds| Self {
            bounds,
            static_reservation: None,
            epochs: true,
            fuel: false,
        })
    }

    /// A wasmtime configuration with these settings (and nothing about
    /// allocation or the target).
    fn config(&self) -> Config {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(self.epochs);
        config.consume_fuel(self.fuel);
        match (self.bounds, self.static_reservation) {
            (Bounds::GuardPages, _) => {
                config.memory_reservation(GUARDED_RESERVATION);
                config.memory_guard_size(GUARD);
            }
            // A pooled memory never moves: its slot is the largest it may
            // grow to.
            (Bounds::Explicit, Some(reservation)) => {
                config.memory_reservation(reservation);
                config.memory_guard_size(EXPLICIT_GUARD);
                config.guard_before_linear_memory(false);
            }
            (Bounds::Explicit, None) => {
                config.memory_reservation(0);
                config.memory_reservation_for_growth(GROWTH_RESERVATION);
                config.memory_guard_size(EXPLICIT_GUARD);
                config.guard_before_linear_memory(false);
            }
        }
        config
    }
}

impl std::fmt::Display for CodeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wasmtime-{WASMTIME_VERSION}")?;
        match (self.bounds, self.static_reservation) {
            (Bounds::GuardPages, _) => f.write_str(" guard-pages")?,
            (Bounds::Explicit, None) => f.write_str(" explicit")?,
            (Bounds::Explicit, Some(bytes)) => write!(f, " explicit-static={bytes}")?,
        }
        if self.epochs {
            f.write_str(" epochs")?;
        }
        if self.fuel {
            f.write_str(" fuel")?;
        }
        Ok(())
    }
}

/// Compiles the component `bytes` to native code for `target` with `code`
/// settings, as a host on that target with those settings would: what
/// `outpost bundle --precompile` puts in a bundle. `target` must be written
/// as hosts name themselves (`outpost --version`), since hosts look
/// artifacts up by that exact name.
#[cfg(feature = "cranelift")]
pub fn precompile(bytes: &[u8], target: &str, code: CodeSettings) -> Result<Vec<u8>, String> {
    use std::str::FromStr;
    let parsed = target_lexicon::Triple::from_str(target)
        .map_err(|e| format!("'{target}' is not a target triple: {e}"))?;
    let canonical = parsed.to_string();
    if canonical != target {
        return Err(format!(
            "write the target '{target}' as '{canonical}': hosts look artifacts up by that exact name"
        ));
    }
    if target != TARGET && !cfg!(feature = "precompile") {
        return Err(format!(
            "this outpost compiles only for its own target ({TARGET}); compiling for {target} needs a build with the `precompile` feature (the default)"
        ));
    }
    let mut config = code.config();
    config.target(target).map_err(|e| {
        format!(
            "cannot compile for '{target}': {e:#} (this outpost compiles for x86_64, aarch64 and riscv64gc targets)"
        )
    })?;
    if parsed.architecture
        == target_lexicon::Architecture::Riscv64(target_lexicon::Riscv64Architecture::Riscv64gc)
    {
        // Cranelift lowers wasm's 128-bit values (SIMD, and the v128 moves
        // and spills it emits itself) to RISC-V vector instructions only;
        // without them it cannot compile a component at all. Artifacts for
        // riscv64 therefore need the V extension (RVV 1.0), which hosts check
        // before loading one (`riscv_vector_available`).
        // SAFETY: a codegen flag: code compiled with it runs only where the
        // CPU has the extension, which the loading host checks.
        #[allow(unsafe_code)]
        unsafe {
            config.cranelift_flag_enable("has_v");
        }
    }
    let engine = Engine::new(&config)
        .map_err(|e| format!("cannot compile for '{target}' ({code}): {e:#}"))?;
    // Cranelift reports some unsupported code by panicking; that must fail
    // this bundle command, not abort it.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.precompile_component(bytes)
    })) {
        Ok(compiled) => compiled.map_err(|e| format!("compiling for '{target}' ({code}): {e:#}")),
        Err(payload) => Err(format!(
            "compiling for '{target}' ({code}): the compiler failed: {}",
            crate::backend::panic_message(payload.as_ref())
        )),
    }
}

/// Whether this riscv64 CPU has the vector extension (RVV 1.0), as the
/// kernel reports it in the auxiliary vector (one bit per single-letter
/// extension, 'V' included).
#[cfg(target_arch = "riscv64")]
pub fn riscv_vector_available() -> bool {
    // SAFETY: getauxval only reads the process's auxiliary vector.
    #[allow(unsafe_code)]
    let hwcap = unsafe { libc::getauxval(libc::AT_HWCAP) };
    hwcap & (1 << (b'V' - b'A')) != 0
}

/// An engine, its memory layout, and its epoch ticker.
pub struct Runtime {
    engine: Engine,
    layout: Layout,
    code: CodeSettings,
    metering: Metering,
    max_memory_bytes: usize,
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
    /// Builds the engine with the layout [`Layout::plan`] picks for this
    /// process's address space. If a pool it planned still cannot be
    /// reserved (the probe could not see a limit), on-demand allocation with
    /// explicit checks is used instead, unless the options asked for pooling.
    pub fn new(options: &EngineOptions) -> Result<Self, EngineError> {
        Self::with_space(options, &AddressSpace::probe())
    }

    /// [`Runtime::new`] planned in a given address space.
    pub fn with_space(options: &EngineOptions, space: &AddressSpace) -> Result<Self, EngineError> {
        let planned = Layout::plan(options, space);
        let available = space.available();
        if planned.bounds == Bounds::GuardPages && available < slot(Bounds::GuardPages, 0) {
            return Err(EngineError(format!(
                "guard pages need {} MiB of address space per memory, and this process may map only {} MiB more (ulimit -v, LimitAS=, or the kernel's address width); use --memory-bounds explicit (engine.memory_bounds = \"explicit\") or auto",
                slot(Bounds::GuardPages, 0) >> 20,
                available >> 20
            )));
        }
        if planned.allocator == Allocator::Pooling {
            let needed = planned.pool_reservation(options.max_memory_bytes);
            if needed > available {
                return Err(EngineError(format!(
                    "a pool of {} instances ({}) needs {} MiB of address space, and this process may map only {} MiB more; lower engine.pool_instances, or use --allocator on-demand or auto",
                    planned.pool_instances,
                    planned,
                    needed >> 20,
                    available >> 20
                )));
            }
        }
        let (engine, layout) = match build(options, planned) {
            Ok(engine) => (engine, planned),
            Err(e) if options.allocator.is_some() || planned.allocator == Allocator::OnDemand => {
                return Err(e);
            }
            Err(_) => {
                let fallback = Layout {
                    allocator: Allocator::OnDemand,
                    bounds: options.bounds.unwrap_or(Bounds::Explicit),
                    pool_instances: 0,
                };
                (build(options, fallback)?, fallback)
            }
        };
        start_ticker(&engine)?;
        Ok(Self {
            engine,
            layout,
            code: CodeSettings::of(options, layout),
            metering: Metering {
                fuel: options.fuel,
                epochs: options.epoch_interruption,
                limits: options.resource_limits,
            },
            max_memory_bytes: options.max_memory_bytes,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The allocator in use.
    pub fn allocator(&self) -> Allocator {
        self.layout.allocator
    }

    /// The memory layout in use.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The settings that shape generated code; their text is the engine
    /// fingerprint precompiled artifacts must match.
    pub fn code_settings(&self) -> CodeSettings {
        self.code
    }

    /// With the pooling allocator, how many component instances can exist
    /// at once; `None` on demand (no fixed limit).
    pub fn pool_instances(&self) -> Option<u32> {
        (self.layout.allocator == Allocator::Pooling).then_some(self.layout.pool_instances)
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

fn build(options: &EngineOptions, layout: Layout) -> Result<Engine, EngineError> {
    let mut config = CodeSettings::of(options, layout).config();
    if layout.allocator == Allocator::Pooling {
        let instances = layout.pool_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(instances);
        pool.total_core_instances(instances * 4);
        pool.total_memories(instances * MEMORIES_PER_INSTANCE as u32);
        pool.total_tables(instances * 4);
        pool.max_memory_size(options.max_memory_bytes);
        pool.max_memories_per_component(4);
        pool.max_tables_per_component(8);
        pool.max_core_instances_per_component(16);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    Engine::new(&config).map_err(|e| EngineError(format!("{layout}: {e:#}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn space(va_bits: u32, limit: Option<u64>) -> AddressSpace {
        AddressSpace {
            va_bits,
            limit,
            used: GIB,
        }
    }

    fn plan(options: &EngineOptions, space: &AddressSpace) -> (Allocator, Bounds, u32) {
        let l = Layout::plan(options, space);
        (l.allocator, l.bounds, l.pool_instances)
    }

    #[test]
    fn auto_pools_with_guard_pages_where_the_whole_pool_fits() {
        let x86 = space(47, None);
        let options = EngineOptions::default();
        assert_eq!(
            plan(&options, &x86),
            (Allocator::Pooling, Bounds::GuardPages, 128)
        );
    }

    #[test]
    fn auto_shrinks_the_pool_to_a_39_bit_address_space() {
        let pi = space(39, None);
        let layout = Layout::plan(&EngineOptions::default(), &pi);
        assert_eq!(layout.allocator, Allocator::Pooling);
        assert_eq!(layout.bounds, Bounds::GuardPages);
        // 511 GiB free, an eighth kept for the host, 8 GiB + 64 MiB per instance.
        assert_eq!(layout.pool_instances, 55);
        assert!(layout.pool_reservation(1 << 30) < pi.available());
        // One more instance would not leave the host its share.
        let bigger = Layout {
            pool_instances: 56,
            ..layout
        };
        assert!(bigger.pool_reservation(1 << 30) > pi.available() - pi.available() / 8);
    }

    #[test]
    fn auto_checks_bounds_explicitly_where_guard_pages_do_not_fit() {
        let options = EngineOptions::default();
        for limit in [2_048_000_000, 8_192_000_000, 64_000_000_000] {
            assert_eq!(
                plan(&options, &space(47, Some(limit))),
                (Allocator::OnDemand, Bounds::Explicit, 0),
                "ulimit -v {}",
                limit / 1024
            );
        }
        // 200 GiB: a pool of 21 guarded instances.
        assert_eq!(
            plan(&options, &space(47, Some(200 * GIB))),
            (Allocator::Pooling, Bounds::GuardPages, 21)
        );
    }

    #[test]
    fn what_the_options_name_is_kept() {
        let small = space(47, Some(2 * GIB));
        let options = |allocator, bounds| EngineOptions {
            allocator,
            bounds,
            ..EngineOptions::default()
        };
        assert_eq!(
            plan(&options(Some(Allocator::Pooling), None), &small),
            (Allocator::Pooling, Bounds::Explicit, 128)
        );
        assert_eq!(
            plan(&options(None, Some(Bounds::GuardPages)), &small),
            (Allocator::OnDemand, Bounds::GuardPages, 0)
        );
        assert_eq!(
            plan(&options(None, Some(Bounds::Explicit)), &space(47, None)),
            (Allocator::Pooling, Bounds::Explicit, 128)
        );
        assert_eq!(
            plan(&options(Some(Allocator::OnDemand), None), &space(47, None)),
            (Allocator::OnDemand, Bounds::GuardPages, 0)
        );
        // A small pool asked for is kept whole when it fits.
        let few = EngineOptions {
            pool_instances: 4,
            ..EngineOptions::default()
        };
        assert_eq!(
            plan(&few, &space(39, None)),
            (Allocator::Pooling, Bounds::GuardPages, 4)
        );
    }

    #[test]
    fn the_fingerprint_names_every_setting_that_changes_code() {
        let options = EngineOptions::default();
        let layout = |allocator, bounds| Layout {
            allocator,
            bounds,
            pool_instances: 16,
        };
        let fingerprint = |options: &EngineOptions, allocator, bounds| {
            CodeSettings::of(options, layout(allocator, bounds)).to_string()
        };
        let v = WASMTIME_VERSION;
        // Pooled or not, guard pages generate the same code.
        for allocator in [Allocator::Pooling, Allocator::OnDemand] {
            assert_eq!(
                fingerprint(&options, allocator, Bounds::GuardPages),
                format!("wasmtime-{v} guard-pages epochs")
            );
        }
        assert_eq!(
            fingerprint(&options, Allocator::OnDemand, Bounds::Explicit),
            format!("wasmtime-{v} explicit epochs")
        );
        // A pooled memory with explicit checks has a fixed bound, which the
        // code compares against: part of the fingerprint.
        assert_eq!(
            fingerprint(&options, Allocator::Pooling, Bounds::Explicit),
            format!("wasmtime-{v} explicit-static=1073741824 epochs")
        );
        let metered = EngineOptions {
            fuel: true,
            epoch_interruption: false,
            ..EngineOptions::default()
        };
        assert_eq!(
            fingerprint(&metered, Allocator::OnDemand, Bounds::GuardPages),
            format!("wasmtime-{v} guard-pages fuel")
        );
        // What a publisher compiles for is what a default host picks.
        let published: Vec<String> = CodeSettings::published()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            published,
            [
                fingerprint(&options, Allocator::Pooling, Bounds::GuardPages),
                fingerprint(&options, Allocator::OnDemand, Bounds::Explicit),
            ]
        );
    }

    #[test]
    fn the_wasmtime_version_is_the_one_the_workspace_pins() {
        let workspace = include_str!("../../Cargo.toml");
        let pin = format!("wasmtime = {{ version = \"={WASMTIME_VERSION}\"");
        assert!(workspace.contains(&pin), "Cargo.toml lacks {pin}");
    }

    /// Two engine configurations share a fingerprint exactly when wasmtime
    /// considers code compiled for one compatible with the other: a setting
    /// that changes code but not the fingerprint (or the other way round)
    /// fails here.
    #[cfg(feature = "cranelift")]
    #[test]
    fn one_fingerprint_exactly_when_wasmtime_sees_one_configuration() {
        use std::hash::{Hash, Hasher};
        let hash = |engine: &Engine| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            hasher.finish()
        };
        let mut seen: Vec<(String, u64)> = Vec::new();
        for allocator in [Allocator::Pooling, Allocator::OnDemand] {
            for bounds in [Bounds::GuardPages, Bounds::Explicit] {
                for (fuel, epochs) in [(false, true), (true, true), (false, false), (true, false)] {
                    for max_memory_bytes in [64 << 20, 1 << 30] {
                        let options = EngineOptions {
                            allocator: Some(allocator),
                            bounds: Some(bounds),
                            pool_instances: 2,
                            max_memory_bytes,
                            fuel,
                            epoch_interruption: epochs,
                            resource_limits: true,
                        };
                        let layout = Layout {
                            allocator,
                            bounds,
                            pool_instances: 2,
                        };
                        let engine = build(&options, layout).unwrap();
                        let fingerprint = CodeSettings::of(&options, layout).to_string();
                        seen.push((fingerprint, hash(&engine)));
                    }
                }
            }
        }
        for (a, hash_a) in &seen {
            for (b, hash_b) in &seen {
                assert_eq!(
                    a == b,
                    hash_a == hash_b,
                    "'{a}' and '{b}': fingerprints and wasmtime disagree"
                );
            }
        }
        // And the published configurations are among them, as compiled.
        for code in CodeSettings::published() {
            let engine = Engine::new(&code.config()).unwrap();
            let hash = hash(&engine);
            assert!(
                seen.iter()
                    .any(|(f, h)| *f == code.to_string() && *h == hash),
                "{code}"
            );
        }
    }
}
