//! Vocabularies from `vocab.txt` or a Hugging Face `tokenizer.json`.

use crate::normalize;
use outpost_guest::StageError;
use serde::Deserialize;
use std::collections::HashMap;

/// Token → id, plus the ids of the special tokens the encoder needs.
pub struct Vocab {
    pub ids: HashMap<String, i64>,
    pub unk: i64,
    pub cls: i64,
    pub sep: i64,
    pub pad: i64,
    pub continuation_prefix: String,
    pub max_chars_per_word: usize,
}

#[derive(Deserialize)]
struct TokenizerJson {
    model: WordPieceJson,
    normalizer: Option<NormalizerJson>,
}

#[derive(Deserialize)]
struct WordPieceJson {
    #[serde(rename = "type")]
    kind: String,
    vocab: HashMap<String, i64>,
    unk_token: Option<String>,
    continuing_subword_prefix: Option<String>,
    max_input_chars_per_word: Option<usize>,
}

#[derive(Deserialize)]
struct NormalizerJson {
    #[serde(rename = "type")]
    kind: String,
    clean_text: Option<bool>,
    handle_chinese_chars: Option<bool>,
    strip_accents: Option<bool>,
    lowercase: Option<bool>,
}

impl Vocab {
    pub fn from_vocab_txt(bytes: &[u8]) -> Result<Self, StageError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| StageError::invalid_config(format!("file 'vocab' is not UTF-8: {e}")))?;
        let ids = text
            .lines()
            .enumerate()
            .map(|(i, token)| (token.trim_end_matches('\r').to_owned(), i as i64))
            .collect();
        Self::with_specials(ids, "[UNK]", "##", 100, "vocab")
    }

    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<(Self, normalize::Options), StageError> {
        let json: TokenizerJson = serde_json::from_slice(bytes).map_err(|e| {
            StageError::invalid_config(format!("file 'tokenizer' is not a tokenizer.json: {e}"))
        })?;
        if json.model.kind != "WordPiece" {
            return Err(StageError::invalid_config(format!(
                "file 'tokenizer' has a {} model; this stage implements WordPiece only",
                json.model.kind
            )));
        }
        let mut options = normalize::Options::default();
        if let Some(n) = json.normalizer {
            if n.kind != "BertNormalizer" {
                return Err(StageError::invalid_config(format!(
                    "file 'tokenizer' has a {} normalizer; this stage implements BertNormalizer only",
                    n.kind
                )));
            }
            options = normalize::Options {
                clean_text: n.clean_text.unwrap_or(true),
                handle_chinese_chars: n.handle_chinese_chars.unwrap_or(true),
                strip_accents: n.strip_accents,
                lowercase: n.lowercase.unwrap_or(true),
            };
        }
        let vocab = Self::with_specials(
            json.model.vocab,
            json.model.unk_token.as_deref().unwrap_or("[UNK]"),
            json.model
                .continuing_subword_prefix
                .as_deref()
                .unwrap_or("##"),
            json.model.max_input_chars_per_word.unwrap_or(100),
            "tokenizer",
        )?;
        Ok((vocab, options))
    }

    fn with_specials(
        ids: HashMap<String, i64>,
        unk: &str,
        prefix: &str,
        max_chars_per_word: usize,
        file: &str,
    ) -> Result<Self, StageError> {
        let special = |token: &str| {
            ids.get(token).copied().ok_or_else(|| {
                StageError::invalid_config(format!(
                    "file '{file}' has no token {token}; a BERT vocabulary needs [UNK], [CLS], [SEP] and [PAD]"
                ))
            })
        };
        Ok(Self {
            unk: special(unk)?,
            cls: special("[CLS]")?,
            sep: special("[SEP]")?,
            pad: special("[PAD]")?,
            continuation_prefix: prefix.to_owned(),
            max_chars_per_word,
            ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Vocab;

    #[test]
    fn reads_tokenizer_json_with_its_normalizer() {
        let json = br###"{
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": false, "lowercase": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 50,
                      "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hi": 4}}
        }"###;
        let (vocab, options) = Vocab::from_tokenizer_json(json).unwrap();
        assert_eq!((vocab.cls, vocab.sep, vocab.pad, vocab.unk), (2, 3, 0, 1));
        assert_eq!(vocab.max_chars_per_word, 50);
        assert_eq!(options.strip_accents, Some(false));
    }

    #[test]
    fn refuses_other_models() {
        let json = br#"{"model": {"type": "BPE", "vocab": {}}}"#;
        let error = Vocab::from_tokenizer_json(json).err().unwrap();
        assert!(error.message.contains("BPE"), "{}", error.message);
    }
}
