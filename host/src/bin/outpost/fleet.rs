//! `outpost fleet ...`, `outpost publish`, `outpost update` and `outpost
//! status`: the fleet operator's commands and the device's update check.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use outpost_host::Host;
use outpost_host::device::DeviceState;
use outpost_host::fleet::oci::OciRef;
use outpost_host::fleet::remote::{Pulled, Pushed, Remote};
use outpost_host::fleet::{
    FleetKeys, FleetStatus, Lifetimes, Publisher, RoleName, UpdateOutcome, Updater, UpdaterOptions,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The repository and key folders of a fleet operator.
#[derive(Args)]
pub struct RepoArgs {
    /// The fleet repository: a folder (what a web server publishes), or
    /// the https:// (http://) URL of one on a server that accepts uploads
    /// (HTTP PUT, e.g. nginx with dav_methods PUT).
    #[arg(long)]
    repo: String,
    /// For a URL: a file holding the upload token, sent as
    /// `Authorization: Bearer TOKEN`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// For an https:// URL: certificate authorities (PEM) trusted beside
    /// the system's.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// The folder of role keys (root, targets, snapshot, timestamp; kept
    /// apart from the repository).
    #[arg(long)]
    keys: PathBuf,
    /// How long a newly signed timestamp stays valid, e.g. 90s, 12h, 1d.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    timestamp_lifetime: Option<Duration>,
    /// How long newly signed snapshot metadata stays valid.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    snapshot_lifetime: Option<Duration>,
    /// How long newly signed targets metadata stays valid.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    targets_lifetime: Option<Duration>,
}

impl RepoArgs {
    fn is_remote(&self) -> bool {
        self.repo.starts_with("https://") || self.repo.starts_with("http://")
    }

    fn remote(&self) -> Result<Remote> {
        if self.token_file.is_some() && self.repo.starts_with("http://") {
            eprintln!(
                "warning: the upload token goes to {} without TLS; anyone on the path can read it",
                self.repo
            );
        }
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("--token-file {}: cannot read it", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        Ok(Remote::new(
            &self.repo,
            token,
            self.ca_file.as_deref(),
            Duration::from_secs(30),
        )?)
    }

    /// Runs `op` on the repository: in place for a folder; for a URL, on a
    /// scratch mirror of its metadata (pulled, checked against the pinned
    /// root), then uploads what changed. `target` names a target file the
    /// operation reads (pulled too).
    fn edit<T>(
        &self,
        target: Option<String>,
        op: impl AsyncFnOnce(&Publisher) -> Result<T>,
    ) -> Result<(T, Option<Pushed>)> {
        let rt = runtime()?;
        if !self.is_remote() {
            let publisher = self.publisher(Path::new(&self.repo))?;
            return Ok((rt.block_on(op(&publisher))?, None));
        }
        let remote = self.remote()?;
        let mirror = Mirror::new()?;
        let mut publisher = self.publisher(&mirror.0)?;
        // What this operator verified last of this repository, kept with
        // the keys: a server that replays older metadata is refused.
        let name: String = outpost_signing::Digest::of(remote.url().as_str().as_bytes())
            .to_string()
            .trim_start_matches("sha256:")
            .chars()
            .take(16)
            .collect();
        publisher.datastore = Some(self.keys.join(format!("remote-{name}")));
        rt.block_on(async {
            let mut pulled = remote
                .pull(&mirror.0, &FleetKeys::open(&self.keys).pinned_root())
                .await?;
            if let Some(target) = &target {
                remote.pull_target(&mirror.0, &mut pulled, target).await?;
            }
            let value = op(&publisher).await?;
            let pushed = remote.push(&mirror.0, &pulled).await?;
            // Uploaded already: a failure to remember it must not stop
            // what follows (a rotation putting its key in place).
            if let Err(e) = publisher.remember().await {
                eprintln!("warning: cannot record the uploaded metadata as the newest seen: {e}");
            }
            Ok((value, Some(pushed)))
        })
    }

    /// `fleet init` on a folder, or on a URL where no repository is yet.
    fn init(&self) -> Result<(PathBuf, Option<Pushed>)> {
        let rt = runtime()?;
        if !self.is_remote() {
            let publisher = self.publisher(Path::new(&self.repo))?;
            return Ok((rt.block_on(publisher.init())?, None));
        }
        let remote = self.remote()?;
        let mirror = Mirror::new()?;
        let publisher = self.publisher(&mirror.0)?;
        rt.block_on(async {
            if remote.exists("metadata/1.root.json").await? {
                bail!(
                    "{}metadata/1.root.json: this repository exists already",
                    remote.url()
                );
            }
            publisher.init().await?;
            let pushed = remote.push(&mirror.0, &Pulled::default()).await?;
            Ok((FleetKeys::open(&self.keys).pinned_root(), Some(pushed)))
        })
    }

    fn publisher(&self, repo: &Path) -> Result<Publisher> {
        let repo =
            std::path::absolute(repo).with_context(|| format!("repository {}", repo.display()))?;
        let mut publisher = Publisher::new(&repo, FleetKeys::open(&self.keys));
        let defaults = Lifetimes::default();
        publisher.lifetimes = Lifetimes {
            root: defaults.root,
            targets: self.targets_lifetime.unwrap_or(defaults.targets),
            snapshot: self.snapshot_lifetime.unwrap_or(defaults.snapshot),
            timestamp: self.timestamp_lifetime.unwrap_or(defaults.timestamp),
        };
        Ok(publisher)
    }
}

/// A scratch folder for a remote repository's mirror, removed when dropped.
struct Mirror(PathBuf);

impl Mirror {
    /// A new folder only this user can enter, under a name no one could
    /// have guessed and made first (the signing happens in it).
    fn new() -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let mut random = [0u8; 12];
        getrandom::fill(&mut random)
            .map_err(|e| anyhow::anyhow!("no randomness for a scratch folder name: {e}"))?;
        let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("outpost-fleet-{name}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot make the scratch folder {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uploaded(pushed: &Option<Pushed>, repo: &str) -> Result<()> {
    if let Some(p) = pushed {
        outln!(
            "uploaded {} files ({} bytes) to {repo}; {} were there already",
            p.uploaded,
            p.bytes,
            p.present
        );
    }
    Ok(())
}

/// `90s`, `15m`, `12h`, `7d`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; use e.g. 90s, 15m, 12h or 7d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("'{text}': unknown unit '{unit}'; use s, m, h or d")),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{text}' is too long"))
}

/// `outpost fleet ...`.
#[derive(Subcommand)]
pub enum FleetCommand {
    /// Make a fleet repository: role keys (unless --keys has them), root
    /// metadata version 1, empty targets. Devices are installed with
    /// REPO/metadata/1.root.json as their fleet root.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Point a device group at a published bundle version.
    Set {
        /// The group (a-z 0-9 . _ -).
        group: String,
        /// The bundle's name.
        name: String,
        /// Its version.
        version: u64,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Re-sign the timestamp (with the timestamp key only) so devices keep
    /// trusting the repository; run it from a timer well within the
    /// timestamp's lifetime.
    Refresh {
        /// Re-sign the snapshot (and targets) too.
        #[arg(long)]
        snapshot: bool,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Replace one role's key: a new key file (the old kept as
    /// .pk8.old-N, N the root version it served)
    /// and root metadata N+1 signed by the old and new root keys.
    Rotate {
        /// The role: root, targets, snapshot or timestamp.
        #[arg(value_parser = ["root", "targets", "snapshot", "timestamp"])]
        role: String,
        #[command(flatten)]
        repo: RepoArgs,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Runs `outpost fleet ...`.
pub fn fleet(command: FleetCommand) -> Result<()> {
    match command {
        FleetCommand::Init { repo } => {
            let (root, pushed) = repo.init()?;
            uploaded(&pushed, &repo.repo)?;
            outln!(
                "fleet repository {} made; keys in {}; install devices with {} as their fleet root",
                repo.repo,
                repo.keys.display(),
                root.display()
            );
        }
        FleetCommand::Set {
            group,
            name,
            version,
            repo,
        } => {
            let target = outpost_host::fleet::head_target(&name, version, "manifest.toml");
            let (assignment, pushed) = repo.edit(Some(target), async |p: &Publisher| {
                Ok(p.set(&group, &name, version).await?)
            })?;
            uploaded(&pushed, &repo.repo)?;
            outln!(
                "group '{group}' -> {} version {} (manifest {})",
                assignment.bundle,
                assignment.version,
                assignment.manifest_digest
            );
        }
        FleetCommand::Refresh { snapshot, repo } => {
            let (version, pushed) =
                repo.edit(None, async |p: &Publisher| Ok(p.refresh(snapshot).await?))?;
            uploaded(&pushed, &repo.repo)?;
            outln!("timestamp version {version} signed");
        }
        FleetCommand::Rotate { role, repo } => {
            let role = match role.as_str() {
                "root" => RoleName::Root,
                "targets" => RoleName::Targets,
                "snapshot" => RoleName::Snapshot,
                _ => RoleName::Timestamp,
            };
            let (version, pushed) =
                repo.edit(None, async |p: &Publisher| Ok(p.rotate(role).await?))?;
            uploaded(&pushed, &repo.repo)?;
            // Only now, with the new metadata in place, does the new key
            // replace the old one.
            let retired = FleetKeys::open(&repo.keys).finish_rotation(role, version)?;
            outln!(
                "root metadata version {version} signed; the old key is kept as {}",
                retired.display()
            );
        }
    }
    Ok(())
}

/// Runs `outpost publish BUNDLE`.
pub fn publish(
    bundle: &Path,
    repo: &RepoArgs,
    trust: &[PathBuf],
    state: &Path,
    oci: Option<&str>,
) -> Result<()> {
    if trust.is_empty() {
        bail!(
            "outpost publish needs --trust ROOT.json: the bundle is checked against the publishers' trust root before devices are pointed at it"
        );
    }
    let device = DeviceState::open(state)?;
    let root = device.trust_root(trust)?;
    let oci = oci.map(OciRef::parse).transpose()?;
    let (published, pushed) = repo.edit(None, async |p: &Publisher| {
        Ok(p.publish(bundle, &root, oci.as_ref()).await?)
    })?;
    uploaded(&pushed, &repo.repo)?;
    if let Some(oci) = &published.oci {
        outln!("blobs pushed to {oci}");
    }
    outln!(
        "published {} version {} (manifest {}): {} blobs added, {} already there; point a group at it with: outpost fleet set GROUP {} {}",
        published.bundle,
        published.version,
        published.manifest_digest,
        published.blobs_added,
        published.blobs_present,
        published.bundle,
        published.version
    );
    Ok(())
}

/// Runs `outpost push BUNDLE oci://...`.
pub fn push(bundle: &Path, reference: &str, trust: &[PathBuf], state: &Path) -> Result<()> {
    if trust.is_empty() {
        bail!("outpost push needs --trust ROOT.json: the bundle is checked before it is pushed");
    }
    let target = OciRef::parse(reference)?;
    let device = DeviceState::open(state)?;
    let root = device.trust_root(trust)?;
    let staging = device.staging();
    let pinned = runtime()?.block_on(outpost_host::fleet::oci::push(
        bundle,
        &target,
        &root,
        staging.path(),
    ))?;
    outln!("{pinned}");
    Ok(())
}

/// Where a device follows its fleet.
#[derive(Args)]
pub struct UpdateArgs {
    /// The repository: https://HOST[:PORT]/PATH, http://..., file:///PATH or a folder.
    #[arg(long)]
    repo: String,
    /// This device's group.
    #[arg(long)]
    group: String,
    /// The fleet root metadata the device was installed with.
    #[arg(long)]
    fleet_root: PathBuf,
    /// The publishers' trust root(s), oldest first.
    #[arg(long)]
    trust: Vec<PathBuf>,
    /// Device state directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Device policy (TOML).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// A read that brings no byte for this long fails.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "DURATION")]
    stall: Duration,
    /// Certificate authorities (PEM) trusted for https:// beside the
    /// system's, for a repository or registry behind a private CA.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
}

impl UpdateArgs {
    /// The device state directory.
    pub fn state_dir(&self) -> PathBuf {
        crate::trust::state_dir(self.state_dir.as_deref())
    }

    /// The device policy file, if one is named.
    pub fn policy(&self) -> Option<&std::path::Path> {
        self.policy.as_deref()
    }
}

/// Runs `outpost update --once`: one check; when the group's version is not
/// what runs, install it, load it (every stage compiled and instantiated),
/// record it as accepted and make it current. Prints a JSON report.
pub fn update(args: &UpdateArgs, host: Host) -> Result<()> {
    let state = args.state_dir();
    let device = DeviceState::open(&state)?;
    let policy = crate::trust::policy(args.policy.as_deref())?;
    let updater = Updater::new(
        &state,
        UpdaterOptions {
            repo: args.repo.clone(),
            group: args.group.clone(),
            fleet_root: args.fleet_root.clone(),
            trust: args.trust.clone(),
            stall: args.stall,
            ca_file: args.ca_file.clone(),
        },
    )?;
    let mut status = FleetStatus {
        phase: "checking".into(),
        ..FleetStatus::default()
    };
    let outcome = runtime()?
        .block_on(updater.check(&device, &policy))
        .map_err(anyhow::Error::from)
        .and_then(|report| {
            status.metadata_expires = Some(report.metadata_expires.clone());
            status.target = Some(report.assignment.clone());
            let installed = outpost_host::fleet::agent::installed(&report.assignment);
            match &report.outcome {
                UpdateOutcome::Staged { dir } => {
                    install(&device, &updater, &host, dir, args, &policy).inspect_err(|e| {
                        // A version that does not load or fails its checks
                        // is never tried again (until the group moves on).
                        let _ = updater.reject(&installed, &format!("{e:#}"));
                    })?;
                }
                // Made current, but the process stopped before recording
                // it as accepted: finish that now.
                UpdateOutcome::UpToDate
                    if device
                        .accepted(&installed.bundle)?
                        .is_none_or(|(v, _)| v < installed.version) =>
                {
                    let dir = updater.installed_dir(&installed);
                    install(&device, &updater, &host, &dir, args, &policy)?;
                }
                _ => {}
            }
            Ok(report)
        });
    status.last_check = Some(outpost_host::fleet::agent::now());
    match &outcome {
        Ok(_) => status.phase = "serving".into(),
        Err(e) => {
            let kind = e
                .downcast_ref::<outpost_host::fleet::FleetError>()
                .map_or("install", |f| f.kind());
            status.stale = kind == "stale";
            status.phase = if status.stale { "stale" } else { "failed" }.into();
            status.last_error = Some(format!("{e:#}"));
            status.last_error_kind = Some(kind.to_owned());
        }
    }
    updater.record_status(&status)?;
    let report = outcome?;
    outln!(
        "{}",
        serde_json::to_string_pretty(&report).context("writing the report")?
    );
    Ok(())
}

/// Loads an installed bundle (verified again, every blob hashed), runs its
/// health checks, makes it current, then records it as accepted. In this
/// order: a crash between the two leaves the current version above the
/// accepted one (finished by the next check), never below it, where the
/// device would refuse to run what it calls current.
fn install(
    device: &DeviceState,
    updater: &Updater,
    host: &Host,
    dir: &Path,
    args: &UpdateArgs,
    policy: &outpost_host::policy::DevicePolicy,
) -> Result<()> {
    let (verified, _provenance, _staging) = device
        .open_verified(dir, &args.trust, policy)
        .with_context(|| format!("installed bundle {}", dir.display()))?;
    let pipeline = host
        .load_bundle(&verified)
        .with_context(|| format!("loading {}", dir.display()))?;
    pipeline.run_checks()?;
    updater.activate(outpost_host::fleet::agent::installed_of(&verified))?;
    device.accept(&verified, &crate::running_bundle(&verified, &pipeline))?;
    Ok(())
}

/// Runs `outpost status`: what the device runs from its fleet.
pub fn status(state: &Path) -> Result<()> {
    let updater_state = outpost_host::fleet::agent::read_status(state)?;
    outln!(
        "{}",
        serde_json::to_string_pretty(&updater_state).context("writing the status")?
    );
    Ok(())
}
