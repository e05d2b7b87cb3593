//! Keys, roots and scratch directories for the tests.

use outpost_signing::SecretKey;
use outpost_signing::root::{RootBody, RootKey};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system's temp dir, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "outpost-signing-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `n` new keys.
pub fn keys(n: usize) -> Vec<SecretKey> {
    (0..n).map(|_| SecretKey::generate().unwrap()).collect()
}

/// A root envelope (JSON bytes) of `version` trusting `trusted` with
/// `threshold`, revoking `revoked`, signed by `signers`.
pub fn root(
    version: u64,
    trusted: &[&SecretKey],
    threshold: u32,
    expires: &str,
    revoked: &[&SecretKey],
    signers: &[&SecretKey],
) -> Vec<u8> {
    let body = RootBody {
        version,
        expires: expires.into(),
        threshold,
        keys: trusted
            .iter()
            .map(|k| RootKey {
                public: k.public().to_string(),
                name: None,
            })
            .collect(),
        revoked: revoked.iter().map(|k| k.public().id()).collect(),
    };
    let mut envelope = body.to_envelope().unwrap();
    for k in signers {
        envelope.sign(k, "root").unwrap();
    }
    envelope.to_json().into_bytes()
}

pub const FAR: &str = "2099-01-01T00:00:00Z";

/// `[(name, bytes)]` as a chain argument.
pub fn chain(roots: &[(&str, &Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    roots
        .iter()
        .map(|(name, bytes)| ((*name).to_owned(), (*bytes).clone()))
        .collect()
}

/// A bundle directory at `dir`: a pipeline blob and a model blob (whose
/// content is `model`), named `name` at `version`, signed by `signers`.
pub fn bundle_dir(
    dir: &Path,
    name: &str,
    version: u64,
    model: &[u8],
    signers: &[&SecretKey],
) -> outpost_signing::bundle::Bundle {
    use outpost_signing::Digest;
    use outpost_signing::bundle::Bundle;
    use outpost_signing::manifest::{BlobEntry, BlobKind, BundleInfo, Manifest};
    let pipeline = b"[pipeline]\nname = \"p\"\n".to_vec();
    let blobs = vec![
        (Digest::of(&pipeline), pipeline),
        (Digest::of(model), model.to_vec()),
    ];
    let manifest = Manifest {
        bundle: BundleInfo {
            name: name.into(),
            version,
            pipeline: blobs[0].0.to_string(),
        },
        blobs: blobs
            .iter()
            .zip([
                ("pipeline.toml", BlobKind::Pipeline),
                ("model.onnx", BlobKind::Model),
            ])
            .map(|((digest, bytes), (name, kind))| {
                (
                    digest.to_string(),
                    BlobEntry {
                        size: bytes.len() as u64,
                        kind,
                        name: name.into(),
                        precompiled: None,
                    },
                )
            })
            .collect(),
        grants: Default::default(),
    };
    let mut bundle = Bundle::create(dir, &manifest, &blobs).unwrap();
    for k in signers {
        bundle.sign(k).unwrap();
    }
    bundle
}

/// A 1-of-1 root for `key`, verified.
pub fn single_root(key: &SecretKey) -> outpost_signing::root::TrustRoot {
    let bytes = root(1, &[key], 1, FAR, &[], &[key]);
    outpost_signing::root::TrustRoot::verify_chain(
        &chain(&[("root.json", &bytes)]),
        outpost_signing::time::Timestamp::now(),
    )
    .unwrap()
}
