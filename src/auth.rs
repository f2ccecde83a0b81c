//! Request authentication, run in request_filter right after dispatch: today the admin
//! credential that guards the management routes (`server.admin_token`, contract §2). API
//! keys and JWT join it with the governance issue.
//!
//! Without an `admin_token` nothing authenticates (contract §2: no keys means auth is off,
//! and the config then refuses non-loopback listeners unless `allow_unauthenticated`).

use sha2::{Digest, Sha256};

use crate::config::Config;

/// Whether the request carries the admin credential, or none is configured. The credential
/// comes as `Authorization: Bearer <token>` or `X-API-Key: <token>`.
pub fn admin_allowed(
    config: &Config,
    authorization: Option<&[u8]>,
    api_key: Option<&[u8]>,
) -> bool {
    let Some(want) = &config.server.admin_token else {
        return true;
    };
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .or(api_key);
    presented.is_some_and(|token| digest_matches(token, want.expose()))
}

/// Compares SHA-256 digests, never the secret bytes, and without an early exit, so the
/// time taken says nothing about how much of the digest matched.
fn digest_matches(token: &[u8], want_hex: &str) -> bool {
    let got = hex::encode(Sha256::digest(token));
    got.len() == want_hex.len()
        && got
            .bytes()
            .zip(want_hex.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn config(token: &str) -> Config {
        let yaml = format!("server:\n  admin_token: {token}\n");
        load_str(&yaml, "t.yaml").unwrap()
    }

    #[test]
    fn no_token_configured_means_no_admin_auth() {
        let c = load_str("server: {}\n", "t.yaml").unwrap();
        assert!(admin_allowed(&c, None, None));
    }

    #[test]
    fn bearer_or_x_api_key_must_match() {
        for c in [
            config("s3cret-admin"),
            config(&format!(
                "sha256:{}",
                crate::config::sha256_hex("s3cret-admin")
            )),
        ] {
            assert!(admin_allowed(&c, Some(b"Bearer s3cret-admin"), None));
            assert!(admin_allowed(&c, None, Some(b"s3cret-admin")));
            assert!(!admin_allowed(&c, None, None));
            assert!(!admin_allowed(&c, Some(b"Bearer s3cret-admiN"), None));
            assert!(
                !admin_allowed(&c, Some(b"s3cret-admin"), None),
                "no Bearer prefix"
            );
            assert!(!admin_allowed(&c, None, Some(b"")));
        }
    }
}
