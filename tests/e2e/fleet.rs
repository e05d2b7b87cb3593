//! Fleet updates: a TUF fleet repository served by Debian's nginx on
//! loopback, devices following it with `outpost update --once`, and the
//! attacks a hostile repository or network can make. After every refused
//! update the device still runs what it ran, and says why.

use crate::bundles::{AssertOk, Publisher, top_label};
use crate::serve::{Server, http, text_request};
use outpost_e2e::servers::{CuttingRelay, Nginx, Registry, Trickle};
use outpost_e2e::{Run, Scratch, demo_dir, demo_pipeline_text, outpost};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A publisher (keys a..e, root1.json: 2 of a, b, c), a fleet repository
/// with its role keys, and nginx serving it.
struct Fleet {
    publisher: Publisher,
    scratch: Scratch,
    nginx: Nginx,
}

impl Fleet {
    fn new() -> Self {
        let publisher = Publisher::new();
        let scratch = Scratch::new();
        let fleet = Self {
            nginx: Nginx::start(&scratch.path().join("repo")),
            publisher,
            scratch,
        };
        fleet.fleet(&["init"]).assert_ok();
        fleet
    }

    fn repo(&self) -> PathBuf {
        self.scratch.path().join("repo")
    }

    fn repo_args(&self) -> Vec<String> {
        vec![
            "--repo".into(),
            self.repo().display().to_string(),
            "--keys".into(),
            self.scratch.path().join("keys").display().to_string(),
        ]
    }

    /// `outpost fleet ARGS --repo --keys`.
    fn fleet(&self, args: &[&str]) -> Run {
        let mut all: Vec<String> = vec!["fleet".into()];
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(self.repo_args());
        outpost(&all)
    }

    /// Publishes a bundle checked against `root` (of the publisher's files).
    fn publish_with(&self, bundle: &Path, root: &str) -> Run {
        let mut args: Vec<String> = vec!["publish".into(), bundle.display().to_string()];
        args.extend(self.repo_args());
        args.extend([
            "--trust".into(),
            self.publisher.path(root).display().to_string(),
            "--state-dir".into(),
            self.scratch
                .path()
                .join(format!("publisher-state-{root}"))
                .display()
                .to_string(),
        ]);
        outpost(&args)
    }

    fn publish(&self, bundle: &Path) {
        self.publish_with(bundle, "root1.json").assert_ok();
    }

    /// Publishes a bundle whose blobs go to an OCI registry.
    fn publish_oci(&self, bundle: &Path, reference: &str) -> Run {
        let mut args: Vec<String> = vec!["publish".into(), bundle.display().to_string()];
        args.extend(self.repo_args());
        args.extend([
            "--trust".into(),
            self.publisher.path("root1.json").display().to_string(),
            "--state-dir".into(),
            self.scratch
                .path()
                .join("publisher-state-oci")
                .display()
                .to_string(),
            "--oci".into(),
            reference.into(),
        ]);
        outpost(&args)
    }

    fn set(&self, group: &str, version: u64) {
        self.fleet(&["set", group, "intent-demo", &version.to_string()])
            .assert_ok();
    }

    fn device(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// `outpost update --once` for device `device` in group `lab`, through
    /// `url` (default: nginx).
    fn update_via(&self, device: &str, url: &str) -> Run {
        let mut args = self.update_args(&self.device(device), url);
        args.extend(["--stall".into(), "5s".into()]);
        outpost(&args)
    }

    /// `update --once` for the device whose state is `state`, in group `lab`.
    fn update_args(&self, state: &Path, url: &str) -> Vec<String> {
        vec![
            "update".to_owned(),
            "--once".into(),
            "--repo".into(),
            url.into(),
            "--group".into(),
            "lab".into(),
            "--fleet-root".into(),
            self.repo()
                .join("metadata/1.root.json")
                .display()
                .to_string(),
            "--trust".into(),
            self.publisher.path("root1.json").display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
        ]
    }

    fn update(&self, device: &str) -> Run {
        self.update_via(device, &self.nginx.url())
    }

    /// What the device runs from the fleet: (name, version), or None.
    fn current(&self, device: &str) -> Option<(String, u64)> {
        let run = outpost(&[
            "status".to_owned(),
            "--state-dir".into(),
            self.device(device).display().to_string(),
        ]);
        run.assert_ok();
        let current = &run.json()["current"];
        current.as_object().map(|c| {
            (
                c["bundle"].as_str().unwrap().to_owned(),
                c["version"].as_u64().unwrap(),
            )
        })
    }

    /// Runs the device's current version on one input; its top label.
    fn run_current(&self, device: &str) -> String {
        let status = outpost(&[
            "status".to_owned(),
            "--state-dir".into(),
            self.device(device).display().to_string(),
        ])
        .json();
        let dir = self
            .device(device)
            .join("fleet/bundles")
            .join(status["current"]["dir"].as_str().unwrap());
        let run = outpost(&[
            "run".to_owned(),
            dir.display().to_string(),
            "-i".into(),
            "stop the conveyor".into(),
            "--trust".into(),
            self.publisher.path("root1.json").display().to_string(),
            "--state-dir".into(),
            self.device(device).display().to_string(),
        ]);
        top_label(&run)
    }

    /// The demo as a bundle whose labels file renames `stop_conveyor` to
    /// `label`: a change to one stage's file (and the pipeline file that
    /// names it), the model and components unchanged. Its health check
    /// expects the new label.
    fn relabelled_demo(&self, dir: &str, version: u64, label: &str, signers: &[&str]) -> PathBuf {
        self.demo_variant(dir, version, label, label, signers)
    }

    /// The demo relabelled, with a health check expecting `checked`.
    fn demo_variant(
        &self,
        dir: &str,
        version: u64,
        label: &str,
        checked: &str,
        signers: &[&str],
    ) -> PathBuf {
        let work = self.scratch.path().join(format!("{dir}-src"));
        std::fs::create_dir_all(&work).unwrap();
        let demo = demo_dir();
        let labels = std::fs::read_to_string(demo.join("labels.txt"))
            .unwrap()
            .replace("stop_conveyor", label);
        std::fs::write(work.join("labels.txt"), labels).unwrap();
        let toml = demo_pipeline_text().replace(
            "labels = \"stop_conveyor\"",
            &format!("labels = \"{checked}\""),
        );
        std::fs::write(work.join("intent.toml"), toml).unwrap();
        self.publisher.bundle(
            &work.join("intent.toml"),
            "intent-demo",
            version,
            dir,
            signers,
        )
    }
}

fn report(run: &Run) -> Value {
    run.assert_ok();
    run.json()
}

/// The blobs of a bundle directory's manifest: digest -> size.
fn blobs(bundle: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(bundle.join("manifest.toml")).unwrap();
    let manifest: outpost_signing::manifest::Manifest =
        outpost_signing::manifest::Manifest::parse(text.as_bytes()).unwrap();
    manifest
        .blobs
        .iter()
        .map(|(d, b)| (d.trim_start_matches("sha256:").to_owned(), b.size))
        .collect()
}

#[test]
fn a_device_follows_its_group_over_http_and_a_stage_only_update_moves_only_changed_blobs() {
    let (fleet, v1) = fleet_with_v1();

    let first = report(&fleet.update("dev"));
    assert!(first["outcome"]["staged"].is_object(), "{first}");
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 1)));
    assert_eq!(fleet.run_current("dev"), "stop_conveyor");
    let all: u64 = blobs(&v1).values().sum();
    assert_eq!(first["blob_bytes_fetched"], all, "{first}");

    // Nothing new: no blob moves.
    fleet.nginx.clear_log();
    let again = report(&fleet.update("dev"));
    assert_eq!(again["outcome"], "up-to-date", "{again}");
    assert!(
        fleet
            .nginx
            .log()
            .iter()
            .all(|a| !a.path.starts_with("/blobs/")),
        "{:?}",
        fleet.nginx.log()
    );

    // v2 changes the classify stage's labels only.
    let v2 = fleet.relabelled_demo("v2", 2, "halt_conveyor", &["a", "b"]);
    fleet.publish(&v2);
    fleet.set("lab", 2);
    fleet.nginx.clear_log();
    let second = report(&fleet.update("dev"));
    assert!(second["outcome"]["staged"].is_object(), "{second}");
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 2)));
    assert_eq!(fleet.run_current("dev"), "halt_conveyor");

    let old = blobs(&v1);
    let changed: BTreeMap<_, _> = blobs(&v2)
        .into_iter()
        .filter(|(d, _)| !old.contains_key(d))
        .collect();
    let changed_bytes: u64 = changed.values().sum();
    assert!(!changed.is_empty() && changed.len() < old.len());
    // The agent's counters and the server's log agree: only the changed
    // blobs moved.
    assert_eq!(second["blob_bytes_fetched"], changed_bytes, "{second}");
    assert_eq!(second["blobs_fetched"], changed.len(), "{second}");
    let fetched: BTreeMap<String, u64> = fleet
        .nginx
        .log()
        .into_iter()
        .filter_map(|a| {
            a.path
                .strip_prefix("/blobs/")
                .map(|d| (d.to_owned(), a.bytes))
        })
        .collect();
    assert_eq!(fetched, changed);
    eprintln!(
        "stage-only update: {changed_bytes} blob bytes moved of {} in the bundle",
        blobs(&v2).values().sum::<u64>()
    );

    // The previous version stays installed for rollback.
    let status = outpost(&[
        "status".to_owned(),
        "--state-dir".into(),
        fleet.device("dev").display().to_string(),
    ])
    .json();
    assert_eq!(status["previous"]["version"], 1, "{status}");
    assert!(
        fleet
            .device("dev")
            .join("fleet/bundles/intent-demo-1")
            .is_dir()
    );
}

/// Each attack: the update is refused with the error named, and the device
/// still runs v1.
fn assert_refused_and_still_v1(fleet: &Fleet, run: &Run, needles: &[&str]) {
    run.expect_error(needles);
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 1)));
    assert_eq!(fleet.run_current("dev"), "stop_conveyor");
}

/// A fleet with v1 published, set and installed on device `dev`.
fn fleet_on_v1() -> (Fleet, PathBuf) {
    let (fleet, v1) = fleet_with_v1();
    report(&fleet.update("dev"));
    (fleet, v1)
}

/// A fleet with v1 published and set for group `lab`.
fn fleet_with_v1() -> (Fleet, PathBuf) {
    let fleet = Fleet::new();
    let v1 = fleet.publisher.demo_bundle("v1", 1, &["a", "b"]);
    fleet.publish(&v1);
    fleet.set("lab", 1);
    (fleet, v1)
}

/// The repository file of blob `hex`.
fn repo_blob(fleet: &Fleet, hex: &str) -> PathBuf {
    fleet.repo().join("blobs").join(hex)
}

/// v2 published and set, and the hex digest of its largest new blob.
fn publish_v2(fleet: &Fleet, v1: &Path) -> String {
    let v2 = fleet.relabelled_demo("v2", 2, "halt_conveyor", &["a", "b"]);
    fleet.publish(&v2);
    fleet.set("lab", 2);
    let old = blobs(v1);
    blobs(&v2)
        .into_iter()
        .filter(|(d, _)| !old.contains_key(d))
        .max_by_key(|(_, size)| *size)
        .unwrap()
        .0
}

#[test]
fn a_blob_with_wrong_bytes_is_refused_and_never_named() {
    let (fleet, v1) = fleet_on_v1();
    let hex = publish_v2(&fleet, &v1);
    let path = repo_blob(&fleet, &hex);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let run = fleet.update("dev");
    assert_refused_and_still_v1(
        &fleet,
        &run,
        &[&hex, "not to the digest the signed manifest lists"],
    );
    assert!(!fleet.device("dev").join("fleet/blobs").join(&hex).exists());
}

#[test]
fn a_blob_longer_than_the_manifest_says_is_cut_off_and_refused() {
    let (fleet, v1) = fleet_on_v1();
    let hex = publish_v2(&fleet, &v1);
    let path = repo_blob(&fleet, &hex);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(std::iter::repeat_n(b'x', 4 << 20));
    std::fs::write(&path, &bytes).unwrap();
    let run = fleet.update("dev");
    assert_refused_and_still_v1(&fleet, &run, &[&hex, "more than the"]);
    // Nothing of it was kept.
    let partial = fleet
        .device("dev")
        .join("fleet/blobs")
        .join(format!("{hex}.partial"));
    assert!(!partial.exists());
}

#[test]
fn replayed_metadata_is_refused() {
    let (fleet, v1) = fleet_on_v1();
    let metadata = fleet.repo().join("metadata");
    let old_timestamp = std::fs::read(metadata.join("timestamp.json")).unwrap();
    let old_snapshot_version = {
        let ts: Value = serde_json::from_slice(&old_timestamp).unwrap();
        ts["signed"]["meta"]["snapshot.json"]["version"]
            .as_u64()
            .unwrap()
    };
    publish_v2(&fleet, &v1);
    // The device sees newer metadata (and installs v2)...
    report(&fleet.update("dev"));
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 2)));
    // ...then a mirror replays the old timestamp (pointing at the old
    // snapshot, whose targets set v1).
    let newest = std::fs::read(metadata.join("timestamp.json")).unwrap();
    std::fs::write(metadata.join("timestamp.json"), &old_timestamp).unwrap();
    let run = fleet.update("dev");
    run.expect_error(&["fleet repository", "timestamp"]);
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 2)));
    // A replayed snapshot under the newest timestamp: the snapshot file
    // of the version the timestamp names is swapped for an older one.
    std::fs::write(metadata.join("timestamp.json"), &newest).unwrap();
    let ts: Value = serde_json::from_slice(&newest).unwrap();
    let named = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    let name = format!("{named}.snapshot.json");
    let saved = std::fs::read(metadata.join(&name)).unwrap();
    std::fs::copy(
        metadata.join(format!("{old_snapshot_version}.snapshot.json")),
        metadata.join(&name),
    )
    .unwrap();
    let run = fleet.update("dev");
    run.expect_error(&["fleet repository", "snapshot"]);
    std::fs::write(metadata.join(&name), saved).unwrap();
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 2)));
}

#[test]
fn targets_not_matching_the_snapshot_are_refused() {
    let (fleet, v1) = fleet_on_v1();
    publish_v2(&fleet, &v1);
    // Mix and match: the targets file the snapshot names is replaced by an
    // older, validly signed one.
    let metadata = fleet.repo().join("metadata");
    let ts: Value =
        serde_json::from_slice(&std::fs::read(metadata.join("timestamp.json")).unwrap()).unwrap();
    let snapshot_version = ts["signed"]["meta"]["snapshot.json"]["version"]
        .as_u64()
        .unwrap();
    let snapshot: Value = serde_json::from_slice(
        &std::fs::read(metadata.join(format!("{snapshot_version}.snapshot.json"))).unwrap(),
    )
    .unwrap();
    let targets_version = snapshot["signed"]["meta"]["targets.json"]["version"]
        .as_u64()
        .unwrap();
    std::fs::copy(
        metadata.join(format!("{}.targets.json", targets_version - 2)),
        metadata.join(format!("{targets_version}.targets.json")),
    )
    .unwrap();
    let run = fleet.update("dev");
    assert_refused_and_still_v1(&fleet, &run, &["fleet repository", "targets"]);
}

#[test]
fn expired_metadata_freezes_updates_and_the_device_keeps_its_version() {
    let (fleet, v1) = fleet_on_v1();
    publish_v2(&fleet, &v1);
    fleet
        .fleet(&["refresh", "--timestamp-lifetime", "1s"])
        .assert_ok();
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let run = fleet.update("dev");
    assert_refused_and_still_v1(&fleet, &run, &["expired", "stale"]);
    // A fresh timestamp (the online key's job) lets it move again.
    fleet.fleet(&["refresh"]).assert_ok();
    report(&fleet.update("dev"));
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 2)));
}

#[test]
fn root_rotations_are_followed_one_version_at_a_time() {
    let (fleet, v1) = fleet_on_v1();
    // N -> N+1 (a new timestamp key): followed.
    fleet.fleet(&["rotate", "timestamp"]).assert_ok();
    publish_v2(&fleet, &v1);
    report(&fleet.update("dev"));
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 2)));
    let kept: Value = serde_json::from_slice(
        &std::fs::read(fleet.device("dev").join("fleet/tuf/root.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["signed"]["version"], 2);

    // A second device still at root 1 meets root 3 with root 2 missing:
    // N -> N+2 is never accepted, and what root 3 signs is not trusted.
    fleet.fleet(&["rotate", "root"]).assert_ok();
    fleet.fleet(&["rotate", "timestamp"]).assert_ok();
    let metadata = fleet.repo().join("metadata");
    let root2 = std::fs::read(metadata.join("2.root.json")).unwrap();
    let root3 = std::fs::read(metadata.join("3.root.json")).unwrap();
    std::fs::remove_file(metadata.join("2.root.json")).unwrap();
    std::fs::remove_file(metadata.join("3.root.json")).unwrap();
    // Root 3 served as if it were 2 (it is signed by root 2's keys, not 1's).
    std::fs::write(metadata.join("2.root.json"), &root3).unwrap();
    let run = fleet.update("fresh");
    run.expect_error(&["fleet repository"]);
    assert_eq!(fleet.current("fresh"), None);
    std::fs::write(metadata.join("2.root.json"), &root2).unwrap();
    std::fs::write(metadata.join("3.root.json"), &root3).unwrap();
    // With the chain whole, both devices follow to root 4.
    report(&fleet.update("fresh"));
    assert_eq!(fleet.current("fresh"), Some(("intent-demo".into(), 2)));
}

#[test]
fn an_online_key_cannot_move_a_device_back_or_to_an_unsigned_bundle() {
    let (fleet, v1) = fleet_on_v1();
    publish_v2(&fleet, &v1);
    report(&fleet.update("dev"));
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 2)));

    // The group pointed back at v1 (a publisher-signed, older version).
    fleet.set("lab", 1);
    let run = fleet.update("dev");
    run.expect_error(&["intent-demo version 1", "refused", "older than version 2"]);
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 2)));

    // A v3 the publishers never signed (one signature of the two needed),
    // slipped into the repository by whoever holds the targets key.
    let v3 = fleet.relabelled_demo("v3", 3, "evil", &["a"]);
    fleet
        .publish_with(&v3, "root1.json")
        .expect_error(&["signature"]);
    // Through an accomplice's trust root, it gets in the repository anyway.
    fleet.publisher.root(
        "evil-root.json",
        1,
        &["a"],
        1,
        "2099-01-01T00:00:00Z",
        &[],
        &["a"],
    );
    fleet.publish_with(&v3, "evil-root.json").assert_ok();
    fleet.set("lab", 3);
    fleet.nginx.clear_log();
    let run = fleet.update("dev");
    run.expect_error(&["intent-demo version 3", "refused", "signature"]);
    // Refused on its head alone: not one of its blobs was fetched.
    assert!(
        fleet
            .nginx
            .log()
            .iter()
            .all(|a| !a.path.starts_with("/blobs/")),
        "{:?}",
        fleet.nginx.log()
    );
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 2)));
    assert!(
        !fleet
            .device("dev")
            .join("fleet/bundles/intent-demo-3")
            .exists()
    );
}

#[test]
fn a_download_cut_mid_blob_resumes_from_where_it_stopped() {
    let (fleet, v1) = fleet_on_v1();
    let hex = publish_v2(&fleet, &v1);
    let size = std::fs::metadata(repo_blob(&fleet, &hex)).unwrap().len();
    // Cut after the answer's head (well under 400 bytes) and half the body.
    let relay = CuttingRelay::start(fleet.nginx.port(), &hex, 400 + (size / 2) as usize);
    let run = fleet.update_via("dev", &relay.url());
    assert_eq!(relay.cuts(), 1);
    assert_refused_and_still_v1(&fleet, &run, &[&hex]);
    let partial = fleet
        .device("dev")
        .join("fleet/blobs")
        .join(format!("{hex}.partial"));
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < size, "{kept} of {size}");

    fleet.nginx.clear_log();
    let done = report(&fleet.update("dev"));
    assert_eq!(done["resumed"], 1, "{done}");
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 2)));
    let ranged: Vec<_> = fleet
        .nginx
        .log()
        .into_iter()
        .filter(|a| a.path.ends_with(&hex))
        .collect();
    assert_eq!(ranged.len(), 1, "{ranged:?}");
    assert_eq!(ranged[0].status, 206);
    assert_eq!(ranged[0].range, format!("bytes={kept}-"));
    assert_eq!(ranged[0].bytes, size - kept);
}

/// TUF's slow retrieval attack: a server that sends a blob a few bytes at
/// a time, never silent long enough to trip the stall timeout.
#[test]
fn a_server_that_trickles_a_blob_is_given_up_on_and_the_device_keeps_its_version() {
    let (fleet, v1) = fleet_on_v1();
    publish_v2(&fleet, &v1);
    let trickle = Trickle::start(&fleet.repo(), Duration::from_millis(100));
    let mut args = fleet.update_args(&fleet.device("dev"), &trickle.url());
    args.extend(["--stall".into(), "1s".into()]);
    let run = outpost(&args);
    assert_refused_and_still_v1(&fleet, &run, &["too slow", "bytes/s"]);
    // Every blob trickles, so the device gives up on the first new one it
    // fetches, in its own order: the error names one that v2 added.
    let named = run
        .stderr
        .split("blob sha256:")
        .nth(1)
        .and_then(|rest| rest.get(..64))
        .unwrap_or_else(|| panic!("no blob named: {}", run.stderr));
    assert!(!blobs(&v1).contains_key(named), "{}", run.stderr);
    assert!(repo_blob(&fleet, named).exists(), "{}", run.stderr);
    // The partial file is kept; a good server finishes the update.
    let done = report(&fleet.update("dev"));
    assert!(done["outcome"]["staged"].is_object(), "{done}");
    assert_eq!(done["resumed"], 1, "{done}");
    assert_eq!(fleet.run_current("dev"), "halt_conveyor");
}

#[test]
fn bad_fleet_arguments_get_clear_errors() {
    let fleet = Fleet::new();
    fleet
        .fleet(&["set", "Bad Group", "intent-demo", "1"])
        .expect_error(&["'Bad Group' is not a valid group name"]);
    fleet
        .fleet(&["set", "lab", "intent-demo", "7"])
        .expect_error(&[
            "intent-demo version 7 is not in this repository",
            "outpost publish",
        ]);
    fleet.fleet(&["init"]).expect_error(&["exists already"]);
    let run = fleet.update("dev");
    run.expect_error(&["no assignment for group 'lab'", "outpost fleet set lab"]);
    let run = outpost(&[
        "update",
        "--once",
        "--repo",
        "https://example.com/fleet",
        "--group",
        "lab",
        "--fleet-root",
        "/nonexistent/1.root.json",
    ]);
    run.expect_error(&["/nonexistent/1.root.json"]);
}

/// A certificate and key for these names (PEM files in `dir`), self-signed:
/// a device that trusts it treats it as its own private CA.
fn certificate(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let cert = rcgen::generate_simple_self_signed(names).unwrap();
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[test]
fn a_device_follows_its_group_over_https_trusting_a_private_ca_and_nothing_else() {
    let (fleet, _v1) = fleet_with_v1();
    let dir = fleet.scratch.path();
    let (cert, key) = certificate(dir, "repo", &["127.0.0.1", "localhost"]);
    let https = Nginx::start_tls(&fleet.repo(), &cert, &key);
    assert!(https.url().starts_with("https://"));
    let update = |ca: Option<&Path>| {
        let mut args = fleet.update_args(&fleet.device("dev"), &https.url());
        if let Some(ca) = ca {
            args.extend(["--ca-file".into(), ca.display().to_string()]);
        }
        outpost(&args)
    };

    // The system's CAs do not vouch for this server: refused, nothing moved.
    let run = update(None);
    run.expect_error(&[&https.url(), "certificate", "UnknownIssuer"]);
    assert_eq!(fleet.current("dev"), None);
    assert!(https.log().is_empty(), "{:?}", https.log());

    // A CA the device trusts, but its certificate names another host.
    let (other, _) = certificate(dir, "other", &["updates.example.com"]);
    update(Some(&other)).expect_error(&["invalid peer certificate"]);
    let (other_cert, other_key) = certificate(dir, "misnamed", &["updates.example.com"]);
    let misnamed = Nginx::start_tls(&fleet.repo(), &other_cert, &other_key);
    let mut args = fleet.update_args(&fleet.device("dev"), &misnamed.url());
    args.extend(["--ca-file".into(), other_cert.display().to_string()]);
    outpost(&args).expect_error(&["certificate not valid for name \"127.0.0.1\""]);
    assert_eq!(fleet.current("dev"), None);

    // A CA file that is not one: an error naming it, before any fetch.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    update(Some(&junk)).expect_error(&["CA file", "junk.pem", "holds no certificate"]);

    // Trusting the repository's CA: the update lands over TLS.
    let done = report(&update(Some(&cert)));
    assert!(done["outcome"]["staged"].is_object(), "{done}");
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 1)));
    assert_eq!(fleet.run_current("dev"), "stop_conveyor");
    assert!(
        https.log().iter().any(|a| a.path.starts_with("/blobs/")),
        "{:?}",
        https.log()
    );
}

#[test]
fn a_version_whose_health_check_fails_is_never_served_nor_retried() {
    let (fleet, _v1) = fleet_on_v1();
    // v2's labels say "halt_conveyor" where its own check expects
    // "stop_conveyor": it loads, fails its check, and is rejected.
    let v2 = fleet.demo_variant("v2", 2, "halt_conveyor", "stop_conveyor", &["a", "b"]);
    fleet.publish(&v2);
    fleet.set("lab", 2);
    let run = fleet.update("dev");
    assert_refused_and_still_v1(
        &fleet,
        &run,
        &[
            "health check 'stop command' failed",
            "labelled 'halt_conveyor', expected 'stop_conveyor'",
        ],
    );
    let status = outpost(&[
        "status".to_owned(),
        "--state-dir".into(),
        fleet.device("dev").display().to_string(),
    ])
    .json();
    assert_eq!(status["agent"]["phase"], "failed", "{status}");
    assert_eq!(status["rejected"][0]["version"], 2, "{status}");
    // Not retried: nothing is fetched again.
    fleet.nginx.clear_log();
    let again = report(&fleet.update("dev"));
    assert!(again["outcome"]["rejected"].is_object(), "{again}");
    assert!(
        fleet
            .nginx
            .log()
            .iter()
            .all(|a| !a.path.starts_with("/blobs/"))
    );
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 1)));
    // v3 fixes it and lands.
    let v3 = fleet.relabelled_demo("v3", 3, "halt_conveyor", &["a", "b"]);
    fleet.publish(&v3);
    fleet.set("lab", 3);
    report(&fleet.update("dev"));
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 3)));
    assert_eq!(fleet.run_current("dev"), "halt_conveyor");
}

/// The demo relabelled, with a stage spliced in after `classify` that
/// passes its scores through once per instance and then traps: it passes
/// its health check and fails on real traffic.
fn trapping_demo(fleet: &Fleet, dir: &str, version: u64, label: &str) -> PathBuf {
    let bundle = fleet.relabelled_demo(&format!("{dir}-base"), version, label, &[]);
    let _ = bundle;
    let src = fleet.scratch.path().join(format!("{dir}-base-src"));
    let mut toml = std::fs::read_to_string(src.join("intent.toml")).unwrap();
    toml.push_str(&format!(
        "\n[[stages]]\nname = \"guard\"\ncomponent = \"{}\"\ninputs = {{ x = \"scores\" }}\noutputs = {{ x = \"guarded\" }}\nconfig = {{ mode = \"trap-after\", ok_runs = 1 }}\n",
        outpost_e2e::plugin("fail").display()
    ));
    toml = toml.replace(
        "outputs = [\"labels\", \"scores\"]",
        "outputs = [\"labels\", \"scores\", \"guarded\"]",
    );
    std::fs::write(src.join("intent.toml"), toml).unwrap();
    fleet.publisher.bundle(
        &src.join("intent.toml"),
        "intent-demo",
        version,
        dir,
        &["a", "b"],
    )
}

/// Sends the demo request over and over until stopped; counts answers by
/// top label, and keeps every failure.
/// Answers by top label, failures, and each request's latency.
type Seen = (BTreeMap<String, u64>, Vec<String>, Vec<Duration>);

struct Traffic {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Seen>,
}

impl Traffic {
    fn start(addr: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let addr = addr.to_owned();
        let handle = std::thread::spawn(move || {
            let mut labels = BTreeMap::new();
            let mut failures = Vec::new();
            let mut latencies = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let reply = http(
                    &addr,
                    "POST",
                    "/v2/models/intent-demo/infer",
                    &[("content-type", "application/json")],
                    text_request("text", "stop the conveyor")
                        .to_string()
                        .as_bytes(),
                );
                latencies.push(sent.elapsed());
                if reply.status == 200 {
                    let body = reply.json();
                    let label = body["outputs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|o| o["name"] == "labels")
                        .map(|o| {
                            o["data"][0]
                                .as_str()
                                .unwrap()
                                .split('\t')
                                .next()
                                .unwrap()
                                .to_owned()
                        })
                        .unwrap();
                    *labels.entry(label).or_insert(0) += 1;
                } else {
                    failures.push(format!(
                        "{}: {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body)
                    ));
                }
            }
            (labels, failures, latencies)
        });
        Self { stop, handle }
    }

    fn finish(self) -> (BTreeMap<String, u64>, Vec<String>) {
        let (labels, failures, _) = self.finish_timed();
        (labels, failures)
    }

    /// Also each request's latency, in order.
    fn finish_timed(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn server_status(server: &Server) -> Value {
    let reply = http(&server.http, "GET", "/status", &[], b"");
    assert_eq!(reply.status, 200);
    reply.json()
}

/// v1 published and set for group `lab`, and `outpost serve` following the
/// fleet (device state "svc"; `updates` adds keys to `[updates]`, and may
/// open further tables), once it serves v1.
fn serve_on_v1(fleet: &Fleet, updates: &str) -> Server {
    let v1 = fleet.publisher.demo_bundle("v1", 1, &["a", "b"]);
    fleet.publish(&v1);
    fleet.set("lab", 1);
    let server = Server::start(&service_args(fleet, updates));
    wait_until(
        "v1 is installed and served",
        Duration::from_secs(120),
        || ready(&server),
    );
    server
}

/// `serve --config FILE` for the service following the fleet (state
/// "svc"), with `updates` added to `[updates]`; writes FILE anew.
fn service_args(fleet: &Fleet, updates: &str) -> Vec<String> {
    let config = fleet.scratch.write(
        "outpost.toml",
        format!(
            "trust = [\"{root}\"]\nstate_dir = \"{state}\"\n[updates]\nrepository = \"{url}\"\ngroup = \"lab\"\nfleet_root = \"{repo}/metadata/1.root.json\"\n{updates}",
            root = fleet.publisher.path("root1.json").display(),
            state = fleet.device("svc").display(),
            url = fleet.nginx.url(),
            repo = fleet.repo().display(),
        ),
    );
    vec!["--config".to_owned(), config.display().to_string()]
}

fn ready(server: &Server) -> bool {
    let reply = http(
        &server.http,
        "GET",
        "/v2/models/intent-demo/ready",
        &[],
        b"",
    );
    reply.status == 200
}

#[test]
fn the_service_swaps_versions_without_failing_a_request_and_rolls_back_a_bad_one() {
    let fleet = Fleet::new();
    let server = serve_on_v1(
        &fleet,
        "interval_s = 1\njitter = 0.0\nprobation_s = 4\nmin_requests = 5\nmax_failure_rate = 0.2\n[requests]\nconcurrency = 2\n",
    );

    // v2 lands while requests keep coming: none fails.
    let traffic = Traffic::start(&server.http);
    std::thread::sleep(Duration::from_millis(500));
    let v2 = fleet.relabelled_demo("v2", 2, "halt_conveyor", &["a", "b"]);
    fleet.publish(&v2);
    fleet.set("lab", 2);
    wait_until("v2 serves", Duration::from_secs(120), || {
        server_status(&server)["current"]["version"] == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let (labels, failures, mut latencies) = traffic.finish_timed();
    assert!(failures.is_empty(), "{failures:?}\n{}", server.log());
    assert!(
        labels.get("stop_conveyor").is_some_and(|n| *n > 0),
        "{labels:?}"
    );
    assert!(
        labels.get("halt_conveyor").is_some_and(|n| *n > 0),
        "{labels:?}"
    );
    // Reported, not asserted: timing is for benchmarks.
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let swap = server
        .log()
        .lines()
        .find(|l| l.contains("new version swapped in"))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.starts_with("prepare_ms=") || w.starts_with("swap_us="))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    eprintln!(
        "across the swap: {labels:?}, 0 failed; request latency p50 {:?}, p99 {:?}, max {:?}; swap: {swap}",
        at(0.5),
        at(0.99),
        at(1.0)
    );
    wait_until("v2's probation passes", Duration::from_secs(60), || {
        server_status(&server)["agent"]["phase"] == "serving"
    });

    // v3 passes its health check but traps on real traffic: rolled back.
    let v3 = trapping_demo(&fleet, "v3", 3, "halt_conveyor");
    fleet.publish(&v3);
    fleet.set("lab", 3);
    wait_until("v3 is swapped in", Duration::from_secs(120), || {
        server_status(&server)["current"]["version"] == 3
    });
    let traffic = Traffic::start(&server.http);
    wait_until("v3 is rolled back", Duration::from_secs(60), || {
        server_status(&server)["agent"]["phase"] == "rolled-back"
    });
    let (_, failures) = traffic.finish();
    assert!(!failures.is_empty(), "v3 must have failed some requests");
    let status = server_status(&server);
    assert_eq!(status["current"]["version"], 2, "{status}");
    assert_eq!(status["rejected"][0]["version"], 3, "{status}");
    assert!(
        status["agent"]["last_error"]
            .as_str()
            .unwrap()
            .contains("on probation"),
        "{status}"
    );
    // v2 serves again, and v3 is not retried.
    let traffic = Traffic::start(&server.http);
    std::thread::sleep(Duration::from_secs(2));
    let (labels, failures) = traffic.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(labels.contains_key("halt_conveyor"), "{labels:?}");
    assert_eq!(server_status(&server)["current"]["version"], 2);
    let metrics = http(&server.http, "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("outpost_fleet_rollbacks_total 1"), "{text}");

    // v4 fixes it and lands.
    let v4 = fleet.relabelled_demo("v4", 4, "stop_now", &["a", "b"]);
    fleet.publish(&v4);
    fleet.set("lab", 4);
    wait_until("v4 serves", Duration::from_secs(120), || {
        server_status(&server)["current"]["version"] == 4
    });
}

/// A small deterministic generator (xorshift64*), seeded from the clock and
/// printed, so a failing sequence of kill points can be replayed with
/// OUTPOST_KILL_SEED.
struct Xorshift(u64);

impl Xorshift {
    fn seeded() -> Self {
        let seed = std::env::var("OUTPOST_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("kill points seeded with OUTPOST_KILL_SEED={seed}");
        Self(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn kill_nine_anywhere_in_an_update_leaves_a_verified_version_and_it_converges() {
    let (fleet, v1) = fleet_on_v1();
    publish_v2(&fleet, &v1);
    let base = fleet.device("dev");
    // How long a whole update takes here: kill points spread over it.
    copy_dir(&base, &fleet.device("probe"));
    let started = Instant::now();
    report(&fleet.update("probe"));
    let span = started.elapsed().as_micros() as u64;
    let mut rng = Xorshift::seeded();
    let (mut old, mut new) = (0, 0);
    for round in 0..50 {
        let device = fleet.device("victim");
        copy_dir(&base, &device);
        let args = fleet.update_args(&device, &fleet.nginx.url());
        let mut child = std::process::Command::new(outpost_e2e::outpost_bin())
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Up to 120% of a whole update: some rounds finish before the kill.
        let wait = rng.below(span * 6 / 5);
        std::thread::sleep(Duration::from_micros(wait));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        // Never none, never mixed: the current version is v1 or v2, its
        // folder verifies blob by blob, and it runs as that version runs.
        let current = fleet.current("victim");
        let expected = match &current {
            Some((_, 1)) => "stop_conveyor",
            Some((_, 2)) => "halt_conveyor",
            other => panic!("round {round} (kill after {wait} µs): current is {other:?}"),
        };
        if current == Some(("intent-demo".into(), 1)) {
            old += 1;
        } else {
            new += 1;
        }
        let status = outpost(&["status", "--state-dir", &device.display().to_string()]).json();
        let dir = device
            .join("fleet/bundles")
            .join(status["current"]["dir"].as_str().unwrap());
        outpost(&[
            "verify".to_owned(),
            dir.display().to_string(),
            "--trust".into(),
            fleet.publisher.path("root1.json").display().to_string(),
            "--state-dir".into(),
            device.display().to_string(),
        ])
        .assert_ok();
        assert_eq!(fleet.run_current("victim"), expected, "round {round}");

        // And the next check converges on v2.
        let run = fleet.update("victim");
        run.assert_ok();
        assert_eq!(
            fleet.current("victim"),
            Some(("intent-demo".into(), 2)),
            "round {round}"
        );
    }
    eprintln!(
        "50 kill points over {span} µs: {old} left v1 current, {new} v2; all converged on v2"
    );
    assert!(old > 0, "no kill landed before the swap");
}

#[test]
fn blobs_from_an_oci_registry_reach_the_device_and_a_stage_only_update_moves_only_changed_blobs() {
    let fleet = Fleet::new();
    let registry = Registry::start();
    let reference =
        |tag: &str| format!("oci+http://{}/fleet/intent-demo:{tag}", registry.address());

    // `outpost push` alone: an OCI artifact, pinned by digest.
    let v1 = fleet.publisher.demo_bundle("v1", 1, &["a", "b"]);
    let pushed = outpost(&[
        "push".to_owned(),
        v1.display().to_string(),
        reference("pushed"),
        "--trust".into(),
        fleet.publisher.path("root1.json").display().to_string(),
        "--state-dir".into(),
        fleet.device("pusher").display().to_string(),
    ]);
    pushed.assert_ok();
    let pinned = pushed.stdout.trim().to_owned();
    assert!(pinned.contains("/fleet/intent-demo@sha256:"), "{pinned}");
    let manifest = http(
        &registry.address(),
        "GET",
        "/v2/fleet/intent-demo/manifests/pushed",
        &[("accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    );
    assert_eq!(manifest.status, 200);
    let manifest = manifest.json();
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.outpost.bundle.v1"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.outpost.bundle.manifest.v1+toml"
    );
    // signatures.json and one layer per blob, each typed by kind.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1 + blobs(&v1).len());
    assert!(
        layers
            .iter()
            .any(|l| l["mediaType"] == "application/vnd.outpost.model.v1")
    );
    assert!(
        layers
            .iter()
            .any(|l| l["mediaType"] == "application/vnd.outpost.component.v1+wasm")
    );

    // Published with --oci: the head in TUF, the blobs in the registry.
    let run = fleet.publish_oci(&v1, &reference("v1"));
    run.assert_ok();
    assert!(
        run.stdout.contains("blobs pushed to oci+http://"),
        "{}",
        run.stdout
    );
    assert_eq!(
        std::fs::read_dir(fleet.repo().join("blobs"))
            .unwrap()
            .count(),
        0
    );
    fleet.set("lab", 1);
    let first = report(&fleet.update("dev"));
    assert!(
        first["assignment"]["blobs"]
            .as_str()
            .unwrap()
            .contains("/fleet/intent-demo@sha256:"),
        "{first}"
    );
    assert_eq!(
        first["blob_bytes_fetched"],
        blobs(&v1).values().sum::<u64>()
    );
    assert_eq!(fleet.run_current("dev"), "stop_conveyor");
    // No blob came from nginx.
    assert!(
        fleet
            .nginx
            .log()
            .iter()
            .all(|a| !a.path.starts_with("/blobs/"))
    );

    let v2 = fleet.relabelled_demo("v2", 2, "halt_conveyor", &["a", "b"]);
    fleet.publish_oci(&v2, &reference("v2")).assert_ok();
    fleet.set("lab", 2);
    let second = report(&fleet.update("dev"));
    let old = blobs(&v1);
    let changed: u64 = blobs(&v2)
        .iter()
        .filter(|(d, _)| !old.contains_key(*d))
        .map(|(_, s)| s)
        .sum();
    assert_eq!(second["blob_bytes_fetched"], changed, "{second}");
    assert_eq!(fleet.run_current("dev"), "halt_conveyor");
}

/// A tmpfs of `size` mounted at `dir` (root only), unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| Self(dir.to_owned()))
            .or_else(|| {
                eprintln!(
                    "SKIPPED: mounting a small tmpfs needs root: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                None
            })
    }

    fn grow(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_mid_download_keeps_the_old_version_gives_the_space_back_and_lands_later() {
    let (fleet, _v1) = fleet_on_v1();
    // The device's state on a 3 MB disk, v1 installed there.
    let device = fleet.device("small");
    let Some(disk) = SmallDisk::mount(&device, "3m") else {
        return;
    };
    let update = |fleet: &Fleet| {
        let mut args = fleet.update_args(&device, &fleet.nginx.url());
        args.push("--no-cache".into());
        outpost(&args)
    };
    update(&fleet).assert_ok();
    assert_eq!(fleet.current("small"), Some(("intent-demo".into(), 1)));

    // v2 carries a 4 MB vocabulary (the demo's, padded with unused tokens).
    let src = fleet.scratch.path().join("v2-src");
    fleet.relabelled_demo("v2", 2, "halt_conveyor", &[]);
    let mut vocab = std::fs::read_to_string(demo_dir().join("vocab.txt")).unwrap();
    let mut n = 0;
    while vocab.len() < 4 << 20 {
        vocab.push_str(&format!("[unused-padding-token-{n}]\n"));
        n += 1;
    }
    std::fs::write(src.join("vocab.txt"), vocab).unwrap();
    let toml = std::fs::read_to_string(src.join("intent.toml"))
        .unwrap()
        .replace(
            &demo_dir().join("vocab.txt").display().to_string(),
            &src.join("vocab.txt").display().to_string(),
        );
    std::fs::write(src.join("intent.toml"), toml).unwrap();
    let v2 = fleet.publisher.bundle(
        &src.join("intent.toml"),
        "intent-demo",
        2,
        "v2big",
        &["a", "b"],
    );
    fleet.publish(&v2);
    fleet.set("lab", 2);

    let run = update(&fleet);
    run.expect_error(&["No space left on device"]);
    // The space is given back at once: nothing half-downloaded is kept.
    let partials = std::fs::read_dir(device.join("fleet/blobs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".partial")
        })
        .count();
    assert_eq!(partials, 0);
    assert_eq!(fleet.current("small"), Some(("intent-demo".into(), 1)));
    assert_eq!(fleet.run_current("small"), "stop_conveyor");
    let status = outpost(&["status", "--state-dir", &device.display().to_string()]).json();
    assert_eq!(status["agent"]["phase"], "failed", "{status}");
    assert!(
        status["agent"]["last_error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{status}"
    );

    // More room (an operator cleans up): the next check lands.
    disk.grow("16m");
    report(&update(&fleet));
    assert_eq!(fleet.current("small"), Some(("intent-demo".into(), 2)));
    assert_eq!(fleet.run_current("small"), "halt_conveyor");
}

#[test]
fn the_service_keeps_serving_and_says_stale_when_fleet_metadata_expires() {
    let fleet = Fleet::new();
    // v1 stays on probation throughout: the agent checks during one.
    let server = serve_on_v1(
        &fleet,
        "interval_s = 1\njitter = 0.0\nprobation_s = 3600\nmin_requests = 1000\n",
    );
    // The timestamp is re-signed to expire at once, and nothing fresher comes.
    fleet
        .fleet(&["refresh", "--timestamp-lifetime", "1s"])
        .assert_ok();
    wait_until("the service says stale", Duration::from_secs(60), || {
        server_status(&server)["agent"]["stale"] == true
    });
    let status = server_status(&server);
    assert_eq!(status["agent"]["phase"], "stale", "{status}");
    assert!(
        status["agent"]["last_error"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{status}"
    );
    let metrics = http(&server.http, "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("outpost_fleet_stale 1"), "{text}");
    // It keeps serving what it runs.
    let traffic = Traffic::start(&server.http);
    std::thread::sleep(Duration::from_millis(500));
    let (labels, failures) = traffic.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(labels.contains_key("stop_conveyor"), "{labels:?}");
    // A fresh timestamp ends it.
    fleet.fleet(&["refresh"]).assert_ok();
    wait_until("stale ends", Duration::from_secs(60), || {
        server_status(&server)["agent"]["stale"] == false
    });
}

#[test]
fn a_version_assigned_during_probation_is_seen_at_once_and_fetched_and_swapped_in_after_the_verdict()
 {
    let fleet = Fleet::new();
    // v1 (the first install) is on probation for longer than the test.
    let long = "interval_s = 1\njitter = 0.0\nprobation_s = 3600\nmin_requests = 1000\n";
    let server = serve_on_v1(&fleet, long);
    wait_until("v1 is on probation", Duration::from_secs(60), || {
        server_status(&server)["agent"]["phase"] == "probation"
    });
    let v2 = fleet.relabelled_demo("v2", 2, "halt_conveyor", &["a", "b"]);
    fleet.publish(&v2);
    fleet.set("lab", 2);
    wait_until(
        "the service sees v2 assigned while v1 is on probation",
        Duration::from_secs(60),
        || server_status(&server)["agent"]["target"]["version"] == 2,
    );
    // Seen, not fetched (a long download would hold up the verdict), not
    // served.
    let status = server_status(&server);
    assert_eq!(status["current"]["version"], 1, "{status}");
    assert_eq!(status["agent"]["phase"], "probation", "{status}");
    assert!(
        !fleet
            .device("svc")
            .join("fleet/bundles/intent-demo-2")
            .exists()
    );
    assert_eq!(served_label(&server), "stop_conveyor");

    // Restarted with a short probation: the window resumes from the time
    // v1 already served, passes, and v2 is fetched and swapped in.
    drop(server);
    let short = long.replace("probation_s = 3600", "probation_s = 1");
    let server = Server::start(&service_args(&fleet, &short));
    wait_until("v2 serves", Duration::from_secs(90), || {
        server_status(&server)["current"]["version"] == 2
    });
    let status = server_status(&server);
    assert_eq!(status["previous"]["version"], 1, "{status}");
    // current.json moves just before the swap in memory.
    wait_for_label(&server, "halt_conveyor");
}

/// Waits until the service answers the demo request with `label`.
fn wait_for_label(server: &Server, label: &str) {
    wait_until(
        &format!("the service answers {label}"),
        Duration::from_secs(60),
        || served_label(server) == label,
    );
}

/// The top label the service answers for the demo request.
fn served_label(server: &Server) -> String {
    let reply = http(
        &server.http,
        "POST",
        "/v2/models/intent-demo/infer",
        &[("content-type", "application/json")],
        text_request("text", "stop the conveyor")
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    let labels = body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "labels")
        .unwrap()["data"][0]
        .as_str()
        .unwrap()
        .to_owned();
    labels.split('\t').next().unwrap().to_owned()
}

#[test]
fn kill_nine_of_the_service_across_updates_restarts_on_a_verified_version_and_converges() {
    let fleet = Fleet::new();
    let mut server = serve_on_v1(
        &fleet,
        "interval_s = 1\njitter = 0.0\nprobation_s = 2\nmin_requests = 1000\nmax_restarts = 1000\n",
    );
    let config = fleet.scratch.path().join("outpost.toml");
    let args = ["--config".to_owned(), config.display().to_string()];
    // Each version answers the demo request with its own label.
    let labels = [
        "stop_conveyor",
        "halt_conveyor",
        "pause_conveyor",
        "park_conveyor",
        "hold_conveyor",
        "rest_conveyor",
    ];
    for (version, label) in labels.iter().enumerate().skip(1) {
        let version = version as u64 + 1;
        let bundle = fleet.relabelled_demo(&format!("v{version}"), version, label, &["a", "b"]);
        fleet.publish(&bundle);
    }
    let mut assigned = 1;
    let mut served_before = 1;
    let mut rng = Xorshift::seeded();
    let mut seen = BTreeMap::new();
    for round in 0..16 {
        // Move the group on once the device has caught up.
        if assigned < labels.len() as u64
            && server_status(&server)["current"]["version"] == assigned
        {
            assigned += 1;
            fleet.set("lab", assigned);
        }
        // Somewhere in fetch, install, swap, probation or accept.
        std::thread::sleep(Duration::from_millis(rng.below(2000)));
        drop(server); // SIGKILL, then reaped
        server = Server::start(&args);
        wait_until(
            "the restarted service serves",
            Duration::from_secs(120),
            || ready(&server),
        );
        // A verified version, whole: its own label, what current.json says,
        // and never below what it served before. (A swap may fall between
        // reading the status and asking: read both until they agree.)
        let mut reads = 0;
        let (status, version) = loop {
            let before = server_status(&server);
            let label = served_label(&server);
            let after = server_status(&server);
            let version = after["current"]["version"].as_u64().unwrap();
            if before["current"] == after["current"] {
                assert_eq!(
                    label,
                    labels[version as usize - 1],
                    "round {round}: {after}"
                );
                break (after, version);
            }
            reads += 1;
            assert!(reads < 50, "round {round}: the service kept swapping");
        };
        assert!(
            version >= served_before && version <= assigned,
            "round {round}: served v{version} after v{served_before}, v{assigned} assigned"
        );
        *seen
            .entry(format!("v{version} phase {}", status["agent"]["phase"]))
            .or_insert(0) += 1;
        served_before = version;
    }
    eprintln!("after each restart: {seen:?}");
    fleet.set("lab", labels.len() as u64);
    wait_until(
        "the last version is served and accepted",
        Duration::from_secs(120),
        || {
            let status = server_status(&server);
            status["current"]["version"] == labels.len() as u64
                && status["agent"]["phase"] == "serving"
        },
    );
    assert_eq!(served_label(&server), labels[labels.len() - 1]);
}

#[test]
fn a_version_on_probation_that_keeps_killing_the_service_is_rolled_back_at_start() {
    let fleet = Fleet::new();
    let server = serve_on_v1(
        &fleet,
        "interval_s = 1\njitter = 0.0\nprobation_s = 1\nmin_requests = 1000\n",
    );
    wait_until("v1 is accepted", Duration::from_secs(60), || {
        server_status(&server)["agent"]["phase"] == "serving"
    });
    // From now on a probation outlasts the test, and a third start with
    // the same version on probation is one too many.
    let args = service_args(
        &fleet,
        "interval_s = 1\njitter = 0.0\nprobation_s = 3600\nmin_requests = 1000\nmax_restarts = 2\n",
    );
    drop(server);
    let mut server = Server::start(&args);
    wait_until("the service serves v1", Duration::from_secs(120), || {
        ready(&server)
    });
    let v2 = fleet.relabelled_demo("v2", 2, "halt_conveyor", &["a", "b"]);
    fleet.publish(&v2);
    fleet.set("lab", 2);
    wait_until("v2 is on probation", Duration::from_secs(60), || {
        server_status(&server)["current"]["version"] == 2
    });
    let restart = |server: Server| {
        drop(server); // SIGKILL
        let server = Server::start(&args);
        wait_until(
            "the restarted service serves",
            Duration::from_secs(120),
            || ready(&server),
        );
        server
    };
    // Start 1 with v2 on probation.
    server = restart(server);
    let status = server_status(&server);
    assert_eq!(status["current"]["version"], 2, "{status}");
    assert_eq!(status["agent"]["phase"], "probation", "{status}");
    // A clean stop (SIGTERM, drained) does not count against v2.
    server.signal("TERM");
    let st = server.wait(Duration::from_secs(30));
    assert!(st.success(), "{st:?}\n{}", server.log());
    server = Server::start(&args);
    wait_until("the service serves again", Duration::from_secs(120), || {
        ready(&server)
    });
    assert_eq!(server_status(&server)["current"]["version"], 2);
    assert_eq!(served_label(&server), "halt_conveyor");
    // Start 2: still v2.
    server = restart(server);
    assert_eq!(server_status(&server)["current"]["version"], 2);
    // Start 3: more than max_restarts; v1 serves, v2 is rejected.
    server = restart(server);
    let status = server_status(&server);
    assert_eq!(status["current"]["version"], 1, "{status}");
    assert_eq!(served_label(&server), "stop_conveyor");
    assert_eq!(status["agent"]["phase"], "rolled-back", "{status}");
    let why = status["agent"]["last_error"].as_str().unwrap();
    assert!(
        why.contains("started 3 times with it on probation") && why.contains("max_restarts"),
        "{status}"
    );
    assert_eq!(status["rejected"][0]["version"], 2, "{status}");
    let metrics = http(&server.http, "GET", "/metrics", &[], b"");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains("outpost_fleet_rollbacks_total 1"), "{text}");
    // Checks go on and do not bring v2 back.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(server_status(&server)["current"]["version"], 1);
    assert_eq!(served_label(&server), "stop_conveyor");
    // A fixed v3 lands.
    let v3 = fleet.relabelled_demo("v3", 3, "pause_conveyor", &["a", "b"]);
    fleet.publish(&v3);
    fleet.set("lab", 3);
    wait_until("v3 serves", Duration::from_secs(60), || {
        server_status(&server)["current"]["version"] == 3
    });
    // current.json moves just before the swap in memory.
    wait_for_label(&server, "pause_conveyor");
}

#[test]
fn an_operator_publishes_to_a_remote_repository_by_upload_and_devices_follow_it() {
    let fleet = Fleet::new(); // its publisher and bundles; its folder is unused
    let dir = fleet.scratch.path();
    let served = dir.join("remote");
    std::fs::create_dir_all(&served).unwrap();
    let token = "upload-token-0123456789abcdef";
    let token_file = fleet.scratch.write("upload.token", format!("{token}\n"));
    let server = Nginx::start_uploads(&served, token);
    let keys = dir.join("remote-keys");
    let operator = |args: &[&str], with_token: bool| -> Run {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--repo".into(), server.url(), "--keys".into()]);
        all.push(keys.display().to_string());
        if with_token {
            all.extend(["--token-file".into(), token_file.display().to_string()]);
        }
        outpost(&all)
    };
    let publish = |bundle: &Path| {
        operator(
            &[
                "publish",
                &bundle.display().to_string(),
                "--trust",
                &fleet.publisher.path("root1.json").display().to_string(),
                "--state-dir",
                &dir.join("publisher-state").display().to_string(),
            ],
            true,
        )
    };
    let device_update = || {
        let mut args = fleet.update_args(&fleet.device("dev"), &server.url());
        let at = args.iter().position(|a| a == "--fleet-root").unwrap();
        args[at + 1] = served.join("metadata/1.root.json").display().to_string();
        report(&outpost(&args))
    };
    let timestamp = || std::fs::read(served.join("metadata/timestamp.json")).unwrap();

    operator(&["fleet", "init"], true).assert_ok();
    assert_eq!(
        std::fs::read(served.join("metadata/1.root.json")).unwrap(),
        std::fs::read(keys.join("1.root.json")).unwrap(),
        "init pins the fleet root beside the keys"
    );
    operator(&["fleet", "init"], true).expect_error(&["exists already"]);

    let v1 = fleet.publisher.demo_bundle("v1", 1, &["a", "b"]);
    publish(&v1).assert_ok();
    operator(&["fleet", "set", "lab", "intent-demo", "1"], true).assert_ok();
    assert!(device_update()["outcome"]["staged"].is_object());
    assert_eq!(fleet.current("dev"), Some(("intent-demo".into(), 1)));
    assert_eq!(fleet.run_current("dev"), "stop_conveyor");

    // A stage-only v2: only its new blobs go up.
    server.clear_log();
    let v2 = fleet.relabelled_demo("v2", 2, "halt_conveyor", &["a", "b"]);
    publish(&v2).assert_ok();
    let old = blobs(&v1);
    let changed: BTreeMap<String, u64> = blobs(&v2)
        .into_iter()
        .filter(|(d, _)| !old.contains_key(d))
        .collect();
    let put: BTreeMap<String, u64> = server
        .log()
        .into_iter()
        .filter(|a| a.method == "PUT")
        .filter_map(|a| {
            let size = std::fs::metadata(served.join(a.path.trim_start_matches('/')))
                .unwrap()
                .len();
            a.path.strip_prefix("/blobs/").map(|d| (d.to_owned(), size))
        })
        .collect();
    assert_eq!(put, changed);
    // The timestamp went up last.
    let puts: Vec<String> = server
        .log()
        .into_iter()
        .filter(|a| a.method == "PUT")
        .map(|a| a.path)
        .collect();
    assert_eq!(
        puts.last().map(String::as_str),
        Some("/metadata/timestamp.json"),
        "{puts:?}"
    );
    operator(&["fleet", "set", "lab", "intent-demo", "2"], true).assert_ok();
    assert!(device_update()["outcome"]["staged"].is_object());
    assert_eq!(fleet.run_current("dev"), "halt_conveyor");

    // Without the token: refused, and nothing a device reads moved.
    let before = timestamp();
    operator(&["fleet", "refresh"], false).expect_error(&["401", "--token-file"]);
    assert_eq!(timestamp(), before);
    operator(&["fleet", "refresh"], true).assert_ok();
    assert_ne!(timestamp(), before);
    assert_eq!(device_update()["outcome"], "up-to-date");

    // A server replaying an older timestamp (genuine, signed): the
    // operator's machine verified a newer one before, so it is refused and
    // nothing is signed on top of it.
    let newest = timestamp();
    std::fs::write(served.join("metadata/timestamp.json"), &before).unwrap();
    operator(&["fleet", "refresh"], true).expect_error(&["loading", "timestamp"]);
    assert_eq!(timestamp(), before);
    std::fs::write(served.join("metadata/timestamp.json"), &newest).unwrap();

    // A server adding a root 2 that another fleet's root key signed: the
    // chain from the pinned root 1 does not verify, nothing is signed.
    let other = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--repo".into(), dir.join("other").display().to_string()]);
        all.extend([
            "--keys".into(),
            dir.join("other-keys").display().to_string(),
        ]);
        outpost(&all).assert_ok();
    };
    other(&["fleet", "init"]);
    other(&["fleet", "rotate", "root"]);
    let forged = served.join("metadata/2.root.json");
    std::fs::copy(dir.join("other/metadata/2.root.json"), &forged).unwrap();
    operator(&["fleet", "refresh"], true).expect_error(&["loading", "root"]);
    assert_eq!(timestamp(), newest);
    std::fs::remove_file(&forged).unwrap();
    operator(&["fleet", "refresh"], true).assert_ok();

    // A timestamp key rotated through the server (the new key is in place
    // once the upload is done), then an older timestamp replayed: still
    // refused, though tough's own datastore forgets across key rotations.
    operator(&["fleet", "rotate", "timestamp"], true).assert_ok();
    assert!(keys.join("timestamp.pk8").is_file() && !keys.join("timestamp.pk8.new").exists());
    let rotated = timestamp();
    operator(&["fleet", "refresh"], true).assert_ok();
    let newest = timestamp();
    std::fs::write(served.join("metadata/timestamp.json"), &rotated).unwrap();
    operator(&["fleet", "refresh"], true).expect_error(&["older than version", "replays"]);
    std::fs::write(served.join("metadata/timestamp.json"), &newest).unwrap();
    assert_eq!(device_update()["outcome"], "up-to-date");

    // A server holding another fleet's repository, or lying about this
    // one: its root is not the one pinned with the keys.
    std::fs::copy(
        dir.join("other/metadata/1.root.json"),
        served.join("metadata/1.root.json"),
    )
    .unwrap();
    let before = timestamp();
    operator(&["fleet", "refresh"], true)
        .expect_error(&["1.root.json", "is not the fleet root pinned"]);
    assert_eq!(timestamp(), before);
}

#[test]
fn a_swap_the_instance_pool_cannot_hold_waits_for_capacity_and_is_not_held_against_the_version() {
    let fleet = Fleet::new();
    // Three stages at two requests at once: 6 instances per version; the
    // pool holds one version, not two.
    let tight = "interval_s = 1\njitter = 0.0\nprobation_s = 1\nmin_requests = 1000\n[engine]\nallocator = \"pooling\"\npool_instances = 8\n[requests]\nconcurrency = 2\n";
    let server = serve_on_v1(&fleet, tight);
    let v2 = fleet.relabelled_demo("v2", 2, "halt_conveyor", &["a", "b"]);
    fleet.publish(&v2);
    fleet.set("lab", 2);
    wait_until(
        "the swap is refused for capacity",
        Duration::from_secs(60),
        || server_status(&server)["agent"]["last_error_kind"] == "capacity",
    );
    let status = server_status(&server);
    let why = status["agent"]["last_error"].as_str().unwrap();
    assert!(
        why.contains("engine.pool_instances") && why.contains(" 8"),
        "{status}"
    );
    assert_eq!(status["current"]["version"], 1, "{status}");
    assert_eq!(status["rejected"], serde_json::json!([]), "{status}");
    assert_eq!(served_label(&server), "stop_conveyor");
    // With a pool that holds both, the same version lands.
    drop(server);
    let roomy = tight.replace("pool_instances = 8", "pool_instances = 16");
    let server = Server::start(&service_args(&fleet, &roomy));
    wait_until("v2 serves", Duration::from_secs(60), || {
        server_status(&server)["current"]["version"] == 2
    });
    // current.json moves just before the swap in memory.
    wait_for_label(&server, "halt_conveyor");
}

#[test]
fn the_service_follows_a_fleet_whose_blobs_are_in_an_oci_registry_and_swaps_without_failing_a_request()
 {
    let fleet = Fleet::new();
    let registry = Registry::start();
    let reference =
        |tag: &str| format!("oci+http://{}/fleet/intent-demo:{tag}", registry.address());
    let v1 = fleet.publisher.demo_bundle("v1", 1, &["a", "b"]);
    fleet.publish_oci(&v1, &reference("v1")).assert_ok();
    fleet.set("lab", 1);
    let server = Server::start(&service_args(
        &fleet,
        "interval_s = 1\njitter = 0.0\nprobation_s = 1\nmin_requests = 1000\n",
    ));
    wait_until(
        "v1 is installed and served",
        Duration::from_secs(120),
        || ready(&server),
    );

    let traffic = Traffic::start(&server.http);
    std::thread::sleep(Duration::from_millis(300));
    let v2 = fleet.relabelled_demo("v2", 2, "halt_conveyor", &["a", "b"]);
    fleet.publish_oci(&v2, &reference("v2")).assert_ok();
    fleet.set("lab", 2);
    wait_until("v2 serves", Duration::from_secs(120), || {
        server_status(&server)["current"]["version"] == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let (labels, failures) = traffic.finish();
    assert!(failures.is_empty(), "{failures:?}\n{}", server.log());
    assert!(labels.contains_key("stop_conveyor"), "{labels:?}");
    assert!(labels.contains_key("halt_conveyor"), "{labels:?}");
    // Every blob came from the registry: the repository holds none.
    let in_repo = std::fs::read_dir(fleet.repo().join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(in_repo, 0);
    eprintln!("across the OCI swap: {labels:?}, 0 failed");
}
