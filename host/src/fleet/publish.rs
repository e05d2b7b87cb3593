//! The fleet operator's side: making a fleet repository, adding bundles to
//! it, pointing groups at them, and re-signing its short-lived metadata.
//!
//! Role keys are ed25519 (PKCS#8 files, mode 0600), one per role, in a key
//! folder kept apart from the repository (which is published as is). The
//! root and targets keys belong offline; timestamp (and snapshot) are the
//! online keys a timer uses for [`Publisher::refresh`].

use super::{
    Assignment, BLOBS_DIR, FleetError, METADATA_DIR, TARGETS_DIR, check_group, group_target,
    head_target,
};
use outpost_signing::bundle::{Bundle, MANIFEST_FILE, PROVENANCE_FILE, SIGNATURES_FILE};
use outpost_signing::durable::write_atomic;
use outpost_signing::root::TrustRoot;
use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tough::editor::RepositoryEditor;
use tough::editor::signed::{PathExists, SignedRole};
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signed, Target, Timestamp};
use tough::{ExpirationEnforcement, RepositoryLoader};

/// One of the four TUF roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleName {
    /// Signs the keys of every role.
    Root,
    /// Signs what each group runs and the bundle heads.
    Targets,
    /// Signs the versions of the targets metadata.
    Snapshot,
    /// Signs the newest snapshot, briefly valid.
    Timestamp,
}

impl RoleName {
    /// All four, root first.
    pub const ALL: [RoleName; 4] = [
        RoleName::Root,
        RoleName::Targets,
        RoleName::Snapshot,
        RoleName::Timestamp,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RoleName::Root => "root",
            RoleName::Targets => "targets",
            RoleName::Snapshot => "snapshot",
            RoleName::Timestamp => "timestamp",
        }
    }

    fn tuf(self) -> RoleType {
        match self {
            RoleName::Root => RoleType::Root,
            RoleName::Targets => RoleType::Targets,
            RoleName::Snapshot => RoleType::Snapshot,
            RoleName::Timestamp => RoleType::Timestamp,
        }
    }
}

/// A folder of fleet role keys: `<role>.pk8`, ed25519, PKCS#8, mode 0600.
#[derive(Clone, Debug)]
pub struct FleetKeys {
    dir: PathBuf,
}

impl FleetKeys {
    /// The keys in `dir` (read when used).
    pub fn open(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// The fleet's first root metadata, kept with the keys by `init`: a
    /// remote repository's chain of roots must start with these bytes.
    pub fn pinned_root(&self) -> PathBuf {
        self.dir.join("1.root.json")
    }

    /// The key file of `role`.
    pub fn path(&self, role: RoleName) -> PathBuf {
        self.dir.join(format!("{}.pk8", role.as_str()))
    }

    /// Makes a new key for `role`; refuses to overwrite one.
    pub fn generate(&self, role: RoleName) -> Result<(), FleetError> {
        self.generate_to(&self.path(role))
    }

    fn generate_to(&self, path: &Path) -> Result<(), FleetError> {
        let path = path.to_owned();
        if path.exists() {
            return Err(FleetError::Key {
                path,
                problem: "exists already; a fleet key is never overwritten (move it away first if you mean to replace it)".into(),
            });
        }
        std::fs::create_dir_all(&self.dir).map_err(FleetError::io(&self.dir))?;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let document = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| {
            FleetError::Key {
                path: path.clone(),
                problem: format!("could not generate an ed25519 key: {e}"),
            }
        })?;
        write_atomic(&path, document.as_ref(), 0o600)?;
        Ok(())
    }

    fn source(&self, role: RoleName) -> Box<dyn KeySource> {
        Box::new(LocalKeySource {
            path: self.path(role),
        })
    }

    fn sources(&self) -> Vec<Box<dyn KeySource>> {
        RoleName::ALL
            .iter()
            .filter(|role| self.path(**role).exists())
            .map(|role| self.source(*role))
            .collect()
    }

    /// The public key of `role`, as TUF metadata lists it.
    pub fn public(&self, role: RoleName) -> Result<tough::schema::key::Key, FleetError> {
        public_of(&self.path(role))
    }

    /// Where a rotation keeps the new key of `role` until it is in place.
    pub fn fresh_path(&self, role: RoleName) -> PathBuf {
        self.path(role).with_extension("pk8.new")
    }

    /// Puts the new key of a rotation to root version `version` in place
    /// (once the new metadata is written, and uploaded for a remote
    /// repository); the old key is kept as `<role>.pk8.old-<version - 1>`,
    /// never overwritten.
    pub fn finish_rotation(&self, role: RoleName, version: u64) -> Result<PathBuf, FleetError> {
        let path = self.path(role);
        let fresh = self.fresh_path(role);
        let mut retired = path.with_extension(format!("pk8.old-{}", version.saturating_sub(1)));
        let mut n = 2;
        while retired.exists() {
            retired = path.with_extension(format!("pk8.old-{}-{n}", version.saturating_sub(1)));
            n += 1;
        }
        if !fresh.exists() {
            return Err(FleetError::Key {
                path: fresh,
                problem: "no new key to put in place (was the rotation finished already?)".into(),
            });
        }
        // The old key gets its second name first; the new one then replaces
        // it in one rename: the role's key file exists at every moment.
        std::fs::hard_link(&path, &retired).map_err(FleetError::io(&retired))?;
        std::fs::rename(&fresh, &path).map_err(FleetError::io(&fresh))?;
        outpost_signing::durable::sync_dir(&self.dir)?;
        Ok(retired)
    }
}

/// How long each role's metadata stays valid when signed.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    /// Root metadata.
    pub root: Duration,
    /// Targets metadata.
    pub targets: Duration,
    /// Snapshot metadata.
    pub snapshot: Duration,
    /// Timestamp metadata: short, re-signed by a timer.
    pub timestamp: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            root: Duration::from_secs(365 * DAY),
            targets: Duration::from_secs(90 * DAY),
            snapshot: Duration::from_secs(30 * DAY),
            timestamp: Duration::from_secs(DAY),
        }
    }
}

/// What [`Publisher::publish`] added.
#[derive(Clone, Debug)]
pub struct Published {
    /// The bundle's name.
    pub bundle: String,
    /// Its version.
    pub version: u64,
    /// The digest of its manifest.
    pub manifest_digest: String,
    /// Blobs copied into the repository.
    pub blobs_added: usize,
    /// Blobs the repository had already.
    pub blobs_present: usize,
    /// The OCI artifact holding the blobs, pinned by digest, when pushed
    /// to a registry instead of `blobs/`.
    pub oci: Option<String>,
}

/// Edits one fleet repository (a folder) with one key folder.
pub struct Publisher {
    repo: PathBuf,
    keys: FleetKeys,
    /// Lifetimes of what is signed from here on.
    pub lifetimes: Lifetimes,
    /// Where the newest metadata this publisher verified is kept between
    /// runs, so a repository served back older than that (a replay) is
    /// refused: for a remote repository, whose server is not trusted.
    pub datastore: Option<PathBuf>,
}

const SEEN_FILE: &str = "versions-seen.json";

/// The newest metadata versions a publisher verified of a remote
/// repository (missing: nothing seen yet).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Seen {
    root: u64,
    timestamp: u64,
    snapshot: u64,
    targets: u64,
}

impl Seen {
    fn read(datastore: &Path) -> Self {
        std::fs::read(datastore.join(SEEN_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }
}

fn expires_in(lifetime: Duration) -> Result<jiff::Timestamp, FleetError> {
    let span = jiff::SignedDuration::try_from(lifetime).map_err(|e| FleetError::Key {
        path: PathBuf::new(),
        problem: format!("lifetime {lifetime:?} is out of range: {e}"),
    })?;
    jiff::Timestamp::now()
        .checked_add(span)
        .map_err(|e| FleetError::Key {
            path: PathBuf::new(),
            problem: format!("lifetime {lifetime:?} is out of range: {e}"),
        })
}

fn bump(version: NonZeroU64) -> NonZeroU64 {
    version.saturating_add(1)
}

impl Publisher {
    /// A publisher for the repository folder `repo`, signing with `keys`.
    pub fn new(repo: &Path, keys: FleetKeys) -> Self {
        Self {
            repo: repo.to_owned(),
            keys,
            lifetimes: Lifetimes::default(),
            datastore: None,
        }
    }

    fn repo_name(&self) -> String {
        self.repo.display().to_string()
    }

    fn edit_error(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(tough::error::Error) -> FleetError {
        let repo = self.repo_name();
        let what = what.into();
        move |source| FleetError::Edit {
            repo,
            what,
            source: Box::new(source),
        }
    }

    /// A fresh scratch folder inside the repository (same file system, so
    /// targets copy into place), removed when the guard drops.
    fn work_dir(&self) -> Result<RemoveDir, FleetError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let work = self.repo.join(format!(
            ".publish-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(FleetError::io(&work))?;
        Ok(RemoveDir(work))
    }

    fn metadata_dir(&self) -> PathBuf {
        self.repo.join(METADATA_DIR)
    }

    /// Makes a new repository: role keys (unless the key folder has them),
    /// root metadata version 1 (one key per role, threshold 1), and empty
    /// targets, snapshot and timestamp. Refuses a folder that has metadata.
    pub async fn init(&self) -> Result<PathBuf, FleetError> {
        let root_path = self.metadata_dir().join("1.root.json");
        if root_path.exists() {
            return Err(FleetError::Io {
                path: root_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "this repository exists already",
                ),
            });
        }
        for role in RoleName::ALL {
            if !self.keys.path(role).exists() {
                self.keys.generate(role)?;
            }
        }
        let mut root = Root {
            spec_version: "1.0.0".into(),
            consistent_snapshot: true,
            version: NonZeroU64::MIN,
            expires: expires_in(self.lifetimes.root)?,
            keys: HashMap::new(),
            roles: HashMap::new(),
            _extra: HashMap::new(),
        };
        for role in RoleName::ALL {
            let key = self.keys.public(role)?;
            let id = key.key_id().map_err(|e| FleetError::Key {
                path: self.keys.path(role),
                problem: format!("no key id: {e}"),
            })?;
            root.keys.insert(id.clone(), key);
            root.roles.insert(
                role.tuf(),
                RoleKeys {
                    keyids: vec![id],
                    threshold: NonZeroU64::MIN,
                    _extra: HashMap::new(),
                },
            );
        }
        self.write_root(root).await?;
        let pin = self.keys.pinned_root();
        if !pin.exists() {
            let bytes = std::fs::read(&root_path).map_err(FleetError::io(&root_path))?;
            write_atomic(&pin, &bytes, 0o644)?;
        }
        for dir in [TARGETS_DIR, BLOBS_DIR] {
            let dir = self.repo.join(dir);
            std::fs::create_dir_all(&dir).map_err(FleetError::io(&dir))?;
        }
        let mut editor = RepositoryEditor::new(&root_path)
            .await
            .map_err(self.edit_error("reading the new root"))?;
        editor
            .targets_version(NonZeroU64::MIN)
            .map_err(self.edit_error("targets"))?
            .targets_expires(expires_in(self.lifetimes.targets)?)
            .map_err(self.edit_error("targets"))?
            .snapshot_version(NonZeroU64::MIN)
            .snapshot_expires(expires_in(self.lifetimes.snapshot)?)
            .timestamp_version(NonZeroU64::MIN)
            .timestamp_expires(expires_in(self.lifetimes.timestamp)?);
        let signed = editor
            .sign(&self.keys.sources())
            .await
            .map_err(self.edit_error("signing the first metadata"))?;
        signed
            .write(self.metadata_dir())
            .await
            .map_err(self.edit_error("writing the first metadata"))?;
        Ok(root_path)
    }

    /// Signs `root` with the root key(s) of the current root (if any) and
    /// its own, and writes `N.root.json`.
    async fn write_root(&self, root: Root) -> Result<(), FleetError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let holder = KeyHolder::Root(root.clone());
        let version = root.version;
        let signed = SignedRole::new(root, &holder, &self.keys.sources(), &rng)
            .await
            .map_err(self.edit_error("signing root"))?;
        let dir = self.metadata_dir();
        std::fs::create_dir_all(&dir).map_err(FleetError::io(&dir))?;
        write_atomic(
            &dir.join(format!("{version}.root.json")),
            signed.buffer(),
            0o644,
        )?;
        Ok(())
    }

    /// The repository's first root metadata: the anchor every load walks
    /// forward from, one signed rotation at a time (for a remote
    /// repository, the pulled copy already matched the pinned one).
    fn first_root(&self) -> PathBuf {
        self.metadata_dir().join("1.root.json")
    }

    /// Loads the repository as it is (expired metadata included: this is
    /// the publisher re-signing it) and opens an editor on it, with every
    /// version one up and fresh expiry times.
    async fn editor(&self) -> Result<(RepositoryEditor, tough::Repository, RemoveDir), FleetError> {
        let repo = self.load().await?;
        let (root_path, work) = self.verified_root_file(&repo)?;
        let editor = self.editor_on(&root_path, repo.clone()).await?;
        Ok((editor, repo, work))
    }

    /// The newest root as the load verified it, written to a scratch file
    /// for tough's editor (which takes a path). A root file merely present
    /// in the folder is never trusted by its name.
    fn verified_root_file(
        &self,
        repo: &tough::Repository,
    ) -> Result<(PathBuf, RemoveDir), FleetError> {
        let work = self.work_dir()?;
        let path = work.0.join("root.json");
        let bytes = serde_json::to_vec_pretty(repo.root()).map_err(|e| FleetError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&path, bytes).map_err(FleetError::io(&path))?;
        Ok((path, work))
    }

    /// Loads the repository as it is now, so the datastore (if any)
    /// remembers it: after an upload, what this publisher wrote is the
    /// newest it accepts from the server next time.
    pub async fn remember(&self) -> Result<(), FleetError> {
        let repo = self.load().await?;
        if let Some(datastore) = &self.datastore {
            let seen = Seen {
                root: repo.root().signed.version.get(),
                timestamp: repo.timestamp().signed.version.get(),
                snapshot: repo.snapshot().signed.version.get(),
                targets: repo.targets().signed.version.get(),
            };
            let path = datastore.join(SEEN_FILE);
            let json = serde_json::to_vec_pretty(&seen).map_err(|e| FleetError::Io {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
            write_atomic(&path, &json, 0o644)?;
        }
        Ok(())
    }

    /// Loads the repository, trusting `1.root.json` and following (and
    /// verifying) every later root, then timestamp, snapshot and targets.
    async fn load(&self) -> Result<tough::Repository, FleetError> {
        let root_path = self.first_root();
        let root_bytes = std::fs::read(&root_path).map_err(|e| FleetError::Io {
            path: root_path.clone(),
            source: std::io::Error::new(
                e.kind(),
                format!("{e}: no fleet repository here; make one with outpost fleet init"),
            ),
        })?;
        let url = |dir: &str| {
            url::Url::from_directory_path(self.repo.join(dir)).map_err(|()| FleetError::Io {
                path: self.repo.join(dir),
                source: std::io::Error::other("not an absolute path; give the repository as one"),
            })
        };
        let mut loader = RepositoryLoader::new(&root_bytes, url(METADATA_DIR)?, url(TARGETS_DIR)?)
            .expiration_enforcement(ExpirationEnforcement::Unsafe);
        if let Some(datastore) = &self.datastore {
            std::fs::create_dir_all(datastore).map_err(FleetError::io(datastore))?;
            loader = loader.datastore(datastore);
        }
        let repo = loader.load().await.map_err(self.edit_error("loading"))?;
        // tough's own datastore forgets timestamp and snapshot across key
        // rotations; the versions seen are kept here too, and never go back.
        if let Some(datastore) = &self.datastore {
            let seen = Seen::read(datastore);
            for (role, now, before) in [
                ("root", repo.root().signed.version.get(), seen.root),
                (
                    "timestamp",
                    repo.timestamp().signed.version.get(),
                    seen.timestamp,
                ),
                (
                    "snapshot",
                    repo.snapshot().signed.version.get(),
                    seen.snapshot,
                ),
                ("targets", repo.targets().signed.version.get(), seen.targets),
            ] {
                if now < before {
                    return Err(FleetError::Target {
                        repo: self.repo_name(),
                        target: format!("{role}.json"),
                        problem: format!(
                            "loading: version {now} is older than version {before} this publisher saw before; the server replays old {role} metadata"
                        ),
                    });
                }
            }
        }
        Ok(repo)
    }

    /// An editor on `repo` that signs under the root at `root_path`.
    async fn editor_on(
        &self,
        root_path: &Path,
        repo: tough::Repository,
    ) -> Result<RepositoryEditor, FleetError> {
        let targets_version = bump(repo.targets().signed.version);
        let snapshot_version = bump(repo.snapshot().signed.version);
        let timestamp_version = bump(repo.timestamp().signed.version);
        let mut editor = RepositoryEditor::from_repo(root_path, repo)
            .await
            .map_err(self.edit_error("opening an editor"))?;
        editor
            .targets_version(targets_version)
            .map_err(self.edit_error("targets"))?
            .targets_expires(expires_in(self.lifetimes.targets)?)
            .map_err(self.edit_error("targets"))?
            .snapshot_version(snapshot_version)
            .snapshot_expires(expires_in(self.lifetimes.snapshot)?)
            .timestamp_version(timestamp_version)
            .timestamp_expires(expires_in(self.lifetimes.timestamp)?);
        Ok(editor)
    }

    /// Adds targets (files in `staged`, named as their targets) and writes
    /// the re-signed metadata; targets go in before the metadata that names
    /// them, so a device never sees metadata whose files are missing.
    async fn commit(
        &self,
        editor: RepositoryEditor,
        staged: Option<&Path>,
        extra: Vec<Box<dyn KeySource>>,
    ) -> Result<(), FleetError> {
        let mut sources = self.keys.sources();
        sources.extend(extra);
        let signed = editor
            .sign(&sources)
            .await
            .map_err(self.edit_error("signing"))?;
        // Everything is written beside its place first and renamed into it,
        // so a publisher killed at any point leaves whole files only: the
        // targets, then root, targets and snapshot metadata, the timestamp
        // last (a device reads nothing new before it moves).
        if let Some(staged) = staged {
            let targets = self.repo.join(TARGETS_DIR);
            let temp = RemoveDir(targets.join(format!(".write-{}", std::process::id())));
            let _ = std::fs::remove_dir_all(&temp.0);
            signed
                .copy_targets(staged, &temp.0, PathExists::Replace)
                .await
                .map_err(self.edit_error("copying targets"))?;
            move_into(&temp.0, &targets, |name, dest| {
                // Named by their digest: a whole one is never replaced.
                name.split_once('.').is_some_and(|(hex, _)| {
                    std::fs::read(dest).is_ok_and(|bytes| {
                        outpost_signing::Digest::of(&bytes).to_string() == format!("sha256:{hex}")
                    })
                })
            })?;
        }
        let metadata = self.metadata_dir();
        let temp = RemoveDir(metadata.join(format!(".write-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&temp.0);
        signed
            .write(&temp.0)
            .await
            .map_err(self.edit_error("writing metadata"))?;
        // A published root is never rewritten: devices and the operator's
        // pin hold its exact bytes (tough writes the root it signed under
        // again, serialised its own way).
        move_into(&temp.0, &metadata, |name, dest| {
            name.ends_with(".root.json") && dest.exists()
        })?;
        Ok(())
    }

    /// Adds a bundle (directory or archive): its blobs to `blobs/` (those
    /// not there yet), its head as targets. Its publisher signatures are
    /// checked against `trust` first, as a device will, so a fleet never
    /// points devices at a bundle they would refuse.
    pub async fn publish(
        &self,
        bundle: &Path,
        trust: &TrustRoot,
        oci: Option<&super::oci::OciRef>,
    ) -> Result<Published, FleetError> {
        let in_bundle = |source| FleetError::Bundle {
            path: bundle.to_owned(),
            source: Box::new(source),
        };
        let cleanup = self.work_dir()?;
        let work = cleanup.0.clone();
        let dir = if bundle.is_dir() {
            bundle.to_owned()
        } else {
            // Unpack the archive (signatures first, blobs checked against
            // the manifest as they are written).
            let unpacked = work.join("bundle");
            Bundle::open_verified(bundle, trust, &unpacked).map_err(in_bundle)?;
            unpacked
        };
        let opened = Bundle::open_dir(&dir)
            .map_err(in_bundle)?
            .verify(trust)
            .map_err(in_bundle)?;
        let manifest = opened.manifest().clone();
        let info = &manifest.bundle;
        let manifest_digest = opened.manifest_digest().to_string();

        // The blobs go to an OCI registry, or into `blobs/`.
        let oci = match oci {
            Some(target) => Some(super::oci::push(&dir, target, trust, &work.join("oci")).await?),
            None => None,
        };
        // Blobs, content-addressed; each checked against the manifest.
        let blobs = self.repo.join(BLOBS_DIR);
        std::fs::create_dir_all(&blobs).map_err(FleetError::io(&blobs))?;
        let (mut added, mut present) = (0, 0);
        for (digest, entry) in manifest.blobs.iter().filter(|_| oci.is_none()) {
            let hex = digest.trim_start_matches("sha256:");
            let target = blobs.join(hex);
            if std::fs::metadata(&target).is_ok_and(|m| m.len() == entry.size) {
                present += 1;
                continue;
            }
            let source = dir.join(outpost_signing::bundle::BLOB_DIR).join(hex);
            let bytes = std::fs::read(&source).map_err(FleetError::io(&source))?;
            if bytes.len() as u64 != entry.size
                || outpost_signing::Digest::of(&bytes).to_string() != *digest
            {
                return Err(FleetError::Blob {
                    digest: digest.clone(),
                    url: source.display().to_string(),
                    problem: "does not match the bundle's manifest".into(),
                });
            }
            write_atomic(&target, &bytes, 0o644)?;
            added += 1;
        }

        // The head: manifest, signatures, provenance; staged under their
        // target names.
        let staged = work.join("targets");
        std::fs::create_dir_all(&staged).map_err(FleetError::io(&staged))?;
        let (mut editor, _, _root) = self.editor().await?;
        for file in [MANIFEST_FILE, SIGNATURES_FILE, PROVENANCE_FILE] {
            let source = dir.join(file);
            if !source.exists() {
                continue;
            }
            let name = head_target(&info.name, info.version, file);
            let path = staged.join(&name);
            std::fs::copy(&source, &path).map_err(FleetError::io(&source))?;
            let mut target = Target::from_path(&path).await.map_err(hash_error(&path))?;
            if let (MANIFEST_FILE, Some(oci)) = (file, &oci) {
                target.custom.insert(
                    super::BLOBS_CUSTOM_KEY.to_owned(),
                    serde_json::Value::String(oci.to_string()),
                );
            }
            editor
                .add_target(name.as_str(), target)
                .map_err(self.edit_error(format!("adding {name}")))?;
        }
        self.commit(editor, Some(&staged), Vec::new()).await?;
        Ok(Published {
            oci: oci.map(|o| o.to_string()),
            bundle: info.name.clone(),
            version: info.version,
            manifest_digest,
            blobs_added: added,
            blobs_present: present,
        })
    }

    /// Points `group` at bundle `name` version `version`, which must have
    /// been published to this repository.
    pub async fn set(
        &self,
        group: &str,
        name: &str,
        version: u64,
    ) -> Result<Assignment, FleetError> {
        check_group(group)?;
        let (mut editor, repo, _root) = self.editor().await?;
        let mut head = BTreeMap::new();
        for file in [MANIFEST_FILE, SIGNATURES_FILE, PROVENANCE_FILE] {
            let target = head_target(name, version, file);
            let known = repo
                .targets()
                .signed
                .targets
                .keys()
                .any(|t| t.raw() == target);
            if known {
                head.insert(file.to_owned(), target);
            }
        }
        let Some(manifest_target) = head.get(MANIFEST_FILE) else {
            return Err(FleetError::Target {
                repo: self.repo_name(),
                target: head_target(name, version, MANIFEST_FILE),
                problem: format!(
                    "bundle {name} version {version} is not in this repository; add it with outpost publish"
                ),
            });
        };
        let manifest_path = self.target_file(&repo, manifest_target)?;
        let bytes = std::fs::read(&manifest_path).map_err(FleetError::io(&manifest_path))?;
        let blobs = repo
            .targets()
            .signed
            .targets
            .iter()
            .find(|(t, _)| t.raw() == manifest_target)
            .and_then(|(_, t)| t.custom.get(super::BLOBS_CUSTOM_KEY))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let assignment = Assignment {
            bundle: name.to_owned(),
            version,
            manifest_digest: outpost_signing::Digest::of(&bytes).to_string(),
            head,
            blobs,
        };
        let cleanup = self.work_dir()?;
        let work = cleanup.0.clone();
        let name = group_target(group);
        let path = work.join(&name);
        let json = serde_json::to_vec_pretty(&assignment).map_err(|e| FleetError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&path, json).map_err(FleetError::io(&path))?;
        let target = Target::from_path(&path).await.map_err(hash_error(&path))?;
        editor
            .add_target(name.as_str(), target)
            .map_err(self.edit_error(format!("adding {name}")))?;
        self.commit(editor, Some(&work), Vec::new()).await?;
        Ok(assignment)
    }

    /// Where a target's file lies in the repository (consistent snapshots:
    /// `targets/<sha256>.<name>`).
    fn target_file(&self, repo: &tough::Repository, name: &str) -> Result<PathBuf, FleetError> {
        let target = repo
            .targets()
            .signed
            .targets
            .iter()
            .find(|(t, _)| t.raw() == name)
            .map(|(_, t)| t)
            .ok_or_else(|| FleetError::Target {
                repo: self.repo_name(),
                target: name.to_owned(),
                problem: "not listed in the targets metadata".into(),
            })?;
        Ok(self
            .repo
            .join(TARGETS_DIR)
            .join(super::target_file_name(name, target)))
    }

    /// Re-signs the timestamp with a fresh expiry time (the job of a timer,
    /// with the online timestamp key only); `snapshot` re-signs the
    /// snapshot too (with the snapshot key). Only metadata the load
    /// verified is signed again: a timestamp merely found in the folder (or
    /// served by a remote repository) is never renewed.
    pub async fn refresh(&self, snapshot: bool) -> Result<u64, FleetError> {
        if snapshot {
            let (editor, repo, _root) = self.editor().await?;
            let version = bump(repo.timestamp().signed.version).get();
            self.commit(editor, None, Vec::new()).await?;
            return Ok(version);
        }
        let repo = self.load().await?;
        let old = repo.timestamp().signed.clone();
        let timestamp = Timestamp {
            version: bump(old.version),
            expires: expires_in(self.lifetimes.timestamp)?,
            ..old
        };
        let version = timestamp.version.get();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signed = SignedRole::new(
            timestamp,
            &KeyHolder::Root(repo.root().signed.clone()),
            &[self.keys.source(RoleName::Timestamp)],
            &rng,
        )
        .await
        .map_err(self.edit_error("signing the timestamp"))?;
        write_atomic(
            &self.metadata_dir().join("timestamp.json"),
            signed.buffer(),
            0o644,
        )?;
        Ok(version)
    }

    /// Rotates the key of `role`: a new key (`<role>.pk8.new` until
    /// [`FleetKeys::finish_rotation`] puts it in place), root metadata
    /// version N+1 naming it, signed by the new root's keys and, for the
    /// root role, by the old root key too, and every role re-signed under
    /// it. Returns N+1. Devices follow rotations one version at a time.
    pub async fn rotate(&self, role: RoleName) -> Result<u64, FleetError> {
        // The repository as the verified chain of roots has it.
        let repo = self.load().await?;
        let old = repo.root().clone();
        let fresh = self.keys.fresh_path(role);
        if fresh.exists() {
            return Err(FleetError::Key {
                path: fresh,
                problem: "a rotation was interrupted: this new key was made but never put in place. If the repository's newest root metadata names it, finish by hand (mv it over the role's key, keeping the old one); else delete it and rotate again".into(),
            });
        }
        self.keys.generate_to(&fresh)?;
        let key = public_of(&fresh)?;
        let id = key.key_id().map_err(|e| FleetError::Key {
            path: fresh.clone(),
            problem: format!("no key id: {e}"),
        })?;
        let mut root = old.signed.clone();
        root.version = bump(root.version);
        root.expires = expires_in(self.lifetimes.root)?;
        if let Some(keys) = root.roles.get_mut(&role.tuf()) {
            for old_id in std::mem::take(&mut keys.keyids) {
                root.keys.remove(&old_id);
            }
            keys.keyids = vec![id.clone()];
        }
        // Keys still named by another role stay listed.
        for keys in old.signed.roles.values() {
            for kid in &keys.keyids {
                if root.roles.values().any(|r| r.keyids.contains(kid))
                    && let Some(k) = old.signed.keys.get(kid)
                {
                    root.keys.entry(kid.clone()).or_insert_with(|| k.clone());
                }
            }
        }
        root.keys.insert(id, key);
        let version = root.version.get();
        // The role keys in place (the old root key among them) and the new.
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let fresh_source = || -> Box<dyn KeySource> {
            Box::new(LocalKeySource {
                path: fresh.clone(),
            })
        };
        let mut sources = self.keys.sources();
        sources.push(fresh_source());
        let new = SignedRole::new(root.clone(), &KeyHolder::Root(root.clone()), &sources, &rng)
            .await
            .map_err(self.edit_error("signing the new root"))?;
        let mut signed: Signed<Root> = new.signed().clone();
        if role == RoleName::Root {
            let by_old = SignedRole::new(root, &KeyHolder::Root(old.signed), &sources, &rng)
                .await
                .map_err(self.edit_error("signing the new root with the old root key"))?;
            for signature in &by_old.signed().signatures {
                if !signed.signatures.iter().any(|s| s.keyid == signature.keyid) {
                    signed.signatures.push(signature.clone());
                }
            }
        }
        // Root N+1 goes in place with the rest, in TUF order, by commit:
        // never alone, naming keys the other roles are not yet signed with.
        let work = self.work_dir()?;
        let new_path = work.0.join(format!("{version}.root.json"));
        let bytes = serde_json::to_vec_pretty(&signed).map_err(|e| FleetError::Io {
            path: new_path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&new_path, &bytes, 0o644)?;
        // Re-sign everything under the new root.
        let editor = self.editor_on(&new_path, repo).await?;
        self.commit(editor, None, vec![fresh_source()]).await?;
        Ok(version)
    }
}

/// The public key in a key file, as TUF metadata lists it.
fn public_of(path: &Path) -> Result<tough::schema::key::Key, FleetError> {
    let bytes = std::fs::read(path).map_err(|e| FleetError::Key {
        path: path.to_owned(),
        problem: format!("cannot read it: {e}; make the keys with outpost fleet init"),
    })?;
    use tough::sign::Sign;
    let pair = tough::sign::parse_keypair(&bytes).map_err(|e| FleetError::Key {
        path: path.to_owned(),
        problem: format!("not an ed25519 PKCS#8 key: {e}"),
    })?;
    Ok(pair.tuf_key())
}

/// Moves every file of `from` into `to` by rename, each synced first, in
/// TUF's safe order (anything else, root, targets, snapshot, timestamp);
/// `keep(name, dest)` says when the file in place stays.
fn move_into(from: &Path, to: &Path, keep: impl Fn(&str, &Path) -> bool) -> Result<(), FleetError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(from).map_err(FleetError::io(from))? {
        let entry = entry.map_err(FleetError::io(from))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    let rank = |name: &str| match name {
        n if n.ends_with(".root.json") => 1,
        n if n.ends_with(".targets.json") => 2,
        n if n.ends_with(".snapshot.json") => 3,
        "timestamp.json" => 4,
        _ => 0,
    };
    names.sort_by_key(|n| (rank(n), n.clone()));
    for name in names {
        let source = from.join(&name);
        let dest = to.join(&name);
        if keep(&name, &dest) {
            continue;
        }
        std::fs::File::open(&source)
            .and_then(|f| f.sync_all())
            .map_err(FleetError::io(&source))?;
        std::fs::rename(&source, &dest).map_err(FleetError::io(&dest))?;
    }
    outpost_signing::durable::sync_dir(to)?;
    Ok(())
}

fn hash_error(path: &Path) -> impl FnOnce(tough::schema::Error) -> FleetError {
    let path = path.to_owned();
    move |e| FleetError::Io {
        path,
        source: std::io::Error::other(e.to_string()),
    }
}

/// Removes a folder when dropped.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
