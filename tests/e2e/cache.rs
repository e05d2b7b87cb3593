//! The compiled-component cache holds native code; only artifacts this
//! device wrote, under its own secret key, are ever loaded (issue 9: the
//! cache used to trust an unkeyed digest stored beside the artifact, which
//! anyone who can write the directory can recompute).

use outpost_e2e::{Scratch, plugin};
use outpost_host::cache::{CacheKey, CacheOutcome, ComponentCache};
use outpost_signing::Digest;
use std::path::{Path, PathBuf};

fn artifact(cache: &ComponentCache, digest: &Digest) -> PathBuf {
    cache.dir().join(format!("{}.cwasm", digest.hex()))
}

fn component(name: &str) -> (Vec<u8>, Digest) {
    let bytes = std::fs::read(plugin(name)).unwrap();
    let digest = Digest::of(&bytes);
    (bytes, digest)
}

fn cache_at(dir: &Path, key_file: &Path, engine: &wasmtime::Engine) -> ComponentCache {
    ComponentCache::new(dir, engine, CacheKey::load_or_create(key_file).unwrap())
}

#[test]
fn only_artifacts_made_under_this_devices_key_are_loaded() {
    let scratch = Scratch::new();
    let host = outpost_host::Host::new(&outpost_host::EngineOptions::default()).unwrap();
    let engine = host.runtime().engine();
    let key_file = scratch.path().join("cache.key");
    let cache = cache_at(&scratch.path().join("cache"), &key_file, engine);
    let load = |cache: &ComponentCache, (bytes, digest): &(Vec<u8>, Digest)| {
        cache.load(engine, digest, bytes).unwrap().1
    };
    let pool = component("mean_pool");
    let echo = component("echo");
    assert_eq!(load(&cache, &pool), CacheOutcome::Compiled);
    assert_eq!(load(&cache, &echo), CacheOutcome::Compiled);
    assert_eq!(load(&cache, &pool), CacheOutcome::Hit);

    // The key is the device's secret: mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // One component's artifact, MAC and all, planted under another's name.
    let pool_file = artifact(&cache, &pool.1);
    let echo_file = artifact(&cache, &echo.1);
    std::fs::copy(&echo_file, &pool_file).unwrap();
    assert_eq!(load(&cache, &pool), CacheOutcome::Compiled);

    // An artifact rewritten in the old, unkeyed format: magic, the sha256
    // of the artifact, the artifact. Anyone can compute that.
    let written = std::fs::read(&echo_file).unwrap();
    let native = &written[40..];
    let mut forged = b"OPCWASM1".to_vec();
    forged.extend_from_slice(Digest::of(native).as_bytes());
    forged.extend_from_slice(native);
    std::fs::write(&echo_file, &forged).unwrap();
    assert_eq!(load(&cache, &echo), CacheOutcome::Compiled);

    // The same layout with a MAC made under another key: a cache copied from
    // another device, or written by someone who guessed the format.
    let elsewhere = cache_at(
        &scratch.path().join("other-cache"),
        &scratch.path().join("other.key"),
        engine,
    );
    assert_eq!(load(&elsewhere, &echo), CacheOutcome::Compiled);
    std::fs::copy(artifact(&elsewhere, &echo.1), &echo_file).unwrap();
    assert_eq!(load(&cache, &echo), CacheOutcome::Compiled);

    // After each refusal the artifact was rewritten; now it is sound again.
    assert_eq!(load(&cache, &echo), CacheOutcome::Hit);
    assert_eq!(load(&cache, &pool), CacheOutcome::Hit);

    // A key file that is not a key is an error naming it, not a silent new
    // key (the cache beside it would be unverifiable).
    std::fs::write(&key_file, "not a key\n").unwrap();
    let e = CacheKey::load_or_create(&key_file).unwrap_err().to_string();
    assert!(
        e.contains("cache.key") && e.contains("64 hex digits"),
        "{e}"
    );
}
