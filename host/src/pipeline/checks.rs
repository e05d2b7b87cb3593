//! Health checks a pipeline carries (`[[checks]]`): requests with known
//! answers, run after loading and before a new version serves anything. A
//! version whose checks fail is never served.
//!
//! ```toml
//! [[checks]]
//! name = "stop command"
//! inputs = { text = "stop the conveyor" }
//! expect_label = { labels = "stop_conveyor" }   # the text up to its first tab or newline
//!
//! [[checks]]
//! inputs = { text = "a short sentence" }
//! expect_close = { embedding = { values = [0.1, -0.2], cosine = 0.999 } }
//! ```

use super::Pipeline;
use crate::bindings::{ElementType, Tensor};
use serde::Deserialize;
use std::collections::BTreeMap;

/// One `[[checks]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// A name for messages (default: `check N`).
    #[serde(default)]
    pub name: Option<String>,
    /// Text for pipeline inputs, by input name.
    pub inputs: BTreeMap<String, String>,
    /// Expected labels, by output name: the output's text up to its first
    /// tab or newline.
    #[serde(default)]
    pub expect_label: BTreeMap<String, String>,
    /// Expected numbers, by output name, within a cosine similarity.
    #[serde(default)]
    pub expect_close: BTreeMap<String, CloseSpec>,
}

/// Numbers an output must be close to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseSpec {
    /// The expected values, flattened.
    pub values: Vec<f64>,
    /// The least cosine similarity accepted.
    #[serde(default = "default_cosine")]
    pub cosine: f64,
}

fn default_cosine() -> f64 {
    0.999
}

/// A check that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("pipeline '{pipeline}': health check '{check}' failed: {problem}")]
pub struct CheckFailure {
    /// The pipeline.
    pub pipeline: String,
    /// The check's name.
    pub check: String,
    /// What differed, or why it could not run.
    pub problem: String,
}

impl CheckSpec {
    fn label(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("check {}", index + 1))
    }

    /// Checks the table against the pipeline's inputs and outputs; the
    /// message names what is wrong.
    pub(crate) fn validate(
        &self,
        index: usize,
        inputs: &[String],
        outputs: &[String],
    ) -> Result<(), String> {
        let label = self.label(index);
        if self.expect_label.is_empty() && self.expect_close.is_empty() {
            return Err(format!(
                "[[checks]] '{label}' expects nothing; give expect_label or expect_close"
            ));
        }
        for name in self.inputs.keys() {
            if !inputs.contains(name) {
                return Err(format!(
                    "[[checks]] '{label}' gives input '{name}', which the pipeline does not take (its inputs: {})",
                    inputs.join(", ")
                ));
            }
        }
        for name in inputs {
            if !self.inputs.contains_key(name) {
                return Err(format!("[[checks]] '{label}' lacks input '{name}'"));
            }
        }
        for name in self.expect_label.keys().chain(self.expect_close.keys()) {
            if !outputs.contains(name) {
                return Err(format!(
                    "[[checks]] '{label}' expects output '{name}', which the pipeline does not return (its outputs: {})",
                    outputs.join(", ")
                ));
            }
        }
        for (name, close) in &self.expect_close {
            if close.values.is_empty() || !(0.0..=1.0).contains(&close.cosine) {
                return Err(format!(
                    "[[checks]] '{label}' expect_close.{name}: give values and a cosine between 0 and 1"
                ));
            }
        }
        Ok(())
    }
}

impl Pipeline {
    /// The health checks this pipeline carries.
    pub fn checks(&self) -> &[CheckSpec] {
        &self.checks
    }

    /// Runs every health check; the first failure is returned. Returns how
    /// many ran.
    pub fn run_checks(&self) -> Result<usize, CheckFailure> {
        for (index, check) in self.checks.iter().enumerate() {
            let fail = |problem: String| CheckFailure {
                pipeline: self.name().to_owned(),
                check: check.label(index),
                problem,
            };
            let inputs = check
                .inputs
                .iter()
                .map(|(name, text)| Tensor::text(name, text))
                .collect();
            let outputs = self
                .run(inputs)
                .map_err(|e| fail(format!("the request failed: {e}")))?;
            let output = |name: &str| {
                outputs
                    .iter()
                    .find(|t| t.name == name)
                    .ok_or_else(|| fail(format!("no output '{name}'")))
            };
            for (name, expected) in &check.expect_label {
                let tensor = output(name)?;
                if tensor.element_type != ElementType::Utf8 {
                    return Err(fail(format!(
                        "output '{name}' is {}, not utf8 text",
                        tensor.element_type
                    )));
                }
                let text = String::from_utf8_lossy(&tensor.data);
                let got = text.split(['\t', '\n']).next().unwrap_or("");
                if got != expected {
                    return Err(fail(format!(
                        "output '{name}' is labelled '{got}', expected '{expected}'"
                    )));
                }
            }
            for (name, close) in &check.expect_close {
                let tensor = output(name)?;
                let values: Vec<f64> = tensor.to_json()["data"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
                    .unwrap_or_default();
                if values.len() != close.values.len() {
                    return Err(fail(format!(
                        "output '{name}' has {} values, expected {}",
                        values.len(),
                        close.values.len()
                    )));
                }
                let dot: f64 = values.iter().zip(&close.values).map(|(a, b)| a * b).sum();
                let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
                let cosine = dot / (norm(&values) * norm(&close.values));
                if cosine.is_nan() || cosine < close.cosine {
                    return Err(fail(format!(
                        "output '{name}' has cosine similarity {cosine:.6} to the expected values, below {}",
                        close.cosine
                    )));
                }
            }
        }
        Ok(self.checks.len())
    }
}
