//! `classify`: softmax over class scores, the top `k` classes, and their labels.
//!
//! Input: `logits` f32 [batch, classes]. Outputs: `scores` f32 [batch, k]
//! (probabilities, highest first), `indices` i64 [batch, k], and `labels` utf8:
//! one line per batch row, the row's top-k labels separated by tabs.
//! Config: `labels` (list of strings) or the file `labels` (one per line);
//! `top_k` (default 1); `softmax` (default true; false when the model already
//! returns probabilities).

use outpost_guest::{
    Config, Dim, ElementType, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec,
};

struct Classify {
    labels: Vec<String>,
    top_k: usize,
    softmax: bool,
}

impl Stage for Classify {
    fn init(config: &Config) -> Result<Self, StageError> {
        config.deny_unknown(&["labels", "top_k", "softmax"])?;
        let labels: Vec<String> = match (config.get("labels")?, config.file("labels")) {
            (Some(labels), None) => labels,
            (None, Some(file)) => std::str::from_utf8(file)
                .map_err(|e| {
                    StageError::invalid_config(format!("file 'labels' is not UTF-8: {e}"))
                })?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            (Some(_), Some(_)) => {
                return Err(StageError::invalid_config(
                    "labels are given both as config key 'labels' and as file 'labels'; keep one",
                ));
            }
            (None, None) => {
                return Err(StageError::invalid_config(
                    "no labels: set config key `labels = [...]` or give a file `labels` with one label per line",
                ));
            }
        };
        if labels.is_empty() {
            return Err(StageError::invalid_config("the label list is empty"));
        }
        let top_k: usize = config.get_or("top_k", 1)?;
        if top_k == 0 || top_k > labels.len() {
            return Err(StageError::invalid_config(format!(
                "top_k = {top_k} must be between 1 and the number of labels ({})",
                labels.len()
            )));
        }
        Ok(Classify {
            labels,
            top_k,
            softmax: config.get_or("softmax", true)?,
        })
    }

    fn describe(&self) -> StageInfo {
        let k = Dim::Fixed(self.top_k as u32);
        StageInfo::new(
            "classify",
            env!("CARGO_PKG_VERSION"),
            "softmax, top-k and labels",
        )
        .input(
            TensorSpec::new("logits", ElementType::F32)
                .dims([Dim::sym("batch"), Dim::Fixed(self.labels.len() as u32)]),
        )
        .output(TensorSpec::new("scores", ElementType::F32).dims([Dim::sym("batch"), k.clone()]))
        .output(TensorSpec::new("indices", ElementType::I64).dims([Dim::sym("batch"), k]))
        .output(TensorSpec::new("labels", ElementType::Utf8).any_shape())
    }

    fn run(&mut self, mut inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
        let logits = inputs.take("logits")?;
        let shape = logits.expect_rank(2)?;
        let (batch, classes) = (shape[0], shape[1]);
        if classes != self.labels.len() {
            return Err(StageError::invalid_input(format!(
                "logits have {classes} classes but {} labels are configured",
                self.labels.len()
            )));
        }
        let values = logits.to_f32()?;
        let (mut scores, mut indices, mut lines) = (Vec::new(), Vec::new(), Vec::new());
        for row in values.chunks_exact(classes) {
            let probs = if self.softmax {
                softmax(row)
            } else {
                row.to_vec()
            };
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            order.truncate(self.top_k);
            scores.extend(order.iter().map(|&i| probs[i]));
            indices.extend(order.iter().map(|&i| i as i64));
            let names: Vec<&str> = order.iter().map(|&i| self.labels[i].as_str()).collect();
            lines.push(names.join("\t"));
        }
        let dims = vec![batch as u32, self.top_k as u32];
        Ok(vec![
            Tensor::from_f32("scores", dims.clone(), &scores)?,
            Tensor::from_i64("indices", dims, &indices)?,
            Tensor::from_text("labels", &lines.join("\n")),
        ])
    }
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

outpost_guest::export_stage!(Classify);
