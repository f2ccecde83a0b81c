//! The gateway's own errors (contract §4; reliability.md B1–B8, E2, D2, A6–A8): the OpenAI
//! envelope with exact `type`, `code`, `param`; nothing reaches the upstream; nothing from
//! the upstream leaks back.

use std::time::{Duration, Instant};

use crate::support::client::HttpClient;
use crate::support::gateway::{Gateway, Setup, one_model};
use crate::support::mock_upstream::{MockUpstream, Reply};
use crate::{assert_envelope, bounded};

const MSGS: &str = r#""messages":[{"role":"user","content":"hi"}]"#;

async fn post_raw(gw: &Gateway, body: &[u8]) -> crate::support::client::Response {
    gw.request(
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body,
    )
    .await
}

/// Every body gets the 400 `invalid_json` envelope, and none reaches the upstream.
async fn assert_all_invalid_json(gw: &Gateway, mock: &MockUpstream, bodies: &[&[u8]]) {
    for body in bodies {
        let r = post_raw(gw, body).await;
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        assert_eq!(r.status, 400, "{shown:?}: {}", r.text());
        assert_envelope(&r, 400, "invalid_request_error", "invalid_json", None);
    }
    assert_eq!(
        mock.request_count(),
        0,
        "bad bodies never reach the upstream"
    );
}

#[tokio::test]
async fn invalid_json_bodies() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let mut cases: Vec<Vec<u8>> = [
            "{",
            r#"{"model":"chat",}"#,
            "",
            "null",
            "[]",
            r#""str""#,
            "42",
            "\u{feff}{\"model\":\"chat\",\"messages\":[]}",
            r#"{"model":"chat","model":"chat","messages":[]}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        cases.push(vec![b'{'; 1024 * 1024]);
        let bodies: Vec<&[u8]> = cases.iter().map(Vec::as_slice).collect();
        assert_all_invalid_json(&gw, &mock, &bodies).await;
    })
    .await;
}

/// B6: raw invalid UTF-8 and an overlong encoding, in a field the gateway does not
/// otherwise read.
#[tokio::test]
async fn invalid_utf8_is_invalid_json() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let cases: [&[u8]; 3] = [
            b"{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}",
            b"{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc0\xaf\"}]}",
            b"{\"model\":\"ch\xffat\",\"messages\":[]}",
        ];
        assert_all_invalid_json(&gw, &mock, &cases).await;
    })
    .await;
}

/// B6: a lone surrogate escape (`"\ud800"`) is E400_JSON per reliability.md B6.
#[tokio::test]
async fn lone_surrogate_is_invalid_json() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let body = br#"{"model":"chat","messages":[{"role":"user","content":"\ud800"}]}"#;
        let r = post_raw(&gw, body).await;
        assert_envelope(&r, 400, "invalid_request_error", "invalid_json", None);
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn deep_nesting_is_rejected_quickly() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for body in [
            format!(r#"{{"model":"chat","messages":[{{"role":"user","content":{deep}}}]}}"#),
            format!(r#"{{"model":"chat",{MSGS},"metadata":{deep}}}"#),
        ] {
            let started = Instant::now();
            let r = post_raw(&gw, body.as_bytes()).await;
            assert_envelope(&r, 400, "invalid_request_error", "invalid_json", None);
            assert!(started.elapsed() < Duration::from_secs(2));
        }
        assert_eq!(mock.request_count(), 0);
        // The process is still up.
        assert_eq!(gw.get("/health").await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn wrong_types_name_the_parameter() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let with = |field: &str| format!(r#"{{"model":"chat",{MSGS},{field}}}"#);
        let cases: Vec<(String, &str, &str)> = vec![
            (r#"{"model":123}"#.into(), "invalid_type", "model"),
            (r#"{"model":["a"]}"#.into(), "invalid_type", "model"),
            (r#"{"model":{"$ne":1}}"#.into(), "invalid_type", "model"),
            (
                r#"{"model":true,"messages":[]}"#.into(),
                "invalid_type",
                "model",
            ),
            (
                r#"{"model":"chat","messages":"hi"}"#.into(),
                "invalid_type",
                "messages",
            ),
            (with(r#""stream":"true""#), "invalid_type", "stream"),
            (
                with(r#""stream_options":5"#),
                "invalid_type",
                "stream_options",
            ),
            (with(r#""max_tokens":"10""#), "invalid_type", "max_tokens"),
            (with(r#""max_tokens":1.5"#), "invalid_type", "max_tokens"),
            (with(r#""max_tokens":-1"#), "invalid_value", "max_tokens"),
            (with(r#""n":0"#), "invalid_value", "n"),
            (with(r#""n":4294967296"#), "invalid_value", "n"),
        ];
        for (body, code, param) in &cases {
            let r = post_raw(&gw, body.as_bytes()).await;
            assert_eq!(r.status, 400, "{body}: {}", r.text());
            assert_envelope(&r, 400, "invalid_request_error", code, Some(param));
        }
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn huge_and_non_finite_numbers_are_400_never_5xx() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let with = |field: &str| format!(r#"{{"model":"chat",{MSGS},{field}}}"#);
        for (field, param) in [
            (r#""max_tokens":1e309"#, "max_tokens"),
            (r#""max_tokens":18446744073709551616"#, "max_tokens"),
            (r#""max_tokens":-9223372036854775809"#, "max_tokens"),
            (r#""max_tokens":1e-400"#, "max_tokens"),
            (r#""max_completion_tokens":-3"#, "max_completion_tokens"),
        ] {
            let body = with(field);
            let r = post_raw(&gw, body.as_bytes()).await;
            assert_eq!(r.status, 400, "{body}: {}", r.text());
            let v = r.json();
            let code = v["error"]["code"].as_str().unwrap();
            assert!(
                code == "invalid_value" || code == "invalid_type",
                "{body}: {v}"
            );
            assert_eq!(v["error"]["param"], param, "{body}");
        }
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn missing_and_empty_fields() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let r = post_raw(&gw, format!("{{{MSGS}}}").as_bytes()).await;
        assert_envelope(
            &r,
            400,
            "invalid_request_error",
            "missing_required_parameter",
            Some("model"),
        );
        let r = post_raw(&gw, br#"{"model":null,"messages":[]}"#).await;
        assert_envelope(
            &r,
            400,
            "invalid_request_error",
            "missing_required_parameter",
            Some("model"),
        );
        let r = post_raw(&gw, format!(r#"{{"model":"",{MSGS}}}"#).as_bytes()).await;
        assert_envelope(
            &r,
            400,
            "invalid_request_error",
            "invalid_model_name",
            Some("model"),
        );
        let r = post_raw(&gw, br#"{"model":"chat"}"#).await;
        assert_envelope(
            &r,
            400,
            "invalid_request_error",
            "missing_required_parameter",
            Some("messages"),
        );
        let r = gw
            .request(
                "POST",
                "/v1/embeddings",
                &[("Content-Type", "application/json")],
                br#"{"model":"chat"}"#,
            )
            .await;
        assert_envelope(
            &r,
            400,
            "invalid_request_error",
            "missing_required_parameter",
            Some("input"),
        );
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn bad_model_names_are_rejected_and_never_injected() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        for name in [
            "m\r\nX-Injected: 1",
            "chat\nX-Injected: 1",
            "chat\r",
            "m\u{2028}X",
            "m\u{0000}",
            "../../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "C:\\\\Windows",
            " chat",
            "chat ",
            "-chat",
        ] {
            let body =
                serde_json::json!({"model": name, "messages": [{"role": "user", "content": "hi"}]});
            let r = post_raw(&gw, body.to_string().as_bytes()).await;
            assert_envelope(
                &r,
                400,
                "invalid_request_error",
                "invalid_model_name",
                Some("model"),
            );
            assert!(
                r.header("x-injected").is_none(),
                "{name:?} injected a header"
            );
            assert!(!r.text().contains("X-Injected"), "the name is not echoed");
        }
        let long = "a".repeat(4096);
        let body = serde_json::json!({"model": long, "messages": []});
        let r = post_raw(&gw, body.to_string().as_bytes()).await;
        assert_envelope(
            &r,
            400,
            "invalid_request_error",
            "invalid_model_name",
            Some("model"),
        );
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let body = format!(r#"{{"model":"no-such-model",{MSGS}}}"#);
        let r = gw
            .request(
                "POST",
                "/v1/chat/completions",
                &[
                    ("Content-Type", "application/json"),
                    ("x-request-id", "unk-model"),
                ],
                body.as_bytes(),
            )
            .await;
        assert_envelope(
            &r,
            404,
            "invalid_request_error",
            "model_not_found",
            Some("model"),
        );
        assert_eq!(r.header("x-request-id"), Some("unk-model"));
        assert!(
            !r.text().contains("no-such-model"),
            "the requested name is not echoed"
        );
        assert_eq!(mock.request_count(), 0);
        let log = gw.access_log("unk-model").await;
        assert_eq!(log["status"], "rejected_invalid");
        assert_eq!(log["http_status"], 404);
        assert_eq!(log["model_requested"], "no-such-model");
    })
    .await;
}

#[tokio::test]
async fn unknown_url_and_wrong_method() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        for (method, path) in [
            ("POST", "/v1/chat/completion"),
            ("GET", "/nope"),
            ("POST", "/v2/chat/completions"),
            ("GET", "/v1/models/"),
            ("POST", "/v1/chat/completions/"),
        ] {
            let r = gw
                .request(method, path, &[("Content-Type", "application/json")], b"{}")
                .await;
            assert_envelope(&r, 404, "invalid_request_error", "unknown_url", None);
        }
        for (method, path, allow) in [
            ("GET", "/v1/chat/completions", "POST"),
            ("PUT", "/v1/embeddings", "POST"),
            ("POST", "/v1/models", "GET"),
            ("DELETE", "/health", "GET"),
            ("POST", "/metrics", "GET"),
        ] {
            let r = gw.request(method, path, &[], b"").await;
            assert_envelope(&r, 405, "invalid_request_error", "method_not_allowed", None);
            assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
        }
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

fn limited(mock: &MockUpstream) -> Setup {
    Setup::new(one_model(mock)).server_extra("  limits: { max_body: 64KiB, max_header: 8KiB }")
}

#[tokio::test]
async fn declared_huge_body_is_413_before_reading() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(limited(&mock)).await;
        let mut c = HttpClient::connect(gw.addr()).await.unwrap();
        let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10737418240\r\n\r\n";
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&[b' '; 1024]).await.unwrap();
        let started = Instant::now();
        let r = c.read_response().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "413 without waiting for the body");
        assert_envelope(&r, 413, "invalid_request_error", "request_too_large", None);
        assert!(c.closed_by_server(Duration::from_secs(3)).await, "the connection is closed after the 413");
        assert_eq!(mock.request_count(), 0, "the mock is never contacted");
    })
    .await;
}

#[tokio::test]
async fn body_over_max_body_is_413() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(limited(&mock)).await;
        // Exactly one byte over, with Content-Length.
        let filler = "x".repeat(64 * 1024);
        let body = format!(r#"{{"model":"chat",{MSGS},"pad":"{filler}"}}"#);
        let r = post_raw(&gw, body.as_bytes()).await;
        assert_envelope(&r, 413, "invalid_request_error", "request_too_large", None);

        // Chunked, growing past the limit: refused when it crosses, not at EOF.
        let mut c = HttpClient::connect(gw.addr()).await.unwrap();
        c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let piece = format!("{:x}\r\n{}\r\n", 8192, "y".repeat(8192));
        for _ in 0..10 {
            if c.write_all(piece.as_bytes()).await.is_err() {
                break;
            }
        }
        // No terminating chunk: the gateway must answer without waiting for the end.
        let r = c.read_response().await.unwrap();
        assert_envelope(&r, 413, "invalid_request_error", "request_too_large", None);

        // Under the limit still works.
        let small = format!(r#"{{"model":"chat",{MSGS},"pad":"{}"}}"#, "x".repeat(60 * 1024));
        let r = post_raw(&gw, small.as_bytes()).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(mock.request_count(), 1, "only the request under the limit reached the upstream");
    })
    .await;
}

#[tokio::test]
async fn oversized_headers_are_431() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(limited(&mock)).await;
        let big = "v".repeat(16 * 1024);
        let body = format!(r#"{{"model":"chat",{MSGS}}}"#);
        let r = gw
            .request(
                "POST",
                "/v1/chat/completions",
                &[("Content-Type", "application/json"), ("X-Big", &big)],
                body.as_bytes(),
            )
            .await;
        assert_envelope(
            &r,
            431,
            "invalid_request_error",
            "request_header_too_large",
            None,
        );
        // Many small headers adding up past the limit.
        let names: Vec<(String, String)> = (0..200)
            .map(|i| (format!("X-H{i}"), "z".repeat(60)))
            .collect();
        let refs: Vec<(&str, &str)> = names
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = gw.request("GET", "/v1/models", &refs, b"").await;
        assert!(r.status == 431 || r.status == 400, "status {}", r.status);
        assert!(r.status < 500);
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn upstream_error_text_and_headers_never_reach_the_client() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(
            Reply::json(
                401,
                r#"{"error":{"message":"Incorrect API key provided: sk-CANARY-abc123. See https://internal.example/keys","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            )
            .header("x-upstream-debug", "backend=10.0.0.5 trace=42"),
        );
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let r = gw.post_json("/v1/chat/completions", "d2-1", &crate::chat_body("chat", false)).await;
        assert_envelope(&r, 502, "server_error", "bad_upstream_response", None);
        let all = r.everything();
        for leak in ["sk-CANARY", "internal.example", "x-upstream-debug", "10.0.0.5", "Incorrect API key"] {
            assert!(!all.contains(leak), "{leak} leaked to the client: {all}");
        }
        assert_eq!(mock.request_count(), 1);
        let log = gw.access_log("d2-1").await;
        assert_eq!(log["status"], "upstream_error");
    })
    .await;
}

#[tokio::test]
async fn garbage_from_upstream_is_502() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.push(Reply::json(200, "<html>not json</html>"));
        mock.push(Reply::json(200, r#"{"id":"x","choices":[{"#));
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        for id in ["f8-html", "f8-trunc"] {
            let r = gw
                .post_json("/v1/chat/completions", id, &crate::chat_body("chat", false))
                .await;
            assert_envelope(&r, 502, "server_error", "bad_upstream_response", None);
            let log = gw.access_log(id).await;
            assert_eq!(log["status"], "upstream_error");
        }
        assert_eq!(gw.get("/health").await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn slow_body_is_408() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let setup = Setup::new(one_model(&mock)).server_extra("  limits: { body_timeout: 1s }");
        let gw = Gateway::start(setup).await;
        let mut c = HttpClient::connect(gw.addr()).await.unwrap();
        c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"model\":")
            .await
            .unwrap();
        let started = Instant::now();
        let r = c.read_response().await.unwrap();
        let took = started.elapsed();
        assert_envelope(&r, 408, "invalid_request_error", "request_timeout", None);
        assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(4), "408 after {took:?}");
        assert!(c.closed_by_server(Duration::from_secs(3)).await);
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

/// A1/A3 and contract §4: malformed HTTP framing gets E400_FRAMING (the JSON envelope,
/// `type` invalid_request_error) and the connection closes; nothing reaches the upstream.
#[tokio::test]
#[ignore = "known gap: Pingora rejects unparsable request heads with its own bare 400 before any ProxyHttp hook runs"]
async fn malformed_http_is_400_envelope_and_close() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let cases: [&[u8]; 4] = [
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nx-bad: a\x1bb\r\n\r\n",
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nContent-Length: 11\r\n\r\n0123456789",
        ];
        for raw in cases {
            let shown = String::from_utf8_lossy(raw).into_owned();
            let mut c = HttpClient::connect(gw.addr()).await.unwrap();
            c.write_all(raw).await.unwrap();
            let r = c.read_response().await.unwrap();
            assert_eq!(r.status, 400, "{shown:?}");
            assert!(c.closed_by_server(Duration::from_secs(2)).await, "{shown:?}: connection closed");
            assert!(
                r.header("content-type").is_some_and(|v| v.starts_with("application/json")),
                "{shown:?}: the gateway's envelope, not a bare 400: {:?} {:?}",
                r.headers,
                r.text()
            );
            assert_eq!(r.json()["error"]["type"], "invalid_request_error", "{shown:?}");
        }
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}
