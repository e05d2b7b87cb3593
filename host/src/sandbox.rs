//! What a stage may touch beyond its own memory: nothing, unless its
//! pipeline (and so its signed bundle) grants it. Denied attempts the host
//! can see are logged with the grant that would allow them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

/// A stage's capabilities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants {
    /// Environment variables it sees, with their values.
    pub env: Vec<(String, String)>,
    /// Host directories it may open.
    pub dirs: Vec<DirGrant>,
    /// Addresses it may connect to over TCP.
    pub network: Vec<SocketAddr>,
    /// Whether it reads the real clocks; if not, both stand still at zero.
    pub clocks: bool,
}

/// A host directory made visible to a stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the device.
    pub host: PathBuf,
    /// Where the stage sees it.
    pub guest: String,
    /// Whether the stage may write; read-only otherwise.
    pub writable: bool,
}

/// Lines about refused operations one stage may log per minute, across all
/// its instances; past that they are counted, and the count is logged when
/// the minute is over. A hostile stage can make refusals as fast as it can
/// loop; the device's log must not grow with it.
const LOG_LINES_PER_WINDOW: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(60);

/// The rate-limited log of one stage.
pub struct StageLog {
    stage: String,
    window: Mutex<LogWindow>,
}

struct LogWindow {
    started: std::time::Instant,
    logged: u32,
    suppressed: u64,
}

impl StageLog {
    /// A log for `stage`.
    pub fn new(stage: &str) -> Arc<Self> {
        Arc::new(Self {
            stage: stage.to_owned(),
            window: Mutex::new(LogWindow {
                started: std::time::Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        })
    }

    /// Logs `message` unless this stage has used up its lines for the
    /// current window; returns whether it was written.
    pub fn log(&self, message: &str) -> bool {
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w.started.elapsed() >= LOG_WINDOW {
            if w.suppressed > 0 {
                eprintln!(
                    "outpost: stage '{}': {} more refused operations in the last {} s were not logged",
                    self.stage,
                    w.suppressed,
                    LOG_WINDOW.as_secs()
                );
            }
            *w = LogWindow {
                started: std::time::Instant::now(),
                logged: 0,
                suppressed: 0,
            };
        }
        if w.logged >= LOG_LINES_PER_WINDOW {
            w.suppressed += 1;
            return false;
        }
        w.logged += 1;
        eprintln!("outpost: stage '{}': {message}", self.stage);
        true
    }
}

/// Attempts a store made that its grants did not allow: the first is kept
/// for the error, the rest only counted.
#[derive(Clone)]
pub struct Denials {
    state: Arc<Mutex<DenialState>>,
    log: Arc<StageLog>,
}

#[derive(Default)]
struct DenialState {
    first: Option<String>,
    count: u64,
}

impl Denials {
    /// Denials logged to `log`.
    pub fn new(log: Arc<StageLog>) -> Self {
        Self {
            state: Arc::default(),
            log,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut DenialState) -> R) -> R {
        f(&mut self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn record(&self, message: String) {
        self.log.log(&message);
        self.with(|s| {
            s.count += 1;
            s.first.get_or_insert(message);
        });
    }

    /// The first denial since the last [`Denials::reset`].
    pub fn first(&self) -> Option<String> {
        self.with(|s| s.first.clone())
    }

    /// How many denials since the last [`Denials::reset`].
    pub fn count(&self) -> u64 {
        self.with(|s| s.count)
    }

    /// Forgets earlier denials (a new call starts).
    pub fn reset(&self) {
        self.with(|s| *s = DenialState::default());
    }
}

/// Builds the WASI context of one instance of `stage`: no arguments, no
/// stdio, and only what `grants` lists.
///
/// A guest's libc resolves file paths against its preopened directories
/// itself, and reads its environment as one list, so a file or variable
/// that was not granted never reaches the host and cannot be logged; socket
/// and clock use does reach it, and is.
pub fn wasi_ctx(grants: &Grants, denials: &Denials) -> Result<WasiCtx, String> {
    let mut builder = WasiCtxBuilder::new();
    for (key, value) in &grants.env {
        builder.env(key, value);
    }
    for dir in &grants.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        builder
            .preopened_dir(&dir.host, &dir.guest, perms)
            .map_err(|e| format!("granted directory {}: {e:#}", dir.host.display()))?;
    }
    let allowed = grants.network.clone();
    let log = denials.clone();
    builder.allow_ip_name_lookup(false);
    builder.allow_udp(false);
    // TCP sockets may be created so that every connection attempt reaches
    // the address check below, which allows only granted addresses (and
    // logs the rest).
    builder.allow_tcp(true);
    builder.socket_addr_check(move |addr, use_| {
        let ok = match use_ {
            // connect() binds to a wildcard address first.
            SocketAddrUse::TcpBind => !allowed.is_empty() && addr.ip().is_unspecified() && addr.port() == 0,
            SocketAddrUse::TcpConnect => allowed.contains(&addr),
            _ => false,
        };
        if !ok {
            let message = match use_ {
                // Binding the wildcard precedes every connect (and listen),
                // so without any grant this is where a stage is stopped.
                SocketAddrUse::TcpBind if allowed.is_empty() => format!(
                    "network access denied: the stage has no network grant (it tried to open a TCP socket, bound to {addr}); add the address it needs to [stages.grants] network"
                ),
                _ => format!("network access to {addr} ({use_:?}) denied: not granted; add \"{addr}\" to [stages.grants] network"),
            };
            log.record(message);
        }
        Box::pin(async move { ok })
    });
    if !grants.clocks {
        builder.wall_clock(FrozenClock::new(&denials.log));
        builder.monotonic_clock(FrozenClock::new(&denials.log));
    }
    Ok(builder.build())
}

/// A clock that stands still at zero and logs its first reading (reading
/// it is no failure, so it is not a denial).
struct FrozenClock {
    log: Arc<StageLog>,
    logged: std::sync::atomic::AtomicBool,
}

impl FrozenClock {
    fn new(log: &Arc<StageLog>) -> Self {
        Self {
            log: log.clone(),
            logged: false.into(),
        }
    }

    fn note(&self) {
        if !self.logged.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.log.log(
                "read a clock, which stands still without a grant; set clocks = true in [stages.grants] for real time",
            );
        }
    }
}

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        self.note();
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        self.note();
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_ten_times_a_minute_then_counted() {
        let log = StageLog::new("noisy");
        let denials = Denials::new(log.clone());
        for i in 0..1000 {
            denials.record(format!("refusal {i}"));
        }
        assert_eq!(denials.count(), 1000);
        assert_eq!(denials.first().as_deref(), Some("refusal 0"));
        // Another instance of the same stage shares the budget.
        assert!(!Denials::new(log.clone()).log.log("one more"));
        let w = log.window.lock().unwrap();
        assert_eq!((w.logged, w.suppressed), (LOG_LINES_PER_WINDOW, 991));
    }
}
