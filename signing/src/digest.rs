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
        // Work on bytes: the text is untrusted and may hold multibyte characters,
        // so slicing the str at fixed offsets could split one.
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let hi = hex_value(pair[0]);
            let lo = hex_value(pair[1]);
            match (hi, lo) {
                (Some(hi), Some(lo)) => *byte = (hi << 4) | lo,
                _ => return Err(fail("it has a character that is not a lowercase hex digit")),
            }
        }
        Ok(Self(out))
    }
}

/// The value of one lowercase hex digit.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
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
            // 64 bytes, but a two-byte character straddles a digit pair (found by
            // the archive fuzzer): must be an error, not a panic.
            &format!("sha256:{}\u{2d1}{}", "0".repeat(29), "0".repeat(33)),
        ] {
            let error = bad.parse::<Digest>().unwrap_err().to_string();
            assert!(error.contains("is not a digest"), "{error}");
        }
    }
}
