//! JWTs for the users of `auth:` (contract §2–§3): `POST /api/auth/token` checks a user's
//! password against its argon2 hash and signs a token; later requests present it as
//! `Authorization: Bearer`. Role `admin` opens the management API.
//!
//! Only HS256 is accepted (an allowlist of one: `none` and every asymmetric algorithm are
//! refused, so no algorithm-confusion trick applies), and `exp` is required.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{JwtSettings, Role};

/// Clock skew tolerated on `exp`.
const LEEWAY_S: u64 = 5;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    iat: u64,
    exp: u64,
}

/// A signed token and how long it lives.
#[derive(Debug)]
pub struct Issued {
    pub token: String,
    pub expires_in: Duration,
}

/// The user a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenUser {
    pub name: String,
    pub role: Role,
}

/// Checks `password` and signs a token for `username`; `None` for an unknown user or a
/// wrong password (the caller cannot tell which). CPU-heavy by design: run it off the
/// workers.
pub fn issue(settings: &JwtSettings, username: &str, password: &str) -> Option<Issued> {
    let user = settings.users.get(username);
    // An unknown user still costs one verification, so timing does not reveal names.
    let hash = user.map_or(DUMMY_HASH, |u| u.password_hash.expose());
    let parsed = PasswordHash::new(hash).ok()?;
    let ok = Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok();
    let user = user.filter(|_| ok)?;
    let now = unix_now();
    let claims = Claims {
        sub: username.to_owned(),
        role: role_name(user.role).to_owned(),
        iat: now,
        exp: now + settings.ttl.as_secs(),
    };
    let key = EncodingKey::from_secret(settings.secret.expose().as_bytes()).ok()?;
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).ok()?;
    Some(Issued {
        token,
        expires_in: settings.ttl,
    })
}

/// The user of a valid, unexpired HS256 token of a configured user; `None` otherwise.
pub fn verify(settings: &JwtSettings, token: &str) -> Option<TokenUser> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_S;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let key = DecodingKey::from_secret(settings.secret.expose().as_bytes()).ok()?;
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).ok()?;
    // The user must still exist with that role: a removed user's tokens stop working.
    let user = settings.users.get(&data.claims.sub)?;
    (role_name(user.role) == data.claims.role).then_some(TokenUser {
        name: data.claims.sub,
        role: user.role,
    })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::User => "user",
    }
}

/// Whether `token` has the shape of a JWT (three dot-separated parts), so it is worth
/// verifying rather than looking up as an API key.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    token.iter().filter(|&&b| b == b'.').count() == 2
}

/// Hashes `password` as an argon2id PHC string (`switchyard hash-password`).
pub fn hash_password(password: &str) -> Option<String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .ok()
        .map(|h| h.to_string())
}

/// A valid hash of a random password, verified against for unknown users.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c3dpdGNoeWFyZC1kdW1teQ$J9mBRdNpTD1T+8dMbmU0Xk0UDmb3lzXy8Zo7/9eZpz4";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SecretString, User};
    use base64::Engine as _;

    fn settings() -> JwtSettings {
        let mut users = std::collections::BTreeMap::new();
        users.insert(
            "ada".to_owned(),
            User {
                password_hash: SecretString::new(hash_password("correct horse").unwrap()),
                role: Role::Admin,
            },
        );
        JwtSettings {
            secret: SecretString::new("0123456789abcdef0123456789abcdef".into()),
            ttl: Duration::from_secs(60),
            users,
        }
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn a_password_gets_a_token_that_verifies() {
        let s = settings();
        let issued = issue(&s, "ada", "correct horse").unwrap();
        assert_eq!(
            verify(&s, &issued.token),
            Some(TokenUser {
                name: "ada".into(),
                role: Role::Admin
            })
        );
        assert!(issue(&s, "ada", "wrong").is_none());
        assert!(issue(&s, "bob", "correct horse").is_none());
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_are_refused() {
        let s = settings();
        let now = unix_now();
        let claims = |exp: Option<u64>| {
            let mut c = serde_json::json!({"sub": "ada", "role": "admin", "iat": now});
            if let Some(e) = exp {
                c["exp"] = e.into();
            }
            c
        };
        let sign = |alg: Algorithm, c: &serde_json::Value, secret: &[u8]| {
            jsonwebtoken::encode(
                &Header::new(alg),
                c,
                &EncodingKey::from_secret(secret).unwrap(),
            )
            .unwrap()
        };
        let secret = s.secret.expose().as_bytes().to_vec();
        // alg none: header and claims, empty signature.
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(&claims(Some(now + 60)))
        );
        assert!(verify(&s, &none).is_none(), "alg none");
        assert!(
            verify(
                &s,
                &sign(
                    Algorithm::HS256,
                    &claims(Some(now + 60)),
                    b"another secret of 32 bytes......"
                )
            )
            .is_none(),
            "wrong signature"
        );
        assert!(
            verify(
                &s,
                &sign(Algorithm::HS512, &claims(Some(now + 60)), &secret)
            )
            .is_none(),
            "another HMAC algorithm"
        );
        assert!(
            verify(
                &s,
                &sign(Algorithm::HS256, &claims(Some(now - 3600)), &secret)
            )
            .is_none(),
            "expired"
        );
        assert!(
            verify(&s, &sign(Algorithm::HS256, &claims(None), &secret)).is_none(),
            "no exp"
        );
        // RS256 header over an HMAC signature made with the secret (algorithm confusion).
        let hs = sign(Algorithm::HS256, &claims(Some(now + 60)), &secret);
        let mut parts: Vec<&str> = hs.split('.').collect();
        let rs_header = b64(&serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        parts[0] = &rs_header;
        assert!(verify(&s, &parts.join(".")).is_none(), "RS256 header");
        assert!(
            verify(
                &s,
                &sign(Algorithm::HS256, &claims(Some(now + 60)), &secret)
            )
            .is_some(),
            "the control case verifies"
        );
    }
}
