//! Atomic, durable writes.

use super::common::Scratch;
use outpost_signing::SecretKey;
use outpost_signing::durable::{TEMP_SUFFIX, remove_leftovers, write_atomic, write_new};

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn write_atomic_replaces_and_leaves_no_temporary_file() {
    let scratch = Scratch::new();
    let path = scratch.path().join("state.txt");
    write_atomic(&path, b"one", 0o644).unwrap();
    write_atomic(&path, b"two", 0o600).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two");
    assert_eq!(names(scratch.path()), ["state.txt"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A directory that does not exist: an error naming it, nothing written.
    let missing = scratch.path().join("nope/state.txt");
    let error = write_atomic(&missing, b"x", 0o644).unwrap_err();
    assert!(error.to_string().contains("nope"), "{error}");
}

#[test]
fn write_new_never_replaces() {
    let scratch = Scratch::new();
    let path = scratch.path().join("device.key");
    write_new(&path, b"first", 0o600).unwrap();
    let error = write_new(&path, b"second", 0o600).unwrap_err();
    match &error {
        outpost_signing::Error::Io { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"first");
    assert_eq!(names(scratch.path()), ["device.key"]);
}

#[test]
fn leftovers_of_interrupted_writes_are_removed() {
    let scratch = Scratch::new();
    let leftover = format!(".state.txt.123.0{TEMP_SUFFIX}");
    std::fs::write(scratch.path().join(&leftover), b"half").unwrap();
    std::fs::write(scratch.path().join("state.txt"), b"whole").unwrap();
    std::fs::write(scratch.path().join("other.tmp"), b"not ours").unwrap();
    assert_eq!(remove_leftovers(scratch.path()).unwrap(), 1);
    assert_eq!(names(scratch.path()), ["other.tmp", "state.txt"]);
    assert_eq!(remove_leftovers(&scratch.path().join("absent")).unwrap(), 0);
}

#[test]
fn secret_keys_are_saved_0600_and_never_overwritten() {
    let scratch = Scratch::new();
    let path = scratch.path().join("a.key");
    let key = SecretKey::generate().unwrap();
    key.save(&path).unwrap();
    assert!(SecretKey::generate().unwrap().save(&path).is_err());
    assert_eq!(SecretKey::load(&path).unwrap().public(), key.public());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(names(scratch.path()), ["a.key", "a.key.pub"]);
}
