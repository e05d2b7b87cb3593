//! Accepted bundle versions: rollbacks and changed content are refused.

use super::common::{Scratch, bundle_dir, keys, single_root};
use outpost_signing::Error;
use outpost_signing::bundle::VersionStore;

#[test]
fn an_older_version_or_other_content_under_the_same_version_is_refused() {
    let scratch = Scratch::new();
    let k = keys(1);
    let root = single_root(&k[0]);
    let v2 = bundle_dir(&scratch.path().join("v2"), "demo", 2, b"model 2", &[&k[0]])
        .verify(&root)
        .unwrap();
    let v1 = bundle_dir(&scratch.path().join("v1"), "demo", 1, b"model 1", &[&k[0]])
        .verify(&root)
        .unwrap();
    let v2b = bundle_dir(
        &scratch.path().join("v2b"),
        "demo",
        2,
        b"model 2b",
        &[&k[0]],
    )
    .verify(&root)
    .unwrap();
    let store = VersionStore::new(&scratch.path().join("accepted"));
    store.accept(&v2).unwrap();
    assert_eq!(
        store.accepted("demo").unwrap(),
        Some((2, v2.manifest_digest().to_string()))
    );
    // Accepting the same bundle again is fine.
    store.accept(&v2).unwrap();

    let error = store.check(&v1).unwrap_err();
    assert!(
        error.to_string().contains(
            "bundle 'demo' version 1 is older than version 2, which this device already accepted"
        ),
        "{error}"
    );
    assert!(matches!(
        error,
        Error::OlderVersion { ref bundle, version: 1, accepted: 2 } if bundle == "demo"
    ));

    let error = store.accept(&v2b).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("version 2 differs from the version 2 this device already accepted"),
        "{error}"
    );
    match error {
        Error::SameVersionDifferentContent {
            bundle,
            version: 2,
            accepted,
            found,
        } => {
            assert_eq!(bundle, "demo");
            assert_eq!(accepted, v2.manifest_digest().to_string());
            assert_eq!(found, v2b.manifest_digest().to_string());
        }
        other => panic!("{other:?}"),
    }
    // Nothing refused was recorded.
    assert_eq!(store.accepted("demo").unwrap().map(|(v, _)| v), Some(2));
}

#[test]
fn an_unsigned_bundle_does_not_verify() {
    let scratch = Scratch::new();
    let k = keys(2);
    let root = single_root(&k[0]);
    let unsigned = bundle_dir(scratch.path(), "demo", 1, b"m", &[]);
    assert!(matches!(
        unsigned.verify(&root),
        Err(Error::ThresholdNotMet { ref valid, required: 1, ref rejected, .. }) if valid.is_empty() && rejected.is_empty()
    ));
    let stranger = bundle_dir(&scratch.path().join("s"), "demo", 1, b"m", &[&k[1]]);
    match stranger.verify(&root) {
        Err(Error::ThresholdNotMet { what, rejected, .. }) => {
            assert_eq!(what, "bundle 'demo' version 1 (signatures.json)");
            assert_eq!(
                rejected,
                vec![(
                    k[1].public().id(),
                    outpost_signing::RejectReason::UnknownKey
                )]
            );
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a bundle signed by a stranger verified"),
    }
}
