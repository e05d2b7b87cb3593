//! SmolLM2's real tokenizer.json against ids from Hugging Face `tokenizers`
//! (tests/fixtures/smollm2-ids.json, written by tests/make_fixture.py).
//!
//! The tokenizer.json is large and built by host/pipelines/smollm2/convert.py
//! into target/models/smollm2/; these tests say so and pass when it is not
//! there. OUTPOST_SMOLLM2_TOKENIZER points them at another copy.

use outpost_bpe::Tokenizer;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

fn tokenizer() -> Option<&'static Tokenizer> {
    static TOKENIZER: OnceLock<Option<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let path = std::env::var_os("OUTPOST_SMOLLM2_TOKENIZER")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("../../target/models/smollm2/tokenizer.json")
                });
            match std::fs::read(&path) {
                Ok(bytes) => Some(Tokenizer::from_json(&bytes).unwrap()),
                Err(error) => {
                    eprintln!(
                        "note: skipping the SmolLM2 comparison: {}: {error} \
                         (host/pipelines/smollm2/convert.py writes it)",
                        path.display()
                    );
                    None
                }
            }
        })
        .as_ref()
}

/// Bytes SmolLM2's vocabulary has no token for, which encoding drops as
/// `tokenizers` does.
const DROPPED_BYTES: [u8; 21] = [
    0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xC0, 0xC1, 0xF1, 0xF2, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA,
    0xFB, 0xFC, 0xFD, 0xFE, 0xFF,
];

fn fixture() -> Value {
    let text = include_str!("../fixtures/smollm2-ids.json");
    serde_json::from_str(text).unwrap()
}

#[test]
fn ids_and_decoding_match_tokenizers() {
    let Some(tokenizer) = tokenizer() else { return };
    let fixture = fixture();
    let source = &fixture["source"];
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 40);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let ids = tokenizer.encode(text);
        assert_eq!(ids, expected, "ids of {text:?} (fixture from {source})");
        let decoded = case["decoded"].as_str().unwrap();
        assert_eq!(tokenizer.decode(&ids, false), decoded, "decoding {text:?}");
        // Only texts with bytes the vocabulary lacks may not round-trip.
        let dropped = text.bytes().any(|b| DROPPED_BYTES.contains(&b));
        assert!(decoded == text || dropped, "round trip of {text:?}");
        assert_eq!(
            tokenizer.decode(&ids, true),
            case["decoded_skip_special"].as_str().unwrap(),
            "{text:?} without special tokens"
        );
        let mut decoder = tokenizer.decoder(false);
        let mut streamed: String = ids.iter().map(|&id| decoder.push(id)).collect();
        streamed.push_str(&decoder.finish());
        assert_eq!(streamed, decoded, "streamed");
    }
}

#[test]
fn control_tokens_are_single_ids() {
    let Some(tokenizer) = tokenizer() else { return };
    for (token, id) in [("<|endoftext|>", 0), ("<|im_start|>", 1), ("<|im_end|>", 2)] {
        assert_eq!(tokenizer.token_to_id(token), Some(id));
        assert_eq!(tokenizer.encode(token), [id]);
        assert!(tokenizer.is_special(id));
    }
    assert_eq!(tokenizer.vocab_size(), 49152);
}

#[test]
fn streaming_never_returns_part_of_a_character() {
    let Some(tokenizer) = tokenizer() else { return };
    let text = "👨‍👩‍👧‍👦 東京 🇯🇵 naïve";
    let ids = tokenizer.encode(text);
    let mut decoder = tokenizer.decoder(false);
    let mut pieces: Vec<String> = ids.iter().map(|&id| decoder.push(id)).collect();
    pieces.push(decoder.finish());
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert!(
        pieces.iter().filter(|p| p.is_empty()).count() > 0,
        "{pieces:?}"
    );
    assert_eq!(pieces.concat(), text);
}

#[test]
fn arbitrary_text_never_panics_and_round_trips() {
    let Some(tokenizer) = tokenizer() else { return };
    // Every char class the splitter knows, mixed, plus code points at the
    // edges of the ranges.
    let mut text = String::new();
    for c in (0..0x3000u32)
        .step_by(7)
        .chain([0xD7FF, 0xE000, 0xFFFD, 0xFFFF, 0x1F600, 0x10FFFF])
    {
        text.extend(char::from_u32(c));
        if c % 5 == 0 {
            text.push(' ');
        }
    }
    text.retain(|c| !c.to_string().bytes().any(|b| DROPPED_BYTES.contains(&b)));
    for piece in [&text[..], "", "\0", " ", "\u{7}", "<|im_start|"] {
        let ids = tokenizer.encode(piece);
        assert_eq!(tokenizer.decode(&ids, false), piece);
    }
    let ids = tokenizer.encode("a\u{4}b\u{40000}c");
    // The three continuation bytes left of U+40000 are three invalid sequences.
    assert_eq!(tokenizer.decode(&ids, false), "ab\u{FFFD}\u{FFFD}\u{FFFD}c");
}
