//! Token counts for prompt estimates and for responses whose upstream gave no usage.
//!
//! Used before the upstream call (token reservations for rate limits and budgets) and at
//! settle time, only when the upstream's usage is missing or invalid (ledger rows marked
//! `counted` or `estimated`). Exact usage always comes from the upstream; these numbers are
//! estimates and are never shown to clients. The tokenizer is tiktoken's `cl100k_base`:
//! exact for OpenAI's GPT-3.5/4 family, a close estimate for other models' vocabularies.
//! The encoder is built on first use, so a gateway whose upstreams always report usage
//! never pays its start-up time or memory.

use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Tokens per chat message for its role and separators (OpenAI's published accounting).
const PER_MESSAGE_OVERHEAD: u64 = 4;
/// Tokens that prime the assistant's reply in every chat request.
const REPLY_PRIMING: u64 = 3;
/// A non-text content part (an image, audio): OpenAI's smallest image cost. The true cost
/// depends on size and detail, which the gateway does not decode; this keeps it non-zero.
const MEDIA_PART_TOKENS: u64 = 85;

fn encoder() -> Option<&'static CoreBPE> {
    static ENCODER: OnceLock<Option<CoreBPE>> = OnceLock::new();
    ENCODER
        .get_or_init(|| match tiktoken_rs::cl100k_base() {
            Ok(bpe) => Some(bpe),
            Err(e) => {
                // The vocabulary is compiled into the crate, so this should not happen; if
                // it does, counts fall back to bytes/4 rather than failing requests.
                tracing::warn!(error = %e, "tokenizer unavailable; estimating 4 bytes per token");
                None
            }
        })
        .as_ref()
}

/// Tokens in `text` under `cl100k_base`; `ceil(bytes / 4)` if the encoder is unavailable.
pub fn count_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match encoder() {
        Some(bpe) => to_u64(bpe.encode_ordinary(text).len()),
        None => bytes_estimate(text.len()),
    }
}

/// Prompt tokens of a request body: chat `messages`, completions `prompt`, embeddings
/// `input`, rerank `query` + `documents`; any other body by size (bytes / 4).
///
/// Cheap by design, as it may run on every request for reservations: only the first
/// `TOKENIZE_BUDGET` bytes of text are tokenized (~10 MB/s), the rest counted as bytes/4.
pub fn estimate_prompt_tokens(body: &Value) -> u64 {
    let mut est = Estimator {
        budget: TOKENIZE_BUDGET,
    };
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        return est.chat(messages, body.get("tools"));
    }
    let fields = ["prompt", "input", "query", "documents"];
    if fields.iter().any(|f| body.get(*f).is_some()) {
        return fields
            .iter()
            .fold(0, |n: u64, f| n.saturating_add(est.text(body.get(*f))));
    }
    json_size_estimate(body)
}

/// Text bytes per request that get the real tokenizer; past it, bytes/4 (a few ms at most).
const TOKENIZE_BUDGET: usize = 64 * 1024;

struct Estimator {
    /// Bytes that may still be tokenized.
    budget: usize,
}

impl Estimator {
    fn count(&mut self, text: &str) -> u64 {
        if text.len() > self.budget {
            return bytes_estimate(text.len());
        }
        self.budget -= text.len();
        count_tokens(text)
    }

    fn chat(&mut self, messages: &[Value], tools: Option<&Value>) -> u64 {
        let per_message = messages.iter().fold(REPLY_PRIMING, |n, m| {
            let calls = m.get("tool_calls").and_then(Value::as_array);
            let args = calls
                .into_iter()
                .flatten()
                .filter_map(|c| c.pointer("/function/arguments"))
                .fold(0, |a: u64, v| a.saturating_add(self.text(Some(v))));
            n.saturating_add(PER_MESSAGE_OVERHEAD)
                .saturating_add(self.text(m.get("content")))
                .saturating_add(self.text(m.get("name")))
                .saturating_add(args)
        });
        // Tool schemas count as prompt, but tokenizing large JSON schemas is not worth it
        // for an estimate: their size is used instead.
        per_message.saturating_add(tools.map_or(0, json_size_estimate))
    }

    /// A string; an array of strings, token ids, or `{type:"text", text}` parts; or an
    /// array of such arrays (batched completions and embeddings). Recursion is bounded by
    /// the parsed body's depth, which serde_json limits to 128.
    fn text(&mut self, v: Option<&Value>) -> u64 {
        match v {
            Some(Value::String(s)) => self.count(s),
            // A pre-tokenized prompt: one id is one token.
            Some(Value::Number(_)) => 1,
            Some(Value::Array(items)) => items
                .iter()
                .fold(0, |n: u64, item| n.saturating_add(self.part(item))),
            _ => 0,
        }
    }

    fn part(&mut self, item: &Value) -> u64 {
        let Value::Object(part) = item else {
            return self.text(Some(item));
        };
        match part.get("text") {
            Some(text) => self.text(Some(text)),
            None => MEDIA_PART_TOKENS,
        }
    }
}

fn json_size_estimate(v: &Value) -> u64 {
    serde_json::to_string(v).map_or(0, |s| bytes_estimate(s.len()))
}

fn bytes_estimate(len: usize) -> u64 {
    to_u64(len.div_ceil(4))
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_real_tokens() {
        assert!(encoder().is_some(), "cl100k_base must load");
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("hello world"), 2);
        assert_eq!(count_tokens(&" word".repeat(100)), 100);
        // Multi-byte text is not counted by bytes.
        let cjk = "\u{4e2d}\u{6587}".repeat(50);
        assert!(count_tokens(&cjk) < cjk.len() as u64);
    }

    #[test]
    fn chat_estimate_counts_messages_parts_and_overhead() {
        let chat = json!({"messages":[
            {"role":"user","content":"hello world"},
            {"role":"user","content":[{"type":"text","text":"hello world"},
                                      {"type":"image_url","image_url":{"url":"data:x"}}]},
            {"role":"assistant","content":null,
             "tool_calls":[{"function":{"name":"f","arguments":"hello world"}}]}
        ]});
        let want = REPLY_PRIMING + 3 * PER_MESSAGE_OVERHEAD + 2 + 2 + MEDIA_PART_TOKENS + 2;
        assert_eq!(estimate_prompt_tokens(&chat), want);
    }

    #[test]
    fn tools_add_to_the_chat_estimate() {
        let plain = json!({"messages":[{"role":"user","content":"hi"}]});
        let with_tools = json!({"messages":[{"role":"user","content":"hi"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{}}}]});
        assert!(estimate_prompt_tokens(&with_tools) > estimate_prompt_tokens(&plain) + 10);
    }

    #[test]
    fn completions_and_embeddings_shapes() {
        assert_eq!(estimate_prompt_tokens(&json!({"prompt":"hello world"})), 2);
        assert_eq!(
            estimate_prompt_tokens(&json!({"prompt":["hello world","hello world"]})),
            4
        );
        assert_eq!(estimate_prompt_tokens(&json!({"prompt":[1,2,3]})), 3);
        assert_eq!(estimate_prompt_tokens(&json!({"input":[[1,2],[3,4,5]]})), 5);
        assert_eq!(estimate_prompt_tokens(&json!({"input":"hello world"})), 2);
        assert_eq!(
            estimate_prompt_tokens(
                &json!({"query":"hello world","documents":["hello world",{"text":"hello world"}]})
            ),
            6
        );
    }

    #[test]
    fn text_past_the_budget_is_estimated_by_size() {
        // 100 KiB of one repeated word: the tokenizer would say ~1 token per 5 bytes,
        // the size estimate 1 per 4 bytes.
        let big = " word".repeat(20 * 1024);
        let exact = count_tokens(&big);
        assert_eq!(exact, 20 * 1024);
        let body = json!({ "prompt": big });
        assert_eq!(estimate_prompt_tokens(&body), bytes_estimate(big.len()));
        // Small texts after a big one still use the tokenizer while budget remains.
        let body = json!({ "prompt": [big, "hello world"] });
        assert_eq!(estimate_prompt_tokens(&body), bytes_estimate(big.len()) + 2);
    }

    #[test]
    fn unknown_bodies_fall_back_to_size() {
        let body = json!({"other":"x".repeat(400)});
        let size = serde_json::to_string(&body).unwrap().len() as u64;
        assert_eq!(estimate_prompt_tokens(&body), size.div_ceil(4));
        assert_eq!(bytes_estimate(0), 0);
        assert_eq!(bytes_estimate(5), 2);
    }
}
