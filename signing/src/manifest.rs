//! The bundle manifest: what a bundle holds, by digest, and what each stage
//! is granted. Signatures cover its exact bytes.

use crate::{Digest, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Manifests larger than this are refused before parsing.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// The largest blob a manifest may declare.
pub const MAX_BLOB_BYTES: u64 = 4 << 30;
/// The most blobs a manifest may declare.
pub const MAX_BLOBS: usize = 4096;

/// A parsed, checked manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Name, version and the pipeline it runs.
    pub bundle: BundleInfo,
    /// Every blob, keyed by `sha256:<hex>`.
    pub blobs: BTreeMap<String, BlobEntry>,
    /// Per stage, what it may use.
    #[serde(default)]
    pub grants: BTreeMap<String, Grants>,
}

/// The `[bundle]` table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BundleInfo {
    /// `[a-z0-9._-]`, 1 to 64 characters.
    pub name: String,
    /// Monotonically increasing: a device refuses a version lower than one it
    /// has accepted.
    pub version: u64,
    /// The digest of the pipeline file among the blobs.
    pub pipeline: String,
}

/// One blob.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BlobEntry {
    /// Its size in bytes.
    pub size: u64,
    /// What it is.
    pub kind: BlobKind,
    /// Its file name before bundling, for people.
    pub name: String,
}

/// What a blob is.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BlobKind {
    /// The pipeline file.
    Pipeline,
    /// A stage component.
    Component,
    /// A model.
    Model,
    /// A file handed to a stage.
    File,
}

/// What one stage may use. The pipeline inside the bundle must grant
/// exactly this.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Models it may load by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Environment variables: `NAME` (the device's value) or `NAME=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Device directories it may open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirGrant>,
    /// `ip:port` addresses it may connect to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<String>,
    /// Whether it reads real clocks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clocks: bool,
}

/// A granted directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the device.
    pub host: String,
    /// Where the stage sees it.
    pub guest: String,
    /// Whether it may write.
    #[serde(default)]
    pub writable: bool,
}

impl Grants {
    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self == &Grants::default()
    }
}

impl Manifest {
    /// Parses and checks manifest bytes: size, UTF-8, schema, names,
    /// digests, sizes, and that the pipeline is one of the blobs.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        const WHAT: &str = "manifest.toml";
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::TooLarge {
                what: WHAT.into(),
                size: bytes.len() as u64,
                limit: MAX_MANIFEST_BYTES as u64,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| Error::malformed(WHAT, "not UTF-8"))?;
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| Error::malformed(WHAT, e.to_string().trim_end()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The checks [`Manifest::parse`] applies after the schema.
    pub fn validate(&self) -> Result<()> {
        const WHAT: &str = "manifest.toml";
        let name = &self.bundle.name;
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
            || name.starts_with('.')
        {
            return Err(Error::malformed(
                WHAT,
                format!("bundle name '{name}' must be 1-64 of a-z 0-9 . _ - and not start with ."),
            ));
        }
        if self.blobs.len() > MAX_BLOBS {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "{} blobs; at most {MAX_BLOBS} are allowed",
                    self.blobs.len()
                ),
            ));
        }
        for (digest, blob) in &self.blobs {
            digest
                .parse::<Digest>()
                .map_err(|e| Error::malformed(WHAT, e.to_string()))?;
            if blob.size > MAX_BLOB_BYTES {
                return Err(Error::malformed(
                    WHAT,
                    format!(
                        "blob {digest} declares {} bytes; at most {MAX_BLOB_BYTES}",
                        blob.size
                    ),
                ));
            }
        }
        match self.blobs.get(&self.bundle.pipeline) {
            Some(blob) if blob.kind == BlobKind::Pipeline => Ok(()),
            _ => Err(Error::malformed(
                WHAT,
                format!(
                    "bundle.pipeline = '{}' is not a blob of kind pipeline",
                    self.bundle.pipeline
                ),
            )),
        }
    }

    /// The manifest as TOML text (what gets signed).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::malformed("manifest.toml", e.to_string()))
    }
}
