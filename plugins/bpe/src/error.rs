//! What can be wrong with a `tokenizer.json`.

/// Why a `tokenizer.json` could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file is not JSON, or a field has the wrong type.
    #[error("not a tokenizer.json: {0}")]
    Json(#[from] serde_json::Error),

    /// A component or setting this crate does not implement, where guessing
    /// would tokenize differently from `tokenizers`.
    #[error("{field} = {found} is not supported; this tokenizer implements {supported}")]
    Unsupported {
        /// Where in the file, e.g. `model.type` or `added_tokens[3].lstrip`.
        field: String,
        /// What the file has there.
        found: String,
        /// What would be accepted.
        supported: &'static str,
    },

    /// A merge is not two tokens (`"a b"` or `["a", "b"]`).
    #[error("merge {rank} is {merge}; expected two tokens, as \"a b\" or [\"a\", \"b\"]")]
    BadMerge {
        /// Its position in `model.merges`.
        rank: usize,
        /// The merge as written (debug-quoted).
        merge: String,
    },

    /// A merge uses or produces a token that is not in the vocabulary.
    #[error(
        "merge {rank} ({left:?} + {right:?}) needs {missing:?}, which is not in the vocabulary"
    )]
    MergeOutOfVocabulary {
        /// Its position in `model.merges`.
        rank: usize,
        /// Its left token.
        left: String,
        /// Its right token.
        right: String,
        /// The token not found: one of the two, or their concatenation.
        missing: String,
    },

    /// A token's id leaves holes that would waste memory (ids are indices
    /// into per-token tables).
    #[error(
        "token {token:?} has id {id}; ids must be below {limit}, the number of vocabulary and added tokens"
    )]
    IdOutOfRange {
        /// The token.
        token: String,
        /// Its id.
        id: u32,
        /// The number of tokens in the vocabulary and `added_tokens` together.
        limit: usize,
    },

    /// `model.unk_token` names a token that is not in the vocabulary.
    #[error("model.unk_token {0:?} is not in the vocabulary")]
    UnknownUnkToken(String),
}
