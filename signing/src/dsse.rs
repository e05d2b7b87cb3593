//! DSSE envelopes (Dead Simple Signing Envelope, as used by in-toto and
//! Sigstore): a typed payload and signatures over its pre-authentication
//! encoding, so a signature for one payload type can never be replayed as
//! another.

use crate::keys::{PublicKey, SecretKey};
use crate::{Error, KeyId, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

/// One signature with the id of the key that made it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// The signing key's id.
    pub keyid: KeyId,
    /// The ed25519 signature, base64.
    pub sig: String,
}

impl SignatureEntry {
    /// Signs `message` with `key`.
    pub fn sign(key: &SecretKey, message: &[u8]) -> Self {
        Self {
            keyid: key.public().id(),
            sig: BASE64.encode(key.sign(message)),
        }
    }

    /// Whether this is `key`'s valid signature of `message`.
    pub fn verifies(&self, key: &PublicKey, message: &[u8]) -> bool {
        BASE64
            .decode(&self.sig)
            .is_ok_and(|sig| key.verify(message, &sig))
    }
}

/// A DSSE envelope.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Envelope {
    /// What the payload is, e.g. `application/vnd.in-toto+json`.
    pub payload_type: String,
    /// The payload, base64.
    pub payload: String,
    /// Signatures over `pae(payload_type, payload)`.
    pub signatures: Vec<SignatureEntry>,
}

/// DSSE's pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Envelopes larger than this are refused before parsing.
pub const MAX_ENVELOPE_BYTES: usize = 4 << 20;

impl Envelope {
    /// An unsigned envelope around `payload`.
    pub fn new(payload_type: &str, payload: &[u8]) -> Self {
        Self {
            payload_type: payload_type.to_owned(),
            payload: BASE64.encode(payload),
            signatures: Vec::new(),
        }
    }

    /// Parses JSON, refusing more than [`MAX_ENVELOPE_BYTES`] and any payload
    /// type other than `expected_type`.
    pub fn parse(bytes: &[u8], what: &str, expected_type: &str) -> Result<Self> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(Error::TooLarge {
                what: what.into(),
                size: bytes.len() as u64,
                limit: MAX_ENVELOPE_BYTES as u64,
            });
        }
        let envelope: Self = serde_json::from_slice(bytes)
            .map_err(|e| Error::malformed(what, format!("not a DSSE envelope: {e}")))?;
        if envelope.payload_type != expected_type {
            return Err(Error::malformed(
                what,
                format!(
                    "payload type is '{}', expected '{expected_type}'",
                    envelope.payload_type
                ),
            ));
        }
        Ok(envelope)
    }

    /// The decoded payload.
    pub fn payload_bytes(&self, what: &str) -> Result<Vec<u8>> {
        BASE64
            .decode(&self.payload)
            .map_err(|e| Error::malformed(what, format!("payload is not base64: {e}")))
    }

    /// Adds `key`'s signature, replacing an earlier one by the same key.
    pub fn sign(&mut self, key: &SecretKey, what: &str) -> Result<()> {
        let message = pae(&self.payload_type, &self.payload_bytes(what)?);
        let entry = SignatureEntry::sign(key, &message);
        self.signatures.retain(|s| s.keyid != entry.keyid);
        self.signatures.push(entry);
        Ok(())
    }

    /// The bytes the signatures cover.
    pub fn signed_message(&self, what: &str) -> Result<Vec<u8>> {
        Ok(pae(&self.payload_type, &self.payload_bytes(what)?))
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
