//! Decoding, whole and streamed one id at a time.

use crate::common::{bytes, tiny};
use outpost_bpe::Tokenizer;
use serde_json::json;

/// `tiny()` plus tokens for single bytes of multi-byte characters: é is
/// C3 A9, 🚂 is F0 9F 9A 82.
fn tokenizer() -> Tokenizer {
    let mut json = tiny();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    for (token, id) in [
        ("Ã", 13),
        ("©", 14),
        ("ð", 15),
        ("Ł", 16),
        ("ļ", 17),
        ("Ĥ", 18),
    ] {
        vocab.insert(token.to_owned(), json!(id));
    }
    Tokenizer::from_json(&bytes(&json)).unwrap()
}

fn streamed(tokenizer: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut decoder = tokenizer.decoder(skip_special);
    let mut pieces: Vec<String> = ids.iter().map(|&id| decoder.push(id)).collect();
    pieces.push(decoder.finish());
    pieces
}

#[test]
fn bytes_of_one_character_are_held_until_it_is_complete() {
    let t = tokenizer();
    let ids = [0, 13, 14, 5, 15, 16, 17, 18, 1];
    assert_eq!(t.decode(&ids, false), "aé 🚂b");
    assert_eq!(
        streamed(&t, &ids, false),
        ["a", "", "é", " ", "", "", "", "🚂", "b", ""]
    );
}

#[test]
fn invalid_sequences_become_one_replacement_each_as_in_the_whole_decode() {
    let t = tokenizer();
    let cases: [&[u32]; 6] = [
        // A lone continuation byte, a lead byte followed by ASCII.
        &[14, 0, 13, 0],
        // A four-byte character cut short, then ended by another lead byte.
        &[15, 16, 15, 16, 17, 18],
        // Cut short at the end of the stream.
        &[0, 15, 16, 17],
        &[13],
        // Two lead bytes in a row.
        &[13, 13, 14],
        &[],
    ];
    for ids in cases {
        let whole = t.decode(ids, false);
        assert_eq!(streamed(&t, ids, false).concat(), whole, "{ids:?}");
    }
    assert_eq!(t.decode(&[14, 0, 13, 0], false), "\u{FFFD}a\u{FFFD}a");
    assert_eq!(t.decode(&[0, 15, 16, 17], false), "a\u{FFFD}");
}

#[test]
fn special_tokens_are_skipped_on_request_and_unknown_ids_always() {
    let t = tokenizer();
    let ids = [11, 0, 12, 999, 1, 11];
    assert_eq!(t.decode(&ids, false), "<s>a<note>b<s>");
    // <note> is an added token but not special.
    assert_eq!(t.decode(&ids, true), "a<note>b");
    assert_eq!(streamed(&t, &ids, true).concat(), "a<note>b");
    assert_eq!(
        streamed(&t, &ids, false),
        ["<s>", "a", "<note>", "", "b", "<s>", ""]
    );
}

#[test]
fn encoding_never_panics_and_round_trips() {
    let t = tokenizer();
    let texts = [
        "",
        " ",
        "\0",
        "\u{7f}",
        "\u{10FFFF}",
        "'",
        "''s",
        "<s",
        "<s><s>",
        "<note><s>",
        "x\u{301}\u{301}",
        "\r\n\t\u{b}\u{c}",
        "１２３",
        "\u{85}\u{a0}\u{2028}",
    ];
    for text in texts {
        let ids = t.encode(text);
        // The tiny vocabulary lacks most bytes: those are dropped, so compare
        // only texts it can spell.
        if text.bytes().all(|b| b"abcde \n".contains(&b)) {
            assert_eq!(t.decode(&ids, false), text);
        }
    }
    assert_eq!(t.encode("<s><s>"), [11, 11]);
    assert_eq!(t.encode("a\u{0}b"), [0, 1]);
}
