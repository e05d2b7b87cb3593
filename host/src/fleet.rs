//! Fleet updates: what each group of devices should run, as a TUF
//! repository, and the device side that follows it.
//!
//! Two layers, as Uptane does for vehicles:
//!
//! - the **publisher layer** (bundles signed by the publishers' offline keys,
//!   checked against the device's trust root) says what software is
//!   legitimate;
//! - the **fleet layer** (this module: standard TUF metadata, roles root,
//!   targets, snapshot and timestamp, read with the `tough` crate) says what
//!   each device group runs now.
//!
//! A fleet repository is plain files that any web server can host:
//!
//! ```text
//! REPO/metadata/1.root.json, N.targets.json, N.snapshot.json, timestamp.json
//! REPO/targets/<sha256>.<NAME>-<VERSION>.manifest.toml   bundle heads (TUF targets)
//! REPO/targets/<sha256>.<NAME>-<VERSION>.signatures.json
//! REPO/targets/<sha256>.group-<GROUP>.json                an [`Assignment`] (TUF target)
//! REPO/blobs/<sha256 hex>                                 bundle blobs, content-addressed
//! ```
//!
//! A group's assignment pins a bundle's manifest by digest; the manifest,
//! signed by the publishers, pins every blob by digest and size. So the
//! fleet's online keys can only choose among publisher-signed bundles, and
//! the device's accepted versions keep them from moving it backwards.

pub mod agent;
pub mod oci;
pub mod publish;
pub mod remote;
pub mod transport;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub use agent::{
    Current, FleetStatus, Installed, Rejected, StatusReport, UpdateOutcome, UpdateReport, Updater,
    UpdaterOptions,
};
pub use publish::{FleetKeys, Lifetimes, Published, Publisher, RoleName};

/// The repository's TUF metadata folder.
pub const METADATA_DIR: &str = "metadata";
/// The repository's TUF targets folder.
pub const TARGETS_DIR: &str = "targets";
/// The repository's blob folder.
pub const BLOBS_DIR: &str = "blobs";
/// The largest assignment target a device reads.
pub const MAX_ASSIGNMENT_BYTES: u64 = 64 * 1024;

/// The TUF target name of a group's assignment.
pub fn group_target(group: &str) -> String {
    format!("group-{group}.json")
}

/// Where a target's file lies under `targets/` in a repository with
/// consistent snapshots: `<sha256 hex>.<name>`.
pub fn target_file_name(name: &str, target: &tough::schema::Target) -> String {
    let hex: String = target
        .hashes
        .sha256
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}.{name}")
}

/// The TUF target name of one file of a bundle's head.
pub fn head_target(bundle: &str, version: u64, file: &str) -> String {
    format!("{bundle}-{version}.{file}")
}

/// Checks a group name: `[a-z0-9._-]`, 1 to 64 characters, as bundle names.
pub fn check_group(group: &str) -> Result<(), FleetError> {
    check_name("group", group)
}

/// Checks a name that becomes part of a file name: `[a-z0-9._-]`, 1 to 64
/// characters, not starting with a dot (the rule for bundle names).
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), FleetError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(FleetError::BadName {
            what,
            name: name.chars().take(80).collect(),
        })
    }
}

/// What one device group runs: the content of `group-<GROUP>.json`, a TUF
/// target signed by the fleet's targets role.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The bundle's name.
    pub bundle: String,
    /// Its version.
    pub version: u64,
    /// The digest of its `manifest.toml` (`sha256:...`).
    pub manifest_digest: String,
    /// The files of the bundle's head (`manifest.toml`, `signatures.json`,
    /// `provenance.json` when there is one), each the name of a TUF target.
    pub head: BTreeMap<String, String>,
    /// Where the blobs are, when not in the repository's `blobs/`: an OCI
    /// artifact pinned by digest (`oci://HOST/REPO@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<String>,
}

/// The key of a manifest target's `custom` metadata naming where its
/// bundle's blobs are.
pub const BLOBS_CUSTOM_KEY: &str = "outpost-blobs";

/// Why publishing to, or updating from, a fleet repository failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// TUF metadata could not be loaded or failed a check (signatures,
    /// versions, expiry, sizes, hashes): the repository is not trusted.
    #[error("fleet repository {repo}: {source}")]
    Tuf {
        /// The repository.
        repo: String,
        /// What tough reported.
        source: Box<tough::error::Error>,
    },
    /// Editing or signing the repository failed.
    #[error("fleet repository {repo}: {what}: {source}")]
    Edit {
        /// The repository.
        repo: String,
        /// What was being done.
        what: String,
        /// What tough reported.
        source: Box<tough::error::Error>,
    },
    /// The fleet metadata has expired and nothing fresher was reachable: the
    /// device keeps what it runs and stops updating until it is refreshed.
    #[error(
        "fleet repository {repo}: the {role} metadata expired; the device keeps serving what it runs (stale) until the repository is refreshed (outpost fleet refresh)"
    )]
    Expired {
        /// The repository.
        repo: String,
        /// Which role expired.
        role: String,
    },
    /// The group has no assignment in the repository.
    #[error(
        "fleet repository {repo} has no assignment for group '{group}'; set one with: outpost fleet set {group} NAME VERSION"
    )]
    NoAssignment {
        /// The repository.
        repo: String,
        /// The group.
        group: String,
    },
    /// A target the metadata names is missing or unusable.
    #[error("fleet repository {repo}: target {target}: {problem}")]
    Target {
        /// The repository.
        repo: String,
        /// The target name.
        target: String,
        /// What is wrong.
        problem: String,
    },
    /// A blob download failed or its bytes did not match the signed manifest.
    #[error("blob {digest} from {url}: {problem}")]
    Blob {
        /// The blob's digest.
        digest: String,
        /// Where it came from.
        url: String,
        /// What went wrong.
        problem: String,
    },
    /// A network fetch failed.
    #[error("fetching {url}: {problem}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        problem: String,
    },
    /// The assigned bundle is refused by the device (publisher signatures,
    /// version, policy).
    #[error("bundle {bundle} version {version} assigned to group '{group}' is refused: {source}")]
    Refused {
        /// The bundle name.
        bundle: String,
        /// Its version.
        version: u64,
        /// The group.
        group: String,
        /// Why.
        source: Box<crate::device::DeviceError>,
    },
    /// The assignment does not match the bundle it names.
    #[error(
        "assignment for group '{group}' does not match its bundle: {problem}; the fleet metadata and the bundle disagree, republish with outpost publish"
    )]
    Mismatch {
        /// The group.
        group: String,
        /// What differs.
        problem: String,
    },
    /// A name is not usable.
    #[error("'{name}' is not a valid {what} name: use [a-z0-9._-], 1 to 64 characters")]
    BadName {
        /// What kind of name.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// A key file could not be made or read.
    #[error("fleet key {}: {problem}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The bundle to publish could not be read or verified.
    #[error("bundle {}: {source}", path.display())]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// What failed.
        source: Box<outpost_signing::Error>,
    },
    /// The device state could not be read or written.
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A durable write failed.
    #[error(transparent)]
    Durable(#[from] outpost_signing::Error),
    /// The TLS trust anchors for HTTPS fetches could not be set up.
    #[error(transparent)]
    Tls(#[from] transport::TlsError),
}

impl FleetError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FleetError {
        let path = path.into();
        move |source| FleetError::Io { path, source }
    }

    /// A short, stable name of the error's kind, for metrics and status.
    pub fn kind(&self) -> &'static str {
        match self {
            FleetError::Tuf { .. } => "untrusted-metadata",
            FleetError::Edit { .. } => "edit",
            FleetError::Expired { .. } => "stale",
            FleetError::NoAssignment { .. } => "no-assignment",
            FleetError::Target { .. } => "target",
            FleetError::Blob { .. } => "blob",
            FleetError::Fetch { .. } => "fetch",
            FleetError::Refused { .. } => "refused",
            FleetError::Mismatch { .. } => "mismatch",
            FleetError::BadName { .. } => "bad-name",
            FleetError::Key { .. } => "key",
            FleetError::Bundle { .. } => "bundle",
            FleetError::Device(_) => "device-state",
            FleetError::Io { .. } => "io",
            FleetError::Durable(_) => "io",
            FleetError::Tls(_) => "tls",
        }
    }
}
