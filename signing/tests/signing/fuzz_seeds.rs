//! Writes the fixtures and seed corpora of the fuzz targets in
//! `signing/fuzz/` from real documents: run by hand with
//! `cargo test -p outpost-signing --test signing -- --ignored write_fuzz_seeds`.
//! New keys each time, so every fixture is rewritten together.

use super::common::{FAR, Scratch, bundle_dir, keys, root};
use outpost_signing::bundle::Bundle;
use outpost_signing::evidence::{Evidence, RunningBundle};
use outpost_signing::provenance::{SourceRef, attest};
use std::collections::BTreeMap;
use std::path::Path;

/// The instant the fuzz targets take as "now" (expiry, evidence age).
const FUZZ_NOW: &str = "2027-01-15T00:00:00Z";

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
#[ignore = "rewrites signing/fuzz/fixtures and signing/fuzz/seeds; run by hand"]
fn write_fuzz_seeds() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let fixtures = fuzz.join("fixtures");
    let seeds = fuzz.join("seeds");
    let k = keys(4);
    let (a, b, builder, device) = (&k[0], &k[1], &k[2], &k[3]);
    let root1 = root(1, &[a, b], 1, FAR, &[], &[a, b]);
    let root2 = root(2, &[a, b], 2, FAR, &[a], &[a, b]);

    let scratch = Scratch::new();
    let dir = scratch.path().join("bundle");
    let mut bundle = bundle_dir(&dir, "fuzz-demo", 3, b"tiny model", &[a, b]);
    let source = SourceRef {
        repository: "https://git.example/outpost".into(),
        commit: "0123abcd".into(),
    };
    bundle
        .attach_provenance(&attest(&bundle, builder, "https://ci.example/builder", source).unwrap())
        .unwrap();
    let archive = scratch.path().join("bundle.tar");
    outpost_signing::archive::pack(&dir, &archive).unwrap();
    let bundle = Bundle::open_dir(&dir).unwrap();
    let manifest = bundle.manifest();
    let policy = format!(
        "[provenance]\nrequired = true\n[[provenance.builders]]\nid = \"https://ci.example/builder\"\nkey = \"{}\"\n",
        builder.public()
    );
    let model = manifest
        .blobs
        .iter()
        .find(|(_, blob)| blob.kind == outpost_signing::manifest::BlobKind::Model)
        .map(|(digest, _)| digest.clone())
        .unwrap();
    let evidence = Evidence {
        host_version: "0.1.0".into(),
        host_binary: outpost_signing::Digest::of(b"outpost").to_string(),
        device_key: device.public().to_string(),
        device_key_id: device.public().id().to_string(),
        bundle: Some(RunningBundle {
            name: manifest.bundle.name.clone(),
            version: manifest.bundle.version,
            manifest: bundle.manifest_digest().to_string(),
            stages: BTreeMap::new(),
            precompiled: BTreeMap::new(),
            models: BTreeMap::from([("m".to_owned(), model)]),
        }),
        nonce: "fuzz-nonce".into(),
        timestamp: FUZZ_NOW.into(),
    };
    let evidence = evidence.sign(device).unwrap().to_json();

    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let archive = std::fs::read(&archive).unwrap();
    for (name, bytes) in [
        ("root1.json", root1.clone()),
        ("root2.json", root2.clone()),
        ("manifest.toml", read("manifest.toml")),
        ("signatures.json", read("signatures.json")),
        ("provenance.json", read("provenance.json")),
        ("policy.toml", policy.clone().into_bytes()),
        ("device.pub", format!("{}\n", device.public()).into_bytes()),
        ("evidence.json", evidence.clone().into_bytes()),
        ("bundle.tar", archive.clone()),
    ] {
        write(&fixtures.join(name), &bytes);
    }

    let chain = |parts: &[&[u8]]| parts.join(b"\n--\n".as_slice());
    for (target, name, bytes) in [
        ("manifest", "manifest.toml", read("manifest.toml")),
        ("signatures", "signatures.json", read("signatures.json")),
        ("root_chain", "root1", chain(&[b"0", &root1])),
        ("root_chain", "root1-root2", chain(&[b"0", &root1, &root2])),
        (
            "root_chain",
            "accepted-root1-then-root2",
            chain(&[b"1", &root1, &root2]),
        ),
        ("provenance", "provenance.json", read("provenance.json")),
        (
            "provenance",
            "policy-and-provenance",
            chain(&[policy.as_bytes(), &read("provenance.json")]),
        ),
        ("evidence", "evidence.json", evidence.into_bytes()),
        ("archive", "bundle.tar", archive),
    ] {
        write(&seeds.join(target).join(name), &bytes);
    }
}
