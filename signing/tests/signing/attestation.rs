//! Provenance and device evidence refusals, as variants.

use super::common::{Scratch, bundle_dir, keys, single_root};
use outpost_signing::evidence::{Evidence, Expectation, RunningBundle, verify};
use outpost_signing::provenance::{Policy, SourceRef, attest};
use outpost_signing::time::Timestamp;
use outpost_signing::{Error, EvidenceCheck};

fn policy(builder_key: &outpost_signing::SecretKey, required: bool) -> Policy {
    Policy::parse(
        &format!(
            "[provenance]\nrequired = {required}\n[[provenance.builders]]\nid = \"ci\"\nkey = \"{}\"\n",
            builder_key.public()
        ),
        "policy.toml",
    )
    .unwrap()
}

fn source() -> SourceRef {
    SourceRef {
        repository: "https://git.example/x".into(),
        commit: "abc".into(),
    }
}

#[test]
fn provenance_refusals_are_variants() {
    let scratch = Scratch::new();
    let k = keys(3);
    let root = single_root(&k[0]);
    let dir = scratch.path().join("b");
    let mut bundle = bundle_dir(&dir, "demo", 1, b"model", &[&k[0]]);

    let required = policy(&k[1], true);
    let verified = outpost_signing::bundle::Bundle::open_dir(&dir)
        .unwrap()
        .verify(&root)
        .unwrap();
    assert!(matches!(
        required.check(&verified),
        Err(Error::ProvenanceMissing { .. })
    ));
    assert!(matches!(
        Policy::parse("[provenance]\nrequired = true\n", "p")
            .unwrap()
            .check(&verified),
        Err(Error::ProvenanceNoBuilders)
    ));

    // Signed by a key the policy does not trust.
    bundle
        .attach_provenance(&attest(&bundle, &k[2], "ci", source()).unwrap())
        .unwrap();
    let verified = outpost_signing::bundle::Bundle::open_dir(&dir)
        .unwrap()
        .verify(&root)
        .unwrap();
    assert!(matches!(
        required.check(&verified),
        Err(Error::ProvenanceUntrusted { .. })
    ));

    // The trusted key, claiming another builder.
    bundle
        .attach_provenance(&attest(&bundle, &k[1], "elsewhere", source()).unwrap())
        .unwrap();
    let verified = outpost_signing::bundle::Bundle::open_dir(&dir)
        .unwrap()
        .verify(&root)
        .unwrap();
    assert!(matches!(
        required.check(&verified),
        Err(Error::ProvenanceBuilderMismatch { ref signer, ref claimed, .. }) if signer == "ci" && claimed == "elsewhere"
    ));

    // Genuine provenance of another bundle does not cover this one's model.
    let other_dir = scratch.path().join("other");
    let other = bundle_dir(&other_dir, "demo", 1, b"another model", &[&k[0]]);
    bundle
        .attach_provenance(&attest(&other, &k[1], "ci", source()).unwrap())
        .unwrap();
    let verified = outpost_signing::bundle::Bundle::open_dir(&dir)
        .unwrap()
        .verify(&root)
        .unwrap();
    assert!(matches!(
        required.check(&verified),
        Err(Error::ProvenanceNotCovered { ref name, .. }) if name == "pipeline.toml" || name == "model.onnx"
    ));

    bundle
        .attach_provenance(&attest(&bundle, &k[1], "ci", source()).unwrap())
        .unwrap();
    let verified = outpost_signing::bundle::Bundle::open_dir(&dir)
        .unwrap()
        .verify(&root)
        .unwrap();
    assert_eq!(required.check(&verified).unwrap().unwrap().builder, "ci");
}

#[test]
fn evidence_refusals_are_variants() {
    let device = keys(2);
    let evidence = Evidence {
        host_version: "0".into(),
        host_binary: outpost_signing::Digest::of(b"host").to_string(),
        device_key: device[0].public().to_string(),
        device_key_id: device[0].public().id().to_string(),
        bundle: None::<RunningBundle>,
        nonce: "n1".into(),
        timestamp: Timestamp::now().to_string(),
    };
    let signed = evidence.sign(&device[0]).unwrap().to_json().into_bytes();
    let public = device[0].public();
    let expect = |nonce: &'static str, max_age_s: i64| Expectation {
        device: &public,
        nonce,
        bundle: None,
        max_age_s,
        now: Timestamp::now(),
    };
    assert_eq!(verify(&signed, &expect("n1", 60)).unwrap(), evidence);
    assert!(matches!(
        verify(&signed, &expect("n2", 60)),
        Err(Error::EvidenceMismatch {
            check: EvidenceCheck::Nonce,
            ..
        })
    ));
    let other = device[1].public();
    assert!(matches!(
        verify(&signed, &Expectation { device: &other, ..expect("n1", 60) }),
        Err(Error::EvidenceNotSigned { ref key }) if *key == other.id()
    ));
    let stale = Expectation {
        now: Timestamp(Timestamp::now().0 + 3600),
        ..expect("n1", 60)
    };
    assert!(matches!(
        verify(&signed, &stale),
        Err(Error::EvidenceMismatch {
            check: EvidenceCheck::Age,
            ..
        })
    ));
}
