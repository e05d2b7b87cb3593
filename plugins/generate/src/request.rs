//! A request's own generation settings (the `parameters` input), over the
//! configured ones.

use crate::Sampling;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// How one generation runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub max_new_tokens: u32,
    pub sampling: Sampling,
    /// Token ids that end generation (not part of the output).
    pub stop_ids: Vec<i64>,
    /// Strings that end the text (not part of it).
    pub stop_strings: Vec<String>,
}

/// The most stop strings a request may give, and their longest length.
const MAX_STOP_STRINGS: usize = 16;
const MAX_STOP_BYTES: usize = 256;

/// The settings a request may give.
const KNOWN: &str = "max_tokens, temperature, top_k, top_p, seed, stop, stop_token_ids";

/// `stop`: one string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// One setting's value, or a message naming it.
fn value<T: DeserializeOwned>(key: &str, value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|e| format!("setting '{key}': {e}"))
}

/// At most 40 characters of `text`, quoted, for messages.
fn quoted(text: &str) -> String {
    let cut: String = text.chars().take(40).collect();
    if cut.len() < text.len() {
        format!("{cut:?}...")
    } else {
        format!("{cut:?}")
    }
}

impl Settings {
    /// These settings with what the request's `parameters` (a JSON object;
    /// empty text: none) set. `decodes`: whether the stage has a tokenizer,
    /// which stop strings need. The message names the field.
    pub fn with_request(&self, json: &str, decodes: bool) -> Result<Settings, String> {
        let mut out = self.clone();
        if json.trim().is_empty() {
            return Ok(out);
        }
        let given: Map<String, Value> = serde_json::from_str(json).map_err(|e| {
            format!("the request's settings (input 'parameters') must be a JSON object: {e}")
        })?;
        let mut stops = Vec::new();
        for (key, v) in given {
            match key.as_str() {
                "max_tokens" => {
                    let n: u32 = value(&key, v)?;
                    if n == 0 {
                        return Err(
                            "max_tokens = 0 would generate nothing; ask for at least 1".into()
                        );
                    }
                    if n > self.max_new_tokens {
                        return Err(format!(
                            "max_tokens = {n} is more than this pipeline allows (its generate stage's max_new_tokens = {})",
                            self.max_new_tokens
                        ));
                    }
                    out.max_new_tokens = n;
                }
                "temperature" => out.sampling.temperature = value(&key, v)?,
                "top_k" => out.sampling.top_k = value(&key, v)?,
                "top_p" => out.sampling.top_p = value(&key, v)?,
                "seed" => out.sampling.seed = value(&key, v)?,
                "stop_token_ids" => out.stop_ids.extend(value::<Vec<i64>>(&key, v)?),
                "stop" => {
                    stops = match value(&key, v)? {
                        Stop::One(s) => vec![s],
                        Stop::Many(list) => list,
                    }
                }
                other => {
                    return Err(format!(
                        "unknown setting {}; a request may set {KNOWN}",
                        quoted(other)
                    ));
                }
            }
        }
        out.sampling.check()?;
        if stops.len() > MAX_STOP_STRINGS {
            return Err(format!(
                "stop: {} strings given, at most {MAX_STOP_STRINGS} are allowed",
                stops.len()
            ));
        }
        for s in &stops {
            if s.is_empty() || s.len() > MAX_STOP_BYTES {
                return Err(format!(
                    "stop: each stop string must be 1 to {MAX_STOP_BYTES} bytes, not {} ({})",
                    s.len(),
                    quoted(s)
                ));
            }
        }
        if !stops.is_empty() && !decodes {
            return Err(
                "stop strings need text: this generate stage has no tokenizer file; give stop_token_ids instead"
                    .into(),
            );
        }
        out.stop_strings = stops;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Settings;
    use crate::Sampling;

    fn configured() -> Settings {
        Settings {
            max_new_tokens: 64,
            sampling: Sampling {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                seed: 0,
            },
            stop_ids: vec![2],
            stop_strings: Vec::new(),
        }
    }

    #[test]
    fn no_parameters_keep_the_configuration() {
        assert_eq!(configured().with_request("", true).unwrap(), configured());
        assert_eq!(configured().with_request("{}", true).unwrap(), configured());
    }

    #[test]
    fn given_fields_replace_the_configured_ones() {
        let s = configured()
            .with_request(
                r#"{"max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 7, "stop": "\n\n", "stop_token_ids": [0]}"#,
                true,
            )
            .unwrap();
        assert_eq!(s.max_new_tokens, 8);
        assert_eq!(s.sampling.temperature, 0.7);
        assert_eq!(s.sampling.top_p, 0.9);
        assert_eq!(s.sampling.top_k, 40);
        assert_eq!(s.sampling.seed, 7);
        assert_eq!(s.stop_strings, ["\n\n"]);
        // The configured stop tokens still stop.
        assert_eq!(s.stop_ids, [2, 0]);
        let s = configured()
            .with_request(r#"{"stop": ["a", "b"]}"#, true)
            .unwrap();
        assert_eq!(s.stop_strings, ["a", "b"]);
    }

    #[test]
    fn bad_parameters_are_refused_naming_the_field() {
        let refused = |json: &str, decodes: bool, words: &[&str]| {
            let e = configured().with_request(json, decodes).unwrap_err();
            for w in words {
                assert!(e.contains(w), "{json}: {e}");
            }
        };
        refused(
            r#"{"max_tokens": 65}"#,
            true,
            &["max_tokens = 65", "max_new_tokens = 64"],
        );
        refused(r#"{"max_tokens": 0}"#, true, &["max_tokens = 0"]);
        refused(r#"{"max_tokens": -1}"#, true, &["setting 'max_tokens'"]);
        refused(r#"{"seed": -1}"#, true, &["setting 'seed'"]);
        refused(r#"{"temperature": -1}"#, true, &["temperature"]);
        refused(r#"{"top_p": 0}"#, true, &["top_p"]);
        refused(
            r#"{"logprobs": true}"#,
            true,
            &["unknown setting \"logprobs\"", "top_p"],
        );
        let long = format!(r#"{{"{}": 1}}"#, "x".repeat(10_000));
        let e = configured().with_request(&long, true).unwrap_err();
        assert!(e.len() < 200, "{e}");
        refused(r#"{"stop": [""]}"#, true, &["stop"]);
        refused(r#"{"stop": 3}"#, true, &["setting 'stop'"]);
        refused(r#"{"stop": "x"}"#, false, &["no tokenizer"]);
        refused(
            &format!(r#"{{"stop": {:?}}}"#, vec!["s"; 17]),
            true,
            &["17 strings"],
        );
        refused("[1, 2]", true, &["must be a JSON object"]);
    }
}
