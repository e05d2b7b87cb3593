//! Turning a pipeline directory into a bundle: every file the pipeline names
//! becomes a blob, and the pipeline is rewritten to name blobs by digest.

use crate::error::PipelineError;
use crate::pipeline::spec::PipelineSpec;
use outpost_signing::Digest;
use outpost_signing::bundle::Bundle;
use outpost_signing::manifest::{BlobEntry, BlobKind, BundleInfo, DirGrant, Grants, Manifest};
use std::collections::BTreeMap;
use std::path::Path;

/// Writes an unsigned bundle of the pipeline in `pipeline_path` to `out`.
/// For every target triple in `precompile`, each component is also compiled
/// to native code for that target, once per engine configuration a host
/// there picks by default ([`CodeSettings::published`]), and carried as a
/// precompiled blob that hosts which allow it load instead of compiling.
///
/// [`CodeSettings::published`]: crate::engine::CodeSettings::published
pub fn create_bundle(
    pipeline_path: &Path,
    name: &str,
    version: u64,
    precompile: &[String],
    out: &Path,
) -> Result<Bundle, PipelineError> {
    let text = std::fs::read_to_string(pipeline_path).map_err(|source| PipelineError::Read {
        path: pipeline_path.to_owned(),
        source,
    })?;
    let syntax = |e: toml::de::Error| PipelineError::Syntax {
        path: pipeline_path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    };
    // The typed parse validates; the table is what gets rewritten.
    let spec: PipelineSpec = toml::from_str(&text).map_err(syntax)?;
    let mut table: toml::Table = toml::from_str(&text).map_err(syntax)?;
    let dir = pipeline_path.parent().unwrap_or(Path::new("."));
    let mut collector = Collector {
        dir,
        blobs: Vec::new(),
        entries: BTreeMap::new(),
    };

    if let Some(models) = table.get_mut("models").and_then(toml::Value::as_table_mut) {
        for (_, model) in models.iter_mut() {
            collector.replace(model.get_mut("path"), BlobKind::Model)?;
        }
    }
    if let Some(stages) = table.get_mut("stages").and_then(toml::Value::as_array_mut) {
        for stage in stages.iter_mut() {
            collector.replace(stage.get_mut("component"), BlobKind::Component)?;
            if let Some(files) = stage.get_mut("files").and_then(toml::Value::as_table_mut) {
                for (_, file) in files.iter_mut() {
                    collector.replace(Some(file), BlobKind::File)?;
                }
            }
        }
    }
    let rewritten = toml::to_string(&table).map_err(|e| PipelineError::Invalid {
        path: pipeline_path.to_owned(),
        message: format!("cannot write the bundled pipeline: {e}"),
    })?;
    let file_name = pipeline_path.file_name().map_or_else(
        || "pipeline.toml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let pipeline_digest = collector.add(rewritten.into_bytes(), BlobKind::Pipeline, file_name);
    if !precompile.is_empty() {
        collector.precompile(pipeline_path, precompile)?;
    }

    let grants = spec
        .stages
        .iter()
        .map(|s| (s.name.clone(), manifest_grants(s)))
        .filter(|(_, g)| !g.is_empty())
        .collect();
    let manifest = Manifest {
        bundle: BundleInfo {
            name: name.to_owned(),
            version,
            pipeline: pipeline_digest.to_string(),
        },
        blobs: collector.entries,
        grants,
    };
    Ok(Bundle::create(out, &manifest, &collector.blobs)?)
}

/// A stage's grants as the manifest records them.
pub fn manifest_grants(stage: &crate::pipeline::spec::StageSpec) -> Grants {
    let g = &stage.grants;
    Grants {
        models: stage.models.clone(),
        env: g.env.clone(),
        dirs: g
            .dirs
            .iter()
            .map(|d| DirGrant {
                host: d.host.display().to_string(),
                guest: d.guest.clone(),
                writable: d.writable,
            })
            .collect(),
        network: g.network.clone(),
        clocks: g.clocks,
    }
}

struct Collector<'a> {
    dir: &'a Path,
    blobs: Vec<(Digest, Vec<u8>)>,
    entries: BTreeMap<String, BlobEntry>,
}

impl Collector<'_> {
    fn add(&mut self, bytes: Vec<u8>, kind: BlobKind, name: String) -> Digest {
        let digest = Digest::of(&bytes);
        match self.entries.entry(digest.to_string()) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(BlobEntry {
                    size: bytes.len() as u64,
                    kind,
                    name,
                    precompiled: None,
                });
                self.blobs.push((digest, bytes));
            }
            // The same bytes as a file and as a component or model: the blob
            // takes the kind the host executes or loads it as (a file slot
            // takes a blob of any kind; the others only their own).
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                if slot.get().kind == BlobKind::File {
                    slot.get_mut().kind = kind;
                }
            }
        }
        digest
    }

    /// Adds, for each component blob, its native code for every target and
    /// published engine configuration.
    #[cfg(feature = "cranelift")]
    fn precompile(
        &mut self,
        pipeline_path: &Path,
        targets: &[String],
    ) -> Result<(), PipelineError> {
        use crate::engine::{CodeSettings, precompile};
        use outpost_signing::manifest::Precompiled;
        // Indices of the component blobs, with their names.
        let components: Vec<(usize, String)> = self
            .blobs
            .iter()
            .enumerate()
            .filter_map(|(index, (digest, _))| {
                let entry = self.entries.get(&digest.to_string())?;
                (entry.kind == BlobKind::Component).then(|| (index, entry.name.clone()))
            })
            .collect();
        for target in targets {
            for code in CodeSettings::published() {
                for (index, name) in &components {
                    let (component, bytes) = &self.blobs[*index];
                    let component = *component;
                    let artifact =
                        precompile(bytes, target, code).map_err(|e| PipelineError::Invalid {
                            path: pipeline_path.to_owned(),
                            message: format!("--precompile: component '{name}': {e}"),
                        })?;
                    let variant = code.to_string().replace(' ', "_");
                    let digest = self.add(
                        artifact,
                        BlobKind::Precompiled,
                        format!("{name}.{target}.{variant}.cwasm"),
                    );
                    if let Some(entry) = self.entries.get_mut(&digest.to_string()) {
                        entry.precompiled = Some(Precompiled {
                            component: component.to_string(),
                            target: target.clone(),
                            engine: code.to_string(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    #[cfg(not(feature = "cranelift"))]
    fn precompile(
        &mut self,
        pipeline_path: &Path,
        _targets: &[String],
    ) -> Result<(), PipelineError> {
        Err(PipelineError::Invalid {
            path: pipeline_path.to_owned(),
            message: "--precompile needs a compiler, and this outpost was built without the `cranelift` feature; bundle on a host built with it".into(),
        })
    }

    /// Reads the file a path value names and replaces the value with the
    /// file's digest.
    fn replace(
        &mut self,
        value: Option<&mut toml::Value>,
        kind: BlobKind,
    ) -> Result<(), PipelineError> {
        let Some(value) = value else { return Ok(()) };
        let Some(relative) = value.as_str() else {
            return Ok(());
        };
        let path = self.dir.join(relative);
        let bytes = std::fs::read(&path).map_err(|source| PipelineError::Read {
            path: path.clone(),
            source,
        })?;
        let name = path
            .file_name()
            .map_or_else(|| relative.to_owned(), |n| n.to_string_lossy().into_owned());
        let digest = self.add(bytes, kind, name);
        *value = toml::Value::String(digest.to_string());
        Ok(())
    }
}
