//! The config file exactly as written: serde structs mirroring every key of
//! `switchyard.yaml` (contract §2), with `deny_unknown_fields` everywhere so a typo is an
//! error. Config loading (startup and every reload) deserializes into these first;
//! `check.rs` then turns them into the validated types of `model.rs`. Values whose
//! syntax the file defines (durations, sizes, secrets, addresses) stay text here, so
//! their errors can point at the exact line. Keys of features this build does not run
//! yet are parsed too, so the error says "not supported yet" rather than "unknown".

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::secret::SecretString;

/// A scalar the file may write as text or as a number: `8MiB` or `8388608`,
/// `retry_on: [timeout, 429]`, `per: 1M` or `per: 1000`.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_owned()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        i64::try_from(v)
            .map(Scalar::Int)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }
}

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawConfig {
    #[serde(default)]
    pub server: Option<RawServer>,
    #[serde(default)]
    pub providers: Option<BTreeMap<String, RawProvider>>,
    #[serde(default)]
    pub models: Option<BTreeMap<String, RawModel>>,
    #[serde(default)]
    pub routes: Option<Vec<RawRoute>>,
    #[serde(default)]
    pub keys: Option<BTreeMap<String, RawKey>>,
    #[serde(default)]
    pub rate_limits: Option<RawRateLimits>,
    #[serde(default)]
    pub usage: Option<RawUsage>,
    #[serde(default)]
    pub auth: Option<RawAuth>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawServer {
    #[serde(default)]
    pub listen: Option<Vec<String>>,
    #[serde(default)]
    pub allow_unauthenticated: Option<bool>,
    #[serde(default)]
    pub admin_token: Option<SecretString>,
    #[serde(default)]
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
    #[serde(default)]
    pub timeouts: Option<RawTimeouts>,
    #[serde(default)]
    pub grace_period: Option<Scalar>,
    #[serde(default)]
    pub upgrade_sock: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawLimits {
    #[serde(default)]
    pub max_body: Option<Scalar>,
    #[serde(default)]
    pub max_header: Option<Scalar>,
    #[serde(default)]
    pub header_timeout: Option<Scalar>,
    #[serde(default)]
    pub body_timeout: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawTimeouts {
    #[serde(default)]
    pub connect: Option<Scalar>,
    #[serde(default)]
    pub first_byte: Option<Scalar>,
    #[serde(default)]
    pub idle: Option<Scalar>,
    #[serde(default)]
    pub total: Option<Scalar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawProviderType {
    Openai,
    Local,
    Plugin,
}

/// One provider. All types share one struct so that a key of another type is reported
/// by name ("`engine` is not valid for `type: openai`") at its own line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawProvider {
    #[serde(rename = "type")]
    pub kind: RawProviderType,
    // openai and plugin
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
    #[serde(default)]
    pub api_key: Option<SecretString>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    // local
    #[serde(default)]
    pub engine: Option<String>,
    #[serde(default)]
    pub model_path: Option<String>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub gpu: Option<RawGpu>,
    #[serde(default)]
    pub vram: Option<Scalar>,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub idle_ttl: Option<Scalar>,
    #[serde(default)]
    pub startup_timeout: Option<Scalar>,
    // plugin
    #[serde(default)]
    pub plugin: Option<String>,
    #[serde(default)]
    pub options: Option<BTreeMap<String, serde_yaml::Value>>,
}

/// `gpu: auto | none | [0, 1]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "invalid `gpu`: expected `auto`, `none` or a list of GPU indexes"
)]
pub enum RawGpu {
    Named(String),
    Devices(Vec<u32>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawHealthCheck {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub interval: Option<Scalar>,
    #[serde(default)]
    pub unhealthy_after: Option<u32>,
    #[serde(default)]
    pub healthy_after: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawModel {
    #[serde(default)]
    pub aliases: Option<Vec<String>>,
    #[serde(default)]
    pub targets: Option<Vec<RawTarget>>,
    #[serde(default)]
    pub balance: Option<RawBalance>,
    #[serde(default)]
    pub fallbacks: Option<Vec<String>>,
    #[serde(default)]
    pub retry_on: Option<Vec<Scalar>>,
    #[serde(default)]
    pub pricing: Option<RawPricing>,
    #[serde(default)]
    pub limits: Option<RawModelLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawTarget {
    pub provider: String,
    pub model: String,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    RoundRobin,
    Weighted,
    LeastPending,
    Latency,
    HashKey,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawPricing {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cached_input: Option<f64>,
    #[serde(default)]
    pub per: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawModelLimits {
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawRoute {
    #[serde(default)]
    pub when: Option<RawWhen>,
    #[serde(rename = "use")]
    pub use_model: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawWhen {
    #[serde(default)]
    pub header: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawKey {
    pub key: SecretString,
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub limits: Option<RawKeyLimits>,
    #[serde(default)]
    pub budget: Option<RawBudget>,
    #[serde(default)]
    pub model_limits: Option<BTreeMap<String, RawModelLimits>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawKeyLimits {
    #[serde(default)]
    pub rpm: Option<u64>,
    #[serde(default)]
    pub tpm: Option<u64>,
    #[serde(default)]
    pub concurrency: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawBudget {
    pub usd: f64,
    pub period: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawRateLimits {
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub fail_open: Option<bool>,
    #[serde(default)]
    pub window: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawUsage {
    #[serde(default)]
    pub store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawAuth {
    #[serde(default)]
    pub jwt: Option<RawJwt>,
    #[serde(default)]
    pub users: Option<BTreeMap<String, RawUser>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawJwt {
    pub secret: SecretString,
    #[serde(default)]
    pub ttl: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct RawUser {
    /// An argon2id PHC string; not a secret as such, but kept out of Debug all the same.
    pub password: SecretString,
    pub role: String,
}

/// Deserializes the file. `Ok(None)` for an empty document (or one with comments only).
pub fn parse(text: &str) -> Result<Option<RawConfig>, serde_yaml::Error> {
    serde_yaml::from_str(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_mixes_words_and_numbers() {
        let text = "models:\n  m:\n    retry_on: [connect, timeout, 429]\n";
        let raw = parse(text).unwrap().unwrap();
        let model = &raw.models.unwrap()["m"];
        assert_eq!(
            model.retry_on.as_deref().unwrap(),
            [
                Scalar::Text("connect".into()),
                Scalar::Text("timeout".into()),
                Scalar::Int(429)
            ]
        );
    }

    #[test]
    fn gpu_forms() {
        let auto: RawGpu = serde_yaml::from_str("auto").unwrap();
        let list: RawGpu = serde_yaml::from_str("[0, 1]").unwrap();
        assert_eq!(auto, RawGpu::Named("auto".into()));
        assert_eq!(list, RawGpu::Devices(vec![0, 1]));
    }

    #[test]
    fn empty_document_is_none() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }

    #[test]
    fn unknown_field_is_an_error() {
        let err = parse("server:\n  listn: []\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `listn`"));
    }

    #[test]
    fn raw_debug_does_not_show_literal_secrets() {
        let text = "providers:\n  p:\n    type: openai\n    api_key: canary-raw-1\n";
        let raw = parse(text).unwrap().unwrap();
        assert!(!format!("{raw:?}").contains("canary"));
    }
}
