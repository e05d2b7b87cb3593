//! The crate carries its own copy of the WIT it binds, so that it builds
//! from crates.io, outside this repository. The copy must be the
//! repository's `wit/`, byte for byte: the host binds that one.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// Every `.wit` file under `dir`, relative to it, sorted.
fn wit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "wit") {
                files.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_crates_wit_is_the_repositorys() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repository = crate_dir.join("../wit");
    if !repository.join("stage.wit").exists() {
        // Built from the published crate: there is nothing to compare with.
        eprintln!("{} is not here; skipped", repository.display());
        return;
    }
    let copy = crate_dir.join("wit");
    let files = wit_files(&repository);
    assert_eq!(
        wit_files(&copy),
        files,
        "guest-sdk/wit/ must hold the same .wit files as wit/ (copy them over)"
    );
    for file in &files {
        assert!(
            std::fs::read(repository.join(file)).unwrap()
                == std::fs::read(copy.join(file)).unwrap(),
            "guest-sdk/wit/{} differs from wit/{}: copy wit/ over guest-sdk/wit/ after changing it",
            file.display(),
            file.display()
        );
    }
}
