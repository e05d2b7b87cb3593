//! Pipelines: models preloaded once, stages in order, tensors flowing between
//! them by name.

pub mod checks;
mod load;
pub mod spec;

use crate::backend::{BackendOptions, ModelSignature, SharedModel};
use crate::bindings::{Tensor, TensorSpec};
use crate::cache::{CacheKey, ComponentCache};
use crate::engine::{EngineError, EngineOptions, Runtime};
use crate::error::{PipelineError, RunError};
use crate::stage::{LoadedStage, StageHost, StageTiming, stage_linker};
use outpost_signing::Digest;
use outpost_signing::bundle::VerifiedBundle;
use spec::PipelineSpec;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use wasmtime::component::{Component, Linker};

/// A host: one engine and linker, any number of pipelines.
pub struct Host {
    runtime: Runtime,
    linker: Linker<StageHost>,
    cache: Option<ComponentCache>,
    backends: BackendOptions,
    precompiled: bool,
}

/// Where a stage's native code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeOrigin {
    /// Compiled on this device from the component.
    Compiled,
    /// Read from this device's component cache.
    Cached,
    /// The publisher's precompiled artifact in the bundle, this blob.
    Precompiled(Digest),
}

impl std::fmt::Display for CodeOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeOrigin::Compiled => f.write_str("compiled"),
            CodeOrigin::Cached => f.write_str("cached"),
            CodeOrigin::Precompiled(digest) => write!(f, "precompiled {digest}"),
        }
    }
}

impl Host {
    /// Builds the engine and the linker stages are instantiated with.
    pub fn new(options: &EngineOptions) -> Result<Self, EngineError> {
        let runtime = Runtime::new(options)?;
        let linker =
            stage_linker(runtime.engine()).map_err(|e| EngineError::new(format!("{e:#}")))?;
        Ok(Self {
            runtime,
            linker,
            cache: None,
            backends: BackendOptions::default(),
            precompiled: false,
        })
    }

    /// Sets how models are run: a backend forced for every model, and
    /// where ONNX Runtime's library is.
    pub fn with_backend_options(mut self, options: BackendOptions) -> Self {
        self.backends = options;
        self
    }

    /// The engine and its allocator.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Keeps precompiled components under `dir` (per target and engine
    /// settings) so later starts skip compilation; artifacts are
    /// authenticated with the device's `key`.
    pub fn with_component_cache(mut self, dir: &Path, key: CacheKey) -> Self {
        self.cache = Some(ComponentCache::new(dir, self.runtime.engine(), key));
        self
    }

    /// Lets bundles' precompiled artifacts stand in for compiling their
    /// components (the device policy's `[precompiled] allow`). They are
    /// native code that runs outside the sandbox, trusted because a trusted
    /// key signed them: off by default.
    pub fn with_precompiled(mut self, allow: bool) -> Self {
        self.precompiled = allow;
        self
    }

    /// Whether precompiled artifacts are used.
    pub fn precompiled_allowed(&self) -> bool {
        self.precompiled
    }

    /// Whether this host can compile components itself (built with the
    /// `cranelift` feature).
    pub const fn has_compiler() -> bool {
        cfg!(feature = "cranelift")
    }

    /// Compiles a component whose digest the caller has verified, through
    /// the cache when there is one.
    #[cfg(feature = "cranelift")]
    fn compile(&self, digest: &Digest, bytes: &[u8]) -> Result<(Component, CodeOrigin), String> {
        let compiled = match &self.cache {
            Some(cache) => cache
                .load(self.runtime.engine(), digest, bytes)
                .map(|(c, outcome)| {
                    let origin = match outcome {
                        crate::cache::CacheOutcome::Hit => CodeOrigin::Cached,
                        crate::cache::CacheOutcome::Compiled => CodeOrigin::Compiled,
                    };
                    (c, origin)
                }),
            None => Component::new(self.runtime.engine(), bytes).map(|c| (c, CodeOrigin::Compiled)),
        };
        compiled.map_err(|e| format!("not a valid component: {e:#}"))
    }

    /// Without a compiler, a component that has no precompiled artifact
    /// cannot run; the error says what would make it run.
    #[cfg(not(feature = "cranelift"))]
    fn compile(&self, _digest: &Digest, _bytes: &[u8]) -> Result<(Component, CodeOrigin), String> {
        let code = self.runtime.code_settings();
        let target = crate::engine::TARGET;
        Err(if self.precompiled {
            let remedy = if crate::engine::CodeSettings::published().contains(&code) {
                format!("rebuild the bundle with `outpost bundle --precompile {target}`")
            } else {
                "bundles are precompiled for engines with default settings (no fuel metering; guard pages, or explicit checks on demand): start the host without fuel (engine.fuel) and with --memory-bounds auto or --allocator on-demand".to_owned()
            };
            format!(
                "this host has no compiler (built without the `cranelift` feature) and the component has no precompiled artifact for {target} ({code}); {remedy}"
            )
        } else {
            "this host has no compiler (built without the `cranelift` feature): it runs only components that bundles carry precompiled, and only where the device policy allows them ([precompiled] allow = true in policy.toml)".to_owned()
        })
    }

    /// Loads a precompiled artifact whose bytes matched the digest a
    /// verified manifest signs.
    fn deserialize(&self, artifact: &[u8]) -> wasmtime::Result<Component> {
        // wasmtime checks CPU features in an artifact's header on x86_64
        // and aarch64, but on riscv64 it assumes every extension present.
        // Artifacts for riscv64 use the vector extension (see
        // `engine::precompile`); without it they would die on an illegal
        // instruction, so the host checks for it itself.
        #[cfg(target_arch = "riscv64")]
        if !crate::engine::riscv_vector_available() {
            return Err(wasmtime::format_err!(
                "riscv64 artifacts use the vector extension (RVV 1.0) and this CPU does not report it (AT_HWCAP has no 'V'); this device cannot run precompiled code"
            ));
        }
        // SAFETY: wasmtime requires that the bytes come from
        // `Component::serialize`/`Engine::precompile_component` of a
        // compatible engine, since they are native code run as is. These
        // are a blob of a bundle whose manifest signature verified against
        // the device's trust roots, whose bytes matched the signed digest
        // when read, and whose signed target and engine fingerprint equal
        // this host's; the device's policy opted in to running native code
        // signed by its publishers (`with_precompiled`). wasmtime still
        // checks the artifact's own header (version, target, CPU features,
        // settings) before using it.
        #[allow(unsafe_code)]
        unsafe {
            Component::deserialize(self.runtime.engine(), artifact)
        }
    }

    /// Prepares the pipeline of a verified bundle. Every file it names is a
    /// blob of the bundle, checked against the signed digest when read.
    pub fn load_bundle(&self, bundle: &VerifiedBundle) -> Result<Pipeline, PipelineError> {
        let info = &bundle.manifest().bundle;
        let label = PathBuf::from(format!(
            "bundle '{}' version {} pipeline {}",
            info.name, info.version, info.pipeline
        ));
        if let Some(entry) = bundle.manifest().blobs.get(&info.pipeline)
            && entry.kind != outpost_signing::manifest::BlobKind::Pipeline
        {
            return Err(PipelineError::Invalid {
                path: label,
                message: format!(
                    "the manifest names blob '{}' as the pipeline, but signs it as a {:?} blob; re-bundle with `outpost bundle`",
                    entry.name, entry.kind
                ),
            });
        }
        let bytes = bundle.read_blob(&info.pipeline)?;
        let text = String::from_utf8(bytes).map_err(|_| PipelineError::Invalid {
            path: label.clone(),
            message: "the pipeline blob is not UTF-8".into(),
        })?;
        let spec: PipelineSpec = toml::from_str(&text).map_err(|e| PipelineError::Syntax {
            path: label.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        load::Loader {
            host: self,
            path: &label,
            source: load::Source::Bundle(bundle),
        }
        .load(spec)
    }

    /// Reads, checks and prepares the pipeline in `path`: every model is
    /// loaded and optimised, every component compiled and initialised once,
    /// and the tensors each stage takes are checked against what earlier
    /// stages return.
    pub fn load_pipeline(&self, path: &Path) -> Result<Pipeline, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Read {
            path: path.to_owned(),
            source,
        })?;
        let spec: PipelineSpec = toml::from_str(&text).map_err(|e| PipelineError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        load::Loader {
            host: self,
            path,
            source: load::Source::Dir(dir),
        }
        .load(spec)
    }
}

/// A model the pipeline preloaded.
pub struct LoadedModel {
    /// Its name in the pipeline.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// The sha256 of its file.
    pub digest: Digest,
    graph: SharedModel,
}

impl LoadedModel {
    /// Its inputs and outputs.
    pub fn signature(&self) -> &ModelSignature {
        self.graph.signature()
    }

    /// Which backend runs it and where, e.g. `tract (cpu)`.
    pub fn backend(&self) -> String {
        self.graph.describe()
    }

    /// The loaded model itself, to call without a stage (benchmarks compare
    /// against this).
    pub fn graph(&self) -> &SharedModel {
        &self.graph
    }
}

/// A stage in its pipeline: the stage, and how its tensors are named in the
/// pipeline.
pub struct PipelineStage {
    stage: LoadedStage,
    /// `(stage-side, pipeline-side, moved)`: `moved` when no later stage or
    /// pipeline output needs the tensor, so it is handed over, not copied.
    inputs: Vec<(String, String, bool)>,
    /// `(stage-side, pipeline-side)`.
    outputs: Vec<(String, String)>,
    component: PathBuf,
    component_digest: Digest,
    code: CodeOrigin,
    models: Vec<String>,
}

impl PipelineStage {
    /// The stage.
    pub fn stage(&self) -> &LoadedStage {
        &self.stage
    }
    /// Its component file.
    pub fn component(&self) -> &Path {
        &self.component
    }
    /// The sha256 of its component file.
    pub fn component_digest(&self) -> Digest {
        self.component_digest
    }
    /// Where its native code came from.
    pub fn code_origin(&self) -> CodeOrigin {
        self.code
    }
    /// The models it may load.
    pub fn models(&self) -> &[String] {
        &self.models
    }
    /// `(stage-side, pipeline-side)` names of the tensors it takes.
    pub fn input_names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inputs.iter().map(|(a, b, _)| (a.as_str(), b.as_str()))
    }
    /// `(stage-side, pipeline-side)` names of the tensors it gives.
    pub fn output_names(&self) -> impl Iterator<Item = (&str, &str)> {
        self.outputs.iter().map(|(a, b)| (a.as_str(), b.as_str()))
    }
}

/// A loaded pipeline, ready for requests. Requests may run concurrently.
pub struct Pipeline {
    name: String,
    version: Option<String>,
    description: Option<String>,
    inputs: Vec<(String, Option<TensorSpec>)>,
    outputs: Vec<String>,
    models: Vec<LoadedModel>,
    stages: Vec<PipelineStage>,
    checks: Vec<checks::CheckSpec>,
}

impl Pipeline {
    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its version, if the file gives one.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
    /// Its description, if the file gives one.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    /// The tensors a request brings, with what the first stage that takes
    /// each one declared for it.
    pub fn inputs(&self) -> &[(String, Option<TensorSpec>)] {
        &self.inputs
    }
    /// The tensors a request returns.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }
    /// The preloaded models.
    pub fn models(&self) -> &[LoadedModel] {
        &self.models
    }
    /// The stages, in order.
    pub fn stages(&self) -> &[PipelineStage] {
        &self.stages
    }

    /// What the stage producing pipeline output `name` declared for it,
    /// when it declared it by name.
    pub fn output_spec(&self, name: &str) -> Option<TensorSpec> {
        let step = self
            .stages
            .iter()
            .rev()
            .find(|s| s.outputs.iter().any(|(_, p)| p == name))?;
        let (stage_side, _) = step.outputs.iter().find(|(_, p)| p == name)?;
        let mut spec = step
            .stage
            .info()
            .outputs
            .iter()
            .find(|s| &s.name == stage_side)?
            .clone();
        spec.name = name.to_owned();
        Some(spec)
    }

    /// Keeps up to `size` idle instances of every stage: as many as
    /// requests run at once, so none pays `init` while the pool is warm.
    pub fn set_pool_size(&self, size: usize) {
        for step in &self.stages {
            step.stage.set_pool_size(size);
        }
    }

    /// Brings every stage's pool up to `count` idle instances now, instead
    /// of on the first requests.
    pub fn warm(&self, count: usize) -> Result<(), RunError> {
        for step in &self.stages {
            step.stage.warm(count)?;
        }
        Ok(())
    }

    /// Runs one request.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RunError> {
        self.run_with(inputs, None, &mut Vec::new())
    }

    /// Runs one request that must finish by `deadline`, if it has one: a
    /// stage running at the deadline is interrupted, and no stage starts
    /// after it. The time of each stage that ran is pushed to `timings`, in
    /// order.
    pub fn run_with(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
        timings: &mut Vec<StageTiming>,
    ) -> Result<Vec<Tensor>, RunError> {
        self.run_streaming(inputs, deadline, timings, None)
    }

    /// [`run_with`](Self::run_with), handing `sink` what stages emit while
    /// they run (partial outputs, e.g. generated tokens), as they emit it.
    pub fn run_streaming(
        &self,
        inputs: Vec<Tensor>,
        deadline: Option<Instant>,
        timings: &mut Vec<StageTiming>,
        sink: Option<crate::stage::Sink>,
    ) -> Result<Vec<Tensor>, RunError> {
        let bad = |message: String| RunError::Input {
            pipeline: self.name.clone(),
            message,
        };
        let mut env: HashMap<String, Tensor> = HashMap::new();
        for tensor in inputs {
            if !self.inputs.iter().any(|(n, _)| n == &tensor.name) {
                return Err(bad(format!(
                    "unexpected input '{}'; the pipeline takes: {}",
                    tensor.name,
                    self.input_names()
                )));
            }
            tensor.check_layout().map_err(bad)?;
            env.insert(tensor.name.clone(), tensor);
        }
        for (name, _) in &self.inputs {
            if !env.contains_key(name) {
                return Err(bad(format!(
                    "missing input '{name}'; the pipeline takes: {}",
                    self.input_names()
                )));
            }
        }
        for step in &self.stages {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(RunError::DeadlineExceeded {
                    pipeline: self.name.clone(),
                    stage: step.stage.name().to_owned(),
                });
            }
            let mut given = Vec::with_capacity(step.inputs.len());
            for (stage_name, pipe_name, moved) in &step.inputs {
                let tensor = if *moved {
                    env.remove(pipe_name)
                } else {
                    env.get(pipe_name).cloned()
                };
                // Present by construction: the loader checked every input is
                // produced earlier, and a stage's outputs were checked.
                let Some(mut tensor) = tensor else {
                    return Err(bad(format!(
                        "tensor '{pipe_name}' was not produced before stage '{}'",
                        step.stage.name()
                    )));
                };
                tensor.name.clone_from(stage_name);
                given.push(tensor);
            }
            let step_sink = sink.as_ref().map(|s| s.renamed(&step.outputs));
            let (outputs, timing) = step.stage.run_streaming(given, deadline, step_sink)?;
            timings.push(timing);
            for mut tensor in outputs {
                if let Some((_, pipe_name)) = step.outputs.iter().find(|(s, _)| s == &tensor.name) {
                    tensor.name.clone_from(pipe_name);
                    env.insert(pipe_name.clone(), tensor);
                }
            }
        }
        let mut outputs = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            match env.remove(name) {
                Some(t) => outputs.push(t),
                None => return Err(bad(format!("output '{name}' was not produced"))),
            }
        }
        Ok(outputs)
    }

    fn input_names(&self) -> String {
        self.inputs
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}
