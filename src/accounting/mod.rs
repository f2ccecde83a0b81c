//! Usage accounting: usage read from the upstream, counted from stream deltas, or
//! estimated with a tokenizer, each marked with its source (contract §5.3, §6), and its
//! cost. Never a silent zero: a row without upstream usage carries counted or estimated
//! numbers, and `UsageSource::None` only when there was nothing to count at all.
//!
//! Fed by the exchange's stream step (one [`StreamTally`] per stream) and commit step
//! ([`settle_response`] for whole bodies); the result is read by the `logging` phase for
//! the ledger row and metrics.

pub mod tokenizer;

use serde::Serialize;
use serde_json::Value;

use crate::api::stream::{self, ChunkInfo};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens served from the provider's cache; part of `prompt_tokens`.
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The upstream's own `usage`, valid.
    Upstream,
    /// Completion tokens counted from what was streamed; prompt estimated.
    Counted,
    /// Both estimated with the tokenizer (non-stream responses without valid usage).
    Estimated,
    /// Nothing to count: no usage, no text, no prompt estimate.
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

/// Largest count accepted from an upstream: past 2^53 a JSON number is not exact in the
/// many clients that read it as a double, so such a value is a bug or an attack.
const MAX_COUNT: u64 = 1 << 53;

/// Streamed text kept for counting; past this, the older part is counted and dropped so a
/// long stream holds bounded memory. Most streams stay under it and are never tokenized
/// unless their usage is missing.
const TEXT_KEEP: usize = 256 * 1024;

/// Reads an OpenAI `usage` object of a generation (chat or completions): `prompt_tokens`
/// and `completion_tokens` required, `prompt_tokens_details.cached_tokens` optional. Any
/// count that is not an integer in 0..=2^53, or cached tokens above the prompt, makes the
/// whole usage invalid (reliability.md F5): the caller then counts or estimates instead.
/// `total_tokens` is ignored.
pub fn usage_from_value(v: &Value) -> Option<Usage> {
    parse_usage(v, true)
}

/// As [`usage_from_value`], for embeddings and rerank, whose usage has no
/// `completion_tokens`: absent means 0, but present and invalid still rejects the usage.
pub fn prompt_usage_from_value(v: &Value) -> Option<Usage> {
    parse_usage(v, false)
}

fn parse_usage(v: &Value, completion_required: bool) -> Option<Usage> {
    let obj = v.as_object()?;
    let completion = match obj.get("completion_tokens") {
        None if !completion_required => 0,
        c => count(c?)?,
    };
    // Providers omit the details or send `null` for them when nothing was cached.
    let cached = match obj
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
    {
        None | Some(Value::Null) => 0,
        Some(c) => count(c)?,
    };
    let usage = Usage {
        prompt_tokens: count(obj.get("prompt_tokens")?)?,
        completion_tokens: completion,
        cached_tokens: cached,
    };
    (usage.cached_tokens <= usage.prompt_tokens).then_some(usage)
}

/// A token count: an integer JSON number in 0..=2^53 (`-5`, `1e30`, `"12"`, `null`, `1.5`
/// are all rejected).
fn count(v: &Value) -> Option<u64> {
    v.as_u64().filter(|&n| n <= MAX_COUNT)
}

/// Per-stream tally: the latest valid upstream usage, the streamed text and the number of
/// content-bearing deltas, for counting when the usage never comes.
#[derive(Debug, Default)]
pub struct StreamTally {
    upstream: Option<Usage>,
    /// Streamed text not yet counted.
    text: String,
    /// Tokens of text already counted and dropped (see `TEXT_KEEP`).
    counted: u64,
    deltas: u64,
}

impl StreamTally {
    pub fn observe(&mut self, info: &ChunkInfo) {
        if let Some(u) = info.usage {
            // Some servers send cumulative usage on every chunk: the latest is the total.
            self.upstream = Some(u);
        }
        self.text.push_str(&info.text);
        self.deltas = self.deltas.saturating_add(info.content_deltas);
        if self.text.len() > TEXT_KEEP {
            self.fold_text();
        }
    }

    pub fn has_upstream_usage(&self) -> bool {
        self.upstream.is_some()
    }

    /// Upstream usage if any came (`Upstream`). Otherwise completion tokens counted from
    /// the streamed text, and at least one per content-bearing delta (a tokenizer for
    /// another vocabulary may count fewer than the deltas seen), with the caller's prompt
    /// estimate (`Counted`); `None` only if there is neither text nor a prompt estimate.
    pub fn settle(&self, prompt_estimate: u64) -> (Usage, UsageSource) {
        if let Some(u) = self.upstream {
            return (u, UsageSource::Upstream);
        }
        let counted = self
            .counted
            .saturating_add(tokenizer::count_tokens(&self.text))
            .max(self.deltas);
        let usage = Usage {
            prompt_tokens: prompt_estimate,
            completion_tokens: counted,
            cached_tokens: 0,
        };
        (usage, source_if_any(&usage, UsageSource::Counted))
    }

    /// Counts and drops the older part of the text, cut just before a whitespace so the
    /// cut rarely splits a token (BPE words start at their leading space).
    fn fold_text(&mut self) {
        let keep_from = floor_char_boundary(&self.text, self.text.len() - TEXT_KEEP / 2);
        let cut = self.text[..keep_from]
            .rfind(char::is_whitespace)
            .filter(|&i| i > 0)
            .unwrap_or_else(|| floor_char_boundary(&self.text, keep_from));
        self.counted = self
            .counted
            .saturating_add(tokenizer::count_tokens(&self.text[..cut]));
        self.text.drain(..cut);
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Usage of a whole non-stream response body. Valid upstream usage → `Upstream`. Otherwise
/// completion tokens are the tokenizer's count of the choices' text and the prompt is the
/// caller's estimate → `Estimated` (with 0 completion tokens when the body has no text,
/// e.g. embeddings); `None` only when both are 0.
pub fn settle_response(body: &Value, prompt_estimate: u64) -> (Usage, UsageSource) {
    let choices = body.get("choices").and_then(Value::as_array);
    let upstream = body.get("usage").and_then(|u| match choices {
        Some(_) => usage_from_value(u),
        None => prompt_usage_from_value(u),
    });
    if let Some(u) = upstream {
        return (u, UsageSource::Upstream);
    }
    let mut text = String::new();
    for choice in choices.into_iter().flatten() {
        stream::push_choice_text(&mut text, choice, "message");
    }
    let usage = Usage {
        prompt_tokens: prompt_estimate,
        completion_tokens: tokenizer::count_tokens(&text),
        cached_tokens: 0,
    };
    (usage, source_if_any(&usage, UsageSource::Estimated))
}

fn source_if_any(usage: &Usage, source: UsageSource) -> UsageSource {
    if usage.prompt_tokens == 0 && usage.completion_tokens == 0 {
        UsageSource::None
    } else {
        source
    }
}

/// USD for `usage` at per-token prices. Cached tokens are part of the prompt and billed at
/// the cached price instead of the input price.
pub fn cost_usd(
    usage: &Usage,
    input_per_token: f64,
    output_per_token: f64,
    cached_input_per_token: f64,
) -> f64 {
    cost_parts(
        usage,
        input_per_token,
        output_per_token,
        cached_input_per_token,
    )
    .total()
}

/// A request's cost, split as the reference API's `cost` block reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostParts {
    /// Prompt tokens, cached ones at the cached price.
    pub input_usd: f64,
    pub output_usd: f64,
}

impl CostParts {
    pub fn total(&self) -> f64 {
        self.input_usd + self.output_usd
    }
}

pub fn cost_parts(
    usage: &Usage,
    input_per_token: f64,
    output_per_token: f64,
    cached_input_per_token: f64,
) -> CostParts {
    let cached = usage.cached_tokens.min(usage.prompt_tokens);
    let uncached = usage.prompt_tokens.saturating_sub(cached);
    // u64 → f64 rounds above 2^53 but cannot overflow: the cost stays finite.
    CostParts {
        input_usd: uncached as f64 * input_per_token + cached as f64 * cached_input_per_token,
        output_usd: usage.completion_tokens as f64 * output_per_token,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn usage(p: u64, c: u64, cached: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            cached_tokens: cached,
        }
    }

    fn delta(text: &str) -> ChunkInfo {
        ChunkInfo {
            text: text.into(),
            content_deltas: u64::from(!text.is_empty()),
            ..ChunkInfo::default()
        }
    }

    #[test]
    fn valid_usage_is_read() {
        let v = json!({"prompt_tokens":5,"completion_tokens":7,"total_tokens":99,
                       "prompt_tokens_details":{"cached_tokens":2}});
        assert_eq!(usage_from_value(&v), Some(usage(5, 7, 2)));
        let v = json!({"prompt_tokens":5,"completion_tokens":0,"prompt_tokens_details":null});
        assert_eq!(usage_from_value(&v), Some(usage(5, 0, 0)));
        let max = json!({"prompt_tokens":MAX_COUNT,"completion_tokens":MAX_COUNT});
        assert_eq!(usage_from_value(&max), Some(usage(MAX_COUNT, MAX_COUNT, 0)));
    }

    #[test]
    fn any_invalid_count_rejects_the_whole_usage() {
        let bad = [
            json!(-5),
            json!(1e30),
            json!("12"),
            json!(null),
            json!(1.5),
            json!(5.0),
            json!(MAX_COUNT + 1),
            json!(u64::MAX),
        ];
        for b in &bad {
            let c = json!({"prompt_tokens":1,"completion_tokens":b});
            assert_eq!(usage_from_value(&c), None, "completion {b}");
            let p = json!({"prompt_tokens":b,"completion_tokens":1});
            assert_eq!(usage_from_value(&p), None, "prompt {b}");
        }
        let cached = json!({"prompt_tokens":1,"completion_tokens":1,
                            "prompt_tokens_details":{"cached_tokens":-1}});
        assert_eq!(usage_from_value(&cached), None);
        let over = json!({"prompt_tokens":1,"completion_tokens":1,
                          "prompt_tokens_details":{"cached_tokens":2}});
        assert_eq!(usage_from_value(&over), None);
        assert_eq!(usage_from_value(&json!({"completion_tokens":1})), None);
        assert_eq!(usage_from_value(&json!({"prompt_tokens":1})), None);
        assert_eq!(usage_from_value(&json!([1, 2])), None);
    }

    #[test]
    fn prompt_only_usage_for_embeddings() {
        let v = json!({"prompt_tokens":8,"total_tokens":8});
        assert_eq!(prompt_usage_from_value(&v), Some(usage(8, 0, 0)));
        let v = json!({"prompt_tokens":8,"completion_tokens":null});
        assert_eq!(prompt_usage_from_value(&v), None);
    }

    #[test]
    fn stream_without_usage_is_counted_never_zero() {
        let mut t = StreamTally::default();
        for _ in 0..37 {
            t.observe(&delta(" tok"));
        }
        t.observe(&delta(""));
        let (u, src) = t.settle(11);
        assert_eq!(src, UsageSource::Counted);
        assert_eq!(u, usage(11, 37, 0));
        assert!(!t.has_upstream_usage());
    }

    #[test]
    fn deltas_bound_the_count_from_below() {
        let mut t = StreamTally::default();
        // One token of text spread over 5 deltas (e.g. a server that splits bytes).
        for piece in ["h", "e", "l", "l", "o"] {
            t.observe(&delta(piece));
        }
        assert_eq!(t.settle(0).0.completion_tokens, 5);
    }

    #[test]
    fn stream_with_usage_is_upstream_and_latest_wins() {
        let mut t = StreamTally::default();
        t.observe(&delta("x"));
        for n in 1..=3 {
            t.observe(&ChunkInfo {
                usage: Some(usage(3, n, 0)),
                ..ChunkInfo::default()
            });
        }
        assert!(t.has_upstream_usage());
        assert_eq!(t.settle(99), (usage(3, 3, 0), UsageSource::Upstream));
    }

    #[test]
    fn empty_stream_is_counted_zero_or_none() {
        let t = StreamTally::default();
        assert_eq!(t.settle(12), (usage(12, 0, 0), UsageSource::Counted));
        assert_eq!(t.settle(0), (usage(0, 0, 0), UsageSource::None));
    }

    #[test]
    fn long_stream_keeps_bounded_text_and_exact_enough_count() {
        let mut t = StreamTally::default();
        let n = 80_000;
        for _ in 0..n {
            t.observe(&delta(" word"));
        }
        assert!(t.text.len() <= TEXT_KEEP);
        // " word" is one cl100k token; folding must not lose or add any here.
        assert_eq!(t.settle(0).0.completion_tokens, n);
    }

    #[test]
    fn long_stream_without_whitespace_folds_on_char_boundaries() {
        let mut t = StreamTally::default();
        for _ in 0..100_000 {
            t.observe(&delta("\u{4e2d}\u{6587}\u{1F600}"));
        }
        assert!(t.text.len() <= TEXT_KEEP);
        assert!(t.settle(0).0.completion_tokens >= 100_000);
    }

    #[test]
    fn response_usage_valid_is_upstream() {
        let body = json!({"choices":[{"message":{"content":"hi"}}],
                          "usage":{"prompt_tokens":4,"completion_tokens":1}});
        assert_eq!(
            settle_response(&body, 50),
            (usage(4, 1, 0), UsageSource::Upstream)
        );
        let emb =
            json!({"data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":6,"total_tokens":6}});
        assert_eq!(
            settle_response(&emb, 50),
            (usage(6, 0, 0), UsageSource::Upstream)
        );
    }

    #[test]
    fn malformed_response_usage_is_estimated() {
        for bad in [json!(-5), json!(1e30), json!("12"), json!(null)] {
            let body = json!({"choices":[{"message":{"content":"hello there world"}}],
                              "usage":{"prompt_tokens":1,"completion_tokens":bad}});
            assert_eq!(
                settle_response(&body, 4),
                (usage(4, 3, 0), UsageSource::Estimated)
            );
        }
    }

    #[test]
    fn response_text_from_every_shape() {
        let body = json!({"choices":[
            {"message":{"content":[{"type":"text","text":"hello world"}],
                        "reasoning_content":" hello world",
                        "tool_calls":[{"function":{"arguments":"hello world"}}]}},
            {"text":"hello world"}
        ]});
        assert_eq!(settle_response(&body, 1).0.completion_tokens, 8);
    }

    #[test]
    fn response_without_text_or_usage() {
        let body = json!({"choices":[{"message":{"content":null}}]});
        assert_eq!(
            settle_response(&body, 7),
            (usage(7, 0, 0), UsageSource::Estimated)
        );
        assert_eq!(
            settle_response(&json!({}), 0),
            (usage(0, 0, 0), UsageSource::None)
        );
    }

    #[test]
    fn cost_bills_cached_at_cached_price() {
        let u = usage(1_000_000, 1_000_000, 500_000);
        let c = cost_usd(&u, 0.15e-6, 0.6e-6, 0.075e-6);
        assert!((c - (0.075 + 0.0375 + 0.6)).abs() < 1e-9, "{c}");
        assert_eq!(cost_usd(&Usage::default(), 1.0, 1.0, 1.0), 0.0);
    }

    #[test]
    fn cost_and_tally_saturate_at_u64_max() {
        let huge = usage(u64::MAX, u64::MAX, u64::MAX);
        let c = cost_usd(&huge, 1.0, 1.0, 1.0);
        assert!(c.is_finite() && c > 0.0);
        // Cached above prompt is clamped, not subtracted into an overflow.
        let odd = usage(1, 0, u64::MAX);
        assert_eq!(cost_usd(&odd, 1.0, 0.0, 0.5), 0.5);
        let mut t = StreamTally::default();
        t.observe(&ChunkInfo {
            content_deltas: u64::MAX,
            ..ChunkInfo::default()
        });
        t.observe(&ChunkInfo {
            content_deltas: u64::MAX,
            ..ChunkInfo::default()
        });
        assert_eq!(t.settle(u64::MAX).0, usage(u64::MAX, u64::MAX, 0));
    }

    #[test]
    fn source_names_match_the_ledger() {
        assert_eq!(UsageSource::Counted.as_str(), "counted");
        assert_eq!(
            serde_json::to_string(&UsageSource::Estimated).unwrap(),
            "\"estimated\""
        );
        assert_eq!(UsageSource::None.as_str(), "none");
        assert_eq!(UsageSource::Upstream.as_str(), "upstream");
    }
}
