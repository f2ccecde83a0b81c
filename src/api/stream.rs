//! One OpenAI chat/completions stream chunk (the data of one SSE event): what it carries
//! and its `model` rewrite.
//!
//! Used in the stream step of the exchange: each upstream event is inspected for usage,
//! generated text and upstream errors (feeding `accounting::StreamTally`), the usage-only
//! chunk is recognised so it can be dropped when the client did not ask for usage
//! (contract §5.3), and `model` is rewritten to the name the client asked for. The rewrite
//! also serves whole non-stream response bodies in the commit step.

use serde_json::Value;

use crate::accounting::{self, Usage};
use crate::api::toplevel::{self, TopLevel, TopLevelError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkKind {
    /// `data: [DONE]`, the end of an OpenAI stream.
    Done,
    /// A JSON object.
    Json(ChunkInfo),
    /// Anything else: not JSON, JSON that is not an object, or nested too deeply.
    NotJson,
}

/// What the gateway needs from one chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkInfo {
    /// No choices (`choices: []` or none) and a `usage` object: the chunk that
    /// `stream_options.include_usage` adds, stripped when the client did not ask for it.
    pub usage_only: bool,
    /// The chunk's usage, if present and valid (`accounting::usage_from_value`).
    pub usage: Option<Usage>,
    /// Generated text of all choices, concatenated (see [`push_choice_text`]).
    pub text: String,
    /// Choices in this chunk that carried generated text: each is at least one token.
    pub content_deltas: u64,
    /// A non-null `error` member: the upstream failed mid-stream.
    pub has_error: bool,
}

/// Classifies one event's data and extracts what the tally and the filter need.
pub fn inspect_chunk(data: &str) -> ChunkKind {
    if data.trim() == "[DONE]" {
        return ChunkKind::Done;
    }
    // serde_json's recursion limit stays on: a deeply nested chunk is an error here.
    let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(data) else {
        return ChunkKind::NotJson;
    };
    let usage_value = chunk.get("usage").filter(|u| u.is_object());
    let choices = chunk.get("choices").and_then(Value::as_array);
    let mut info = ChunkInfo {
        usage_only: usage_value.is_some() && choices.is_none_or(Vec::is_empty),
        usage: usage_value.and_then(accounting::usage_from_value),
        has_error: chunk.get("error").is_some_and(|e| !e.is_null()),
        ..ChunkInfo::default()
    };
    for choice in choices.into_iter().flatten() {
        if push_choice_text(&mut info.text, choice, "delta") {
            info.content_deltas = info.content_deltas.saturating_add(1);
        }
    }
    ChunkKind::Json(info)
}

/// Appends the generated text of one choice; true if there was any. `inner` is `"delta"`
/// for stream chunks and `"message"` for whole responses. Everything the model generated
/// counts, as providers bill it as output: `content` (a string or `{text}` parts),
/// `reasoning_content` / `reasoning`, tool-call `arguments`, and legacy completions `text`.
pub fn push_choice_text(out: &mut String, choice: &Value, inner: &str) -> bool {
    let start = out.len();
    let body = choice.get(inner);
    let field = |name: &str| body.and_then(|b| b.get(name));
    match field("content") {
        Some(Value::String(s)) => out.push_str(s),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .for_each(|t| out.push_str(t)),
        _ => {}
    }
    for name in ["reasoning_content", "reasoning"] {
        if let Some(s) = field(name).and_then(Value::as_str) {
            out.push_str(s);
        }
    }
    let calls = field("tool_calls").and_then(Value::as_array);
    for call in calls.into_iter().flatten() {
        if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
            out.push_str(args);
        }
    }
    if let Some(s) = choice.get("text").and_then(Value::as_str) {
        out.push_str(s);
    }
    out.len() > start
}

/// The chunk (or a whole non-stream body) with a top-level `model` replaced by
/// `client_model`; every other member's value kept byte for byte and in order (whitespace
/// between members is dropped). Unchanged if there is no `model`. `None` if `data` is not
/// one JSON object (or has duplicate keys, or is nested too deeply).
pub fn rewrite_model(data: &str, client_model: &str) -> Option<String> {
    let mut top = TopLevel::parse(data.as_bytes()).ok()?;
    if top.get("model").is_none() {
        return Some(data.to_string());
    }
    top.set("model", toplevel::raw_string(client_model));
    Some(top.to_json())
}

/// [`rewrite_model`] for a body held as bytes, with the reason when it is not an object.
pub fn rewrite_model_bytes(body: &[u8], client_model: &str) -> Result<Vec<u8>, TopLevelError> {
    let mut top = TopLevel::parse(body)?;
    if top.get("model").is_none() {
        return Ok(body.to_vec());
    }
    top.set("model", toplevel::raw_string(client_model));
    Ok(top.to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::accounting::{StreamTally, UsageSource};
    use crate::api::sse::{self, SseFramer};

    fn info(data: &str) -> ChunkInfo {
        match inspect_chunk(data) {
            ChunkKind::Json(i) => i,
            other => panic!("not json: {data}: {other:?}"),
        }
    }

    #[test]
    fn content_deltas_are_extracted() {
        let i = info(r#"{"model":"x","choices":[{"index":0,"delta":{"content":"hé"}}]}"#);
        assert_eq!((i.text.as_str(), i.content_deltas), ("hé", 1));
        assert!(!i.usage_only && i.usage.is_none() && !i.has_error);

        let two = r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}},{"delta":{"content":""}}]}"#;
        let i = info(two);
        assert_eq!((i.text.as_str(), i.content_deltas), ("ab", 2));

        let i = info(r#"{"choices":[{"text":"abc","index":0}]}"#);
        assert_eq!((i.text.as_str(), i.content_deltas), ("abc", 1));

        let i = info(r#"{"choices":[{"delta":{"role":"assistant","content":null}}]}"#);
        assert_eq!((i.text.as_str(), i.content_deltas), ("", 0));

        let tool = r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]}}]}"#;
        assert_eq!(info(tool).text, "{\"a\"");
        let reasoning = r#"{"choices":[{"delta":{"reasoning_content":"think"}}]}"#;
        assert_eq!(info(reasoning).content_deltas, 1);
    }

    #[test]
    fn usage_only_chunk_is_recognised() {
        let u = r#"{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#;
        let i = info(u);
        assert!(i.usage_only);
        assert_eq!(
            i.usage,
            Some(Usage {
                prompt_tokens: 9,
                completion_tokens: 4,
                cached_tokens: 0
            })
        );
        // Still stripped when its numbers are invalid, but not trusted.
        let i = info(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":-4}}"#);
        assert!(i.usage_only && i.usage.is_none());
        // OpenAI's `usage: null` on ordinary chunks is not a usage chunk.
        let i = info(r#"{"choices":[],"usage":null}"#);
        assert!(!i.usage_only && i.usage.is_none());
        // Usage riding on a content chunk (continuous usage stats) is read, not stripped.
        let i = info(
            r#"{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        );
        assert!(!i.usage_only && i.usage.is_some());
    }

    #[test]
    fn done_errors_and_garbage() {
        assert_eq!(inspect_chunk("[DONE]"), ChunkKind::Done);
        assert_eq!(inspect_chunk(" [DONE] "), ChunkKind::Done);
        assert!(info(r#"{"error":{"message":"boom"}}"#).has_error);
        assert!(!info(r#"{"error":null,"choices":[]}"#).has_error);
        for bad in ["<html>", "", "[1]", "\"s\"", "42", "{\"a\":", "{} {}"] {
            assert_eq!(inspect_chunk(bad), ChunkKind::NotJson, "{bad}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(inspect_chunk(&deep), ChunkKind::NotJson);
    }

    #[test]
    fn model_rewrite_keeps_everything_else() {
        let src = r#"{"id":"c1","model":"/models/q.gguf","choices":[{"delta":{"content":"x","model":"inner"}}],"n":1.50}"#;
        let out = rewrite_model(src, "chat").unwrap();
        assert_eq!(
            out,
            r#"{"id":"c1","model":"chat","choices":[{"delta":{"content":"x","model":"inner"}}],"n":1.50}"#
        );
        assert_eq!(
            rewrite_model(r#"{"model":"a"}"#, "we\"ird\n").unwrap(),
            r#"{"model":"we\"ird\n"}"#
        );
        assert_eq!(rewrite_model(r#"{"a": 1}"#, "chat").unwrap(), r#"{"a": 1}"#);
        assert!(rewrite_model("[1]", "chat").is_none());
        assert!(rewrite_model(r#"{"model":"a","model":"b"}"#, "chat").is_none());
        let deep = format!("{{\"model\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(rewrite_model(&deep, "chat").is_none());
    }

    #[test]
    fn model_rewrite_of_a_whole_body() {
        let body = b"{\n  \"id\": \"r\",\n  \"model\": \"gpt-x-2024\",\n  \"usage\": {\"prompt_tokens\": 1}\n}\n";
        let out = rewrite_model_bytes(body, "gpt").unwrap();
        assert_eq!(
            out,
            br#"{"id":"r","model":"gpt","usage":{"prompt_tokens": 1}}"#
        );
        assert_eq!(
            rewrite_model_bytes(b"nope", "m"),
            Err(TopLevelError::NotJson)
        );
        assert_eq!(
            rewrite_model_bytes(b"[]", "m"),
            Err(TopLevelError::NotObject)
        );
    }

    /// Framer → inspect → rewrite → tally, as the exchange runs them (reliability.md F1/F3).
    #[test]
    fn a_stream_end_to_end() {
        let mut wire = Vec::new();
        for word in ["Hel", "lo", " w\u{f6}rld", "\u{1F600}"] {
            let c = format!(r#"{{"model":"up","choices":[{{"delta":{{"content":"{word}"}}}}]}}"#);
            wire.extend_from_slice(&sse::encode_data(&c));
        }
        let usage =
            r#"{"model":"up","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":4}}"#;
        wire.extend_from_slice(&sse::encode_data(usage));
        wire.extend_from_slice(sse::DONE);

        for split in 1..wire.len() {
            let mut framer = SseFramer::new(sse::MAX_EVENT_BYTES);
            let mut tally = StreamTally::default();
            let mut forwarded = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                framer.push(part).unwrap();
                while let Some(ev) = framer.next_event() {
                    match inspect_chunk(&ev.data) {
                        ChunkKind::Done => forwarded.push("[DONE]".to_string()),
                        ChunkKind::NotJson => panic!("bad event {ev:?}"),
                        ChunkKind::Json(i) => {
                            tally.observe(&i);
                            if !i.usage_only {
                                forwarded.push(rewrite_model(&ev.data, "client").unwrap());
                            }
                        }
                    }
                }
            }
            assert_eq!(framer.finish(), Ok(None));
            assert_eq!(forwarded.len(), 5, "split {split}");
            assert!(
                forwarded[..4]
                    .iter()
                    .all(|f| f.contains(r#""model":"client""#))
            );
            assert!(forwarded[2].contains(" w\u{f6}rld"));
            let (u, src) = tally.settle(100);
            assert_eq!(src, UsageSource::Upstream);
            assert_eq!((u.prompt_tokens, u.completion_tokens), (5, 4));
        }
    }
}
