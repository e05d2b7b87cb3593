//! Precompiled components, cached per engine configuration and target.
//!
//! A cached artifact is native code: deserializing one that an attacker
//! wrote runs their code in the host, outside every sandbox. So an artifact
//! is stored under the digest of the component it was compiled from, behind
//! an HMAC-SHA256 keyed by a secret of this device's ([`CacheKey`], a 0600
//! file beside the device key) over the engine's compatibility hash, that
//! digest and the artifact. It is looked up only by a component digest that
//! has already been verified (from a signed bundle's manifest, or computed
//! from the bytes just read), and deserialized only when the MAC matches:
//! a truncated, altered, swapped or planted artifact is recompiled, never
//! loaded. Someone who can write the cache but not read the key cannot make
//! an artifact the host will load.

// A host without a compiler has nothing to cache: only `load` is gated, the
// rest stays compiled (and unused) so both builds check the same format.
#![cfg_attr(not(feature = "cranelift"), allow(dead_code))]

use hmac::{Hmac, Mac};
use outpost_signing::Digest;
use sha2::Sha256;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of precompiled components for one engine.
pub struct ComponentCache {
    dir: PathBuf,
    key: CacheKey,
    engine_hash: u64,
}

/// Whether a component came from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Deserialized from a cached artifact.
    Hit,
    /// Compiled (and, where possible, stored).
    Compiled,
}

/// Version 2 of the artifact format: a MAC, not a plain digest.
const MAGIC: &[u8; 8] = b"OPCWASM2";
const MAC_LEN: usize = 32;

/// The device's secret for authenticating cached artifacts.
#[derive(Clone)]
pub struct CacheKey([u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheKey(..)")
    }
}

/// Why the cache key could not be read or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheKeyError {
    /// The key file could not be read or written.
    #[error("component cache key {}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error(
        "component cache key {}: not 64 hex digits; delete it (and the cache beside it) to make a new one",
        path.display()
    )]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// No random bytes to make a key from.
    #[error("cannot make a component cache key: no random bytes: {0}")]
    Random(String),
}

impl CacheKey {
    /// Reads the key at `path`, or makes one there (mode 0600) if there is
    /// none.
    pub fn load_or_create(path: &Path) -> Result<Self, CacheKeyError> {
        let io = |source| CacheKeyError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = outpost_signing::keys::decode_hex(text.trim())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| CacheKeyError::Malformed {
                        path: path.to_owned(),
                    })?;
                Ok(Self(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| CacheKeyError::Random(e.to_string()))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let text = format!("{}\n", outpost_signing::keys::encode_hex(&key));
                match outpost_signing::keys::write_private(path, text.as_bytes()) {
                    Ok(()) => Ok(Self(key)),
                    // Another process made it first: use theirs.
                    Err(_) if path.exists() => Self::load_or_create(path),
                    Err(e) => Err(io(std::io::Error::other(e.to_string()))),
                }
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// A hash of everything that makes an artifact usable by `engine`.
#[cfg(feature = "cranelift")]
fn engine_hash(engine: &Engine) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.finish()
}

/// Without a compiler nothing is compiled, so nothing is cached.
#[cfg(not(feature = "cranelift"))]
fn engine_hash(_engine: &Engine) -> u64 {
    0
}

impl ComponentCache {
    /// A cache under `root`, in a subdirectory for this engine's target and
    /// compilation settings, so artifacts for another target or another
    /// configuration are never picked up; artifacts are authenticated with
    /// `key`.
    pub fn new(root: &Path, engine: &Engine, key: CacheKey) -> Self {
        let engine_hash = engine_hash(engine);
        let dir = root.join(format!(
            "{}-{}-{engine_hash:016x}",
            std::env::consts::ARCH,
            std::env::consts::OS,
        ));
        Self {
            dir,
            key,
            engine_hash,
        }
    }

    /// The directory artifacts go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, component: &Digest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", component.hex()))
    }

    /// The MAC of `artifact`, compiled from the component `digest` by this
    /// engine.
    fn mac(&self, digest: &Digest) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(MAGIC);
        mac.update(&self.engine_hash.to_le_bytes());
        mac.update(digest.as_bytes());
        mac
    }

    /// The component whose source bytes are `bytes` with digest `digest`
    /// (already verified by the caller): from the cache if an authentic
    /// artifact is there, else compiled and stored.
    #[cfg(feature = "cranelift")]
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
        let (header, artifact) = file.split_at_checked(MAGIC.len() + MAC_LEN)?;
        let (magic, tag) = header.split_at(MAGIC.len());
        if magic != MAGIC {
            return None;
        }
        let mut mac = self.mac(digest);
        mac.update(artifact);
        mac.verify_slice(tag).ok()?;
        // SAFETY: wasmtime requires that deserialized bytes were produced by
        // `Component::serialize` of a compatible engine. These were: the MAC,
        // keyed by a secret only this device holds, covers this engine's
        // compatibility hash, the verified digest of the source component and
        // every byte of the artifact, so the artifact is one this host wrote.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, artifact) };
        component.ok()
    }

    fn store(&self, digest: &Digest, component: &Component) -> std::io::Result<()> {
        let artifact = component.serialize().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(&self.dir)?;
        let mut mac = self.mac(digest);
        mac.update(&artifact);
        let mut file = Vec::with_capacity(MAGIC.len() + MAC_LEN + artifact.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&mac.finalize().into_bytes());
        file.extend_from_slice(&artifact);
        let path = self.path(digest);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, file)?;
        std::fs::rename(&tmp, &path)
    }
}
