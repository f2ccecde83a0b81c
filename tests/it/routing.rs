//! Routing and passthrough (reliability.md E1, E5; contract §3): the upstream sees the
//! target's model id and otherwise the client's bytes; the client sees its own model name
//! and the resolved target in headers; `/v1/models`, `/v1/models/{id}` and `/health` are
//! answered from the config.

use serde_json::{Value, json};

use crate::support::gateway::{Gateway, Setup, one_model};
use crate::support::mock_upstream::{MockUpstream, Reply};
use crate::{assert_envelope, bounded, chat_body};

/// A body with odd-but-valid formatting (`0.70`, escapes, unknown fields, nesting) that must
/// reach the upstream byte for byte except for `model`.
const ODD_BODY: &str = r#"{"model":"gpt-3.5-turbo","temperature":0.70,"messages":[{"role":"user","content":"h\u00e9 \"q\" \\ done"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"integer"}}}}}],"user":"u-1","logit_bias":{"50256":-100},"x_extra":{"nested":[1,2.50,null,true,1e3]},"seed":42}"#;

#[tokio::test]
async fn non_stream_chat_passes_through_with_model_rewritten() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let r = gw
            .request(
                "POST",
                "/v1/chat/completions",
                &[
                    ("Content-Type", "application/json"),
                    ("x-request-id", "route-pass-1"),
                    ("Authorization", "Bearer client-secret-key-123"),
                    ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
                    ("X-Secret", "hop-by-hop-value"),
                    ("Connection", "keep-alive, X-Secret"),
                    ("X-Forwarded-For", "1.2.3.4"),
                ],
                ODD_BODY.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());

        // The client's view.
        assert_eq!(r.header("x-request-id"), Some("route-pass-1"));
        assert_eq!(r.header("x-switchyard-model"), Some("chat"));
        assert_eq!(r.header("x-switchyard-provider"), Some("mock"));
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json"))
        );
        let v = r.json();
        assert_eq!(
            v["model"], "gpt-3.5-turbo",
            "the body's model is the requested name"
        );
        assert_eq!(v["choices"][0]["message"]["content"], "Hello world!");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        assert_eq!(v["id"], "chatcmpl-mock");
        assert_eq!(
            v["system_fingerprint"], "fp_mock",
            "unknown response fields pass through"
        );

        // The upstream's view.
        let reqs = mock.requests();
        assert_eq!(reqs.len(), 1);
        let up = &reqs[0];
        assert_eq!(up.method, "POST");
        assert_eq!(up.path, "/v1/chat/completions");
        let want = ODD_BODY.replacen(r#""model":"gpt-3.5-turbo""#, r#""model":"upstream-id""#, 1);
        assert_eq!(up.body_str(), want, "every field but model byte-identical");
        assert_eq!(up.header("x-request-id"), Some("route-pass-1"));
        assert!(
            up.header("authorization").is_none(),
            "client credential forwarded: {:?}",
            up.header("authorization")
        );
        assert!(up.header("proxy-authorization").is_none());
        assert!(
            up.header("x-secret").is_none(),
            "header named in Connection forwarded"
        );
        let all_headers = format!("{:?}", up.headers);
        assert!(!all_headers.contains("client-secret-key-123"));
        assert_ne!(
            up.header("x-forwarded-for"),
            Some("1.2.3.4"),
            "a client's X-Forwarded-For is not trusted"
        );
        assert_eq!(
            up.header("content-length"),
            Some(want.len().to_string().as_str())
        );
    })
    .await;
}

#[tokio::test]
async fn model_name_and_alias_both_route_and_names_are_case_sensitive() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        for name in ["chat", "gpt-3.5-turbo"] {
            let r = gw
                .post_json(
                    "/v1/chat/completions",
                    &format!("case-{name}"),
                    &chat_body(name, false),
                )
                .await;
            assert_eq!(r.status, 200, "{name}: {}", r.text());
            assert_eq!(r.json()["model"], name);
            assert_eq!(r.header("x-switchyard-model"), Some("chat"));
            let log = gw.access_log(&format!("case-{name}")).await;
            assert_eq!(log["model_requested"], name);
            assert_eq!(log["model"], "chat");
        }
        assert_eq!(mock.request_count(), 2);
        for up in mock.requests() {
            assert_eq!(up.model().as_deref(), Some("upstream-id"));
        }
        for name in ["CHAT", "GPT-3.5-turbo", "Chat"] {
            let r = gw
                .post_json("/v1/chat/completions", "case-x", &chat_body(name, false))
                .await;
            assert_envelope(
                &r,
                404,
                "invalid_request_error",
                "model_not_found",
                Some("model"),
            );
        }
        let r = gw
            .post_json(
                "/v1/chat/completions",
                "case-y",
                &chat_body("gpt-3.5-turbo ", false),
            )
            .await;
        assert_envelope(
            &r,
            400,
            "invalid_request_error",
            "invalid_model_name",
            Some("model"),
        );
        assert_eq!(
            mock.request_count(),
            2,
            "rejected names never reach the upstream"
        );
    })
    .await;
}

#[tokio::test]
async fn invalid_client_request_ids_are_replaced() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let long = "a".repeat(129);
        // Valid HTTP header values that are not valid request ids.
        for bad in ["bad id", "x[2J]", long.as_str(), "semi;colon", "a/b"] {
            let r = gw
                .request(
                    "POST",
                    "/v1/chat/completions",
                    &[("Content-Type", "application/json"), ("x-request-id", bad)],
                    chat_body("chat", false).to_string().as_bytes(),
                )
                .await;
            assert_eq!(r.status, 200);
            let id = r.header("x-request-id").unwrap().to_string();
            assert_ne!(id, bad);
            assert!(
                (1..=128).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "generated id {id:?}"
            );
            let up = mock.requests().pop().unwrap();
            assert_eq!(
                up.header("x-request-id"),
                Some(id.as_str()),
                "upstream gets the same id"
            );
        }
        // A valid one is kept.
        let r = gw
            .post_json(
                "/v1/chat/completions",
                "Ok.id_1-2",
                &chat_body("chat", false),
            )
            .await;
        assert_eq!(r.header("x-request-id"), Some("Ok.id_1-2"));
    })
    .await;
}

fn two_models(mock: &MockUpstream) -> String {
    format!(
        "providers:\n  mock:\n    type: openai\n    endpoints: [\"{url}\"]\n\nmodels:\n  chat:\n    aliases: [gpt-3.5-turbo, default]\n    targets:\n      - {{ provider: mock, model: upstream-id }}\n  embed:\n    targets:\n      - {{ provider: mock, model: embed-upstream }}\n",
        url = mock.url()
    )
}

#[tokio::test]
async fn models_list_and_lookup_are_answered_from_config() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(two_models(&mock))).await;
        let r = gw.get("/v1/models").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.header("content-type")
                .is_some_and(|v| v.starts_with("application/json"))
        );
        assert!(r.header("x-request-id").is_some());
        let v = r.json();
        assert_eq!(v["object"], "list");
        let data = v["data"].as_array().unwrap();
        let mut ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, ["chat", "embed"]);
        let chat = data.iter().find(|m| m["id"] == "chat").unwrap();
        assert_eq!(chat["object"], "model");
        assert!(chat["created"].is_u64());
        assert!(chat["owned_by"].is_string());
        assert_eq!(chat["aliases"], json!(["gpt-3.5-turbo", "default"]));
        assert!(
            !r.text().contains("upstream-id"),
            "upstream ids are not the client's names"
        );

        for id in ["chat", "gpt-3.5-turbo", "default"] {
            let r = gw.get(&format!("/v1/models/{id}")).await;
            assert_eq!(r.status, 200, "{id}: {}", r.text());
            let m = r.json();
            assert_eq!(m["id"], "chat", "lookup by {id}");
            assert_eq!(m["object"], "model");
        }
        let r = gw.get("/v1/models/embed").await;
        assert_eq!(r.json()["id"], "embed");
        assert_eq!(r.json()["aliases"], json!([]));

        let r = gw.get("/v1/models/nope").await;
        assert_envelope(
            &r,
            404,
            "invalid_request_error",
            "model_not_found",
            Some("model"),
        );
        assert_eq!(mock.request_count(), 0, "answered without the upstream");
    })
    .await;
}

#[tokio::test]
async fn health_reports_models() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(two_models(&mock))).await;
        let r = gw.get("/health").await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["models_count"], 2);
        assert!(v["running_models"].is_u64());
        assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(mock.request_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn embeddings_and_completions_go_to_their_upstream_paths() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(two_models(&mock))).await;

        let body = r#"{"model":"embed","input":["a","b"],"encoding_format":"float"}"#;
        let r = gw
            .request(
                "POST",
                "/v1/embeddings",
                &[
                    ("Content-Type", "application/json"),
                    ("x-request-id", "emb-1"),
                ],
                body.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["model"], "embed");
        assert_eq!(v["data"][0]["embedding"], json!([0.25, -0.5, 0.125]));
        assert_eq!(r.header("x-switchyard-model"), Some("embed"));
        let up = mock.requests().pop().unwrap();
        assert_eq!(up.path, "/v1/embeddings");
        assert_eq!(
            up.body_str(),
            r#"{"model":"embed-upstream","input":["a","b"],"encoding_format":"float"}"#
        );
        let log = gw.access_log("emb-1").await;
        assert_eq!(log["prompt_tokens"], 11);
        assert_eq!(log["status"], "ok");

        let body = r#"{"model":"default","prompt":"Once upon","max_tokens":5}"#;
        let r = gw
            .request(
                "POST",
                "/v1/completions",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["model"], "default");
        let up = mock.requests().pop().unwrap();
        assert_eq!(up.path, "/v1/completions");
        assert_eq!(
            up.body_str(),
            r#"{"model":"upstream-id","prompt":"Once upon","max_tokens":5}"#
        );
    })
    .await;
}

#[tokio::test]
async fn upstream_base_path_is_kept() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let yaml = format!(
            "providers:\n  mock:\n    type: openai\n    endpoints: [\"http://{}/openai/v1\"]\n\nmodels:\n  chat:\n    targets:\n      - {{ provider: mock, model: upstream-id }}\n",
            mock.addr()
        );
        let gw = Gateway::start(Setup::new(yaml)).await;
        let r = gw.post_json("/v1/chat/completions", "bp-1", &chat_body("chat", false)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(mock.requests()[0].path, "/openai/v1/chat/completions");
        let host = mock.requests()[0].header("host").map(str::to_string);
        assert_eq!(host.as_deref(), Some(mock.addr().to_string().as_str()));
    })
    .await;
}

/// A client's request body that is a valid stream request keeps `stream: true` upstream.
#[tokio::test]
async fn stream_request_reaches_upstream_with_stream_flag() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::auto());
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let (mut c, head) = gw
            .start_stream("/v1/chat/completions", "sf-1", &chat_body("chat", true))
            .await;
        assert_eq!(head.status, 200);
        let events = c.all_events().await.unwrap();
        assert!(events.last().is_some_and(|e| e.is_done()));
        let up = mock.requests().pop().unwrap();
        let v: Value = up.json();
        assert_eq!(v["stream"], true);
        assert_eq!(v["model"], "upstream-id");
        assert_eq!(up.header("accept"), Some("text/event-stream"));
    })
    .await;
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_stale_ones_never_fail_a_request() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        for i in 0..4 {
            let stream = i % 2 == 1;
            let id = format!("pool-{i}");
            if stream {
                let (mut c, _) = gw
                    .start_stream("/v1/chat/completions", &id, &chat_body("chat", true))
                    .await;
                assert!(c.all_events().await.unwrap().last().unwrap().is_done());
            } else {
                let r = gw
                    .post_json("/v1/chat/completions", &id, &chat_body("chat", false))
                    .await;
                assert_eq!(r.status, 200);
            }
        }
        assert_eq!(mock.request_count(), 4);
        assert_eq!(
            mock.conns().len(),
            1,
            "sequential requests reuse one pooled upstream connection"
        );

        // H5: the upstream closes idle keep-alive connections; the next request must not fail
        // on the stale one, and must not be sent twice.
        mock.set_default(
            Reply::auto().keepalive_close_after(std::time::Duration::from_millis(200)),
        );
        for i in 0..6 {
            let stream = i % 2 == 1;
            let id = format!("stale-{i}");
            if stream {
                let (mut c, head) = gw
                    .start_stream("/v1/chat/completions", &id, &chat_body("chat", true))
                    .await;
                assert_eq!(head.status, 200, "{id}");
                assert!(c.all_events().await.unwrap().last().unwrap().is_done());
            } else {
                let r = gw
                    .post_json("/v1/chat/completions", &id, &chat_body("chat", false))
                    .await;
                assert_eq!(r.status, 200, "{id}: {}", r.text());
            }
            // Wait until the mock has closed the connection that served this request.
            let conn = mock.requests().last().unwrap().conn;
            assert!(
                mock.wait_conn_closed(conn, std::time::Duration::from_secs(5))
                    .await
                    .is_some()
            );
        }
        assert_eq!(mock.request_count(), 10, "no request was sent twice");
    })
    .await;
}

#[tokio::test]
async fn upstream_connection_close_is_respected() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        mock.set_default(Reply::auto().close());
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        for i in 0..4 {
            let r = gw
                .post_json(
                    "/v1/chat/completions",
                    &format!("close-{i}"),
                    &chat_body("chat", i % 2 == 1),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        assert_eq!(mock.request_count(), 4);
        assert_eq!(
            mock.conns().len(),
            4,
            "a connection the upstream closed is not reused"
        );
    })
    .await;
}

/// F11: concurrent streams never see each other's chunks.
#[tokio::test]
async fn concurrent_streams_do_not_cross_talk() {
    bounded(120, async {
        let mock = MockUpstream::start().await;
        mock.respond_with(|req| {
            let who = req.json()["user"].as_str()?.to_string();
            let tokens: Vec<String> = (0..8).map(|i| format!("{who}#{i} ")).collect();
            Some(Reply::sse(tokens, std::time::Duration::from_millis(3)))
        });
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let gw = &gw;
        let mut tasks = Vec::new();
        for n in 0..24 {
            tasks.push(async move {
                let who = format!("client{n}");
                let mut body = chat_body("chat", true);
                body["user"] = json!(who);
                let (mut c, head) = gw.start_stream("/v1/chat/completions", &who, &body).await;
                assert_eq!(head.status, 200);
                let events = c.all_events().await.unwrap();
                assert!(events.last().unwrap().is_done(), "{who} completed");
                let text: String = events
                    .iter()
                    .filter(|e| !e.is_done())
                    .filter_map(|e| {
                        e.json()["choices"][0]["delta"]["content"]
                            .as_str()
                            .map(str::to_string)
                    })
                    .collect();
                let want: String = (0..8).map(|i| format!("{who}#{i} ")).collect();
                assert_eq!(text, want, "{who} saw someone else's tokens");
            });
        }
        let handles: Vec<_> = tasks.into_iter().map(Box::pin).collect();
        join_all(handles).await;
        assert_eq!(mock.request_count(), 24);
    })
    .await;
}

async fn join_all<F: std::future::Future<Output = ()> + Unpin>(mut futs: Vec<F>) {
    std::future::poll_fn(|cx| {
        futs.retain_mut(|f| std::pin::Pin::new(f).poll(cx).is_pending());
        if futs.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

#[tokio::test]
async fn client_keep_alive_and_chunked_request_bodies_work() {
    bounded(60, async {
        let mock = MockUpstream::start().await;
        let gw = Gateway::start(Setup::new(one_model(&mock))).await;
        let mut c = gw.client().await;
        // A stream, then a JSON request, then /v1/models, all on one client connection.
        let body = chat_body("chat", true).to_string();
        c.send("POST", "/v1/chat/completions", &[("Content-Type", "application/json")], body.as_bytes())
            .await
            .unwrap();
        let head = c.read_head().await.unwrap();
        assert_eq!(head.status, 200);
        assert!(
            head.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")),
            "an SSE response on a keep-alive HTTP/1.1 connection must be chunked, not close-delimited: {:?}",
            head.headers
        );
        assert!(c.all_events().await.unwrap().last().unwrap().is_done());
        let body = chat_body("chat", false).to_string();
        c.send("POST", "/v1/chat/completions", &[("Content-Type", "application/json")], body.as_bytes())
            .await
            .unwrap();
        let r = c.read_response().await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        c.send("GET", "/v1/models", &[], b"").await.unwrap();
        assert_eq!(c.read_response().await.unwrap().status, 200);

        // A chunked request body, split mid-JSON.
        let json = chat_body("chat", false).to_string();
        let (a, b) = json.as_bytes().split_at(json.len() / 2);
        let mut raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in [a, b] {
            raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            raw.extend_from_slice(part);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        c.write_all(&raw).await.unwrap();
        let r = c.read_response().await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(mock.requests().last().unwrap().body_str(), json.replacen("\"model\":\"chat\"", "\"model\":\"upstream-id\"", 1));
        assert_eq!(mock.request_count(), 3);
    })
    .await;
}
