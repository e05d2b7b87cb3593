//! `signatures.json`: parse, then count signatures over the fixture
//! manifest against the fixture root (the threshold is never met by
//! anything but the real signatures).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_signing::bundle::Signatures;
use std::sync::LazyLock;

static ROOT: LazyLock<outpost_signing::root::TrustRoot> = LazyLock::new(outpost_signing_fuzz::root);

fuzz_target!(|data: &[u8]| {
    let Ok(signatures) = serde_json::from_slice::<Signatures>(data) else {
        return;
    };
    let manifest = outpost_signing_fuzz::manifest_bytes();
    if let Ok(report) = ROOT.check("fuzz", manifest, &signatures.signatures) {
        assert!(report.valid.len() >= ROOT.threshold() as usize);
    }
});
