//! ed25519 keys: generation, key ids, and the files they live in.

use crate::{Digest, Error, Result};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// A short, stable name for a public key: the first 16 hex digits of the
/// sha256 of its 32 bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A public key, written `ed25519:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Its key id.
    pub fn id(&self) -> KeyId {
        KeyId(Digest::of(self.0.as_bytes()).hex()[..16].to_owned())
    }

    /// Checks `signature` over `message` (strict verification: no malleable
    /// or small-order encodings).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        self.0.verify_strict(message, &signature).is_ok()
    }

    /// Parses `ed25519:<hex>`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::malformed(
                "public key",
                format!("'{}': {why}; expected ed25519:<64 hex digits>", text.trim()),
            )
        };
        let hex = text
            .trim()
            .strip_prefix("ed25519:")
            .ok_or_else(|| bad("no ed25519: prefix"))?;
        let bytes: [u8; 32] = decode_hex(hex)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("not 32 bytes of hex"))?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| bad("not a valid ed25519 point"))
    }

    /// Reads a public key file (as written by [`SecretKey::save`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_small(path, 4096)?;
        Self::parse(&text).map_err(|e| Error::malformed(path.display().to_string(), e.to_string()))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", encode_hex(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self, self.id())
    }
}

/// A private signing key.
pub struct SecretKey(SigningKey);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyFile {
    kind: String,
    public: String,
    secret: String,
}

const SECRET_KIND: &str = "outpost-ed25519-secret-key";

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| {
            Error::malformed("random source", format!("cannot read random bytes: {e}"))
        })?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// Writes the key to `path` (created with mode 0600, refusing to
    /// overwrite) and its public key to `path.pub`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let file = SecretKeyFile {
            kind: SECRET_KIND.into(),
            public: self.public().to_string(),
            secret: encode_hex(&self.0.to_bytes()),
        };
        let text = serde_json::to_string_pretty(&file)
            .map_err(|e| Error::malformed("secret key", e.to_string()))?;
        write_private(path, text.as_bytes())?;
        let public_path = public_path(path);
        crate::durable::write_atomic(
            &public_path,
            format!("{}\n", self.public()).as_bytes(),
            0o644,
        )
    }

    /// Reads a key written by [`SecretKey::save`]. Refuses a file that
    /// others can read.
    pub fn load(path: &Path) -> Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| Error::io(path, e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(Error::malformed(
                    path.display().to_string(),
                    format!(
                        "secret key file has mode {:o}; others can read it. Run: chmod 600 {}",
                        mode & 0o777,
                        path.display()
                    ),
                ));
            }
        }
        let what = || path.display().to_string();
        let text = read_small(path, 4096)?;
        let file: SecretKeyFile = serde_json::from_str(&text)
            .map_err(|e| Error::malformed(what(), format!("not an Outpost secret key: {e}")))?;
        if file.kind != SECRET_KIND {
            return Err(Error::malformed(
                what(),
                format!("kind is '{}', expected '{SECRET_KIND}'", file.kind),
            ));
        }
        let seed: [u8; 32] = decode_hex(&file.secret)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::malformed(what(), "secret is not 32 bytes of hex"))?;
        let key = Self(SigningKey::from_bytes(&seed));
        if key.public().to_string() != file.public {
            return Err(Error::malformed(
                what(),
                "the public key recorded in the file does not belong to its secret",
            ));
        }
        Ok(key)
    }
}

/// `key` → `key.pub`.
pub fn public_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// Creates `path` with mode 0600, atomically and durably; fails if it
/// exists (see [`crate::durable::write_new`]).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    crate::durable::write_new(path, contents, 0o600)
}

/// Reads a file of at most `limit` bytes as UTF-8.
pub(crate) fn read_small(path: &Path, limit: u64) -> Result<String> {
    let bytes = read_bounded(path, limit)?;
    String::from_utf8(bytes)
        .map_err(|_| Error::malformed(path.display().to_string(), "not UTF-8 text"))
}

/// Reads a file of at most `limit` bytes, checking the size before reading.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if size > limit {
        return Err(Error::TooLarge {
            what: path.display().to_string(),
            size,
            limit,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::TooLarge {
            what: path.display().to_string(),
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

/// Lowercase hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes lowercase or uppercase hex.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    // Every character a hex digit: `from_str_radix` alone would accept a sign.
    if !text.len().is_multiple_of(2) || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_hex_takes_only_hex_digits() {
        assert_eq!(decode_hex("00ffA0"), Some(vec![0, 255, 160]));
        // A sign is accepted by `u8::from_str_radix`; here it must not be.
        for bad in ["+f", "-1", "0", "zz", "é0", " 0"] {
            assert_eq!(decode_hex(bad), None, "{bad:?}");
        }
    }
}
