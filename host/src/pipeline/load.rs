//! Loading a pipeline: reading its files (from a directory or a verified
//! bundle), preloading models, compiling and initialising stages, and wiring
//! and checking the tensors between them.

use super::spec::{PipelineSpec, StageSpec};
use super::{CodeOrigin, Host, LoadedModel, Pipeline, PipelineStage};
use crate::backend::{ModelSettings, SharedModel, load_model};
use crate::bindings::{Config, File, TensorSpec};
use crate::error::PipelineError;
use crate::sandbox::{DirGrant, Grants};
use crate::stage::{LoadedStage, StageLimits, StageLoadError, StageSetup};
use outpost_signing::Digest;
use outpost_signing::bundle::VerifiedBundle;
use outpost_signing::manifest::BlobKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One pipeline being loaded from one source.
pub(super) struct Loader<'a> {
    pub(super) host: &'a Host,
    /// The pipeline file, or what stands for it in messages.
    pub(super) path: &'a Path,
    pub(super) source: Source<'a>,
}

/// Where the files a pipeline names come from.
pub(super) enum Source<'a> {
    /// Paths relative to the pipeline file's directory.
    Dir(&'a Path),
    /// Blobs of a verified bundle, named `sha256:<hex>`; each is checked
    /// against its digest as it is read.
    Bundle(&'a VerifiedBundle),
}

/// What is known about a tensor available in the pipeline: who made it and
/// what they declared.
struct Available {
    producer: Option<String>,
    spec: Option<TensorSpec>,
}

impl Loader<'_> {
    fn invalid(&self, message: String) -> PipelineError {
        PipelineError::Invalid {
            path: self.path.to_owned(),
            message,
        }
    }

    /// Reads the file a pipeline names for a `kind` slot. From a bundle, the
    /// blob must be listed as that kind in the signed manifest (a `file`
    /// slot takes any blob; a component or model slot only its own kind), so
    /// a blob signed as data is never compiled or loaded as a model, and
    /// provenance, which covers every component and model blob, covers
    /// everything the host executes.
    fn read(&self, relative: &Path, kind: BlobKind) -> Result<(PathBuf, Vec<u8>), PipelineError> {
        let path = self.display_path(relative);
        match self.source {
            Source::Dir(_) => {
                let bytes = std::fs::read(&path).map_err(|source| PipelineError::Read {
                    path: path.clone(),
                    source,
                })?;
                Ok((path, bytes))
            }
            Source::Bundle(bundle) => {
                let digest = relative.to_string_lossy();
                if let Some(entry) = bundle.manifest().blobs.get::<str>(&digest)
                    && kind != BlobKind::File
                    && entry.kind != kind
                {
                    return Err(self.invalid(format!(
                        "blob {digest} ('{}') is signed as a {} but the pipeline uses it as a {}; a blob is used only as the kind the manifest gives it (re-bundle with `outpost bundle`)",
                        entry.name,
                        kind_name(entry.kind),
                        kind_name(kind)
                    )));
                }
                Ok((path, bundle.read_blob(&digest)?))
            }
        }
    }

    /// The digest of `bytes`, just read from `relative`: for a bundle,
    /// `read_blob` has already hashed them and matched the name, so the name
    /// is the digest; from a directory they are hashed here.
    fn digest_of(&self, relative: &Path, bytes: &[u8]) -> Digest {
        match self.source {
            Source::Bundle(_) => relative
                .to_string_lossy()
                .parse()
                .unwrap_or_else(|_| Digest::of(bytes)),
            Source::Dir(_) => Digest::of(bytes),
        }
    }

    /// A bundle's pipeline may grant a stage exactly the models the signed
    /// manifest lists for it, so what a stage may touch is visible without
    /// reading the pipeline.
    fn check_grants(
        &self,
        spec: &PipelineSpec,
        bundle: &VerifiedBundle,
    ) -> Result<(), PipelineError> {
        let grants = &bundle.manifest().grants;
        for stage in &spec.stages {
            let used = crate::bundling::manifest_grants(stage);
            let granted = grants.get(&stage.name).cloned().unwrap_or_default();
            if used != granted {
                return Err(self.invalid(format!(
                    "stage '{}' is given {used:?} but the signed manifest grants it {granted:?}",
                    stage.name
                )));
            }
        }
        if let Some(extra) = grants
            .keys()
            .find(|name| !spec.stages.iter().any(|s| &s.name == *name))
        {
            return Err(self.invalid(format!(
                "the signed manifest grants stage '{extra}', which the pipeline does not have"
            )));
        }
        Ok(())
    }

    fn limits(&self, spec: &StageSpec) -> Result<StageLimits, PipelineError> {
        let d = StageLimits::default();
        let l = &spec.limits;
        // Saturating: a huge value means "no smaller limit than the host's",
        // never a wrapped-around tiny one.
        let mib = |v: Option<u64>, default: usize| {
            v.map_or(default, |m| {
                usize::try_from(m)
                    .ok()
                    .and_then(|m| m.checked_mul(1 << 20))
                    .unwrap_or(usize::MAX)
            })
        };
        let memory_bytes = mib(l.memory_mib, d.memory_bytes);
        let limits = StageLimits {
            memory_bytes,
            nn_memory_bytes: mib(l.nn_memory_mib, memory_bytes),
            nn_resources: l
                .nn_resources
                .map_or(d.nn_resources, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            table_elements: l.table_elements.map_or(d.table_elements, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            }),
            timeout: l.timeout_ms.map_or(d.timeout, Duration::from_millis),
            inference_timeout: l
                .inference_timeout_ms
                .map_or(d.inference_timeout, Duration::from_millis),
            fuel: l.fuel,
            max_output_bytes: mib(l.max_output_mib, d.max_output_bytes),
        };
        if limits.fuel.is_some() && !self.host.runtime.fuel() {
            return Err(self.invalid(format!(
                "stage '{}' sets limits.fuel, but this host does not meter fuel; start it with --fuel",
                spec.name
            )));
        }
        let max = self.host.runtime.max_memory_bytes();
        if limits.memory_bytes > max {
            return Err(self.invalid(format!(
                "stage '{}' sets limits.memory_mib = {}, above the host's largest memory of {} MiB",
                spec.name,
                limits.memory_bytes >> 20,
                max >> 20
            )));
        }
        Ok(limits)
    }

    fn grants(&self, spec: &StageSpec) -> Result<Grants, PipelineError> {
        let g = &spec.grants;
        let mut env = Vec::with_capacity(g.env.len());
        for entry in &g.env {
            match entry.split_once('=') {
                Some((name, value)) => env.push((name.to_owned(), value.to_owned())),
                // A variable the device does not set is simply not passed.
                None => {
                    if let Ok(value) = std::env::var(entry) {
                        env.push((entry.clone(), value));
                    }
                }
            }
        }
        let base = match self.source {
            Source::Dir(dir) => dir.to_owned(),
            Source::Bundle(_) => PathBuf::from("."),
        };
        let dirs = g
            .dirs
            .iter()
            .map(|d| DirGrant {
                host: base.join(&d.host),
                guest: d.guest.clone(),
                writable: d.writable,
            })
            .collect();
        let network = g
            .network
            .iter()
            .map(|a| {
                a.parse().map_err(|_| {
                    self.invalid(format!(
                        "stage '{}' grants network \"{a}\", which is not an ip:port address",
                        spec.name
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Grants {
            env,
            dirs,
            network,
            clocks: g.clocks,
        })
    }

    fn display_path(&self, relative: &Path) -> PathBuf {
        match self.source {
            Source::Dir(dir) => dir.join(relative),
            Source::Bundle(_) => relative.to_owned(),
        }
    }

    pub(super) fn load(&self, spec: PipelineSpec) -> Result<Pipeline, PipelineError> {
        if let Source::Bundle(bundle) = self.source {
            self.check_grants(&spec, bundle)?;
        }
        if spec.pipeline.inputs.is_empty() {
            return Err(self.invalid("[pipeline] inputs is empty; name the tensors a request brings, e.g. inputs = [\"text\"]".into()));
        }
        if spec.stages.is_empty() {
            return Err(self.invalid("the pipeline has no [[stages]]".into()));
        }
        let models = spec
            .models
            .iter()
            .map(|(name, model)| {
                let (path, bytes) = self.read(&model.path, BlobKind::Model)?;
                let graph = load_model(
                    name,
                    &bytes,
                    ModelSettings {
                        backend: model.backend,
                        target: model.target,
                        specialize: model.specialize,
                    },
                    &self.host.backends,
                )
                .map_err(|e| PipelineError::Model {
                    model: name.clone(),
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let graph: SharedModel = match &model.cache {
                    Some(cache) => std::sync::Arc::new(
                        crate::backend::kv::KvModel::new(graph, cache).map_err(|message| {
                            PipelineError::Model {
                                model: name.clone(),
                                path: path.clone(),
                                message,
                            }
                        })?,
                    ),
                    None => graph,
                };
                Ok(LoadedModel {
                    name: name.clone(),
                    path,
                    digest: self.digest_of(&model.path, &bytes),
                    graph,
                })
            })
            .collect::<Result<Vec<_>, PipelineError>>()?;

        let mut available: HashMap<String, Available> = spec
            .pipeline
            .inputs
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    Available {
                        producer: None,
                        spec: None,
                    },
                )
            })
            .collect();
        let mut input_specs: HashMap<String, TensorSpec> = HashMap::new();
        let mut stages: Vec<PipelineStage> = Vec::with_capacity(spec.stages.len());
        for stage_spec in &spec.stages {
            if stages.iter().any(|s| s.stage.name() == stage_spec.name) {
                return Err(self.invalid(format!(
                    "two stages are named '{}'; stage names must be unique",
                    stage_spec.name
                )));
            }
            let (stage, digest, code) =
                self.load_stage(&spec.pipeline.name, stage_spec, &models)?;
            stages.push(self.connect(
                stage_spec,
                stage,
                (digest, code),
                &models,
                &mut available,
                &mut input_specs,
            )?);
        }

        let outputs = match &spec.pipeline.outputs {
            Some(names) => {
                for name in names {
                    if !available.contains_key(name) {
                        return Err(self.invalid(format!(
                            "[pipeline] outputs names '{name}', which no stage produces; available: {}",
                            sorted_names(&available)
                        )));
                    }
                }
                names.clone()
            }
            None => stages
                .last()
                .map(|s| s.outputs.iter().map(|(_, p)| p.clone()).collect())
                .unwrap_or_default(),
        };
        mark_moves(&mut stages, &outputs);
        let inputs = spec
            .pipeline
            .inputs
            .iter()
            .map(|n| (n.clone(), input_specs.remove(n)))
            .collect();
        let input_names = spec.pipeline.inputs.clone();
        for (index, check) in spec.checks.iter().enumerate() {
            check
                .validate(index, &input_names, &outputs)
                .map_err(|m| self.invalid(m))?;
        }
        Ok(Pipeline {
            name: spec.pipeline.name,
            version: spec.pipeline.version,
            description: spec.pipeline.description,
            inputs,
            outputs,
            models,
            stages,
            checks: spec.checks,
        })
    }

    fn load_stage(
        &self,
        pipeline: &str,
        spec: &StageSpec,
        models: &[LoadedModel],
    ) -> Result<(LoadedStage, Digest, CodeOrigin), PipelineError> {
        let mut granted = Vec::with_capacity(spec.models.len());
        for name in &spec.models {
            let model = models.iter().find(|m| &m.name == name).ok_or_else(|| {
                self.invalid(format!(
                    "stage '{}' lists model '{name}', but there is no [models.{name}]; defined models: {}",
                    spec.name,
                    list_or_none(models.iter().map(|m| m.name.as_str()))
                ))
            })?;
            granted.push((name.clone(), model.graph.clone()));
        }
        let mut files = Vec::with_capacity(spec.files.len());
        for (name, relative) in &spec.files {
            let (_, data) = self.read(relative, BlobKind::File)?;
            files.push(File {
                name: name.clone(),
                data,
            });
        }
        let mut entries = Vec::with_capacity(spec.config.len());
        for (key, value) in &spec.config {
            let json = serde_json::to_string(value).map_err(|e| {
                self.invalid(format!("stage '{}' config key '{key}': {e}", spec.name))
            })?;
            entries.push((key.clone(), json));
        }
        let limits = self.limits(spec)?;
        let grants = self.grants(spec)?;
        let component_path = self.display_path(&spec.component);
        let component_error = |message: String| PipelineError::Component {
            stage: spec.name.clone(),
            path: component_path.clone(),
            message,
        };
        let bytes = match self.read(&spec.component, BlobKind::Component) {
            Ok((_, bytes)) => bytes,
            Err(PipelineError::Read { source, .. }) => {
                return Err(component_error(format!(
                    "cannot read the component: {source}; build the plugins with `cargo plugins` first"
                )));
            }
            Err(other) => return Err(other),
        };
        let digest = self.digest_of(&spec.component, &bytes);
        let (component, code) = match self.precompiled(&digest)? {
            Some((artifact, entry, bytes)) => {
                let component = self.host.deserialize(&bytes).map_err(|e| {
                    component_error(format!(
                        "its precompiled artifact {artifact} ('{}', for {} {}) is signed for this host but cannot be loaded: {e:#}; rebuild the bundle with `outpost bundle --precompile {}` from outpost built with wasmtime {}",
                        entry.name,
                        crate::engine::TARGET,
                        self.host.runtime.code_settings(),
                        crate::engine::TARGET,
                        crate::engine::WASMTIME_VERSION,
                    ))
                })?;
                (component, CodeOrigin::Precompiled(artifact))
            }
            // Without consent, what the bundle carries is beside the point:
            // the error asks for consent.
            None => self.host.compile(&digest, &bytes).map_err(|message| {
                match self.carried(&digest) {
                    Some(carried) if !Host::has_compiler() && self.host.precompiled_allowed() => {
                        component_error(format!(
                            "{message}; the bundle carries it precompiled only for {carried}"
                        ))
                    }
                    _ => component_error(message),
                }
            })?,
        };
        let setup = StageSetup {
            pipeline: pipeline.to_owned(),
            name: spec.name.clone(),
            config: Config { entries, files },
            models: granted,
            limits,
            grants,
            metering: self.host.runtime.metering(),
        };
        let stage = LoadedStage::new(&self.host.linker, &component, setup).map_err(|e| match e {
            StageLoadError::Link(message) => component_error(format!(
                "does not implement the outpost:plugin `stage` world, or imports more than the host provides: {message}"
            )),
            StageLoadError::Stage(e) => PipelineError::Stage(e),
        })?;
        Ok((stage, digest, code))
    }

    /// The targets and engines a bundle carries the component `digest`
    /// precompiled for, for an error message; `None` for none.
    fn carried(&self, digest: &Digest) -> Option<String> {
        let Source::Bundle(bundle) = self.source else {
            return None;
        };
        let component = digest.to_string();
        let carried: Vec<String> = bundle
            .manifest()
            .blobs
            .values()
            .filter_map(|entry| entry.precompiled.as_ref())
            .filter(|p| p.component == component)
            .map(|p| format!("{} ({})", p.target, p.engine))
            .collect();
        (!carried.is_empty()).then(|| carried.join(", "))
    }

    /// The bundle's precompiled artifact of the component `digest` for this
    /// host's target and engine, read and checked against its signed
    /// digest, where the host allows precompiled code and the bundle has
    /// one.
    fn precompiled(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Digest, outpost_signing::manifest::BlobEntry, Vec<u8>)>, PipelineError>
    {
        let Source::Bundle(bundle) = self.source else {
            return Ok(None);
        };
        if !self.host.precompiled_allowed() {
            return Ok(None);
        }
        let component = digest.to_string();
        let engine = self.host.runtime.code_settings().to_string();
        let found = bundle.manifest().blobs.iter().find(|(_, entry)| {
            entry.kind == BlobKind::Precompiled
                && entry.precompiled.as_ref().is_some_and(|p| {
                    p.component == component
                        && p.target == crate::engine::TARGET
                        && p.engine == engine
                })
        });
        let Some((artifact, entry)) = found else {
            return Ok(None);
        };
        let artifact_digest: Digest = artifact
            .parse()
            .map_err(|e| self.invalid(format!("blob {artifact}: {e}")))?;
        let bytes = bundle.read_blob(artifact)?;
        Ok(Some((artifact_digest, entry.clone(), bytes)))
    }

    /// Wires a stage's inputs to tensors available so far and checks the
    /// declared types; records its outputs as available.
    fn connect(
        &self,
        spec: &StageSpec,
        stage: LoadedStage,
        (component_digest, code): (Digest, CodeOrigin),
        models: &[LoadedModel],
        available: &mut HashMap<String, Available>,
        input_specs: &mut HashMap<String, TensorSpec>,
    ) -> Result<PipelineStage, PipelineError> {
        let (declared_inputs, declared_outputs) = effective_specs(&stage, spec, models);
        let name = &spec.name;
        let describe = |specs: &[TensorSpec]| list_or_none(specs.iter().map(|s| s.name.as_str()));

        let input_pairs = if matches!(&spec.inputs, super::spec::TensorMap::Names(n) if n.is_empty())
        {
            declared_inputs
                .iter()
                .filter(|s| !s.is_wildcard())
                .map(|s| (s.name.clone(), s.name.clone()))
                .collect()
        } else {
            spec.inputs.pairs()
        };
        let open_inputs = declared_inputs.iter().any(TensorSpec::is_wildcard);
        for (stage_side, pipe_side) in &input_pairs {
            let Some(source) = available.get(pipe_side) else {
                return Err(self.invalid(format!(
                    "stage '{name}' takes '{pipe_side}', which is neither a pipeline input nor produced by an earlier stage; available: {}",
                    sorted_names(available)
                )));
            };
            let consumer = declared_inputs.iter().find(|s| &s.name == stage_side);
            match (consumer, &source.spec) {
                (None, _) if !open_inputs => {
                    return Err(self.invalid(format!(
                        "stage '{name}' has no input '{stage_side}'; it declares: {}",
                        describe(&declared_inputs)
                    )));
                }
                (Some(want), Some(have)) => {
                    if let Some(why) = have.incompatibility(want) {
                        return Err(self.invalid(format!(
                            "stage '{name}' input '{stage_side}' expects {}, but {} gives '{pipe_side}' as {}: {why}",
                            want.shape_string(),
                            source.producer.as_deref().map_or("the pipeline".to_owned(), |p| format!("stage '{p}'")),
                            have.shape_string()
                        )));
                    }
                }
                (Some(want), None) if source.producer.is_none() => {
                    input_specs
                        .entry(pipe_side.clone())
                        .or_insert_with(|| want.clone());
                }
                _ => {}
            }
        }
        for want in declared_inputs.iter().filter(|s| !s.is_wildcard()) {
            if !input_pairs.iter().any(|(s, _)| s == &want.name) {
                return Err(self.invalid(format!(
                    "stage '{name}' needs input '{}' ({}), which its inputs do not give; add it to the stage's `inputs`",
                    want.name,
                    want.shape_string()
                )));
            }
        }

        let open_outputs = declared_outputs.iter().any(TensorSpec::is_wildcard);
        let output_pairs = match &spec.outputs {
            Some(map) => map.pairs(),
            None => declared_outputs
                .iter()
                .filter(|s| !s.is_wildcard())
                .map(|s| (s.name.clone(), s.name.clone()))
                .collect(),
        };
        for (stage_side, pipe_side) in &output_pairs {
            let declared = declared_outputs.iter().find(|s| &s.name == stage_side);
            if declared.is_none() && !open_outputs {
                return Err(self.invalid(format!(
                    "stage '{name}' has no output '{stage_side}'; it declares: {}",
                    describe(&declared_outputs)
                )));
            }
            available.insert(
                pipe_side.clone(),
                Available {
                    producer: Some(name.clone()),
                    spec: declared.cloned(),
                },
            );
        }
        Ok(PipelineStage {
            inputs: input_pairs
                .into_iter()
                .map(|(a, b)| (a, b, false))
                .collect(),
            outputs: output_pairs,
            component: self.display_path(&spec.component),
            component_digest,
            code,
            models: spec.models.clone(),
            stage,
        })
    }
}

/// What a stage takes and gives: its own declaration, except that a stage
/// declaring "any tensors" (`*`) and given exactly one model takes and gives
/// what that model does.
fn effective_specs(
    stage: &LoadedStage,
    spec: &StageSpec,
    models: &[LoadedModel],
) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let info = stage.info();
    let model = match spec.models.as_slice() {
        [only] => models.iter().find(|m| &m.name == only),
        _ => None,
    };
    let resolve = |declared: &[TensorSpec], from_model: &[TensorSpec]| -> Vec<TensorSpec> {
        match model {
            Some(_) if declared.iter().any(TensorSpec::is_wildcard) => {
                let named: Vec<TensorSpec> = declared
                    .iter()
                    .filter(|s| !s.is_wildcard())
                    .cloned()
                    .collect();
                let extra = from_model
                    .iter()
                    .filter(|m| !named.iter().any(|s| s.name == m.name))
                    .cloned();
                named.iter().cloned().chain(extra).collect()
            }
            // Named but untyped declarations take the model's types.
            Some(_) => declared
                .iter()
                .map(|s| match from_model.iter().find(|m| m.name == s.name) {
                    Some(m) if s.element_type.is_none() && s.dims.is_none() => m.clone(),
                    _ => s.clone(),
                })
                .collect(),
            None => declared.to_vec(),
        }
    };
    match model {
        Some(m) => (
            resolve(&info.inputs, &m.signature().inputs),
            resolve(&info.outputs, &m.signature().outputs),
        ),
        None => (info.inputs.clone(), info.outputs.clone()),
    }
}

/// A stage input is moved out of the request's tensors when no later stage
/// and no pipeline output uses it.
fn mark_moves(stages: &mut [PipelineStage], outputs: &[String]) {
    let mut needed_later: Vec<String> = outputs.to_vec();
    for stage in stages.iter_mut().rev() {
        // Walking backwards in time: the stage's outputs come after its
        // inputs. An output re-using a name starts a new tensor, so later
        // needs of that name are not needs of the older one.
        for (_, pipe_side) in &stage.outputs {
            needed_later.retain(|n| n != pipe_side);
        }
        for (_, pipe_side, moved) in stage.inputs.iter_mut().rev() {
            *moved = !needed_later.contains(pipe_side);
            needed_later.push(pipe_side.clone());
        }
    }
}

fn sorted_names(available: &HashMap<String, Available>) -> String {
    let mut names: Vec<&str> = available.keys().map(String::as_str).collect();
    names.sort_unstable();
    list_or_none(names.into_iter())
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

fn kind_name(kind: BlobKind) -> &'static str {
    match kind {
        BlobKind::Pipeline => "pipeline",
        BlobKind::Component => "component",
        BlobKind::Model => "model",
        BlobKind::File => "file",
        BlobKind::Precompiled => "precompiled",
    }
}
