//! `infer`: runs the named model through wasi-nn on every tensor it receives
//! and returns the model's outputs.
//!
//! Config: `model` (required), the name the pipeline registered the model as;
//! `outputs` (optional), the model outputs to return, all when unset.

use outpost_guest::nn::Model;
use outpost_guest::{Config, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec};

struct Infer {
    model: Model,
    outputs: Option<Vec<String>>,
}

impl Stage for Infer {
    fn init(config: &Config) -> Result<Self, StageError> {
        config.deny_unknown(&["model", "outputs"])?;
        let name: String = config.require("model")?;
        Ok(Infer {
            model: Model::load(&name)?,
            outputs: config.get("outputs")?,
        })
    }

    fn describe(&self) -> StageInfo {
        // Inputs and outputs are whatever the model declares; the host fills
        // them in from the model it preloaded.
        let info = StageInfo::new(
            "infer",
            env!("CARGO_PKG_VERSION"),
            "runs a model through wasi-nn",
        )
        .input(TensorSpec::any("*"));
        match &self.outputs {
            Some(names) => names
                .iter()
                .fold(info, |info, n| info.output(TensorSpec::any(n))),
            None => info.output(TensorSpec::any("*")),
        }
    }

    fn run(&mut self, inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
        let mut outputs = self.model.compute(&inputs.into_vec())?;
        if let Some(wanted) = &self.outputs {
            for name in wanted {
                if !outputs.iter().any(|t| &t.name == name) {
                    let got: Vec<_> = outputs.iter().map(|t| t.name.as_str()).collect();
                    return Err(StageError::invalid_config(format!(
                        "model '{}' has no output '{name}'; its outputs are: {}",
                        self.model.name(),
                        got.join(", ")
                    )));
                }
            }
            outputs.retain(|t| wanted.contains(&t.name));
        }
        Ok(outputs)
    }
}

outpost_guest::export_stage!(Infer);
