//! A request's own generation settings (the `parameters` input), over the
//! configured ones.

use crate::Sampling;
use serde::Deserialize;

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

/// What a request may set; every field optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Parameters {
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    stop_token_ids: Option<Vec<i64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
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
        let given: Parameters = serde_json::from_str(json)
            .map_err(|e| format!("input 'parameters' is not a valid settings object: {e}"))?;
        if let Some(n) = given.max_tokens {
            if n == 0 {
                return Err("max_tokens = 0 would generate nothing; ask for at least 1".into());
            }
            if n > self.max_new_tokens {
                return Err(format!(
                    "max_tokens = {n} is more than this pipeline allows (its generate stage's max_new_tokens = {})",
                    self.max_new_tokens
                ));
            }
            out.max_new_tokens = n;
        }
        if let Some(t) = given.temperature {
            out.sampling.temperature = t;
        }
        if let Some(k) = given.top_k {
            out.sampling.top_k = k;
        }
        if let Some(p) = given.top_p {
            out.sampling.top_p = p;
        }
        if let Some(seed) = given.seed {
            out.sampling.seed = seed;
        }
        out.sampling.check()?;
        if let Some(ids) = given.stop_token_ids {
            out.stop_ids.extend(ids);
        }
        let stops = match given.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(list)) => list,
        };
        if stops.len() > MAX_STOP_STRINGS {
            return Err(format!(
                "stop: {} strings given, at most {MAX_STOP_STRINGS} are allowed",
                stops.len()
            ));
        }
        for s in &stops {
            if s.is_empty() || s.len() > MAX_STOP_BYTES {
                return Err(format!(
                    "stop: each stop string must be 1 to {MAX_STOP_BYTES} bytes, not {} ({s:.40?})",
                    s.len()
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
        refused(r#"{"max_tokens": -1}"#, true, &["parameters"]);
        refused(r#"{"temperature": -1}"#, true, &["temperature"]);
        refused(r#"{"top_p": 0}"#, true, &["top_p"]);
        refused(r#"{"logprobs": true}"#, true, &["unknown field `logprobs`"]);
        refused(r#"{"stop": [""]}"#, true, &["stop"]);
        refused(r#"{"stop": 3}"#, true, &["parameters"]);
        refused(r#"{"stop": "x"}"#, false, &["no tokenizer"]);
        refused(
            &format!(r#"{{"stop": {:?}}}"#, vec!["s"; 17]),
            true,
            &["17 strings"],
        );
        refused("[1, 2]", true, &["parameters"]);
    }
}
