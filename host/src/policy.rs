//! The device operator's policy (`policy.toml`): what provenance bundles
//! must carry, and what they may be granted on this device.
//!
//! A bundle's signature says its publisher wants a stage to see a
//! directory, an environment variable or a network address; whether this
//! device lets any bundle have that is the operator's call. With no
//! `[grants]` table a bundle may be granted nothing beyond its own models
//! (and the real clocks): a bundle that asks for more is refused at load,
//! naming the stage, the grant and the policy key that would allow it.
//!
//! ```toml
//! [grants]
//! dirs = ["/srv/camera/frames"]      # read-only, by prefix
//! writable_dirs = ["/var/lib/outpost-data"]
//! env = ["TZ"]
//! network = ["127.0.0.1:1883"]
//! clocks = true                       # the default
//!
//! [precompiled]
//! allow = true   # load native code publishers compiled for this device
//! ```

use outpost_signing::manifest::Manifest;
use outpost_signing::provenance::{Policy, ProvenancePolicy};
use serde::Deserialize;
use std::path::{Component, Path, PathBuf};

/// The whole policy file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePolicy {
    /// What provenance bundles must carry (`[provenance]`).
    #[serde(default)]
    pub provenance: ProvenancePolicy,
    /// What bundles may be granted (`[grants]`).
    #[serde(default)]
    pub grants: GrantPolicy,
    /// Whether precompiled native code in bundles is used (`[precompiled]`).
    #[serde(default)]
    pub precompiled: PrecompiledPolicy,
}

/// The `[precompiled]` table. A bundle built with `outpost bundle
/// --precompile` carries its components as native code for named targets.
/// That code is not sandboxed by compilation on the device: it runs with
/// the host's rights, trusted only because a trusted key signed it. So it is
/// used only where the operator allows it; otherwise the host compiles each
/// component itself. A host built without a compiler needs it allowed.
/// Grants do not bind such code: allow it only for publishers trusted with
/// the host's own rights.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecompiledPolicy {
    /// Load precompiled artifacts whose target and engine match this host.
    #[serde(default)]
    pub allow: bool,
}

/// The `[grants]` table: the most any bundle may be granted here.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantPolicy {
    /// Absolute directories whose contents stages may be granted read-only.
    #[serde(default)]
    pub dirs: Vec<String>,
    /// Absolute directories whose contents stages may be granted writable
    /// (and read-only).
    #[serde(default)]
    pub writable_dirs: Vec<String>,
    /// Environment variable names stages may be given.
    #[serde(default)]
    pub env: Vec<String>,
    /// `ip:port` addresses stages may connect to.
    #[serde(default)]
    pub network: Vec<String>,
    /// Whether stages may read the real clocks.
    #[serde(default = "yes")]
    pub clocks: bool,
}

fn yes() -> bool {
    true
}

impl Default for GrantPolicy {
    fn default() -> Self {
        Self {
            dirs: Vec::new(),
            writable_dirs: Vec::new(),
            env: Vec::new(),
            network: Vec::new(),
            clocks: true,
        }
    }
}

/// Why a policy file was refused, or a bundle by it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy file is not valid TOML or does not follow the schema.
    #[error("{what}: {message}")]
    Malformed {
        /// The policy file.
        what: String,
        /// The parser's message.
        message: String,
    },
    /// A directory in the policy is not absolute or not normal.
    #[error(
        "{what}: [grants] {key} entry \"{entry}\" must be an absolute path without '.' or '..'"
    )]
    BadPrefix {
        /// The policy file.
        what: String,
        /// Which key.
        key: &'static str,
        /// The entry.
        entry: String,
    },
    /// A bundle asks for a grant the device policy does not allow.
    #[error(
        "bundle '{bundle}' stage '{stage}' is granted {grant}, which this device's policy does not allow ({rule}); ask the device operator to allow it in policy.toml, or publish the bundle without it"
    )]
    GrantRefused {
        /// The bundle.
        bundle: String,
        /// The stage.
        stage: String,
        /// The grant, as the manifest gives it.
        grant: String,
        /// The policy key that would have to allow it, and what it allows.
        rule: String,
    },
}

impl DevicePolicy {
    /// Parses a policy file's text; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<Self, PolicyError> {
        let policy: Self = toml::from_str(text).map_err(|e| PolicyError::Malformed {
            what: what.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        for (key, list) in [
            ("dirs", &policy.grants.dirs),
            ("writable_dirs", &policy.grants.writable_dirs),
        ] {
            for entry in list {
                if normal_absolute(Path::new(entry)).is_none() {
                    return Err(PolicyError::BadPrefix {
                        what: what.to_owned(),
                        key,
                        entry: entry.clone(),
                    });
                }
            }
        }
        Ok(policy)
    }

    /// The provenance part, as the trust layer checks it.
    pub fn provenance_policy(&self) -> Policy {
        Policy {
            provenance: self.provenance.clone(),
        }
    }

    /// Refuses `manifest` if any stage is granted more than this policy
    /// allows.
    pub fn check_grants(&self, manifest: &Manifest) -> Result<(), PolicyError> {
        let g = &self.grants;
        let list = |key: &str, items: &[String]| {
            format!(
                "[grants] {key} = [{}]",
                items
                    .iter()
                    .map(|i| format!("\"{i}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        for (stage, grants) in &manifest.grants {
            let refuse = |grant: String, rule: String| PolicyError::GrantRefused {
                bundle: manifest.bundle.name.clone(),
                stage: stage.clone(),
                grant,
                rule,
            };
            for entry in &grants.env {
                let name = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
                if !g.env.iter().any(|allowed| allowed == name) {
                    return Err(refuse(
                        format!("environment variable {name}"),
                        list("env", &g.env),
                    ));
                }
            }
            for address in &grants.network {
                if !g.network.iter().any(|allowed| allowed == address) {
                    return Err(refuse(
                        format!("network address {address}"),
                        list("network", &g.network),
                    ));
                }
            }
            if grants.clocks && !g.clocks {
                return Err(refuse(
                    "the real clocks".into(),
                    "[grants] clocks = false".into(),
                ));
            }
            for dir in &grants.dirs {
                let what = format!(
                    "directory {} ({}, seen by the stage as {})",
                    dir.host,
                    if dir.writable {
                        "writable"
                    } else {
                        "read-only"
                    },
                    dir.guest
                );
                let Some(host) = normal_absolute(Path::new(&dir.host)) else {
                    return Err(refuse(
                        what,
                        "a granted directory must be an absolute path without '.' or '..'".into(),
                    ));
                };
                if Path::new(&dir.guest)
                    .components()
                    .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
                {
                    return Err(refuse(
                        what,
                        "the path a stage sees must not contain '.' or '..'".into(),
                    ));
                }
                let under = |prefixes: &[String]| {
                    prefixes.iter().any(|p| {
                        normal_absolute(Path::new(p)).is_some_and(|prefix| host.starts_with(prefix))
                    })
                };
                let allowed = if dir.writable {
                    under(&g.writable_dirs)
                } else {
                    under(&g.dirs) || under(&g.writable_dirs)
                };
                if !allowed {
                    let rule = if dir.writable {
                        list("writable_dirs", &g.writable_dirs)
                    } else {
                        format!(
                            "{} and {}",
                            list("dirs", &g.dirs),
                            list("writable_dirs", &g.writable_dirs)
                        )
                    };
                    return Err(refuse(what, rule));
                }
            }
        }
        Ok(())
    }
}

/// `path` if it is absolute and has no `.` or `..` components.
fn normal_absolute(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Normal(_) => out.push(c),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_signing::manifest::{BundleInfo, DirGrant, Grants};

    fn manifest(grants: Grants) -> Manifest {
        Manifest {
            bundle: BundleInfo {
                name: "cam".into(),
                version: 1,
                pipeline: "sha256:00".into(),
            },
            blobs: Default::default(),
            grants: [("reader".to_owned(), grants)].into_iter().collect(),
        }
    }

    fn dir(host: &str, writable: bool) -> Grants {
        Grants {
            dirs: vec![DirGrant {
                host: host.into(),
                guest: "/data".into(),
                writable,
            }],
            ..Grants::default()
        }
    }

    const POLICY: &str = r#"
[grants]
dirs = ["/srv/camera"]
writable_dirs = ["/var/lib/outpost-data"]
env = ["TZ"]
network = ["127.0.0.1:1883"]
"#;

    #[test]
    fn grants_inside_the_policy_pass_and_the_rest_is_named() {
        let policy = DevicePolicy::parse(POLICY, "policy.toml").unwrap();
        let ok = |g: Grants| policy.check_grants(&manifest(g));
        assert!(ok(dir("/srv/camera/frames", false)).is_ok());
        assert!(ok(dir("/var/lib/outpost-data/x", true)).is_ok());
        assert!(ok(dir("/var/lib/outpost-data/x", false)).is_ok());
        let refused = |g: Grants| ok(g).unwrap_err().to_string();
        let e = refused(dir("/srv/camera/../../etc", false));
        assert!(e.contains("stage 'reader'") && e.contains("'..'"), "{e}");
        let e = refused(dir("/srv/camera-other", false));
        assert!(e.contains("[grants] dirs = [\"/srv/camera\"]"), "{e}");
        let e = refused(dir("/srv/camera/frames", true));
        assert!(e.contains("writable") && e.contains("writable_dirs"), "{e}");
        let e = refused(dir("relative/dir", false));
        assert!(e.contains("absolute"), "{e}");
        let e = refused(Grants {
            env: vec!["HOME".into()],
            ..Grants::default()
        });
        assert!(
            e.contains("environment variable HOME") && e.contains("[grants] env = [\"TZ\"]"),
            "{e}"
        );
        assert!(
            ok(Grants {
                env: vec!["TZ=UTC".into()],
                ..Grants::default()
            })
            .is_ok()
        );
        let e = refused(Grants {
            network: vec!["10.0.0.1:22".into()],
            ..Grants::default()
        });
        assert!(e.contains("network address 10.0.0.1:22"), "{e}");
    }

    #[test]
    fn without_grants_in_the_policy_nothing_outside_is_allowed() {
        let policy = DevicePolicy::default();
        assert!(policy.check_grants(&manifest(Grants::default())).is_ok());
        assert!(
            policy
                .check_grants(&manifest(Grants {
                    clocks: true,
                    ..Grants::default()
                }))
                .is_ok()
        );
        assert!(policy.check_grants(&manifest(dir("/tmp", false))).is_err());
        let e = DevicePolicy::parse("[grants]\ndirs = [\"srv\"]\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = DevicePolicy::parse("[grant]\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("p.toml"), "{e}");
    }
}
