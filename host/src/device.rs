//! What a device keeps about itself, in one state directory, for the CLI,
//! `outpost serve` and the update agent alike.
//!
//! ```text
//! STATE/lock             held while anything below is written
//! STATE/root.json        the trust root the device accepted (moves forward only)
//! STATE/accepted/NAME.accepted   highest accepted version of each bundle and its manifest digest
//! STATE/device.key       the device's signing key (0600), for evidence
//! STATE/cache.key        the MAC key of the component cache (0600)
//! STATE/running.json     what the device last ran, for evidence
//! STATE/staging/PID-N/   archives unpacked for one process, removed when done
//! STATE/cache/           precompiled components
//! ```
//!
//! Every write is atomic and durable (a unique temporary file, fsync,
//! rename, fsync of the directory: `outpost_signing::durable`) and made
//! while holding `STATE/lock`, so a crash leaves each file old or new, never
//! torn, and writers from several processes take turns. The order of the
//! writes keeps the files consistent with each other at every point a crash
//! can stop them: a bundle is recorded as accepted before it is recorded as
//! running, so the running version is never above the accepted one. Opening
//! the state removes what a crash left behind (temporary files, staging
//! directories of processes that are gone) and checks every file, naming
//! any that is unreadable and what to do about it.

use crate::policy::DevicePolicy;
use outpost_signing::bundle::{Bundle, VerifiedBundle, VersionStore};
use outpost_signing::durable;
use outpost_signing::evidence::RunningBundle;
use outpost_signing::keys::SecretKey;
use outpost_signing::provenance::CheckedProvenance;
use outpost_signing::root::TrustRoot;
use outpost_signing::time::Timestamp;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const LOCK_FILE: &str = "lock";
const ROOT_FILE: &str = "root.json";
const ACCEPTED_DIR: &str = "accepted";
const DEVICE_KEY_FILE: &str = "device.key";
const CACHE_KEY_FILE: &str = "cache.key";
const RUNNING_FILE: &str = "running.json";
const STAGING_DIR: &str = "staging";
const CACHE_DIR: &str = "cache";

/// Why the device state could not be read, checked or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// A file or directory of the state could not be read or written.
    #[error("device state {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A state file is unreadable: torn by a crash of another tool, or
    /// altered.
    #[error("device state {} is corrupt: {problem}; {fix}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What the operator can do.
        fix: &'static str,
    },
    /// There is no trust root: none given, none accepted before.
    #[error(
        "no trust root: give --trust ROOT.json (repeat it, oldest first, to follow rotations); this device ({}) has not accepted one yet",
        state.display()
    )]
    NoTrustRoot {
        /// The state directory.
        state: PathBuf,
    },
    /// A signature, trust root, rollback or blob check failed.
    #[error(transparent)]
    Trust(#[from] outpost_signing::Error),
    /// A bundle could not be opened or failed its checks.
    #[error("bundle {}: {source}", path.display())]
    Bundle {
        /// The bundle (directory or archive) as given.
        path: PathBuf,
        /// What failed.
        source: Box<outpost_signing::Error>,
    },
    /// The device policy refuses the bundle.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// A crash was simulated at this step ([`DeviceState::crash_at`]).
    #[error("simulated crash before step {step} of {operation}")]
    SimulatedCrash {
        /// What was being done.
        operation: &'static str,
        /// The step it stopped before.
        step: usize,
    },
}

type Result<T> = std::result::Result<T, DeviceError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DeviceError + '_ {
    move |source| DeviceError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a simulated crash stops [`DeviceState::accept`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Before the write of step `n` (0-based) starts.
    Before(usize),
    /// In the middle of the write of step `n`: its temporary file is
    /// written, in part, and never renamed.
    During(usize),
}

/// One device's state directory, open.
pub struct DeviceState {
    dir: PathBuf,
    crash: Option<CrashPoint>,
}

/// An archive unpacked for one process, removed when dropped.
pub struct Staging(PathBuf);

impl Staging {
    /// Where the archive goes.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Holds `STATE/lock` until dropped.
struct Locked(std::fs::File);

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl DeviceState {
    /// Opens (creating it if needed) the state directory `dir`: removes what
    /// a crash left behind and checks every state file.
    pub fn open(dir: &Path) -> Result<Self> {
        create_private_dir(dir)?;
        let state = Self {
            dir: dir.to_owned(),
            crash: None,
        };
        {
            let _lock = state.lock()?;
            // Writers hold the lock, so no temporary file is in use now.
            durable::remove_leftovers(dir)?;
            durable::remove_leftovers(&dir.join(ACCEPTED_DIR))?;
            state.remove_dead_staging()?;
        }
        state.check()?;
        Ok(state)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where precompiled components go.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join(CACHE_DIR)
    }

    /// The component cache's MAC key (made on first use, 0600).
    pub fn cache_key(
        &self,
    ) -> std::result::Result<crate::cache::CacheKey, crate::cache::CacheKeyError> {
        crate::cache::CacheKey::load_or_create(&self.dir.join(CACHE_KEY_FILE))
    }

    /// Simulates a crash of the next [`DeviceState::accept`] at `point`:
    /// the state is left as a process killed there would leave it, and the
    /// call fails with [`DeviceError::SimulatedCrash`]. For crash tests.
    pub fn crash_at(&mut self, point: Option<CrashPoint>) {
        self.crash = point;
    }

    fn lock(&self) -> Result<Locked> {
        let path = self.dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(Locked(file))
    }

    /// Checks that every state file that exists can be read.
    pub fn check(&self) -> Result<()> {
        let root = self.dir.join(ROOT_FILE);
        if let Some(bytes) = read_optional(&root)? {
            outpost_signing::dsse::Envelope::parse(&bytes, ROOT_FILE, outpost_signing::root::ROOT_PAYLOAD_TYPE)
                .map_err(|e| DeviceError::Corrupt {
                    path: root.clone(),
                    problem: e.to_string(),
                    fix: "restore it from a backup, or remove it and give the device its trust root chain again with --trust (it then trusts that chain on first use)",
                })?;
        }
        let key = self.dir.join(DEVICE_KEY_FILE);
        if key.exists() {
            SecretKey::load(&key).map_err(|e| DeviceError::Corrupt {
                path: key.clone(),
                problem: e.to_string(),
                fix: "remove it to make a new device key, and register the new key with your verifiers",
            })?;
        }
        self.running()?;
        let accepted = self.dir.join(ACCEPTED_DIR);
        let store = VersionStore::new(&accepted);
        if let Ok(entries) = std::fs::read_dir(&accepted) {
            for entry in entries {
                let entry = entry.map_err(io(&accepted))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(bundle) = name.strip_suffix(".accepted") {
                    let corrupt = |problem: String| DeviceError::Corrupt {
                        path: entry.path(),
                        problem,
                        fix: "remove it only if you accept that this device will again take any version of that bundle",
                    };
                    let (_, digest) = store
                        .accepted(bundle)
                        .map_err(|e| corrupt(e.to_string()))?
                        .ok_or_else(|| corrupt("unreadable".into()))?;
                    digest
                        .parse::<outpost_signing::Digest>()
                        .map_err(|e| corrupt(format!("the manifest digest '{digest}': {e}")))?;
                }
            }
        }
        Ok(())
    }

    /// The trust root in force: the chain `paths` (oldest first), continued
    /// from the root this device accepted before, which it can only move
    /// forward (consecutive versions, each signed by the one before); with
    /// no paths, the accepted root. A newer root is stored.
    pub fn trust_root(&self, paths: &[PathBuf]) -> Result<TrustRoot> {
        let chain = paths
            .iter()
            .map(|p| Ok((p.display().to_string(), std::fs::read(p).map_err(io(p))?)))
            .collect::<Result<Vec<_>>>()?;
        let _lock = self.lock()?;
        let path = self.dir.join(ROOT_FILE);
        let accepted = read_optional(&path)?;
        if accepted.is_none() && chain.is_empty() {
            return Err(DeviceError::NoTrustRoot {
                state: self.dir.clone(),
            });
        }
        let root = TrustRoot::verify_chain_from(accepted.as_deref(), &chain, Timestamp::now())?;
        let newer = match &accepted {
            None => true,
            Some(bytes) => root.envelope() != bytes.as_slice(),
        };
        if newer {
            durable::write_atomic(&path, root.envelope(), 0o644)?;
        }
        Ok(root)
    }

    /// A fresh staging directory for this process.
    pub fn staging(&self) -> Staging {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Staging(self.dir.join(STAGING_DIR).join(format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )))
    }

    /// Opens a bundle (directory or archive) and checks its signatures
    /// against the trust root `trust` continues to (an archive's before any
    /// of its blobs is written) and every blob against the manifest. No
    /// device policy or version check: for verifiers, and the first half of
    /// [`DeviceState::open_verified`].
    pub fn open_signed(&self, path: &Path, trust: &[PathBuf]) -> Result<(VerifiedBundle, Staging)> {
        let root = self.trust_root(trust)?;
        let staging = self.staging();
        let in_bundle = |source| DeviceError::Bundle {
            path: path.to_owned(),
            source: Box::new(source),
        };
        let verified = Bundle::open_verified(path, &root, staging.path()).map_err(in_bundle)?;
        // An archive's blobs were hashed as they were written; a directory's
        // are read here for the first time.
        if path.is_dir() {
            verified.check_all_blobs().map_err(in_bundle)?;
        }
        Ok((verified, staging))
    }

    /// [`DeviceState::open_signed`], then provenance and grants against
    /// `policy` and the version against what this device accepted before.
    /// Recording it as accepted is [`DeviceState::accept`]'s job, once it
    /// has loaded.
    pub fn open_verified(
        &self,
        path: &Path,
        trust: &[PathBuf],
        policy: &DevicePolicy,
    ) -> Result<(VerifiedBundle, Option<CheckedProvenance>, Staging)> {
        let (verified, staging) = self.open_signed(path, trust)?;
        let provenance = policy.provenance_policy().check(&verified)?;
        policy.check_grants(verified.manifest())?;
        self.versions().check(&verified)?;
        Ok((verified, provenance, staging))
    }

    /// The checks [`DeviceState::open_verified`] makes after the signatures
    /// (provenance and grants against `policy`, the version against what
    /// this device accepted), for a bundle verified elsewhere (the update
    /// agent checks a bundle's head before fetching its blobs).
    pub fn check_candidate(
        &self,
        verified: &VerifiedBundle,
        policy: &DevicePolicy,
    ) -> Result<Option<CheckedProvenance>> {
        let provenance = policy.provenance_policy().check(verified)?;
        policy.check_grants(verified.manifest())?;
        self.versions().check(verified)?;
        Ok(provenance)
    }

    fn versions(&self) -> VersionStore {
        VersionStore::new(&self.dir.join(ACCEPTED_DIR))
    }

    /// The highest version of bundle `name` this device accepted, and its
    /// manifest digest.
    pub fn accepted(&self, name: &str) -> Result<Option<(u64, String)>> {
        Ok(self.versions().accepted(name)?)
    }

    /// Records a bundle that loaded as accepted (older versions are refused
    /// from now on), then what the device runs. In this order, so that at
    /// any crash the running version is at most the accepted one.
    pub fn accept(&self, verified: &VerifiedBundle, running: &RunningBundle) -> Result<()> {
        let _lock = self.lock()?;
        let running_json = serde_json::to_vec_pretty(running).map_err(|e| DeviceError::Io {
            path: self.dir.join(RUNNING_FILE),
            source: std::io::Error::other(e),
        })?;
        self.step(0, &self.dir.join(DEVICE_KEY_FILE))?;
        self.ensure_device_key()?;
        let info = &verified.manifest().bundle;
        self.step(
            1,
            &self
                .dir
                .join(ACCEPTED_DIR)
                .join(format!("{}.accepted", info.name)),
        )?;
        self.versions().accept(verified)?;
        let path = self.dir.join(RUNNING_FILE);
        self.step(2, &path)?;
        // Unchanged: no write (a full disk does not stop a device running
        // what it ran).
        if std::fs::read(&path).is_ok_and(|old| old == running_json) {
            return Ok(());
        }
        durable::write_atomic(&path, &running_json, 0o644)?;
        Ok(())
    }

    /// Stops here if a simulated crash is set for `step`, leaving what a
    /// process killed there would leave.
    fn step(&self, step: usize, target: &Path) -> Result<()> {
        let crash = || DeviceError::SimulatedCrash {
            operation: "accept",
            step,
        };
        match self.crash {
            Some(CrashPoint::Before(n)) if n == step => Err(crash()),
            Some(CrashPoint::During(n)) if n == step => {
                if let Some(dir) = target.parent() {
                    let _ = std::fs::create_dir_all(dir);
                    let name = target
                        .file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                    let temp = dir.join(format!(
                        ".{name}.{}.0{}",
                        std::process::id(),
                        durable::TEMP_SUFFIX
                    ));
                    let _ = std::fs::write(temp, b"{\"half\": ");
                }
                Err(crash())
            }
            _ => Ok(()),
        }
    }

    fn ensure_device_key(&self) -> Result<SecretKey> {
        let path = self.dir.join(DEVICE_KEY_FILE);
        if !path.exists() {
            let key = SecretKey::generate()?;
            key.save(&path)?;
        }
        Ok(SecretKey::load(&path)?)
    }

    /// The device's own key: made on first use (0600).
    pub fn device_key(&self) -> Result<SecretKey> {
        let _lock = self.lock()?;
        self.ensure_device_key()
    }

    /// What the device last ran, if anything.
    pub fn running(&self) -> Result<Option<RunningBundle>> {
        let path = self.dir.join(RUNNING_FILE);
        match read_optional(&path)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| DeviceError::Corrupt {
                        path,
                        problem: e.to_string(),
                        fix: "remove it; the next run records what runs again",
                    })
            }
        }
    }

    /// Removes staging directories of processes that are gone (a crash
    /// mid-unpack leaves them); those of live processes stay.
    fn remove_dead_staging(&self) -> Result<()> {
        let staging = self.dir.join(STAGING_DIR);
        let entries = match std::fs::read_dir(&staging) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&staging)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&staging))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|pid| {
                pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
            });
            if !alive {
                let path = entry.path();
                std::fs::remove_dir_all(&path)
                    .or_else(|_| std::fs::remove_file(&path))
                    .map_err(io(&path))?;
            }
        }
        Ok(())
    }
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Creates `dir` (and its parents) with mode 0700 for the last component.
fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io(dir))
}
