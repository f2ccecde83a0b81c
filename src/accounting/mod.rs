//! Usage accounting: usage read from upstream, counted from stream deltas, or estimated
//! with a tokenizer, and marked with its source (contract §5.3, §6). Never a silent zero.
//!
//! Fed by the exchange's stream and commit steps; read by the `logging` phase.

pub mod tokenizer;

use serde::Serialize;
use serde_json::Value;

use crate::api::stream::ChunkInfo;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    Upstream,
    Counted,
    Estimated,
    None,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Counted => "counted",
            Self::Estimated => "estimated",
            Self::None => "none",
        }
    }
}

/// Largest count accepted from upstream: past 2^53 a JSON number is not exact.
const MAX_COUNT: u64 = 1 << 53;

/// Reads an OpenAI `usage` object. Any count that is not a non-negative integer ≤ 2^53
/// makes the whole usage invalid (reliability.md F5): the caller then counts or estimates.
/// `completion_tokens` may be absent (embeddings report prompt tokens only).
pub fn usage_from_value(v: &Value) -> Option<Usage> {
    let count = |v: Option<&Value>, required: bool| -> Option<u64> {
        match v {
            None | Some(Value::Null) if !required => Some(0),
            Some(Value::Number(n)) => n.as_u64().filter(|&n| n <= MAX_COUNT),
            _ => None,
        }
    };
    let obj = v.as_object()?;
    Some(Usage {
        prompt_tokens: count(obj.get("prompt_tokens"), true)?,
        completion_tokens: count(obj.get("completion_tokens"), false)?,
        cached_tokens: count(
            obj.get("prompt_tokens_details")
                .and_then(|d| d.get("cached_tokens")),
            false,
        )?,
    })
}

/// Per-stream tally: the latest valid upstream usage, and the streamed text for counting.
#[derive(Debug, Default)]
pub struct StreamTally {
    upstream: Option<Usage>,
    text: String,
    deltas: u64,
}

impl StreamTally {
    pub fn observe(&mut self, info: &ChunkInfo) {
        if let Some(u) = info.usage {
            self.upstream = Some(u);
        }
        self.text.push_str(&info.text);
        self.deltas = self.deltas.saturating_add(info.content_deltas);
    }

    pub fn has_upstream_usage(&self) -> bool {
        self.upstream.is_some()
    }

    /// Upstream usage when it came; otherwise completion tokens counted from what was
    /// streamed (the tokenizer's count, and at least one per content delta) and the prompt
    /// from the caller's estimate.
    pub fn settle(&self, prompt_estimate: u64) -> (Usage, UsageSource) {
        if let Some(u) = self.upstream {
            return (u, UsageSource::Upstream);
        }
        let counted = tokenizer::count_tokens(&self.text).max(self.deltas);
        let usage = Usage {
            prompt_tokens: prompt_estimate,
            completion_tokens: counted,
            cached_tokens: 0,
        };
        (usage, UsageSource::Counted)
    }
}

/// Usage of a whole non-stream response: upstream's if valid, else estimated from the
/// response text and the prompt estimate.
pub fn settle_response(body: &Value, prompt_estimate: u64) -> (Usage, UsageSource) {
    if let Some(u) = body.get("usage").and_then(usage_from_value) {
        return (u, UsageSource::Upstream);
    }
    let mut text = String::new();
    for choice in body
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for t in [
            choice.pointer("/message/content"),
            choice.get("text"),
        ]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        {
            text.push_str(t);
        }
    }
    let usage = Usage {
        prompt_tokens: prompt_estimate,
        completion_tokens: tokenizer::count_tokens(&text),
        cached_tokens: 0,
    };
    (usage, UsageSource::Estimated)
}

/// USD for `usage`; cached tokens are part of the prompt and billed at the cached price.
pub fn cost_usd(usage: &Usage, input: f64, output: f64, cached_input: f64) -> f64 {
    let cached = usage.cached_tokens.min(usage.prompt_tokens);
    let uncached = usage.prompt_tokens.saturating_sub(cached);
    uncached as f64 * input + cached as f64 * cached_input + usage.completion_tokens as f64 * output
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_validation() {
        let u = usage_from_value(&json!({"prompt_tokens":5,"completion_tokens":7,"prompt_tokens_details":{"cached_tokens":2}})).unwrap();
        assert_eq!(u, Usage { prompt_tokens: 5, completion_tokens: 7, cached_tokens: 2 });
        assert_eq!(usage_from_value(&json!({"prompt_tokens":5,"total_tokens":5})).unwrap().completion_tokens, 0);
        for bad in [json!(-5), json!(1e30), json!("12"), json!(1.5), json!(u64::MAX)] {
            assert!(usage_from_value(&json!({"prompt_tokens":1,"completion_tokens":bad})).is_none());
        }
        assert!(usage_from_value(&json!({"completion_tokens":1})).is_none());
    }

    #[test]
    fn stream_without_usage_is_counted_never_zero() {
        let mut t = StreamTally::default();
        for _ in 0..37 {
            t.observe(&ChunkInfo { text: "tok".into(), content_deltas: 1, ..ChunkInfo::default() });
        }
        let (u, src) = t.settle(11);
        assert_eq!(src, UsageSource::Counted);
        assert!(u.completion_tokens >= 37);
        assert_eq!(u.prompt_tokens, 11);
    }

    #[test]
    fn stream_with_usage_is_upstream() {
        let mut t = StreamTally::default();
        t.observe(&ChunkInfo { text: "x".into(), content_deltas: 1, ..ChunkInfo::default() });
        t.observe(&ChunkInfo { usage: Some(Usage { prompt_tokens: 3, completion_tokens: 1, cached_tokens: 0 }), ..ChunkInfo::default() });
        assert_eq!(t.settle(99), (Usage { prompt_tokens: 3, completion_tokens: 1, cached_tokens: 0 }, UsageSource::Upstream));
    }

    #[test]
    fn malformed_response_usage_is_estimated() {
        let body = json!({"choices":[{"message":{"content":"hello there world"}}],"usage":{"prompt_tokens":1,"completion_tokens":-5}});
        let (u, src) = settle_response(&body, 4);
        assert_eq!(src, UsageSource::Estimated);
        assert!(u.completion_tokens > 0);
    }

    #[test]
    fn cost_saturates_and_bills_cached_at_cached_price() {
        let u = Usage { prompt_tokens: 1_000_000, completion_tokens: 1_000_000, cached_tokens: 500_000 };
        let c = cost_usd(&u, 0.15e-6, 0.6e-6, 0.075e-6);
        assert!((c - (0.075 + 0.0375 + 0.6)).abs() < 1e-9);
        let huge = Usage { prompt_tokens: u64::MAX, completion_tokens: u64::MAX, cached_tokens: u64::MAX };
        assert!(cost_usd(&huge, 1.0, 1.0, 1.0).is_finite());
    }
}
