//! What the fuzz targets share: the fixtures in `fixtures/` (real
//! documents written by the ignored test `write_fuzz_seeds` in
//! `signing/tests/signing/fuzz_seeds.rs`), and the clock they use.

use outpost_signing::manifest::Manifest;
use outpost_signing::root::TrustRoot;
use outpost_signing::time::Timestamp;

/// "Now" for every target: the fixtures' evidence was made at this time,
/// and the roots expire long after.
pub fn now() -> Timestamp {
    Timestamp(1_800_000_010)
}

/// The fixture bundle's trust root (version 1).
pub fn root() -> TrustRoot {
    let chain = [(
        "root1.json".to_owned(),
        include_bytes!("../fixtures/root1.json").to_vec(),
    )];
    TrustRoot::verify_chain(&chain, now()).expect("fixtures/root1.json verifies")
}

/// The fixture bundle's manifest.
pub fn manifest_bytes() -> &'static [u8] {
    include_bytes!("../fixtures/manifest.toml")
}

/// The fixture bundle's manifest, parsed.
pub fn manifest() -> Manifest {
    Manifest::parse(manifest_bytes()).expect("fixtures/manifest.toml parses")
}

/// Splits `data` at each `\n--\n`: how targets that take several
/// documents receive them.
pub fn parts(data: &[u8]) -> Vec<&[u8]> {
    const SEPARATOR: &[u8] = b"\n--\n";
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}
