//! `/metrics` (contract §5.8, §7) and secrets in observability (reliability.md D):
//! labels carry configured names only; a provider key reaches the upstream and nothing else.

use crate::support::gateway::{Gateway, Setup};
use crate::support::mock_upstream::{MockUpstream, Reply};
use crate::{bounded, chat_body};

/// The value of label `name` in a Prometheus sample line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let end = start + line[start..].find('"')?;
    Some(&line[start..end])
}

fn config(mock: &MockUpstream, key_line: &str) -> String {
    format!(
        "providers:\n  mock:\n    type: openai\n    endpoints: [\"{}\"]\n{key_line}\nmodels:\n  chat:\n    aliases: [gpt-3.5-turbo]\n    targets:\n      - {{ provider: mock, model: upstream-id }}\n",
        mock.url()
    )
}

#[tokio::test]
async fn metrics_have_configured_labels_only() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(config(&mock, ""))).await;
        for i in 0..2 {
            let r = gw
                .post_json(
                    "/v1/chat/completions",
                    &format!("m-ok-{i}"),
                    &chat_body("gpt-3.5-turbo", false),
                )
                .await;
            assert_eq!(r.status, 200);
        }
        let r = gw
            .post_json(
                "/v1/chat/completions",
                "m-unknown",
                &chat_body("bogus-model-xyz", false),
            )
            .await;
        assert_eq!(r.status, 404);
        let r = gw
            .post_json(
                "/v1/chat/completions",
                "m-bad",
                &chat_body("evil\"}label", false),
            )
            .await;
        assert_eq!(r.status, 400);
        let r = gw.get("/metrics").await;
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("text/plain"))
        );

        let text = gw
            .metrics_until(|t| {
                t.contains(
                    r#"switchyard_requests_total{model="chat",provider="mock",status="ok"} 2"#,
                ) && t
                    .lines()
                    .filter(|l| l.starts_with("switchyard_requests_total{"))
                    .count()
                    >= 2
            })
            .await;
        assert!(
            !text.contains("bogus-model-xyz"),
            "a requested name became a label"
        );
        assert!(
            !text.contains("gpt-3.5-turbo"),
            "aliases are not labels; the resolved model is"
        );
        assert!(!text.contains("evil"), "a rejected name became a label");
        for line in text.lines().filter(|l| l.starts_with("switchyard_")) {
            if let Some(m) = label(line, "model") {
                assert!(
                    ["chat", "other"].contains(&m),
                    "model label {m:?} in {line}"
                );
            }
            if let Some(p) = label(line, "provider") {
                assert!(
                    ["mock", "other"].contains(&p),
                    "provider label {p:?} in {line}"
                );
            }
        }
        for name in [
            "switchyard_request_duration_seconds",
            "switchyard_tokens_total",
            "switchyard_upstream_attempts_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(
            text.contains(
                r#"switchyard_tokens_total{kind="completion",model="chat",provider="mock"} 6"#
            ) || text.contains(
                r#"switchyard_tokens_total{model="chat",provider="mock",kind="completion"} 6"#
            ),
            "completion tokens counted:\n{text}"
        );
    })
    .await;
}

const CANARY: &str = "sk-canary-7f3a9c1e5b2d4680";

#[tokio::test]
async fn provider_key_reaches_upstream_and_nowhere_else() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let setup = Setup::new(config(&mock, "    api_key: env:SWITCHYARD_IT_CANARY\n")).env("SWITCHYARD_IT_CANARY", CANARY);
        let gw = Gateway::start(setup).await;
        let mut seen = String::new();

        let r = gw.post_json("/v1/chat/completions", "sec-1", &chat_body("chat", false)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        seen.push_str(&r.everything());
        let bearer = format!("Bearer {CANARY}");
        assert_eq!(mock.requests()[0].header("authorization"), Some(bearer.as_str()), "the provider key reaches the upstream");

        let (mut c, head) = gw.start_stream("/v1/chat/completions", "sec-2", &chat_body("chat", true)).await;
        seen.push_str(&format!("{:?}", head.headers));
        for e in c.all_events().await.unwrap() {
            seen.push_str(&e.raw);
        }
        assert_eq!(mock.requests()[1].header("authorization"), Some(bearer.as_str()));

        // An upstream that echoes the key back in an error.
        mock.push(Reply::json(401, format!(r#"{{"error":{{"message":"Incorrect API key provided: {CANARY}","code":"invalid_api_key"}}}}"#)));
        let r = gw.post_json("/v1/chat/completions", "sec-3", &chat_body("chat", false)).await;
        assert!(r.status >= 500, "{}", r.text());
        seen.push_str(&r.everything());

        for path in ["/metrics", "/health", "/v1/models", "/v1/models/chat", "/nope"] {
            seen.push_str(&gw.get(path).await.everything());
        }
        seen.push_str(&gw.post_json("/v1/chat/completions", "sec-4", &chat_body("nope", false)).await.everything());

        // Wait for all rows so the log is complete before it is checked.
        for id in ["sec-1", "sec-2", "sec-3", "sec-4"] {
            gw.access_log(id).await;
        }
        assert!(!seen.contains(CANARY), "the key appeared in a response");
        assert!(!seen.contains("7f3a9c1e5b2d"), "part of the key appeared in a response");
        let out = gw.output_text();
        assert!(!out.contains(CANARY) && !out.contains("7f3a9c1e5b2d"), "the key appeared in the gateway's output:\n{out}");
    })
    .await;
}
