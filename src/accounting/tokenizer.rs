//! Token counts for prompt estimates and for responses whose upstream gave no usage.
//!
//! Called from the exchange only when usage is missing (and, with governance, for token
//! reservations). Uses tiktoken's `cl100k_base`: exact for OpenAI's GPT-3.5/4 family and a
//! close estimate for other models' tokenizers, which is what `usage_source: estimated`
//! and `counted` promise. The encoder is built on first use, so a gateway whose upstreams
//! always report usage never pays its memory.

use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Tokens added per chat message for role and separators (OpenAI's own accounting).
const PER_MESSAGE_OVERHEAD: u64 = 4;

fn encoder() -> Option<&'static CoreBPE> {
    static ENCODER: OnceLock<Option<CoreBPE>> = OnceLock::new();
    ENCODER
        .get_or_init(|| match tiktoken_rs::cl100k_base() {
            Ok(bpe) => Some(bpe),
            Err(e) => {
                tracing::warn!(error = %e, "tokenizer unavailable; estimating 4 bytes per token");
                None
            }
        })
        .as_ref()
}

pub fn count_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match encoder() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        // Without the encoder, ~4 bytes per token is the usual rule for English text.
        None => text.len().div_ceil(4) as u64,
    }
}

/// Prompt tokens of a request body: chat `messages`, completions `prompt`, embeddings
/// `input`, rerank `query` + `documents`; anything else by size.
pub fn estimate_prompt_tokens(body: &Value) -> u64 {
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        return messages.iter().fold(3, |n: u64, m| {
            n.saturating_add(PER_MESSAGE_OVERHEAD)
                .saturating_add(text_tokens(m.get("content")))
        });
    }
    let fields = ["prompt", "input", "query", "documents"];
    if fields.iter().any(|f| body.get(*f).is_some()) {
        return fields
            .iter()
            .fold(0, |n: u64, f| n.saturating_add(text_tokens(body.get(*f))));
    }
    serde_json::to_string(body).map_or(0, |s| s.len().div_ceil(4) as u64)
}

/// A string, an array of strings, or an array of `{type:"text", text}` parts.
fn text_tokens(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => count_tokens(s),
        Some(Value::Array(items)) => items.iter().fold(0, |n: u64, item| {
            let part = match item {
                Value::Object(o) => o.get("text"),
                other => Some(other),
            };
            n.saturating_add(text_tokens(part))
        }),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_real_tokens() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("hello world"), 2);
        assert!(count_tokens(&"word ".repeat(100)) >= 100);
    }

    #[test]
    fn prompt_estimates_by_shape() {
        let chat = json!({"messages":[{"role":"user","content":"hello world"},{"role":"user","content":[{"type":"text","text":"hello world"}]}]});
        assert_eq!(estimate_prompt_tokens(&chat), 3 + 2 * (4 + 2));
        assert_eq!(estimate_prompt_tokens(&json!({"input":["hello world","hello world"]})), 4);
        assert!(estimate_prompt_tokens(&json!({"other":"x".repeat(400)})) >= 100);
    }
}
