//! A test stage that attacks its host in the way config `attack` names, on
//! every `run`. Input `x` (anything); output `y`, f32.
//!
//! `loop`, `recurse`, `alloc`, `huge-output`, `huge-emit` and `emit-flood`
//! (config `bytes`; the second as one partial output, `outpost_guest::emit`,
//! the third as partial outputs of that size, one after another until
//! nobody listens), `emit-as` (small partial outputs named config `name`,
//! until nobody listens; returns how many went out), `read-file`,
//! `list-root`, `env`, `socket` (config `address`), `clock`, `unknown-model`,
//! `none` (behaves), `spin` (not an attack: busy work for config
//! `iterations`, then returns that count; a slow but sound request).
//!
//! Against wasi-nn (config `model`, a model the stage is granted):
//! `bad-ids` computes with token ids far outside the model's vocabulary;
//! `nn-tensors` makes `bytes`-sized wasi-nn tensors in a loop and keeps them;
//! `nn-contexts` makes execution contexts in a loop; `nn-errors` provokes
//! wasi-nn errors in a loop and keeps them.
//!
//! `socket-once` tries the socket on its instance's first call only (a denial
//! it reports itself), and from then on returns how many calls that
//! instance has served: a host that reused the instance would answer.

use outpost_guest::bindings::wasi::nn::{graph, tensor};
use outpost_guest::{Config, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec};

struct Hostile {
    attack: String,
    bytes: u64,
    address: String,
    model: String,
    name: String,
    calls: u32,
    iterations: u64,
}

impl Stage for Hostile {
    fn init(config: &Config) -> Result<Self, StageError> {
        Ok(Hostile {
            attack: config.require("attack")?,
            bytes: config.get_or("bytes", 1 << 30)?,
            address: config.get_or("address", "127.0.0.1:9".to_owned())?,
            model: config.get_or("model", "intent".to_owned())?,
            name: config.get_or("name", "y".to_owned())?,
            calls: 0,
            iterations: config.get_or("iterations", 100_000_000)?,
        })
    }

    fn describe(&self) -> StageInfo {
        StageInfo::new("hostile", "0.1.0", "attacks its host")
            .input(TensorSpec::any("x"))
            .output(TensorSpec::any("y"))
    }

    fn run(&mut self, _inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
        self.calls += 1;
        let report = |values: &[f32]| {
            Ok(vec![Tensor::from_f32(
                "y",
                vec![values.len() as u32],
                values,
            )?])
        };
        match self.attack.as_str() {
            "spin" => {
                let mut x = 0u64;
                for i in 0..self.iterations {
                    x = std::hint::black_box(x.wrapping_add(i));
                }
                std::hint::black_box(x);
                report(&[self.iterations as f32])
            }
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "recurse" => report(&[recurse(std::hint::black_box(1)) as f32]),
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "huge-output" => {
                let n = usize::try_from(self.bytes).unwrap_or(usize::MAX);
                Ok(vec![Tensor {
                    name: "y".into(),
                    dims: vec![(n / 4) as u32],
                    element_type: outpost_guest::ElementType::F32,
                    data: vec![0; n / 4 * 4],
                }])
            }
            "huge-emit" => {
                // A partial output past the output limit, outside any
                // streaming request: the host must refuse it all the same.
                let n = usize::try_from(self.bytes).unwrap_or(usize::MAX);
                let emitted = outpost_guest::emit(&[Tensor {
                    name: "y".into(),
                    dims: vec![(n / 4) as u32],
                    element_type: outpost_guest::ElementType::F32,
                    data: vec![0; n / 4 * 4],
                }]);
                report(&[f32::from(u8::from(emitted))])
            }
            "emit-flood" => {
                // Each partial output under the output limit, without end:
                // together they must be bounded all the same.
                let n = usize::try_from(self.bytes).unwrap_or(usize::MAX);
                let chunk = Tensor {
                    name: "y".into(),
                    dims: vec![(n / 4) as u32],
                    element_type: outpost_guest::ElementType::F32,
                    data: vec![0; n / 4 * 4],
                };
                let mut sent = 0u32;
                while outpost_guest::emit(std::slice::from_ref(&chunk)) {
                    sent = sent.saturating_add(1);
                }
                report(&[sent as f32])
            }
            "emit-as" => {
                // Outputs the pipeline does not declare, under a name the
                // stage picks: what reaches a client must not be shaped by it.
                let mut sent = 0u32;
                while sent < 1_000_000
                    && outpost_guest::emit(&[Tensor::from_f32(&self.name, vec![1], &[1.0])?])
                {
                    sent += 1;
                }
                report(&[sent as f32])
            }
            "read-file" => match std::fs::read("/etc/passwd") {
                Ok(bytes) => report(&[bytes.len() as f32]),
                Err(e) => Err(StageError::internal(format!("reading /etc/passwd: {e}"))),
            },
            "list-root" => match std::fs::read_dir("/") {
                Ok(entries) => report(&[entries.count() as f32]),
                Err(e) => Err(StageError::internal(format!("listing /: {e}"))),
            },
            "env" => match std::env::var("HOME") {
                Ok(v) => report(&[v.len() as f32]),
                Err(e) => Err(StageError::internal(format!("reading HOME: {e}"))),
            },
            "socket" => match std::net::TcpStream::connect(&self.address) {
                Ok(_) => report(&[1.0]),
                Err(e) => Err(StageError::internal(format!(
                    "connecting to {}: {e}",
                    self.address
                ))),
            },
            "clock" => {
                let since_epoch = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(-1.0, |d| d.as_secs_f32());
                report(&[since_epoch])
            }
            "unknown-model" => outpost_guest::nn::Model::load("not-granted").map(|_| Vec::new()),
            "socket-once" if self.calls == 1 => match std::net::TcpStream::connect(&self.address) {
                Ok(_) => report(&[-1.0]),
                Err(e) => Err(StageError::internal(format!(
                    "connecting to {}: {e}",
                    self.address
                ))),
            },
            "socket-once" => report(&[self.calls as f32]),
            "bad-ids" => {
                let model = outpost_guest::nn::Model::load(&self.model)?;
                let ids: Vec<i64> = vec![101, 21152, 102, 0];
                let mask: Vec<i64> = vec![1; ids.len()];
                let outputs = model.compute(&[
                    Tensor::from_i64("input_ids", vec![1, ids.len() as u32], &ids)?,
                    Tensor::from_i64("attention_mask", vec![1, mask.len() as u32], &mask)?,
                ])?;
                report(&[outputs.len() as f32])
            }
            "nn-tensors" => {
                let n = usize::try_from(self.bytes).unwrap_or(usize::MAX);
                let data = vec![7u8; n];
                let mut hoard = Vec::new();
                loop {
                    hoard.push(tensor::Tensor::new(
                        &[n as u32],
                        tensor::TensorType::U8,
                        &data,
                    ));
                    std::hint::black_box(&hoard);
                }
            }
            "nn-contexts" => {
                let graph = graph::load_by_name(&self.model)
                    .map_err(|e| StageError::inference(e.data()))?;
                let mut hoard = Vec::new();
                loop {
                    hoard.push(graph.init_execution_context());
                    std::hint::black_box(&hoard);
                }
            }
            "nn-errors" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(graph::load_by_name("not-granted"));
                    std::hint::black_box(&hoard);
                }
            }
            _ => report(&[0.0]),
        }
    }
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let pad = std::hint::black_box([n; 16]);
    if n == 0 {
        pad[3]
    } else {
        recurse(n + 1).wrapping_add(pad[7])
    }
}

outpost_guest::export_stage!(Hostile);
