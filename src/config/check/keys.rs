//! Validation of `keys:`, `auth:`, `rate_limits:`, a model's `limits:` and `usage:`
//! (contract §2): what the auth and limit steps of request_filter and the ledger run on. Part of every
//! load, so a reload that breaks a key is rejected like any other invalid file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::Checker;
use std::time::Duration;

use crate::config::model::{
    ApiKey, Budget, BudgetPeriod, JwtSettings, RateLimitSettings, RateLimits, Role, User,
};
use crate::config::raw::{
    RawAuth, RawBudget, RawKey, RawKeyLimits, RawModelLimits, RawRateLimits, RawUsage,
};
use crate::config::secret::Secret;
use crate::config::spans::KeyPath;
use crate::config::{model_glob_set, valid_model_name};

impl Checker<'_> {
    /// The keys by name, and the digest → name index a request is authenticated with.
    pub(super) fn keys(
        &mut self,
        path: &KeyPath,
        raw: BTreeMap<String, RawKey>,
    ) -> (BTreeMap<String, Arc<ApiKey>>, HashMap<String, String>) {
        let mut keys = BTreeMap::new();
        let mut digests: HashMap<String, String> = HashMap::new();
        for (name, key) in raw {
            let here = path.key(&name);
            if !valid_model_name(&name) {
                self.at_key(&here, format!("invalid key name `{name}`"));
            }
            let budget = key
                .budget
                .as_ref()
                .and_then(|b| self.budget(&here.key("budget"), b));
            let model_limits = key
                .model_limits
                .iter()
                .flatten()
                .map(|(model, l)| {
                    let at = here.key("model_limits").key(model);
                    (model.clone(), self.model_limits(&at, l))
                })
                .collect();
            let key_path = here.key("key");
            match Secret::parse_key(&key.key).and_then(|s| s.resolve_digest(self.secrets)) {
                Ok(digest) => {
                    if let Some(other) = digests.insert(digest, name.clone()) {
                        // The message names the other key, never the value.
                        self.at_value(&key_path, format!("the same key as `{other}`"));
                    }
                }
                Err(err) => self.at_value(&key_path, format!("`key`: {err}")),
            }
            let models = key
                .models
                .as_deref()
                .and_then(|globs| self.model_globs(&here.key("models"), globs));
            let limits = key
                .limits
                .map(|l| self.key_limits(&here.key("limits"), &l))
                .unwrap_or_default();
            keys.insert(
                name.clone(),
                Arc::new(ApiKey {
                    name,
                    models,
                    limits,
                    budget,
                    model_limits,
                }),
            );
        }
        (keys, digests)
    }

    /// `auth:`: the JWT secret and TTL, and users with an argon2 PHC password hash.
    pub(super) fn auth(&mut self, path: &KeyPath, raw: RawAuth) -> Option<JwtSettings> {
        let users_path = path.key("users");
        let mut users = BTreeMap::new();
        for (name, user) in raw.users.unwrap_or_default() {
            let here = users_path.key(&name);
            if !valid_model_name(&name) {
                self.at_key(&here, format!("invalid user name `{name}`"));
            }
            let role = match user.role.as_str() {
                "admin" => Role::Admin,
                "user" => Role::User,
                _ => {
                    self.at_value(&here.key("role"), "`role` must be admin or user");
                    continue;
                }
            };
            // The hash is not the password, but it is kept out of errors all the same.
            if argon2::PasswordHash::new(user.password.expose()).is_err() {
                self.at_value(
                    &here.key("password"),
                    "`password` must be an argon2 PHC string (`switchyard hash-password` prints one)",
                );
                continue;
            }
            users.insert(
                name,
                User {
                    password_hash: user.password,
                    role,
                },
            );
        }
        let Some(jwt) = raw.jwt else {
            if !users.is_empty() {
                self.at_key(
                    &path.key("users"),
                    "`users` needs `jwt: { secret }` to sign tokens",
                );
            }
            return None;
        };
        let jwt_path = path.key("jwt");
        let secret = self.secret(&jwt_path.key("secret"), &jwt.secret)?;
        if secret.expose().len() < 32 {
            self.at_value(
                &jwt_path.key("secret"),
                "`secret` must be at least 32 bytes",
            );
        }
        let ttl = self.duration(&jwt_path.key("ttl"), jwt.ttl, Duration::from_secs(3600));
        Some(JwtSettings { secret, ttl, users })
    }

    fn budget(&mut self, path: &KeyPath, raw: &RawBudget) -> Option<Budget> {
        let Some(period) = BudgetPeriod::from_name(&raw.period) else {
            self.at_value(&path.key("period"), "`period` must be day, week or month");
            return None;
        };
        if !(raw.usd.is_finite() && raw.usd > 0.0) {
            self.at_value(&path.key("usd"), "`usd` must be a positive amount");
            return None;
        }
        Some(Budget {
            usd: raw.usd,
            period,
        })
    }

    fn model_globs(&mut self, path: &KeyPath, globs: &[String]) -> Option<globset::GlobSet> {
        match model_glob_set(globs) {
            Ok(set) => Some(set),
            Err(errors) => {
                for (i, err) in errors {
                    let message = format!("invalid model glob: {}", err.kind());
                    self.at_value(&path.index(i), message);
                }
                None
            }
        }
    }

    fn key_limits(&mut self, path: &KeyPath, raw: &RawKeyLimits) -> RateLimits {
        RateLimits {
            rpm: self.positive(&path.key("rpm"), raw.rpm),
            tpm: self.positive(&path.key("tpm"), raw.tpm),
            concurrency: self.positive(&path.key("concurrency"), raw.concurrency),
        }
    }

    /// A key's `model_limits` must name configured models (aliases resolve to them).
    pub(super) fn key_model_names(
        &mut self,
        path: &KeyPath,
        keys: &mut BTreeMap<String, Arc<ApiKey>>,
        models: &BTreeMap<String, crate::config::Model>,
        aliases: &HashMap<String, String>,
    ) {
        for (name, key) in keys.iter_mut() {
            let Some(k) = Arc::get_mut(key) else { continue };
            let mut resolved = HashMap::new();
            for (model, limits) in std::mem::take(&mut k.model_limits) {
                let canonical = if models.contains_key(&model) {
                    Some(model.clone())
                } else {
                    aliases.get(&model).cloned()
                };
                match canonical {
                    Some(m) => {
                        resolved.insert(m, limits);
                    }
                    None => self.at_key(
                        &path.key(name).key("model_limits").key(&model),
                        format!("unknown model `{model}`"),
                    ),
                }
            }
            k.model_limits = resolved;
        }
    }

    pub(super) fn model_limits(&mut self, path: &KeyPath, raw: &RawModelLimits) -> RateLimits {
        RateLimits {
            rpm: self.positive(&path.key("rpm"), raw.rpm),
            tpm: self.positive(&path.key("tpm"), raw.tpm),
            concurrency: None,
        }
    }

    fn positive(&mut self, path: &KeyPath, value: Option<u64>) -> Option<u64> {
        match value {
            Some(0) => {
                self.at_value(path, "a limit must be at least 1 (leave it out for none)");
                None
            }
            v => v,
        }
    }

    /// `usage.store` as a database URL: `postgres://…` as written; `sqlite://PATH` with a
    /// relative PATH taken from the config file's folder, and created if missing.
    pub(super) fn usage_store(&mut self, path: &KeyPath, raw: RawUsage) -> String {
        let store_path = path.key("store");
        let url = raw
            .store
            .unwrap_or_else(|| crate::config::DEFAULT_USAGE_STORE.to_owned());
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return url;
        }
        let Some(file) = url.strip_prefix("sqlite://") else {
            self.at_value(
                &store_path,
                "`store` must be sqlite://PATH or postgres://USER@HOST/DB",
            );
            return String::new();
        };
        let (file, query) = file.split_once('?').unwrap_or((file, ""));
        if file.is_empty() {
            self.at_value(&store_path, "`store`: sqlite:// needs a file path");
            return String::new();
        }
        let file = std::path::Path::new(file);
        let full = match std::path::Path::new(self.file).parent() {
            Some(dir) if file.is_relative() && !dir.as_os_str().is_empty() => dir.join(file),
            _ => file.to_path_buf(),
        };
        let query = if query.is_empty() { "mode=rwc" } else { query };
        format!("sqlite://{}?{query}", full.display())
    }

    pub(super) fn rate_limits(&mut self, path: &KeyPath, raw: RawRateLimits) -> RateLimitSettings {
        let default = RateLimitSettings::default();
        let redis = match raw.store {
            None => None,
            Some(s) if s == "memory" => None,
            Some(s) if s.starts_with("redis://") || s.starts_with("rediss://") => {
                if ::redis::Client::open(s.as_str()).is_err() {
                    self.at_value(&path.key("store"), "`store`: not a valid Redis URL");
                }
                Some(s)
            }
            Some(_) => {
                self.at_value(
                    &path.key("store"),
                    "`store` must be `memory` or redis://HOST:PORT/DB",
                );
                None
            }
        };
        let window_path = path.key("window");
        let window = self.duration(&window_path, raw.window, default.window);
        let window = if window.subsec_nanos() != 0 || window > default.window {
            self.at_value(&window_path, "window must be whole seconds, at most 60s");
            default.window
        } else {
            window
        };
        RateLimitSettings {
            window,
            redis,
            fail_open: raw.fail_open.unwrap_or(false),
        }
    }
}
