//! Device state through the library (`outpost_host::device`): it survives a
//! crash at every write, its trust root only moves forward, and torn files
//! and crash leftovers are found at start (issue 9).

use crate::bundles::{AssertOk, Publisher};
use outpost_host::device::{CrashPoint, DeviceError, DeviceState};
use outpost_host::policy::DevicePolicy as Policy;
use outpost_signing::Error as TrustError;
use outpost_signing::bundle::VerifiedBundle;
use outpost_signing::evidence::RunningBundle;
use std::path::{Path, PathBuf};

fn running(verified: &VerifiedBundle) -> RunningBundle {
    let info = &verified.manifest().bundle;
    RunningBundle {
        name: info.name.clone(),
        version: info.version,
        manifest: verified.manifest_digest().to_string(),
        stages: Default::default(),
        precompiled: Default::default(),
        models: Default::default(),
    }
}

fn open(state: &DeviceState, bundle: &Path, roots: &[PathBuf]) -> VerifiedBundle {
    state
        .open_verified(bundle, roots, &Policy::default())
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

/// Temporary files and staging directories anywhere under `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".outpost-tmp") {
                found.push(path.clone());
            }
            if path.is_dir() {
                if d.ends_with("staging") {
                    found.push(path.clone());
                }
                stack.push(path);
            }
        }
    }
    found
}

/// The device's files agree with each other: whatever runs was accepted.
fn assert_consistent(state: &DeviceState) {
    state.check().unwrap_or_else(|e| panic!("{e}"));
    if let Some(run) = state.running().unwrap() {
        let (accepted, digest) = state.accepted(&run.name).unwrap().expect("accepted");
        assert!(
            run.version <= accepted,
            "runs {} > accepted {accepted}",
            run.version
        );
        if run.version == accepted {
            assert_eq!(run.manifest, digest);
        }
    }
}

#[test]
fn accept_comes_back_consistent_after_a_crash_at_every_step() {
    let p = Publisher::new();
    let v1 = p.demo_bundle("v1", 1, &["a", "b"]);
    let v2 = p.demo_bundle("v2", 2, &["a", "b"]);
    let roots = [p.path("root1.json")];
    let crashes = (0..3).flat_map(|n| [CrashPoint::Before(n), CrashPoint::During(n)]);
    for (i, crash) in crashes.enumerate() {
        let dir = p.path(&format!("state-{i}"));
        {
            let state = DeviceState::open(&dir).unwrap();
            let first = open(&state, &v1, &roots);
            state.accept(&first, &running(&first)).unwrap();
        }
        let mut state = DeviceState::open(&dir).unwrap();
        let second = open(&state, &v2, &roots);
        state.crash_at(Some(crash));
        let e = state.accept(&second, &running(&second)).unwrap_err();
        assert!(matches!(e, DeviceError::SimulatedCrash { .. }), "{e}");
        drop(state);

        // The process is gone; a new one opens the state.
        let state = DeviceState::open(&dir).unwrap_or_else(|e| panic!("{crash:?}: {e}"));
        assert_eq!(leftovers(&dir), Vec::<PathBuf>::new(), "{crash:?}");
        assert_consistent(&state);
        // Whatever the crash kept, version 2 can be accepted now and version
        // 1 is refused after it.
        let second = open(&state, &v2, &roots);
        state.accept(&second, &running(&second)).unwrap();
        assert_consistent(&state);
        assert_eq!(state.running().unwrap().unwrap().version, 2);
        let e = state
            .open_verified(&v1, &roots, &Policy::default())
            .err()
            .expect("v1 after v2");
        assert!(
            matches!(
                e,
                DeviceError::Trust(TrustError::OlderVersion {
                    version: 1,
                    accepted: 2,
                    ..
                })
            ),
            "{crash:?}: {e}"
        );
    }
}

#[test]
fn the_trust_root_moves_forward_only() {
    let p = Publisher::new();
    // Version 2 rotates key c out for d; version 3 revokes a.
    p.root(
        "root2.json",
        2,
        &["a", "b", "d"],
        2,
        "2099-01-01T00:00:00Z",
        &[],
        &["a", "b", "d"],
    )
    .assert_ok();
    p.root(
        "root3.json",
        3,
        &["a", "b", "d"],
        2,
        "2099-01-01T00:00:00Z",
        &["a"],
        &["a", "b", "d"],
    )
    .assert_ok();
    let root = |n: u32| p.path(&format!("root{n}.json"));
    let state = DeviceState::open(&p.path("state-roots")).unwrap();
    assert!(matches!(
        state.trust_root(&[]),
        Err(DeviceError::NoTrustRoot { .. })
    ));
    assert_eq!(state.trust_root(&[root(1)]).unwrap().version(), 1);
    assert_eq!(state.trust_root(&[root(1), root(2)]).unwrap().version(), 2);
    // The stored root is used when none is given, and the full chain still
    // works.
    assert_eq!(state.trust_root(&[]).unwrap().version(), 2);
    assert_eq!(state.trust_root(&[root(1), root(2)]).unwrap().version(), 2);
    // An older root, unexpired and validly signed, is refused: it would
    // bring back keys the newer one dropped.
    let e = state.trust_root(&[root(1)]).unwrap_err();
    assert!(
        matches!(
            e,
            DeviceError::Trust(TrustError::RootRollback {
                version: 1,
                accepted: 2,
                ..
            })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("older than version 2"), "{e}");
    // And so it is through the CLI, for a bundle signed by a and b.
    let bundle = p.demo_bundle("v1", 1, &["a", "b"]);
    let mut args = vec!["verify".to_owned(), bundle.display().to_string()];
    args.extend(["--trust".into(), root(1).display().to_string()]);
    args.extend([
        "--state-dir".into(),
        p.path("state-roots").display().to_string(),
    ]);
    let refused = outpost_e2e::outpost(&args);
    assert!(
        !refused.ok && refused.stderr.contains("older than version 2"),
        "{}",
        refused.stderr
    );

    // Versions are consecutive: from 1, root 3 alone is a gap.
    let fresh = DeviceState::open(&p.path("state-gap")).unwrap();
    fresh.trust_root(&[root(1)]).unwrap();
    let e = fresh.trust_root(&[root(3)]).unwrap_err();
    assert!(
        matches!(
            e,
            DeviceError::Trust(TrustError::RootVersionGap {
                previous: 1,
                found: 3,
                ..
            })
        ),
        "{e}"
    );
    // The stored root did not move on a refusal.
    assert_eq!(fresh.trust_root(&[]).unwrap().version(), 1);
    assert_eq!(fresh.trust_root(&[root(2), root(3)]).unwrap().version(), 3);
}

#[test]
fn torn_files_and_crash_leftovers_are_found_at_start() {
    let p = Publisher::new();
    let v1 = p.demo_bundle("v1", 1, &["a", "b"]);
    let dir = p.path("state-torn");
    {
        let state = DeviceState::open(&dir).unwrap();
        let first = open(&state, &v1, &[p.path("root1.json")]);
        state.accept(&first, &running(&first)).unwrap();
    }
    // What a crash of another tool could leave: a staging directory of a
    // process that is gone, a temporary file, a half-written record.
    std::fs::create_dir_all(dir.join("staging/4194304-0/blobs")).unwrap();
    std::fs::write(dir.join(".running.json.4194304.0.outpost-tmp"), "{").unwrap();
    let state = DeviceState::open(&dir).unwrap();
    assert_eq!(leftovers(&dir), Vec::<PathBuf>::new());
    drop(state);

    let record = std::fs::read(dir.join("running.json")).unwrap();
    std::fs::write(dir.join("running.json"), &record[..record.len() / 2]).unwrap();
    let e = DeviceState::open(&dir).err().expect("torn running.json");
    let message = e.to_string();
    assert!(
        matches!(e, DeviceError::Corrupt { .. })
            && message.contains("running.json")
            && message.contains("remove it"),
        "{message}"
    );
    std::fs::write(dir.join("running.json"), &record).unwrap();

    std::fs::write(dir.join("accepted/intent-demo.accepted"), "1 sha256:").unwrap();
    let e = DeviceState::open(&dir).err().expect("torn accepted record");
    assert!(e.to_string().contains("intent-demo.accepted"), "{e}");
}

#[test]
fn the_device_policy_bounds_what_a_bundle_may_be_granted() {
    let p = Publisher::new();
    let data = p.path("camera/frames");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("passwd"), "frame\n").unwrap();
    let pipeline = p.path("reader.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nname = \"reader\"\ninputs = [\"x\"]\n[[stages]]\nname = \"reader\"\ncomponent = \"{}\"\nconfig = {{ attack = \"read-file\" }}\ngrants = {{ dirs = [{{ host = \"{}\", guest = \"/etc\" }}] }}\n",
            outpost_e2e::plugin("hostile").display(),
            data.display()
        ),
    )
    .unwrap();
    let bundle = p.bundle(&pipeline, "reader", 1, "reader-v1", &["a", "b"]);
    let run = |policy: Option<&Path>| {
        let mut args = vec![
            "run".to_owned(),
            bundle.display().to_string(),
            "-i".into(),
            "x=go".into(),
        ];
        args.extend(p.trust_args(&["root1.json"]));
        if let Some(policy) = policy {
            args.extend(["--policy".into(), policy.display().to_string()]);
        }
        outpost_e2e::outpost(&args)
    };
    // No policy: nothing beyond models may be granted.
    let refused = run(None);
    assert!(
        !refused.ok
            && refused
                .stderr
                .contains("stage 'reader' is granted directory")
            && refused.stderr.contains("[grants] dirs = []"),
        "{}",
        refused.stderr
    );
    // A policy for another directory, or one reached through '..'.
    let policy = p.path("policy.toml");
    let camera = p.path("camera");
    std::fs::write(
        &policy,
        format!("[grants]\ndirs = [\"{}/other\"]\n", camera.display()),
    )
    .unwrap();
    let refused = run(Some(&policy));
    assert!(
        !refused.ok && refused.stderr.contains("/other\"]"),
        "{}",
        refused.stderr
    );
    std::fs::write(
        &policy,
        format!("[grants]\ndirs = [\"{}/../camera\"]\n", camera.display()),
    )
    .unwrap();
    let refused = run(Some(&policy));
    assert!(
        !refused.ok && refused.stderr.contains("absolute path without"),
        "{}",
        refused.stderr
    );
    // The directory's parent, allowed: the stage reads the granted file.
    std::fs::write(
        &policy,
        format!("[grants]\ndirs = [\"{}\"]\n", camera.display()),
    )
    .unwrap();
    let ran = run(Some(&policy));
    assert!(ran.ok, "{}", ran.stderr);
}
