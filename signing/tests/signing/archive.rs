//! Bundle archives: verified before a byte is written, then every entry
//! checked against the signed manifest while it is written.

use super::common::{Scratch, bundle_dir, keys, single_root};
use outpost_signing::archive::{pack, unpack_verified};
use outpost_signing::bundle::{Bundle, VerifiedBundle};
use outpost_signing::root::TrustRoot;
use outpost_signing::{Digest, Error, RejectReason, SecretKey};
use std::path::{Path, PathBuf};

/// A signed bundle directory, its root and key, in a scratch directory.
struct Fixture {
    scratch: Scratch,
    key: SecretKey,
    root: TrustRoot,
    dir: PathBuf,
}

const MODEL: &[u8] = b"model bytes, not really onnx";

impl Fixture {
    fn new() -> Self {
        Self::signed_by(|k| vec![k])
    }

    fn signed_by(signers: impl FnOnce(&SecretKey) -> Vec<&SecretKey>) -> Self {
        let scratch = Scratch::new();
        let k = keys(1).pop().unwrap();
        let root = single_root(&k);
        let dir = scratch.path().join("bundle");
        bundle_dir(&dir, "demo", 1, MODEL, &signers(&k));
        Fixture {
            scratch,
            key: k,
            root,
            dir,
        }
    }

    fn file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }

    /// `blobs/<hex>` names and contents, pipeline first then the model.
    fn blobs(&self) -> Vec<(String, Vec<u8>)> {
        let pipeline = b"[pipeline]\nname = \"p\"\n".to_vec();
        [pipeline, MODEL.to_vec()]
            .into_iter()
            .map(|bytes| (format!("blobs/{}", Digest::of(&bytes).hex()), bytes))
            .collect()
    }

    /// The staging directory the tests unpack into (its parent must not
    /// appear when nothing may be written).
    fn dest(&self) -> PathBuf {
        self.scratch.path().join("state/staging/1")
    }

    fn unpack(&self, archive: &[u8]) -> Result<VerifiedBundle, Error> {
        unpack_verified(archive, "test.bundle", &self.root, &self.dest())
    }

    /// Refused before anything was written: not even the parent of the
    /// destination exists.
    fn refused_before_writing(&self, archive: &[u8]) -> Error {
        let error = self
            .unpack(archive)
            .err()
            .expect("the archive was accepted");
        assert!(
            !self.scratch.path().join("state").exists(),
            "{error}: something was written"
        );
        error
    }

    /// Refused while unpacking: the destination is gone again.
    fn refused_and_cleaned(&self, archive: &[u8]) -> Error {
        let error = self
            .unpack(archive)
            .err()
            .expect("the archive was accepted");
        assert!(
            !self.dest().exists(),
            "{error}: {} remains",
            self.dest().display()
        );
        // The parents stay (a device's staging folder); start afresh.
        let _ = std::fs::remove_dir_all(self.scratch.path().join("state"));
        error
    }

    /// manifest, signatures, then the blobs: a correct archive's entries.
    fn entries(&self) -> Vec<Entry> {
        let mut entries = vec![
            Entry::file("manifest.toml", self.file("manifest.toml")),
            Entry::file("signatures.json", self.file("signatures.json")),
        ];
        entries.extend(self.blobs().into_iter().map(|(n, b)| Entry::file(&n, b)));
        entries
    }
}

/// One tar entry, with any name and type (the tar crate's builder refuses
/// names with `..`, which the tests need).
struct Entry {
    name: Vec<u8>,
    kind: tar::EntryType,
    data: Vec<u8>,
    /// The size the header declares, if not the data's length.
    size: Option<u64>,
}

impl Entry {
    fn file(name: &str, data: Vec<u8>) -> Self {
        Self {
            name: name.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            data,
            size: None,
        }
    }
}

fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_gnu_mut().unwrap().name;
        name[..e.name.len()].copy_from_slice(&e.name);
        header.set_entry_type(e.kind);
        header.set_mode(0o644);
        header.set_size(e.size.unwrap_or(e.data.len() as u64));
        header.set_cksum();
        builder.append(&header, e.data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

#[test]
fn pack_writes_the_documents_first_and_unpacks_verified() {
    let f = Fixture::new();
    let mut bundle = Bundle::open_dir(&f.dir).unwrap();
    let envelope = outpost_signing::provenance::attest(
        &bundle,
        &f.key,
        "ci",
        outpost_signing::provenance::SourceRef {
            repository: "r".into(),
            commit: "c".into(),
        },
    )
    .unwrap();
    bundle.attach_provenance(&envelope).unwrap();
    let out = f.scratch.path().join("demo.bundle");
    pack(&f.dir, &out).unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let names: Vec<String> = tar::Archive::new(bytes.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(
        &names[..3],
        ["manifest.toml", "signatures.json", "provenance.json"]
    );
    assert_eq!(names.len(), 5);
    assert!(names[3..].iter().all(|n| n.starts_with("blobs/")));

    let verified = f.unpack(&bytes).unwrap();
    assert!(verified.provenance().is_some());
    verified.check_all_blobs().unwrap();
    for name in ["manifest.toml", "signatures.json", "provenance.json"] {
        assert!(f.dest().join(name).is_file(), "{name}");
    }
    // Through the file-level entry point too, into a new staging dir.
    let again =
        Bundle::open_verified(&out, &f.root, &f.scratch.path().join("state/staging/2")).unwrap();
    assert_eq!(again.manifest_digest(), verified.manifest_digest());
}

#[test]
fn an_unsigned_archive_is_refused_before_writing() {
    let f = Fixture::signed_by(|_| vec![]);
    let error = f.refused_before_writing(&tar(&f.entries()));
    assert!(
        matches!(error, Error::ThresholdNotMet { ref valid, .. } if valid.is_empty()),
        "{error}"
    );
    assert!(
        error.to_string().contains("bundle 'demo' version 1"),
        "{error}"
    );
}

#[test]
fn an_archive_signed_by_a_stranger_is_refused_before_writing() {
    let stranger = keys(1).pop().unwrap();
    let f = Fixture::new();
    // Replace the signature with a stranger's.
    std::fs::write(f.dir.join("signatures.json"), "{\"signatures\": []}").unwrap();
    Bundle::open_dir(&f.dir).unwrap().sign(&stranger).unwrap();
    let error = f.refused_before_writing(&tar(&f.entries()));
    match error {
        Error::ThresholdNotMet { rejected, .. } => {
            assert_eq!(
                rejected,
                vec![(stranger.public().id(), RejectReason::UnknownKey)]
            )
        }
        other => panic!("{other}"),
    }
}

#[test]
fn entries_out_of_order_are_refused_before_writing() {
    let f = Fixture::new();
    let entries = f.entries();
    // Signatures first.
    let mut swapped = f.entries();
    swapped.swap(0, 1);
    let error = f.refused_before_writing(&tar(&swapped));
    assert!(
        matches!(error, Error::EntryOrder { ref entry, expected: "manifest.toml", .. } if entry == "signatures.json"),
        "{error}"
    );
    assert!(error.to_string().contains("outpost pack"), "{error}");
    // A blob before the signatures.
    let early = tar(&[
        Entry::file("manifest.toml", f.file("manifest.toml")),
        Entry::file(&f.blobs()[0].0, f.blobs()[0].1.clone()),
    ]);
    assert!(matches!(
        f.refused_before_writing(&early),
        Error::EntryOrder {
            expected: "signatures.json",
            ..
        }
    ));
    // Only a manifest.
    assert!(matches!(
        f.refused_before_writing(&tar(&entries[..1])),
        Error::EntryOrder { ref entry, .. } if entry == "(end of archive)"
    ));
    // Nothing at all.
    assert!(matches!(
        f.refused_before_writing(&tar(&[])),
        Error::EntryOrder { .. }
    ));
}

#[test]
fn path_traversal_names_are_refused_and_nothing_lands_outside() {
    let f = Fixture::new();
    // As the first entry: refused before writing.
    let first = tar(&[Entry::file("../manifest.toml", f.file("manifest.toml"))]);
    assert!(matches!(
        f.refused_before_writing(&first),
        Error::EntryOrder { .. }
    ));
    // Among the blobs.
    for name in [
        "blobs/../../../evil",
        "/tmp/evil",
        "./blobs/x",
        "blobs/../manifest.toml",
    ] {
        let mut entries = f.entries();
        entries.insert(2, Entry::file(name, b"evil".to_vec()));
        let error = f.refused_and_cleaned(&tar(&entries));
        assert!(
            matches!(error, Error::UnexpectedEntry { ref entry, .. } if entry == name),
            "{name}: {error}"
        );
        assert_eq!(
            files_under(f.scratch.path())
                .iter()
                .filter(|p| p.contains("evil"))
                .count(),
            0
        );
    }
    // An uppercase or short hex name is not a blob name either.
    let mut entries = f.entries();
    let upper = f.blobs()[0].0.to_uppercase().replace("BLOBS", "blobs");
    entries.push(Entry::file(&upper, b"x".to_vec()));
    assert!(matches!(
        f.refused_and_cleaned(&tar(&entries)),
        Error::UnexpectedEntry { .. }
    ));
}

#[test]
fn non_regular_entries_are_refused() {
    let f = Fixture::new();
    for kind in [
        tar::EntryType::Symlink,
        tar::EntryType::Link,
        tar::EntryType::Directory,
        tar::EntryType::Fifo,
        tar::EntryType::Char,
        tar::EntryType::GNULongName,
        tar::EntryType::XHeader,
        tar::EntryType::GNUSparse,
    ] {
        // A manifest that is not a regular file: before writing.
        let mut entries = f.entries();
        entries[0].kind = kind;
        let error = f.refused_before_writing(&tar(&entries));
        assert!(
            matches!(error, Error::UnexpectedEntry { .. }),
            "{kind:?}: {error}"
        );
        // A blob that is not: removed again.
        let mut entries = f.entries();
        entries[2].kind = kind;
        let error = f.refused_and_cleaned(&tar(&entries));
        assert!(
            matches!(error, Error::UnexpectedEntry { ref reason, .. } if reason.contains("not a regular file")),
            "{kind:?}: {error}"
        );
    }
}

#[test]
fn an_unlisted_blob_is_refused_before_it_is_written() {
    let f = Fixture::new();
    let mut entries = f.entries();
    let stranger = b"not in the manifest".to_vec();
    let name = format!("blobs/{}", Digest::of(&stranger).hex());
    entries.insert(2, Entry::file(&name, stranger));
    let error = f.refused_and_cleaned(&tar(&entries));
    assert!(
        matches!(error, Error::UnlistedEntry { ref entry, .. } if *entry == name),
        "{error}"
    );
    assert!(
        error.to_string().contains("refused before writing"),
        "{error}"
    );
}

#[test]
fn a_blob_larger_or_smaller_than_declared_is_refused_before_it_is_written() {
    let f = Fixture::new();
    for extra in [b"!".as_slice(), b""] {
        let mut entries = f.entries();
        let model = &mut entries[3];
        if extra.is_empty() {
            model.data.pop();
        } else {
            model.data.extend_from_slice(extra);
        }
        let error = f.refused_and_cleaned(&tar(&entries));
        assert!(
            matches!(error, Error::BlobMismatch { ref message, .. } if message.contains("the signed manifest says")),
            "{error}"
        );
    }
}

#[test]
fn a_blob_whose_content_differs_is_refused_and_removed() {
    let f = Fixture::new();
    let mut entries = f.entries();
    let last = entries[3].data.len() - 1;
    entries[3].data[last] ^= 1;
    let error = f.refused_and_cleaned(&tar(&entries));
    assert!(
        matches!(error, Error::BlobMismatch { ref name, ref message, .. } if name == "model.onnx" && message.contains("content hashes to")),
        "{error}"
    );
}

#[test]
fn a_duplicate_blob_or_document_is_refused() {
    let f = Fixture::new();
    let mut entries = f.entries();
    entries.push(Entry::file(&f.blobs()[1].0, f.blobs()[1].1.clone()));
    assert!(matches!(
        f.refused_and_cleaned(&tar(&entries)),
        Error::DuplicateEntry { .. }
    ));
    let mut entries = f.entries();
    entries.push(Entry::file("manifest.toml", f.file("manifest.toml")));
    assert!(matches!(
        f.refused_and_cleaned(&tar(&entries)),
        Error::DuplicateEntry { .. }
    ));
    // provenance.json anywhere but third is out of order.
    let mut entries = f.entries();
    entries.push(Entry::file("provenance.json", b"{}".to_vec()));
    assert!(matches!(
        f.refused_and_cleaned(&tar(&entries)),
        Error::EntryOrder { .. }
    ));
}

#[test]
fn a_missing_blob_is_refused() {
    let f = Fixture::new();
    let mut entries = f.entries();
    entries.pop();
    let error = f.refused_and_cleaned(&tar(&entries));
    assert!(
        matches!(error, Error::MissingBlob { ref name, .. } if name == "model.onnx"),
        "{error}"
    );
}

#[test]
fn oversized_documents_and_cut_archives_are_refused() {
    let f = Fixture::new();
    let mut entries = f.entries();
    entries[0].data = vec![b'#'; (1 << 20) + 1];
    assert!(matches!(
        f.refused_before_writing(&tar(&entries)),
        Error::TooLarge { .. }
    ));
    // A header declaring more than the archive holds.
    let bytes = tar(&f.entries());
    for cut in [100, 512, 700, 1536, bytes.len() - 1100] {
        let error = f
            .unpack(&bytes[..cut])
            .err()
            .expect("a cut archive was accepted");
        assert!(!f.dest().exists(), "{cut}: {error}");
    }
}

#[test]
fn the_destination_must_not_exist() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.dest()).unwrap();
    std::fs::write(f.dest().join("keep"), b"mine").unwrap();
    assert!(matches!(
        f.unpack(&tar(&f.entries())),
        Err(Error::Io { .. })
    ));
    assert_eq!(std::fs::read(f.dest().join("keep")).unwrap(), b"mine");
}
