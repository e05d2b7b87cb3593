//! The trust commands: keys, roots, bundles, signatures, verification, and
//! opening a bundle for `run`.

use anyhow::{Context, Result, bail};
use outpost_host::device::DeviceState;
use outpost_host::policy::DevicePolicy;
use outpost_signing::bundle::Bundle;
use outpost_signing::evidence::Evidence;
use outpost_signing::keys::{PublicKey, SecretKey};
use outpost_signing::provenance::SourceRef;
use outpost_signing::root::{RootBody, RootKey};
use outpost_signing::time::Timestamp;
use std::path::{Path, PathBuf};

/// Where a device keeps what it has accepted: `--state-dir`, else
/// `$OUTPOST_STATE_DIR`, else `$XDG_STATE_HOME/outpost`, else
/// `~/.local/state/outpost`.
pub fn state_dir(arg: Option<&Path>) -> PathBuf {
    if let Some(dir) = arg {
        return dir.to_owned();
    }
    if let Some(dir) = std::env::var_os("OUTPOST_STATE_DIR") {
        return dir.into();
    }
    // systemd's StateDirectory= (the packaged unit: /var/lib/outpost); the
    // first of a colon-separated list.
    if let Some(dirs) = std::env::var_os("STATE_DIRECTORY")
        && let Some(first) = std::env::split_paths(&dirs).next()
        && !first.as_os_str().is_empty()
    {
        return first;
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("outpost");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/outpost")
}

pub fn keygen(out: &Path) -> Result<()> {
    let key = SecretKey::generate()?;
    key.save(out)
        .with_context(|| format!("cannot write the key to {}", out.display()))?;
    let public = key.public();
    outln!(
        "secret key: {} (mode 0600; keep it off devices)",
        out.display()
    );
    outln!("public key: {public}");
    outln!("key id:     {}", public.id());
    Ok(())
}

pub struct RootArgs<'a> {
    pub keys: &'a [PathBuf],
    pub threshold: u32,
    pub expires: &'a str,
    pub version: u64,
    pub revoke: &'a [String],
    pub sign: &'a [PathBuf],
    pub out: &'a Path,
}

pub fn root_create(args: RootArgs<'_>) -> Result<()> {
    let keys = args
        .keys
        .iter()
        .map(|path| {
            let public = PublicKey::load(path)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().trim_end_matches(".key").to_owned());
            Ok(RootKey {
                public: public.to_string(),
                name,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    args.expires.parse::<Timestamp>()?;
    let body = RootBody {
        version: args.version,
        expires: args.expires.to_owned(),
        threshold: args.threshold,
        keys,
        revoked: args
            .revoke
            .iter()
            .map(|id| serde_json::from_value(serde_json::Value::String(id.clone())))
            .collect::<Result<_, _>>()?,
    };
    let mut envelope = body.to_envelope()?;
    for key in args.sign {
        let secret = SecretKey::load(key)?;
        envelope.sign(&secret, "root")?;
    }
    std::fs::write(args.out, envelope.to_json())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    outln!(
        "trust root version {} -> {} ({} signature(s))",
        args.version,
        args.out.display(),
        args.sign.len()
    );
    Ok(())
}

pub fn sign(bundle: &Path, key: &Path) -> Result<()> {
    if !bundle.is_dir() {
        bail!(
            "{}: sign the bundle directory, then pack it (outpost pack)",
            bundle.display()
        );
    }
    let key = SecretKey::load(key)?;
    let mut opened = Bundle::open_dir(bundle)?;
    opened.sign(&key)?;
    let info = &opened.manifest().bundle;
    outln!(
        "signed bundle '{}' version {} with key {}",
        info.name,
        info.version,
        key.public().id()
    );
    Ok(())
}

pub fn verify(path: &Path, trust: &[PathBuf], policy: &DevicePolicy, state: &Path) -> Result<()> {
    let device = DeviceState::open(state)?;
    let (verified, provenance, _staging) = device.open_verified(path, trust, policy)?;
    if let Some(p) = provenance {
        outln!(
            "provenance: built by '{}' from {} at {}",
            p.builder,
            p.source.repository,
            p.source.commit
        );
    }
    let manifest = verified.manifest();
    outln!(
        "bundle:    {} version {}",
        manifest.bundle.name,
        manifest.bundle.version
    );
    outln!("manifest:  {}", verified.manifest_digest());
    let signers: Vec<&str> = verified.report().valid.iter().map(|k| k.as_str()).collect();
    outln!("signed by: {} (threshold met)", signers.join(", "));
    for (key, why) in &verified.report().rejected {
        outln!("not counted: {key}: {why}");
    }
    outln!("blobs:     {} verified", manifest.blobs.len());
    for (stage, grants) in &manifest.grants {
        if !grants.models.is_empty() {
            outln!(
                "grants:    stage '{stage}' may load models {:?}",
                grants.models
            );
        }
        let outside = outpost_signing::manifest::Grants {
            models: Vec::new(),
            ..grants.clone()
        };
        if !outside.is_empty() {
            outln!("grants:    stage '{stage}' may use {outside:?}");
        }
    }
    Ok(())
}

/// Reads a device policy file, or the empty policy when none is given.
pub fn policy(path: Option<&Path>) -> Result<DevicePolicy> {
    match path {
        None => Ok(DevicePolicy::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read policy {}", p.display()))?;
            Ok(DevicePolicy::parse(&text, &p.display().to_string())?)
        }
    }
}

pub fn attach_provenance(
    bundle: &Path,
    key: &Path,
    builder: &str,
    repository: &str,
    commit: &str,
) -> Result<()> {
    let key = SecretKey::load(key)?;
    let mut opened = Bundle::open_dir(bundle)?;
    let source = SourceRef {
        repository: repository.to_owned(),
        commit: commit.to_owned(),
    };
    let envelope = outpost_signing::provenance::attest(&opened, &key, builder, source)?;
    opened.attach_provenance(&envelope)?;
    outln!(
        "provenance by builder '{builder}' (key {}) attached to {}",
        key.public().id(),
        bundle.display()
    );
    Ok(())
}

pub fn attest(state: &Path, nonce: &str) -> Result<()> {
    let device = DeviceState::open(state)?;
    let key = device.device_key()?;
    let running = device.running()?;
    let exe = std::env::current_exe().context("cannot find the host binary")?;
    let binary = std::fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
    let evidence = Evidence {
        host_version: env!("CARGO_PKG_VERSION").to_owned(),
        host_binary: outpost_signing::Digest::of(&binary).to_string(),
        device_key: key.public().to_string(),
        device_key_id: key.public().id().to_string(),
        bundle: running,
        nonce: nonce.to_owned(),
        timestamp: Timestamp::now().to_string(),
    };
    outln!("{}", evidence.sign(&key)?.to_json());
    Ok(())
}

pub struct EvidenceArgs<'a> {
    pub evidence: &'a Path,
    pub device_key: &'a Path,
    pub nonce: &'a str,
    pub bundle: Option<&'a Path>,
    pub trust: &'a [PathBuf],
    pub max_age_s: i64,
    pub state: &'a Path,
}

pub fn verify_evidence(args: EvidenceArgs<'_>) -> Result<()> {
    let device = PublicKey::load(args.device_key)?;
    let bytes = std::fs::read(args.evidence)
        .with_context(|| format!("cannot read {}", args.evidence.display()))?;
    // The expected bundle is checked as the device would (signatures,
    // blobs), but against the verifier's roots; grants are the device's
    // business, not the verifier's.
    let state = DeviceState::open(args.state)?;
    let bundle = match args.bundle {
        Some(path) => Some(state.open_signed(path, args.trust)?),
        None => None,
    };
    let expected = outpost_signing::evidence::Expectation {
        device: &device,
        nonce: args.nonce,
        bundle: bundle
            .as_ref()
            .map(|(b, _)| (b.manifest(), b.manifest_digest())),
        max_age_s: args.max_age_s,
        now: Timestamp::now(),
    };
    let evidence = outpost_signing::evidence::verify(&bytes, &expected)?;
    outln!(
        "evidence from device {} verified: host {} ({})",
        device.id(),
        evidence.host_version,
        evidence.host_binary
    );
    if let Some(b) = &evidence.bundle {
        outln!(
            "runs bundle '{}' version {} ({} stages, {} models)",
            b.name,
            b.version,
            b.stages.len(),
            b.models.len()
        );
    }
    Ok(())
}
