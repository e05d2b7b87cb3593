//! `manifest.toml`: parse and validate; a manifest that parses must write
//! back to TOML that parses to the same manifest (what `outpost bundle`
//! and `Bundle::create` rely on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_signing::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::parse(data) {
        let text = manifest.to_toml().expect("a parsed manifest serializes");
        let again = Manifest::parse(text.as_bytes()).expect("a written manifest parses");
        assert_eq!(again, manifest);
    }
});
