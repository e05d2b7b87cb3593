//! A test stage that misbehaves on purpose. Config `mode` picks how:
//! - `"error"`: `run` returns a stage error;
//! - `"panic"`: `run` panics (a trap);
//! - `"bad-length"`: returns a tensor whose bytes do not match its dims;
//! - `"bad-type"`: returns i64 where it declared f32;
//! - `"bad-utf8"`: returns a utf8 tensor whose bytes are not UTF-8;
//! - `"trap-after"`: passes `x` through for an instance's first `ok_runs`
//!   runs (default 1), then traps: passes a health check on a fresh
//!   instance, fails on real traffic;
//! - `"ok"`: passes `x` through, so a pipeline around it works.
//!
//! Input and output: `x`, f32 [n].

use outpost_guest::{
    Config, Dim, ElementType, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec,
};

struct Fail {
    mode: String,
    ok_runs: u64,
    runs: u64,
}

impl Stage for Fail {
    fn init(config: &Config) -> Result<Self, StageError> {
        let mode: String = config.require("mode")?;
        if mode == "init-error" {
            return Err(StageError::invalid_config(
                "init-error mode: refusing to start",
            ));
        }
        let ok_runs = config.get_or("ok_runs", 1u64)?;
        Ok(Fail {
            mode,
            ok_runs,
            runs: 0,
        })
    }

    fn describe(&self) -> StageInfo {
        let trap_after = self.mode == "trap-after";
        let x = || {
            let spec = TensorSpec::new("x", ElementType::F32);
            // Spliced into real pipelines: any f32 tensor passes through.
            if trap_after {
                spec.any_shape()
            } else {
                spec.dims([Dim::sym("n")])
            }
        };
        StageInfo::new("fail", "0.1.0", "fails on purpose")
            .input(x())
            .output(x())
    }

    fn run(&mut self, mut inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
        let x = inputs.take("x")?;
        self.runs += 1;
        match self.mode.as_str() {
            "trap-after" if self.runs > self.ok_runs => {
                panic!(
                    "asked to trap after {} runs (mode = \"trap-after\")",
                    self.ok_runs
                )
            }
            "error" => Err(StageError::invalid_input(
                "asked to fail (mode = \"error\")",
            )),
            "panic" => panic!("asked to panic (mode = \"panic\")"),
            "bad-length" => Ok(vec![Tensor {
                data: vec![0; 3],
                ..x
            }]),
            "bad-type" => {
                let values = vec![1i64; x.dims.iter().product::<u32>() as usize];
                Ok(vec![Tensor::from_i64("x", x.dims.clone(), &values)?])
            }
            "bad-utf8" => Ok(vec![Tensor {
                name: "x".into(),
                dims: vec![3],
                element_type: ElementType::Utf8,
                data: vec![0xff, 0xfe, b'A'],
            }]),
            _ => Ok(vec![x]),
        }
    }
}

outpost_guest::export_stage!(Fail);
