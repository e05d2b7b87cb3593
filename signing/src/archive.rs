//! Bundle archives: one tar file carrying a bundle directory, written so a
//! device can verify before it writes.
//!
//! The archive's first entries are `manifest.toml`, `signatures.json` and,
//! optionally, `provenance.json`; the blobs follow. [`unpack_verified`]
//! reads those documents into memory (each within its size limit), checks
//! the signatures against the trust root, and only then creates the
//! destination and streams the blobs into it: each only if the signed
//! manifest lists it, once, with exactly the declared size, hashed while it
//! is written. A stranger's archive therefore costs a device a few
//! megabytes of reading and nothing on disk.
//!
//! Archives are read in tar's raw mode: GNU long names, pax headers and
//! sparse files are refused rather than interpreted (the tar reader would
//! load such headers into memory whole), and no name is ever joined to a
//! path except a validated `blobs/<64 hex>`.

use crate::bundle::{
    BLOB_DIR, Bundle, MANIFEST_FILE, MAX_SIGNATURES_BYTES, PROVENANCE_FILE, SIGNATURES_FILE,
    Signatures, VerifiedBundle,
};
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::root::TrustRoot;
use crate::{Error, Result};
use sha2::Digest as _;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Writes the bundle directory `dir` as a tar archive at `out`: the
/// manifest, the signatures and the provenance first, then the blobs the
/// manifest lists, so [`unpack_verified`] can verify before it writes.
pub fn pack(dir: &Path, out: &Path) -> Result<()> {
    let bundle = Bundle::open_dir(dir)?;
    let file = std::fs::File::create(out).map_err(|e| Error::io(out, e))?;
    let mut builder = tar::Builder::new(file);
    builder.mode(tar::HeaderMode::Deterministic);
    let mut names = vec![MANIFEST_FILE.to_owned(), SIGNATURES_FILE.to_owned()];
    if dir.join(PROVENANCE_FILE).exists() {
        names.push(PROVENANCE_FILE.to_owned());
    }
    for digest in bundle.manifest().blobs.keys() {
        let hex = digest.trim_start_matches("sha256:");
        names.push(format!("{BLOB_DIR}/{hex}"));
    }
    for name in names {
        let path = dir.join(&name);
        builder
            .append_path_with_name(&path, &name)
            .map_err(|e| Error::io(&path, e))?;
    }
    builder
        .into_inner()
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(out, e))
}

/// An entry's name for messages: lossy UTF-8, control characters escaped,
/// at most 120 characters.
fn display_name(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut shown: String = text
        .chars()
        .take(120)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > 120 {
        shown.push('…');
    }
    shown
}

/// The hex of `blobs/<64 lowercase hex>`, if `name` is that.
fn blob_hex(name: &[u8]) -> Option<&str> {
    let hex = name.strip_prefix(format!("{BLOB_DIR}/").as_bytes())?;
    (hex.len() == 64
        && hex
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)))
    .then(|| std::str::from_utf8(hex).ok())
    .flatten()
}

/// Removes a partly written destination unless disarmed.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What [`unpack_verified`] reads: one archive, named `what` in messages.
struct Reader<'a, R: Read> {
    entries: tar::Entries<'a, R>,
    what: &'a str,
}

impl<'a, R: Read> Reader<'a, R> {
    fn malformed(&self, e: impl std::fmt::Display) -> Error {
        Error::malformed(self.what, format!("not a bundle archive (tar): {e}"))
    }

    fn next(&mut self) -> Result<Option<tar::Entry<'a, R>>> {
        match self.entries.next() {
            None => Ok(None),
            Some(Ok(entry)) => Ok(Some(entry)),
            Some(Err(e)) => Err(self.malformed(e)),
        }
    }

    fn unexpected(&self, entry: &tar::Entry<'a, R>, reason: impl Into<String>) -> Error {
        Error::UnexpectedEntry {
            archive: self.what.to_owned(),
            entry: display_name(&entry.path_bytes()),
            reason: reason.into(),
        }
    }

    /// Refuses anything but a regular file.
    fn regular(&self, entry: &tar::Entry<'a, R>) -> Result<u64> {
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular {
            return Err(
                self.unexpected(entry, format!("it is a {kind:?} entry, not a regular file"))
            );
        }
        entry.header().size().map_err(|e| self.malformed(e))
    }

    /// The entry `name` (which must come next), read whole within `limit`.
    fn document(
        &self,
        entry: Option<tar::Entry<'a, R>>,
        name: &'static str,
        limit: u64,
    ) -> Result<Vec<u8>> {
        let Some(mut entry) = entry else {
            return Err(Error::EntryOrder {
                archive: self.what.to_owned(),
                entry: "(end of archive)".into(),
                expected: name,
            });
        };
        if entry.path_bytes().as_ref() != name.as_bytes() {
            return Err(Error::EntryOrder {
                archive: self.what.to_owned(),
                entry: display_name(&entry.path_bytes()),
                expected: name,
            });
        }
        let size = self.regular(&entry)?;
        if size > limit {
            return Err(Error::TooLarge {
                what: format!("{}: {name}", self.what),
                size,
                limit,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| self.malformed(e))?;
        if bytes.len() as u64 != size {
            return Err(self.malformed(format!(
                "{name} is cut short: {} of {size} bytes",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// Reads a bundle archive from `reader` (named `what` in messages),
/// verifies its signatures against `root`, and only then unpacks its blobs
/// into `dest`, which must not exist yet. Refused before anything is
/// written: an archive not starting with `manifest.toml` and
/// `signatures.json` ([`Error::EntryOrder`]), a malformed or oversized
/// document, signatures below the threshold. Refused while unpacking, with
/// `dest` removed again: an entry that is not a regular file or has another
/// name ([`Error::UnexpectedEntry`]), a blob the manifest does not list
/// ([`Error::UnlistedEntry`]), one given twice ([`Error::DuplicateEntry`]),
/// one whose size or content differs from the manifest
/// ([`Error::BlobMismatch`], checked before writing for the size, while
/// writing for the content), and a listed blob missing at the end
/// ([`Error::MissingBlob`]).
pub fn unpack_verified<R: Read>(
    reader: R,
    what: &str,
    root: &TrustRoot,
    dest: &Path,
) -> Result<VerifiedBundle> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| Error::malformed(what, format!("not a bundle archive (tar): {e}")))?
        .raw(true);
    let mut reader = Reader { entries, what };

    let first = reader.next()?;
    let manifest_bytes = reader.document(first, MANIFEST_FILE, MAX_MANIFEST_BYTES as u64)?;
    let second = reader.next()?;
    let signature_bytes = reader.document(second, SIGNATURES_FILE, MAX_SIGNATURES_BYTES)?;
    let mut next = reader.next()?;
    let mut provenance = None;
    if next
        .as_ref()
        .is_some_and(|e| e.path_bytes().as_ref() == PROVENANCE_FILE.as_bytes())
    {
        provenance = Some(reader.document(
            next.take(),
            PROVENANCE_FILE,
            crate::dsse::MAX_ENVELOPE_BYTES as u64,
        )?);
        next = reader.next()?;
    }

    let manifest = Manifest::parse(&manifest_bytes)?;
    let signatures: Signatures = serde_json::from_slice(&signature_bytes)
        .map_err(|e| Error::malformed(format!("{what}: {SIGNATURES_FILE}"), e.to_string()))?;
    let verified = Bundle::from_parts(
        dest.to_owned(),
        manifest_bytes,
        manifest,
        signatures,
        provenance,
    )
    .verify(root)?;

    // Verified: from here on, bytes land on disk.
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e| Error::io(path, e)
    };
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::create_dir(dest).map_err(io(dest))?;
    let mut guard = RemoveOnDrop(Some(dest.to_owned()));
    let blobs = dest.join(BLOB_DIR);
    std::fs::create_dir(&blobs).map_err(io(&blobs))?;
    verified.write_documents()?;

    let mut seen = BTreeSet::new();
    while let Some(entry) = next {
        write_blob(&reader, entry, &verified, &blobs, &mut seen)?;
        next = reader.next()?;
    }
    for (digest, blob) in &verified.manifest().blobs {
        if !seen.contains(digest.as_str()) {
            return Err(Error::MissingBlob {
                archive: what.to_owned(),
                digest: digest.clone(),
                name: blob.name.clone(),
            });
        }
    }
    crate::durable::sync_dir(&blobs)?;
    crate::durable::sync_dir(dest)?;
    guard.0 = None;
    Ok(verified)
}

/// Checks one blob entry against the signed manifest and writes it to
/// `blobs/`, hashing as it goes.
fn write_blob<'a, R: Read>(
    reader: &Reader<'a, R>,
    mut entry: tar::Entry<'a, R>,
    verified: &VerifiedBundle,
    blobs: &Path,
    seen: &mut BTreeSet<String>,
) -> Result<()> {
    let what = reader.what;
    let name_bytes = entry.path_bytes().into_owned();
    let name = display_name(&name_bytes);
    let Some(hex) = blob_hex(&name_bytes) else {
        return Err(match name_bytes.as_slice() {
            n if n == PROVENANCE_FILE.as_bytes() => Error::EntryOrder {
                archive: what.to_owned(),
                entry: name,
                expected: "a blob (provenance.json must come right after signatures.json)",
            },
            n if n == MANIFEST_FILE.as_bytes() || n == SIGNATURES_FILE.as_bytes() => {
                Error::DuplicateEntry {
                    archive: what.to_owned(),
                    entry: name,
                }
            }
            _ => reader.unexpected(&entry, "not a name a bundle archive holds"),
        });
    };
    let size = reader.regular(&entry)?;
    let digest = format!("sha256:{hex}");
    let Some(listed) = verified.manifest().blobs.get(&digest) else {
        return Err(Error::UnlistedEntry {
            archive: what.to_owned(),
            entry: name,
        });
    };
    if !seen.insert(digest.clone()) {
        return Err(Error::DuplicateEntry {
            archive: what.to_owned(),
            entry: name,
        });
    }
    let mismatch = |message: String| Error::BlobMismatch {
        digest: digest.clone(),
        name: listed.name.clone(),
        message: format!("in {what}: {message}"),
    };
    if size != listed.size {
        return Err(mismatch(format!(
            "the archive entry is {size} bytes, the signed manifest says {}",
            listed.size
        )));
    }
    let path = blobs.join(hex);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut limited = (&mut entry).take(listed.size);
    let mut copied = 0u64;
    loop {
        let n = match limited.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(reader.malformed(e)),
        };
        hasher.update(&buffer[..n]);
        out.write_all(&buffer[..n])
            .map_err(|e| Error::io(&path, e))?;
        copied += n as u64;
    }
    if copied != listed.size {
        drop(out);
        let _ = std::fs::remove_file(&path);
        return Err(mismatch(format!(
            "the archive is cut short: {copied} of {} bytes",
            listed.size
        )));
    }
    let actual = crate::keys::encode_hex(&hasher.finalize());
    if actual != hex {
        drop(out);
        let _ = std::fs::remove_file(&path);
        return Err(mismatch(format!("content hashes to sha256:{actual}")));
    }
    out.sync_all().map_err(|e| Error::io(&path, e))
}
