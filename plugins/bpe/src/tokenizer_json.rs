//! Reading a Hugging Face `tokenizer.json`: the parts this crate implements,
//! checked, and a [`LoadError`] naming the field for anything else.

use crate::LoadError;
use crate::added_tokens::AddedToken;
use crate::byte_level::BYTE_CHARS;
use crate::merge::{Bpe, Merge};
use crate::pre_tokenize::{DigitSplit, PreTokenizer};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

/// A `tokenizer.json`, checked and converted.
pub struct Parts {
    pub vocab: HashMap<String, u32>,
    pub bpe: Bpe,
    /// `model.ignore_merges`: a word that is a token as a whole is that token.
    pub ignore_merges: bool,
    /// Added tokens with the ids `tokenizers` gives them.
    pub added: Vec<AddedToken>,
    pub pre_tokenizer: PreTokenizer,
}

#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    added_tokens: Vec<AddedTokenJson>,
    #[serde(default)]
    normalizer: Value,
    #[serde(default)]
    pre_tokenizer: Value,
    #[serde(default)]
    post_processor: Value,
    #[serde(default)]
    decoder: Value,
    model: ModelJson,
}

#[derive(Deserialize)]
struct AddedTokenJson {
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default = "yes")]
    normalized: bool,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type")]
    kind: Option<String>,
    vocab: HashMap<String, u32>,
    merges: Vec<MergeJson>,
    dropout: Option<f32>,
    unk_token: Option<String>,
    continuing_subword_prefix: Option<String>,
    end_of_word_suffix: Option<String>,
    #[serde(default)]
    fuse_unk: bool,
    #[serde(default)]
    byte_fallback: bool,
    #[serde(default)]
    ignore_merges: bool,
}

/// Newer files write a merge as `["a", "b"]`, older ones as `"a b"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum MergeJson {
    Pair(Vec<String>),
    Legacy(String),
}

#[derive(Deserialize)]
struct DigitsJson {
    #[serde(default)]
    individual_digits: bool,
}

#[derive(Deserialize)]
struct ByteLevelJson {
    #[serde(default = "yes")]
    add_prefix_space: bool,
    #[serde(default = "yes")]
    use_regex: bool,
}

fn yes() -> bool {
    true
}

fn unsupported(
    field: impl Into<String>,
    found: impl Into<String>,
    supported: &'static str,
) -> LoadError {
    LoadError::Unsupported {
        field: field.into(),
        found: found.into(),
        supported,
    }
}

/// The `type` of a component, `null` when there is none.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Object(fields) => match fields.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            _ => "an object without a type".to_owned(),
        },
        other => other.to_string(),
    }
}

pub fn parse(bytes: &[u8]) -> Result<Parts, LoadError> {
    let json: TokenizerJson = serde_json::from_slice(bytes)?;
    check_components(&json)?;
    let pre_tokenizer = pre_tokenizer(&json.pre_tokenizer)?;
    let model = json.model;
    if let Some(kind) = model.kind.as_deref().filter(|&k| k != "BPE") {
        return Err(unsupported("model.type", kind, "BPE"));
    }
    if let Some(dropout) = model.dropout.filter(|&d| d != 0.0) {
        return Err(unsupported(
            "model.dropout",
            dropout.to_string(),
            "null (BPE dropout makes encoding random)",
        ));
    }
    for (field, value) in [
        (
            "model.continuing_subword_prefix",
            &model.continuing_subword_prefix,
        ),
        ("model.end_of_word_suffix", &model.end_of_word_suffix),
    ] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            return Err(unsupported(
                field,
                format!("{value:?}"),
                "null (byte-level BPE)",
            ));
        }
    }
    if model.byte_fallback {
        return Err(unsupported("model.byte_fallback", "true", "false"));
    }

    let added = added_tokens(&json.added_tokens, &model.vocab)?;
    let limit = model.vocab.len() + added.len();
    let out_of_range = model
        .vocab
        .iter()
        .map(|(token, &id)| (token.as_str(), id))
        .chain(added.iter().map(|t| (t.content.as_str(), t.id)))
        .find(|&(_, id)| id as usize >= limit);
    if let Some((token, id)) = out_of_range {
        return Err(LoadError::IdOutOfRange {
            token: token.to_owned(),
            id,
            limit,
        });
    }

    let unk = match model.unk_token {
        Some(unk) => match model.vocab.get(&unk) {
            Some(&id) => Some((id, model.fuse_unk)),
            None => return Err(LoadError::UnknownUnkToken(unk)),
        },
        None => None,
    };
    let mut byte_ids = [None; 256];
    for (id, c) in byte_ids.iter_mut().zip(BYTE_CHARS) {
        *id = model.vocab.get(c.encode_utf8(&mut [0; 4]) as &str).copied();
    }
    let merges = merges(model.merges, &model.vocab)?;
    Ok(Parts {
        vocab: model.vocab,
        bpe: Bpe {
            byte_ids,
            merges,
            unk,
        },
        ignore_merges: model.ignore_merges,
        added,
        pre_tokenizer,
    })
}

fn check_components(json: &TokenizerJson) -> Result<(), LoadError> {
    if !json.normalizer.is_null() {
        return Err(unsupported(
            "normalizer.type",
            kind(&json.normalizer),
            "no normalizer (null)",
        ));
    }
    if !matches!(kind(&json.post_processor).as_str(), "null" | "ByteLevel") {
        return Err(unsupported(
            "post_processor.type",
            kind(&json.post_processor),
            "null or ByteLevel (post-processors that add tokens are not implemented)",
        ));
    }
    if kind(&json.decoder) != "ByteLevel" {
        return Err(unsupported(
            "decoder.type",
            kind(&json.decoder),
            "ByteLevel",
        ));
    }
    for (i, token) in json.added_tokens.iter().enumerate() {
        for (flag, set) in [
            ("single_word", token.single_word),
            ("lstrip", token.lstrip),
            ("rstrip", token.rstrip),
        ] {
            if set {
                return Err(unsupported(
                    format!("added_tokens[{i}].{flag}"),
                    "true",
                    "false",
                ));
            }
        }
    }
    Ok(())
}

/// Any number of `Digits` steps, then `ByteLevel`, alone or in a `Sequence`.
fn pre_tokenizer(value: &Value) -> Result<PreTokenizer, LoadError> {
    const SUPPORTED: &str = "ByteLevel, alone or last in a Sequence after Digits steps";
    let (steps, prefix): (Vec<&Value>, &str) = if kind(value) == "Sequence" {
        let steps = value
            .get("pretokenizers")
            .and_then(Value::as_array)
            .ok_or_else(|| unsupported("pre_tokenizer.pretokenizers", "missing", SUPPORTED))?;
        (steps.iter().collect(), "pre_tokenizer.pretokenizers")
    } else {
        (vec![value], "pre_tokenizer")
    };
    let field = |i: usize| {
        if steps.len() == 1 && prefix == "pre_tokenizer" {
            "pre_tokenizer.type".to_owned()
        } else {
            format!("{prefix}[{i}].type")
        }
    };
    let Some((last, firsts)) = steps.split_last() else {
        return Err(unsupported(prefix, "[]", SUPPORTED));
    };
    let mut digit_steps = Vec::new();
    for (i, step) in firsts.iter().enumerate() {
        if kind(step) != "Digits" {
            return Err(unsupported(field(i), kind(step), SUPPORTED));
        }
        let digits = DigitsJson::deserialize(*step)?;
        digit_steps.push(if digits.individual_digits {
            DigitSplit::Individual
        } else {
            DigitSplit::Contiguous
        });
    }
    if kind(last) != "ByteLevel" {
        return Err(unsupported(field(firsts.len()), kind(last), SUPPORTED));
    }
    let byte_level = ByteLevelJson::deserialize(*last)?;
    Ok(PreTokenizer {
        digit_steps,
        add_prefix_space: byte_level.add_prefix_space,
        use_regex: byte_level.use_regex,
    })
}

/// The ids `tokenizers` gives added tokens: the vocabulary's when the token is
/// in it, otherwise the next id after the vocabulary and the added tokens
/// before it (the `id` in the file is only checked there, with a warning).
fn added_tokens(
    tokens: &[AddedTokenJson],
    vocab: &HashMap<String, u32>,
) -> Result<Vec<AddedToken>, LoadError> {
    let vocab_size = u32::try_from(vocab.len()).unwrap_or(u32::MAX);
    let mut added: Vec<AddedToken> = Vec::with_capacity(tokens.len());
    for token in tokens {
        if token.content.is_empty() || added.iter().any(|t| t.content == token.content) {
            continue;
        }
        let id = match vocab.get(&token.content) {
            Some(&id) => id,
            None => match added.iter().map(|t| t.id).max() {
                Some(max) if max >= vocab_size || vocab_size == 0 => max.saturating_add(1),
                _ => vocab_size,
            },
        };
        added.push(AddedToken {
            id,
            content: token.content.clone(),
            special: token.special,
            normalized: token.normalized,
        });
    }
    Ok(added)
}

fn merges(
    merges: Vec<MergeJson>,
    vocab: &HashMap<String, u32>,
) -> Result<HashMap<(u32, u32), Merge>, LoadError> {
    let mut map = HashMap::with_capacity(merges.len());
    let pairs = merges.into_iter().filter(|m| {
        // Legacy merges.txt files start with a `#version` line.
        !matches!(m, MergeJson::Legacy(line) if line.starts_with("#version"))
    });
    for (rank, merge) in pairs.enumerate() {
        let (left, right) = match merge {
            MergeJson::Pair(pair) => match <[String; 2]>::try_from(pair) {
                Ok([left, right]) => (left, right),
                Err(pair) => {
                    return Err(LoadError::BadMerge {
                        rank,
                        merge: format!("{pair:?}"),
                    });
                }
            },
            MergeJson::Legacy(line) => match line.split(' ').collect::<Vec<_>>()[..] {
                [left, right] => (left.to_owned(), right.to_owned()),
                _ => {
                    return Err(LoadError::BadMerge {
                        rank,
                        merge: format!("{line:?}"),
                    });
                }
            },
        };
        let merged = format!("{left}{right}");
        let id = |token: &str| {
            vocab
                .get(token)
                .copied()
                .ok_or_else(|| LoadError::MergeOutOfVocabulary {
                    rank,
                    left: left.clone(),
                    right: right.clone(),
                    missing: token.to_owned(),
                })
        };
        let pair = (id(&left)?, id(&right)?);
        let merge = Merge {
            rank: u32::try_from(rank).unwrap_or(u32::MAX),
            id: id(&merged)?,
        };
        // A repeated pair keeps its last rank, as in `tokenizers`.
        map.insert(pair, merge);
    }
    Ok(map)
}
