//! Provenance: an in-toto Statement (SLSA provenance v1 predicate) in a
//! DSSE envelope, signed by a builder, saying which source (repository,
//! commit) produced which digests. A device's policy can require it from
//! named builders.

use crate::bundle::VerifiedBundle;
use crate::dsse::Envelope;
use crate::keys::{PublicKey, SecretKey};
use crate::manifest::{BlobKind, Manifest};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// DSSE payload type of in-toto statements.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The in-toto Statement version this writes and reads.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA provenance predicate type.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// The build type Outpost records.
pub const BUILD_TYPE: &str = "https://outpost.invalid/bundle-build/v1";

/// An in-toto Statement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// The artifacts the statement is about.
    pub subject: Vec<Subject>,
    /// Always [`SLSA_PROVENANCE_V1`] here.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The provenance.
    pub predicate: Provenance,
}

/// One artifact and its digests.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subject {
    /// The artifact's name.
    pub name: String,
    /// Algorithm → hex digest.
    pub digest: BTreeMap<String, String>,
}

/// The SLSA provenance v1 predicate, the parts Outpost uses.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    /// What was built from what.
    pub build_definition: BuildDefinition,
    /// Who built it.
    pub run_details: RunDetails,
}

/// SLSA `buildDefinition`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// [`BUILD_TYPE`].
    pub build_type: String,
    /// The source.
    pub external_parameters: SourceRef,
}

/// The source a build came from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceRef {
    /// Repository URL.
    pub repository: String,
    /// Commit id.
    pub commit: String,
}

/// SLSA `runDetails`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunDetails {
    /// The builder.
    pub builder: Builder,
}

/// SLSA `builder`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Builder {
    /// The builder's identity.
    pub id: String,
}

/// Writes a signed provenance statement covering every blob of `bundle`.
pub fn attest(
    bundle: &crate::bundle::Bundle,
    key: &SecretKey,
    builder: &str,
    source: SourceRef,
) -> Result<Envelope> {
    let subject = bundle
        .manifest()
        .blobs
        .iter()
        .map(|(digest, blob)| Subject {
            name: blob.name.clone(),
            digest: BTreeMap::from([(
                "sha256".to_owned(),
                digest.trim_start_matches("sha256:").to_owned(),
            )]),
        })
        .collect();
    let statement = Statement {
        statement_type: STATEMENT_TYPE.into(),
        subject,
        predicate_type: SLSA_PROVENANCE_V1.into(),
        predicate: Provenance {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE.into(),
                external_parameters: source,
            },
            run_details: RunDetails {
                builder: Builder { id: builder.into() },
            },
        },
    };
    let json = serde_json::to_vec(&statement)
        .map_err(|e| Error::malformed("provenance", e.to_string()))?;
    let mut envelope = Envelope::new(IN_TOTO_PAYLOAD_TYPE, &json);
    envelope.sign(key, "provenance")?;
    Ok(envelope)
}

/// A device's policy (TOML).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What provenance bundles must carry.
    #[serde(default)]
    pub provenance: ProvenancePolicy,
}

/// The `[provenance]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenancePolicy {
    /// Refuse bundles without valid provenance from one of `builders`.
    #[serde(default)]
    pub required: bool,
    /// Builders trusted to make provenance.
    #[serde(default)]
    pub builders: Vec<TrustedBuilder>,
}

/// A builder identity and its signing key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedBuilder {
    /// The id its statements give (`runDetails.builder.id`).
    pub id: String,
    /// Its public key, `ed25519:<hex>`.
    pub key: String,
}

/// Who built a bundle, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedProvenance {
    /// The builder id.
    pub builder: String,
    /// The source.
    pub source: SourceRef,
}

impl Policy {
    /// Parses a policy file's text.
    pub fn parse(text: &str, what: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::malformed(what, e.to_string().trim_end()))
    }

    /// Checks `bundle`'s provenance against the policy. With no provenance,
    /// fails only if the policy requires it; provenance that is present is
    /// always checked, and a forged or mismatched one is refused.
    pub fn check(&self, bundle: &VerifiedBundle) -> Result<Option<CheckedProvenance>> {
        self.check_provenance(bundle.manifest(), bundle.provenance())
    }

    /// [`Policy::check`] on its parts: a manifest (already verified by the
    /// caller) and the bytes of its `provenance.json`, if any.
    pub fn check_provenance(
        &self,
        manifest: &Manifest,
        provenance: Option<&[u8]>,
    ) -> Result<Option<CheckedProvenance>> {
        let p = &self.provenance;
        let name = &manifest.bundle.name;
        let builders = || {
            p.builders
                .iter()
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if p.required && p.builders.is_empty() {
            return Err(Error::ProvenanceNoBuilders);
        }
        let Some(bytes) = provenance else {
            if p.required {
                return Err(Error::ProvenanceMissing {
                    bundle: name.clone(),
                    builders: builders(),
                });
            }
            return Ok(None);
        };
        if p.builders.is_empty() {
            return Ok(None);
        }
        let what = "provenance.json";
        let envelope = Envelope::parse(bytes, what, IN_TOTO_PAYLOAD_TYPE)?;
        let message = envelope.signed_message(what)?;
        let signer = p.builders.iter().find_map(|b| {
            let key = PublicKey::parse(&b.key).ok()?;
            envelope
                .signatures
                .iter()
                .any(|s| s.keyid == key.id() && s.verifies(&key, &message))
                .then_some(b)
        });
        let Some(builder) = signer else {
            return Err(Error::ProvenanceUntrusted {
                bundle: name.clone(),
                builders: builders(),
            });
        };
        let statement: Statement = serde_json::from_slice(&envelope.payload_bytes(what)?)
            .map_err(|e| Error::malformed(what, format!("not an in-toto statement: {e}")))?;
        if statement.statement_type != STATEMENT_TYPE
            || statement.predicate_type != SLSA_PROVENANCE_V1
        {
            return Err(Error::malformed(
                what,
                format!(
                    "statement type '{}' / predicate '{}'; expected {STATEMENT_TYPE} / {SLSA_PROVENANCE_V1}",
                    statement.statement_type, statement.predicate_type
                ),
            ));
        }
        let claimed = &statement.predicate.run_details.builder.id;
        if claimed != &builder.id {
            return Err(Error::ProvenanceBuilderMismatch {
                bundle: name.clone(),
                signer: builder.id.clone(),
                claimed: claimed.clone(),
            });
        }
        for (digest, blob) in &manifest.blobs {
            if blob.kind == BlobKind::File {
                continue;
            }
            let hex = digest.trim_start_matches("sha256:");
            if !statement
                .subject
                .iter()
                .any(|s| s.digest.get("sha256").is_some_and(|d| d == hex))
            {
                return Err(Error::ProvenanceNotCovered {
                    bundle: name.clone(),
                    digest: digest.clone(),
                    name: blob.name.clone(),
                    builder: builder.id.clone(),
                });
            }
        }
        Ok(Some(CheckedProvenance {
            builder: builder.id.clone(),
            source: statement.predicate.build_definition.external_parameters,
        }))
    }
}
