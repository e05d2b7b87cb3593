//! `bert-tokenizer`: BERT's WordPiece tokenizer as a stage.
//!
//! Input: `text` (utf8); each line is one batch row. Outputs, all i64
//! [batch, sequence]: `input_ids`, `attention_mask`, `token_type_ids`.
//!
//! Files: `tokenizer` (a Hugging Face `tokenizer.json` with a WordPiece model)
//! or `vocab` (a `vocab.txt`, one token per line). Config: `max_length`
//! (default 128, counting `[CLS]` and `[SEP]`); `padding`: `"longest"` (default,
//! pad to the longest row) or `"max_length"`; `lowercase` and `strip_accents`
//! (defaults from `tokenizer.json`, else true).

mod normalize;
mod vocab;
mod wordpiece;

use outpost_guest::{
    Config, Dim, ElementType, Inputs, Stage, StageError, StageInfo, Tensor, TensorSpec,
};
use vocab::Vocab;

struct BertTokenizer {
    vocab: Vocab,
    normalizer: normalize::Options,
    max_length: usize,
    pad_to_max: bool,
}

impl Stage for BertTokenizer {
    fn init(config: &Config) -> Result<Self, StageError> {
        config.deny_unknown(&["max_length", "padding", "lowercase", "strip_accents"])?;
        let (vocab, defaults) = match (config.file("tokenizer"), config.file("vocab")) {
            (Some(json), None) => Vocab::from_tokenizer_json(json)?,
            (None, Some(txt)) => (Vocab::from_vocab_txt(txt)?, normalize::Options::default()),
            (Some(_), Some(_)) => {
                return Err(StageError::invalid_config(
                    "both files 'tokenizer' and 'vocab' are given; keep one",
                ));
            }
            (None, None) => {
                return Err(StageError::invalid_config(
                    "no vocabulary: give the stage a file `tokenizer` (tokenizer.json) or `vocab` (vocab.txt) under [stages.files]",
                ));
            }
        };
        let lowercase = config.get_or("lowercase", defaults.lowercase)?;
        let strip_accents =
            config.get_or("strip_accents", defaults.strip_accents.or(Some(lowercase)))?;
        let max_length: usize = config.get_or("max_length", 128)?;
        if !(2..=8192).contains(&max_length) {
            return Err(StageError::invalid_config(format!(
                "max_length = {max_length} must be between 2 (room for [CLS] and [SEP]) and 8192"
            )));
        }
        let padding: String = config.get_or("padding", "longest".to_owned())?;
        let pad_to_max = match padding.as_str() {
            "longest" => false,
            "max_length" => true,
            other => {
                return Err(StageError::invalid_config(format!(
                    "padding = \"{other}\" is not known; use \"longest\" or \"max_length\""
                )));
            }
        };
        Ok(BertTokenizer {
            vocab,
            normalizer: normalize::Options {
                lowercase,
                strip_accents,
                ..defaults
            },
            max_length,
            pad_to_max,
        })
    }

    fn describe(&self) -> StageInfo {
        let ids = |name| {
            TensorSpec::new(name, ElementType::I64).dims([Dim::sym("batch"), Dim::sym("sequence")])
        };
        StageInfo::new(
            "bert-tokenizer",
            env!("CARGO_PKG_VERSION"),
            "BERT WordPiece tokenization",
        )
        .input(TensorSpec::new("text", ElementType::Utf8).dims([Dim::sym("bytes")]))
        .output(ids("input_ids"))
        .output(ids("attention_mask"))
        .output(ids("token_type_ids"))
    }

    fn run(&mut self, mut inputs: Inputs) -> Result<Vec<Tensor>, StageError> {
        let text = inputs.take("text")?;
        let text = text.text()?;
        let mut lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            lines.push("");
        }
        let rows: Vec<Vec<i64>> = lines.iter().map(|line| self.encode(line)).collect();
        let seq = if self.pad_to_max {
            self.max_length
        } else {
            rows.iter().map(Vec::len).max().unwrap_or(2)
        };
        let batch = rows.len();
        let mut ids = vec![self.vocab.pad; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        for (b, row) in rows.iter().enumerate() {
            ids[b * seq..b * seq + row.len()].copy_from_slice(row);
            mask[b * seq..b * seq + row.len()].fill(1);
        }
        let dims = vec![batch as u32, seq as u32];
        Ok(vec![
            Tensor::from_i64("input_ids", dims.clone(), &ids)?,
            Tensor::from_i64("attention_mask", dims.clone(), &mask)?,
            Tensor::from_i64("token_type_ids", dims, &vec![0; batch * seq])?,
        ])
    }
}

impl BertTokenizer {
    /// `[CLS] pieces... [SEP]`, truncated to `max_length` ids.
    fn encode(&self, line: &str) -> Vec<i64> {
        let mut ids = vec![self.vocab.cls];
        let budget = self.max_length - 2;
        'words: for word in normalize::words(line, &self.normalizer) {
            for id in wordpiece::pieces(&word, &self.vocab) {
                if ids.len() > budget {
                    break 'words;
                }
                ids.push(id);
            }
        }
        ids.push(self.vocab.sep);
        ids
    }
}

outpost_guest::export_stage!(BertTokenizer);
