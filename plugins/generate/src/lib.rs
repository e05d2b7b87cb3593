//! `generate`: the token loop of a generative model, and its sampling.
//!
//! The model's key/value cache stays in the host (`[models.NAME.cache]`):
//! the stage sends the prompt once (prefill), then one token per step, and
//! receives logits. Which token comes next is this stage's choice, the
//! policy a publisher ships and can change: greedy, or sampling with
//! temperature, top-k, top-p and a seed.
//!
//! Input: `input_ids` i64 [1, n] (the prompt, e.g. from `bpe-tokenizer`);
//! with `parameters = true`, also `parameters` (utf8), the request's own
//! settings as a JSON object (what `outpost serve` passes from an OpenAI
//! request): `max_tokens` (at most the configured `max_new_tokens`),
//! `temperature`, `top_k`, `top_p`, `seed`, `stop` (a string or a list of
//! strings that end the text, which leaves out the stop string), and
//! `stop_token_ids`; each one given replaces the configured value.
//!
//! Output: `token_ids` i64 [1, m], the generated tokens, stop token excluded;
//! `finish_reason` (utf8): `stop` (a stop token or string), `length`
//! (`max_new_tokens` reached) or `cancelled` (nobody listened any more);
//! with a `tokenizer` file (the model's tokenizer.json), also `text`, their
//! decoded text (special tokens left out). While it runs, each token is
//! emitted as it is chosen: `token_ids` [1, 1], and with a tokenizer the
//! `text` it completes (UTF-8 split across tokens, and text that may be the
//! start of a stop string, is held back until it is known; what is held at
//! the end leaves as a last `text`).
//! Config:
//! - `model` (required): the model's name in the pipeline;
//! - `max_new_tokens` (default 64);
//! - `stop` (default `[]`): token ids that end generation;
//! - `temperature` (default 0: greedy, the most likely token, lowest id on
//!   ties); above 0, sampling from softmax(logits / temperature), restricted
//!   by `top_k` (default 0: all) and `top_p` (default 1.0: all), drawn with
//!   a generator seeded by `seed` (default 0): the same seed, the same text;
//! - `parameters` (default false): take the `parameters` input.

mod request;
mod sample;
mod stop;

use outpost_guest::nn::Model;
use outpost_guest::{
    Config, Dim, ElementType, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec,
};
use request::Settings;
pub use sample::{Sampler, Sampling};
use stop::StopText;

struct Generate {
    model: Model,
    tokenizer: Option<outpost_bpe::Tokenizer>,
    /// What the configuration says; a request's `parameters` may change it.
    settings: Settings,
    parameters: bool,
}

/// Why generation ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    Stop,
    Length,
    Cancelled,
}

impl Stage for Generate {
    fn init(config: &Config) -> Result<Self, StageError> {
        config.deny_unknown(&[
            "model",
            "max_new_tokens",
            "stop",
            "temperature",
            "top_k",
            "top_p",
            "seed",
            "parameters",
        ])?;
        let name: String = config.require("model")?;
        let max_new_tokens: u32 = config.get_or("max_new_tokens", 64)?;
        if max_new_tokens == 0 {
            return Err(StageError::invalid_config(
                "max_new_tokens = 0 would generate nothing; set at least 1",
            ));
        }
        let sampling = Sampling {
            temperature: config.get_or("temperature", 0.0)?,
            top_k: config.get_or("top_k", 0)?,
            top_p: config.get_or("top_p", 1.0)?,
            seed: config.get_or("seed", 0)?,
        };
        sampling.check().map_err(StageError::invalid_config)?;
        let tokenizer = config
            .file("tokenizer")
            .map(|json| {
                outpost_bpe::Tokenizer::from_json(json).map_err(|e| {
                    StageError::invalid_config(format!("file 'tokenizer' (tokenizer.json): {e}"))
                })
            })
            .transpose()?;
        Ok(Generate {
            model: Model::load(&name)?,
            tokenizer,
            settings: Settings {
                max_new_tokens,
                sampling,
                stop_ids: config.get_or("stop", Vec::new())?,
                stop_strings: Vec::new(),
            },
            parameters: config.get_or("parameters", false)?,
        })
    }

    fn describe(&self) -> StageInfo {
        let info = StageInfo::new(
            "generate",
            env!("CARGO_PKG_VERSION"),
            "generates tokens with a model whose key/value cache the host keeps",
        )
        .input(TensorSpec::new("input_ids", ElementType::I64).dims([Dim::Fixed(1), Dim::sym("n")]))
        .output(TensorSpec::new("token_ids", ElementType::I64).dims([Dim::Fixed(1), Dim::sym("m")]))
        .output(TensorSpec::new("finish_reason", ElementType::Utf8).any_shape());
        let info = if self.parameters {
            info.input(TensorSpec::new("parameters", ElementType::Utf8).any_shape())
        } else {
            info
        };
        if self.tokenizer.is_some() {
            info.output(TensorSpec::new("text", ElementType::Utf8).any_shape())
        } else {
            info
        }
    }

    fn run(&mut self, mut inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
        let prompt = inputs.take("input_ids")?;
        let shape = prompt.expect_rank(2)?;
        if shape[0] != 1 || shape[1] == 0 {
            return Err(StageError::invalid_input(format!(
                "input_ids must be [1, n] with n >= 1 (one prompt), got {shape:?}"
            )));
        }
        let settings = if self.parameters {
            let parameters = inputs.take("parameters")?;
            self.settings
                .with_request(parameters.text()?, self.tokenizer.is_some())
                .map_err(StageError::invalid_input)?
        } else {
            self.settings.clone()
        };
        // One session per request: a new sequence, a new (empty) cache.
        let session = self.model.session()?;
        let mut sampler = Sampler::new(&settings.sampling);
        let mut decoder = self.tokenizer.as_ref().map(|t| t.decoder(true));
        let mut text = StopText::new(settings.stop_strings.clone());
        let mut generated: Vec<i64> = Vec::new();
        let mut next_input = prompt;
        next_input.name = "input_ids".to_owned();
        let mut finish = Finish::Length;
        while generated.len() < settings.max_new_tokens as usize {
            let outputs = session.compute(std::slice::from_ref(&next_input))?;
            let logits = outputs.iter().find(|t| t.name == "logits").ok_or_else(|| {
                StageError::inference(format!(
                    "model '{}' returned no 'logits'",
                    self.model.name()
                ))
            })?;
            let last = last_row(logits)?;
            let token = sampler.next(&last);
            if settings.stop_ids.contains(&token) {
                finish = Finish::Stop;
                break;
            }
            generated.push(token);
            // Each token leaves as soon as it is chosen, when the request
            // streams; a client that went away ends the generation.
            let mut partial = vec![Tensor::from_i64("token_ids", vec![1, 1], &[token])?];
            let mut stopped = false;
            if let Some(decoder) = decoder.as_mut() {
                let piece = u32::try_from(token)
                    .map(|id| decoder.push(id))
                    .unwrap_or_default();
                let (released, hit) = text.push(&piece);
                stopped = hit;
                partial.push(Tensor::from_text("text", &released));
            }
            if !outpost_guest::emit(&partial) {
                finish = Finish::Cancelled;
                break;
            }
            if stopped {
                finish = Finish::Stop;
                break;
            }
            next_input = Tensor::from_i64("input_ids", vec![1, 1], &[token])?;
        }
        let mut outputs = vec![
            Tensor::from_i64("token_ids", vec![1, generated.len() as u32], &generated)?,
            Tensor::from_text(
                "finish_reason",
                match finish {
                    Finish::Stop => "stop",
                    Finish::Length => "length",
                    Finish::Cancelled => "cancelled",
                },
            ),
        ];
        if let Some(decoder) = decoder {
            // What was held back leaves now, unless a stop string ended the
            // text (what follows it is dropped) or nobody listens.
            let mut rest = String::new();
            let mut stopped_in_tail = false;
            if !text.stopped() {
                let (released, hit) = text.push(&decoder.finish());
                rest.push_str(&released);
                stopped_in_tail = hit;
                if !hit {
                    rest.push_str(&text.finish());
                }
            }
            if !rest.is_empty() && finish != Finish::Cancelled {
                outpost_guest::emit(&[Tensor::from_text("text", &rest)]);
            }
            if stopped_in_tail {
                outputs[1] = Tensor::from_text("finish_reason", "stop");
            }
            outputs.push(Tensor::from_text("text", text.text()));
        }
        Ok(outputs)
    }
}

/// The logits of the last position: `logits` is [1, positions, vocabulary].
fn last_row(logits: &Tensor) -> Result<Vec<f32>, StageError> {
    logits.expect_type(ElementType::F32)?;
    let shape = logits.expect_rank(3)?;
    let vocab = shape[2];
    if vocab == 0 || shape[1] == 0 {
        return Err(StageError::inference(format!(
            "logits of shape {shape:?} hold no scores"
        )));
    }
    let row = vocab * 4;
    let start = logits.data.len().checked_sub(row).ok_or_else(|| {
        StageError::inference(format!("logits of shape {shape:?} carry too few bytes"))
    })?;
    Ok(logits.data[start..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

outpost_guest::export_stage!(Generate);
