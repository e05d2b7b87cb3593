//! Outpost's trust layer: content digests, keys and signatures, signed
//! bundles, trust roots with thresholds, rotation and revocation.
//!
//! ```
//! use outpost_signing::Digest;
//!
//! let digest = Digest::of(b"hello");
//! assert_eq!(digest.to_string(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
//! assert_eq!(digest.to_string().parse::<Digest>().unwrap(), digest);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod archive;
pub mod bundle;
mod digest;
pub mod dsse;
pub mod durable;
mod error;
pub mod evidence;
pub mod keys;
pub mod manifest;
pub mod provenance;
pub mod root;
pub mod time;

pub use digest::{Digest, ParseDigestError};
pub use error::{Error, EvidenceCheck, RejectReason, Result};
pub use keys::{KeyId, PublicKey, SecretKey};
