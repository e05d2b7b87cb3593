//! BERT's basic tokenizer: clean the text, space out CJK characters, strip
//! accents, lowercase, split on whitespace and punctuation.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

/// The `BertNormalizer` settings of a `tokenizer.json`.
#[derive(Clone, Copy)]
pub struct Options {
    pub clean_text: bool,
    pub handle_chinese_chars: bool,
    /// `None`: follow `lowercase`, as BERT does.
    pub strip_accents: Option<bool>,
    pub lowercase: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            clean_text: true,
            handle_chinese_chars: true,
            strip_accents: None,
            lowercase: true,
        }
    }
}

/// The words of `text` after normalisation, punctuation split off as words
/// of its own.
pub fn words(text: &str, options: &Options) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if options.clean_text {
            if c == '\0' || c == '\u{fffd}' || is_control(c) {
                continue;
            }
            if is_whitespace(c) {
                cleaned.push(' ');
                continue;
            }
        }
        if options.handle_chinese_chars && is_cjk(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    let text = if options.strip_accents.unwrap_or(options.lowercase) {
        cleaned.nfd().filter(|&c| !is_combining_mark(c)).collect()
    } else {
        cleaned
    };
    let text = if options.lowercase {
        text.to_lowercase()
    } else {
        text
    };

    let mut words = Vec::new();
    for chunk in text.split(is_whitespace).filter(|w| !w.is_empty()) {
        let mut current = String::new();
        for c in chunk.chars() {
            if is_punctuation(c) {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
                words.push(c.to_string());
            } else {
                current.push(c);
            }
        }
        if !current.is_empty() {
            words.push(current);
        }
    }
    words
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || c.general_category() == GeneralCategory::SpaceSeparator
}

fn is_control(c: char) -> bool {
    if matches!(c, '\t' | '\n' | '\r') {
        return false;
    }
    matches!(
        c.general_category(),
        GeneralCategory::Control | GeneralCategory::Format
    )
}

/// BERT counts every non-alphanumeric ASCII character as punctuation, plus
/// anything Unicode puts in a punctuation category.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.general_category_group() == GeneralCategoryGroup::Punctuation
}

/// The CJK Unified Ideograph blocks, which BERT's vocabulary splits one
/// character at a time.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::{Options, words};

    #[test]
    fn splits_punctuation_and_lowercases() {
        assert_eq!(
            words("Hello, World!", &Options::default()),
            ["hello", ",", "world", "!"]
        );
    }

    #[test]
    fn strips_accents_when_lowercasing() {
        assert_eq!(words("Café naïve", &Options::default()), ["cafe", "naive"]);
        let keep = Options {
            lowercase: false,
            ..Options::default()
        };
        assert_eq!(words("Café", &keep), ["Café"]);
    }

    #[test]
    fn spaces_out_cjk_and_drops_control_characters() {
        assert_eq!(
            words("東京\u{7}x\tY", &Options::default()),
            ["東", "京", "x", "y"]
        );
    }
}
