//! Configuration: the single entry point that turns `switchyard.yaml` (or the embedded
//! default) into a validated [`Config`]. Used at startup by `switchyard serve`, by
//! `switchyard check`, and on every reload, which builds a new `Config` off the request
//! path and swaps it in only when it is valid. Submodules: `raw` (serde mirror of the
//! file), `spans` (line/column of every key), `secret` (secret forms and redaction),
//! `model` (runtime types), `check` (validation and `FILE:LINE:COL` errors).

mod check;
mod model;
mod raw;
pub mod reload;
mod secret;
mod spans;
mod unknown;

use std::path::Path;

pub use check::{ConfigError, ConfigErrors};
pub use model::{
    ApiKey, Balance, Budget, BudgetPeriod, Config, Endpoint, HealthCheck, JwtSettings, Limits,
    Model, OpenAiProvider, Pricing, Provider, ProviderKind, RateLimitSettings, RateLimits, RetryOn,
    Role, Route, Server, Target, Timeouts, User, ValueError, model_glob_set, parse_duration,
    parse_size, valid_model_name,
};
pub use secret::{Secret, SecretError, SecretSource, SecretString, sha256_hex};

/// What `switchyard serve` runs when there is no config file: loopback only, no
/// providers, no models.
pub const EMBEDDED_DEFAULT_YAML: &str = "\
# Switchyard's embedded default: served when no config file exists.
server:
  listen: [\"127.0.0.1:8080\"]
";

/// The ledger database when `usage.store` is not given: SQLite beside the config file.
pub const DEFAULT_USAGE_STORE: &str = "sqlite://switchyard.db";
const DEFAULT_USAGE_STORE_URL: &str = "sqlite://switchyard.db?mode=rwc";

/// The label errors and `Config::source` carry for the embedded default.
const EMBEDDED_LABEL: &str = "<embedded>";

/// Reads and validates the file at `path`. Relative `file:` secrets are read from the
/// file's folder.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let bytes = std::fs::read(path).map_err(|err| read_error(path, &err))?;
    load_bytes(path, &bytes)
}

/// Validates `bytes` as the content of the file at `path` (what a reload read).
pub fn load_bytes(path: &Path, bytes: &[u8]) -> Result<Config, ConfigErrors> {
    let label = path.display().to_string();
    let text = std::str::from_utf8(bytes).map_err(|err| {
        ConfigError::new(
            &label,
            spans::Pos::START,
            format!("config file is not UTF-8: {err}"),
        )
    })?;
    let base_dir = path.parent().map(Path::to_path_buf);
    check::build(text, &label, &SecretSource::process(base_dir))
}

/// The error for a config file that cannot be read.
pub fn read_error(path: &Path, err: &std::io::Error) -> ConfigErrors {
    let label = path.display().to_string();
    ConfigError::new(
        &label,
        spans::Pos::START,
        format!("cannot read config file: {err}"),
    )
    .into()
}

/// Validates config `text`; `file_label` names it in errors and in `Config::source`.
/// Relative `file:` secrets are read from the working directory.
pub fn load_str(text: &str, file_label: &str) -> Result<Config, ConfigErrors> {
    check::build(text, file_label, &SecretSource::process(None))
}

/// Like [`load_str`], with `env:` and `file:` secrets read through `secrets`.
pub fn load_str_with(
    text: &str,
    file_label: &str,
    secrets: &SecretSource,
) -> Result<Config, ConfigErrors> {
    check::build(text, file_label, secrets)
}

/// The built-in config. Parsed from [`EMBEDDED_DEFAULT_YAML`]; should that ever fail
/// (a test proves it does not), the same config built by hand.
pub fn embedded_default() -> Config {
    load_str(EMBEDDED_DEFAULT_YAML, EMBEDDED_LABEL).unwrap_or_else(|_| hand_built_default())
}

fn hand_built_default() -> Config {
    Config {
        server: Server {
            listen: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 8080))],
            allow_unauthenticated: false,
            admin_token: None,
            metrics_listen: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            grace_period: Server::DEFAULT_GRACE_PERIOD,
            upgrade_sock: Server::DEFAULT_UPGRADE_SOCK.to_owned(),
        },
        providers: Default::default(),
        models: Default::default(),
        aliases: Default::default(),
        routes: Vec::new(),
        keys: Default::default(),
        key_digests: Default::default(),
        rate_limits: Default::default(),
        usage_store: DEFAULT_USAGE_STORE_URL.to_owned(),
        jwt: None,
        source: EMBEDDED_LABEL.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/switchyard.example.yaml");
    const MINIMAL: &str = include_str!("../../config/minimal.yaml");

    #[test]
    fn embedded_default_parses_and_matches_the_hand_built_one() {
        let parsed = load_str(EMBEDDED_DEFAULT_YAML, EMBEDDED_LABEL).unwrap();
        assert_eq!(format!("{parsed:?}"), format!("{:?}", hand_built_default()));
        let config = embedded_default();
        assert_eq!(config.source, "<embedded>");
        assert_eq!(
            config.server.listen,
            vec!["127.0.0.1:8080".parse().unwrap()]
        );
        assert!(config.providers.is_empty() && config.models.is_empty());
    }

    #[test]
    fn example_file_passes() {
        let config = load_str(EXAMPLE, "switchyard.example.yaml")
            .unwrap_or_else(|errors| panic!("{errors}"));
        assert_eq!(config.aliases["gpt-3.5-turbo"], "chat");
        assert_eq!(config.models["chat"].fallbacks, ["mini"]);
        assert_eq!(config.routes[0].use_model, "mini");
        assert_eq!(
            config.server.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
    }

    #[test]
    fn minimal_file_passes() {
        let config = load_str(MINIMAL, "minimal.yaml").unwrap_or_else(|errors| panic!("{errors}"));
        let ProviderKind::OpenAi(provider) = &config.providers["upstream"].kind;
        assert_eq!(provider.endpoints[0].port, 9000);
        assert_eq!(provider.endpoints[0].base_path, "/v1");
        assert_eq!(config.aliases["gpt-3.5-turbo"], "chat");
    }

    #[test]
    fn load_reads_a_file_and_reports_a_missing_one() {
        let dir = std::env::temp_dir().join(format!("switchyard-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "canary-from-file\n").unwrap();
        let text = format!("{MINIMAL}\n# api key below\n");
        let text = text.replace(
            "endpoints: [\"http://127.0.0.1:9000/v1\"]",
            "endpoints: [\"http://127.0.0.1:9000/v1\"]\n    api_key: file:token",
        );
        let path = dir.join("switchyard.yaml");
        std::fs::write(&path, text).unwrap();
        let config = load(&path).unwrap_or_else(|errors| panic!("{errors}"));
        assert_eq!(config.source, path.display().to_string());
        let ProviderKind::OpenAi(provider) = &config.providers["upstream"].kind;
        assert_eq!(
            provider.api_key.as_ref().map(SecretString::expose),
            Some("canary-from-file")
        );
        assert!(!format!("{config:?}").contains("canary"));
        let missing = dir.join("absent.yaml");
        let err = load(&missing).unwrap_err().to_string();
        assert!(err.starts_with(&format!(
            "{}:1:1: cannot read config file",
            missing.display()
        )));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
