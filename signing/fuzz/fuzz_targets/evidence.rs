//! Device evidence: verify an envelope against the fixture device key,
//! nonce and bundle.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_signing::PublicKey;
use outpost_signing::evidence::{Expectation, verify};
use std::sync::LazyLock;

static DEVICE: LazyLock<PublicKey> = LazyLock::new(|| {
    PublicKey::parse(include_str!("../fixtures/device.pub")).expect("fixtures/device.pub parses")
});
static MANIFEST: LazyLock<outpost_signing::manifest::Manifest> =
    LazyLock::new(outpost_signing_fuzz::manifest);

fuzz_target!(|data: &[u8]| {
    let digest = outpost_signing::Digest::of(outpost_signing_fuzz::manifest_bytes());
    let expected = Expectation {
        device: &DEVICE,
        nonce: "fuzz-nonce",
        bundle: Some((&MANIFEST, digest)),
        max_age_s: 3600,
        now: outpost_signing_fuzz::now(),
    };
    let _ = verify(data, &expected);
});
