//! `outpost serve`'s configuration: a TOML file (`/etc/outpost/outpost.toml`
//! unless `--config` names another), strict (an unknown key is an error),
//! with command-line flags taking precedence. Every key is described in
//! `host/outpost.toml`, the commented file packages install.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration is read from when `--config` is not given. A
/// missing default file means "all defaults"; a missing `--config` file is
/// an error.
pub const DEFAULT_CONFIG: &str = "/etc/outpost/outpost.toml";

/// The longest deadline or timeout the file may set.
const DAY_MS: u64 = 86_400_000;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Signed bundles to serve (directories or packed archives).
    pub bundles: Vec<PathBuf>,
    /// Trust roots, oldest first, continuing from the device's stored root.
    pub trust: Vec<PathBuf>,
    /// Device state directory.
    pub state_dir: Option<PathBuf>,
    /// Device policy file (TOML).
    pub policy: Option<PathBuf>,
    /// `human` or `json`.
    pub log_format: Option<LogFormat>,
    /// Use the precompiled component cache (default true).
    pub component_cache: Option<bool>,
    pub listen: ListenFile,
    pub requests: RequestsFile,
    pub engine: EngineFile,
    /// Per-pipeline overrides of `[requests]`, by model (bundle) name.
    pub pipelines: BTreeMap<String, PipelineFile>,
    /// Fleet updates (absent: none).
    pub updates: Option<UpdatesFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdatesFile {
    pub repository: Option<String>,
    pub group: Option<String>,
    pub fleet_root: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub interval_s: Option<u64>,
    pub jitter: Option<f64>,
    pub stall_ms: Option<u64>,
    pub probation_s: Option<u64>,
    pub max_failure_rate: Option<f64>,
    pub min_requests: Option<u64>,
    pub max_restarts: Option<u32>,
}

/// How the service follows its fleet.
#[derive(Debug, Clone)]
pub struct UpdateSettings {
    pub repository: String,
    pub group: String,
    pub fleet_root: PathBuf,
    /// Certificate authorities trusted for https:// beside the system's.
    pub ca_file: Option<PathBuf>,
    pub interval: Duration,
    /// Each wait is the interval times a random factor in 1 ± jitter.
    pub jitter: f64,
    pub stall: Duration,
    pub probation: Duration,
    /// Above this share of failed requests (stage failures) during
    /// probation, the new version is rolled back.
    pub max_failure_rate: f64,
    /// Probation judges only once this many requests reached the new version.
    pub min_requests: u64,
    /// A version on probation is rolled back at start once the service
    /// has started more often than this with it on probation.
    pub max_restarts: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenFile {
    pub http: Option<String>,
    pub grpc: Option<String>,
    pub insecure: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub max_body_mib: Option<u64>,
    pub max_header_kib: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestsFile {
    pub concurrency: Option<usize>,
    pub queue: Option<usize>,
    pub deadline_ms: Option<u64>,
    pub token_deadline_ms: Option<u64>,
    pub drain_grace_ms: Option<u64>,
    pub drain_delay_ms: Option<u64>,
    pub warm: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineFile {
    pub allocator: Option<String>,
    pub memory_bounds: Option<String>,
    pub fuel: Option<bool>,
    pub backend: Option<String>,
    pub onnxruntime_lib: Option<PathBuf>,
    pub onnxruntime_threads: Option<usize>,
    pub pool_instances: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineFile {
    pub concurrency: Option<usize>,
    pub queue: Option<usize>,
    pub deadline_ms: Option<u64>,
    pub token_deadline_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// What the command line says; each given flag wins over the file.
#[derive(Debug, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub bundles: Vec<PathBuf>,
    pub trust: Vec<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub listen: Option<String>,
    pub grpc_listen: Option<String>,
    pub insecure_listen: bool,
    pub log_format: Option<LogFormat>,
    pub no_cache: bool,
    pub allocator: Option<String>,
    pub memory_bounds: Option<String>,
    pub fuel: bool,
    pub backend: Option<String>,
    pub onnxruntime_lib: Option<PathBuf>,
    pub onnxruntime_threads: Option<usize>,
}

/// How requests to one pipeline are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Requests that run at once.
    pub concurrency: usize,
    /// Requests that may wait for a slot; one more is answered 503 at once.
    pub queue: usize,
    /// A request's deadline, from when its body has been read; a request
    /// may ask for less.
    pub deadline: Duration,
    /// For generation requests (streamed or not: both run with a sink): the
    /// longest a stage may go between two partial outputs, once it has
    /// sent one.
    pub token_deadline: Option<Duration>,
}

/// The resolved settings `serve` runs with.
#[derive(Debug)]
pub struct Settings {
    pub source: String,
    pub bundles: Vec<PathBuf>,
    pub trust: Vec<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub log_format: LogFormat,
    pub component_cache: bool,
    pub http: SocketAddr,
    /// `None`: no gRPC listener (`listen.grpc = ""`).
    pub grpc: Option<SocketAddr>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub token_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub drain_grace: Duration,
    pub drain_delay: Duration,
    pub warm: bool,
    pub defaults: Admission,
    pub pipelines: BTreeMap<String, Admission>,
    pub allocator: Option<String>,
    pub memory_bounds: Option<String>,
    pub fuel: bool,
    pub backend: Option<String>,
    pub onnxruntime_lib: Option<PathBuf>,
    pub onnxruntime_threads: Option<usize>,
    pub pool_instances: Option<u32>,
    pub updates: Option<UpdateSettings>,
}

impl Settings {
    /// Reads the file (if any), applies the flags, and checks the result.
    pub fn resolve(flags: Flags) -> Result<Self> {
        let (file, source, base) = match &flags.config {
            Some(path) => (read(path)?, path.display().to_string(), parent(path)),
            None if Path::new(DEFAULT_CONFIG).exists() => (
                read(Path::new(DEFAULT_CONFIG))?,
                DEFAULT_CONFIG.to_owned(),
                parent(Path::new(DEFAULT_CONFIG)),
            ),
            None => (
                FileConfig::default(),
                "defaults (no config file)".to_owned(),
                PathBuf::from("."),
            ),
        };
        Self::from_parts(file, flags, source, &base)
    }

    fn from_parts(file: FileConfig, flags: Flags, source: String, base: &Path) -> Result<Self> {
        // Paths in the file are relative to the file's directory.
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let key = |k: &str| format!("{source}: {k}");
        let bundles = if flags.bundles.is_empty() {
            file.bundles.into_iter().map(rel).collect()
        } else {
            flags.bundles
        };
        let updates = match file.updates {
            None => None,
            Some(u) => Some(update_settings(u, &key, &rel)?),
        };
        if bundles.is_empty() && updates.is_none() {
            bail!(
                "no bundles to serve: name them on the command line (outpost serve BUNDLE...) or in {source} (bundles = [\"/var/lib/outpost/bundles/NAME.bundle\"]), or follow a fleet ([updates])"
            );
        }
        let trust = if flags.trust.is_empty() {
            file.trust.into_iter().map(rel).collect()
        } else {
            flags.trust
        };
        let addr = |value: &str, what: &str| -> Result<SocketAddr> {
            value.parse::<SocketAddr>().map_err(|e| {
                anyhow::anyhow!(
                    "{}: '{value}' is not an address to listen on ({e}); write IP:PORT, e.g. 127.0.0.1:8000",
                    key(what)
                )
            })
        };
        let http = addr(
            flags
                .listen
                .as_deref()
                .or(file.listen.http.as_deref())
                .unwrap_or("127.0.0.1:8000"),
            "listen.http (--listen)",
        )?;
        let grpc_text = flags
            .grpc_listen
            .or(file.listen.grpc)
            .unwrap_or_else(|| "127.0.0.1:8001".to_owned());
        let grpc = if grpc_text.is_empty() {
            None
        } else {
            Some(addr(&grpc_text, "listen.grpc (--grpc-listen)")?)
        };
        if grpc == Some(http) && http.port() != 0 {
            bail!(
                "{}: HTTP and gRPC both on {http}; give them different ports",
                key("listen")
            );
        }
        let tls = match (file.listen.tls_cert, file.listen.tls_key) {
            (Some(cert), Some(key)) => Some((rel(cert), rel(key))),
            (None, None) => None,
            _ => bail!(
                "{}: tls_cert and tls_key go together (a PEM certificate chain and its PEM private key)",
                key("listen")
            ),
        };
        let token_file = file.listen.token_file.map(rel);
        let insecure = flags.insecure_listen || file.listen.insecure;
        for (what, address) in [("HTTP", Some(http)), ("gRPC", grpc)] {
            let Some(address) = address else { continue };
            if address.ip().is_loopback() || insecure {
                continue;
            }
            if tls.is_none() || token_file.is_none() {
                bail!(
                    "refusing to serve {what} on {address}: it is not a loopback address, and serving beyond this device needs TLS and bearer tokens (listen.tls_cert, listen.tls_key and listen.token_file in {source}); to serve in the clear on a network you trust, pass --insecure-listen (listen.insecure = true)"
                );
            }
        }
        let positive = |value: Option<u64>, default: u64, what: &str| -> Result<u64> {
            match value {
                Some(0) => bail!("{}: must be at least 1", key(what)),
                Some(v) => Ok(v),
                None => Ok(default),
            }
        };
        let ms = |value: Option<u64>, default: u64, what: &str| -> Result<Duration> {
            let v = positive(value, default, what)?;
            // Deadlines become instants; a year of milliseconds would
            // overflow them.
            if v > DAY_MS {
                bail!(
                    "{}: {v} ms is more than a day; give at most {DAY_MS}",
                    key(what)
                );
            }
            Ok(Duration::from_millis(v))
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let requests = &file.requests;
        let defaults = Admission {
            concurrency: positive(
                requests.concurrency.map(|n| n as u64),
                cores as u64,
                "requests.concurrency",
            )? as usize,
            queue: requests.queue.unwrap_or(64),
            deadline: ms(requests.deadline_ms, 60_000, "requests.deadline_ms")?,
            token_deadline: requests
                .token_deadline_ms
                .map(|v| ms(Some(v), 0, "requests.token_deadline_ms"))
                .transpose()?,
        };
        let mut pipelines = BTreeMap::new();
        for (name, p) in file.pipelines {
            let what = |k: &str| format!("pipelines.{name}.{k}");
            pipelines.insert(
                name.clone(),
                Admission {
                    concurrency: positive(
                        p.concurrency.map(|n| n as u64),
                        defaults.concurrency as u64,
                        &what("concurrency"),
                    )? as usize,
                    queue: p.queue.unwrap_or(defaults.queue),
                    deadline: match p.deadline_ms {
                        Some(_) => ms(p.deadline_ms, 0, &what("deadline_ms"))?,
                        None => defaults.deadline,
                    },
                    token_deadline: match p.token_deadline_ms {
                        Some(_) => Some(ms(p.token_deadline_ms, 0, &what("token_deadline_ms"))?),
                        None => defaults.token_deadline,
                    },
                },
            );
        }
        let mib = |v: u64| usize::try_from(v.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        Ok(Settings {
            bundles,
            trust,
            state_dir: flags.state_dir.or(file.state_dir.map(rel)),
            policy: flags.policy.or(file.policy.map(rel)),
            log_format: flags
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Human),
            component_cache: !flags.no_cache && file.component_cache.unwrap_or(true),
            http,
            grpc,
            tls,
            token_file,
            max_body_bytes: mib(positive(
                file.listen.max_body_mib,
                64,
                "listen.max_body_mib",
            )?),
            max_header_bytes: usize::try_from(
                positive(file.listen.max_header_kib, 16, "listen.max_header_kib")?
                    .saturating_mul(1024),
            )
            .unwrap_or(usize::MAX)
            // hyper's smallest read buffer.
            .max(8192),
            header_read_timeout: ms(
                file.listen.header_read_timeout_ms,
                10_000,
                "listen.header_read_timeout_ms",
            )?,
            body_read_timeout: ms(
                file.listen.body_read_timeout_ms,
                30_000,
                "listen.body_read_timeout_ms",
            )?,
            max_connections: positive(
                file.listen.max_connections.map(|n| n as u64),
                1024,
                "listen.max_connections",
            )? as usize,
            drain_grace: ms(requests.drain_grace_ms, 30_000, "requests.drain_grace_ms")?,
            drain_delay: match requests.drain_delay_ms {
                Some(0) | None => Duration::ZERO,
                Some(_) => ms(requests.drain_delay_ms, 0, "requests.drain_delay_ms")?,
            },
            warm: requests.warm.unwrap_or(true),
            defaults,
            pipelines,
            allocator: flags.allocator.or(file.engine.allocator),
            memory_bounds: flags.memory_bounds.or(file.engine.memory_bounds),
            fuel: flags.fuel || file.engine.fuel.unwrap_or(false),
            backend: flags.backend.or(file.engine.backend),
            onnxruntime_lib: flags
                .onnxruntime_lib
                .or(file.engine.onnxruntime_lib.map(rel)),
            onnxruntime_threads: flags
                .onnxruntime_threads
                .or(file.engine.onnxruntime_threads),
            pool_instances: match file.engine.pool_instances {
                Some(0) => bail!("{}: must be at least 1", key("engine.pool_instances")),
                other => other,
            },
            updates,
            source,
        })
    }

    /// The admission settings of the pipeline served as `name`.
    pub fn admission(&self, name: &str) -> Admission {
        self.pipelines.get(name).copied().unwrap_or(self.defaults)
    }
}

fn update_settings(
    u: UpdatesFile,
    key: &dyn Fn(&str) -> String,
    rel: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<UpdateSettings> {
    let required = |value: Option<String>, what: &str, example: &str| -> Result<String> {
        match value {
            Some(v) if !v.is_empty() => Ok(v),
            _ => bail!("{}: required with [updates], e.g. {example}", key(what)),
        }
    };
    let repository = required(
        u.repository,
        "updates.repository",
        "repository = \"https://updates.example.com/fleet/\"",
    )?;
    let group = required(u.group, "updates.group", "group = \"cameras-eu\"")?;
    let fleet_root = rel(u.fleet_root.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: required with [updates]: the fleet's root metadata this device was installed with (REPO/metadata/1.root.json)",
            key("updates.fleet_root")
        )
    })?);
    let seconds = |value: Option<u64>, default: u64, what: &str| -> Result<Duration> {
        match value {
            Some(0) => bail!("{}: must be at least 1", key(what)),
            Some(v) if v > 7 * 86_400 => bail!("{}: {v} s is more than a week", key(what)),
            Some(v) => Ok(Duration::from_secs(v)),
            None => Ok(Duration::from_secs(default)),
        }
    };
    let fraction = |value: Option<f64>, default: f64, what: &str| -> Result<f64> {
        let v = value.unwrap_or(default);
        if !(0.0..=1.0).contains(&v) {
            bail!("{}: {v} is not between 0 and 1", key(what));
        }
        Ok(v)
    };
    let stall_ms = match u.stall_ms {
        Some(0) => bail!("{}: must be at least 1", key("updates.stall_ms")),
        Some(v) => v.min(DAY_MS),
        None => 30_000,
    };
    Ok(UpdateSettings {
        repository,
        group,
        fleet_root,
        ca_file: u.ca_file.map(rel),
        interval: seconds(u.interval_s, 300, "updates.interval_s")?,
        jitter: fraction(u.jitter, 0.1, "updates.jitter")?,
        stall: Duration::from_millis(stall_ms),
        probation: seconds(u.probation_s, 300, "updates.probation_s")?,
        max_failure_rate: fraction(u.max_failure_rate, 0.2, "updates.max_failure_rate")?,
        min_requests: u.min_requests.unwrap_or(10),
        max_restarts: u.max_restarts.unwrap_or(3),
    })
}

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

fn read(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the configuration {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}; every key is described in the commented outpost.toml shipped with Outpost",
            path.display(),
            e.to_string().trim_end()
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn resolve(toml_text: &str, flags: Flags) -> Result<Settings> {
        let file: FileConfig = toml::from_str(toml_text)?;
        Settings::from_parts(file, flags, "test.toml".into(), Path::new("/etc/outpost"))
    }

    fn with_bundle() -> Flags {
        Flags {
            bundles: vec!["b.bundle".into()],
            ..Flags::default()
        }
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let s = resolve("", with_bundle()).unwrap();
        assert_eq!(s.http.to_string(), "127.0.0.1:8000");
        assert_eq!(s.grpc.unwrap().to_string(), "127.0.0.1:8001");
        assert_eq!(s.max_body_bytes, 64 << 20);
        assert_eq!(s.defaults.queue, 64);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<FileConfig>("[listen]\nhtttp = \"x\"").unwrap_err();
        assert!(e.to_string().contains("unknown field `htttp`"), "{e}");
    }

    #[test]
    fn a_public_address_needs_tls_and_tokens_or_insecure() {
        let public = "[listen]\nhttp = \"0.0.0.0:8000\"\ngrpc = \"\"";
        let e = resolve(public, with_bundle()).unwrap_err().to_string();
        assert!(e.contains("refusing to serve HTTP on 0.0.0.0:8000"), "{e}");
        assert!(e.contains("--insecure-listen"), "{e}");
        let tls_only = format!("{public}\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"");
        assert!(resolve(&tls_only, with_bundle()).is_err());
        let full = format!("{tls_only}\ntoken_file = \"token\"");
        let s = resolve(&full, with_bundle()).unwrap();
        assert_eq!(s.tls.unwrap().0, PathBuf::from("/etc/outpost/c.pem"));
        let insecure = Flags {
            insecure_listen: true,
            ..with_bundle()
        };
        assert!(resolve(public, insecure).is_ok());
    }

    #[test]
    fn flags_win_and_pipelines_override() {
        let text = "bundles = [\"a.bundle\"]\n[requests]\nconcurrency = 3\nqueue = 5\ntoken_deadline_ms = 900\n[pipelines.demo]\nqueue = 1\ndeadline_ms = 250\n[pipelines.chat]\ntoken_deadline_ms = 50";
        let s = resolve(
            text,
            Flags {
                listen: Some("127.0.0.1:9000".into()),
                ..Flags::default()
            },
        )
        .unwrap();
        assert_eq!(s.bundles, vec![PathBuf::from("/etc/outpost/a.bundle")]);
        assert_eq!(s.http.port(), 9000);
        let demo = s.admission("demo");
        assert_eq!((demo.concurrency, demo.queue), (3, 1));
        assert_eq!(demo.deadline, Duration::from_millis(250));
        assert_eq!(s.admission("other").queue, 5);
        assert_eq!(demo.token_deadline, Some(Duration::from_millis(900)));
        assert_eq!(
            s.admission("chat").token_deadline,
            Some(Duration::from_millis(50))
        );
        let none = resolve("bundles = [\"a.bundle\"]", Flags::default()).unwrap();
        assert_eq!(none.admission("x").token_deadline, None);
    }

    #[test]
    fn nonsense_values_name_their_key() {
        let e = resolve("[requests]\nconcurrency = 0", with_bundle()).unwrap_err();
        assert!(e.to_string().contains("requests.concurrency"), "{e}");
        let e = resolve("[requests]\ndeadline_ms = 99999999999999", with_bundle()).unwrap_err();
        assert!(e.to_string().contains("more than a day"), "{e}");
        let e = resolve("[requests]\ntoken_deadline_ms = 0", with_bundle()).unwrap_err();
        assert!(e.to_string().contains("requests.token_deadline_ms"), "{e}");
        let e = resolve("[listen]\nhttp = \"localhost\"", with_bundle()).unwrap_err();
        assert!(e.to_string().contains("listen.http"), "{e}");
        assert!(resolve("", Flags::default()).is_err());
    }
}

#[cfg(test)]
mod shipped {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The commented configuration shipped with Outpost documents only keys
    /// that exist: with every `# key = value` line (and every `# [table]`
    /// header) uncommented, it still parses.
    #[test]
    fn every_documented_key_is_real() {
        let text = include_str!("../../../../outpost.toml");
        assert!(toml::from_str::<FileConfig>(text).is_ok());
        let uncommented: String = text
            .lines()
            .map(|line| {
                let body = line.strip_prefix("# ").unwrap_or(line);
                let is_setting = body.starts_with('[')
                    || body
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.is_empty() && !k.contains(' '));
                if line.starts_with("# ") && is_setting {
                    body
                } else {
                    line
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let file: FileConfig =
            toml::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(file.requests.queue, Some(64));
        assert_eq!(file.listen.max_body_mib, Some(64));
        assert!(file.pipelines.contains_key("intent-demo"));
        let updates = file.updates.unwrap();
        assert_eq!(updates.probation_s, Some(300));
    }
}
