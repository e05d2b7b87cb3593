//! Trust roots: which publisher keys a device trusts, how many of them must
//! sign a bundle, until when, and which keys are revoked. A root is a TOML
//! document in a DSSE envelope signed by its own threshold of keys; a new
//! root replaces an old one only when the old root's threshold signs it too.

use crate::dsse::{Envelope, SignatureEntry};
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
    /// Increases by at least one with every rotation.
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
#[derive(Clone, Debug)]
pub struct TrustRoot {
    /// Its version.
    pub version: u64,
    /// When it expires.
    pub expires: Timestamp,
    /// Signatures needed.
    pub threshold: u32,
    keys: BTreeMap<KeyId, PublicKey>,
    revoked: BTreeSet<KeyId>,
    /// The sha256 of the envelope it came from.
    pub digest: Digest,
}

/// Who signed, and who was not counted and why.
#[derive(Clone, Debug, Default)]
pub struct SignatureReport {
    /// Distinct trusted keys with valid signatures.
    pub valid: Vec<KeyId>,
    /// Signatures not counted, with the reason.
    pub rejected: Vec<(KeyId, &'static str)>,
}

impl SignatureReport {
    fn describe(&self) -> String {
        let valid = if self.valid.is_empty() {
            "none".to_owned()
        } else {
            self.valid
                .iter()
                .map(KeyId::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = format!("valid: {valid}");
        for (key, why) in &self.rejected {
            text.push_str(&format!("; {key}: {why}"));
        }
        text
    }
}

impl RootBody {
    /// Checks and converts the body.
    fn into_root(self, digest: Digest, what: &str) -> Result<TrustRoot> {
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
            digest,
        })
    }

    /// The unsigned envelope for this body.
    pub fn to_envelope(&self) -> Result<Envelope> {
        let text = toml::to_string(self).map_err(|e| Error::malformed("root", e.to_string()))?;
        Ok(Envelope::new(ROOT_PAYLOAD_TYPE, text.as_bytes()))
    }
}

impl TrustRoot {
    /// Verifies a chain of root envelopes, oldest first: each must be signed by
    /// its own threshold, and each after the first also by the threshold of
    /// the one before it, with a greater version. The last is the root in
    /// force and must not have expired at `now`.
    pub fn verify_chain(chain: &[(String, Vec<u8>)], now: Timestamp) -> Result<Self> {
        let mut current: Option<TrustRoot> = None;
        for (what, bytes) in chain {
            let envelope = Envelope::parse(bytes, what, ROOT_PAYLOAD_TYPE)?;
            let payload = envelope.payload_bytes(what)?;
            let text = std::str::from_utf8(&payload)
                .map_err(|_| Error::malformed(what.as_str(), "payload is not UTF-8"))?;
            let body: RootBody =
                toml::from_str(text).map_err(|e| Error::malformed(what.as_str(), e.to_string()))?;
            let root = body.into_root(Digest::of(bytes), what)?;
            let message = envelope.signed_message(what)?;
            root.check(&message, &envelope.signatures)
                .map_err(|e| Error::Trust(format!("{what}: not signed by its own keys: {e}")))?;
            if let Some(previous) = &current {
                if root.version <= previous.version {
                    return Err(Error::Rollback(format!(
                        "{what}: root version {} does not follow version {}; a rotation must increase it",
                        root.version, previous.version
                    )));
                }
                previous.check(&message, &envelope.signatures).map_err(|e| {
                    Error::Trust(format!("{what}: rotation refused: version {} is not signed by the previous root's keys: {e}", root.version))
                })?;
            }
            current = Some(root);
        }
        let root = current.ok_or_else(|| Error::Trust("no trust root given".into()))?;
        if now > root.expires {
            return Err(Error::Trust(format!(
                "trust root version {} expired at {}; the clock used says {now}. Install a newer root signed by your publishers",
                root.version, root.expires
            )));
        }
        Ok(root)
    }

    /// Counts valid signatures of `message` by distinct, trusted, unrevoked
    /// keys; fails unless the threshold is met.
    pub fn check(&self, message: &[u8], signatures: &[SignatureEntry]) -> Result<SignatureReport> {
        let mut report = SignatureReport::default();
        for entry in signatures {
            if report.valid.contains(&entry.keyid) {
                continue;
            }
            let Some(key) = self.keys.get(&entry.keyid) else {
                report
                    .rejected
                    .push((entry.keyid.clone(), "not a key of this root"));
                continue;
            };
            if self.revoked.contains(&entry.keyid) {
                report
                    .rejected
                    .push((entry.keyid.clone(), "key is revoked"));
                continue;
            }
            if entry.verifies(key, message) {
                report.valid.push(entry.keyid.clone());
            } else {
                report
                    .rejected
                    .push((entry.keyid.clone(), "signature does not verify"));
            }
        }
        if report.valid.len() < self.threshold as usize {
            return Err(Error::Signature(format!(
                "threshold not met: {} valid signature(s) of the {} required ({})",
                report.valid.len(),
                self.threshold,
                report.describe()
            )));
        }
        Ok(report)
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
