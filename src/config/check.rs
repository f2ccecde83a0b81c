//! Validation of a config file: turns the raw serde tree into the runtime `Config`,
//! collecting every error with its file, line and column, and prints them as
//! `FILE:LINE:COL: message` for `switchyard check`. Runs at startup, on every reload
//! (an invalid file keeps the old config) and in `switchyard check`. serde_yaml stops
//! at the first structural error; once the structure parses, every semantic error is
//! reported, not just the first.

mod keys;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::model::{
    Balance, Config, Endpoint, HealthCheck, Limits, Model, OpenAiProvider, Pricing, Provider,
    ProviderKind, RetryOn, Route, Server, Target, Timeouts, parse_duration, parse_size,
    valid_model_name,
};
use super::raw::{
    self, RawBalance, RawConfig, RawHealthCheck, RawLimits, RawModel, RawPricing, RawProvider,
    RawProviderType, RawRoute, RawServer, RawTarget, RawTimeouts, Scalar,
};
use super::secret::{Secret, SecretSource, SecretString};
use super::spans::{KeyPath, Pos, SpanIndex};

/// One problem in a config file. Never carries a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {message}")]
pub struct ConfigError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub col: usize,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: pos.line.max(1),
            col: pos.col.max(1),
            message: message.into(),
        }
    }

    /// A serde_yaml error, with its position taken out of the text and into the fields.
    pub fn from_serde(file: &str, err: &serde_yaml::Error) -> Self {
        let text = err.to_string();
        let Some(location) = err.location() else {
            return Self::new(file, Pos::START, text);
        };
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        let message = text.replacen(&suffix, "", 1);
        let pos = Pos {
            line: location.line(),
            col: location.column(),
        };
        Self::new(file, pos, message)
    }
}

/// Every problem found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for error in &self.0 {
            if !first {
                f.write_str("\n")?;
            }
            first = false;
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

/// Parses and validates `text`; `file` labels errors and becomes `Config::source`.
pub fn build(text: &str, file: &str, secrets: &SecretSource) -> Result<Config, ConfigErrors> {
    let (raw, spans) = parse_structure(text, file)?;
    let mut checker = Checker {
        file,
        spans: &spans,
        secrets,
        errors: Vec::new(),
    };
    let config = checker.config(raw);
    let mut errors = checker.errors;
    if errors.is_empty() {
        return Ok(config);
    }
    errors.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors(errors))
}

/// Both parses: serde_yaml for the tree, yaml-rust2 for positions and duplicate keys.
fn parse_structure(text: &str, file: &str) -> Result<(RawConfig, SpanIndex), ConfigErrors> {
    let parsed = raw::parse(text);
    let spans = SpanIndex::parse(text);
    let mut errors: Vec<ConfigError> = match &spans {
        Ok(index) => index
            .duplicates
            .iter()
            .map(|dup| {
                let message = format!(
                    "duplicate key `{}` (first at line {})",
                    dup.path, dup.first.line
                );
                ConfigError::new(file, dup.at, message)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    match (parsed, spans) {
        (Err(err), Ok(index)) if err.to_string().contains("unknown field") => {
            errors.extend(super::unknown::unknown_keys(text, file, &index));
            if errors.is_empty() {
                errors.push(ConfigError::from_serde(file, &err));
            }
        }
        (Err(err), _) => {
            // With duplicates found, serde's own "duplicate field" says less than ours.
            let redundant = !errors.is_empty() && err.to_string().contains("duplicate field");
            if !redundant {
                errors.push(ConfigError::from_serde(file, &err));
            }
        }
        (Ok(_), Err(scan)) => {
            let message = format!("invalid YAML: {}", scan.message);
            errors.push(ConfigError::new(file, scan.at, message));
        }
        (Ok(raw), Ok(index)) if errors.is_empty() => {
            return Ok((raw.unwrap_or_default(), index));
        }
        (Ok(_), Ok(_)) => {}
    }
    errors.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors(errors))
}

/// The checks of one load; every method records errors and goes on.
struct Checker<'a> {
    file: &'a str,
    spans: &'a SpanIndex,
    secrets: &'a SecretSource,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn at_key(&mut self, path: &KeyPath, message: impl Into<String>) {
        let pos = self.spans.key(path);
        self.errors.push(ConfigError::new(self.file, pos, message));
    }

    fn at_value(&mut self, path: &KeyPath, message: impl Into<String>) {
        let pos = self.spans.value(path);
        self.errors.push(ConfigError::new(self.file, pos, message));
    }

    fn unsupported(&mut self, path: &KeyPath, key: &str) {
        self.at_key(path, format!("`{key}` is not supported by this build yet"));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let root = KeyPath::root();
        let keys_present = raw.keys.as_ref().is_some_and(|keys| !keys.is_empty());
        let server = self.server(
            &root.key("server"),
            raw.server.unwrap_or_default(),
            keys_present,
        );
        let (mut keys, key_digests) = self.keys(&root.key("keys"), raw.keys.unwrap_or_default());
        let rate_limits = self.rate_limits(
            &root.key("rate_limits"),
            raw.rate_limits.unwrap_or_default(),
        );
        let raw_providers = raw.providers.unwrap_or_default();
        let provider_names: BTreeSet<String> = raw_providers.keys().cloned().collect();
        let providers = self.providers(&root.key("providers"), raw_providers);
        let models_path = root.key("models");
        let raw_models = raw.models.unwrap_or_default();
        let mut models = self.models(&models_path, &raw_models, &provider_names);
        let aliases = self.aliases(&models_path, &models);
        let names = Names {
            models: &models,
            aliases: &aliases,
        };
        let fallbacks = self.fallbacks(&models_path, &raw_models, &names);
        let routes = self.routes(&root.key("routes"), raw.routes.unwrap_or_default(), &names);
        self.fallback_cycles(&models_path, &fallbacks);
        self.key_model_names(&root.key("keys"), &mut keys, &models, &aliases);
        for (name, list) in fallbacks {
            if let Some(model) = models.get_mut(&name) {
                model.fallbacks = list.into_iter().map(|(target, _)| target).collect();
            }
        }
        Config {
            server,
            providers,
            models,
            aliases,
            routes,
            keys,
            key_digests,
            rate_limits,
            usage_store: self.usage_store(&root.key("usage"), raw.usage.unwrap_or_default()),
            jwt: raw.auth.and_then(|a| self.auth(&root.key("auth"), a)),
            source: self.file.to_owned(),
        }
    }

    // ---- server -------------------------------------------------------------------

    /// `keys_present`: with API keys, clients authenticate, so any address may be served.
    fn server(&mut self, path: &KeyPath, raw: RawServer, keys_present: bool) -> Server {
        let allow_unauthenticated = raw.allow_unauthenticated.unwrap_or(false);
        let allow_open = allow_unauthenticated || keys_present;
        let listen = self.listen(&path.key("listen"), raw.listen, allow_open);
        let admin_token = raw
            .admin_token
            .as_ref()
            .and_then(|t| self.admin_token(&path.key("admin_token"), t));
        let metrics_path = path.key("metrics_listen");
        let metrics_listen = raw
            .metrics_listen
            .and_then(|text| self.socket_addr(&metrics_path, &text, allow_open));
        Server {
            listen,
            allow_unauthenticated,
            admin_token,
            metrics_listen,
            limits: self.limits(&path.key("limits"), raw.limits.unwrap_or_default()),
            timeouts: self.timeouts(&path.key("timeouts"), raw.timeouts.unwrap_or_default()),
            grace_period: self.grace_period(&path.key("grace_period"), raw.grace_period),
            upgrade_sock: self.upgrade_sock(&path.key("upgrade_sock"), raw.upgrade_sock),
        }
    }

    /// Whole seconds, 1 s to 1 h: Pingora sleeps it in seconds on every graceful stop.
    fn grace_period(&mut self, path: &KeyPath, raw: Option<Scalar>) -> Duration {
        let d = self.duration(path, raw, Server::DEFAULT_GRACE_PERIOD);
        if d.subsec_nanos() != 0 || d > Duration::from_secs(3600) {
            self.at_value(path, "grace_period must be whole seconds, from 1s to 1h");
            return Server::DEFAULT_GRACE_PERIOD;
        }
        d
    }

    fn upgrade_sock(&mut self, path: &KeyPath, raw: Option<String>) -> String {
        match raw {
            Some(p) if p.starts_with('/') => p,
            Some(_) => {
                self.at_value(path, "upgrade_sock must be an absolute path");
                Server::DEFAULT_UPGRADE_SOCK.to_owned()
            }
            None => Server::DEFAULT_UPGRADE_SOCK.to_owned(),
        }
    }

    fn listen(
        &mut self,
        path: &KeyPath,
        raw: Option<Vec<String>>,
        allow_unauthenticated: bool,
    ) -> Vec<SocketAddr> {
        let Some(texts) = raw else {
            return vec![SocketAddr::from(([127, 0, 0, 1], 8080))];
        };
        if texts.is_empty() {
            self.at_key(path, "`listen` needs at least one address");
        }
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let item = path.index(i);
            let Some(addr) = self.socket_addr(&item, text, allow_unauthenticated) else {
                continue;
            };
            if addrs.contains(&addr) {
                self.at_value(&item, format!("listen address `{addr}` is listed twice"));
            }
            addrs.push(addr);
        }
        addrs
    }

    /// Parses an address to bind. Without API keys nothing authenticates clients, so
    /// a non-loopback address needs the explicit `allow_unauthenticated: true`.
    fn socket_addr(&mut self, path: &KeyPath, text: &str, allow_open: bool) -> Option<SocketAddr> {
        let Ok(addr) = text.parse::<SocketAddr>() else {
            let message =
                format!("invalid address `{text}`: expected IP:PORT such as 127.0.0.1:8080");
            self.at_value(path, message);
            return None;
        };
        if !addr.ip().is_loopback() && !allow_open {
            let message = format!(
                "address `{addr}` is not loopback and no API keys are configured; \
                 set `server.allow_unauthenticated: true` to serve it without authentication"
            );
            self.at_value(path, message);
        }
        Some(addr)
    }

    fn limits(&mut self, path: &KeyPath, raw: RawLimits) -> Limits {
        let default = Limits::default();
        Limits {
            max_body: self.size(&path.key("max_body"), raw.max_body, default.max_body),
            max_header: self.size(&path.key("max_header"), raw.max_header, default.max_header),
            header_timeout: self.duration(
                &path.key("header_timeout"),
                raw.header_timeout,
                default.header_timeout,
            ),
            body_timeout: self.duration(
                &path.key("body_timeout"),
                raw.body_timeout,
                default.body_timeout,
            ),
        }
    }

    fn timeouts(&mut self, path: &KeyPath, raw: RawTimeouts) -> Timeouts {
        let default = Timeouts::default();
        Timeouts {
            connect: self.duration(&path.key("connect"), raw.connect, default.connect),
            first_byte: self.duration(&path.key("first_byte"), raw.first_byte, default.first_byte),
            idle: self.duration(&path.key("idle"), raw.idle, default.idle),
            total: self.duration(&path.key("total"), raw.total, default.total),
        }
    }

    // ---- values -------------------------------------------------------------------

    /// A positive size, or `default` when absent (or after reporting an error).
    fn size(&mut self, path: &KeyPath, raw: Option<Scalar>, default: usize) -> usize {
        let parsed = match raw {
            None => return default,
            Some(Scalar::Text(text)) => parse_size(&text).map_err(|err| err.to_string()),
            Some(Scalar::Int(n)) => usize::try_from(n).map_err(|_| format!("invalid size `{n}`")),
            Some(Scalar::Float(n)) => Err(format!("invalid size `{n}`: expected whole bytes")),
        };
        match parsed {
            Ok(0) => self.at_value(path, "size must be greater than zero"),
            Ok(bytes) => return bytes,
            Err(message) => self.at_value(path, message),
        }
        default
    }

    /// A positive duration, or `default` when absent (or after reporting an error).
    fn duration(&mut self, path: &KeyPath, raw: Option<Scalar>, default: Duration) -> Duration {
        match self.any_duration(path, raw) {
            Some(d) if d.is_zero() => self.at_value(path, "duration must be greater than zero"),
            Some(d) => return d,
            None => {}
        }
        default
    }

    /// A duration, zero included; `None` when absent or invalid (error recorded).
    fn any_duration(&mut self, path: &KeyPath, raw: Option<Scalar>) -> Option<Duration> {
        let text = match raw? {
            Scalar::Text(text) => text,
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(n) => n.to_string(),
        };
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(err) => {
                self.at_value(path, err.to_string());
                None
            }
        }
    }

    /// The admin token as its SHA-256 hex digest (`sha256:` accepted, like API keys): the
    /// gateway compares digests and never keeps the plain token.
    fn admin_token(&mut self, path: &KeyPath, raw: &SecretString) -> Option<SecretString> {
        match Secret::parse_key(raw).and_then(|secret| secret.resolve_digest(self.secrets)) {
            Ok(digest) => Some(SecretString::new(digest)),
            Err(err) => {
                self.at_value(path, format!("`admin_token`: {err}"));
                None
            }
        }
    }

    fn secret(&mut self, path: &KeyPath, raw: &SecretString) -> Option<SecretString> {
        let key = path
            .as_str()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        match Secret::parse(raw).and_then(|secret| secret.resolve(self.secrets)) {
            Ok(value) => Some(value),
            Err(err) => {
                self.at_value(path, format!("`{key}`: {err}"));
                None
            }
        }
    }

    /// A credential goes into an `authorization` header: it must be visible ASCII without
    /// spaces, or it could split the request head. The message never quotes the value.
    fn header_safe_key(&mut self, path: &KeyPath, key: &SecretString) -> bool {
        let value = key.expose();
        if !value.is_empty() && value.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return true;
        }
        self.at_value(
            path,
            "`api_key`: the key must be printable ASCII without spaces or line breaks",
        );
        false
    }

    fn model_name(&mut self, path: &KeyPath, name: &str, at_key: bool) -> bool {
        if valid_model_name(name) {
            return true;
        }
        let message = format!("invalid model name `{name}`");
        match at_key {
            true => self.at_key(path, message),
            false => self.at_value(path, message),
        }
        false
    }

    // ---- providers ----------------------------------------------------------------

    fn providers(
        &mut self,
        path: &KeyPath,
        raw: BTreeMap<String, RawProvider>,
    ) -> BTreeMap<String, Provider> {
        let mut providers = BTreeMap::new();
        for (name, provider) in raw {
            let here = path.key(&name);
            if !valid_model_name(&name) {
                self.at_key(&here, format!("invalid provider name `{name}`"));
            }
            if let Some(kind) = self.provider_kind(&here, provider) {
                providers.insert(name.clone(), Provider { name, kind });
            }
        }
        providers
    }

    fn provider_kind(&mut self, path: &KeyPath, raw: RawProvider) -> Option<ProviderKind> {
        let type_path = path.key("type");
        match raw.kind {
            RawProviderType::Local => self.unsupported(&type_path, "type: local"),
            RawProviderType::Plugin => self.unsupported(&type_path, "type: plugin"),
            RawProviderType::Openai => return Some(ProviderKind::OpenAi(self.openai(path, raw))),
        }
        None
    }

    fn openai(&mut self, path: &KeyPath, raw: RawProvider) -> OpenAiProvider {
        self.foreign_provider_keys(path, &raw);
        let endpoints = self.endpoints(&path.key("endpoints"), raw.endpoints.unwrap_or_default());
        let api_key_path = path.key("api_key");
        let api_key = raw
            .api_key
            .and_then(|secret| self.secret(&api_key_path, &secret))
            .filter(|key| self.header_safe_key(&api_key_path, key));
        let health_path = path.key("health_check");
        let health_check = raw
            .health_check
            .map(|hc| self.health_check(&health_path, hc));
        OpenAiProvider {
            endpoints,
            api_key,
            health_check,
        }
    }

    /// Keys that belong to `type: local` or `type: plugin`.
    fn foreign_provider_keys(&mut self, path: &KeyPath, raw: &RawProvider) {
        let present = [
            ("engine", raw.engine.is_some()),
            ("model_path", raw.model_path.is_some()),
            ("args", raw.args.is_some()),
            ("command", raw.command.is_some()),
            ("gpu", raw.gpu.is_some()),
            ("vram", raw.vram.is_some()),
            ("start", raw.start.is_some()),
            ("idle_ttl", raw.idle_ttl.is_some()),
            ("startup_timeout", raw.startup_timeout.is_some()),
            ("plugin", raw.plugin.is_some()),
            ("options", raw.options.is_some()),
        ];
        for (key, _) in present.into_iter().filter(|(_, set)| *set) {
            self.at_key(
                &path.key(key),
                format!("`{key}` is not valid for `type: openai`"),
            );
        }
    }

    fn endpoints(&mut self, path: &KeyPath, raw: Vec<String>) -> Vec<Endpoint> {
        if raw.is_empty() {
            self.at_key(
                path,
                "a provider of `type: openai` needs at least one endpoint",
            );
        }
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for (i, url) in raw.iter().enumerate() {
            let item = path.index(i);
            match Endpoint::parse(url) {
                Ok(e) if endpoints.iter().any(|seen| seen.url == e.url) => {
                    self.at_value(&item, "endpoint is listed twice");
                }
                Ok(e) => endpoints.push(e),
                Err(err) => self.at_value(&item, err.to_string()),
            }
        }
        endpoints
    }

    fn health_check(&mut self, path: &KeyPath, raw: RawHealthCheck) -> HealthCheck {
        let default = HealthCheck::default();
        let probe_path = raw.path.unwrap_or(default.path);
        let path_ok = probe_path.starts_with('/')
            && !probe_path.contains(['?', '#'])
            && !probe_path.chars().any(char::is_whitespace);
        if !path_ok {
            self.at_value(&path.key("path"), "health check `path` must start with `/`");
        }
        HealthCheck {
            path: probe_path,
            interval: self.duration(&path.key("interval"), raw.interval, default.interval),
            unhealthy_after: self.at_least_one(
                &path.key("unhealthy_after"),
                raw.unhealthy_after,
                default.unhealthy_after,
            ),
            healthy_after: self.at_least_one(
                &path.key("healthy_after"),
                raw.healthy_after,
                default.healthy_after,
            ),
        }
    }

    fn at_least_one(&mut self, path: &KeyPath, raw: Option<u32>, default: u32) -> u32 {
        match raw {
            None => default,
            Some(0) => {
                self.at_value(path, "must be at least 1");
                default
            }
            Some(n) => n,
        }
    }

    // ---- models -------------------------------------------------------------------

    fn models(
        &mut self,
        path: &KeyPath,
        raw: &BTreeMap<String, RawModel>,
        providers: &BTreeSet<String>,
    ) -> BTreeMap<String, Model> {
        let mut models = BTreeMap::new();
        for (name, model) in raw {
            let here = path.key(name);
            self.model_name(&here, name, true);
            let built = self.model(&here, name, model, providers);
            models.insert(name.clone(), built);
        }
        models
    }

    fn model(
        &mut self,
        path: &KeyPath,
        name: &str,
        raw: &RawModel,
        providers: &BTreeSet<String>,
    ) -> Model {
        let limits = raw
            .limits
            .as_ref()
            .map(|l| self.model_limits(&path.key("limits"), l))
            .unwrap_or_default();
        let aliases_path = path.key("aliases");
        let aliases = raw.aliases.clone().unwrap_or_default();
        for (i, alias) in aliases.iter().enumerate() {
            self.model_name(&aliases_path.index(i), alias, false);
        }
        let pricing_path = path.key("pricing");
        Model {
            name: name.to_owned(),
            aliases,
            targets: self.targets(path, raw.targets.as_deref().unwrap_or_default(), providers),
            balance: raw.balance.map_or(Balance::default(), balance),
            fallbacks: Vec::new(),
            retry_on: self.retry_on(&path.key("retry_on"), raw.retry_on.as_deref()),
            pricing: raw
                .pricing
                .as_ref()
                .and_then(|p| self.pricing(&pricing_path, p)),
            limits,
        }
    }

    fn targets(
        &mut self,
        model_path: &KeyPath,
        raw: &[RawTarget],
        providers: &BTreeSet<String>,
    ) -> Vec<Target> {
        if raw.is_empty() {
            self.at_key(model_path, "model has no targets");
        }
        let path = model_path.key("targets");
        let mut targets = Vec::new();
        for (i, target) in raw.iter().enumerate() {
            let item = path.index(i);
            if !providers.contains(&target.provider) {
                let message = format!("unknown provider `{}`", target.provider);
                self.at_value(&item.key("provider"), message);
            }
            self.model_name(&item.key("model"), &target.model, false);
            if target.weight == Some(0) {
                self.at_value(&item.key("weight"), "`weight` must be at least 1");
            }
            targets.push(Target {
                provider: target.provider.clone(),
                model: target.model.clone(),
                weight: target.weight.unwrap_or(1).max(1),
            });
        }
        targets
    }

    fn retry_on(&mut self, path: &KeyPath, raw: Option<&[Scalar]>) -> RetryOn {
        let Some(entries) = raw else {
            return RetryOn::default();
        };
        let mut retry = RetryOn {
            connect: false,
            timeout: false,
            statuses: Vec::new(),
        };
        for (i, entry) in entries.iter().enumerate() {
            match retry_entry(entry) {
                Some(RetryEntry::Connect) => retry.connect = true,
                Some(RetryEntry::Timeout) => retry.timeout = true,
                Some(RetryEntry::Status(code)) => retry.statuses.push(code),
                None => self.at_value(
                    &path.index(i),
                    "`retry_on` entries are `connect`, `timeout` or a status from 400 to 599",
                ),
            }
        }
        retry.statuses.sort_unstable();
        retry.statuses.dedup();
        retry
    }

    fn pricing(&mut self, path: &KeyPath, raw: &RawPricing) -> Option<Pricing> {
        let per = self.per(&path.key("per"), raw.per.as_ref());
        let input = self.price(&path.key("input"), raw.input);
        let output = self.price(&path.key("output"), raw.output);
        // Without a cached rate, cached tokens cost as much as any input token.
        let cached = match raw.cached_input {
            Some(value) => self.price(&path.key("cached_input"), value),
            None => input,
        };
        Some(Pricing {
            input_per_token: input? / per?,
            output_per_token: output? / per?,
            cached_input_per_token: cached? / per?,
        })
    }

    fn price(&mut self, path: &KeyPath, value: f64) -> Option<f64> {
        if value.is_finite() && value >= 0.0 {
            return Some(value);
        }
        self.at_value(path, "price must be a number of USD, zero or more");
        None
    }

    /// `per: 1M`, `1K`, `1000`: how many tokens the prices are for. Default 1M.
    fn per(&mut self, path: &KeyPath, raw: Option<&Scalar>) -> Option<f64> {
        let Some(raw) = raw else {
            return Some(1_000_000.0);
        };
        let parsed = match raw {
            Scalar::Text(text) => per_text(text),
            // Any sane token count is far below f64's exact-integer limit.
            Scalar::Int(n) => Some(*n as f64),
            Scalar::Float(n) => Some(*n),
        };
        match parsed.filter(|n| n.is_finite() && *n > 0.0) {
            Some(n) => Some(n),
            None => {
                self.at_value(path, "`per` must be 1K, 1M or a positive number of tokens");
                None
            }
        }
    }

    fn aliases(
        &mut self,
        models_path: &KeyPath,
        models: &BTreeMap<String, Model>,
    ) -> HashMap<String, String> {
        let mut aliases: HashMap<String, String> = HashMap::new();
        for (name, model) in models {
            let path = models_path.key(name).key("aliases");
            for (i, alias) in model.aliases.iter().enumerate() {
                let item = path.index(i);
                if models.contains_key(alias) {
                    self.at_value(&item, format!("alias `{alias}` is also a model name"));
                } else if let Some(owner) = aliases.get(alias) {
                    let message = format!("alias `{alias}` is already an alias of model `{owner}`");
                    self.at_value(&item, message);
                } else {
                    aliases.insert(alias.clone(), name.clone());
                }
            }
        }
        aliases
    }

    /// Resolves each model's fallbacks to model names, with the index each came from.
    fn fallbacks(
        &mut self,
        models_path: &KeyPath,
        raw: &BTreeMap<String, RawModel>,
        names: &Names<'_>,
    ) -> BTreeMap<String, Vec<(String, usize)>> {
        let mut all = BTreeMap::new();
        for (name, model) in raw {
            let path = models_path.key(name).key("fallbacks");
            let mut resolved: Vec<(String, usize)> = Vec::new();
            for (i, fallback) in model.fallbacks.iter().flatten().enumerate() {
                let item = path.index(i);
                match names.canonical(fallback) {
                    None => {
                        self.at_value(&item, format!("unknown model `{fallback}` in `fallbacks`"))
                    }
                    Some(target) if resolved.iter().any(|(seen, _)| seen == target) => {
                        self.at_value(&item, format!("`{fallback}` is listed twice"));
                    }
                    Some(target) => resolved.push((target.to_owned(), i)),
                }
            }
            all.insert(name.clone(), resolved);
        }
        all
    }

    /// Reports each cycle once, at the fallback entry that closes it.
    fn fallback_cycles(
        &mut self,
        models_path: &KeyPath,
        graph: &BTreeMap<String, Vec<(String, usize)>>,
    ) {
        let mut walk = CycleWalk {
            graph,
            done: BTreeSet::new(),
            stack: Vec::new(),
            found: Vec::new(),
        };
        for name in graph.keys() {
            walk.visit(name);
        }
        for (from, index, cycle) in walk.found {
            let path = models_path.key(&from).key("fallbacks").index(index);
            self.at_value(&path, format!("fallback cycle: {}", cycle.join(" -> ")));
        }
    }

    // ---- routes -------------------------------------------------------------------

    fn routes(&mut self, path: &KeyPath, raw: Vec<RawRoute>, names: &Names<'_>) -> Vec<Route> {
        let mut routes = Vec::new();
        for (i, route) in raw.into_iter().enumerate() {
            if let Some(built) = self.route(&path.index(i), route, names) {
                routes.push(built);
            }
        }
        routes
    }

    fn route(&mut self, path: &KeyPath, raw: RawRoute, names: &Names<'_>) -> Option<Route> {
        let when = raw.when.unwrap_or_default();
        let when_path = path.key("when");
        let header_map = when.header.unwrap_or_default();
        if header_map.is_empty() && when.model.is_none() {
            self.at_key(
                &when_path,
                "a route needs `when` with a `header` or `model` condition",
            );
        }
        let headers = self.route_headers(&when_path.key("header"), header_map);
        let model = when
            .model
            .and_then(|glob| self.glob(&when_path.key("model"), &glob));
        let use_path = path.key("use");
        let use_model = names.canonical(&raw.use_model).map(str::to_owned);
        if use_model.is_none() {
            let message = format!("unknown model `{}` in `use`", raw.use_model);
            self.at_value(&use_path, message);
        }
        Some(Route {
            headers: headers?,
            model,
            use_model: use_model?,
        })
    }

    fn route_headers(
        &mut self,
        path: &KeyPath,
        raw: BTreeMap<String, String>,
    ) -> Option<Vec<(http::HeaderName, String)>> {
        let mut headers = Vec::new();
        let mut ok = true;
        for (name, value) in raw {
            match http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                Ok(header) => headers.push((header, value)),
                Err(_) => {
                    self.at_key(&path.key(&name), format!("invalid header name `{name}`"));
                    ok = false;
                }
            }
        }
        ok.then_some(headers)
    }

    fn glob(&mut self, path: &KeyPath, pattern: &str) -> Option<globset::GlobMatcher> {
        match globset::Glob::new(pattern) {
            Ok(glob) => Some(glob.compile_matcher()),
            Err(err) => {
                self.at_value(path, format!("invalid model glob: {}", err.kind()));
                None
            }
        }
    }
}

/// Model names and aliases, to resolve what `fallbacks` and `use` name.
struct Names<'a> {
    models: &'a BTreeMap<String, Model>,
    aliases: &'a HashMap<String, String>,
}

impl Names<'_> {
    fn canonical<'n>(&'n self, name: &'n str) -> Option<&'n str> {
        if self.models.contains_key(name) {
            return Some(name);
        }
        self.aliases.get(name).map(String::as_str)
    }
}

/// Depth-first walk of the fallback graph. `found` holds (model, fallback index,
/// cycle names) for each back edge.
struct CycleWalk<'a> {
    graph: &'a BTreeMap<String, Vec<(String, usize)>>,
    done: BTreeSet<&'a str>,
    stack: Vec<&'a str>,
    found: Vec<(String, usize, Vec<String>)>,
}

impl<'a> CycleWalk<'a> {
    fn visit(&mut self, name: &'a str) {
        if self.done.contains(name) {
            return;
        }
        self.stack.push(name);
        let edges = self.graph.get(name).map(Vec::as_slice).unwrap_or_default();
        for (next, index) in edges {
            match self.stack.iter().position(|on| *on == next.as_str()) {
                Some(start) => {
                    let mut cycle: Vec<String> = self.stack[start..]
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect();
                    cycle.push(next.clone());
                    self.found.push((name.to_owned(), *index, cycle));
                }
                None => self.visit(next),
            }
        }
        self.stack.pop();
        self.done.insert(name);
    }
}

enum RetryEntry {
    Connect,
    Timeout,
    Status(u16),
}

fn retry_entry(entry: &Scalar) -> Option<RetryEntry> {
    let code = match entry {
        Scalar::Text(text) if text == "connect" => return Some(RetryEntry::Connect),
        Scalar::Text(text) if text == "timeout" => return Some(RetryEntry::Timeout),
        Scalar::Text(text) => text.parse::<i64>().ok()?,
        Scalar::Int(n) => *n,
        Scalar::Float(_) => return None,
    };
    u16::try_from(code)
        .ok()
        .filter(|c| (400..=599).contains(c))
        .map(RetryEntry::Status)
}

/// `1K` → 1000, `2M` → 2 000 000, `1000` → 1000.
fn per_text(text: &str) -> Option<f64> {
    let (digits, scale) = match text.as_bytes().last()? {
        b'K' => (&text[..text.len() - 1], 1_000.0),
        b'M' => (&text[..text.len() - 1], 1_000_000.0),
        _ => (text, 1.0),
    };
    let count: u32 = digits.parse().ok()?;
    Some(f64::from(count) * scale)
}

fn balance(raw: RawBalance) -> Balance {
    match raw {
        RawBalance::RoundRobin => Balance::RoundRobin,
        RawBalance::Weighted => Balance::Weighted,
        RawBalance::LeastPending => Balance::LeastPending,
        RawBalance::Latency => Balance::Latency,
        RawBalance::HashKey => Balance::HashKey,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A valid base: provider `p`, model `m`. Cases append to it (it has 7 lines).
    const BASE: &str = "\
providers:
  p:
    type: openai
    endpoints: [\"http://127.0.0.1:9000/v1\"]
models:
  m:
    targets: [{ provider: p, model: up }]
";

    #[test]
    fn api_key_that_could_split_a_header_is_an_error_that_does_not_quote_it() {
        let text = BASE.replace("    endpoints:", "    api_key: \"sk-a b\"\n    endpoints:");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("printable ASCII"), "{errs:?}");
        assert!(!errs[0].contains("sk-a b"), "{errs:?}");
    }

    fn secrets() -> SecretSource {
        let vars = HashMap::from([("CANARY".to_owned(), "canary-env-3a9f".to_owned())]);
        SecretSource::with_vars(None, vars)
    }

    fn errors(text: &str) -> Vec<String> {
        match build(text, "t.yaml", &secrets()) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn config(text: &str) -> Config {
        build(text, "t.yaml", &secrets()).unwrap_or_else(|errors| panic!("{errors}"))
    }

    #[test]
    fn base_is_valid_and_has_defaults() {
        let config = config(BASE);
        let model = &config.models["m"];
        assert_eq!(model.balance, Balance::RoundRobin);
        assert_eq!(model.retry_on, RetryOn::default());
        assert_eq!(model.targets[0].weight, 1);
        assert_eq!(config.server.limits, Limits::default());
        assert_eq!(config.server.timeouts, Timeouts::default());
        assert_eq!(config.source, "t.yaml");
    }

    #[test]
    fn durations_and_sizes() {
        let text = "\
server:
  timeouts: { connect: 2sec, idle: 0s, total: 10 }
  limits:
    max_body: 8MB
    max_header: 0
    body_timeout: 1.5
";
        assert_eq!(
            errors(text),
            [
                "t.yaml:2:24: invalid duration `2sec`: expected a whole number with ms, s, m or h, like 250ms or 10s",
                "t.yaml:2:36: duration must be greater than zero",
                "t.yaml:2:47: invalid duration `10`: expected a whole number with ms, s, m or h, like 250ms or 10s",
                "t.yaml:4:15: invalid size `8MB`: expected bytes or a whole number with KiB, MiB or GiB, like 8MiB",
                "t.yaml:5:17: size must be greater than zero",
                "t.yaml:6:19: invalid duration `1.5`: expected a whole number with ms, s, m or h, like 250ms or 10s",
            ]
        );
        let ok = config("server:\n  limits: { max_body: 1048576, max_header: 64KiB }\n");
        assert_eq!(ok.server.limits.max_body, 1 << 20);
        assert_eq!(ok.server.limits.max_header, 64 << 10);
    }

    #[test]
    fn listen_addresses() {
        let text = "server:\n  listen: [\"0.0.0.0:8080\", \"nope\", \"127.0.0.1:1\", \"127.0.0.1:1\"]\n  metrics_listen: \"10.1.1.1:9090\"\n";
        assert_eq!(
            errors(text),
            [
                "t.yaml:2:12: address `0.0.0.0:8080` is not loopback and no API keys are configured; set `server.allow_unauthenticated: true` to serve it without authentication",
                "t.yaml:2:28: invalid address `nope`: expected IP:PORT such as 127.0.0.1:8080",
                "t.yaml:2:51: listen address `127.0.0.1:1` is listed twice",
                "t.yaml:3:19: address `10.1.1.1:9090` is not loopback and no API keys are configured; set `server.allow_unauthenticated: true` to serve it without authentication",
            ]
        );
        assert_eq!(
            errors("server:\n  listen: []\n"),
            ["t.yaml:2:3: `listen` needs at least one address"]
        );
        let open = config(
            "server:\n  listen: [\"0.0.0.0:8080\", \"[::1]:8081\"]\n  allow_unauthenticated: true\n",
        );
        assert_eq!(open.server.listen.len(), 2);
    }

    #[test]
    fn endpoints() {
        let text = "\
providers:
  p:
    type: openai
    endpoints: [\"http://u:canary@h/v1\", \"https://h/v1?x=1\", \"ftp://h\", \"http://h/v1/\", \"http://h/v1\"]
  q:
    type: openai
";
        assert_eq!(
            errors(text),
            [
                "t.yaml:4:17: invalid endpoint: credentials in the URL are not allowed; use `api_key`",
                "t.yaml:4:41: invalid endpoint: a query or fragment is not allowed",
                "t.yaml:4:61: invalid endpoint: must start with http:// or https://",
                "t.yaml:4:88: endpoint is listed twice",
                "t.yaml:5:3: a provider of `type: openai` needs at least one endpoint",
            ]
        );
    }

    #[test]
    fn model_names() {
        let text = "\
providers:
  p: { type: openai, endpoints: [\"http://h\"] }
models:
  bad..name:
    aliases: [ok-alias, -x]
    targets: [{ provider: p, model: a b }]
";
        assert_eq!(
            errors(text),
            [
                "t.yaml:4:3: invalid model name `bad..name`",
                "t.yaml:5:25: invalid model name `-x`",
                "t.yaml:6:37: invalid model name `a b`",
            ]
        );
    }

    #[test]
    fn dangling_names_and_empty_models() {
        let text = format!(
            "{BASE}    fallbacks: [ghost]
  empty: {{}}
  bare:
    targets: []
  w:
    targets: [{{ provider: nope, model: x, weight: 0 }}]
routes:
  - when: {{ model: \"gpt-*\" }}
    use: nowhere
"
        );
        assert_eq!(
            errors(&text),
            [
                "t.yaml:8:17: unknown model `ghost` in `fallbacks`",
                "t.yaml:9:3: model has no targets",
                "t.yaml:10:3: model has no targets",
                "t.yaml:13:27: unknown provider `nope`",
                "t.yaml:13:51: `weight` must be at least 1",
                "t.yaml:16:10: unknown model `nowhere` in `use`",
            ]
        );
    }

    #[test]
    fn duplicate_aliases() {
        let text = "\
providers:
  p: { type: openai, endpoints: [\"http://h\"] }
models:
  a:
    aliases: [x, x, b]
    targets: [{ provider: p, model: u }]
  b:
    aliases: [y, x]
    targets: [{ provider: p, model: u }]
";
        assert_eq!(
            errors(text),
            [
                "t.yaml:5:18: alias `x` is already an alias of model `a`",
                "t.yaml:5:21: alias `b` is also a model name",
                "t.yaml:8:18: alias `x` is already an alias of model `a`",
            ]
        );
    }

    #[test]
    fn fallback_cycles() {
        let text = "\
providers:
  p: { type: openai, endpoints: [\"http://h\"] }
models:
  a:
    targets: [{ provider: p, model: u }]
    fallbacks: [b]
  b:
    aliases: [bee]
    targets: [{ provider: p, model: u }]
    fallbacks: [c, a]
  c:
    targets: [{ provider: p, model: u }]
  self:
    targets: [{ provider: p, model: u }]
    fallbacks: [c, self, c]
";
        assert_eq!(
            errors(text),
            [
                "t.yaml:10:20: fallback cycle: a -> b -> a",
                "t.yaml:15:20: fallback cycle: self -> self",
                "t.yaml:15:26: `c` is listed twice",
            ]
        );
        let ok = config(
            &text
                .replace("[c, a]", "[c]")
                .replace("[c, self, c]", "[bee]"),
        );
        assert_eq!(
            ok.models["self"].fallbacks,
            ["b"],
            "aliases resolve to the model"
        );
    }

    #[test]
    fn retry_on_entries() {
        let text =
            format!("{BASE}    retry_on: [connect, later, 200, 429, \"503\", 600, 1.5, 429]\n");
        assert_eq!(
            errors(&text),
            [
                "t.yaml:8:25: `retry_on` entries are `connect`, `timeout` or a status from 400 to 599",
                "t.yaml:8:32: `retry_on` entries are `connect`, `timeout` or a status from 400 to 599",
                "t.yaml:8:49: `retry_on` entries are `connect`, `timeout` or a status from 400 to 599",
                "t.yaml:8:54: `retry_on` entries are `connect`, `timeout` or a status from 400 to 599",
            ]
        );
        let ok = config(&format!("{BASE}    retry_on: [timeout, 503, 429, 503]\n"));
        assert_eq!(
            ok.models["m"].retry_on,
            RetryOn {
                connect: false,
                timeout: true,
                statuses: vec![429, 503]
            }
        );
    }

    #[test]
    fn pricing() {
        let ok = config(&format!(
            "{BASE}    pricing: {{ input: 0.15, output: 0.60, per: 1K }}\n"
        ));
        let pricing = ok.models["m"].pricing.clone().unwrap();
        assert!((pricing.input_per_token - 0.000_15).abs() < 1e-12);
        assert!((pricing.cached_input_per_token - 0.000_15).abs() < 1e-12);
        let default_per = config(&format!("{BASE}    pricing: {{ input: 1, output: 2 }}\n"));
        let pricing = default_per.models["m"].pricing.clone().unwrap();
        assert!((pricing.output_per_token - 2e-6).abs() < 1e-15);
        let bad = format!("{BASE}    pricing: {{ input: -1, output: 1, per: 1G }}\n");
        assert_eq!(
            errors(&bad),
            [
                "t.yaml:8:23: price must be a number of USD, zero or more",
                "t.yaml:8:43: `per` must be 1K, 1M or a positive number of tokens",
            ]
        );
    }

    #[test]
    fn routes() {
        let text = format!(
            "{BASE}routes:
  - when: {{ header: {{ \"bad header\": x }}, model: \"[\" }}
    use: m
  - use: m
  - when: {{ header: {{ X-Tenant: acme }}, model: \"gpt-*\" }}
    use: m
"
        );
        let found = errors(&text);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert_eq!(found[0], "t.yaml:9:23: invalid header name `bad header`");
        assert!(
            found[1].starts_with("t.yaml:9:49: invalid model glob: "),
            "{}",
            found[1]
        );
        assert_eq!(
            found[2],
            "t.yaml:11:5: a route needs `when` with a `header` or `model` condition"
        );
        let ok = config(&format!(
            "{BASE}routes:\n  - when: {{ header: {{ X-Tenant: acme }}, model: \"gpt-*\" }}\n    use: m\n"
        ));
        let route = &ok.routes[0];
        assert_eq!(route.headers[0].0.as_str(), "x-tenant");
        assert!(route.model.as_ref().unwrap().is_match("gpt-4o"));
        assert_eq!(route.use_model, "m");
    }

    #[test]
    fn health_checks_and_foreign_keys() {
        let text = "\
providers:
  p:
    type: openai
    endpoints: [\"http://h\"]
    engine: vllm
    health_check: { path: health, interval: 0s, unhealthy_after: 0 }
";
        assert_eq!(
            errors(text),
            [
                "t.yaml:5:5: `engine` is not valid for `type: openai`",
                "t.yaml:6:27: health check `path` must start with `/`",
                "t.yaml:6:45: duration must be greater than zero",
                "t.yaml:6:66: must be at least 1",
            ]
        );
        let ok = config(
            "providers:\n  p:\n    type: openai\n    endpoints: [\"http://h\"]\n    health_check: { interval: 1s }\n",
        );
        let ProviderKind::OpenAi(provider) = &ok.providers["p"].kind;
        let check = provider.health_check.clone().unwrap();
        assert_eq!(
            (check.path.as_str(), check.interval),
            ("/health", Duration::from_secs(1))
        );
    }

    #[test]
    fn keys_and_limits() {
        let text = "\
server:
  listen: [\"0.0.0.0:8080\"]
models:
  m:
    targets: []
    limits: { rpm: 0, tpm: 100 }
keys:
  a: { key: canary-key-one, models: [\"m*\", \"[\"], limits: { rpm: 5, concurrency: 0 } }
  b: { key: canary-key-one, model_limits: { nope: { rpm: 1 } } }
rate_limits: { window: 90s }
";
        let found = errors(text);
        assert_eq!(
            found,
            [
                "t.yaml:4:3: model has no targets",
                "t.yaml:6:20: a limit must be at least 1 (leave it out for none)",
                "t.yaml:8:44: invalid model glob: unclosed character class; missing ']'",
                "t.yaml:8:81: a limit must be at least 1 (leave it out for none)",
                "t.yaml:9:13: the same key as `a`",
                "t.yaml:9:45: unknown model `nope`",
                "t.yaml:10:24: window must be whole seconds, at most 60s",
            ],
            "non-loopback `listen` is fine with keys"
        );
        assert!(!found.concat().contains("canary"));
    }

    #[test]
    fn unsupported_and_weak_settings() {
        let text = "\
server:
  admin_token: \"\"
providers:
  gpu:
    type: local
    engine: llama.cpp
  claude:
    type: plugin
    plugin: anthropic
models:
  m:
    targets: [{ provider: gpu, model: q }, { provider: claude, model: c }]
    limits: { rpm: 1 }
keys:
  team: { key: canary-key-literal, budget: { usd: 1, period: month } }
rate_limits: { store: \"mongodb://127.0.0.1\" }
usage: { store: \"sqlite://x.db\" }
auth:
  jwt: { secret: canary-jwt, ttl: 1h }
";
        let found = errors(text);
        assert_eq!(
            found,
            [
                "t.yaml:2:16: `admin_token`: secret is empty",
                "t.yaml:5:5: `type: local` is not supported by this build yet",
                "t.yaml:8:5: `type: plugin` is not supported by this build yet",
                "t.yaml:16:23: `store` must be `memory` or redis://HOST:PORT/DB",
                "t.yaml:19:18: `secret` must be at least 32 bytes",
            ]
        );
        assert!(!found.concat().contains("canary"));
        assert!(
            errors(&format!("{BASE}keys: {{}}\n")).is_empty(),
            "empty keys are fine"
        );
    }

    #[test]
    fn structural_errors_point_at_the_line() {
        let nested = format!("{BASE}    pricing: {{ input: 1, output: 1, pre: 1M }}\n");
        let found = errors(&nested);
        assert_eq!(found.len(), 1);
        assert!(
            found[0]
                .starts_with("t.yaml:8:37: models.m.pricing: unknown field `pre`, expected one of"),
            "{}",
            found[0]
        );
        let deep = "providers:\n  p:\n    type: openai\n    health_check:\n      intervl: 5s\n";
        let found = errors(deep);
        assert!(
            found[0].starts_with("t.yaml:5:7: providers.p.health_check: unknown field `intervl`"),
            "{}",
            found[0]
        );
        assert_eq!(
            errors("models:\n  m:\n    balance: fastest\n    targets: []\n")[0],
            "t.yaml:3:14: models.m.balance: unknown variant `fastest`, expected one of `round_robin`, `weighted`, `least_pending`, `latency`, `hash_key`"
        );
        let syntax = errors("server:\n  listen: [\"127.0.0.1:8080\"\n  x: 1\n");
        assert_eq!(syntax.len(), 1);
        assert!(syntax[0].starts_with("t.yaml:3:"), "{}", syntax[0]);
    }

    #[test]
    fn duplicate_keys() {
        let text = format!(
            "{BASE}  m:\n    targets: [{{ provider: p, model: up }}]\nserver:\n  listen: []\n  listen: [\"127.0.0.1:1\"]\n"
        );
        assert_eq!(
            errors(&text),
            [
                "t.yaml:8:3: duplicate key `models.m` (first at line 6)",
                "t.yaml:12:3: duplicate key `server.listen` (first at line 11)",
            ]
        );
    }

    #[test]
    fn secrets_resolve_and_never_print() {
        let with_env = BASE.replace("    endpoints:", "    api_key: env:CANARY\n    endpoints:");
        let config = config(&with_env);
        let ProviderKind::OpenAi(provider) = &config.providers["p"].kind;
        assert_eq!(
            provider.api_key.as_ref().map(SecretString::expose),
            Some("canary-env-3a9f")
        );
        assert!(!format!("{config:?}").contains("canary"));

        let missing = with_env.replace("env:CANARY", "env:SWITCHYARD_NOT_SET");
        assert_eq!(
            errors(&missing),
            ["t.yaml:4:14: `api_key`: environment variable `SWITCHYARD_NOT_SET` is not set"]
        );
        // A literal next to other errors: no message quotes it.
        let literal = with_env
            .replace("env:CANARY", "canary-literal-88")
            .replace("up }", "a b }");
        let found = errors(&literal).concat();
        assert!(found.contains("invalid model name"));
        assert!(!found.contains("canary"));
    }

    #[test]
    fn every_error_is_collected_in_one_pass() {
        let text = format!("server:\n  timeouts: {{ connect: 2x }}\n{BASE}    weight: 1\n");
        // `weight` under the model is unknown: structure fails first, alone.
        assert_eq!(errors(&text).len(), 1);
        let text = format!(
            "server:\n  timeouts: {{ connect: 2x }}\n{BASE}    fallbacks: [ghost]\n    balance: weighted\n"
        );
        assert_eq!(errors(&text).len(), 2);
    }

    #[test]
    fn display_of_many_errors_is_one_per_line() {
        let errors = ConfigErrors(vec![
            ConfigError::new("f", Pos { line: 2, col: 3 }, "a"),
            ConfigError::new("f", Pos { line: 0, col: 0 }, "b"),
        ]);
        assert_eq!(errors.to_string(), "f:2:3: a\nf:1:1: b");
    }
}
