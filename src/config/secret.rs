//! Secrets in the config file: the `literal` | `env:NAME` | `file:PATH` forms (and
//! `sha256:<hex>` for API keys), their resolution at load time, and `SecretString`, the
//! one type that holds a secret value at run time. Config loading (startup and every
//! reload) resolves them; request handling only calls [`SecretString::expose`].
//! Nothing here ever formats a secret value: Debug and Display print `[redacted]`, and
//! every error names the variable or the path, never what it holds.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use sha2::{Digest, Sha256};

/// What a redacted value prints as.
const REDACTED: &str = "[redacted]";

/// A secret value. Debug and Display never show it; call [`SecretString::expose`] at
/// the one place that needs the bytes (a header, a comparison).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a value that must not be printed.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself. Keep the result out of logs and errors.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

// The raw config holds secret fields as `SecretString` from the first moment, so a
// `{:?}` of the raw tree cannot leak a literal either.
impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// Why a secret could not be parsed or resolved. Messages name a variable or a path,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret is empty")]
    Empty,
    #[error("invalid environment variable name `{0}` in `env:` secret")]
    BadEnvName(String),
    #[error("`file:` secret needs a path")]
    EmptyPath,
    #[error("`sha256:` secret needs exactly 64 hex digits")]
    BadHash,
    #[error("environment variable `{0}` is not set")]
    EnvMissing(String),
    #[error("environment variable `{0}` is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("environment variable `{0}` is empty")]
    EnvEmpty(String),
    #[error("cannot read secret file `{path}`: {reason}")]
    FileUnreadable { path: String, reason: String },
    #[error("secret file `{0}` is empty")]
    FileEmpty(String),
    #[error("a `sha256:` hash is accepted only for API keys")]
    HashNotAllowed,
}

/// Where `env:` and relative `file:` secrets are read from during one load.
#[derive(Debug, Clone, Default)]
pub struct SecretSource {
    /// The config file's folder; relative `file:` paths start here. `None`: the
    /// working directory.
    base_dir: Option<PathBuf>,
    /// `None` reads the process environment. Tests pass a fixed map, because
    /// `std::env::set_var` is unsafe in edition 2024 and the crate forbids unsafe code.
    vars: Option<HashMap<String, String>>,
}

impl SecretSource {
    /// Reads the process environment; relative paths start at `base_dir`.
    pub fn process(base_dir: Option<PathBuf>) -> Self {
        Self {
            base_dir,
            vars: None,
        }
    }

    /// Reads variables from `vars` instead of the process environment.
    pub fn with_vars(base_dir: Option<PathBuf>, vars: HashMap<String, String>) -> Self {
        Self {
            base_dir,
            vars: Some(vars),
        }
    }

    fn var(&self, name: &str) -> Result<String, SecretError> {
        let Some(vars) = &self.vars else {
            return match std::env::var(name) {
                Ok(value) => Ok(value),
                Err(std::env::VarError::NotPresent) => {
                    Err(SecretError::EnvMissing(name.to_owned()))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(SecretError::EnvNotUnicode(name.to_owned()))
                }
            };
        };
        vars.get(name)
            .cloned()
            .ok_or_else(|| SecretError::EnvMissing(name.to_owned()))
    }

    fn path(&self, path: &Path) -> PathBuf {
        match &self.base_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }
}

/// A secret as written in the config, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// The value itself, written in the file.
    Literal(SecretString),
    /// `env:NAME`: read from the environment at load.
    Env(String),
    /// `file:PATH`: read from a file at load; trailing newlines are dropped.
    File(PathBuf),
    /// `sha256:<hex>` (API keys only): the lowercase hex digest of the key.
    Sha256(String),
}

impl Secret {
    /// Parses a secret field that is not an API key: `sha256:` is refused.
    pub fn parse(text: &SecretString) -> Result<Self, SecretError> {
        if text.expose().starts_with("sha256:") {
            return Err(SecretError::HashNotAllowed);
        }
        Self::parse_any(text)
    }

    /// Parses an API key field, where `sha256:<64 hex>` is also accepted.
    pub fn parse_key(text: &SecretString) -> Result<Self, SecretError> {
        match text.expose().strip_prefix("sha256:") {
            Some(hex_digits) => parse_hash(hex_digits),
            None => Self::parse_any(text),
        }
    }

    fn parse_any(text: &SecretString) -> Result<Self, SecretError> {
        let raw = text.expose();
        if let Some(name) = raw.strip_prefix("env:") {
            return parse_env_name(name);
        }
        if let Some(path) = raw.strip_prefix("file:") {
            return match path {
                "" => Err(SecretError::EmptyPath),
                _ => Ok(Self::File(PathBuf::from(path))),
            };
        }
        match raw {
            "" => Err(SecretError::Empty),
            _ => Ok(Self::Literal(text.clone())),
        }
    }

    /// Reads the value from where the secret says.
    pub fn resolve(&self, source: &SecretSource) -> Result<SecretString, SecretError> {
        match self {
            Self::Literal(value) => Ok(value.clone()),
            Self::Env(name) => read_env(name, source),
            Self::File(path) => read_file(path, source),
            Self::Sha256(_) => Err(SecretError::HashNotAllowed),
        }
    }

    /// The lowercase hex SHA-256 of an API key: computed for the plain forms, taken as
    /// written for `sha256:`. Keys are looked up by this digest, so the gateway never
    /// needs to keep a plain key.
    pub fn resolve_digest(&self, source: &SecretSource) -> Result<String, SecretError> {
        match self {
            Self::Sha256(digest) => Ok(digest.clone()),
            other => other.resolve(source).map(|key| sha256_hex(key.expose())),
        }
    }
}

fn parse_hash(hex_digits: &str) -> Result<Secret, SecretError> {
    let well_formed = hex_digits.len() == 64 && hex_digits.bytes().all(|b| b.is_ascii_hexdigit());
    match well_formed {
        true => Ok(Secret::Sha256(hex_digits.to_ascii_lowercase())),
        false => Err(SecretError::BadHash),
    }
}

fn parse_env_name(name: &str) -> Result<Secret, SecretError> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    match first_ok && rest_ok {
        true => Ok(Secret::Env(name.to_owned())),
        false => Err(SecretError::BadEnvName(name.to_owned())),
    }
}

fn read_env(name: &str, source: &SecretSource) -> Result<SecretString, SecretError> {
    let value = source.var(name)?;
    match value.is_empty() {
        true => Err(SecretError::EnvEmpty(name.to_owned())),
        false => Ok(SecretString(value)),
    }
}

fn read_file(path: &Path, source: &SecretSource) -> Result<SecretString, SecretError> {
    let full = source.path(path);
    let shown = path.display().to_string();
    // Only the error kind goes into the message: an io::Error's own text is safe, but
    // a UTF-8 error from read_to_string could quote bytes of the file.
    let text = std::fs::read_to_string(&full).map_err(|err| SecretError::FileUnreadable {
        path: shown.clone(),
        reason: err.kind().to_string(),
    })?;
    // `echo token > file` leaves a newline that is not part of the secret.
    let value = text.trim_end_matches(['\n', '\r']);
    match value {
        "" => Err(SecretError::FileEmpty(shown)),
        _ => Ok(SecretString(value.to_owned())),
    }
}

/// Lowercase hex SHA-256 of `input`. `switchyard hash-key` prints it as `sha256:<hex>`.
pub fn sha256_hex(input: impl AsRef<[u8]>) -> String {
    hex::encode(Sha256::digest(input.as_ref()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn secret(text: &str) -> SecretString {
        SecretString::new(text.to_owned())
    }

    #[test]
    fn debug_and_display_redact() {
        let value = secret("canary-4f1d");
        assert_eq!(format!("{value:?}"), "[redacted]");
        assert_eq!(format!("{value}"), "[redacted]");
        let parsed = Secret::parse(&value).unwrap();
        assert!(!format!("{parsed:?}").contains("canary"));
        assert_eq!(value.expose(), "canary-4f1d");
    }

    #[test]
    fn parses_each_form() {
        assert_eq!(
            Secret::parse(&secret("env:OPENAI_API_KEY")).unwrap(),
            Secret::Env("OPENAI_API_KEY".into())
        );
        assert_eq!(
            Secret::parse(&secret("file:/run/secrets/k")).unwrap(),
            Secret::File("/run/secrets/k".into())
        );
        assert_eq!(
            Secret::parse(&secret("sk-plain")).unwrap(),
            Secret::Literal(secret("sk-plain"))
        );
    }

    #[test]
    fn rejects_malformed_forms() {
        assert_eq!(Secret::parse(&secret("")), Err(SecretError::Empty));
        assert_eq!(Secret::parse(&secret("file:")), Err(SecretError::EmptyPath));
        assert_eq!(
            Secret::parse(&secret("env:1BAD")),
            Err(SecretError::BadEnvName("1BAD".into()))
        );
        assert_eq!(
            Secret::parse(&secret("env:")),
            Err(SecretError::BadEnvName(String::new()))
        );
        let hash = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            Secret::parse(&secret(&hash)),
            Err(SecretError::HashNotAllowed)
        );
    }

    #[test]
    fn key_hash_form() {
        let digest = sha256_hex("password");
        let upper = format!("sha256:{}", digest.to_ascii_uppercase());
        let parsed = Secret::parse_key(&secret(&upper)).unwrap();
        assert_eq!(parsed, Secret::Sha256(digest.clone()));
        let source = SecretSource::default();
        assert_eq!(parsed.resolve_digest(&source).unwrap(), digest);
        assert_eq!(
            Secret::parse_key(&secret("password"))
                .unwrap()
                .resolve_digest(&source)
                .unwrap(),
            digest
        );
        assert_eq!(
            Secret::parse_key(&secret("sha256:abc")),
            Err(SecretError::BadHash)
        );
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            sha256_hex("password"),
            "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        );
    }

    #[test]
    fn env_resolution_never_prints_the_value() {
        let vars = HashMap::from([
            ("CANARY".to_owned(), "canary-value-91b7".to_owned()),
            ("BLANK".to_owned(), String::new()),
        ]);
        let source = SecretSource::with_vars(None, vars);
        let resolved = Secret::Env("CANARY".into()).resolve(&source).unwrap();
        assert_eq!(resolved.expose(), "canary-value-91b7");
        assert!(!format!("{resolved:?} {resolved}").contains("canary"));
        let blank = Secret::Env("BLANK".into()).resolve(&source).unwrap_err();
        assert_eq!(blank.to_string(), "environment variable `BLANK` is empty");
        // The process environment, with a name nobody sets.
        let missing = Secret::Env("SWITCHYARD_TEST_UNSET_VAR_5C1E".into())
            .resolve(&SecretSource::process(None))
            .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "environment variable `SWITCHYARD_TEST_UNSET_VAR_5C1E` is not set"
        );
    }

    #[test]
    fn file_resolution_trims_newline_and_names_path() {
        let dir = std::env::temp_dir().join(format!("switchyard-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "canary-file-77\n").unwrap();
        let source = SecretSource::process(Some(dir.clone()));
        let resolved = Secret::File("token".into()).resolve(&source).unwrap();
        assert_eq!(resolved.expose(), "canary-file-77");
        let err = Secret::File("absent".into()).resolve(&source).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read secret file `absent`: entity not found"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
