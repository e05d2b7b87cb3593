//! A stage that returns what it is given, unchanged: with no tensors it
//! measures a bare call into a stage and back; with a large tensor, the cost
//! of moving bytes across the boundary both ways.

use outpost_guest::{Config, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec};

struct Echo;

impl Stage for Echo {
    fn init(config: &Config) -> Result<Self, StageError> {
        config.deny_unknown(&[])?;
        Ok(Echo)
    }

    fn describe(&self) -> StageInfo {
        StageInfo::new("echo", env!("CARGO_PKG_VERSION"), "returns its inputs")
            .input(TensorSpec::any("*"))
            .output(TensorSpec::any("*"))
    }

    fn run(&mut self, inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
        Ok(inputs.into_vec())
    }
}

outpost_guest::export_stage!(Echo);
