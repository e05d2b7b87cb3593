//! Everything that can fail in the trust layer.
//!
//! Every refusal a caller may want to act on is its own variant: a device
//! tells "key revoked" from "root expired" from "rollback" by matching, not
//! by reading the message. Messages still name the file, key id, blob or
//! bundle at fault, what was wrong and what to do.

use crate::KeyId;
use crate::time::Timestamp;
use std::fmt;
use std::path::PathBuf;

/// Why one signature was not counted towards a threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The key id is not among the trust root's keys.
    UnknownKey,
    /// The key is listed but revoked by the trust root.
    Revoked,
    /// The key is trusted but the signature does not verify.
    BadSignature,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::UnknownKey => "not a key of this root",
            RejectReason::Revoked => "key is revoked",
            RejectReason::BadSignature => "signature does not verify",
        })
    }
}

/// `valid: k1, k2; k3: key is revoked` for messages.
struct Tally<'a> {
    valid: &'a [KeyId],
    required: u32,
    rejected: &'a [(KeyId, RejectReason)],
}

impl fmt::Display for Tally<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "threshold not met: {} valid signature(s) of the {} required (valid: ",
            self.valid.len(),
            self.required
        )?;
        if self.valid.is_empty() {
            f.write_str("none")?;
        }
        for (i, key) in self.valid.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{key}")?;
        }
        for (key, why) in self.rejected {
            write!(f, "; {key}: {why}")?;
        }
        f.write_str(")")
    }
}

fn tally<'a>(
    valid: &'a [KeyId],
    required: &'a u32,
    rejected: &'a [(KeyId, RejectReason)],
) -> Tally<'a> {
    Tally {
        valid,
        required: *required,
        rejected,
    }
}

/// A failed check or a malformed input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A document (manifest, root, signatures, key) is not well-formed.
    #[error("{what}: {message}")]
    Malformed {
        /// Which document, e.g. `manifest.toml`.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// An input is larger than this format allows.
    #[error("{what} is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A blob's content does not match the digest or size the manifest gives.
    #[error("blob {digest} ({name}): {message}")]
    BlobMismatch {
        /// The digest the manifest names.
        digest: String,
        /// The blob's file name in the manifest.
        name: String,
        /// What differs.
        message: String,
    },

    // Signatures and trust roots.
    /// Too few valid signatures from distinct trusted keys (a bundle's
    /// `signatures.json`, or any other document signed under a root).
    #[error(
        "{what}: {}; sign it with more of the trust root's keys",
        tally(valid, required, rejected)
    )]
    ThresholdNotMet {
        /// What was signed, e.g. `bundle 'demo' version 3 (signatures.json)`.
        what: String,
        /// Distinct trusted keys whose signatures verified.
        valid: Vec<KeyId>,
        /// The root's threshold.
        required: u32,
        /// Signatures not counted, and why.
        rejected: Vec<(KeyId, RejectReason)>,
    },
    /// A trust root is not signed by the threshold of its own keys.
    #[error(
        "{what}: trust root version {version} is not signed by its own keys: {}",
        tally(valid, required, rejected)
    )]
    RootNotSelfSigned {
        /// The root's file.
        what: String,
        /// Its version.
        version: u64,
        /// Its own keys whose signatures verified.
        valid: Vec<KeyId>,
        /// Its own threshold.
        required: u32,
        /// Signatures not counted, and why.
        rejected: Vec<(KeyId, RejectReason)>,
    },
    /// A new root is not signed by the threshold of the root it replaces.
    #[error(
        "{what}: rotation refused: version {version} is not signed by the previous root's keys (version {previous}): {}; sign it with the keys of version {previous} too",
        tally(valid, required, rejected)
    )]
    RotationNotSigned {
        /// The new root's file.
        what: String,
        /// The new root's version.
        version: u64,
        /// The version of the root it replaces.
        previous: u64,
        /// Keys of the previous root whose signatures verified.
        valid: Vec<KeyId>,
        /// The previous root's threshold.
        required: u32,
        /// Signatures not counted, and why.
        rejected: Vec<(KeyId, RejectReason)>,
    },
    /// A root does not carry the version right after the one before it:
    /// versions go N, N+1, N+2 (TUF), so no root can be skipped or replayed.
    #[error("{what}: root version {found} does not follow version {previous}; the next root must be version {}. Give every root from the one trusted now to the newest, oldest first", previous.saturating_add(1))]
    RootVersionGap {
        /// The root's file.
        what: String,
        /// The version before it (in the chain, or accepted by the device).
        previous: u64,
        /// Its version.
        found: u64,
    },
    /// The chain ends at a root older than the one the device accepted
    /// before: an older root could bring revoked keys back.
    #[error(
        "{what}: trust root version {version} is older than version {accepted}, which this device already accepted; give the chain up to version {accepted} or newer"
    )]
    RootRollback {
        /// The newest root given.
        what: String,
        /// Its version.
        version: u64,
        /// The version the device accepted.
        accepted: u64,
    },
    /// A root has the version of the accepted root but other content.
    #[error(
        "{what}: trust root version {version} ({found}) differs from the version {version} this device accepted ({accepted}); a changed root must be published under a new version"
    )]
    RootMismatch {
        /// The root's file.
        what: String,
        /// The version both carry.
        version: u64,
        /// The digest of the accepted root's envelope.
        accepted: crate::Digest,
        /// The digest of the root given.
        found: crate::Digest,
    },
    /// The root in force has expired (freeze protection).
    #[error(
        "trust root version {version} expired at {expires}; the clock used says {now}. Install a newer root signed by your publishers"
    )]
    RootExpired {
        /// Its version.
        version: u64,
        /// When it expired.
        expires: Timestamp,
        /// The clock used.
        now: Timestamp,
    },
    /// No trust root was given and none was accepted before.
    #[error(
        "no trust root given: give the publisher's root (and every rotation after it, oldest first)"
    )]
    NoTrustRoot,

    // Bundle archives.
    /// An archive entry is not where it must be: `manifest.toml` first,
    /// `signatures.json` second, `provenance.json` (optional) third, so they
    /// are verified before any blob is written.
    #[error(
        "{archive}: entry '{entry}' where {expected} must come; a bundle archive starts with manifest.toml, signatures.json (and provenance.json), then the blobs. Repack it with `outpost pack`"
    )]
    EntryOrder {
        /// The archive.
        archive: String,
        /// The entry found (`(end of archive)` if none).
        entry: String,
        /// What must come there.
        expected: &'static str,
    },
    /// An archive entry a bundle never holds: another name, a path outside
    /// the bundle, a link, a directory, a device, a long-name or pax header.
    #[error(
        "{archive}: entry '{entry}': {reason}; a bundle archive holds only regular files named manifest.toml, signatures.json, provenance.json and blobs/<sha256 hex>. Repack it with `outpost pack`"
    )]
    UnexpectedEntry {
        /// The archive.
        archive: String,
        /// The entry's name, escaped.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A blob entry the signed manifest does not list; refused before a
    /// byte of it is written.
    #[error(
        "{archive}: entry '{entry}' is not a blob the signed manifest lists; refused before writing it"
    )]
    UnlistedEntry {
        /// The archive.
        archive: String,
        /// The entry's name.
        entry: String,
    },
    /// An entry given twice.
    #[error("{archive}: entry '{entry}' appears twice; refused")]
    DuplicateEntry {
        /// The archive.
        archive: String,
        /// The entry's name.
        entry: String,
    },
    /// A blob the signed manifest lists is not in the archive.
    #[error(
        "{archive}: blob {digest} ({name}) is listed in the signed manifest but missing from the archive; repack it with `outpost pack`"
    )]
    MissingBlob {
        /// The archive.
        archive: String,
        /// The blob's digest.
        digest: String,
        /// Its file name in the manifest.
        name: String,
    },

    // Bundle versions.
    /// A bundle older than a version the device already accepted (rollback).
    #[error(
        "bundle '{bundle}' version {version} is older than version {accepted}, which this device already accepted; publish a version above {accepted}"
    )]
    OlderVersion {
        /// The bundle's name.
        bundle: String,
        /// Its version.
        version: u64,
        /// The highest version accepted.
        accepted: u64,
    },
    /// A bundle with an accepted version but another manifest.
    #[error(
        "bundle '{bundle}' version {version} differs from the version {version} this device already accepted ({accepted}, now {found}); publish a higher version"
    )]
    SameVersionDifferentContent {
        /// The bundle's name.
        bundle: String,
        /// The version both carry.
        version: u64,
        /// The manifest digest accepted before.
        accepted: String,
        /// The manifest digest given now.
        found: String,
    },

    // Provenance.
    /// The policy requires provenance and the bundle has none.
    #[error(
        "bundle '{bundle}' has no provenance.json, and the policy requires provenance from: {builders}; attach it with `outpost provenance`"
    )]
    ProvenanceMissing {
        /// The bundle's name.
        bundle: String,
        /// The trusted builder ids, comma separated.
        builders: String,
    },
    /// The policy requires provenance but names no builder to trust.
    #[error("the policy requires provenance but trusts no builder; add [[provenance.builders]]")]
    ProvenanceNoBuilders,
    /// `provenance.json` is not signed by any builder the policy trusts.
    #[error(
        "bundle '{bundle}': provenance.json is not signed by any builder the policy trusts ({builders})"
    )]
    ProvenanceUntrusted {
        /// The bundle's name.
        bundle: String,
        /// The trusted builder ids, comma separated.
        builders: String,
    },
    /// A trusted builder's key signed a statement naming another builder.
    #[error(
        "bundle '{bundle}': provenance signed by builder '{signer}' claims to come from builder '{claimed}'"
    )]
    ProvenanceBuilderMismatch {
        /// The bundle's name.
        bundle: String,
        /// The builder whose key signed.
        signer: String,
        /// The builder the statement names.
        claimed: String,
    },
    /// A blob the host executes or loads is not a subject of the provenance.
    #[error(
        "bundle '{bundle}': provenance does not cover blob {digest} ({name}); it was not built by '{builder}'"
    )]
    ProvenanceNotCovered {
        /// The bundle's name.
        bundle: String,
        /// The blob's digest.
        digest: String,
        /// The blob's file name.
        name: String,
        /// The builder that signed the provenance.
        builder: String,
    },

    // Device evidence.
    /// Evidence is not signed by the expected device key.
    #[error("evidence is not signed by device key {key}")]
    EvidenceNotSigned {
        /// The key id expected.
        key: KeyId,
    },
    /// Signed evidence says something other than what the verifier expects
    /// (its key, nonce, age, or what it runs).
    #[error("evidence from device {device}: {message}")]
    EvidenceMismatch {
        /// The device key id.
        device: KeyId,
        /// What differs.
        message: String,
        /// Which check failed.
        check: EvidenceCheck,
    },
}

/// Which check of device evidence failed (see [`Error::EvidenceMismatch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvidenceCheck {
    /// The evidence names another device key than the one it is signed with.
    DeviceKey,
    /// The nonce is not the one the verifier sent (stale or replayed).
    Nonce,
    /// The evidence is older than allowed, or from the future.
    Age,
    /// The device runs another bundle, version, stage or model.
    Bundle,
}

/// Results of the trust layer.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn malformed(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Malformed {
            what: what.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether a signature was refused because its key is revoked (in any
    /// of the threshold variants).
    pub fn has_revoked_key(&self) -> bool {
        match self {
            Error::ThresholdNotMet { rejected, .. }
            | Error::RootNotSelfSigned { rejected, .. }
            | Error::RotationNotSigned { rejected, .. } => rejected
                .iter()
                .any(|(_, why)| *why == RejectReason::Revoked),
            _ => false,
        }
    }
}
