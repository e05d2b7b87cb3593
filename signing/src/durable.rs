//! Atomic, durable file writes: after a crash or power loss a file holds
//! either its old content or its new content, never a mix or nothing.
//!
//! Each write goes to a unique temporary file in the same directory
//! (created exclusively, with the final mode from the start), is flushed
//! to disk (`fsync`), renamed over the target, and then the directory is
//! flushed so the rename itself survives. Temporary files that a crash
//! left behind end in [`TEMP_SUFFIX`]; [`remove_leftovers`] cleans them.
//!
//! ```
//! # let dir = std::env::temp_dir().join(format!("durable-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! use outpost_signing::durable::write_atomic;
//!
//! let path = dir.join("accepted.txt");
//! write_atomic(&path, b"1 sha256:...\n", 0o644).unwrap();
//! write_atomic(&path, b"2 sha256:...\n", 0o644).unwrap();
//! assert_eq!(std::fs::read(&path).unwrap(), b"2 sha256:...\n");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The suffix of temporary files made by this module.
pub const TEMP_SUFFIX: &str = ".outpost-tmp";

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A fresh temporary file beside `path`, opened for writing with `mode`.
fn create_temp(path: &Path, mode: u32) -> Result<(PathBuf, std::fs::File)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| {
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
            )
        })?
        .to_string_lossy();
    let dir = parent(path);
    loop {
        let temp = dir.join(format!(
            ".{name}.{}.{}{TEMP_SUFFIX}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        #[cfg(not(unix))]
        let _ = mode;
        match options.open(&temp) {
            Ok(file) => return Ok((temp, file)),
            // Left by an earlier process with the same id: take the next.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&temp, e)),
        }
    }
}

/// Writes `bytes` to a new temporary file beside `path` and flushes it;
/// returns the temporary file's path. The caller moves it into place.
fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    let (temp, mut file) = create_temp(path, mode)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&temp, e));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map(|()| temp)
}

/// Replaces `path` with `bytes`, atomically and durably, creating it with
/// permission bits `mode` (e.g. `0o600` for secrets; ignored off Unix).
/// The directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let temp = write_temp(path, bytes, mode)?;
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(Error::io(path, e));
    }
    sync_dir(parent(path))
}

/// Like [`write_atomic`], but refuses to replace an existing file
/// ([`std::io::ErrorKind::AlreadyExists`]): for keys, which must never be
/// overwritten by accident. The file appears complete or not at all.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let temp = write_temp(path, bytes, mode)?;
    // A hard link, unlike a rename, fails if the target exists.
    let linked = std::fs::hard_link(&temp, path);
    let _ = std::fs::remove_file(&temp);
    linked.map_err(|e| Error::io(path, e))?;
    sync_dir(parent(path))
}

/// Flushes a directory's entries (new, renamed or removed files) to disk.
/// A no-op where directories cannot be opened (not Unix).
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Removes the temporary files that interrupted writes left in `dir` (not
/// recursive); returns how many. Call it at start, under the lock that
/// serialises writers, so no write in progress is removed.
pub fn remove_leftovers(dir: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}
