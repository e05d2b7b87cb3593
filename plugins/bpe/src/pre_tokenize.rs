//! Splitting text into words before BPE: `tokenizers`' `Digits` and
//! `ByteLevel` pre-tokenizers.
//!
//! `ByteLevel` splits with GPT-2's pattern
//! `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
//! It needs a lookahead, which the `regex` crate lacks, and is simple enough to
//! match by hand: at each position the first alternative that matches wins,
//! and every alternative but the last two is one run of a single character
//! class.
//!
//! The classes are `tokenizers`' own: `\s` is Unicode's `White_Space` (in
//! Oniguruma, which `tokenizers` matches with, as in `char::is_whitespace`),
//! and `\p{L}`, `\p{N}` and `Digits`' numbers come from tables read off
//! `tokenizers` (`unicode_tables`, see its generator). Oniguruma's tables
//! are Unicode 14.0; taking the categories from a newer Unicode would split
//! text with letters and digits assigned since differently.

mod unicode_tables;

/// How one `Digits` step splits numbers off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigitSplit {
    /// `individual_digits: true`: every digit is a word of its own.
    Individual,
    /// `individual_digits: false`: a run of digits is one word.
    Contiguous,
}

/// The pre-tokenizer of a byte-level BPE tokenizer: any number of `Digits`
/// steps, then `ByteLevel`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreTokenizer {
    pub digit_steps: Vec<DigitSplit>,
    /// `ByteLevel.add_prefix_space`: a word that does not start with a space
    /// gets one, so the first word of a text is spelt like the others.
    pub add_prefix_space: bool,
    /// `ByteLevel.use_regex`: split with GPT-2's pattern.
    pub use_regex: bool,
}

impl PreTokenizer {
    /// Calls `emit` with each word of `text`, in order.
    pub fn for_each_word(&self, text: &str, mut emit: impl FnMut(&str)) {
        let mut pieces = vec![text];
        for &step in &self.digit_steps {
            pieces = pieces
                .into_iter()
                .flat_map(|piece| split_digits(piece, step))
                .collect();
        }
        for piece in pieces {
            if piece.is_empty() {
                continue;
            }
            let prefixed;
            let piece = if self.add_prefix_space && !piece.starts_with(' ') {
                prefixed = format!(" {piece}");
                prefixed.as_str()
            } else {
                piece
            };
            if self.use_regex {
                split_gpt2(piece, &mut emit);
            } else {
                emit(piece);
            }
        }
    }
}

/// Splits numbers off `text`. `tokenizers` asks `char::is_numeric`
/// (categories Nd, Nl and No: `²`, `½` and `Ⅻ` too) of the Rust it was built
/// with; [`unicode_tables::NUMERIC`] is that answer.
fn split_digits(text: &str, step: DigitSplit) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_number = false;
    for (i, c) in text.char_indices() {
        let numeric = if c.is_ascii() {
            c.is_ascii_digit()
        } else {
            in_table(c, unicode_tables::NUMERIC)
        };
        let boundary = match step {
            DigitSplit::Individual => numeric || in_number,
            DigitSplit::Contiguous => numeric != in_number,
        };
        if boundary && i > start {
            pieces.push(&text[start..i]);
            start = i;
        }
        in_number = numeric;
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// The character classes GPT-2's pattern tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// `\p{L}`
    Letter,
    /// `\p{N}`
    Number,
    /// `\s`
    Space,
    /// `[^\s\p{L}\p{N}]`
    Other,
}

fn class(c: char) -> Class {
    if c.is_ascii() {
        return match c {
            'a'..='z' | 'A'..='Z' => Class::Letter,
            '0'..='9' => Class::Number,
            '\t'..='\r' | ' ' => Class::Space,
            _ => Class::Other,
        };
    }
    if c.is_whitespace() {
        Class::Space
    } else if in_table(c, unicode_tables::LETTER) {
        Class::Letter
    } else if in_table(c, unicode_tables::NUMBER) {
        Class::Number
    } else {
        Class::Other
    }
}

/// Whether `c` is in one of `ranges` (sorted, disjoint, inclusive).
fn in_table(c: char, ranges: &[(u32, u32)]) -> bool {
    let c = c as u32;
    ranges
        .binary_search_by(|&(start, end)| {
            if end < c {
                std::cmp::Ordering::Less
            } else if start > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Calls `emit` with each match of GPT-2's pattern in `text`; together they
/// cover it.
pub fn split_gpt2<'t>(text: &'t str, emit: &mut impl FnMut(&'t str)) {
    let mut rest = text;
    while !rest.is_empty() {
        let len = match_len(rest).clamp(1, rest.len());
        // `match_len` ends on a char boundary; should it ever not, take the
        // whole rest rather than panic on the slice.
        let (word, tail) = rest.split_at_checked(len).unwrap_or((rest, ""));
        emit(word);
        rest = tail;
    }
}

/// The length in bytes of the pattern's match at the start of `s` (not empty).
fn match_len(s: &str) -> usize {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return 0;
    };
    let second = chars.next();
    if first == '\''
        && let Some(n) = contraction(&s[1..])
    {
        return 1 + n;
    }
    // ` ?\p{L}+`, ` ?\p{N}+` and ` ?[^\s\p{L}\p{N}]+`: an optional space, then
    // one run of a class other than whitespace.
    if first == ' '
        && let Some(next) = second.map(class).filter(|&c| c != Class::Space)
    {
        return 1 + run_len(&s[1..], next);
    }
    match class(first) {
        Class::Space => whitespace_len(s),
        run => run_len(s, run),
    }
}

/// `'s|'t|'re|'ve|'m|'ll|'d` after the apostrophe: lowercase only, as in the
/// pattern.
fn contraction(after: &str) -> Option<usize> {
    let b = after.as_bytes();
    match b {
        [b's' | b't' | b'm' | b'd', ..] => Some(1),
        [b'r' | b'v', b'e', ..] | [b'l', b'l', ..] => Some(2),
        _ => None,
    }
}

fn run_len(s: &str, run: Class) -> usize {
    s.char_indices()
        .find(|&(_, c)| class(c) != run)
        .map_or(s.len(), |(i, _)| i)
}

/// `\s+(?!\S)|\s+`: a run of whitespace at the end of the text is one word;
/// before anything else the run leaves its last character to the next word
/// (where ` ?\p{L}+` and the like pick up a space), unless it is that one
/// character alone.
fn whitespace_len(s: &str) -> usize {
    let end = run_len(s, Class::Space);
    if end == s.len() {
        return end;
    }
    match s[..end].char_indices().last() {
        Some((last, _)) if last > 0 => last,
        _ => end,
    }
}

#[cfg(test)]
mod tests {
    use super::{DigitSplit, PreTokenizer, split_digits, split_gpt2, unicode_tables};

    fn gpt2(text: &str) -> Vec<&str> {
        let mut words = Vec::new();
        split_gpt2(text, &mut |w| words.push(w));
        words
    }

    fn smollm2(text: &str) -> Vec<String> {
        let pre = PreTokenizer {
            digit_steps: vec![DigitSplit::Individual],
            add_prefix_space: false,
            use_regex: true,
        };
        let mut words = Vec::new();
        pre.for_each_word(text, |w| words.push(w.to_owned()));
        words
    }

    #[test]
    fn words_keep_their_leading_space() {
        assert_eq!(gpt2("Hello world!"), ["Hello", " world", "!"]);
        assert_eq!(gpt2("a, b"), ["a", ",", " b"]);
        assert_eq!(gpt2("Café crème"), ["Café", " crème"]);
    }

    #[test]
    fn contractions_are_lowercase_and_only_at_a_word_start() {
        // Expected values from `tokenizers` 0.20.3 (ByteLevel, use_regex).
        assert_eq!(
            gpt2("it's 'S ''s !'s we'll"),
            ["it", "'s", " '", "S", " ''", "s", " !'", "s", " we", "'ll"]
        );
    }

    #[test]
    fn whitespace_runs_leave_their_last_character_to_the_next_word() {
        assert_eq!(gpt2("a   b"), ["a", "  ", " b"]);
        assert_eq!(gpt2("a\n\nb"), ["a", "\n", "\n", "b"]);
        assert_eq!(gpt2("a \n b"), ["a", " \n", " b"]);
        assert_eq!(gpt2("x  "), ["x", "  "]);
        assert_eq!(gpt2("\u{3000}\u{3000}b"), ["\u{3000}", "\u{3000}", "b"]);
        assert_eq!(gpt2(" "), [" "]);
    }

    #[test]
    fn zero_width_and_control_characters_are_not_whitespace() {
        // U+200B, U+FEFF and U+001C are not White_Space (tokenizers agrees).
        assert_eq!(gpt2("a\u{200b}\u{200b}b"), ["a", "\u{200b}\u{200b}", "b"]);
        assert_eq!(gpt2("\u{1c}\u{1c}"), ["\u{1c}\u{1c}"]);
    }

    #[test]
    fn digits_are_split_one_by_one_with_any_numeric_char() {
        assert_eq!(
            split_digits("a²½Ⅻ٣१x", DigitSplit::Individual),
            ["a", "²", "½", "Ⅻ", "٣", "१", "x"]
        );
        assert_eq!(
            split_digits("v12.34", DigitSplit::Contiguous),
            ["v", "12", ".", "34"]
        );
        assert_eq!(
            smollm2("12345 3.14"),
            ["1", "2", "3", "4", "5", " ", "3", ".", "1", "4"]
        );
        assert_eq!(smollm2("abc 1"), ["abc", " ", "1"]);
    }

    #[test]
    fn letters_assigned_after_unicode_14_are_not_letters() {
        // U+0C5C (Telugu, Unicode 16) is a letter today but unassigned in
        // the Oniguruma `tokenizers` uses: the pattern takes it for
        // punctuation, so it runs on into the apostrophe.
        assert_eq!(gpt2("\u{c5c}'s"), ["\u{c5c}'", "s"]);
        assert_eq!(gpt2("\u{c1c}'s"), ["\u{c1c}", "'s"]);
        // Sunuwar digits (Unicode 16) are not numbers yet either; Kawi's
        // (Unicode 15) are, for `Digits`.
        assert_eq!(smollm2("a\u{11bf0}\u{11bf1}"), ["a", "\u{11bf0}\u{11bf1}"]);
        assert_eq!(
            smollm2("a\u{11f50}\u{11f51}"),
            ["a", "\u{11f50}", "\u{11f51}"]
        );
    }

    #[test]
    fn tables_are_sorted_and_disjoint() {
        for table in [
            unicode_tables::LETTER,
            unicode_tables::NUMBER,
            unicode_tables::NUMERIC,
        ] {
            assert!(table.iter().all(|&(start, end)| start <= end));
            assert!(table.windows(2).all(|w| w[0].1 < w[1].0));
        }
    }

    #[test]
    fn prefix_space_is_added_to_each_piece() {
        let pre = PreTokenizer {
            digit_steps: vec![],
            add_prefix_space: true,
            use_regex: true,
        };
        let mut words = Vec::new();
        pre.for_each_word("hi  there", |w| words.push(w.to_owned()));
        assert_eq!(words, [" hi", " ", " there"]);
        words.clear();
        pre.for_each_word("", |w| words.push(w.to_owned()));
        assert!(words.is_empty());
    }

    #[test]
    fn every_input_is_covered_without_panicking() {
        for text in [
            "",
            "\0",
            "'",
            "' ",
            "\u{10FFFF}",
            " \u{0301}",
            "a\u{85}\u{85}",
        ] {
            assert_eq!(gpt2(text).concat(), text, "{text:?}");
        }
    }
}
