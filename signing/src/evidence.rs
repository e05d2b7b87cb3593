//! Device evidence: a device signs, with its own key and a verifier's
//! nonce, what it is running (host binary, bundle, every stage and model by
//! digest), so a fleet operator can check a device rather than trust its
//! word.

use crate::dsse::Envelope;
use crate::keys::{PublicKey, SecretKey};
use crate::manifest::{BlobKind, Manifest};
use crate::time::Timestamp;
use crate::{Digest, Error, EvidenceCheck, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// DSSE payload type of device evidence.
pub const EVIDENCE_PAYLOAD_TYPE: &str = "application/vnd.outpost.evidence.v1+json";

/// What a device says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The host's version.
    pub host_version: String,
    /// The sha256 of the running host binary.
    pub host_binary: String,
    /// The device's public key, `ed25519:<hex>`.
    pub device_key: String,
    /// Its key id.
    pub device_key_id: String,
    /// The bundle it runs, if any.
    pub bundle: Option<RunningBundle>,
    /// The verifier's nonce, echoed.
    pub nonce: String,
    /// When the evidence was made (RFC 3339).
    pub timestamp: String,
}

/// The bundle a device runs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunningBundle {
    /// Bundle name.
    pub name: String,
    /// Bundle version.
    pub version: u64,
    /// The sha256 of its manifest.
    pub manifest: String,
    /// Stage name → component digest.
    pub stages: BTreeMap<String, String>,
    /// Stage name → digest of the publisher's precompiled artifact it runs,
    /// for stages that run one instead of code compiled on the device.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub precompiled: BTreeMap<String, String>,
    /// Model name → model digest.
    pub models: BTreeMap<String, String>,
}

impl Evidence {
    /// Signs the evidence with the device key.
    pub fn sign(&self, key: &SecretKey) -> Result<Envelope> {
        let json =
            serde_json::to_vec(self).map_err(|e| Error::malformed("evidence", e.to_string()))?;
        let mut envelope = Envelope::new(EVIDENCE_PAYLOAD_TYPE, &json);
        envelope.sign(key, "evidence")?;
        Ok(envelope)
    }
}

/// What the verifier expects.
pub struct Expectation<'a> {
    /// The device's public key.
    pub device: &'a PublicKey,
    /// The nonce the verifier sent.
    pub nonce: &'a str,
    /// The bundle the device should run, with its manifest digest.
    pub bundle: Option<(&'a Manifest, Digest)>,
    /// The oldest acceptable evidence, in seconds before `now`.
    pub max_age_s: i64,
    /// The verifier's clock.
    pub now: Timestamp,
}

/// Checks signed evidence: the device key's signature, the nonce, its age,
/// and (when a bundle is expected) the bundle's name, version, manifest and
/// that the device runs exactly the bundle's components and models.
pub fn verify(envelope_bytes: &[u8], expected: &Expectation<'_>) -> Result<Evidence> {
    let what = "evidence";
    let envelope = Envelope::parse(envelope_bytes, what, EVIDENCE_PAYLOAD_TYPE)?;
    let message = envelope.signed_message(what)?;
    let id = expected.device.id();
    if !envelope
        .signatures
        .iter()
        .any(|s| s.keyid == id && s.verifies(expected.device, &message))
    {
        return Err(Error::EvidenceNotSigned { key: id });
    }
    let evidence: Evidence = serde_json::from_slice(&envelope.payload_bytes(what)?)
        .map_err(|e| Error::malformed(what, e.to_string()))?;
    let mismatch = |check: EvidenceCheck, message: String| {
        Err(Error::EvidenceMismatch {
            device: id.clone(),
            message,
            check,
        })
    };
    if evidence.device_key != expected.device.to_string() || evidence.device_key_id != id.as_str() {
        return mismatch(
            EvidenceCheck::DeviceKey,
            format!(
                "names device key {}, not the one it is signed with",
                evidence.device_key
            ),
        );
    }
    if evidence.nonce != expected.nonce {
        return mismatch(
            EvidenceCheck::Nonce,
            format!(
                "nonce '{}' is not the '{}' sent (stale or replayed)",
                evidence.nonce, expected.nonce
            ),
        );
    }
    let made: Timestamp = evidence.timestamp.parse()?;
    if expected.now.0 - made.0 > expected.max_age_s || made.0 - expected.now.0 > 300 {
        return mismatch(
            EvidenceCheck::Age,
            format!(
                "made at {made}, the verifier's clock says {}; allowed age {} s",
                expected.now, expected.max_age_s
            ),
        );
    }
    if let Some((manifest, digest)) = &expected.bundle {
        let Some(running) = &evidence.bundle else {
            return mismatch(
                EvidenceCheck::Bundle,
                format!(
                    "runs no bundle; expected '{}' version {}",
                    manifest.bundle.name, manifest.bundle.version
                ),
            );
        };
        if running.name != manifest.bundle.name || running.version != manifest.bundle.version {
            return mismatch(
                EvidenceCheck::Bundle,
                format!(
                    "runs '{}' version {}; expected '{}' version {}",
                    running.name, running.version, manifest.bundle.name, manifest.bundle.version
                ),
            );
        }
        if running.manifest != digest.to_string() {
            return mismatch(
                EvidenceCheck::Bundle,
                format!("runs manifest {}; expected {digest}", running.manifest),
            );
        }
        for (kind, label, map) in [
            (BlobKind::Component, "stage", &running.stages),
            (BlobKind::Model, "model", &running.models),
        ] {
            for (name, d) in map.iter() {
                if manifest.blobs.get(d).is_none_or(|b| b.kind != kind) {
                    return mismatch(
                        EvidenceCheck::Bundle,
                        format!(
                            "{label} '{name}' runs {d}, which is not a {label} of the expected bundle"
                        ),
                    );
                }
            }
            // And nothing of the bundle is missing from what runs.
            for (d, blob) in manifest.blobs.iter().filter(|(_, b)| b.kind == kind) {
                if !map.values().any(|v| v == d) {
                    return mismatch(
                        EvidenceCheck::Bundle,
                        format!(
                            "the bundle's {label} {d} ({}) is not among what the device runs",
                            blob.name
                        ),
                    );
                }
            }
        }
    }
    Ok(evidence)
}
