//! Constructors for [`StageError`], one per [`ErrorKind`].

use crate::{ErrorKind, StageError};
use std::fmt;

impl StageError {
    /// The stage's configuration or one of its files is not usable.
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidConfig,
            message: message.into(),
        }
    }

    /// An input tensor is missing or has the wrong name, type or shape.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidInput,
            message: message.into(),
        }
    }

    /// A wasi-nn call failed.
    pub fn inference(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Inference,
            message: message.into(),
        }
    }

    /// Anything else: a bug in the stage.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Internal,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::InvalidConfig => "invalid config",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Inference => "inference failed",
            ErrorKind::Internal => "internal error",
        })
    }
}
