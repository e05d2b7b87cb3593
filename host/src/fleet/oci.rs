//! Bundles as OCI artifacts: `outpost push BUNDLE oci://HOST[:PORT]/REPO:TAG`
//! stores a bundle in any OCI registry (the CNCF distribution registry,
//! Harbor, a cloud registry) as an image manifest with an Outpost
//! `artifactType`; `manifest.toml` is the config blob, `signatures.json`
//! and every bundle blob are layers, each with a media type by kind.
//!
//! Devices then fetch the blobs they lack straight from the registry's blob
//! API (`GET /v2/REPO/blobs/sha256:...`, resumable with `Range`), checked
//! against the signed manifest exactly as blobs from a static repository.
//! A reference pinned by digest is written `oci://HOST/REPO@sha256:...`
//! (HTTPS) or `oci+http://...` (plain HTTP, for a registry on loopback or a
//! network you trust: every byte is still digest-checked).

use super::FleetError;
use outpost_signing::bundle::{BLOB_DIR, Bundle, SIGNATURES_FILE};
use outpost_signing::manifest::BlobKind;
use outpost_signing::root::TrustRoot;
use std::collections::BTreeMap;
use std::path::Path;

/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.outpost.bundle.v1";
/// The config blob: the bundle's `manifest.toml`.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.outpost.bundle.manifest.v1+toml";
/// The layer holding `signatures.json`.
pub const SIGNATURES_MEDIA_TYPE: &str = "application/vnd.outpost.bundle.signatures.v1+json";

/// The media type of a bundle blob of `kind`.
pub fn blob_media_type(kind: BlobKind) -> &'static str {
    match kind {
        BlobKind::Model => "application/vnd.outpost.model.v1",
        BlobKind::Component => "application/vnd.outpost.component.v1+wasm",
        BlobKind::Pipeline => "application/vnd.outpost.pipeline.v1+toml",
        BlobKind::File => "application/vnd.outpost.file.v1",
        BlobKind::Precompiled => "application/vnd.outpost.precompiled.v1",
    }
}

/// A parsed `oci://HOST[:PORT]/REPO(:TAG|@DIGEST)` (or `oci+http://`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciRef {
    /// Plain HTTP rather than HTTPS.
    pub plain_http: bool,
    /// `HOST[:PORT]`.
    pub registry: String,
    /// The repository path.
    pub repository: String,
    /// `:TAG` or `@sha256:...`, with its sigil.
    pub suffix: String,
}

impl OciRef {
    /// Parses a reference; the error says what a reference looks like.
    pub fn parse(text: &str) -> Result<Self, FleetError> {
        let bad = |problem: &str| FleetError::Fetch {
            url: text.to_owned(),
            problem: format!(
                "{problem}; write oci://HOST[:PORT]/REPO:TAG (or oci+http:// for a registry without TLS)"
            ),
        };
        let (plain_http, rest) = if let Some(rest) = text.strip_prefix("oci+http://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("oci://") {
            (false, rest)
        } else {
            return Err(bad("not an OCI reference"));
        };
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no repository after the registry"))?;
        let (repository, suffix) = match path.find(['@', ':']) {
            Some(at) => (&path[..at], &path[at..]),
            None => (path, ":latest"),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-/".contains(&c))
        };
        if registry.is_empty() || !valid(repository) {
            return Err(bad(
                "the registry or repository is empty or has characters OCI does not allow",
            ));
        }
        Ok(Self {
            plain_http,
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            suffix: suffix.to_owned(),
        })
    }

    fn scheme(&self) -> &'static str {
        if self.plain_http { "oci+http" } else { "oci" }
    }

    /// The same repository pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> Self {
        Self {
            suffix: format!("@{digest}"),
            ..self.clone()
        }
    }

    /// Where the registry serves this repository's blobs: the base URL
    /// `http(s)://HOST/v2/REPO/blobs/`.
    pub fn blobs_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}/blobs/", self.registry, self.repository)
    }

    fn reference(&self) -> Result<oci_client::Reference, FleetError> {
        let text = format!("{}/{}{}", self.registry, self.repository, self.suffix);
        text.parse().map_err(|e| FleetError::Fetch {
            url: self.to_string(),
            problem: format!("not a usable OCI reference: {e}"),
        })
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}/{}{}",
            self.scheme(),
            self.registry,
            self.repository,
            self.suffix
        )
    }
}

/// Pushes a bundle (directory or archive; its signatures checked against
/// `trust` first) to `target`; returns the reference pinned by the
/// manifest's digest.
pub async fn push(
    bundle: &Path,
    target: &OciRef,
    trust: &TrustRoot,
    staging: &Path,
) -> Result<OciRef, FleetError> {
    let in_bundle = |source| FleetError::Bundle {
        path: bundle.to_owned(),
        source: Box::new(source),
    };
    let dir = if bundle.is_dir() {
        bundle.to_owned()
    } else {
        Bundle::open_verified(bundle, trust, staging).map_err(in_bundle)?;
        staging.to_owned()
    };
    let verified = Bundle::open_dir(&dir)
        .map_err(in_bundle)?
        .verify(trust)
        .map_err(in_bundle)?;
    verified.check_all_blobs().map_err(in_bundle)?;
    let read = |path: &Path| std::fs::read(path).map_err(FleetError::io(path));
    let manifest_bytes = read(&dir.join(outpost_signing::bundle::MANIFEST_FILE))?;
    let title = |name: &str| {
        Some(BTreeMap::from([(
            "org.opencontainers.image.title".to_owned(),
            name.to_owned(),
        )]))
    };
    let mut layers = vec![oci_client::client::ImageLayer::new(
        read(&dir.join(SIGNATURES_FILE))?,
        SIGNATURES_MEDIA_TYPE.to_owned(),
        title(SIGNATURES_FILE),
    )];
    for (digest, entry) in &verified.manifest().blobs {
        let hex = digest.trim_start_matches("sha256:");
        layers.push(oci_client::client::ImageLayer::new(
            read(&dir.join(BLOB_DIR).join(hex))?,
            blob_media_type(entry.kind).to_owned(),
            title(&entry.name),
        ));
    }
    let config =
        oci_client::client::Config::new(manifest_bytes, MANIFEST_MEDIA_TYPE.to_owned(), None);
    let info = &verified.manifest().bundle;
    let mut manifest = oci_client::manifest::OciImageManifest::build(
        &layers,
        &config,
        Some(BTreeMap::from([
            (
                "org.opencontainers.image.title".to_owned(),
                info.name.clone(),
            ),
            (
                "org.opencontainers.image.version".to_owned(),
                info.version.to_string(),
            ),
        ])),
    );
    manifest.artifact_type = Some(ARTIFACT_TYPE.to_owned());
    let client = client(target);
    let reference = target.reference()?;
    let auth = oci_client::secrets::RegistryAuth::Anonymous;
    let failed = |e: oci_client::errors::OciDistributionError| FleetError::Fetch {
        url: target.to_string(),
        problem: format!("push failed: {e}"),
    };
    client
        .push(&reference, &layers, config, &auth, Some(manifest))
        .await
        .map_err(failed)?;
    let digest = client
        .fetch_manifest_digest(&reference, &auth)
        .await
        .map_err(failed)?;
    Ok(target.pinned(&digest))
}

fn client(target: &OciRef) -> oci_client::Client {
    oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: if target.plain_http {
            oci_client::client::ClientProtocol::HttpsExcept(vec![target.registry.clone()])
        } else {
            oci_client::client::ClientProtocol::Https
        },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn references_parse_and_print_back() {
        let r = OciRef::parse("oci+http://127.0.0.1:5000/fleet/intent-demo:v2").unwrap();
        assert!(r.plain_http);
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "fleet/intent-demo");
        assert_eq!(r.suffix, ":v2");
        assert_eq!(
            r.blobs_url(),
            "http://127.0.0.1:5000/v2/fleet/intent-demo/blobs/"
        );
        let pinned = r.pinned("sha256:ab");
        assert_eq!(
            pinned.to_string(),
            "oci+http://127.0.0.1:5000/fleet/intent-demo@sha256:ab"
        );
        assert_eq!(OciRef::parse(&pinned.to_string()).unwrap(), pinned);
        assert_eq!(
            OciRef::parse("oci://r.example/x").unwrap().suffix,
            ":latest"
        );
        for bad in [
            "http://x/y",
            "oci://",
            "oci://host",
            "oci://host/UPPER:1",
            "oci://host/a b",
        ] {
            assert!(OciRef::parse(bad).is_err(), "{bad}");
        }
    }
}
