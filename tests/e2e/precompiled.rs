//! Bundles that carry their components precompiled (`outpost bundle
//! --precompile`). Native code is used only where the device policy allows
//! it, only for the host's own target and engine fingerprint, and only after
//! its bytes matched the signed digest; wasmtime's own header check stands
//! behind a lying label.

use crate::bundles::{AssertOk, Publisher};
use outpost_e2e::{Run, demo_dir};
use outpost_host::engine::TARGET;
use outpost_host::{CodeOrigin, EngineOptions, Host};
use outpost_signing::Digest;
use outpost_signing::bundle::Bundle;
use outpost_signing::dsse::Envelope;
use outpost_signing::manifest::{BlobKind, Manifest};
use outpost_signing::root::TrustRoot;
use outpost_signing::time::Timestamp;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A target other than this host's.
fn other_target() -> &'static str {
    if TARGET.starts_with("aarch64") {
        "x86_64-unknown-linux-gnu"
    } else {
        "aarch64-unknown-linux-gnu"
    }
}

/// The demo pipeline as bundle `dir`, version 1, signed by `signers`, with
/// more `outpost bundle` arguments.
fn demo_bundle(p: &Publisher, dir: &str, signers: &[&str], extra: &[&str]) -> PathBuf {
    p.bundle_with(
        &demo_dir().join("intent.toml"),
        "intent-demo",
        1,
        dir,
        signers,
        extra,
    )
}

fn manifest(bundle: &Path) -> Manifest {
    Manifest::parse(&std::fs::read(bundle.join("manifest.toml")).unwrap()).unwrap()
}

fn allowing(p: &Publisher) -> PathBuf {
    let path = p.path("allow-precompiled.toml");
    std::fs::write(&path, "[precompiled]\nallow = true\n").unwrap();
    path
}

/// `outpost [engine flags] COMMAND BUNDLE ...` with the publisher's root,
/// no component cache, and `policy` if given.
fn outpost_on(
    p: &Publisher,
    engine: &[&str],
    command: &[&str],
    bundle: &Path,
    policy: Option<&Path>,
) -> Run {
    let mut args: Vec<String> = engine.iter().map(|s| s.to_string()).collect();
    args.extend(command.iter().map(|s| s.to_string()));
    args.push(bundle.display().to_string());
    args.extend(p.trust_args(&["root1.json"]));
    args.push("--no-cache".into());
    if let Some(policy) = policy {
        args.extend(["--policy".into(), policy.display().to_string()]);
    }
    outpost_e2e::outpost(&args)
}

/// Each stage's name, component digest and code origin, from `inspect`.
fn origins(run: &Run) -> Vec<(String, String, String)> {
    run.assert_ok();
    run.json()["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["digest"].as_str().unwrap().to_owned(),
                s["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn demo_outputs(run: &Run) -> String {
    run.assert_ok();
    run.json()["results"][0]["outputs"].to_string()
}

#[test]
fn artifacts_are_used_only_where_allowed_and_only_for_this_target_and_engine() {
    let p = Publisher::new();
    let targets = format!("{TARGET},{}", other_target());
    let bundle = demo_bundle(&p, "precompiled", &["a", "b"], &["--precompile", &targets]);
    let m = manifest(&bundle);
    let components: BTreeSet<&String> = m
        .blobs
        .iter()
        .filter(|(_, b)| b.kind == BlobKind::Component)
        .map(|(d, _)| d)
        .collect();
    let artifacts: Vec<_> = m
        .blobs
        .iter()
        .filter(|(_, b)| b.kind == BlobKind::Precompiled)
        .map(|(d, b)| (d.clone(), b.precompiled.clone().unwrap()))
        .collect();
    // Every component, for both targets, for both engines a default host
    // picks between (guard pages, explicit checks).
    assert_eq!(artifacts.len(), components.len() * 4, "{artifacts:#?}");
    let variants: BTreeSet<(String, String)> = artifacts
        .iter()
        .map(|(_, a)| (a.target.clone(), a.engine.clone()))
        .collect();
    assert_eq!(variants.len(), 4, "{variants:?}");
    for (_, a) in &artifacts {
        assert!(components.contains(&a.component), "{a:?}");
    }
    let artifact_for = |component: &str, engine_word: &str| -> String {
        artifacts
            .iter()
            .find(|(_, a)| {
                a.component == component
                    && a.target == TARGET
                    && a.engine.split(' ').nth(1) == Some(engine_word)
            })
            .map(|(d, _)| d.clone())
            .unwrap_or_else(|| panic!("no {engine_word} artifact of {component}"))
    };
    let allow = allowing(&p);

    // Without the policy's consent the host compiles every stage itself.
    let compiled = origins(&outpost_on(&p, &[], &["inspect"], &bundle, None));
    for (stage, _, code) in &compiled {
        assert_eq!(code, "compiled", "stage {stage}");
    }
    // With it, each stage runs the artifact for this target and engine.
    for (flags, engine_word) in [
        (&[][..], "guard-pages"),
        (
            &["--memory-bounds", "explicit", "--allocator", "on-demand"][..],
            "explicit",
        ),
    ] {
        let used = origins(&outpost_on(&p, flags, &["inspect"], &bundle, Some(&allow)));
        assert_eq!(used.len(), compiled.len());
        for (stage, digest, code) in &used {
            let expected = format!("precompiled {}", artifact_for(digest, engine_word));
            assert_eq!(code, &expected, "stage {stage} with {flags:?}");
        }
    }
    // An engine no artifact was compiled for (fuel metering changes the
    // code) falls back to compiling on a host that can.
    for (stage, _, code) in origins(&outpost_on(
        &p,
        &["--fuel"],
        &["inspect"],
        &bundle,
        Some(&allow),
    )) {
        assert_eq!(code, "compiled", "stage {stage} with --fuel");
    }

    // Signed evidence says which stages run publisher-compiled code.
    let state = p.path("state").display().to_string();
    let attest = |policy: Option<&Path>| {
        let mut args = vec![
            "run".to_owned(),
            bundle.display().to_string(),
            "-i".into(),
            "x".into(),
        ];
        args.extend(p.trust_args(&["root1.json"]));
        args.push("--no-cache".into());
        if let Some(policy) = policy {
            args.extend(["--policy".to_owned(), policy.display().to_string()]);
        }
        outpost_e2e::outpost(&args).assert_ok();
        let run = outpost_e2e::outpost(&["attest", "--nonce", "n-1", "--state-dir", &state]);
        run.assert_ok();
        let envelope = Envelope::parse(
            run.stdout.as_bytes(),
            "evidence",
            outpost_signing::evidence::EVIDENCE_PAYLOAD_TYPE,
        )
        .unwrap();
        String::from_utf8(envelope.payload_bytes("evidence").unwrap()).unwrap()
    };
    let evidence = attest(Some(&allow));
    for (_, digest, _) in &compiled {
        let artifact = artifact_for(digest, "guard-pages");
        assert!(evidence.contains(&artifact), "{artifact} not in {evidence}");
    }
    let evidence = attest(None);
    assert!(!evidence.contains("precompiled"), "{evidence}");

    // The same answers either way.
    let run_args = |policy: Option<&Path>| {
        let mut args = vec!["run".to_owned()];
        args.push(bundle.display().to_string());
        args.extend(["-i".into(), "stop the conveyor".into()]);
        args.extend(p.trust_args(&["root1.json"]));
        args.push("--no-cache".into());
        if let Some(policy) = policy {
            args.extend(["--policy".to_owned(), policy.display().to_string()]);
        }
        outpost_e2e::outpost(&args)
    };
    assert_eq!(
        demo_outputs(&run_args(None)),
        demo_outputs(&run_args(Some(allow.as_path())))
    );
}

#[test]
fn an_artifact_signed_for_the_wrong_machine_is_refused_not_run() {
    let p = Publisher::new();
    let bundle = demo_bundle(&p, "relabelled", &[], &["--precompile", other_target()]);
    // A publisher (or a compromised build machine) labels another
    // architecture's code as this host's, and signs that.
    let mut m = manifest(&bundle);
    for blob in m.blobs.values_mut() {
        if let Some(a) = blob.precompiled.as_mut() {
            a.target = TARGET.to_owned();
        }
    }
    std::fs::write(bundle.join("manifest.toml"), m.to_toml().unwrap()).unwrap();
    p.sign(&bundle, &["a", "b"]);
    let allow = allowing(&p);
    let r = outpost_on(&p, &[], &["inspect"], &bundle, Some(&allow));
    assert!(!r.ok, "{}", r.stdout);
    assert_eq!(r.code, Some(1), "an error, not a crash: {}", r.stderr);
    assert!(
        r.stderr.contains("precompiled artifact")
            && r.stderr.contains("cannot be loaded")
            && r.stderr.contains("compiled for architecture"),
        "{}",
        r.stderr
    );
    // Without consent the label is never looked at.
    for (_, _, code) in origins(&outpost_on(&p, &[], &["inspect"], &bundle, None)) {
        assert_eq!(code, "compiled");
    }
}

#[test]
fn an_artifact_changed_after_verification_is_refused_when_loaded() {
    let p = Publisher::new();
    let bundle = demo_bundle(&p, "changed-late", &["a", "b"], &["--precompile", TARGET]);
    let root = TrustRoot::verify_chain(
        &[(
            "root1.json".into(),
            std::fs::read(p.path("root1.json")).unwrap(),
        )],
        Timestamp::now(),
    )
    .unwrap();
    let verified = Bundle::open_dir(&bundle).unwrap().verify(&root).unwrap();
    verified.check_all_blobs().unwrap();
    let host = Host::new(&EngineOptions::default())
        .unwrap()
        .with_precompiled(true);
    let pipeline = host.load_bundle(&verified).unwrap();
    let used: Vec<Digest> = pipeline
        .stages()
        .iter()
        .map(|s| match s.code_origin() {
            CodeOrigin::Precompiled(artifact) => artifact,
            other => panic!("stage {} was {other}", s.stage().name()),
        })
        .collect();
    // The artifact of the last stage changes on disk after the bundle was
    // verified and every blob checked (a local attacker, a failing disk):
    // the load that reads it refuses it, naming it.
    let artifact = used.last().unwrap();
    let blob = bundle.join("blobs").join(artifact.hex());
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    let e = host.load_bundle(&verified).err().unwrap().to_string();
    assert!(e.contains(&artifact.hex()), "{e}");
}

#[test]
fn an_altered_artifact_is_refused_before_it_is_loaded() {
    let p = Publisher::new();
    let bundle = demo_bundle(&p, "altered", &["a", "b"], &["--precompile", TARGET]);
    let m = manifest(&bundle);
    let (digest, _) = m
        .blobs
        .iter()
        .find(|(_, b)| b.kind == BlobKind::Precompiled)
        .unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let blob = std::fs::read_dir(bundle.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|path| path.to_string_lossy().contains(hex))
        .unwrap();
    // Native code changed after signing: one instruction byte.
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    let r = outpost_on(&p, &[], &["inspect"], &bundle, Some(&allowing(&p)));
    assert!(!r.ok, "{}", r.stdout);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains(hex), "names the blob: {}", r.stderr);
}

#[test]
fn targets_are_named_as_hosts_name_themselves() {
    let p = Publisher::new();
    let out = p.path("misnamed");
    let bundle = |target: &str| {
        outpost_e2e::outpost(&[
            "bundle",
            &demo_dir().join("intent.toml").display().to_string(),
            "--name",
            "intent-demo",
            "--version",
            "1",
            "--out",
            &out.display().to_string(),
            "--precompile",
            target,
        ])
    };
    // A triple that would be signed but never match a host's name.
    bundle("aarch64-linux-gnu").expect_error(&[
        "component 'bert_tokenizer.wasm'",
        "write the target 'aarch64-linux-gnu' as 'aarch64-unknown-linux-gnu'",
    ]);
    bundle("sparc-unknown-linux-gnu")
        .expect_error(&["cannot compile for 'sparc-unknown-linux-gnu'"]);
    bundle("not a triple").expect_error(&["'not a triple' is not a target triple"]);
}

#[test]
fn every_target_the_message_names_can_be_precompiled_for() {
    // riscv64: Cranelift emits wasm's 128-bit values there only as vector
    // code, so the artifacts are built for the V extension; without it the
    // compiler could not build the demo's components at all.
    let p = Publisher::new();
    let targets = "aarch64-unknown-linux-gnu,riscv64gc-unknown-linux-gnu,x86_64-unknown-linux-gnu";
    let bundle = demo_bundle(&p, "every-target", &["a"], &["--precompile", targets]);
    let m = manifest(&bundle);
    let components = m
        .blobs
        .values()
        .filter(|b| b.kind == BlobKind::Component)
        .count();
    let mut per_target = std::collections::BTreeMap::<String, usize>::new();
    for blob in m.blobs.values() {
        if let Some(a) = &blob.precompiled {
            *per_target.entry(a.target.clone()).or_default() += 1;
        }
    }
    let expected: std::collections::BTreeMap<String, usize> = targets
        .split(',')
        .map(|t| (t.to_owned(), components * 2))
        .collect();
    assert_eq!(per_target, expected);
}
