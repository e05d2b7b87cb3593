//! Loading: what a tokenizer.json may hold, and the errors for the rest.

use crate::common::{bytes, tiny};
use outpost_bpe::{LoadError, Tokenizer};
use serde_json::{Value, json};

fn load(json: &Value) -> Result<Tokenizer, LoadError> {
    Tokenizer::from_json(&bytes(json))
}

/// A change to `tiny()`.
type Edit = fn(&mut Value);

/// The error for `tiny()` changed by `edit`, with its message.
fn refused(edit: impl FnOnce(&mut Value)) -> (LoadError, String) {
    let mut json = tiny();
    edit(&mut json);
    let error = load(&json).expect_err("the edited file should be refused");
    let message = error.to_string();
    (error, message)
}

#[test]
fn the_tiny_tokenizer_loads_and_encodes() {
    let tokenizer = load(&tiny()).unwrap();
    assert_eq!(tokenizer.encode("abc ab<s>e"), [10, 9, 11, 4]);
    assert_eq!(tokenizer.token_to_id("<note>"), Some(12));
    assert_eq!(tokenizer.id_to_token(9), Some("Ġab"));
    assert!(tokenizer.is_special(11) && !tokenizer.is_special(12) && !tokenizer.is_special(0));
    assert_eq!(tokenizer.vocab_size(), 13);
}

#[test]
fn input_that_is_not_json_or_not_a_tokenizer() {
    assert!(matches!(
        Tokenizer::from_json(b"\xff{"),
        Err(LoadError::Json(_))
    ));
    assert!(matches!(
        Tokenizer::from_json(b"{}"),
        Err(LoadError::Json(_))
    ));
    let (error, message) = refused(|j| j["model"]["vocab"]["a"] = json!(-1));
    assert!(matches!(error, LoadError::Json(_)), "{message}");
}

#[test]
fn unsupported_components_are_named() {
    let cases: [(Edit, &str); 8] = [
        (
            |j| j["model"]["type"] = json!("WordPiece"),
            "model.type = WordPiece",
        ),
        (
            |j| j["normalizer"] = json!({"type": "NFC"}),
            "normalizer.type = NFC",
        ),
        (
            |j| j["pre_tokenizer"]["pretokenizers"][0] = json!({"type": "Split"}),
            "pre_tokenizer.pretokenizers[0].type = Split",
        ),
        (
            |j| j["pre_tokenizer"] = json!({"type": "Whitespace"}),
            "pre_tokenizer.type = Whitespace",
        ),
        (|j| j["decoder"] = Value::Null, "decoder.type = null"),
        (
            |j| j["post_processor"] = json!({"type": "TemplateProcessing"}),
            "post_processor.type = TemplateProcessing",
        ),
        (
            |j| j["model"]["dropout"] = json!(0.1),
            "model.dropout = 0.1",
        ),
        (
            |j| j["added_tokens"][1]["lstrip"] = json!(true),
            "added_tokens[1].lstrip = true",
        ),
    ];
    for (edit, expected) in cases {
        let (error, message) = refused(edit);
        assert!(matches!(error, LoadError::Unsupported { .. }), "{message}");
        assert!(message.starts_with(expected), "{message}");
    }
}

#[test]
fn merges_must_be_pairs_of_known_tokens() {
    let (error, message) = refused(|j| j["model"]["merges"][2] = json!(["Ġa", "x"]));
    assert!(
        matches!(&error, LoadError::MergeOutOfVocabulary { rank: 2, missing, .. } if missing == "x"),
        "{message}"
    );
    let (error, message) = refused(|j| j["model"]["merges"][3] = json!(["ab", "d"]));
    assert!(
        matches!(&error, LoadError::MergeOutOfVocabulary { rank: 3, missing, .. } if missing == "abd"),
        "{message}"
    );
    let (error, message) = refused(|j| j["model"]["merges"][0] = json!("a b c"));
    assert!(
        matches!(error, LoadError::BadMerge { rank: 0, .. }),
        "{message}"
    );
    let (error, message) = refused(|j| j["model"]["merges"][1] = json!(["a"]));
    assert!(
        matches!(error, LoadError::BadMerge { rank: 1, .. }),
        "{message}"
    );
}

#[test]
fn legacy_merge_strings_load_like_pairs() {
    let mut json = tiny();
    json["model"]["merges"] = json!(["#version: 0.2", "Ġ a", "a b", "Ġa b", "ab c"]);
    let tokenizer = load(&json).unwrap();
    assert_eq!(tokenizer.encode("abc ab"), [10, 9]);
}

#[test]
fn ids_must_index_the_tokens() {
    let (error, message) = refused(|j| j["model"]["vocab"]["e"] = json!(4_000_000_000u32));
    assert!(
        matches!(
            error,
            LoadError::IdOutOfRange {
                id: 4_000_000_000,
                limit: 15,
                ..
            }
        ),
        "{message}"
    );
}

#[test]
fn unk_token_must_exist() {
    let (error, message) = refused(|j| j["model"]["unk_token"] = json!("<unk>"));
    assert!(matches!(error, LoadError::UnknownUnkToken(_)), "{message}");
}

#[test]
fn an_added_token_outside_the_vocabulary_gets_the_next_id() {
    let mut json = tiny();
    json["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": 13, "content": "<new>", "special": true, "normalized": false}));
    let tokenizer = load(&json).unwrap();
    assert_eq!(tokenizer.encode("a<new>"), [0, 13]);
    assert_eq!(tokenizer.decode(&[0, 13], false), "a<new>");
}

#[test]
fn ignore_merges_takes_whole_words_from_the_vocabulary() {
    let mut json = tiny();
    // "Ġabc" is a token but no merge reaches it.
    json["model"]["vocab"]["Ġabc"] = json!(13);
    assert_eq!(load(&json).unwrap().encode(" abc"), [9, 2]);
    json["model"]["ignore_merges"] = json!(true);
    assert_eq!(load(&json).unwrap().encode(" abc"), [13]);
}
