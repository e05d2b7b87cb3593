//! Bundle archives: verify-then-unpack into a fresh directory per run.
//! Whatever happens, a refused archive leaves nothing behind, and an
//! accepted one holds exactly the manifest's blobs, each intact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

static ROOT: LazyLock<outpost_signing::root::TrustRoot> = LazyLock::new(outpost_signing_fuzz::root);
static BASE: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("outpost-fuzz-archive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
});

fuzz_target!(|data: &[u8]| {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dest = BASE.join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    match outpost_signing::archive::unpack_verified(data, "fuzz.bundle", &ROOT, &dest) {
        Ok(verified) => {
            verified
                .check_all_blobs()
                .expect("unpacked blobs match the manifest");
        }
        Err(_) => assert!(!dest.exists(), "a refused archive left {}", dest.display()),
    }
    let _ = std::fs::remove_dir_all(&dest);
});
