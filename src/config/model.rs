//! The validated configuration the gateway runs on: listen addresses, limits and
//! timeouts as real types, providers with parsed endpoints and resolved secrets, models
//! with their targets and policies, compiled routes. `check.rs` builds a `Config` at
//! startup and on every reload; request handling only reads it. This file also owns
//! the value syntaxes the file defines (durations, sizes, endpoint URLs, model names),
//! because the request path shares some of them (`valid_model_name`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::secret::SecretString;

/// One loaded configuration. Immutable once built; a reload builds a new one.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub providers: BTreeMap<String, Provider>,
    pub models: BTreeMap<String, Model>,
    /// Alias → model name. Aliases never collide with model names or each other.
    pub aliases: HashMap<String, String>,
    /// First match wins; consulted before aliases.
    pub routes: Vec<Route>,
    /// API keys by config name; none (and no virtual keys) means auth is off.
    pub keys: BTreeMap<String, Arc<ApiKey>>,
    /// Key digest (lowercase hex SHA-256) → key name: how a presented key is found.
    pub key_digests: HashMap<String, String>,
    pub rate_limits: RateLimitSettings,
    /// The usage ledger's database URL (`usage.store`), relative SQLite paths resolved.
    pub usage_store: String,
    /// `auth:`: JWT users; `None` when the section is absent.
    pub jwt: Option<JwtSettings>,
    /// The file path, or `<embedded>` for the built-in default.
    pub source: String,
}

/// One API key of `keys:`. The key itself is only kept as its digest.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    /// Globs over model names the key may use (checked on the resolved model); `None`: all.
    pub models: Option<globset::GlobSet>,
    pub limits: RateLimits,
    pub budget: Option<Budget>,
    /// Limits of this key on one model (`model_limits:`), by model name.
    pub model_limits: HashMap<String, RateLimits>,
}

/// A key's spending cap per calendar period (UTC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub usd: f64,
    pub period: BudgetPeriod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Day,
    /// From Monday 00:00 UTC.
    Week,
    Month,
}

impl BudgetPeriod {
    /// The period a config file or the key API names: `day`, `week` or `month`.
    pub fn from_name(name: &str) -> Option<BudgetPeriod> {
        match name {
            "day" => Some(BudgetPeriod::Day),
            "week" => Some(BudgetPeriod::Week),
            "month" => Some(BudgetPeriod::Month),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Week => "week",
            BudgetPeriod::Month => "month",
        }
    }
}

/// The glob set of a key's `models`, or the index and error of every pattern that is not a
/// glob. Shared by the config check and the key API.
pub fn model_glob_set(
    patterns: &[String],
) -> Result<globset::GlobSet, Vec<(usize, globset::Error)>> {
    let mut set = globset::GlobSetBuilder::new();
    let mut errors = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        match globset::Glob::new(pattern) {
            Ok(glob) => {
                set.add(glob);
            }
            Err(err) => errors.push((i, err)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    set.build().map_err(|err| vec![(0, err)])
}

impl ApiKey {
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|set| set.is_match(model))
    }
}

/// Request and token limits of a key or a model (`limits:`); `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests per window.
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per window.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub concurrency: Option<u64>,
}

impl RateLimits {
    pub fn is_empty(&self) -> bool {
        *self == RateLimits::default()
    }
}

/// `auth:`: who may get a token from `POST /api/auth/token`, and how tokens are signed.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The HS256 signing secret.
    pub secret: SecretString,
    pub ttl: Duration,
    pub users: BTreeMap<String, User>,
}

#[derive(Debug, Clone)]
pub struct User {
    /// An argon2 PHC string.
    pub password_hash: SecretString,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The management API, and the data plane.
    Admin,
    /// The data plane only.
    User,
}

/// `rate_limits:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// The sliding window `rpm` and `tpm` count over: one minute, shorter only for tests.
    pub window: Duration,
    /// `store: redis://…`: counters shared through Redis; `None`: in this process.
    pub redis: Option<String>,
    /// Admit while the shared store is down instead of answering 503.
    pub fail_open: bool,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            redis: None,
            fail_open: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub allow_unauthenticated: bool,
    /// The SHA-256 hex digest of `server.admin_token`, which guards the management routes.
    pub admin_token: Option<SecretString>,
    pub metrics_listen: Option<SocketAddr>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    /// How long requests in flight may run on after SIGTERM or SIGQUIT (contract §1);
    /// whole seconds, as Pingora counts them.
    pub grace_period: Duration,
    /// The Unix socket a graceful upgrade hands the listeners over.
    pub upgrade_sock: String,
}

impl Server {
    pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(20);
    pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/switchyard_upgrade.sock";
}

/// Client-side limits (`server.limits`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_body: usize,
    pub max_header: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 8 * 1024 * 1024,
            max_header: 32 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Upstream timeouts (`server.timeouts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderKind,
}

/// Only OpenAI-compatible providers run in this build; `local` and `plugin` are
/// rejected at load.
#[derive(Debug, Clone)]
pub enum ProviderKind {
    OpenAi(OpenAiProvider),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiProvider {
    pub endpoints: Vec<Endpoint>,
    pub api_key: Option<SecretString>,
    pub health_check: Option<HealthCheck>,
}

/// One upstream base URL, split up for peer selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As written, without a trailing slash.
    pub url: String,
    pub tls: bool,
    /// Hostname or IP literal; IPv6 literals without brackets.
    pub host: String,
    /// Written port, else 80 (http) or 443 (https).
    pub port: u16,
    /// Path prefix such as `/v1`, or empty; never a trailing slash.
    pub base_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: "/health".to_owned(),
            interval: Duration::from_secs(5),
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    pub name: String,
    pub aliases: Vec<String>,
    pub targets: Vec<Target>,
    pub balance: Balance,
    /// Model names (aliases written in the file are resolved), tried in order.
    pub fallbacks: Vec<String>,
    pub retry_on: RetryOn,
    pub pricing: Option<Pricing>,
    /// Limits over all keys together (`rpm`, `tpm`).
    pub limits: RateLimits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub provider: String,
    /// The model id sent upstream.
    pub model: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    Weighted,
    LeastPending,
    Latency,
    HashKey,
}

/// Which failures before the first byte move on to the next attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    pub connect: bool,
    pub timeout: bool,
    /// Sorted, no duplicates.
    pub statuses: Vec<u16>,
}

impl Default for RetryOn {
    fn default() -> Self {
        Self {
            connect: true,
            timeout: true,
            statuses: vec![429, 500, 502, 503, 504],
        }
    }
}

/// USD per token.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    pub input_per_token: f64,
    pub output_per_token: f64,
    pub cached_input_per_token: f64,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Lowercase names; every pair must match (value compared exactly).
    pub headers: Vec<(http::HeaderName, String)>,
    /// Glob over the requested model name, when given.
    pub model: Option<globset::GlobMatcher>,
    /// The model name to use (an alias written in the file is resolved).
    pub use_model: String,
}

/// A value that does not follow the syntax the file defines for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(
        "invalid duration `{0}`: expected a whole number with ms, s, m or h, like 250ms or 10s"
    )]
    Duration(String),
    #[error("invalid size `{0}`: expected bytes or a whole number with KiB, MiB or GiB, like 8MiB")]
    Size(String),
    /// The URL is not quoted: with userinfo it would carry a credential.
    #[error("invalid endpoint: {0}")]
    Endpoint(&'static str),
}

/// Parses `250ms`, `10s`, `5m`, `1h`. Zero is accepted here; callers that need a
/// positive duration say so.
pub fn parse_duration(text: &str) -> Result<Duration, ValueError> {
    let bad = || ValueError::Duration(text.to_owned());
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let count: u64 = digits.parse().map_err(|_| bad())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    let millis = count.checked_mul(millis_per_unit).ok_or_else(bad)?;
    Ok(Duration::from_millis(millis))
}

/// Parses `512KiB`, `8MiB`, `1GiB`, `100B` or plain digits (bytes).
pub fn parse_size(text: &str) -> Result<usize, ValueError> {
    let bad = || ValueError::Size(text.to_owned());
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let count: usize = digits.parse().map_err(|_| bad())?;
    let multiplier: usize = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    count.checked_mul(multiplier).ok_or_else(bad)
}

/// Whether `name` may be a model name, alias or upstream model id:
/// `^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$` and no `..`.
pub fn valid_model_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    let rest_ok = rest
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"._:@/-".contains(&b));
    first.is_ascii_alphanumeric() && rest.len() <= 127 && rest_ok && !name.contains("..")
}

impl Endpoint {
    /// Parses `http[s]://host[:port][/path]`. Userinfo, query, fragment and whitespace
    /// are refused: the first would put a credential in logs, the others have no
    /// meaning for a base URL.
    pub fn parse(url: &str) -> Result<Self, ValueError> {
        let fail = ValueError::Endpoint;
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("whitespace and control characters are not allowed"));
        }
        if url.contains(['?', '#']) {
            return Err(fail("a query or fragment is not allowed"));
        }
        let trimmed = url.trim_end_matches('/');
        let (tls, rest) =
            split_scheme(trimmed).ok_or_else(|| fail("must start with http:// or https://"))?;
        let (authority, base_path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.contains('@') {
            return Err(fail(
                "credentials in the URL are not allowed; use `api_key`",
            ));
        }
        let (host, port) = split_authority(authority, tls).map_err(fail)?;
        Ok(Self {
            url: trimmed.to_owned(),
            tls,
            host,
            port,
            base_path: base_path.to_owned(),
        })
    }
}

fn split_scheme(url: &str) -> Option<(bool, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    match scheme.to_ascii_lowercase().as_str() {
        "http" => Some((false, rest)),
        "https" => Some((true, rest)),
        _ => None,
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (host without brackets, port).
fn split_authority(authority: &str, tls: bool) -> Result<(String, u16), &'static str> {
    let default_port = if tls { 443 } else { 80 };
    let (host, port_text) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']').ok_or("unclosed `[` in host")?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(after.strip_prefix(':').ok_or("bad text after `]`")?),
                ),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() || !host.bytes().all(valid_host_byte) {
        return Err("missing or invalid host");
    }
    let port = match port_text {
        None => default_port,
        Some(text) => text
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("invalid port")?,
    };
    Ok((host.to_owned(), port))
}

fn valid_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".-_:%".contains(&b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "10 s",
            " 10s",
            "10S",
            "1h30m",
            "-1s",
            "10sec",
            "1d",
            "99999999999999999999s",
            "18446744073709551615h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("8MiB"), Ok(8 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in [
            "",
            "MiB",
            "8MB",
            "8mib",
            "1.5MiB",
            "8 MiB",
            "-1",
            "99999999999999999999GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn model_names() {
        for good in [
            "chat",
            "gpt-3.5-turbo",
            "Qwen/Qwen2.5-7B-Instruct",
            "a:b@c",
            "0",
        ] {
            assert!(valid_model_name(good), "{good}");
        }
        let longest = "a".repeat(128);
        assert!(valid_model_name(&longest));
        let too_long = "a".repeat(129);
        for bad in [
            "",
            "-x",
            ".x",
            "/x",
            "a..b",
            "a b",
            "a\u{e9}",
            too_long.as_str(),
            "a?b",
        ] {
            assert!(!valid_model_name(bad), "{bad}");
        }
    }

    #[test]
    fn endpoints_split() {
        let e = Endpoint::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            e,
            Endpoint {
                url: "https://api.openai.com/v1".into(),
                tls: true,
                host: "api.openai.com".into(),
                port: 443,
                base_path: "/v1".into(),
            }
        );
        let e = Endpoint::parse("http://10.0.0.5:8000").unwrap();
        assert_eq!((e.tls, e.port, e.base_path.as_str()), (false, 8000, ""));
        let e = Endpoint::parse("http://[::1]:9000/v1").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
    }

    #[test]
    fn endpoints_refused() {
        for bad in [
            "ftp://x",
            "api.openai.com/v1",
            "http://user:pw@host/v1",
            "http://host/v1?x=1",
            "http://host/v1#frag",
            "http://ho st/v1",
            "http://",
            "http://host:0",
            "http://host:99999",
            "http://[::1/v1",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_never_echoed_back() {
        let err = Endpoint::parse("http://user:canary@host/v1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credentials"));
        assert!(!err.contains("canary"));
    }
}
