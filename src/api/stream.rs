//! One OpenAI stream chunk (the data of one SSE event): what it says and its rewrite.
//!
//! Stream step of the exchange: each event is inspected for usage, streamed text and
//! upstream errors, and its `model` is rewritten to the name the client asked for.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::accounting::{self, Usage};
use crate::api::toplevel::TopLevel;

pub enum ChunkKind {
    /// `data: [DONE]`.
    Done,
    Json(ChunkInfo),
    NotJson,
}

/// What the gateway needs from one chunk.
#[derive(Debug, Default)]
pub struct ChunkInfo {
    /// `choices: []` with a `usage` object: the chunk `include_usage` adds.
    pub usage_only: bool,
    /// The chunk's usage, if present and valid.
    pub usage: Option<Usage>,
    /// Text of `choices[*].delta.content` (chat) or `choices[*].text` (completions).
    pub text: String,
    /// Choices in this chunk that carried text: one token each at least.
    pub content_deltas: u64,
    pub has_error: bool,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
}

pub fn inspect_chunk(data: &str) -> ChunkKind {
    if data.trim() == "[DONE]" {
        return ChunkKind::Done;
    }
    let Ok(chunk) = serde_json::from_str::<Chunk>(data) else {
        return ChunkKind::NotJson;
    };
    let usage = chunk
        .usage
        .as_ref()
        .filter(|u| u.is_object())
        .and_then(accounting::usage_from_value);
    let mut info = ChunkInfo {
        usage_only: chunk.choices.as_ref().is_some_and(Vec::is_empty)
            && chunk.usage.as_ref().is_some_and(|u| u.is_object()),
        usage,
        has_error: chunk.error.as_ref().is_some_and(|e| !e.is_null()),
        ..ChunkInfo::default()
    };
    for choice in chunk.choices.unwrap_or_default() {
        let delta = choice.delta.unwrap_or(Delta {
            content: None,
            reasoning_content: None,
        });
        let mut any = false;
        for text in [delta.content, delta.reasoning_content, choice.text]
            .into_iter()
            .flatten()
        {
            if !text.is_empty() {
                info.text.push_str(&text);
                any = true;
            }
        }
        if any {
            info.content_deltas += 1;
        }
    }
    ChunkKind::Json(info)
}

/// The chunk (or a whole non-stream body) with `model` replaced by `client_model`; every
/// other member kept byte for byte. `None` when `data` is not a JSON object.
pub fn rewrite_model(data: &str, client_model: &str) -> Option<String> {
    let mut top = TopLevel::parse(data.as_bytes()).ok()?;
    if top.get("model").is_none() {
        return Some(data.to_string());
    }
    let raw: Box<RawValue> = serde_json::value::to_raw_value(client_model).ok()?;
    top.set("model", raw);
    String::from_utf8(top.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(data: &str) -> ChunkInfo {
        match inspect_chunk(data) {
            ChunkKind::Json(i) => i,
            _ => panic!("not json: {data}"),
        }
    }

    #[test]
    fn deltas_and_usage() {
        let i = info(r#"{"model":"x","choices":[{"index":0,"delta":{"content":"hé"}}]}"#);
        assert_eq!(i.text, "hé");
        assert_eq!(i.content_deltas, 1);
        assert!(!i.usage_only && i.usage.is_none());

        let i = info(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#);
        assert!(i.usage_only);
        assert_eq!(i.usage.unwrap().completion_tokens, 4);

        let i = info(r#"{"choices":[{"text":"abc"}]}"#);
        assert_eq!((i.text.as_str(), i.content_deltas), ("abc", 1));

        let i = info(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#);
        assert_eq!(i.content_deltas, 0);

        assert!(info(r#"{"error":{"message":"boom"}}"#).has_error);
        assert!(matches!(inspect_chunk("[DONE]"), ChunkKind::Done));
        assert!(matches!(inspect_chunk("<html>"), ChunkKind::NotJson));
    }

    #[test]
    fn model_rewrite_keeps_everything_else() {
        let out = rewrite_model(r#"{"id":"c1","model":"/models/q.gguf","choices":[{"delta":{"content":"x"}}]}"#, "chat").unwrap();
        assert_eq!(out, r#"{"id":"c1","model":"chat","choices":[{"delta":{"content":"x"}}]}"#);
        assert_eq!(rewrite_model(r#"{"a":1}"#, "chat").unwrap(), r#"{"a":1}"#);
        assert!(rewrite_model("[1]", "chat").is_none());
    }
}
