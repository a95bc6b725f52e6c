//! What every part of the configuration shares: the error type, secrets, the origin
//! name of the embedded default and small value checks. A leaf: it uses nothing else
//! of `config/`, which all the section files may use without forming cycles.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The origin name of values from the embedded default.
pub const EMBEDDED: &str = "embedded default";
/// What a secret shows instead of itself.
pub const REDACTED: &str = "<redacted>";

/// A secret string: `Debug`, `Display` and `Serialize` give `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself: for sending it, never for logging it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

/// A config problem. `origin` says where the value came from:
/// `config <path>`, `config embedded default` or `environment <VAR>`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read: {error}")]
    Read {
        origin: String,
        error: std::io::Error,
    },
    #[error("{origin}: line {line} column {column}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}: unknown key {key}")]
    UnknownKey { origin: String, key: String },
    #[error("{origin}: key {key}: {problem}")]
    Invalid {
        origin: String,
        key: String,
        problem: String,
    },
    /// A bad `--upstream NAME=URL` (user info in the url is redacted).
    #[error("--upstream {spec}: {problem}")]
    Flag { spec: String, problem: String },
}

pub fn invalid(origin: &str, key: &str, problem: String) -> ConfigError {
    let (origin, key) = (origin.to_string(), key.to_string());
    ConfigError::Invalid {
        origin,
        key,
        problem,
    }
}

/// Rejects zero (`0` bytes, a zero duration).
pub fn positive<T: Default + PartialEq>(parsed: Result<T, String>) -> Result<T, String> {
    parsed.and_then(|v| match v == T::default() {
        true => Err("must be greater than 0".into()),
        false => Ok(v),
    })
}

/// Picks the value of `all` named `s`.
pub fn one_of<T: Copy>(s: &str, all: &[T], name: fn(T) -> &'static str) -> Result<T, String> {
    all.iter().copied().find(|v| name(*v) == s).ok_or_else(|| {
        let names: Vec<String> = all.iter().map(|v| format!("{:?}", name(*v))).collect();
        format!("invalid value {s:?}: expected {}", names.join(" or "))
    })
}
