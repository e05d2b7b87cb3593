//! A small tokenizer.json to build variants of.

use serde_json::{Value, json};

/// Bytes `a`..`e`, ` ` (`Ġ`) and `\n` (`Ċ`), a few merges and two added
/// tokens: ids 0..=6 are the bytes, 7..=10 the merges, 11 and 12 the added tokens.
pub fn tiny() -> Value {
    json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 11, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
             "normalized": false, "special": true},
            {"id": 12, "content": "<note>", "single_word": false, "lstrip": false, "rstrip": false,
             "normalized": false, "special": false}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4, "Ġ": 5, "Ċ": 6,
                      "ab": 7, "Ġa": 8, "Ġab": 9, "abc": 10, "<s>": 11, "<note>": 12},
            "merges": [["Ġ", "a"], ["a", "b"], ["Ġa", "b"], ["ab", "c"]]
        }
    })
}

pub fn bytes(json: &Value) -> Vec<u8> {
    serde_json::to_vec(json).unwrap()
}
