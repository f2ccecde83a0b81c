//! API keys and the admin credential (contract §2–§4; issue 4): every route of the router's
//! own table is closed without a credential except the explicit public list; 401s are
//! byte-identical; allowlists hold on the resolved model, aliases and fallbacks included;
//! the key never leaks.

use switchyard::proxy::dispatch::{Access, ROUTES};

use crate::support::gateway::{Gateway, Setup};
use crate::support::mock_upstream::{MockUpstream, Reply};
use crate::{assert_envelope, bounded, chat_body};

const TEAM_KEY: &str = "sk-canary-team-5521";
const OTHER_KEY: &str = "sk-canary-other-7713";
const ADMIN: &str = "adm-canary-9090";

/// `chat` (alias `gpt-3.5-turbo`) → `a`, falling back to `secret` → `b`; `secret` has the
/// alias `sneaky`. Key `team` may use `chat*` only; key `other` everything.
fn setup(a: &MockUpstream, b: &MockUpstream) -> Setup {
    Setup::new(format!(
        "providers:\n  pa:\n    type: openai\n    endpoints: [\"{}\"]\n  pb:\n    type: openai\n    endpoints: [\"{}\"]\n\nmodels:\n  chat:\n    aliases: [gpt-3.5-turbo]\n    targets: [{{ provider: pa, model: up-a }}]\n    fallbacks: [secret]\n  secret:\n    aliases: [sneaky]\n    targets: [{{ provider: pb, model: up-b }}]\n\nkeys:\n  team:\n    key: env:TEAM_KEY\n    models: [\"chat*\"]\n  other:\n    key: \"sha256:{}\"\n",
        a.url(),
        b.url(),
        switchyard::config::sha256_hex(OTHER_KEY)
    ))
    .env("TEAM_KEY", TEAM_KEY)
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn chat_as(
    gw: &Gateway,
    key: &str,
    model: &str,
    id: &str,
) -> crate::support::client::Response {
    let auth = bearer(key);
    gw.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &auth),
            ("x-request-id", id),
        ],
        chat_body(model, false).to_string().as_bytes(),
    )
    .await
}

#[tokio::test]
async fn every_route_but_the_public_ones_needs_a_credential() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let gw =
            Gateway::start(setup(&a, &b).server_extra(&format!("  admin_token: {ADMIN}"))).await;
        let mut bodies = Vec::new();
        for route in ROUTES {
            let path = route.path.replace("{id}", "chat");
            let body = if route.method == "POST" {
                chat_body("chat", false).to_string()
            } else {
                String::new()
            };
            for creds in [
                vec![],
                vec![("Authorization", "Bearer sk-wrong")],
                vec![("X-API-Key", "sk-wrong")],
            ] {
                let mut headers = creds.clone();
                headers.push(("Content-Type", "application/json"));
                let r = gw
                    .request(route.method, &path, &headers, body.as_bytes())
                    .await;
                if route.access == Access::Public {
                    // Public routes answer on their own terms (the login checks its body).
                    continue;
                }
                assert_envelope(&r, 401, "invalid_request_error", "invalid_api_key", None);
                assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{path}");
                bodies.push(r.body.clone());
            }
            // A data-plane key is not an admin credential.
            if route.access == Access::Admin {
                let auth = bearer(OTHER_KEY);
                let r = gw
                    .request(route.method, &path, &[("Authorization", &auth)], b"")
                    .await;
                assert_eq!(r.status, 401, "{path} with a data-plane key");
                let auth = bearer(ADMIN);
                let r = gw
                    .request(route.method, &path, &[("Authorization", &auth)], b"")
                    .await;
                // Past the credential check (the route may still want a body, or a key).
                assert_ne!(r.status, 401, "{path} with the admin token: {}", r.text());
            }
        }
        assert!(
            bodies.windows(2).all(|w| w[0] == w[1]),
            "byte-identical 401 bodies"
        );
        assert_eq!(
            a.request_count() + b.request_count(),
            0,
            "nothing reached an upstream"
        );
    })
    .await;
}

#[tokio::test]
async fn keys_work_in_either_header_and_never_travel_upstream() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let gw = Gateway::start(setup(&a, &b)).await;
        let r = chat_as(&gw, TEAM_KEY, "chat", "k-bearer").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = gw
            .request(
                "POST",
                "/v1/chat/completions",
                &[
                    ("Content-Type", "application/json"),
                    ("X-API-Key", OTHER_KEY),
                ],
                chat_body("chat", false).to_string().as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        for req in a.requests() {
            let all = format!("{:?}", req.headers);
            assert!(
                !all.contains("canary"),
                "the client's key never goes upstream: {all}"
            );
        }
        assert_eq!(gw.access_log("k-bearer").await["key"], "team");
        assert!(!gw.output_text().contains("canary"), "keys never in logs");
    })
    .await;
}

#[tokio::test]
async fn allowlists_hold_on_the_resolved_model() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let gw = Gateway::start(setup(&a, &b)).await;
        // `sneaky` is an alias of `secret`: the name looks harmless, the model is not allowed.
        for (model, id) in [("secret", "al-direct"), ("sneaky", "al-alias")] {
            let r = chat_as(&gw, TEAM_KEY, model, id).await;
            assert_envelope(
                &r,
                404,
                "invalid_request_error",
                "model_not_found",
                Some("model"),
            );
        }
        // `gpt-3.5-turbo` is an alias of `chat`: allowed through the resolved model.
        let r = chat_as(&gw, TEAM_KEY, "gpt-3.5-turbo", "al-ok").await;
        assert_eq!(r.status, 200, "{}", r.text());
        // `chat` fails over to `secret`, which this key may not use: no fallback for it.
        a.set_default(Reply::status(503));
        let r = chat_as(&gw, TEAM_KEY, "chat", "al-fb").await;
        assert_envelope(&r, 503, "server_error", "backend_unavailable", None);
        assert_eq!(
            b.request_count(),
            0,
            "the fallback is not used past the allowlist"
        );
        // The other key may use it.
        a.set_default(Reply::status(503));
        let r = chat_as(&gw, OTHER_KEY, "chat", "al-fb-other").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-switchyard-model"), Some("secret"));
        // Listing and lookup show only what the key may use.
        let auth = bearer(TEAM_KEY);
        let list = gw
            .request("GET", "/v1/models", &[("Authorization", &auth)], b"")
            .await;
        let ids: Vec<String> = list.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["chat"]);
        let r = gw
            .request("GET", "/v1/models/sneaky", &[("Authorization", &auth)], b"")
            .await;
        assert_eq!(r.status, 404);
    })
    .await;
}

/// `auth:` users: a password buys a JWT (`POST /api/auth/token`); an admin's token opens
/// the management routes, a user's only the data plane; a bad login is the same 401.
#[tokio::test]
async fn users_log_in_for_a_jwt_and_roles_decide_what_it_opens() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let ada = switchyard::auth::jwt::hash_password("ada-canary-pass").unwrap();
        let bob = switchyard::auth::jwt::hash_password("bob-canary-pass").unwrap();
        let mut s = setup(&a, &b).env("JWT_SECRET", "jwt-canary-secret-0123456789abcdef");
        s.body.push_str(&format!(
            "\nauth:\n  jwt: {{ secret: env:JWT_SECRET, ttl: 1h }}\n  users:\n    ada: {{ password: \"{ada}\", role: admin }}\n    bob: {{ password: \"{bob}\", role: user }}\n"
        ));
        let gw = Gateway::start(s).await;
        let login = |user: &str, password: &str| {
            let body = serde_json::json!({"username": user, "password": password}).to_string();
            let gw = &gw;
            async move {
                gw.request("POST", "/api/auth/token", &[("Content-Type", "application/json")], body.as_bytes())
                    .await
            }
        };
        let r = login("ada", "ada-canary-pass").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["token_type"], "bearer");
        assert_eq!(v["expires_in"], 3600);
        let ada_token = v["access_token"].as_str().unwrap().to_owned();
        let bob_token = login("bob", "bob-canary-pass").await.json()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();

        let bad = login("ada", "wrong").await;
        let unknown = login("eve", "ada-canary-pass").await;
        let no_key = gw.request("GET", "/v1/models", &[], b"").await;
        for r in [&bad, &unknown] {
            assert_envelope(r, 401, "invalid_request_error", "invalid_api_key", None);
            assert_eq!(r.body, no_key.body, "every credential failure is the same 401");
        }

        let ada_auth = bearer(&ada_token);
        let bob_auth = bearer(&bob_token);
        let r = gw.request("GET", "/metrics", &[("Authorization", &ada_auth)], b"").await;
        assert_eq!(r.status, 200, "an admin's token opens the management routes");
        let r = gw.request("GET", "/metrics", &[("Authorization", &bob_auth)], b"").await;
        assert_eq!(r.status, 401, "a user's does not");
        let r = chat_as(&gw, &bob_token, "chat", "jwt-bob").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(gw.access_log("jwt-bob").await["key"], "user:bob");
        // A token with `alg: none` is refused end to end.
        let mut parts: Vec<&str> = bob_token.split('.').collect();
        parts[0] = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        parts[2] = "";
        let forged = parts.join(".");
        let r = chat_as(&gw, &forged, "chat", "jwt-none").await;
        assert_eq!(r.status, 401);
        assert!(!gw.output_text().contains("canary"), "no password, secret or key in logs");
    })
    .await;
}

/// Virtual keys through the management API: created (shown once), used with their
/// allowlist and limits at once, updated, listed without the secret, revoked at once; a
/// second instance on the same database picks them up.
#[tokio::test]
async fn virtual_keys_are_managed_at_runtime() {
    bounded(60, async {
        let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
        let db = crate::support::gateway::TempDir::new();
        let store = format!(
            "\nusage: {{ store: \"sqlite://{}\" }}\n",
            db.path().join("ledger.db").display()
        );
        let mut s = setup(&a, &b).server_extra(&format!("  admin_token: {ADMIN}"));
        s.body.push_str(&store);
        let gw = Gateway::start(s.clone()).await;
        let admin = bearer(ADMIN);
        let call = |method: &'static str, path: &'static str, body: serde_json::Value| {
            let gw = &gw;
            let admin = admin.clone();
            async move {
                gw.request(
                    method,
                    path,
                    &[
                        ("Content-Type", "application/json"),
                        ("Authorization", &admin),
                    ],
                    body.to_string().as_bytes(),
                )
                .await
            }
        };
        let r = call(
            "POST",
            "/api/keys",
            serde_json::json!({"name": "vk1", "models": ["chat"], "limits": {"rpm": 2}}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
        let created = r.json();
        let key = created["key"].as_str().unwrap().to_owned();
        assert!(key.starts_with("sk-sy-"));
        assert_eq!(created["limits"]["rpm"], 2);

        // Effective at once: allowlist and limits included.
        let ok = chat_as(&gw, &key, "chat", "vk-1").await;
        assert_eq!(ok.status, 200, "{}", ok.text());
        assert_eq!(ok.header("x-ratelimit-limit-requests"), Some("2"));
        assert_eq!(gw.access_log("vk-1").await["key"], "vk1");
        let r = chat_as(&gw, &key, "secret", "vk-2").await;
        assert_envelope(
            &r,
            404,
            "invalid_request_error",
            "model_not_found",
            Some("model"),
        );
        assert_eq!(chat_as(&gw, &key, "chat", "vk-3").await.status, 200);
        assert_eq!(chat_as(&gw, &key, "chat", "vk-4").await.status, 429);

        // Listed without the key; the file's keys too.
        let list = call("GET", "/api/keys", serde_json::Value::Null).await;
        assert_eq!(list.status, 200);
        assert!(!list.text().contains(&key), "the key is shown once only");
        let names: Vec<&str> = list.json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                if k["source"] == "api" {
                    "api"
                } else {
                    "config"
                }
            })
            .collect();
        assert_eq!(names.iter().filter(|s| **s == "api").count(), 1);

        // A second instance on the same database knows the key.
        let gw2 = Gateway::start(s.clone()).await;
        let started = std::time::Instant::now();
        while chat_as(&gw2, &key, "chat", "vk-other").await.status == 401 {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        // Updated: more room at once.
        let r = call(
            "PATCH",
            "/api/keys/vk1",
            serde_json::json!({"limits": {"rpm": 100}}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(chat_as(&gw, &key, "chat", "vk-5").await.status, 200);

        // Names are unique, and the file's keys change with the file.
        let dup = call("POST", "/api/keys", serde_json::json!({"name": "team"})).await;
        assert_envelope(
            &dup,
            409,
            "invalid_request_error",
            "already_exists",
            Some("name"),
        );
        let r = call("DELETE", "/api/keys/team", serde_json::Value::Null).await;
        assert_eq!(r.status, 409);

        // Revoked: refused at once, like any unknown key.
        let r = call("DELETE", "/api/keys/vk1", serde_json::Value::Null).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = chat_as(&gw, &key, "chat", "vk-6").await;
        assert_envelope(&r, 401, "invalid_request_error", "invalid_api_key", None);
        let r = call("DELETE", "/api/keys/vk1", serde_json::Value::Null).await;
        assert_envelope(&r, 404, "invalid_request_error", "key_not_found", None);
        // Not without the admin credential.
        let r = gw
            .request(
                "POST",
                "/api/keys",
                &[("Authorization", &bearer(TEAM_KEY))],
                b"{\"name\":\"x\"}",
            )
            .await;
        assert_eq!(r.status, 401);
        assert!(
            !gw.output_text().contains(&key),
            "the key never reaches the logs"
        );
    })
    .await;
}
