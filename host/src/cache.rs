//! Precompiled components, cached per engine configuration and target.
//!
//! An artifact is stored under the digest of the component it was compiled
//! from, with its own digest in front of it. It is looked up only by a
//! component digest that has already been verified (from a signed bundle's
//! manifest, or computed from the bytes just read), and deserialized only
//! when its own digest still matches: a truncated or altered artifact is
//! recompiled, never loaded.

use outpost_signing::Digest;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of precompiled components for one engine.
pub struct ComponentCache {
    dir: PathBuf,
}

/// Whether a component came from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Deserialized from a cached artifact.
    Hit,
    /// Compiled (and, where possible, stored).
    Compiled,
}

const MAGIC: &[u8; 8] = b"OPCWASM1";

impl ComponentCache {
    /// A cache under `root`, in a subdirectory for this engine's target and
    /// compilation settings, so artifacts for another target or another
    /// configuration are never picked up.
    pub fn new(root: &Path, engine: &Engine) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = root.join(format!(
            "{}-{}-{:016x}",
            std::env::consts::ARCH,
            std::env::consts::OS,
            hasher.finish()
        ));
        Self { dir }
    }

    /// The directory artifacts go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, component: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", component.hex()))
    }

    /// The component whose source bytes are `bytes` with digest `digest`
    /// (already verified by the caller): from the cache if a sound artifact is
    /// there, else compiled and stored.
    pub fn load(
        &self,
        engine: &Engine,
        digest: &Digest,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        if let Some(component) = self.cached(engine, digest) {
            return Ok((component, CacheOutcome::Hit));
        }
        let component = Component::new(engine, bytes)?;
        // A cache that cannot be written only costs the next start a compile.
        let _ = self.store(digest, &component);
        Ok((component, CacheOutcome::Compiled))
    }

    fn cached(&self, engine: &Engine, digest: &Digest) -> Option<Component> {
        let file = std::fs::read(self.path(digest)).ok()?;
        let (header, artifact) = file.split_at_checked(MAGIC.len() + 32)?;
        let (magic, recorded) = header.split_at(MAGIC.len());
        if magic != MAGIC || recorded != Digest::of(artifact).as_bytes() {
            return None;
        }
        // SAFETY: wasmtime requires that deserialized bytes were produced by
        // `Component::serialize` of a compatible engine. These were: the
        // directory is specific to this engine's compatibility hash, the file
        // is keyed by the verified digest of its source component, and its
        // content still hashes to the digest recorded when it was written.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, artifact) };
        component.ok()
    }

    fn store(&self, digest: &Digest, component: &Component) -> std::io::Result<()> {
        let artifact = component.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&self.dir)?;
        let mut file = Vec::with_capacity(MAGIC.len() + 32 + artifact.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(Digest::of(&artifact).as_bytes());
        file.extend_from_slice(&artifact);
        let path = self.path(digest);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, file)?;
        std::fs::rename(&tmp, &path)
    }
}
