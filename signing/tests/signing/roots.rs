//! Trust roots: thresholds, rotation, revocation, expiry, consecutive
//! versions, and continuing from the root a device accepted.

use super::common::{FAR, chain, keys, root};
use outpost_signing::dsse::SignatureEntry;
use outpost_signing::root::TrustRoot;
use outpost_signing::time::Timestamp;
use outpost_signing::{Error, RejectReason};

fn now() -> Timestamp {
    Timestamp::now()
}

#[test]
fn threshold_not_met_names_each_rejected_signature() {
    let k = keys(4);
    let r1 = root(1, &[&k[0], &k[1], &k[2]], 2, FAR, &[&k[2]], &[&k[0], &k[1]]);
    let trust = TrustRoot::verify_chain(&chain(&[("root1.json", &r1)]), now()).unwrap();
    let message = b"manifest bytes";
    let other = b"other bytes";
    let signatures = vec![
        SignatureEntry::sign(&k[0], message),
        SignatureEntry::sign(&k[0], message), // the same key twice counts once
        SignatureEntry::sign(&k[1], other),
        SignatureEntry::sign(&k[2], message),
        SignatureEntry::sign(&k[3], message),
    ];
    let error = trust.check("bundle 'x'", message, &signatures).unwrap_err();
    assert!(error.has_revoked_key());
    let text = error.to_string();
    match error {
        Error::ThresholdNotMet {
            what,
            valid,
            required,
            rejected,
        } => {
            assert_eq!(what, "bundle 'x'");
            assert_eq!(valid, vec![k[0].public().id()]);
            assert_eq!(required, 2);
            assert_eq!(
                rejected,
                vec![
                    (k[1].public().id(), RejectReason::BadSignature),
                    (k[2].public().id(), RejectReason::Revoked),
                    (k[3].public().id(), RejectReason::UnknownKey),
                ]
            );
        }
        other => panic!("{other:?}"),
    }
    for part in [
        "threshold not met: 1 valid signature(s) of the 2 required",
        "key is revoked",
        "not a key of this root",
        "signature does not verify",
    ] {
        assert!(text.contains(part), "{text}");
    }
    let good = [
        SignatureEntry::sign(&k[0], message),
        SignatureEntry::sign(&k[1], message),
    ];
    assert_eq!(trust.check("x", message, &good).unwrap().valid.len(), 2);
}

#[test]
fn a_root_not_signed_by_its_own_threshold_is_refused() {
    let k = keys(3);
    let r1 = root(1, &[&k[0], &k[1], &k[2]], 2, FAR, &[], &[&k[0]]);
    match TrustRoot::verify_chain(&chain(&[("root1.json", &r1)]), now()) {
        Err(Error::RootNotSelfSigned {
            what,
            version: 1,
            valid,
            required: 2,
            ..
        }) => {
            assert_eq!(what, "root1.json");
            assert_eq!(valid.len(), 1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expired_root_is_refused_naming_the_clock() {
    let k = keys(1);
    let old = root(1, &[&k[0]], 1, "2020-01-01T00:00:00Z", &[], &[&k[0]]);
    let error = TrustRoot::verify_chain(&chain(&[("old.json", &old)]), now()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("expired at 2020-01-01T00:00:00Z; the clock used says"),
        "{error}"
    );
    match error {
        Error::RootExpired {
            version: 1,
            expires,
            now: at,
        } => assert!(at > expires),
        other => panic!("{other:?}"),
    }
    // An expired root is fine in the middle of a chain.
    let r2 = root(2, &[&k[0]], 1, FAR, &[], &[&k[0]]);
    let trust =
        TrustRoot::verify_chain(&chain(&[("old.json", &old), ("r2.json", &r2)]), now()).unwrap();
    assert_eq!(trust.version(), 2);
}

#[test]
fn rotation_needs_the_previous_threshold_and_the_next_version() {
    let k = keys(5);
    let r1 = root(1, &[&k[0], &k[1], &k[2]], 2, FAR, &[], &[&k[0], &k[1]]);
    let r2 = root(
        2,
        &[&k[2], &k[3]],
        2,
        FAR,
        &[],
        &[&k[0], &k[1], &k[2], &k[3]],
    );
    let trust = TrustRoot::verify_chain(&chain(&[("r1", &r1), ("r2", &r2)]), now()).unwrap();
    assert_eq!((trust.version(), trust.threshold()), (2, 2));

    // Signed only by its own keys.
    let evil = root(2, &[&k[3], &k[4]], 2, FAR, &[], &[&k[3], &k[4]]);
    match TrustRoot::verify_chain(&chain(&[("r1", &r1), ("evil", &evil)]), now()) {
        Err(error @ Error::RotationNotSigned { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains("rotation refused")
                    && text.contains("not signed by the previous root's keys"),
                "{text}"
            );
            let Error::RotationNotSigned {
                version,
                previous,
                valid,
                rejected,
                ..
            } = error
            else {
                unreachable!()
            };
            assert_eq!((version, previous, valid.len()), (2, 1, 0));
            assert!(
                rejected
                    .iter()
                    .all(|(_, why)| *why == RejectReason::UnknownKey)
            );
        }
        other => panic!("{other:?}"),
    }
    // Signed by the old threshold but not by its own.
    let half = root(2, &[&k[3], &k[4]], 2, FAR, &[], &[&k[0], &k[1], &k[3]]);
    assert!(matches!(
        TrustRoot::verify_chain(&chain(&[("r1", &r1), ("half", &half)]), now()),
        Err(Error::RootNotSelfSigned { version: 2, .. })
    ));
    // The same version, or one skipped, is a gap.
    let same = root(1, &[&k[0], &k[1]], 2, FAR, &[], &[&k[0], &k[1]]);
    assert!(matches!(
        TrustRoot::verify_chain(&chain(&[("r1", &r1), ("same", &same)]), now()),
        Err(Error::RootVersionGap {
            previous: 1,
            found: 1,
            ..
        })
    ));
    let r3 = root(3, &[&k[0], &k[1]], 2, FAR, &[], &[&k[0], &k[1]]);
    let error = TrustRoot::verify_chain(&chain(&[("r1", &r1), ("r3", &r3)]), now()).unwrap_err();
    assert!(
        error.to_string().contains(
            "r3: root version 3 does not follow version 1; the next root must be version 2"
        ),
        "{error}"
    );
    assert!(matches!(
        error,
        Error::RootVersionGap {
            previous: 1,
            found: 3,
            ..
        }
    ));
}

#[test]
fn a_revoked_key_no_longer_counts() {
    let k = keys(3);
    let r1 = root(1, &[&k[0], &k[1], &k[2]], 2, FAR, &[], &[&k[0], &k[1]]);
    let r2 = root(2, &[&k[0], &k[1], &k[2]], 2, FAR, &[&k[0]], &[&k[1], &k[2]]);
    let trust = TrustRoot::verify_chain(&chain(&[("r1", &r1), ("r2", &r2)]), now()).unwrap();
    assert!(trust.is_revoked(&k[0].public().id()));
    let message = b"m";
    let error = trust
        .check(
            "b",
            message,
            &[
                SignatureEntry::sign(&k[0], message),
                SignatureEntry::sign(&k[1], message),
            ],
        )
        .unwrap_err();
    assert!(error.has_revoked_key(), "{error}");
}

#[test]
fn no_root_at_all_is_its_own_error() {
    assert!(matches!(
        TrustRoot::verify_chain(&[], now()),
        Err(Error::NoTrustRoot)
    ));
}

/// Roots 1, 2, 3, each rotating to a new key set, as a device meets them.
struct Rotations {
    r1: Vec<u8>,
    r2: Vec<u8>,
    r3: Vec<u8>,
}

fn rotations() -> Rotations {
    let k = keys(4);
    Rotations {
        r1: root(1, &[&k[0], &k[1]], 1, FAR, &[], &[&k[0]]),
        r2: root(2, &[&k[1], &k[2]], 1, FAR, &[&k[0]], &[&k[0], &k[1]]),
        r3: root(3, &[&k[2], &k[3]], 1, FAR, &[], &[&k[1], &k[2]]),
    }
}

#[test]
fn continuing_from_the_accepted_root() {
    let r = rotations();
    let from = |accepted: Option<&Vec<u8>>, roots: &[(&str, &Vec<u8>)]| {
        TrustRoot::verify_chain_from(accepted.map(Vec::as_slice), &chain(roots), now())
    };
    // Nothing accepted: trust on first use, consecutive versions.
    let first = from(None, &[("r1", &r.r1), ("r2", &r.r2)]).unwrap();
    assert_eq!(first.version(), 2);
    assert_eq!(first.envelope(), r.r2.as_slice());
    assert_eq!(first.digest(), outpost_signing::Digest::of(&r.r2));

    // Version 2 accepted: the full chain again gives version 2.
    assert_eq!(
        from(Some(&r.r2), &[("r1", &r.r1), ("r2", &r.r2)])
            .unwrap()
            .version(),
        2
    );
    // ...and so does the accepted root alone, or no chain at all.
    assert_eq!(from(Some(&r.r2), &[("r2", &r.r2)]).unwrap().version(), 2);
    assert_eq!(from(Some(&r.r2), &[]).unwrap().version(), 2);
    // Moving on to 3, with or without the older roots before it.
    assert_eq!(from(Some(&r.r2), &[("r3", &r.r3)]).unwrap().version(), 3);
    assert_eq!(
        from(Some(&r.r2), &[("r1", &r.r1), ("r2", &r.r2), ("r3", &r.r3)])
            .unwrap()
            .version(),
        3
    );
    assert_eq!(
        from(Some(&r.r1), &[("r2", &r.r2), ("r3", &r.r3)])
            .unwrap()
            .version(),
        3
    );

    // An older root alone is a rollback, even though it has not expired.
    match from(Some(&r.r2), &[("r1", &r.r1)]) {
        Err(
            error @ Error::RootRollback {
                version: 1,
                accepted: 2,
                ..
            },
        ) => {
            assert!(error.to_string().contains("r1: trust root version 1 is older than version 2, which this device already accepted"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // An older root after the accepted one, too.
    assert!(matches!(
        from(Some(&r.r2), &[("r2", &r.r2), ("r1", &r.r1)]),
        Err(Error::RootRollback {
            version: 1,
            accepted: 2,
            ..
        })
    ));
    // Skipping a version from the accepted root is a gap.
    assert!(matches!(
        from(Some(&r.r1), &[("r3", &r.r3)]),
        Err(Error::RootVersionGap {
            previous: 1,
            found: 3,
            ..
        })
    ));
    // Going back after moving forward is a gap as well.
    assert!(matches!(
        from(Some(&r.r1), &[("r2", &r.r2), ("r1", &r.r1)]),
        Err(Error::RootVersionGap {
            previous: 2,
            found: 1,
            ..
        })
    ));
}

#[test]
fn the_accepted_version_must_be_byte_identical() {
    let r = rotations();
    let k = keys(1);
    let other2 = root(2, &[&k[0]], 1, FAR, &[], &[&k[0]]);
    match TrustRoot::verify_chain_from(Some(&r.r2), &chain(&[("other2", &other2)]), now()) {
        Err(Error::RootMismatch {
            what,
            version: 2,
            accepted,
            found,
        }) => {
            assert_eq!(what, "other2");
            assert_eq!(accepted, outpost_signing::Digest::of(&r.r2));
            assert_eq!(found, outpost_signing::Digest::of(&other2));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_corrupt_accepted_root_is_reported() {
    let r = rotations();
    let mut torn = r.r2.clone();
    torn.truncate(torn.len() / 2);
    assert!(matches!(
        TrustRoot::verify_chain_from(Some(&torn), &chain(&[("r2", &r.r2)]), now()),
        Err(Error::Malformed { .. })
    ));
    // A stored root whose signatures were tampered with.
    let k = keys(2);
    let unsigned = root(2, &[&k[0]], 1, FAR, &[], &[&k[1]]);
    assert!(matches!(
        TrustRoot::verify_chain_from(Some(&unsigned), &[], now()),
        Err(Error::RootNotSelfSigned { .. })
    ));
}

#[test]
fn an_expired_accepted_root_still_anchors_a_newer_one() {
    let k = keys(1);
    let old = root(1, &[&k[0]], 1, "2020-01-01T00:00:00Z", &[], &[&k[0]]);
    let new = root(2, &[&k[0]], 1, FAR, &[], &[&k[0]]);
    assert!(matches!(
        TrustRoot::verify_chain_from(Some(&old), &[], now()),
        Err(Error::RootExpired { version: 1, .. })
    ));
    let trust = TrustRoot::verify_chain_from(Some(&old), &chain(&[("new", &new)]), now()).unwrap();
    assert_eq!(trust.version(), 2);
}
