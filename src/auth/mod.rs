//! Request authentication, run in request_filter right after dispatch: the API key (or a
//! user's JWT) of data plane routes (`keys:`, `auth:`) and the admin credential of
//! management routes (`server.admin_token` or an admin's JWT), per the access the route
//! table gives each route (contract §2–§3).
//!
//! Without keys nothing authenticates (auth off; the config then refuses non-loopback
//! listeners unless `allow_unauthenticated`). Keys are found by the SHA-256 digest of what
//! the client presents — a hash-map lookup, never a comparison of secret bytes.

pub mod jwt;
pub mod virtual_keys;

use std::sync::Arc;

use http::HeaderMap;

use crate::config::{ApiKey, Config, Role, sha256_hex};
use crate::error::GatewayError;
use virtual_keys::VirtualKeys;

/// Who a data-plane request runs as.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A key of the file or a virtual key: its allowlist, limits and budget apply.
    Key(Arc<ApiKey>),
    /// A user's JWT, as `user:NAME`.
    User(String),
}

impl Principal {
    /// The name the ledger, logs and metrics carry.
    pub fn name(&self) -> String {
        match self {
            Principal::Key(k) => k.name.clone(),
            Principal::User(u) => format!("user:{u}"),
        }
    }

    pub fn key(&self) -> Option<&Arc<ApiKey>> {
        match self {
            Principal::Key(k) => Some(k),
            Principal::User(_) => None,
        }
    }
}

/// The credential a request presents: `Authorization: Bearer <token>` or `X-API-Key`.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .or_else(|| headers.get("x-api-key").map(|v| v.as_bytes()))
        .filter(|t| !t.is_empty())
}

/// Who a data-plane request runs as: `Ok(None)` while no keys exist (auth off); else a key
/// of the file, a virtual key, or a user's JWT; else `InvalidApiKey` (the same error, byte
/// for byte, for a missing, unknown, revoked, malformed or expired credential).
pub fn authenticate(
    config: &Config,
    virtual_keys: &VirtualKeys,
    headers: &HeaderMap,
) -> Result<Option<Principal>, GatewayError> {
    if config.keys.is_empty() && virtual_keys.is_empty() {
        return Ok(None);
    }
    let token = presented(headers).ok_or(GatewayError::InvalidApiKey)?;
    let digest = sha256_hex(token);
    if let Some(key) = config
        .key_digests
        .get(&digest)
        .and_then(|name| config.keys.get(name))
    {
        return Ok(Some(Principal::Key(key.clone())));
    }
    if let Some(key) = virtual_keys.lookup(&digest) {
        return Ok(Some(Principal::Key(key)));
    }
    token_user(config, token)
        .map(|user| Some(Principal::User(user.name)))
        .ok_or(GatewayError::InvalidApiKey)
}

/// Whether a management request may proceed: the admin token, or a JWT of a user with role
/// admin. With neither configured, only while no keys are (auth off).
pub fn admin_allowed(config: &Config, virtual_keys: &VirtualKeys, headers: &HeaderMap) -> bool {
    let Some(token) = presented(headers) else {
        return auth_off(config, virtual_keys);
    };
    if let Some(want) = &config.server.admin_token
        && digests_equal(&sha256_hex(token), want.expose())
    {
        return true;
    }
    if token_user(config, token).is_some_and(|u| u.role == Role::Admin) {
        return true;
    }
    auth_off(config, virtual_keys)
}

/// No keys, no admin token, no users: nothing to check the management routes against.
fn auth_off(config: &Config, virtual_keys: &VirtualKeys) -> bool {
    config.keys.is_empty()
        && virtual_keys.is_empty()
        && config.server.admin_token.is_none()
        && config.jwt.is_none()
}

fn token_user(config: &Config, token: &[u8]) -> Option<jwt::TokenUser> {
    let settings = config.jwt.as_ref()?;
    if !jwt::looks_like_jwt(token) {
        return None;
    }
    jwt::verify(settings, std::str::from_utf8(token).ok()?)
}

/// Compares two digests without an early exit, so the time taken says nothing about how
/// much matched.
fn digests_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, sha256_hex};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn config(extra: &str) -> Config {
        load_str(&format!("server: {{}}\n{extra}"), "t.yaml").unwrap()
    }

    #[test]
    fn without_keys_auth_is_off() {
        let c = config("");
        let v = VirtualKeys::new("sqlite://unused.db");
        assert!(authenticate(&c, &v, &HeaderMap::new()).unwrap().is_none());
        assert!(admin_allowed(&c, &v, &HeaderMap::new()));
    }

    #[test]
    fn keys_are_found_by_digest_in_either_header() {
        let c = config(&format!(
            "keys:\n  a: {{ key: sk-alpha }}\n  b: {{ key: \"sha256:{}\" }}\n",
            sha256_hex("sk-beta")
        ));
        let v = VirtualKeys::new("sqlite://unused.db");
        let name = |h: HeaderMap| authenticate(&c, &v, &h).unwrap().map(|p| p.name());
        assert_eq!(
            name(headers(&[("authorization", "Bearer sk-alpha")])).as_deref(),
            Some("a")
        );
        assert_eq!(
            name(headers(&[("x-api-key", "sk-beta")])).as_deref(),
            Some("b")
        );
        for bad in [
            headers(&[]),
            headers(&[("authorization", "Bearer sk-alphA")]),
            headers(&[("authorization", "sk-alpha")]),
            headers(&[("authorization", "Bearer ")]),
        ] {
            assert_eq!(
                authenticate(&c, &v, &bad).err(),
                Some(GatewayError::InvalidApiKey)
            );
        }
        assert!(
            !admin_allowed(&c, &v, &headers(&[("authorization", "Bearer sk-alpha")])),
            "keys without admin_token close the management routes"
        );
    }

    #[test]
    fn the_admin_token_in_either_form() {
        for token in [
            "s3cret-admin".to_owned(),
            format!("\"sha256:{}\"", sha256_hex("s3cret-admin")),
        ] {
            let c = config("keys:\n  a: { key: sk-alpha }\n");
            let c = Config {
                server: config_server(&token),
                ..c
            };
            let v = VirtualKeys::new("sqlite://unused.db");
            assert!(admin_allowed(
                &c,
                &v,
                &headers(&[("authorization", "Bearer s3cret-admin")])
            ));
            assert!(admin_allowed(
                &c,
                &v,
                &headers(&[("x-api-key", "s3cret-admin")])
            ));
            assert!(!admin_allowed(
                &c,
                &v,
                &headers(&[("authorization", "Bearer s3cret-admiN")])
            ));
            assert!(!admin_allowed(
                &c,
                &v,
                &headers(&[("authorization", "Bearer sk-alpha")])
            ));
            assert!(!admin_allowed(&c, &v, &HeaderMap::new()));
        }
    }

    fn config_server(token: &str) -> crate::config::Server {
        load_str(&format!("server:\n  admin_token: {token}\n"), "t.yaml")
            .unwrap()
            .server
    }
}
