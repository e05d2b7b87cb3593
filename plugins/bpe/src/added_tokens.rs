//! Added tokens (`<|im_start|>`, `<|endoftext|>`, ...): found in the text
//! before anything else, each becomes its own id, and the text between them
//! is tokenized as usual.
//!
//! `tokenizers` finds them with a leftmost-longest Aho-Corasick search: the
//! earliest match wins, and of matches starting there the longest. Tokens
//! are few (17 in SmolLM2), so a scan that tries only the tokens starting
//! with the byte at hand, longest first, is as fast and needs no automaton.

/// One entry of `added_tokens`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddedToken {
    pub id: u32,
    pub content: String,
    /// Control tokens, which decoding may skip.
    pub special: bool,
    /// Matched in the normalized text rather than the raw one.
    pub normalized: bool,
}

/// A stretch of text as the added tokens split it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'t> {
    /// Text to pre-tokenize and run through BPE.
    Text(&'t str),
    /// An added token, found literally in the text.
    Token(u32),
}

/// The added tokens of a tokenizer, ready to be found in text.
#[derive(Debug, Default)]
pub struct AddedTokens {
    /// `normalized: false` tokens, searched for first, in the raw text.
    raw: Matcher,
    /// `normalized: true` tokens, then searched for in the text between those.
    /// This crate implements no normalizer, so "normalized" text is the raw
    /// text; the two passes remain because they can split differently when
    /// tokens of the two kinds overlap.
    normalized: Matcher,
}

impl AddedTokens {
    pub fn new(tokens: &[AddedToken]) -> Self {
        let (normalized, raw): (Vec<&AddedToken>, Vec<&AddedToken>) =
            tokens.iter().partition(|t| t.normalized);
        Self {
            raw: Matcher::new(&raw),
            normalized: Matcher::new(&normalized),
        }
    }

    /// Splits `text` at every added token; no segment is empty.
    pub fn split<'t>(&self, text: &'t str) -> Vec<Segment<'t>> {
        let mut first = Vec::new();
        self.raw.split(text, &mut first);
        let mut segments = Vec::with_capacity(first.len());
        for segment in first {
            match segment {
                Segment::Text(text) => self.normalized.split(text, &mut segments),
                token => segments.push(token),
            }
        }
        segments
    }
}

#[derive(Debug, Default)]
struct Matcher {
    /// (content, id), longest first.
    tokens: Vec<(String, u32)>,
    /// For each first byte, the indices into `tokens` of those starting with
    /// it (longest first, as `tokens` is sorted).
    by_first_byte: Vec<Vec<usize>>,
}

impl Matcher {
    fn new(tokens: &[&AddedToken]) -> Self {
        // `tokenizers` ignores added tokens with empty content.
        let mut tokens: Vec<(String, u32)> = tokens
            .iter()
            .filter(|t| !t.content.is_empty())
            .map(|t| (t.content.clone(), t.id))
            .collect();
        tokens.sort_by_key(|(content, _)| std::cmp::Reverse(content.len()));
        let mut by_first_byte = vec![Vec::new(); 256];
        for (i, (content, _)) in tokens.iter().enumerate() {
            if let Some(&b) = content.as_bytes().first() {
                by_first_byte[b as usize].push(i);
            }
        }
        Self {
            tokens,
            by_first_byte,
        }
    }

    /// The (length, id) of the longest token at the start of `rest`.
    fn longest_at(&self, rest: &[u8]) -> Option<(usize, u32)> {
        let candidates = self.by_first_byte.get(*rest.first()? as usize)?;
        candidates.iter().find_map(|&i| {
            let (content, id) = &self.tokens[i];
            rest.starts_with(content.as_bytes())
                .then_some((content.len(), *id))
        })
    }

    fn split<'t>(&self, text: &'t str, out: &mut Vec<Segment<'t>>) {
        if self.tokens.is_empty() {
            if !text.is_empty() {
                out.push(Segment::Text(text));
            }
            return;
        }
        let bytes = text.as_bytes();
        let mut start = 0;
        let mut pos = 0;
        while pos < bytes.len() {
            // Token contents are UTF-8, so a match starts on a char boundary
            // and ends on one; the check keeps the slicing below panic-free.
            let found = text
                .is_char_boundary(pos)
                .then(|| self.longest_at(&bytes[pos..]))
                .flatten();
            match found {
                Some((len, id)) if text.is_char_boundary(pos + len) => {
                    if start < pos {
                        out.push(Segment::Text(&text[start..pos]));
                    }
                    out.push(Segment::Token(id));
                    pos += len;
                    start = pos;
                }
                _ => pos += 1,
            }
        }
        if start < text.len() {
            out.push(Segment::Text(&text[start..]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AddedToken, AddedTokens, Segment};

    fn token(id: u32, content: &str, normalized: bool) -> AddedToken {
        AddedToken {
            id,
            content: content.to_owned(),
            special: true,
            normalized,
        }
    }

    #[test]
    fn splits_around_tokens() {
        let added = AddedTokens::new(&[
            token(1, "<|im_start|>", false),
            token(2, "<|im_end|>", false),
        ]);
        assert_eq!(
            added.split("<|im_start|>user\nhi<|im_end|>\n"),
            [
                Segment::Token(1),
                Segment::Text("user\nhi"),
                Segment::Token(2),
                Segment::Text("\n")
            ]
        );
        assert_eq!(
            added.split("<|im_start|><|im_start|>"),
            [Segment::Token(1), Segment::Token(1)]
        );
        assert_eq!(added.split("<|im_sta"), [Segment::Text("<|im_sta")]);
        assert_eq!(
            added.split("é<|im_end|>"),
            [Segment::Text("é"), Segment::Token(2)]
        );
    }

    #[test]
    fn the_longest_token_at_the_leftmost_position_wins() {
        let added = AddedTokens::new(&[
            token(1, "<a>", false),
            token(2, "<a><b>", false),
            token(3, "a><b", false),
        ]);
        assert_eq!(
            added.split("x<a><b>"),
            [Segment::Text("x"), Segment::Token(2)]
        );
        assert_eq!(
            added.split("<a><c>"),
            [Segment::Token(1), Segment::Text("<c>")]
        );
    }

    #[test]
    fn raw_tokens_are_found_before_normalized_ones() {
        // "ab" is normalized, "bc" raw: "abc" splits at "bc" although "ab"
        // starts further left.
        let added = AddedTokens::new(&[token(1, "ab", true), token(2, "bc", false)]);
        assert_eq!(added.split("abc"), [Segment::Text("a"), Segment::Token(2)]);
    }

    #[test]
    fn empty_text_and_empty_tokens() {
        let added = AddedTokens::new(&[token(1, "", false)]);
        assert_eq!(added.split(""), []);
        assert_eq!(added.split("x"), [Segment::Text("x")]);
    }
}
