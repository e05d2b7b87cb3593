//! `provenance.json` against a device policy: the input is the provenance
//! envelope, or `policy.toml\n--\nprovenance.json`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_signing::provenance::Policy;
use std::sync::LazyLock;

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let text = include_str!("../fixtures/policy.toml");
    Policy::parse(text, "policy.toml").expect("fixtures/policy.toml parses")
});
static MANIFEST: LazyLock<outpost_signing::manifest::Manifest> =
    LazyLock::new(outpost_signing_fuzz::manifest);

fuzz_target!(|data: &[u8]| {
    let parts = outpost_signing_fuzz::parts(data);
    let (policy, provenance) = match parts.as_slice() {
        [policy, provenance, ..] => {
            let Ok(text) = std::str::from_utf8(policy) else {
                return;
            };
            let Ok(policy) = Policy::parse(text, "fuzz") else {
                return;
            };
            (policy, *provenance)
        }
        _ => (POLICY.clone(), data),
    };
    let _ = policy.check_provenance(&MANIFEST, Some(provenance));
});
