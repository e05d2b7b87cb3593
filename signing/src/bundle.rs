//! Bundles on disk: a directory (`manifest.toml`, `signatures.json`,
//! `blobs/<sha256 hex>`) or the same as one tar archive for transport.
//!
//! [`Bundle`] is what was read; only [`Bundle::verify`] turns it into a
//! [`VerifiedBundle`], and only a verified bundle hands out blobs, each
//! checked against its digest and size as it is read.

use crate::dsse::SignatureEntry;
use crate::durable::write_atomic;
use crate::keys::{SecretKey, read_bounded};
use crate::manifest::{MAX_BLOB_BYTES, MAX_MANIFEST_BYTES, Manifest};
use crate::root::{SignatureReport, TrustRoot};
use crate::{Digest, Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.toml";
/// The signature envelope's file name.
pub const SIGNATURES_FILE: &str = "signatures.json";
/// The folder of blobs.
pub const BLOB_DIR: &str = "blobs";
/// The provenance envelope's file name (optional).
pub const PROVENANCE_FILE: &str = "provenance.json";
/// The largest `signatures.json` accepted.
pub const MAX_SIGNATURES_BYTES: u64 = 1 << 20;

/// `signatures.json`: ed25519 signatures over the exact bytes of
/// `manifest.toml`, each recording its key id.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatures {
    /// The signatures.
    pub signatures: Vec<SignatureEntry>,
}

/// A bundle as read, not yet trusted.
pub struct Bundle {
    dir: PathBuf,
    manifest_bytes: Vec<u8>,
    manifest: Manifest,
    signatures: Signatures,
    provenance: Option<Vec<u8>>,
}

/// A bundle whose signatures met the trust root's threshold.
pub struct VerifiedBundle {
    bundle: Bundle,
    report: SignatureReport,
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join(BLOB_DIR).join(digest.hex())
}

impl Bundle {
    /// Writes a new, unsigned bundle directory: the manifest and the blobs,
    /// each given as `(digest, bytes)`.
    pub fn create(dir: &Path, manifest: &Manifest, blobs: &[(Digest, Vec<u8>)]) -> Result<Self> {
        manifest.validate()?;
        std::fs::create_dir_all(dir.join(BLOB_DIR)).map_err(|e| Error::io(dir, e))?;
        for (digest, bytes) in blobs {
            write_atomic(&blob_path(dir, digest), bytes, 0o644)?;
        }
        let text = manifest.to_toml()?;
        write_atomic(&dir.join(MANIFEST_FILE), text.as_bytes(), 0o644)?;
        let bundle = Self {
            dir: dir.to_owned(),
            manifest_bytes: text.into_bytes(),
            manifest: manifest.clone(),
            signatures: Signatures::default(),
            provenance: None,
        };
        bundle.write_signatures()?;
        Ok(bundle)
    }

    /// Reads a bundle directory's manifest and signatures (blobs are read
    /// later, on demand).
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let manifest_bytes = read_bounded(&dir.join(MANIFEST_FILE), MAX_MANIFEST_BYTES as u64)?;
        let manifest = Manifest::parse(&manifest_bytes)?;
        let path = dir.join(SIGNATURES_FILE);
        let signatures = match std::fs::metadata(&path) {
            Ok(_) => serde_json::from_slice(&read_bounded(&path, MAX_SIGNATURES_BYTES)?)
                .map_err(|e| Error::malformed(SIGNATURES_FILE, e.to_string()))?,
            Err(_) => Signatures::default(),
        };
        let path = dir.join(PROVENANCE_FILE);
        let provenance = match std::fs::metadata(&path) {
            Ok(_) => Some(read_bounded(&path, crate::dsse::MAX_ENVELOPE_BYTES as u64)?),
            Err(_) => None,
        };
        Ok(Self {
            dir: dir.to_owned(),
            manifest_bytes,
            manifest,
            signatures,
            provenance,
        })
    }

    /// Opens and verifies a bundle: a directory (its signatures checked
    /// here, its blobs as they are read), or an archive, whose signatures
    /// are checked before its blobs are unpacked into `staging` (which must
    /// not exist yet; see [`crate::archive::unpack_verified`]).
    pub fn open_verified(path: &Path, root: &TrustRoot, staging: &Path) -> Result<VerifiedBundle> {
        if path.is_dir() {
            return Self::open_dir(path)?.verify(root);
        }
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        crate::archive::unpack_verified(
            std::io::BufReader::new(file),
            &path.display().to_string(),
            root,
            staging,
        )
    }

    /// A bundle in `dir` from documents already read (by the archive reader).
    pub(crate) fn from_parts(
        dir: PathBuf,
        manifest_bytes: Vec<u8>,
        manifest: Manifest,
        signatures: Signatures,
        provenance: Option<Vec<u8>>,
    ) -> Self {
        Self {
            dir,
            manifest_bytes,
            manifest,
            signatures,
            provenance,
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The sha256 of the manifest's exact bytes.
    pub fn manifest_digest(&self) -> Digest {
        Digest::of(&self.manifest_bytes)
    }

    /// The directory the bundle is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The signatures present.
    pub fn signatures(&self) -> &[SignatureEntry] {
        &self.signatures.signatures
    }

    /// Attaches a provenance envelope (`provenance.json`).
    pub fn attach_provenance(&mut self, envelope: &crate::dsse::Envelope) -> Result<()> {
        let json = envelope.to_json();
        write_atomic(&self.dir.join(PROVENANCE_FILE), json.as_bytes(), 0o644)?;
        self.provenance = Some(json.into_bytes());
        Ok(())
    }

    /// Adds `key`'s signature of the manifest (replacing one it made before)
    /// and writes `signatures.json`.
    pub fn sign(&mut self, key: &SecretKey) -> Result<()> {
        let entry = SignatureEntry::sign(key, &self.manifest_bytes);
        self.signatures
            .signatures
            .retain(|s| s.keyid != entry.keyid);
        self.signatures.signatures.push(entry);
        self.write_signatures()
    }

    fn write_signatures(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.signatures)
            .map_err(|e| Error::malformed(SIGNATURES_FILE, e.to_string()))?;
        write_atomic(&self.dir.join(SIGNATURES_FILE), text.as_bytes(), 0o644)
    }

    /// Checks the signatures over the manifest against `root`.
    pub fn verify(self, root: &TrustRoot) -> Result<VerifiedBundle> {
        let what = format!(
            "bundle '{}' version {} ({SIGNATURES_FILE})",
            self.manifest.bundle.name, self.manifest.bundle.version
        );
        let report = root.check(&what, &self.manifest_bytes, &self.signatures.signatures)?;
        Ok(VerifiedBundle {
            bundle: self,
            report,
        })
    }
}

impl VerifiedBundle {
    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.bundle.manifest
    }

    /// The sha256 of the manifest's exact bytes.
    pub fn manifest_digest(&self) -> Digest {
        self.bundle.manifest_digest()
    }

    /// Who signed.
    pub fn report(&self) -> &SignatureReport {
        &self.report
    }

    /// The attached provenance envelope, unchecked (see
    /// [`crate::provenance::Policy::check`]).
    pub fn provenance(&self) -> Option<&[u8]> {
        self.bundle.provenance.as_deref()
    }

    /// Reads the blob `digest` (`sha256:<hex>`), refusing it unless the
    /// manifest lists it and its size and content match.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let entry = self
            .manifest()
            .blobs
            .get(digest)
            .ok_or_else(|| Error::BlobMismatch {
                digest: digest.to_owned(),
                name: "?".into(),
                message: "not listed in the signed manifest".into(),
            })?;
        let mismatch = |message: String| Error::BlobMismatch {
            digest: digest.to_owned(),
            name: entry.name.clone(),
            message,
        };
        let parsed: Digest = digest
            .parse()
            .map_err(|e: crate::ParseDigestError| mismatch(e.to_string()))?;
        let path = blob_path(&self.bundle.dir, &parsed);
        let file = std::fs::File::open(&path)
            .map_err(|e| mismatch(format!("cannot read {}: {e}", path.display())))?;
        let mut bytes = Vec::with_capacity(entry.size.min(MAX_BLOB_BYTES) as usize);
        file.take(entry.size + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| mismatch(e.to_string()))?;
        if bytes.len() as u64 != entry.size {
            return Err(mismatch(format!(
                "the manifest says {} bytes, the file has {}{}",
                entry.size,
                bytes.len(),
                if bytes.len() as u64 > entry.size {
                    " or more"
                } else {
                    ""
                }
            )));
        }
        let actual = Digest::of(&bytes);
        if actual != parsed {
            return Err(mismatch(format!("content hashes to {actual}")));
        }
        Ok(bytes)
    }

    /// Writes the manifest, signatures and provenance into the bundle's
    /// directory (which exists), exactly as they were verified.
    pub(crate) fn write_documents(&self) -> Result<()> {
        let bundle = &self.bundle;
        let mut files = vec![
            (MANIFEST_FILE, bundle.manifest_bytes.clone()),
            (
                SIGNATURES_FILE,
                serde_json::to_vec_pretty(&bundle.signatures)
                    .map_err(|e| Error::malformed(SIGNATURES_FILE, e.to_string()))?,
            ),
        ];
        if let Some(provenance) = &bundle.provenance {
            files.push((PROVENANCE_FILE, provenance.clone()));
        }
        for (name, bytes) in files {
            write_atomic(&bundle.dir.join(name), &bytes, 0o644)?;
        }
        Ok(())
    }

    /// Reads and checks every blob.
    pub fn check_all_blobs(&self) -> Result<()> {
        for digest in self.manifest().blobs.keys() {
            self.read_blob(digest)?;
        }
        Ok(())
    }
}

pub use crate::archive::pack;

/// What versions of each bundle a device has accepted, so an older one (a
/// rollback) or a different one under the same version is refused.
pub struct VersionStore {
    dir: PathBuf,
}

impl VersionStore {
    /// A store in `dir` (created when first written).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.accepted"))
    }

    /// The highest accepted version of `name` and its manifest digest.
    pub fn accepted(&self, name: &str) -> Result<Option<(u64, String)>> {
        let path = self.path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let mut parts = text.split_whitespace();
        match (parts.next().and_then(|v| v.parse().ok()), parts.next()) {
            (Some(version), Some(digest)) => Ok(Some((version, digest.to_owned()))),
            _ => Err(Error::malformed(
                path.display().to_string(),
                "expected '<version> <manifest digest>'",
            )),
        }
    }

    /// Refuses `bundle` if a higher version, or a different manifest with the
    /// same version, was accepted before.
    pub fn check(&self, bundle: &VerifiedBundle) -> Result<()> {
        let info = &bundle.manifest().bundle;
        let digest = bundle.manifest_digest().to_string();
        if let Some((version, seen)) = self.accepted(&info.name)? {
            if info.version < version {
                return Err(Error::OlderVersion {
                    bundle: info.name.clone(),
                    version: info.version,
                    accepted: version,
                });
            }
            if info.version == version && seen != digest {
                return Err(Error::SameVersionDifferentContent {
                    bundle: info.name.clone(),
                    version,
                    accepted: seen,
                    found: digest,
                });
            }
        }
        Ok(())
    }

    /// [`VersionStore::check`]s `bundle`, then records it as accepted
    /// (no write when it is recorded already: a device whose disk is full
    /// still runs what it accepted).
    pub fn accept(&self, bundle: &VerifiedBundle) -> Result<()> {
        self.check(bundle)?;
        let info = &bundle.manifest().bundle;
        let digest = bundle.manifest_digest().to_string();
        if self.accepted(&info.name)? == Some((info.version, digest.clone())) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        write_atomic(
            &self.path(&info.name),
            format!("{} {digest}\n", info.version).as_bytes(),
            0o644,
        )
    }
}
