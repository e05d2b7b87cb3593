//! Byte-level BPE tokenization, as Hugging Face `tokenizers` does it, from a
//! `tokenizer.json` (GPT-2, SmolLM2 and their kin).
//!
//! ```
//! use outpost_bpe::Tokenizer;
//!
//! let json = r#"{
//!     "added_tokens": [{"id": 5, "content": "<|end|>", "special": true, "normalized": false}],
//!     "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false},
//!     "decoder": {"type": "ByteLevel"},
//!     "model": {"type": "BPE",
//!               "vocab": {"h": 0, "i": 1, "hi": 2, "Ġ": 3, "Ġhi": 4, "<|end|>": 5},
//!               "merges": [["h", "i"], ["Ġ", "hi"]]}
//! }"#;
//! let tokenizer = Tokenizer::from_json(json.as_bytes())?;
//! let ids = tokenizer.encode("hi hi<|end|>");
//! assert_eq!(ids, [2, 4, 5]);
//! assert_eq!(tokenizer.decode(&ids, false), "hi hi<|end|>");
//! assert_eq!(tokenizer.decode(&ids, true), "hi hi");
//! # Ok::<(), outpost_bpe::LoadError>(())
//! ```
//!
//! Encoding follows `tokenizers` step by step:
//! 1. added tokens (`<|im_start|>`, ...) found literally in the text become
//!    their ids (`added_tokens`);
//! 2. the text between them is split into words: numbers first (`Digits`),
//!    then GPT-2's pattern (`ByteLevel`, in `pre_tokenize`);
//! 3. each word's UTF-8 bytes are spelt with GPT-2's byte characters
//!    (`byte_level`) and merged by BPE (`merge`).
//!
//! What a file asks for and this crate does not implement (a normalizer, a
//! `Split` pre-tokenizer, BPE dropout, ...) is refused at load with a
//! [`LoadError`] naming the field, rather than tokenized differently.
//! `tests/fixtures/smollm2-ids.json` holds ids from `tokenizers` itself, which
//! the tests compare against.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod added_tokens;
mod byte_level;
mod decode;
mod error;
mod merge;
mod pre_tokenize;
mod tokenizer_json;

use added_tokens::{AddedTokens, Segment};
use decode::Entry;
use merge::Bpe;
use pre_tokenize::PreTokenizer;
use std::collections::HashMap;

pub use decode::Decoder;
pub use error::LoadError;

/// A byte-level BPE tokenizer loaded from a `tokenizer.json`.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    added_ids: HashMap<String, u32>,
    added: AddedTokens,
    pre_tokenizer: PreTokenizer,
    bpe: Bpe,
    ignore_merges: bool,
    /// Indexed by id; `None` for an id no token has.
    entries: Vec<Option<Entry>>,
}

impl Tokenizer {
    /// Loads the contents of a `tokenizer.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, LoadError> {
        let parts = tokenizer_json::parse(bytes)?;
        // Ids were checked to be below this.
        let mut entries: Vec<Option<Entry>> = Vec::new();
        entries.resize_with(parts.vocab.len() + parts.added.len(), || None);
        for (token, &id) in &parts.vocab {
            entries[id as usize] = Some(Entry::new(token, false));
        }
        // An added token's text wins over a vocabulary token with its id, as
        // `tokenizers` looks ids up among added tokens first.
        for token in &parts.added {
            entries[token.id as usize] = Some(Entry::new(&token.content, token.special));
        }
        while entries.last().is_some_and(Option::is_none) {
            entries.pop();
        }
        Ok(Self {
            added_ids: parts
                .added
                .iter()
                .map(|t| (t.content.clone(), t.id))
                .collect(),
            added: AddedTokens::new(&parts.added),
            vocab: parts.vocab,
            pre_tokenizer: parts.pre_tokenizer,
            bpe: parts.bpe,
            ignore_merges: parts.ignore_merges,
            entries,
        })
    }

    /// The ids of `text`. Added tokens written in the text (special ones
    /// such as `<|im_start|>` included) become their own ids; nothing else is
    /// added, as `tokenizers` does for a file without a post-processor.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        for segment in self.added.split(text) {
            match segment {
                Segment::Token(id) => ids.push(id),
                Segment::Text(text) => self
                    .pre_tokenizer
                    .for_each_word(text, |word| self.encode_word(word, &mut ids)),
            }
        }
        ids
    }

    /// The ids of `text` read as plain text: added tokens written in it
    /// (`<|im_end|>`) are spelt out like any other text, never their own
    /// ids. For text a user wrote, which must not be able to insert control
    /// tokens. Equal to [`encode`](Self::encode) for text without them.
    pub fn encode_plain(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        self.pre_tokenizer
            .for_each_word(text, |word| self.encode_word(word, &mut ids));
        ids
    }

    fn encode_word(&self, word: &str, ids: &mut Vec<u32>) {
        if self.ignore_merges {
            let spelt: String = word
                .bytes()
                .map(|b| byte_level::BYTE_CHARS[b as usize])
                .collect();
            if let Some(&id) = self.vocab.get(&spelt) {
                ids.push(id);
                return;
            }
        }
        self.bpe.encode_word(word.as_bytes(), ids);
    }

    /// The id of a token as the vocabulary spells it (`Ġhello`,
    /// `<|im_end|>`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added_ids
            .get(token)
            .or_else(|| self.vocab.get(token))
            .copied()
    }

    /// The token with id `id`, as the vocabulary spells it.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        Some(&self.entries.get(id as usize)?.as_ref()?.text)
    }

    /// Whether `id` is an added token marked special (`<|im_end|>`).
    pub fn is_special(&self, id: u32) -> bool {
        self.entries
            .get(id as usize)
            .and_then(Option::as_ref)
            .is_some_and(|e| e.special)
    }

    /// One more than the highest id.
    pub fn vocab_size(&self) -> usize {
        self.entries.len()
    }
}
