//! Everything that can fail in the trust layer.

use std::path::PathBuf;

/// A failed check or a malformed input. Messages name the file, key id,
/// blob or field at fault and what was expected.
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
    /// A signature did not verify, or too few valid ones were found.
    #[error("{0}")]
    Signature(String),
    /// The trust root refuses: expired, revoked key, bad rotation.
    #[error("{0}")]
    Trust(String),
    /// An older version than one already accepted, or a different bundle with
    /// the same version.
    #[error("{0}")]
    Rollback(String),
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
}
