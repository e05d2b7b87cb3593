//! Trust roots: which publisher keys a device trusts, how many of them must
//! sign a bundle, until when, and which keys are revoked. A root is a TOML
//! document in a DSSE envelope signed by its own threshold of keys; a new
//! root replaces an old one only when the old root's threshold signs it too.

use crate::dsse::{Envelope, SignatureEntry};
use crate::error::RejectReason;
use crate::keys::PublicKey;
use crate::time::Timestamp;
use crate::{Digest, Error, KeyId, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The DSSE payload type of a trust root.
pub const ROOT_PAYLOAD_TYPE: &str = "application/vnd.outpost.root.v1+toml";

/// The signed body of a trust root.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootBody {
    /// Increases by exactly one with every rotation (TUF: N, N+1, ...).
    pub version: u64,
    /// RFC 3339; the root is refused after it.
    pub expires: String,
    /// Valid signatures from distinct keys that a bundle (or the next root) needs.
    pub threshold: u32,
    /// Publisher keys.
    pub keys: Vec<RootKey>,
    /// Ids of keys that must no longer be trusted, even if listed above.
    #[serde(default)]
    pub revoked: Vec<KeyId>,
}

/// One trusted publisher key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootKey {
    /// `ed25519:<hex>`.
    pub public: String,
    /// A label for people.
    #[serde(default)]
    pub name: Option<String>,
}

/// A verified trust root.
///
/// Only [`TrustRoot::verify_chain`] and [`TrustRoot::verify_chain_from`]
/// make one, so its fields cannot be changed after the checks.
#[derive(Clone, Debug)]
pub struct TrustRoot {
    version: u64,
    expires: Timestamp,
    threshold: u32,
    keys: BTreeMap<KeyId, PublicKey>,
    revoked: BTreeSet<KeyId>,
    digest: Digest,
    envelope: Vec<u8>,
}

/// Who signed, and who was not counted and why.
#[derive(Clone, Debug, Default)]
pub struct SignatureReport {
    /// Distinct trusted keys with valid signatures.
    pub valid: Vec<KeyId>,
    /// Signatures not counted, with the reason.
    pub rejected: Vec<(KeyId, RejectReason)>,
}

impl RootBody {
    /// Checks and converts the body.
    fn into_root(self, envelope: &[u8], what: &str) -> Result<TrustRoot> {
        let expires: Timestamp = self
            .expires
            .parse()
            .map_err(|e: Error| Error::malformed(what, format!("expires: {e}")))?;
        let mut keys = BTreeMap::new();
        for key in &self.keys {
            let public =
                PublicKey::parse(&key.public).map_err(|e| Error::malformed(what, e.to_string()))?;
            keys.insert(public.id(), public);
        }
        if self.threshold == 0 || self.threshold as usize > keys.len() {
            return Err(Error::malformed(
                what,
                format!(
                    "threshold {} must be between 1 and the number of keys ({})",
                    self.threshold,
                    keys.len()
                ),
            ));
        }
        Ok(TrustRoot {
            version: self.version,
            expires,
            threshold: self.threshold,
            keys,
            revoked: self.revoked.into_iter().collect(),
            digest: Digest::of(envelope),
            envelope: envelope.to_vec(),
        })
    }

    /// The unsigned envelope for this body.
    pub fn to_envelope(&self) -> Result<Envelope> {
        let text = toml::to_string(self).map_err(|e| Error::malformed("root", e.to_string()))?;
        Ok(Envelope::new(ROOT_PAYLOAD_TYPE, text.as_bytes()))
    }
}

/// A root envelope parsed but not yet trusted, with the bytes its
/// signatures cover.
struct Candidate {
    root: TrustRoot,
    message: Vec<u8>,
    signatures: Vec<SignatureEntry>,
}

impl Candidate {
    fn parse(what: &str, bytes: &[u8]) -> Result<Self> {
        let envelope = Envelope::parse(bytes, what, ROOT_PAYLOAD_TYPE)?;
        let payload = envelope.payload_bytes(what)?;
        let text = std::str::from_utf8(&payload)
            .map_err(|_| Error::malformed(what, "payload is not UTF-8"))?;
        let body: RootBody =
            toml::from_str(text).map_err(|e| Error::malformed(what, e.to_string()))?;
        let root = body.into_root(bytes, what)?;
        let message = envelope.signed_message(what)?;
        Ok(Self {
            root,
            message,
            signatures: envelope.signatures,
        })
    }

    /// Checks the root's own threshold.
    fn self_signed(self, what: &str) -> Result<TrustRoot> {
        let report = self.root.tally(&self.message, &self.signatures);
        if report.valid.len() < self.root.threshold as usize {
            return Err(Error::RootNotSelfSigned {
                what: what.to_owned(),
                version: self.root.version,
                valid: report.valid,
                required: self.root.threshold,
                rejected: report.rejected,
            });
        }
        Ok(self.root)
    }

    /// Checks that this root may replace `previous`: the next version,
    /// signed by `previous`'s threshold and by its own.
    fn rotated_from(self, previous: &TrustRoot, what: &str) -> Result<TrustRoot> {
        let version = self.root.version;
        if previous.version.checked_add(1) != Some(version) {
            return Err(Error::RootVersionGap {
                what: what.to_owned(),
                previous: previous.version,
                found: version,
            });
        }
        let report = previous.tally(&self.message, &self.signatures);
        if report.valid.len() < previous.threshold as usize {
            return Err(Error::RotationNotSigned {
                what: what.to_owned(),
                version,
                previous: previous.version,
                valid: report.valid,
                required: previous.threshold,
                rejected: report.rejected,
            });
        }
        self.self_signed(what)
    }
}

impl TrustRoot {
    /// Verifies a chain of root envelopes `(file name, bytes)`, oldest
    /// first, trusting the first on first use: each must be signed by its
    /// own threshold, and each after the first also by the threshold of the
    /// one before it, with the next version (N, N+1, ...). The last is the
    /// root in force and must not have expired at `now`.
    pub fn verify_chain(chain: &[(String, Vec<u8>)], now: Timestamp) -> Result<Self> {
        Self::verify_chain_from(None, chain, now)
    }

    /// Like [`TrustRoot::verify_chain`], continuing from the root a device
    /// accepted before (`accepted`: the exact envelope bytes it stored), so
    /// the device only ever moves forward:
    ///
    /// - With no accepted root, the chain is verified from its first root
    ///   (trust on first use).
    /// - With one, roots in the chain older than the accepted version are
    ///   skipped (parsed, not trusted: the accepted root already
    ///   vouches for them having been verified once); they may only come
    ///   before any newer root. A root with the accepted version must be
    ///   byte-identical to it ([`Error::RootMismatch`]). Every newer root
    ///   continues from the accepted one: the next version
    ///   ([`Error::RootVersionGap`]), signed by the previous root's
    ///   threshold and its own.
    /// - The chain must reach the accepted version at least: a chain whose
    ///   newest root is older fails with [`Error::RootRollback`], rather
    ///   than quietly falling back to the stored root. An empty chain means
    ///   "the accepted root" and returns it.
    ///
    /// So with version 2 accepted, `[root1, root2]` and `[root2, root3]`
    /// pass, `[root1]` is a rollback, and with version 1 accepted `[root3]`
    /// is a gap. The accepted bytes are re-verified (self-signature) since
    /// they come from a file; their expiry is not checked, only the result's.
    /// The device persists [`TrustRoot::envelope`] of the result when its
    /// version is above the accepted one.
    pub fn verify_chain_from(
        accepted: Option<&[u8]>,
        chain: &[(String, Vec<u8>)],
        now: Timestamp,
    ) -> Result<Self> {
        const ACCEPTED: &str = "the accepted trust root";
        let accepted = match accepted {
            Some(bytes) => Some(Candidate::parse(ACCEPTED, bytes)?.self_signed(ACCEPTED)?),
            None => None,
        };
        let mut current = accepted.clone();
        // The chain's last root: it must not be older than the accepted one.
        let mut last: Option<(&str, u64)> = None;
        for (what, bytes) in chain {
            let candidate = Candidate::parse(what, bytes)?;
            let version = candidate.root.version;
            last = Some((what, version));
            if let Some(accepted) = &accepted {
                let advanced = current
                    .as_ref()
                    .is_some_and(|c| c.version > accepted.version);
                if !advanced && version < accepted.version {
                    continue;
                }
                if !advanced && version == accepted.version {
                    if candidate.root.digest != accepted.digest {
                        return Err(Error::RootMismatch {
                            what: what.clone(),
                            version,
                            accepted: accepted.digest,
                            found: candidate.root.digest,
                        });
                    }
                    continue;
                }
            }
            current = Some(match &current {
                Some(previous) => candidate.rotated_from(previous, what)?,
                None => candidate.self_signed(what)?,
            });
        }
        let root = current.ok_or(Error::NoTrustRoot)?;
        if let (Some(accepted), Some((what, version))) = (&accepted, last)
            && version < accepted.version
        {
            return Err(Error::RootRollback {
                what: what.to_owned(),
                version,
                accepted: accepted.version,
            });
        }
        if now > root.expires {
            return Err(Error::RootExpired {
                version: root.version,
                expires: root.expires,
                now,
            });
        }
        Ok(root)
    }

    /// Counts signatures of `message` by distinct, trusted, unrevoked keys.
    fn tally(&self, message: &[u8], signatures: &[SignatureEntry]) -> SignatureReport {
        let mut report = SignatureReport::default();
        for entry in signatures {
            if report.valid.contains(&entry.keyid) {
                continue;
            }
            let reason = match self.keys.get(&entry.keyid) {
                None => RejectReason::UnknownKey,
                Some(_) if self.revoked.contains(&entry.keyid) => RejectReason::Revoked,
                Some(key) if entry.verifies(key, message) => {
                    report.valid.push(entry.keyid.clone());
                    continue;
                }
                Some(_) => RejectReason::BadSignature,
            };
            report.rejected.push((entry.keyid.clone(), reason));
        }
        report
    }

    /// Counts valid signatures of `message` by distinct, trusted, unrevoked
    /// keys; fails with [`Error::ThresholdNotMet`] naming `what` unless the
    /// threshold is met.
    pub fn check(
        &self,
        what: &str,
        message: &[u8],
        signatures: &[SignatureEntry],
    ) -> Result<SignatureReport> {
        let report = self.tally(message, signatures);
        if report.valid.len() < self.threshold as usize {
            return Err(Error::ThresholdNotMet {
                what: what.to_owned(),
                valid: report.valid,
                required: self.threshold,
                rejected: report.rejected,
            });
        }
        Ok(report)
    }

    /// Its version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When it expires.
    pub fn expires(&self) -> Timestamp {
        self.expires
    }

    /// Valid signatures needed from distinct keys.
    pub fn threshold(&self) -> u32 {
        self.threshold
    }

    /// The sha256 of the envelope it came from.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The exact envelope bytes it came from: what a device stores as its
    /// accepted root and passes back to [`TrustRoot::verify_chain_from`].
    pub fn envelope(&self) -> &[u8] {
        &self.envelope
    }

    /// The trusted keys, revoked ones included.
    pub fn keys(&self) -> impl Iterator<Item = (&KeyId, &PublicKey)> {
        self.keys.iter()
    }

    /// Whether `id` is revoked.
    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.contains(id)
    }
}
