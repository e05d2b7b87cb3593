//! From ids back to text: `tokenizers`' `ByteLevel` decoder, whole or one
//! token at a time.
//!
//! A byte-level token is any run of bytes, not necessarily whole UTF-8
//! characters: an emoji is often three or four tokens. Decoding maps every
//! token back to its bytes, joins them and only then reads UTF-8, replacing
//! invalid sequences with U+FFFD as `String::from_utf8_lossy` does (and as
//! `tokenizers` does, with the same function).

use crate::Tokenizer;
use crate::byte_level;

/// What decoding needs to know about one id.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The token as the vocabulary spells it.
    pub text: Box<str>,
    /// The bytes it stands for.
    pub bytes: Box<[u8]>,
    /// An added token marked `special`, which decoding may skip.
    pub special: bool,
}

impl Entry {
    pub fn new(text: &str, special: bool) -> Self {
        Self {
            text: text.into(),
            bytes: byte_level::token_bytes(text).into(),
            special,
        }
    }
}

impl Tokenizer {
    /// The text of `ids`. Ids the tokenizer does not know are skipped, as
    /// `tokenizers` skips them; so are special tokens when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&id| self.entry(id, skip_special))
            .flat_map(|entry| entry.bytes.iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A decoder for ids that arrive one at a time (generated tokens).
    pub fn decoder(&self, skip_special: bool) -> Decoder<'_> {
        Decoder {
            tokenizer: self,
            skip_special,
            pending: Vec::new(),
        }
    }

    fn entry(&self, id: u32, skip_special: bool) -> Option<&Entry> {
        let entry = self.entries.get(id as usize)?.as_ref()?;
        (!(skip_special && entry.special)).then_some(entry)
    }
}

/// Decodes a stream of ids into text as soon as it is complete.
///
/// [`Decoder::push`] returns the text that the new id completes: the bytes of
/// a character split across tokens are held back until its last byte
/// arrives, so what is returned is never a broken character. Everything
/// returned by `push`, followed by [`Decoder::finish`], is exactly
/// [`Tokenizer::decode`] of all the ids.
///
/// ```
/// # let json = r#"{"model": {"type": "BPE", "merges": [],
/// #     "vocab": {"ð": 0, "Ł": 1, "ļ": 2, "Ĥ": 3, "!": 4}},
/// #     "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"}}"#;
/// # let tokenizer = outpost_bpe::Tokenizer::from_json(json.as_bytes()).unwrap();
/// // 🚂 is the four bytes F0 9F 9A 82, tokens 0..=3 here.
/// let mut decoder = tokenizer.decoder(false);
/// let pieces: Vec<String> = [0, 1, 2, 3, 4].iter().map(|&id| decoder.push(id)).collect();
/// assert_eq!(pieces, ["", "", "", "🚂", "!"]);
/// assert_eq!(decoder.finish(), "");
/// ```
#[derive(Debug)]
pub struct Decoder<'t> {
    tokenizer: &'t Tokenizer,
    skip_special: bool,
    /// Bytes of a character whose end has not arrived yet.
    pending: Vec<u8>,
}

impl Decoder<'_> {
    /// Adds one id; returns the text it completes (often empty while a
    /// character is incomplete).
    pub fn push(&mut self, id: u32) -> String {
        if let Some(entry) = self.tokenizer.entry(id, self.skip_special) {
            self.pending.extend_from_slice(&entry.bytes);
        }
        let mut text = String::new();
        let mut rest = self.pending.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(error) => {
                    let (valid, after) = rest.split_at(error.valid_up_to());
                    text.push_str(&String::from_utf8_lossy(valid));
                    match error.error_len() {
                        // Invalid whatever follows: one U+FFFD, as the whole
                        // decode would write.
                        Some(len) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(len..).unwrap_or_default();
                        }
                        // A character cut short by the end: wait for more.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let held = rest.len();
        let start = self.pending.len() - held;
        self.pending.drain(..start);
        text
    }

    /// Ends the stream: a character still incomplete becomes U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
