//! sha256 content digests.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// The sha256 of some content: how Outpost names models, components and blobs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{input}' is not a digest: {reason}; expected sha256: followed by 64 lowercase hex digits"
)]
pub struct ParseDigestError {
    /// The text that was given (cut to 80 characters).
    pub input: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParseDigestError {
            input: s.chars().take(80).collect(),
            reason,
        };
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| fail("it does not start with sha256:"))?;
        if hex.len() != 64 {
            return Err(fail("it does not have 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            let pair = &hex[2 * i..2 * i + 2];
            if !pair
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                return Err(fail("it has a character that is not a lowercase hex digit"));
            }
            *byte = u8::from_str_radix(pair, 16).map_err(|_| fail("it is not hex"))?;
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refuses_what_is_not_a_digest() {
        let good = Digest::of(b"x").to_string();
        assert!(good.parse::<Digest>().is_ok());
        for bad in [
            &good[7..],
            "sha256:abc",
            &good.to_uppercase().replace("SHA256", "sha256"),
            "sha512:00",
        ] {
            let error = bad.parse::<Digest>().unwrap_err().to_string();
            assert!(error.contains("is not a digest"), "{error}");
        }
    }
}
