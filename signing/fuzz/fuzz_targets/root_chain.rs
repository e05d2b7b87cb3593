//! DSSE envelopes and trust-root chains: the input is `flag\n--\nroot\n--\nroot...`;
//! a flag of `1` makes the first root the device's accepted one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_signing::dsse::Envelope;
use outpost_signing::root::{ROOT_PAYLOAD_TYPE, TrustRoot};

fuzz_target!(|data: &[u8]| {
    let parts = outpost_signing_fuzz::parts(data);
    let (accepted, roots) = match parts.split_first() {
        Some((flag, rest)) if flag.first() == Some(&b'1') && !rest.is_empty() => {
            (Some(rest[0]), &rest[1..])
        }
        Some((_, rest)) => (None, rest),
        None => return,
    };
    for root in roots {
        if let Ok(envelope) = Envelope::parse(root, "fuzz", ROOT_PAYLOAD_TYPE) {
            let _ = envelope.signed_message("fuzz");
        }
    }
    let chain: Vec<(String, Vec<u8>)> = roots
        .iter()
        .enumerate()
        .map(|(i, bytes)| (format!("root{i}"), bytes.to_vec()))
        .collect();
    if let Ok(root) = TrustRoot::verify_chain_from(accepted, &chain, outpost_signing_fuzz::now()) {
        // The result never goes below the accepted root, and is what it says.
        if let Some(accepted) = accepted {
            let stored = TrustRoot::verify_chain_from(
                Some(accepted),
                &[],
                outpost_signing::time::Timestamp(i64::MIN),
            )
            .expect("an accepted root that anchored a chain verifies alone");
            assert!(root.version() >= stored.version());
        }
        assert_eq!(root.digest(), outpost_signing::Digest::of(root.envelope()));
    }
});
