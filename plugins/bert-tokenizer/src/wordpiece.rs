//! Greedy longest-match-first WordPiece.

use crate::vocab::Vocab;

/// The ids of the pieces `word` splits into, or `[UNK]` alone when some part
/// of it matches nothing or it is longer than the vocabulary allows.
pub fn pieces(word: &str, vocab: &Vocab) -> Vec<i64> {
    let boundaries: Vec<usize> = word
        .char_indices()
        .map(|(i, _)| i)
        .chain([word.len()])
        .collect();
    if boundaries.len() - 1 > vocab.max_chars_per_word {
        return vec![vocab.unk];
    }
    let mut ids = Vec::new();
    let mut candidate = String::with_capacity(word.len() + vocab.continuation_prefix.len());
    let mut start = 0;
    while start + 1 < boundaries.len() {
        let found = (start + 1..boundaries.len()).rev().find_map(|end| {
            candidate.clear();
            if start > 0 {
                candidate.push_str(&vocab.continuation_prefix);
            }
            candidate.push_str(&word[boundaries[start]..boundaries[end]]);
            vocab.ids.get(&candidate).map(|&id| (id, end))
        });
        match found {
            Some((id, end)) => {
                ids.push(id);
                start = end;
            }
            None => return vec![vocab.unk],
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::pieces;
    use crate::vocab::Vocab;

    fn vocab() -> Vocab {
        let txt = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nun\n##aff\n##able\naff\n##a\nhello\n";
        Vocab::from_vocab_txt(txt.as_bytes()).unwrap()
    }

    #[test]
    fn greedy_longest_match_first() {
        let v = vocab();
        assert_eq!(pieces("unaffable", &v), [4, 5, 6]);
        assert_eq!(pieces("hello", &v), [9]);
    }

    #[test]
    fn a_word_with_an_unmatched_piece_is_one_unk() {
        let v = vocab();
        assert_eq!(pieces("unaffablex", &v), [v.unk]);
        assert_eq!(pieces("zzz", &v), [v.unk]);
    }

    #[test]
    fn overlong_words_are_unk() {
        let v = vocab();
        assert_eq!(pieces(&"a".repeat(101), &v), [v.unk]);
    }

    #[test]
    fn a_vocabulary_without_specials_is_refused() {
        let error = Vocab::from_vocab_txt(b"[PAD]\nhello\n").err().unwrap();
        assert!(error.message.contains("[UNK]"), "{}", error.message);
    }
}
