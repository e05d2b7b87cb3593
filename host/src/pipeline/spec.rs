//! The pipeline file: TOML, parsed strictly. See `README.md` for the schema.

pub use crate::backend::{BackendName, ExecutionTarget};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// The `[pipeline]` table.
    pub pipeline: PipelineMeta,
    /// `[models.NAME]` tables, by name.
    #[serde(default)]
    pub models: BTreeMap<String, ModelSpec>,
    /// `[[stages]]`, in order.
    pub stages: Vec<StageSpec>,
    /// `[[checks]]`: requests with known answers, run before a new version
    /// serves.
    #[serde(default)]
    pub checks: Vec<super::checks::CheckSpec>,
}

/// The `[pipeline]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineMeta {
    /// The pipeline's name.
    pub name: String,
    /// Its version.
    #[serde(default)]
    pub version: Option<String>,
    /// One line on what it does.
    #[serde(default)]
    pub description: Option<String>,
    /// Names of the tensors a request brings.
    pub inputs: Vec<String>,
    /// Names of the tensors a request returns; all tensors the last stage
    /// returns when unset.
    #[serde(default)]
    pub outputs: Option<Vec<String>>,
}

/// A `[models.NAME]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model file, relative to the pipeline file.
    pub path: PathBuf,
    /// Which backend runs it (the device may override it).
    #[serde(default)]
    pub backend: BackendName,
    /// Where it runs: wasi-nn's execution target.
    #[serde(default)]
    pub target: ExecutionTarget,
    /// tract: how many plans specialised to concrete input shapes to keep
    /// (0, the default: one plan for every shape). Worth it when shapes
    /// repeat, e.g. a tokenizer padding to max_length.
    #[serde(default)]
    pub specialize: usize,
    /// How the file is encoded.
    #[serde(default)]
    pub encoding: Encoding,
    /// A key/value cache the host keeps between computes of one execution
    /// context (generative models): `[models.NAME.cache]`.
    #[serde(default)]
    pub cache: Option<CacheSpec>,
}

/// `[models.NAME.cache]`: which outputs of a model feed which of its inputs
/// on the next compute of the same execution context, so that a stage sends
/// only new tokens and receives logits while the host keeps the cache.
///
/// ```toml
/// [models.lm.cache]
/// inputs = "past_key_values.{}"      # `{}`: the part input and output names share
/// outputs = "present.{}"
/// axis = 2                           # the sequence axis the cache grows along
/// attention_mask = "attention_mask"  # filled by the host: ones, [batch, past + new]
/// position_ids = "position_ids"      # filled by the host: past, past + 1, ...
/// max_context = 2048                 # past + new never exceeds this
/// last_position = ["logits"]         # the stage gets only the last new position's
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Name pattern of the inputs that receive the cache, with `{}`.
    pub inputs: String,
    /// Name pattern of the outputs that carry it, with `{}`.
    pub outputs: String,
    /// The axis of every cache tensor that grows by one per position.
    pub axis: usize,
    /// The input whose last dimension counts the new positions of a compute
    /// (default `input_ids`).
    #[serde(default = "default_tokens")]
    pub tokens: String,
    /// An input the host fills with ones over past and new positions.
    #[serde(default)]
    pub attention_mask: Option<String>,
    /// An input the host fills with the new positions' indices.
    #[serde(default)]
    pub position_ids: Option<String>,
    /// The most positions (past plus new) one execution context may hold.
    pub max_context: u32,
    /// Outputs of which the stage receives only the last new position: the
    /// scores of the next token, without those of every prompt position.
    #[serde(default)]
    pub last_position: Vec<String>,
}

fn default_tokens() -> String {
    "input_ids".to_owned()
}

/// Model encodings.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    /// ONNX protobuf.
    #[default]
    Onnx,
}

/// One `[[stages]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// Unique within the pipeline.
    pub name: String,
    /// The component file, relative to the pipeline file.
    pub component: PathBuf,
    /// Tensors the stage receives: a list of names, or a table
    /// `{ stage_name = "pipeline_name" }` to rename on the way in.
    #[serde(default)]
    pub inputs: TensorMap,
    /// Tensors of the stage's output that the pipeline keeps: a list, or a
    /// table `{ stage_name = "pipeline_name" }`. All declared outputs, under
    /// their own names, when unset.
    #[serde(default)]
    pub outputs: Option<TensorMap>,
    /// Models the stage may load by name.
    #[serde(default)]
    pub models: Vec<String>,
    /// Passed to the stage's `init`.
    #[serde(default)]
    pub config: toml::Table,
    /// Files passed to the stage's `init`, by name; paths relative to the
    /// pipeline file.
    #[serde(default)]
    pub files: BTreeMap<String, PathBuf>,
    /// Per-call limits.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Capabilities beyond computing: environment, directories, network,
    /// clocks. Nothing by default.
    #[serde(default)]
    pub grants: GrantsSpec,
}

/// A stage's `[stages.grants]`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsSpec {
    /// `NAME` passes the host's value of NAME; `NAME=value` sets one.
    #[serde(default)]
    pub env: Vec<String>,
    /// Host directories to preopen.
    #[serde(default)]
    pub dirs: Vec<DirSpec>,
    /// `ip:port` addresses the stage may connect to over TCP.
    #[serde(default)]
    pub network: Vec<String>,
    /// Real wall and monotonic clocks; without, both stand still at zero.
    #[serde(default)]
    pub clocks: bool,
}

/// One granted directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirSpec {
    /// The directory on the device (relative paths: to the pipeline file).
    pub host: PathBuf,
    /// Where the stage sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the stage may write (default: read-only).
    #[serde(default)]
    pub writable: bool,
}

/// Tensor names as a list (same name on both sides) or a rename table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TensorMap {
    /// `["a", "b"]`.
    Names(Vec<String>),
    /// `{ stage_name = "pipeline_name" }`.
    Renamed(BTreeMap<String, String>),
}

impl Default for TensorMap {
    fn default() -> Self {
        TensorMap::Names(Vec::new())
    }
}

impl TensorMap {
    /// `(stage-side name, pipeline-side name)` pairs.
    pub fn pairs(&self) -> Vec<(String, String)> {
        match self {
            TensorMap::Names(names) => names.iter().map(|n| (n.clone(), n.clone())).collect(),
            TensorMap::Renamed(map) => map.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
        }
    }
}

/// A stage's `[stages.limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Largest linear memory, MiB.
    pub memory_mib: Option<u64>,
    /// Deadline of one call, milliseconds, not counting time inside models.
    pub timeout_ms: Option<u64>,
    /// Deadline of the time one call spends inside models, milliseconds.
    pub inference_timeout_ms: Option<u64>,
    /// Deterministic CPU budget of one call (the host must run with `--fuel`).
    pub fuel: Option<u64>,
    /// Most tensor bytes one call may return, MiB.
    pub max_output_mib: Option<u64>,
    /// Most table elements.
    pub table_elements: Option<u64>,
    /// Most bytes of wasi-nn tensors, execution contexts and outputs the
    /// stage may hold in the host at once, MiB (default: `memory_mib`).
    pub nn_memory_mib: Option<u64>,
    /// Most wasi-nn resources (graphs, contexts, tensors, errors) the stage
    /// may hold at once.
    pub nn_resources: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_maps_are_lists_or_rename_tables() {
        let stage: StageSpec = toml::from_str(
            r#"
name = "s"
component = "s.wasm"
inputs = ["a", "b"]
outputs = { hidden = "token_embeddings" }
"#,
        )
        .unwrap();
        assert_eq!(
            stage.inputs.pairs(),
            [("a".into(), "a".into()), ("b".into(), "b".into())]
        );
        assert_eq!(
            stage.outputs.unwrap().pairs(),
            [("hidden".to_owned(), "token_embeddings".to_owned())]
        );
        assert_eq!(stage.limits.timeout_ms, None);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = toml::from_str::<LimitsSpec>("memory_mb = 3")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown field `memory_mb`") && error.contains("memory_mib"),
            "{error}"
        );
    }
}
