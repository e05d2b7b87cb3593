//! The device's side: follow the fleet repository for this device's group,
//! fetch what is assigned (only the blobs the device lacks), verify it at
//! both layers, and install it beside what runs, ready to swap.
//!
//! ```text
//! STATE/fleet/tuf/                    TUF metadata trusted so far (tough's datastore)
//! STATE/fleet/blobs/<hex>             content-addressed blobs, each checked before it is named
//! STATE/fleet/blobs/<hex>.partial     a download in progress (resumed with HTTP Range)
//! STATE/fleet/bundles/NAME-VERSION/   installed bundles (blobs hard-linked from the store)
//! STATE/fleet/bundles/.stage-PID-N/   a bundle being assembled (removed when its process is gone)
//! STATE/fleet/current.json            what the device runs from the fleet, and what it ran before
//! ```
//!
//! Nothing is named before it is checked: TUF metadata by tough (signature
//! thresholds, versions, expiry, sizes, hashes); the assignment's manifest by
//! its digest; the bundle by the publishers' signatures, the device policy
//! and its accepted versions, all before a single blob is fetched; each blob
//! by its size (a longer body is cut off and refused) and digest (while it
//! is written). A bundle folder appears by one rename, `current.json` by
//! another, so a crash at any point leaves the device on the old version or
//! the new, never on a mix.

use super::transport::{self, Fetcher, TufTransport};
use super::{Assignment, BLOBS_DIR, FleetError, MAX_ASSIGNMENT_BYTES, check_group, group_target};
use crate::device::DeviceState;
use crate::policy::DevicePolicy;
use futures_util::StreamExt;
use outpost_signing::bundle::{
    BLOB_DIR, Bundle, MANIFEST_FILE, MAX_SIGNATURES_BYTES, PROVENANCE_FILE, SIGNATURES_FILE,
    VerifiedBundle,
};
use outpost_signing::durable::{sync_dir, write_atomic};
use outpost_signing::manifest::MAX_MANIFEST_BYTES;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tough::{ExpirationEnforcement, IntoVec, RepositoryLoader, TargetName};
use url::Url;

const FLEET_DIR: &str = "fleet";
const TUF_DIR: &str = "tuf";
const BUNDLES_DIR: &str = "bundles";
const CURRENT_FILE: &str = "current.json";
const PARTIAL_SUFFIX: &str = ".partial";
const STATUS_FILE: &str = "status.json";
const REJECTED_FILE: &str = "rejected.json";
const PROBATION_FILE: &str = "probation.json";

/// Where and how a device follows its fleet.
#[derive(Clone, Debug)]
pub struct UpdaterOptions {
    /// The repository: `http://HOST/PATH`, `file:///PATH` or a local path.
    pub repo: String,
    /// This device's group.
    pub group: String,
    /// The fleet root metadata the device was installed with (a
    /// `N.root.json`); the device moves forward from it, one signed
    /// rotation at a time, and keeps the newest it verified.
    pub fleet_root: PathBuf,
    /// The publishers' trust roots (as `--trust`).
    pub trust: Vec<PathBuf>,
    /// A read that brings no byte for this long fails.
    pub stall: Duration,
    /// Certificate authorities (PEM) trusted for `https://` beside the
    /// system's: a repository or registry behind a private CA.
    pub ca_file: Option<PathBuf>,
}

/// One installed version: what `current.json` records.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Installed {
    /// The bundle's name.
    pub bundle: String,
    /// Its version.
    pub version: u64,
    /// Its manifest digest.
    pub manifest_digest: String,
    /// Its folder, relative to `STATE/fleet/bundles`.
    pub dir: String,
}

/// `current.json`: what runs, and what ran before (for rollback).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Current {
    /// What runs.
    pub current: Option<Installed>,
    /// What ran before it.
    pub previous: Option<Installed>,
}

/// A version this device rolled back from or refused to serve.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rejected {
    /// The bundle's name.
    pub bundle: String,
    /// Its version.
    pub version: u64,
    /// Its manifest digest: a republished version with other content is
    /// tried again.
    pub manifest_digest: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
}

/// What the update agent last did, for `outpost status` and `/status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetStatus {
    /// `idle`, `checking`, `probation`, `serving`, `stale`, `failed`.
    pub phase: String,
    /// When the last check ended (RFC 3339).
    pub last_check: Option<String>,
    /// The last check's error, if it failed.
    pub last_error: Option<String>,
    /// Its kind ([`FleetError::kind`]).
    pub last_error_kind: Option<String>,
    /// When the trusted fleet metadata expires (RFC 3339).
    pub metadata_expires: Option<String>,
    /// The fleet metadata expired and nothing fresher was reachable: the
    /// device keeps what it runs and does not update.
    pub stale: bool,
    /// What the group is assigned, as last seen.
    pub target: Option<Assignment>,
}

/// The whole status: what runs, what the agent did, what was rejected.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// What runs from the fleet, and before it.
    #[serde(flatten)]
    pub current: Current,
    /// The agent's last check.
    pub agent: FleetStatus,
    /// Versions rolled back from or refused.
    pub rejected: Vec<Rejected>,
}

/// Now, as RFC 3339.
pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// A version on probation in `outpost serve`, kept on disk so a restart
/// neither restarts its window nor forgets how often the service died
/// during it (`STATE/fleet/probation.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProbationRecord {
    /// The version's manifest digest.
    pub manifest_digest: String,
    /// Milliseconds the service has run with it on probation (time it was
    /// down does not count, nor do clock jumps).
    pub served_ms: u64,
    /// How many times the service started with it on probation.
    pub starts: u32,
}

impl ProbationRecord {
    /// How long the service has run with the version on probation.
    pub fn served(&self) -> Duration {
        Duration::from_millis(self.served_ms)
    }
}

/// What one update check did.
#[derive(Clone, Debug, Serialize)]
pub struct UpdateReport {
    /// The group's assignment.
    pub assignment: Assignment,
    /// What happened.
    pub outcome: UpdateOutcome,
    /// Bytes downloaded for blobs (metadata and bundle heads not counted).
    pub blob_bytes_fetched: u64,
    /// Blobs downloaded.
    pub blobs_fetched: usize,
    /// Blobs the device had already.
    pub blobs_reused: usize,
    /// Downloads that resumed a partial file.
    pub resumed: usize,
    /// When the fleet metadata next expires (RFC 3339).
    pub metadata_expires: String,
}

/// What an update check found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOutcome {
    /// The device runs the assigned version already.
    UpToDate,
    /// The assigned version failed here before (its checks, or probation)
    /// and is not tried again until the group is assigned another.
    Rejected {
        /// Why it was rejected.
        reason: String,
    },
    /// The assigned version is installed, verified, and waits to be loaded
    /// and activated.
    Staged {
        /// The installed bundle's folder.
        dir: PathBuf,
    },
}

/// Follows one fleet repository for one device.
pub struct Updater {
    options: UpdaterOptions,
    state: PathBuf,
    fetcher: Fetcher,
}

fn repo_url(repo: &str) -> Result<Url, FleetError> {
    let bad = |problem: String| FleetError::Fetch {
        url: repo.to_owned(),
        problem,
    };
    let mut url = if ["https://", "http://", "file://"]
        .iter()
        .any(|scheme| repo.starts_with(scheme))
    {
        Url::parse(repo).map_err(|e| bad(format!("not a URL: {e}")))?
    } else {
        let path = std::path::absolute(repo).map_err(|e| bad(e.to_string()))?;
        Url::from_directory_path(&path).map_err(|()| bad("not a usable path".into()))?
    };
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    Ok(url)
}

impl Updater {
    /// An updater for the device whose state is in `state`.
    pub fn new(state: &Path, options: UpdaterOptions) -> Result<Self, FleetError> {
        check_group(&options.group)?;
        repo_url(&options.repo)?;
        Ok(Self {
            fetcher: Fetcher::new(
                options.stall,
                transport::client_tls(options.ca_file.as_deref())?,
            ),
            options,
            state: state.to_owned(),
        })
    }

    fn fleet_dir(&self) -> PathBuf {
        self.state.join(FLEET_DIR)
    }

    fn bundles_dir(&self) -> PathBuf {
        self.fleet_dir().join(BUNDLES_DIR)
    }

    fn blob_store(&self) -> PathBuf {
        self.fleet_dir().join(BLOBS_DIR)
    }

    /// What `current.json` says.
    pub fn current(&self) -> Result<Current, FleetError> {
        read_current(&self.state)
    }

    /// The folder of an installed version.
    pub fn installed_dir(&self, installed: &Installed) -> PathBuf {
        self.bundles_dir().join(&installed.dir)
    }

    /// Records `installed` as what runs (and what ran as previous), by one
    /// atomic write.
    pub fn activate(&self, installed: Installed) -> Result<(), FleetError> {
        let mut current = self.current()?;
        if current.current.as_ref() != Some(&installed) {
            current.previous = current.current.take();
            current.current = Some(installed);
        }
        self.write_current(&current)?;
        self.collect_garbage(&current)?;
        Ok(())
    }

    /// Makes the previous version current again (after a failed
    /// probation); returns it. The version rolled back from stays on disk
    /// until the next activation collects it.
    pub fn roll_back(&self) -> Result<Option<Installed>, FleetError> {
        let current = self.current()?;
        let back = Current {
            current: current.previous.clone(),
            previous: None,
        };
        self.write_current(&back)?;
        Ok(back.current)
    }

    /// Starts the probation of `installed` (just swapped in).
    pub fn begin_probation(&self, installed: &Installed) -> Result<ProbationRecord, FleetError> {
        let record = ProbationRecord {
            manifest_digest: installed.manifest_digest.clone(),
            served_ms: 0,
            starts: 0,
        };
        write_json(&self.fleet_dir().join(PROBATION_FILE), &record)?;
        Ok(record)
    }

    /// Records how long the version on probation has been served.
    pub fn probation_progress(&self, served: Duration) -> Result<(), FleetError> {
        let path = self.fleet_dir().join(PROBATION_FILE);
        let kept: Option<ProbationRecord> = read_json(&path, "remove it").unwrap_or(None);
        if let Some(mut record) = kept {
            record.served_ms = u64::try_from(served.as_millis()).unwrap_or(u64::MAX);
            write_json(&path, &record)?;
        }
        Ok(())
    }

    /// The service starts with `installed` still on probation: counts the
    /// start and returns the record (begun now if none was kept for it,
    /// as after a crash between the swap and its record).
    pub fn resume_probation(&self, installed: &Installed) -> Result<ProbationRecord, FleetError> {
        let path = self.fleet_dir().join(PROBATION_FILE);
        // Torn or unreadable, it only costs the window a fresh start.
        let kept: Option<ProbationRecord> = read_json(&path, "remove it").unwrap_or(None);
        let mut record = match kept {
            Some(r) if r.manifest_digest == installed.manifest_digest => r,
            _ => ProbationRecord {
                manifest_digest: installed.manifest_digest.clone(),
                served_ms: 0,
                starts: 0,
            },
        };
        record.starts = record.starts.saturating_add(1);
        write_json(&path, &record)?;
        Ok(record)
    }

    /// Ends a probation (passed or rolled back).
    pub fn end_probation(&self) -> Result<(), FleetError> {
        let path = self.fleet_dir().join(PROBATION_FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FleetError::io(&path)(e)),
            _ => Ok(()),
        }
    }

    fn write_current(&self, current: &Current) -> Result<(), FleetError> {
        let path = self.fleet_dir().join(CURRENT_FILE);
        write_json(&path, current)
    }

    /// Records that `installed` must not be tried again (until the group
    /// is assigned other content), and why.
    pub fn reject(&self, installed: &Installed, reason: &str) -> Result<(), FleetError> {
        let mut rejected = self.rejected()?;
        rejected.retain(|r| r.manifest_digest != installed.manifest_digest);
        rejected.push(Rejected {
            bundle: installed.bundle.clone(),
            version: installed.version,
            manifest_digest: installed.manifest_digest.clone(),
            reason: reason.to_owned(),
            at: now(),
        });
        // The newest 32 are enough to stop retries.
        let excess = rejected.len().saturating_sub(32);
        rejected.drain(..excess);
        std::fs::create_dir_all(self.fleet_dir()).map_err(FleetError::io(self.fleet_dir()))?;
        write_json(&self.fleet_dir().join(REJECTED_FILE), &rejected)
    }

    /// Versions rejected so far.
    pub fn rejected(&self) -> Result<Vec<Rejected>, FleetError> {
        read_rejected(&self.state)
    }

    /// Records what the agent did last.
    pub fn record_status(&self, status: &FleetStatus) -> Result<(), FleetError> {
        std::fs::create_dir_all(self.fleet_dir()).map_err(FleetError::io(self.fleet_dir()))?;
        write_json(&self.fleet_dir().join(STATUS_FILE), status)
    }

    /// Removes installed versions other than the current and previous ones,
    /// and blobs no installed version uses.
    fn collect_garbage(&self, current: &Current) -> Result<(), FleetError> {
        let keep: Vec<&str> = [&current.current, &current.previous]
            .into_iter()
            .flatten()
            .map(|i| i.dir.as_str())
            .collect();
        let bundles = self.bundles_dir();
        let mut used = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&bundles).map_err(FleetError::io(&bundles))? {
            let entry = entry.map_err(FleetError::io(&bundles))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // staging, handled by `clean_stale_staging`
            }
            if keep.contains(&name.as_str()) {
                let blobs = entry.path().join(BLOB_DIR);
                if let Ok(entries) = std::fs::read_dir(&blobs) {
                    for blob in entries.flatten() {
                        used.insert(blob.file_name().to_string_lossy().into_owned());
                    }
                }
            } else {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let store = self.blob_store();
        for entry in std::fs::read_dir(&store).map_err(FleetError::io(&store))? {
            let entry = entry.map_err(FleetError::io(&store))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(PARTIAL_SUFFIX) && !used.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn prepare_dirs(&self) -> Result<(), FleetError> {
        for dir in [
            self.fleet_dir().join(TUF_DIR),
            self.blob_store(),
            self.bundles_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(FleetError::io(&dir))?;
        }
        self.clean_stale_staging()
    }

    /// Removes staging folders of processes that are gone.
    fn clean_stale_staging(&self) -> Result<(), FleetError> {
        let bundles = self.bundles_dir();
        for entry in std::fs::read_dir(&bundles).map_err(FleetError::io(&bundles))? {
            let entry = entry.map_err(FleetError::io(&bundles))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".stage-") else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|pid| {
                pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
            });
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// The fleet root to start from: the newest this device verified, else
    /// the one it was installed with.
    fn trusted_root(&self) -> Result<Vec<u8>, FleetError> {
        let kept = self.fleet_dir().join(TUF_DIR).join("root.json");
        if let Ok(bytes) = std::fs::read(&kept)
            && serde_json::from_slice::<serde_json::Value>(&bytes).is_ok()
        {
            return Ok(bytes);
        }
        let path = &self.options.fleet_root;
        std::fs::read(path).map_err(|e| FleetError::Io {
            path: path.clone(),
            source: std::io::Error::new(
                e.kind(),
                format!("the fleet root (updates.fleet_root) cannot be read: {e}"),
            ),
        })
    }

    async fn load(&self) -> Result<tough::Repository, FleetError> {
        let base = repo_url(&self.options.repo)?;
        let join = |dir: &str| {
            base.join(&format!("{dir}/"))
                .map_err(|e| FleetError::Fetch {
                    url: base.to_string(),
                    problem: e.to_string(),
                })
        };
        let root = self.trusted_root()?;
        let repo = self.options.repo.clone();
        RepositoryLoader::new(&root, join(super::METADATA_DIR)?, join(super::TARGETS_DIR)?)
            .transport(TufTransport(self.fetcher.clone()))
            .datastore(self.fleet_dir().join(TUF_DIR))
            .expiration_enforcement(ExpirationEnforcement::Safe)
            .load()
            .await
            .map_err(|source| match source {
                tough::error::Error::ExpiredMetadata { role, .. } => FleetError::Expired {
                    repo,
                    role: role.to_string(),
                },
                source => FleetError::Tuf {
                    repo,
                    source: Box::new(source),
                },
            })
    }

    async fn read_target(
        &self,
        repo: &tough::Repository,
        name: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, FleetError> {
        let target_error = |problem: String| FleetError::Target {
            repo: self.options.repo.clone(),
            target: name.to_owned(),
            problem,
        };
        let target_name =
            TargetName::new(name).map_err(|e| target_error(format!("not a target name: {e}")))?;
        let Some(target) = repo.targets().signed.targets.get(&target_name) else {
            return Ok(None);
        };
        if target.length > limit {
            return Err(target_error(format!(
                "listed as {} bytes, more than the {limit} a device reads",
                target.length
            )));
        }
        let stream = repo
            .read_target(&target_name)
            .await
            .map_err(|e| target_error(e.to_string()))?
            .ok_or_else(|| target_error("listed but not readable".into()))?;
        // tough checks the length and sha256 against the signed metadata as
        // the bytes arrive.
        let bytes = stream
            .into_vec()
            .await
            .map_err(|e| target_error(e.to_string()))?;
        Ok(Some(bytes))
    }

    /// The group's assignment and when the metadata that signs it
    /// expires: TUF checked, nothing fetched beyond metadata. What a check
    /// during a probation needs (staleness, a newer target) without the
    /// downloads that would hold up the verdict.
    pub async fn assignment(&self) -> Result<(Assignment, String), FleetError> {
        let (_, assignment, expires) = self.load_assignment().await?;
        Ok((assignment, expires))
    }

    async fn load_assignment(&self) -> Result<(tough::Repository, Assignment, String), FleetError> {
        self.prepare_dirs()?;
        let repo = self.load().await?;
        let expires = [
            repo.root().signed.expires,
            repo.timestamp().signed.expires,
            repo.snapshot().signed.expires,
            repo.targets().signed.expires,
        ]
        .into_iter()
        .min()
        .map(|t| t.to_string())
        .unwrap_or_default();
        let group = &self.options.group;
        let target = group_target(group);
        let bytes = self
            .read_target(&repo, &target, MAX_ASSIGNMENT_BYTES)
            .await?
            .ok_or_else(|| FleetError::NoAssignment {
                repo: self.options.repo.clone(),
                group: group.clone(),
            })?;
        let assignment: Assignment =
            serde_json::from_slice(&bytes).map_err(|e| FleetError::Target {
                repo: self.options.repo.clone(),
                target: target.clone(),
                problem: format!("not an assignment: {e}"),
            })?;
        Ok((repo, assignment, expires))
    }

    /// Checks the fleet for this group's assignment and, when it is not what
    /// runs, installs it: head, publisher signatures, policy and version,
    /// then the missing blobs. Loading it and activating it is the caller's
    /// job ([`Updater::activate`]), after the bundle loaded and passed its
    /// checks.
    pub async fn check(
        &self,
        device: &DeviceState,
        policy: &DevicePolicy,
    ) -> Result<UpdateReport, FleetError> {
        let (repo, assignment, expires) = self.load_assignment().await?;
        let group = &self.options.group;
        let mut report = UpdateReport {
            assignment: assignment.clone(),
            outcome: UpdateOutcome::UpToDate,
            blob_bytes_fetched: 0,
            blobs_fetched: 0,
            blobs_reused: 0,
            resumed: 0,
            metadata_expires: expires,
        };
        let installed = installed(&assignment);
        if self.current()?.current.as_ref() == Some(&installed) {
            return Ok(report);
        }
        if let Some(rejected) = self
            .rejected()?
            .into_iter()
            .find(|r| r.manifest_digest == assignment.manifest_digest)
        {
            report.outcome = UpdateOutcome::Rejected {
                reason: rejected.reason,
            };
            return Ok(report);
        }
        let mismatch = |problem: String| FleetError::Mismatch {
            group: group.clone(),
            problem,
        };
        let refused = |source| FleetError::Refused {
            bundle: assignment.bundle.clone(),
            version: assignment.version,
            group: group.clone(),
            source: Box::new(source),
        };
        // The name becomes a folder name: it must be a bundle name.
        if super::check_name("bundle", &assignment.bundle).is_err() {
            return Err(mismatch(format!(
                "'{}' is not a bundle name",
                assignment.bundle.chars().take(80).collect::<String>()
            )));
        }

        // The head, into a staging folder of this process.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let stage = self.bundles_dir().join(format!(
            ".stage-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&stage);
        std::fs::create_dir_all(stage.join(BLOB_DIR)).map_err(FleetError::io(&stage))?;
        let cleanup = RemoveDir(Some(stage.clone()));
        for (file, target) in &assignment.head {
            let limit = match file.as_str() {
                MANIFEST_FILE => MAX_MANIFEST_BYTES as u64,
                SIGNATURES_FILE => MAX_SIGNATURES_BYTES,
                PROVENANCE_FILE => outpost_signing::dsse::MAX_ENVELOPE_BYTES as u64,
                other => {
                    return Err(mismatch(format!(
                        "its head names '{}', which is not a file of a bundle head",
                        other.chars().take(80).collect::<String>()
                    )));
                }
            };
            let bytes = self
                .read_target(&repo, target, limit)
                .await?
                .ok_or_else(|| FleetError::Target {
                    repo: self.options.repo.clone(),
                    target: target.clone(),
                    problem: "the assignment names it but the targets metadata does not list it"
                        .into(),
                })?;
            if file == MANIFEST_FILE {
                let digest = outpost_signing::Digest::of(&bytes).to_string();
                if digest != assignment.manifest_digest {
                    return Err(mismatch(format!(
                        "the manifest's digest is {digest}, the assignment says {}",
                        assignment.manifest_digest
                    )));
                }
            }
            write_atomic(&stage.join(file), &bytes, 0o644)?;
        }
        if !stage.join(MANIFEST_FILE).exists() {
            return Err(mismatch("its head has no manifest.toml".into()));
        }

        // Publisher layer, policy and version: before any blob moves.
        let root = device.trust_root(&self.options.trust).map_err(refused)?;
        let verified = Bundle::open_dir(&stage)
            .and_then(|b| b.verify(&root))
            .map_err(|e| refused(crate::device::DeviceError::Trust(e)))?;
        let info = &verified.manifest().bundle;
        if info.name != assignment.bundle || info.version != assignment.version {
            return Err(mismatch(format!(
                "the manifest is {} version {}, the assignment says {} version {}",
                info.name, info.version, assignment.bundle, assignment.version
            )));
        }
        device.check_candidate(&verified, policy).map_err(refused)?;

        // Installed already (an earlier check stopped before activating
        // it, or the group went back to the previous version): used as it
        // is, once its head passed the checks above. Replacing it would open
        // a moment with no folder, and it may be the rollback target. The
        // caller verifies it blob by blob anyway.
        // Only whole: the same head as just verified, and every blob
        // checked (a kill during garbage collection can leave a folder
        // half gone). Else it is installed again.
        let dir = self.bundles_dir().join(&installed.dir);
        let same_head = [MANIFEST_FILE, SIGNATURES_FILE, PROVENANCE_FILE]
            .iter()
            .all(|file| std::fs::read(stage.join(file)).ok() == std::fs::read(dir.join(file)).ok());
        let whole = || {
            Bundle::open_dir(&dir)
                .and_then(|b| b.verify(&root))
                .and_then(|v| v.check_all_blobs())
                .is_ok()
        };
        if same_head && whole() {
            report.outcome = UpdateOutcome::Staged { dir };
            return Ok(report);
        }

        // Blobs: only those the store lacks, each checked while written.
        // From the repository's `blobs/HEX`, or an OCI registry's
        // `/v2/REPO/blobs/sha256:HEX`.
        let (base, prefix) = match &assignment.blobs {
            None => (repo_url(&self.options.repo)?, format!("{BLOBS_DIR}/")),
            Some(oci) => {
                let oci = super::oci::OciRef::parse(oci)?;
                let url = Url::parse(&oci.blobs_url()).map_err(|e| FleetError::Fetch {
                    url: oci.to_string(),
                    problem: e.to_string(),
                })?;
                // "./": a bare "sha256:..." would parse as a URL scheme.
                (url, "./sha256:".to_owned())
            }
        };
        for (digest, entry) in &verified.manifest().blobs {
            let hex = digest.trim_start_matches("sha256:");
            let stored = self.blob_store().join(hex);
            if std::fs::metadata(&stored).is_ok_and(|m| m.len() == entry.size) {
                report.blobs_reused += 1;
            } else {
                let url = base
                    .join(&format!("{prefix}{hex}"))
                    .map_err(|e| FleetError::Fetch {
                        url: base.to_string(),
                        problem: e.to_string(),
                    })?;
                let (bytes, resumed) = self.download(&url, digest, entry.size, &stored).await?;
                report.blob_bytes_fetched += bytes;
                report.blobs_fetched += 1;
                report.resumed += usize::from(resumed);
            }
            link_or_copy(&stored, &stage.join(BLOB_DIR).join(hex))?;
        }
        sync_dir(&stage.join(BLOB_DIR))?;
        verified
            .check_all_blobs()
            .map_err(|e| refused(crate::device::DeviceError::Trust(e)))?;

        // Installed by one rename.
        let dir = self.bundles_dir().join(&installed.dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(FleetError::io(&dir))?;
        }
        std::fs::rename(&stage, &dir).map_err(FleetError::io(&dir))?;
        cleanup.disarm();
        sync_dir(&self.bundles_dir())?;
        report.outcome = UpdateOutcome::Staged { dir };
        Ok(report)
    }

    /// Downloads one blob into the store: resumes a `.partial` file with a
    /// Range request, refuses more bytes than the manifest's size, checks
    /// the digest, then names it. Returns the bytes moved and whether it
    /// resumed.
    async fn download(
        &self,
        url: &Url,
        digest: &str,
        size: u64,
        stored: &Path,
    ) -> Result<(u64, bool), FleetError> {
        let blob_error = |problem: String| FleetError::Blob {
            digest: digest.to_owned(),
            url: url.to_string(),
            problem,
        };
        let partial = stored.with_file_name(format!(
            "{}{PARTIAL_SUFFIX}",
            stored
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        // What is there already, hashed again: the file is ours but a crash
        // may have left any prefix of it.
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        match std::fs::metadata(&partial) {
            Ok(meta) if meta.len() <= size => {
                // Streamed: a partial model may be larger than memory.
                let hashed = std::fs::File::open(&partial)
                    .and_then(|mut file| std::io::copy(&mut file, &mut hasher));
                match hashed {
                    Ok(n) => have = n,
                    Err(_) => {
                        hasher = Sha256::new();
                        let _ = std::fs::remove_file(&partial);
                    }
                }
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&partial);
            }
            Err(_) => {}
        }
        if have == size {
            // Whole already: the process stopped between writing and naming.
            let got = format!("sha256:{}", hex(&hasher.clone().finalize()));
            if got == digest {
                std::fs::rename(&partial, stored).map_err(FleetError::io(stored))?;
                if let Some(dir) = stored.parent() {
                    sync_dir(dir)?;
                }
                return Ok((0, true));
            }
            let _ = std::fs::remove_file(&partial);
            hasher = Sha256::new();
            have = 0;
        }
        let fetched = match self.fetcher.get(url, have).await {
            Ok(fetched) => fetched,
            // The server refuses the range: start again from byte 0.
            Err(e) if have > 0 && e.range_refused => {
                let _ = std::fs::remove_file(&partial);
                hasher = Sha256::new();
                have = 0;
                self.fetcher
                    .get(url, 0)
                    .await
                    .map_err(|e| blob_error(e.problem))?
            }
            Err(e) => return Err(blob_error(e.problem)),
        };
        let resumed = have > 0 && fetched.from_offset;
        if have > 0 && !fetched.from_offset {
            // The server sent the whole file: start again.
            hasher = Sha256::new();
            have = 0;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(have == 0)
            .append(have > 0)
            .open(&partial)
            .map_err(FleetError::io(&partial))?;
        let mut moved = 0u64;
        let mut body = fetched.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| blob_error(e.problem))?;
            if have + chunk.len() as u64 > size {
                drop(file);
                let _ = std::fs::remove_file(&partial);
                return Err(blob_error(format!(
                    "the server sent more than the {size} bytes the signed manifest lists; refused"
                )));
            }
            hasher.update(&chunk);
            if let Err(e) = file.write_all(&chunk) {
                // A full disk: give the space back at once (the device has
                // other things to write) and start over next time.
                if e.kind() == std::io::ErrorKind::StorageFull {
                    drop(file);
                    let _ = std::fs::remove_file(&partial);
                }
                return Err(FleetError::io(&partial)(e));
            }
            have += chunk.len() as u64;
            moved += chunk.len() as u64;
        }
        if have < size {
            return Err(blob_error(format!(
                "the download ended after {have} of {size} bytes; it resumes on the next check"
            )));
        }
        let got = format!("sha256:{}", hex(&hasher.finalize()));
        if got != digest {
            drop(file);
            let _ = std::fs::remove_file(&partial);
            return Err(blob_error(format!(
                "its bytes hash to {got}, not to the digest the signed manifest lists; refused"
            )));
        }
        file.sync_all().map_err(FleetError::io(&partial))?;
        drop(file);
        std::fs::rename(&partial, stored).map_err(FleetError::io(stored))?;
        if let Some(dir) = stored.parent() {
            sync_dir(dir)?;
        }
        Ok((moved, resumed))
    }
}

/// The service stopped cleanly (drained on SIGTERM) during a probation:
/// its start is not counted against the version, which did not kill it.
pub fn probation_stopped_cleanly(state: &Path) -> Result<(), FleetError> {
    let path = state.join(FLEET_DIR).join(PROBATION_FILE);
    let kept: Option<ProbationRecord> = read_json(&path, "remove it")?;
    if let Some(mut record) = kept {
        record.starts = record.starts.saturating_sub(1);
        write_json(&path, &record)?;
    }
    Ok(())
}

/// What `STATE/fleet/current.json` says (nothing installed from a fleet
/// yet: both empty).
pub fn read_current(state: &Path) -> Result<Current, FleetError> {
    read_json(
        &state.join(FLEET_DIR).join(CURRENT_FILE),
        "remove it; the next update installs the group's version again",
    )
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FleetError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| FleetError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, &json, 0o644)?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    fix: &'static str,
) -> Result<T, FleetError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            FleetError::Device(crate::device::DeviceError::Corrupt {
                path: path.to_owned(),
                problem: e.to_string(),
                fix,
            })
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(FleetError::io(path)(e)),
    }
}

/// The versions `STATE/fleet/rejected.json` lists.
pub fn read_rejected(state: &Path) -> Result<Vec<Rejected>, FleetError> {
    read_json(
        &state.join(FLEET_DIR).join(REJECTED_FILE),
        "remove it; rejected versions are then tried again",
    )
}

/// Everything `outpost status` shows.
pub fn read_status(state: &Path) -> Result<StatusReport, FleetError> {
    Ok(StatusReport {
        current: read_current(state)?,
        agent: read_json(
            &state.join(FLEET_DIR).join(STATUS_FILE),
            "remove it; the next check writes it again",
        )?,
        rejected: read_rejected(state)?,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn link_or_copy(from: &Path, to: &Path) -> Result<(), FleetError> {
    if to.exists() {
        return Ok(());
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(FleetError::io(to))?;
    }
    Ok(())
}

/// Removes a folder when dropped, unless disarmed.
struct RemoveDir(Option<PathBuf>);

impl RemoveDir {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The installed form of an assignment.
pub fn installed(assignment: &Assignment) -> Installed {
    Installed {
        bundle: assignment.bundle.clone(),
        version: assignment.version,
        manifest_digest: assignment.manifest_digest.clone(),
        dir: format!("{}-{}", assignment.bundle, assignment.version),
    }
}

/// A verified bundle's installed form.
pub fn installed_of(verified: &VerifiedBundle) -> Installed {
    let info = &verified.manifest().bundle;
    Installed {
        bundle: info.name.clone(),
        version: info.version,
        manifest_digest: verified.manifest_digest().to_string(),
        dir: format!("{}-{}", info.name, info.version),
    }
}
