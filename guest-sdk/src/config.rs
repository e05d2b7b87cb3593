//! Typed access to a stage's configuration and files.

use crate::{RawConfig, StageError};
use serde::de::DeserializeOwned;

/// A stage's configuration: the `config` table and the `files` the pipeline
/// gives it.
pub struct Config {
    raw: RawConfig,
}

impl Config {
    pub(crate) fn new(raw: RawConfig) -> Self {
        Self { raw }
    }

    /// The value under `key`, or `None` when the pipeline does not set it.
    /// Fails, naming the key, when the value does not have the type `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StageError> {
        let Some((_, json)) = self.raw.entries.iter().find(|(k, _)| k == key) else {
            return Ok(None);
        };
        serde_json::from_str(json)
            .map(Some)
            .map_err(|e| StageError::invalid_config(format!("config key '{key}' = {json}: {e}")))
    }

    /// The value under `key`, or `default` when it is not set.
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T, StageError> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// The value under `key`; fails with a message naming the key when it is
    /// not set.
    pub fn require<T: DeserializeOwned>(&self, key: &str) -> Result<T, StageError> {
        self.get(key)?.ok_or_else(|| {
            StageError::invalid_config(format!(
                "config key '{key}' is required; add `{key} = ...` to the stage's [config] table"
            ))
        })
    }

    /// The contents of the file the pipeline lists as `name` under `files`.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.raw
            .files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.data.as_slice())
    }

    /// Keys set in the config table, for stages that reject unknown keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.raw.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Fails, naming the first unknown key and listing the known ones, when the
    /// config table holds a key outside `known`.
    pub fn deny_unknown(&self, known: &[&str]) -> Result<(), StageError> {
        match self.keys().find(|k| !known.contains(k)) {
            Some(k) => Err(StageError::invalid_config(format!(
                "unknown config key '{k}'; this stage knows: {}",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Config;
    use crate::RawConfig;

    fn config() -> Config {
        Config::new(RawConfig {
            entries: vec![
                ("top_k".into(), "3".into()),
                ("labels".into(), r#"["a","b"]"#.into()),
            ],
            files: vec![crate::bindings::outpost::plugin::types::File {
                name: "vocab".into(),
                data: b"x".to_vec(),
            }],
        })
    }

    #[test]
    fn typed_values_defaults_and_files() {
        let c = config();
        assert_eq!(c.get::<u32>("top_k").unwrap(), Some(3));
        assert_eq!(c.require::<Vec<String>>("labels").unwrap(), ["a", "b"]);
        assert_eq!(c.get_or("missing", 7u8).unwrap(), 7);
        assert_eq!(c.file("vocab"), Some(&b"x"[..]));
        assert_eq!(c.file("other"), None);
    }

    #[test]
    fn errors_name_the_key() {
        let c = config();
        assert!(
            c.get::<String>("top_k")
                .err()
                .unwrap()
                .message
                .contains("config key 'top_k'")
        );
        assert!(
            c.require::<u8>("model")
                .err()
                .unwrap()
                .message
                .contains("'model' is required")
        );
        let e = c.deny_unknown(&["top_k"]).err().unwrap();
        assert!(
            e.message.contains("unknown config key 'labels'") && e.message.contains("top_k"),
            "{}",
            e.message
        );
    }
}
