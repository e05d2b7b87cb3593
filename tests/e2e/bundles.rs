//! Signed bundles: the host runs a bundle only when its signatures meet the
//! trust root's threshold, every blob matches the signed manifest, and its
//! version is not older than one already accepted.

use outpost_e2e::{Run, Scratch, demo_dir, outpost};
use outpost_signing::bundle::Bundle;
use outpost_signing::manifest::{BlobEntry, BlobKind, BundleInfo, Manifest};
use outpost_signing::root::TrustRoot;
use outpost_signing::time::Timestamp;
use outpost_signing::{Digest, SecretKey};
use std::path::{Path, PathBuf};

/// Keys `a`, `b`, `c` and a root (version 1, threshold 2) signed by all three.
pub(crate) struct Publisher {
    scratch: Scratch,
}

impl Publisher {
    pub(crate) fn new() -> Self {
        let publisher = Publisher {
            scratch: Scratch::new(),
        };
        for name in ["a", "b", "c", "d", "e"] {
            let run = outpost(&[
                "keygen".as_ref(),
                "--out".as_ref(),
                publisher.key(name).as_os_str(),
            ]);
            assert!(run.ok && run.stdout.contains("key id:"), "{}", run.stderr);
        }
        publisher
            .root(
                "root1.json",
                1,
                &["a", "b", "c"],
                2,
                "2099-01-01T00:00:00Z",
                &[],
                &["a", "b", "c"],
            )
            .assert_ok();
        publisher
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    fn key(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}.key"))
    }

    fn key_id(&self, name: &str) -> String {
        SecretKey::load(&self.key(name))
            .unwrap()
            .public()
            .id()
            .to_string()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn root(
        &self,
        out: &str,
        version: u64,
        keys: &[&str],
        threshold: u32,
        expires: &str,
        revoke: &[&str],
        signers: &[&str],
    ) -> Run {
        let mut args: Vec<String> = vec![
            "root".into(),
            "--threshold".into(),
            threshold.to_string(),
            "--expires".into(),
            expires.into(),
            "--version".into(),
            version.to_string(),
        ];
        for k in keys {
            args.extend(["--key".into(), format!("{}.pub", self.key(k).display())]);
        }
        for k in revoke {
            args.extend(["--revoke".into(), self.key_id(k)]);
        }
        for k in signers {
            args.extend(["--sign".into(), self.key(k).display().to_string()]);
        }
        args.extend(["--out".into(), self.path(out).display().to_string()]);
        outpost(&args)
    }

    /// The pipeline file `pipeline` as bundle `dir` named `name`, version
    /// `version`, signed by `signers`.
    pub(crate) fn bundle(
        &self,
        pipeline: &Path,
        name: &str,
        version: u64,
        dir: &str,
        signers: &[&str],
    ) -> PathBuf {
        self.bundle_with(pipeline, name, version, dir, signers, &[])
    }

    /// [`Publisher::bundle`] with more `outpost bundle` arguments.
    pub(crate) fn bundle_with(
        &self,
        pipeline: &Path,
        name: &str,
        version: u64,
        dir: &str,
        signers: &[&str],
        extra: &[&str],
    ) -> PathBuf {
        let out = self.path(dir);
        let version = version.to_string();
        let mut args = vec![
            "bundle".as_ref(),
            pipeline.as_os_str(),
            "--name".as_ref(),
            name.as_ref(),
            "--version".as_ref(),
            version.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        outpost(&args).assert_ok();
        self.sign(&out, signers);
        out
    }

    /// Adds signatures by `signers` to the bundle directory `out`.
    pub(crate) fn sign(&self, out: &Path, signers: &[&str]) {
        for s in signers {
            outpost(&[
                "sign".as_ref(),
                out.as_os_str(),
                "--key".as_ref(),
                self.key(s).as_os_str(),
            ])
            .assert_ok();
        }
    }

    /// The demo pipeline as bundle `dir`, version `version`, signed by `signers`.
    pub(crate) fn demo_bundle(&self, dir: &str, version: u64, signers: &[&str]) -> PathBuf {
        self.bundle(
            &demo_dir().join("intent.toml"),
            "intent-demo",
            version,
            dir,
            signers,
        )
    }

    pub(crate) fn trust_args(&self, roots: &[&str]) -> Vec<String> {
        let mut args = Vec::new();
        for r in roots {
            args.extend(["--trust".into(), self.path(r).display().to_string()]);
        }
        args.extend([
            "--state-dir".into(),
            self.path("state").display().to_string(),
        ]);
        args
    }

    /// `verify` on a device of its own, which has accepted no root yet.
    fn verify_fresh(&self, bundle: &Path, roots: &[&str]) -> Run {
        static FRESH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = FRESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut args = vec!["verify".to_owned(), bundle.display().to_string()];
        for r in roots {
            args.extend(["--trust".into(), self.path(r).display().to_string()]);
        }
        args.extend([
            "--state-dir".into(),
            self.path(&format!("fresh-state-{n}")).display().to_string(),
        ]);
        outpost(&args)
    }

    fn verify(&self, bundle: &Path, roots: &[&str]) -> Run {
        let mut args = vec!["verify".to_owned(), bundle.display().to_string()];
        args.extend(self.trust_args(roots));
        outpost(&args)
    }

    fn run(&self, bundle: &Path, roots: &[&str]) -> Run {
        let mut args = vec![
            "run".to_owned(),
            bundle.display().to_string(),
            "-i".into(),
            "stop the conveyor".into(),
        ];
        args.extend(self.trust_args(roots));
        outpost(&args)
    }
}

pub(crate) trait AssertOk {
    fn assert_ok(&self);
}

impl AssertOk for Run {
    fn assert_ok(&self) {
        assert!(
            self.ok,
            "expected success:\n{}\n{}",
            self.stdout, self.stderr
        );
    }
}

pub(crate) fn top_label(run: &Run) -> String {
    run.assert_ok();
    run.json()["results"][0]["outputs"]["labels"]
        .as_str()
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn a_signed_bundle_verifies_and_runs_as_directory_and_archive() {
    let p = Publisher::new();
    let bundle = p.demo_bundle("v1", 1, &["a", "b"]);
    let verify = p.verify(&bundle, &["root1.json"]);
    verify.assert_ok();
    assert!(
        verify.stdout.contains(&p.key_id("a")) && verify.stdout.contains(&p.key_id("b")),
        "{}",
        verify.stdout
    );
    assert!(
        verify.stdout.contains("threshold met")
            && verify
                .stdout
                .contains("stage 'infer' may load models [\"intent\"]")
    );
    assert_eq!(top_label(&p.run(&bundle, &["root1.json"])), "stop_conveyor");

    let archive = p.path("v1.bundle");
    outpost(&[
        "pack".as_ref(),
        bundle.as_os_str(),
        "--out".as_ref(),
        archive.as_os_str(),
    ])
    .assert_ok();
    assert_eq!(
        top_label(&p.run(&archive, &["root1.json"])),
        "stop_conveyor"
    );
}

#[test]
fn unsigned_pipelines_need_the_explicit_flag() {
    outpost(&["run", "host/pipelines/demo/intent.toml", "-i", "land"])
        .expect_error(&["unsigned pipeline file", "--insecure-unsigned"]);
    let run = outpost(&[
        "run",
        "--insecure-unsigned",
        "host/pipelines/demo/intent.toml",
        "-i",
        "land",
    ]);
    run.assert_ok();
    assert!(
        run.stderr.contains("warning: --insecure-unsigned"),
        "{}",
        run.stderr
    );
}

#[test]
fn threshold_two_of_three() {
    let p = Publisher::new();
    let one = p.demo_bundle("one", 1, &["a"]);
    p.verify(&one, &["root1.json"]).expect_error(&[
        "threshold not met",
        "1 valid signature(s) of the 2 required",
    ]);
    p.run(&one, &["root1.json"])
        .expect_error(&["threshold not met"]);
    let stranger = p.demo_bundle("stranger", 1, &["a", "d"]);
    p.verify(&stranger, &["root1.json"]).expect_error(&[
        "threshold not met",
        &p.key_id("d"),
        "not a key of this root",
    ]);
    let three = p.demo_bundle("three", 1, &["a", "b", "c"]);
    p.verify(&three, &["root1.json"]).assert_ok();
}

#[test]
fn rotation_and_revocation() {
    let p = Publisher::new();
    // Version 2 trusts b, c, d; signed by the old threshold (a, b) and its own (c, d).
    p.root(
        "root2.json",
        2,
        &["b", "c", "d"],
        2,
        "2099-01-01T00:00:00Z",
        &[],
        &["a", "b", "c", "d"],
    )
    .assert_ok();
    let bundle = p.demo_bundle("cd", 1, &["c", "d"]);
    p.verify(&bundle, &["root1.json", "root2.json"]).assert_ok();
    // This device now holds root version 2 and moves forward only: the
    // older root alone is refused, whatever it would allow.
    p.verify(&bundle, &["root1.json"])
        .expect_error(&["trust root version 1 is older than version 2"]);
    // The chain checks below are made on devices that hold no root yet.
    // Without the rotation, d is unknown.
    p.verify_fresh(&bundle, &["root1.json"])
        .expect_error(&["threshold not met"]);

    // A rotation signed only by new keys is refused.
    p.root(
        "evil.json",
        2,
        &["d", "e"],
        2,
        "2099-01-01T00:00:00Z",
        &[],
        &["d", "e"],
    )
    .assert_ok();
    p.verify_fresh(&bundle, &["root1.json", "evil.json"])
        .expect_error(&["rotation refused", "not signed by the previous root's keys"]);
    // A rotation must increase the version.
    p.root(
        "same.json",
        1,
        &["b", "c", "d"],
        2,
        "2099-01-01T00:00:00Z",
        &[],
        &["a", "b", "c", "d"],
    )
    .assert_ok();
    p.verify_fresh(&bundle, &["root1.json", "same.json"])
        .expect_error(&["does not follow version 1"]);

    // Versions are consecutive (TUF): version 3 cannot follow version 1.
    p.root(
        "root3.json",
        3,
        &["b", "c", "d"],
        2,
        "2099-01-01T00:00:00Z",
        &[],
        &["a", "b", "c", "d"],
    )
    .assert_ok();
    p.verify_fresh(&bundle, &["root1.json", "root3.json"])
        .expect_error(&[
            "root version 3 does not follow version 1",
            "must be version 2",
        ]);

    // A version 2 that revokes a: a's signature no longer counts.
    p.root(
        "revoke-a.json",
        2,
        &["a", "b", "c"],
        2,
        "2099-01-01T00:00:00Z",
        &["a"],
        &["b", "c"],
    )
    .assert_ok();
    let ab = p.demo_bundle("ab", 1, &["a", "b"]);
    p.verify_fresh(&ab, &["root1.json", "revoke-a.json"])
        .expect_error(&["threshold not met", &p.key_id("a"), "key is revoked"]);
}

#[test]
fn an_expired_root_is_refused_naming_the_clock() {
    let p = Publisher::new();
    p.root(
        "old.json",
        1,
        &["a", "b"],
        1,
        "2020-01-01T00:00:00Z",
        &[],
        &["a", "b"],
    )
    .assert_ok();
    let bundle = p.demo_bundle("v1", 1, &["a"]);
    let run = p.verify(&bundle, &["old.json"]);
    run.expect_error(&["expired at 2020-01-01T00:00:00Z", "the clock used says 20"]);
}

#[test]
fn replaying_an_older_version_is_refused() {
    let p = Publisher::new();
    let v1 = p.demo_bundle("v1", 1, &["a", "b"]);
    let v2 = p.demo_bundle("v2", 2, &["a", "b"]);
    assert_eq!(top_label(&p.run(&v2, &["root1.json"])), "stop_conveyor");
    p.run(&v1, &["root1.json"])
        .expect_error(&["version 1 is older than version 2"]);
    // The same version again is fine; a different bundle under version 2 is not.
    assert_eq!(top_label(&p.run(&v2, &["root1.json"])), "stop_conveyor");
    // A different pipeline published under the same version 2 is refused.
    let text = std::fs::read_to_string(demo_dir().join("intent.toml")).unwrap();
    let plugins = outpost_e2e::target_dir().join("wasm32-wasip2/plugin");
    let changed = text
        .replace("top_k = 3", "top_k = 2")
        .replace(
            "../../../target/wasm32-wasip2/plugin",
            &plugins.display().to_string(),
        )
        .replace(
            "\"intent.onnx\"",
            &format!("\"{}\"", demo_dir().join("intent.onnx").display()),
        )
        .replace(
            "\"vocab.txt\"",
            &format!("\"{}\"", demo_dir().join("vocab.txt").display()),
        )
        .replace(
            "\"labels.txt\"",
            &format!("\"{}\"", demo_dir().join("labels.txt").display()),
        );
    let pipeline = p.scratch.write("changed.toml", changed);
    let v2b = p.bundle(&pipeline, "intent-demo", 2, "v2b", &["a", "b"]);
    p.run(&v2b, &["root1.json"])
        .expect_error(&["version 2 differs from the version 2 this device already accepted"]);
}

#[test]
fn swapped_truncated_and_appended_bundles_are_refused() {
    let p = Publisher::new();
    let bundle = p.demo_bundle("v1", 1, &["a", "b"]);
    let other = p.demo_bundle("v2", 2, &["a", "b"]);

    // Swap two blobs' contents.
    let copy = p.path("swapped");
    copy_dir(&bundle, &copy);
    let blobs: Vec<PathBuf> = std::fs::read_dir(copy.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let (x, y) = (
        std::fs::read(&blobs[0]).unwrap(),
        std::fs::read(&blobs[1]).unwrap(),
    );
    std::fs::write(&blobs[0], &y).unwrap();
    std::fs::write(&blobs[1], &x).unwrap();
    p.verify(&copy, &["root1.json"])
        .expect_error(&["blob sha256:", "the manifest says"]);

    // The manifest and signatures of another (validly signed) bundle over these blobs:
    // same blobs, so it verifies as that bundle, never as a mix. Make the blob sets differ first.
    let mixed = p.path("mixed");
    copy_dir(&bundle, &mixed);
    std::fs::copy(other.join("manifest.toml"), mixed.join("manifest.toml")).unwrap();
    let first = std::fs::read_dir(mixed.join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(&first).unwrap();
    p.verify(&mixed, &["root1.json"])
        .expect_error(&["threshold not met"]);
    std::fs::copy(other.join("signatures.json"), mixed.join("signatures.json")).unwrap();
    p.verify(&mixed, &["root1.json"])
        .expect_error(&["blob sha256:", "cannot read"]);

    // Truncated and appended archives and blobs.
    let archive = p.path("v1.bundle");
    outpost(&[
        "pack".as_ref(),
        bundle.as_os_str(),
        "--out".as_ref(),
        archive.as_os_str(),
    ])
    .assert_ok();
    let bytes = std::fs::read(&archive).unwrap();
    let cut = p.path("cut.bundle");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    p.verify(&cut, &["root1.json"])
        .expect_error(&["cut.bundle"]);
    let mut longer = bytes.clone();
    longer.splice(1024..1024, b"appended".iter().copied());
    let grown = p.path("grown.bundle");
    std::fs::write(&grown, &longer).unwrap();
    assert!(!p.verify(&grown, &["root1.json"]).ok);
    let appended = p.path("appended");
    copy_dir(&bundle, &appended);
    let blob = std::fs::read_dir(appended.join("blobs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut content = std::fs::read(&blob).unwrap();
    content.push(0);
    std::fs::write(&blob, &content).unwrap();
    p.verify(&appended, &["root1.json"])
        .expect_error(&["blob sha256:", "or more"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("blobs")).unwrap();
    for name in ["manifest.toml", "signatures.json"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
    for entry in std::fs::read_dir(from.join("blobs")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("blobs").join(entry.file_name())).unwrap();
    }
}

/// A small bundle made with the library: the demo's model, vocabulary,
/// labels and a pipeline file, signed by two keys of a 2-of-2 root.
fn small_signed_bundle(dir: &Path) -> (TrustRoot, Vec<PathBuf>) {
    let keys = [
        SecretKey::generate().unwrap(),
        SecretKey::generate().unwrap(),
    ];
    let body = outpost_signing::root::RootBody {
        version: 1,
        expires: "2099-01-01T00:00:00Z".into(),
        threshold: 2,
        keys: keys
            .iter()
            .map(|k| outpost_signing::root::RootKey {
                public: k.public().to_string(),
                name: None,
            })
            .collect(),
        revoked: vec![],
    };
    let mut envelope = body.to_envelope().unwrap();
    for k in &keys {
        envelope.sign(k, "root").unwrap();
    }
    let root = TrustRoot::verify_chain(
        &[("root".into(), envelope.to_json().into_bytes())],
        Timestamp::now(),
    )
    .unwrap();

    let mut blobs = Vec::new();
    let mut entries = std::collections::BTreeMap::new();
    for (name, kind) in [
        ("intent.onnx", BlobKind::Model),
        ("vocab.txt", BlobKind::File),
        ("labels.txt", BlobKind::File),
        ("intent.toml", BlobKind::Pipeline),
    ] {
        let bytes = std::fs::read(demo_dir().join(name)).unwrap();
        let digest = Digest::of(&bytes);
        entries.insert(
            digest.to_string(),
            BlobEntry {
                size: bytes.len() as u64,
                kind,
                name: name.into(),
                precompiled: None,
            },
        );
        blobs.push((digest, bytes));
    }
    let pipeline = blobs[3].0.to_string();
    let manifest = Manifest {
        bundle: BundleInfo {
            name: "small".into(),
            version: 1,
            pipeline,
        },
        blobs: entries,
        grants: Default::default(),
    };
    let mut bundle = Bundle::create(dir, &manifest, &blobs).unwrap();
    for k in &keys {
        bundle.sign(k).unwrap();
    }
    let mut files = vec![dir.join("manifest.toml"), dir.join("signatures.json")];
    files.extend(blobs.iter().map(|(d, _)| dir.join("blobs").join(d.hex())));
    (root, files)
}

fn check(dir: &Path, root: &TrustRoot) -> Result<(), String> {
    let bundle = Bundle::open_dir(dir).map_err(|e| e.to_string())?;
    let verified = bundle.verify(root).map_err(|e| e.to_string())?;
    verified.check_all_blobs().map_err(|e| e.to_string())
}

#[test]
fn every_single_byte_flip_is_refused_and_named() {
    let scratch = Scratch::new();
    let (root, files) = small_signed_bundle(scratch.path());
    check(scratch.path(), &root).unwrap();
    let mut flips = 0;
    for file in &files {
        let original = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for i in 0..original.len() {
            let mut bytes = original.clone();
            bytes[i] ^= 0x01;
            std::fs::write(file, &bytes).unwrap();
            let error = check(scratch.path(), &root)
                .expect_err(&format!("{name}: flipping byte {i} was accepted"));
            let named = match name.as_str() {
                "manifest.toml" => {
                    error.contains("manifest.toml") || error.contains("threshold not met")
                }
                "signatures.json" => error.contains("signatures.json"),
                blob => error.contains(blob),
            };
            assert!(
                named,
                "{name} byte {i}: the error does not say what failed: {error}"
            );
            flips += 1;
        }
        std::fs::write(file, &original).unwrap();
    }
    check(scratch.path(), &root).unwrap();
    assert!(flips > 5000, "{flips}");
}

fn policy(p: &Publisher, builder_key: &str) -> PathBuf {
    let public = SecretKey::load(&p.key(builder_key)).unwrap().public();
    p.scratch.write(
        "policy.toml",
        format!("[provenance]\nrequired = true\n[[provenance.builders]]\nid = \"https://ci.example/builder\"\nkey = \"{public}\"\n"),
    )
}

fn provenance(p: &Publisher, bundle: &Path, key: &str, builder: &str) -> Run {
    outpost(&[
        "provenance".as_ref(),
        bundle.as_os_str(),
        "--key".as_ref(),
        p.key(key).as_os_str(),
        "--builder".as_ref(),
        builder.as_ref(),
        "--repo".as_ref(),
        "https://git.example/outpost".as_ref(),
        "--commit".as_ref(),
        "0123abcd".as_ref(),
    ])
}

fn verify_with_policy(p: &Publisher, bundle: &Path, policy: &Path) -> Run {
    let mut args = vec![
        "verify".to_owned(),
        bundle.display().to_string(),
        "--policy".into(),
        policy.display().to_string(),
    ];
    args.extend(p.trust_args(&["root1.json"]));
    outpost(&args)
}

#[test]
fn a_policy_requiring_provenance() {
    let p = Publisher::new();
    let policy = policy(&p, "e");
    let bundle = p.demo_bundle("v1", 1, &["a", "b"]);
    verify_with_policy(&p, &bundle, &policy)
        .expect_error(&["has no provenance.json", "https://ci.example/builder"]);

    provenance(&p, &bundle, "e", "https://ci.example/builder").assert_ok();
    let run = verify_with_policy(&p, &bundle, &policy);
    run.assert_ok();
    assert!(
        run.stdout.contains(
            "built by 'https://ci.example/builder' from https://git.example/outpost at 0123abcd"
        ),
        "{}",
        run.stdout
    );
    let mut args = vec![
        "run".to_owned(),
        bundle.display().to_string(),
        "-i".into(),
        "land".into(),
        "--policy".into(),
        policy.display().to_string(),
    ];
    args.extend(p.trust_args(&["root1.json"]));
    assert_eq!(top_label(&outpost(&args)), "land");

    // Signed by a key the policy does not trust, claiming the trusted builder.
    let forged = p.demo_bundle("forged", 1, &["a", "b"]);
    provenance(&p, &forged, "d", "https://ci.example/builder").assert_ok();
    verify_with_policy(&p, &forged, &policy)
        .expect_error(&["not signed by any builder the policy trusts"]);

    // The trusted builder's key, claiming to be another builder.
    let other = p.demo_bundle("other", 1, &["a", "b"]);
    provenance(&p, &other, "e", "https://elsewhere.example/builder").assert_ok();
    verify_with_policy(&p, &other, &policy)
        .expect_error(&["claims to come from builder 'https://elsewhere.example/builder'"]);

    // Genuine provenance of another bundle does not cover this one's blobs.
    let changed = p.path("changed");
    copy_dir(&bundle, &changed);
    let mut text = std::fs::read_to_string(changed.join("manifest.toml")).unwrap();
    text = text.replace("version = 1", "version = 7");
    std::fs::write(changed.join("manifest.toml"), text).unwrap();
    for s in ["a", "b"] {
        outpost(&[
            "sign".as_ref(),
            changed.as_os_str(),
            "--key".as_ref(),
            p.key(s).as_os_str(),
        ])
        .assert_ok();
    }
    // Same blobs, new manifest: provenance over digests still holds...
    std::fs::copy(
        bundle.join("provenance.json"),
        changed.join("provenance.json"),
    )
    .unwrap();
    verify_with_policy(&p, &changed, &policy).assert_ok();
    // ...but not over a bundle with a different component.
    let pipeline = p.scratch.write(
        "fail.toml",
        format!(
            "[pipeline]\nname = \"f\"\ninputs = [\"x\"]\n[[stages]]\nname = \"s\"\ncomponent = \"{}\"\nconfig = {{ mode = \"ok\" }}\n",
            outpost_e2e::plugin("fail").display()
        ),
    );
    let fail_bundle = p.bundle(&pipeline, "f", 1, "fail-bundle", &["a", "b"]);
    std::fs::copy(
        bundle.join("provenance.json"),
        fail_bundle.join("provenance.json"),
    )
    .unwrap();
    verify_with_policy(&p, &fail_bundle, &policy)
        .expect_error(&["provenance does not cover blob", "it was not built by"]);
}

#[test]
fn device_evidence() {
    let p = Publisher::new();
    let bundle = p.demo_bundle("v1", 1, &["a", "b"]);
    assert_eq!(top_label(&p.run(&bundle, &["root1.json"])), "stop_conveyor");
    let state = p.path("state");
    let device_key = state.join("device.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&device_key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let attest = outpost(&[
        "attest".as_ref(),
        "--nonce".as_ref(),
        "n-42".as_ref(),
        "--state-dir".as_ref(),
        state.as_os_str(),
    ]);
    attest.assert_ok();
    let evidence = p.scratch.write("evidence.json", &attest.stdout);

    let verify = |nonce: &str, key: &Path, bundle: &Path| {
        let mut args = vec![
            "verify-evidence".to_owned(),
            evidence.display().to_string(),
            "--device-key".into(),
            key.display().to_string(),
            "--nonce".into(),
            nonce.into(),
            "--bundle".into(),
            bundle.display().to_string(),
        ];
        args.extend(p.trust_args(&["root1.json"]));
        outpost(&args)
    };
    let public = outpost_signing::keys::public_path(&device_key);
    let ok = verify("n-42", &public, &bundle);
    ok.assert_ok();
    assert!(
        ok.stdout
            .contains("runs bundle 'intent-demo' version 1 (3 stages, 1 models)"),
        "{}",
        ok.stdout
    );
    verify("n-43", &public, &bundle).expect_error(&["nonce 'n-42' is not the 'n-43' sent"]);
    verify("n-42", &p.path("a.key.pub"), &bundle).expect_error(&["not signed by device key"]);
    let v2 = p.demo_bundle("v2", 2, &["a", "b"]);
    verify("n-42", &public, &v2)
        .expect_error(&["runs 'intent-demo' version 1; expected 'intent-demo' version 2"]);

    // Evidence, correctly signed by the device, naming a stage digest the
    // bundle does not have.
    let envelope: outpost_signing::dsse::Envelope = serde_json::from_str(&attest.stdout).unwrap();
    let mut claims: outpost_signing::evidence::Evidence =
        serde_json::from_slice(&envelope.payload_bytes("e").unwrap()).unwrap();
    let running = claims.bundle.as_mut().unwrap();
    *running.stages.get_mut("infer").unwrap() = Digest::of(b"something else").to_string();
    let device = SecretKey::load(&device_key).unwrap();
    std::fs::write(&evidence, claims.sign(&device).unwrap().to_json()).unwrap();
    verify("n-42", &public, &bundle).expect_error(&[
        "stage 'infer' runs sha256:",
        "not a stage of the expected bundle",
    ]);
}

#[test]
fn the_component_cache_is_used_and_survives_corruption() {
    let p = Publisher::new();
    let bundle = p.demo_bundle("v1", 1, &["a", "b"]);
    assert_eq!(top_label(&p.run(&bundle, &["root1.json"])), "stop_conveyor");
    let cache = p.path("state/cache");
    let artifacts: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 3, "{artifacts:?}");
    // Corrupt every artifact: each is detected, recompiled and rewritten.
    for a in &artifacts {
        let mut bytes = std::fs::read(a).unwrap();
        let n = bytes.len();
        bytes[n - 100] ^= 0xff;
        std::fs::write(a, bytes).unwrap();
    }
    let before: Vec<Vec<u8>> = artifacts
        .iter()
        .map(|a| std::fs::read(a).unwrap())
        .collect();
    assert_eq!(top_label(&p.run(&bundle, &["root1.json"])), "stop_conveyor");
    for (a, old) in artifacts.iter().zip(before) {
        assert_ne!(
            std::fs::read(a).unwrap(),
            old,
            "{} was not rewritten",
            a.display()
        );
    }
}

#[test]
fn the_cache_hits_only_for_the_same_component() {
    use outpost_host::cache::{CacheOutcome, ComponentCache};
    let scratch = Scratch::new();
    let host = outpost_host::Host::new(&outpost_host::EngineOptions::default()).unwrap();
    let engine = host.runtime().engine();
    let key =
        outpost_host::cache::CacheKey::load_or_create(&scratch.path().join("cache.key")).unwrap();
    let cache = ComponentCache::new(scratch.path(), engine, key);
    let bytes = std::fs::read(outpost_e2e::plugin("mean_pool")).unwrap();
    let digest = Digest::of(&bytes);
    assert_eq!(
        cache.load(engine, &digest, &bytes).unwrap().1,
        CacheOutcome::Compiled
    );
    assert_eq!(
        cache.load(engine, &digest, &bytes).unwrap().1,
        CacheOutcome::Hit
    );
    let other = std::fs::read(outpost_e2e::plugin("classify")).unwrap();
    assert_eq!(
        cache.load(engine, &Digest::of(&other), &other).unwrap().1,
        CacheOutcome::Compiled
    );
}

#[test]
fn a_bundle_that_fails_to_load_is_not_recorded_as_accepted() {
    let p = Publisher::new();
    let pipeline = p.scratch.write(
        "broken.toml",
        format!(
            "[pipeline]\nname = \"b\"\ninputs = [\"x\"]\n[[stages]]\nname = \"s\"\ncomponent = \"{}\"\nconfig = {{ mode = \"init-error\" }}\n",
            outpost_e2e::plugin("fail").display()
        ),
    );
    let bundle = p.bundle(&pipeline, "broken", 5, "broken", &["a", "b"]);
    p.verify(&bundle, &["root1.json"]).assert_ok();
    p.run(&bundle, &["root1.json"])
        .expect_error(&["stage 's'", "refusing to start"]);
    assert!(!p.path("state/accepted/broken.accepted").exists());
    assert!(!p.path("state/running.json").exists());
}

/// A ustar header for a regular file `name` of `size` bytes.
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[148..156].copy_from_slice(b"        ");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    header
}

/// The names of a tar archive's entries, in order.
fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() && bytes[at] != 0 {
        let header = &bytes[at..at + 512];
        let end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        names.push(String::from_utf8_lossy(&header[..end]).into_owned());
        let size_text = std::str::from_utf8(&header[124..135]).unwrap();
        let size = u64::from_str_radix(size_text.trim_matches(['\0', ' ']), 8).unwrap();
        at += 512 + size.div_ceil(512) as usize * 512;
    }
    names
}

/// Writes an archive: `documents` (name, bytes) in full, then an entry
/// `blobs/<hex>` of `huge` zero bytes, streamed so the test holds no copy.
fn archive_with_huge_entry(out: &Path, documents: &[(&str, Vec<u8>)], huge: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    let pad = |file: &mut std::io::BufWriter<std::fs::File>, len: u64| {
        let rest = (512 - len % 512) % 512;
        file.write_all(&vec![0u8; rest as usize]).unwrap();
    };
    for (name, bytes) in documents {
        file.write_all(&tar_header(name, bytes.len() as u64))
            .unwrap();
        file.write_all(bytes).unwrap();
        pad(&mut file, bytes.len() as u64);
    }
    let name = format!("blobs/{}", Digest::of(b"not this").hex());
    file.write_all(&tar_header(&name, huge)).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = huge;
    while left > 0 {
        let n = left.min(chunk.len() as u64);
        file.write_all(&chunk[..n as usize]).unwrap();
        left -= n;
    }
    pad(&mut file, huge);
    file.write_all(&[0u8; 1024]).unwrap();
    file.flush().unwrap();
}

/// Bytes allocated on disk for everything under `dir` (files and folders).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            total += disk_usage(&entry.unwrap().path());
        }
    }
    total
}

#[test]
fn pack_puts_the_manifest_and_signatures_first() {
    let p = Publisher::new();
    let bundle = p.demo_bundle("v1", 1, &["a", "b"]);
    let archive = p.path("v1.bundle");
    outpost(&[
        "pack".as_ref(),
        bundle.as_os_str(),
        "--out".as_ref(),
        archive.as_os_str(),
    ])
    .assert_ok();
    let names = tar_names(&std::fs::read(&archive).unwrap());
    assert_eq!(
        &names[..2],
        ["manifest.toml", "signatures.json"],
        "{names:?}"
    );
    assert!(
        names[2..].iter().all(|n| n.starts_with("blobs/")),
        "{names:?}"
    );
}

/// Issue 9: an unsigned `.bundle` archive with a 300 MB entry named like a
/// blob was written out in full to the state directory before any
/// signature check. Now it is refused after reading its manifest and
/// signatures, and (signed or not) an entry the manifest does not list is
/// never written.
#[test]
fn a_huge_entry_in_an_archive_is_refused_before_it_reaches_the_disk() {
    const HUGE: u64 = 300 * 1000 * 1000;
    let p = Publisher::new();
    let state = p.path("state");

    let unsigned = p.demo_bundle("unsigned", 1, &[]);
    let archive = p.path("unsigned.bundle");
    let read = |name: &str| std::fs::read(unsigned.join(name)).unwrap();
    archive_with_huge_entry(
        &archive,
        &[
            ("manifest.toml", read("manifest.toml")),
            ("signatures.json", read("signatures.json")),
        ],
        HUGE,
    );
    assert!(std::fs::metadata(&archive).unwrap().len() > HUGE);
    p.run(&archive, &["root1.json"]).expect_error(&[
        "unsigned.bundle",
        "bundle 'intent-demo' version 1 (signatures.json)",
        "threshold not met: 0 valid signature(s) of the 2 required",
    ]);
    let written = disk_usage(&state);
    eprintln!("unsigned archive with a {HUGE}-byte entry: {written} bytes under the state dir");
    assert!(
        written < 1 << 20,
        "{written} bytes written under {}",
        state.display()
    );
    std::fs::remove_file(&archive).unwrap();

    // Signed, but the entry is not a blob the signed manifest lists.
    let signed = p.demo_bundle("signed", 1, &["a", "b"]);
    let archive = p.path("signed.bundle");
    let read = |name: &str| std::fs::read(signed.join(name)).unwrap();
    archive_with_huge_entry(
        &archive,
        &[
            ("manifest.toml", read("manifest.toml")),
            ("signatures.json", read("signatures.json")),
        ],
        HUGE,
    );
    p.run(&archive, &["root1.json"]).expect_error(&[
        "signed.bundle",
        "is not a blob the signed manifest lists; refused before writing it",
    ]);
    let written = disk_usage(&state);
    eprintln!(
        "signed archive with an unlisted {HUGE}-byte entry: {written} bytes under the state dir"
    );
    assert!(
        written < 1 << 20,
        "{written} bytes written under {}",
        state.display()
    );
    std::fs::remove_file(&archive).unwrap();

    // Blobs before the signatures: refused, naming the fix.
    let archive = p.path("reordered.bundle");
    archive_with_huge_entry(&archive, &[("manifest.toml", read("manifest.toml"))], 1000);
    p.run(&archive, &["root1.json"])
        .expect_error(&["where signatures.json must come", "outpost pack"]);
}
