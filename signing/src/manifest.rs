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
    /// For a [`BlobKind::Precompiled`] blob: what it was compiled from and
    /// for; absent on every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precompiled: Option<Precompiled>,
}

/// What a precompiled artifact is: native code for one target and engine
/// configuration, compiled by the publisher from a component of the same
/// bundle. A device loads it instead of compiling that component only where
/// its policy allows native code from publishers, its target and engine
/// match exactly, and the artifact's digest matched the signed one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Precompiled {
    /// The digest (`sha256:<hex>`) of the component blob it was compiled from.
    pub component: String,
    /// The target triple it runs on, e.g. `aarch64-unknown-linux-gnu`.
    pub target: String,
    /// The engine configuration it was compiled for (the host's
    /// `engine fingerprint`): the runtime's version and every setting that
    /// changes generated code.
    pub engine: String,
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
    /// Native code compiled from one of the components (see [`Precompiled`]).
    Precompiled,
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
        let mut labels = std::collections::BTreeSet::new();
        for (digest, blob) in &self.blobs {
            self.validate_precompiled(digest, blob)?;
            if let Some(p) = &blob.precompiled
                && !labels.insert((&p.component, &p.target, &p.engine))
            {
                return Err(Error::malformed(
                    WHAT,
                    format!(
                        "blob {digest}: a second precompiled artifact of {} for {} ({}); a bundle carries at most one per component, target and engine",
                        p.component, p.target, p.engine
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

    /// A precompiled blob names a component blob of this manifest, a
    /// plausible target and an engine; no other blob carries those fields.
    fn validate_precompiled(&self, digest: &str, blob: &BlobEntry) -> Result<()> {
        const WHAT: &str = "manifest.toml";
        let bad =
            |message: String| Err(Error::malformed(WHAT, format!("blob {digest}: {message}")));
        match (blob.kind, &blob.precompiled) {
            (BlobKind::Precompiled, None) => bad(
                "a precompiled blob needs a [precompiled] table (component, target, engine)".into(),
            ),
            (BlobKind::Precompiled, Some(p)) => {
                if !self
                    .blobs
                    .get(&p.component)
                    .is_some_and(|c| c.kind == BlobKind::Component)
                {
                    return bad(format!(
                        "precompiled.component = '{}' is not a component blob of this bundle",
                        p.component
                    ));
                }
                let plausible = |s: &str, extra: &[u8]| {
                    !s.is_empty()
                        && s.len() <= 128
                        && s.bytes().all(|c| {
                            c.is_ascii_alphanumeric() || b"._-".contains(&c) || extra.contains(&c)
                        })
                };
                if !plausible(&p.target, b"") {
                    return bad(format!(
                        "precompiled.target = '{}' is not a target triple",
                        p.target.escape_debug()
                    ));
                }
                if !plausible(&p.engine, b" ,;=+") {
                    return bad(format!(
                        "precompiled.engine = '{}' is not an engine fingerprint",
                        p.engine.escape_debug()
                    ));
                }
                Ok(())
            }
            (_, Some(_)) => bad(format!(
                "only precompiled blobs carry a [precompiled] table, not {:?} blobs",
                blob.kind
            )),
            (_, None) => Ok(()),
        }
    }

    /// The manifest as TOML text (what gets signed).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::malformed("manifest.toml", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPONENT: &str =
        "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const PIPELINE: &str =
        "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const ARTIFACT: &str =
        "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn entry(kind: BlobKind, precompiled: Option<Precompiled>) -> BlobEntry {
        BlobEntry {
            size: 1,
            kind,
            name: "x".into(),
            precompiled,
        }
    }

    fn artifact(component: &str, target: &str, engine: &str) -> Option<Precompiled> {
        Some(Precompiled {
            component: component.into(),
            target: target.into(),
            engine: engine.into(),
        })
    }

    fn manifest(artifact_entry: BlobEntry) -> Manifest {
        Manifest {
            bundle: BundleInfo {
                name: "b".into(),
                version: 1,
                pipeline: PIPELINE.into(),
            },
            blobs: BTreeMap::from([
                (PIPELINE.into(), entry(BlobKind::Pipeline, None)),
                (COMPONENT.into(), entry(BlobKind::Component, None)),
                (ARTIFACT.into(), artifact_entry),
            ]),
            grants: BTreeMap::new(),
        }
    }

    #[test]
    fn two_artifacts_for_the_same_component_target_and_engine_are_refused() {
        let label = || {
            artifact(
                COMPONENT,
                "x86_64-unknown-linux-gnu",
                "wasmtime-48.0.8 explicit epochs",
            )
        };
        let mut m = manifest(entry(BlobKind::Precompiled, label()));
        m.validate().unwrap();
        let second = ARTIFACT.replace('3', "5");
        m.blobs
            .insert(second, entry(BlobKind::Precompiled, label()));
        let e = refused(m.clone());
        assert!(e.contains("a second precompiled artifact"), "{e}");
        // Another engine for the same component and target is fine.
        let first = m
            .blobs
            .get_mut(ARTIFACT)
            .and_then(|b| b.precompiled.as_mut());
        first.unwrap().engine = "wasmtime-48.0.8 guard-pages epochs".into();
        m.validate().unwrap();
    }

    fn refused(m: Manifest) -> String {
        m.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_precompiled_blob_round_trips_through_the_signed_text() {
        let m = manifest(entry(
            BlobKind::Precompiled,
            artifact(
                COMPONENT,
                "aarch64-unknown-linux-gnu",
                "wasmtime-48.0.8 guard-pages epochs",
            ),
        ));
        m.validate().unwrap();
        let text = m.to_toml().unwrap();
        assert!(text.contains("kind = \"precompiled\""), "{text}");
        assert_eq!(Manifest::parse(text.as_bytes()).unwrap(), m);
    }

    #[test]
    fn precompiled_blobs_must_say_exactly_what_they_were_compiled_from_and_for() {
        let engine = "wasmtime-48.0.8 explicit epochs";
        let target = "x86_64-unknown-linux-gnu";
        let e = refused(manifest(entry(BlobKind::Precompiled, None)));
        assert!(
            e.contains(ARTIFACT) && e.contains("needs a [precompiled] table"),
            "{e}"
        );
        // Compiled from something that is not a component of the bundle:
        // the pipeline, or a digest the bundle does not hold.
        for from in [PIPELINE, ARTIFACT, &ARTIFACT.replace('3', "4")] {
            let e = refused(manifest(entry(
                BlobKind::Precompiled,
                artifact(from, target, engine),
            )));
            assert!(e.contains("is not a component blob"), "{e}");
        }
        for bad in ["", "x86_64/../../etc", "x86 64", &"a".repeat(200)] {
            let e = refused(manifest(entry(
                BlobKind::Precompiled,
                artifact(COMPONENT, bad, engine),
            )));
            assert!(e.contains("is not a target triple"), "{e}");
        }
        let e = refused(manifest(entry(
            BlobKind::Precompiled,
            artifact(COMPONENT, target, "\u{1b}[2Jwasmtime"),
        )));
        assert!(
            e.contains("is not an engine fingerprint") && !e.contains('\u{1b}'),
            "{e}"
        );
        // The table belongs to precompiled blobs only: a component that
        // claims to be precompiled is refused, not half-trusted.
        let e = refused(manifest(entry(
            BlobKind::Component,
            artifact(COMPONENT, target, engine),
        )));
        assert!(e.contains("only precompiled blobs carry"), "{e}");
    }
}
