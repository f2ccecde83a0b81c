//! The OpenAI request fields the gateway reads, and the upstream body it writes.
//!
//! Request phase: request_filter, body step. The body's top level is parsed as ordered
//! `(key, RawValue)` pairs; only the fields below are decoded and checked, and the upstream
//! body is re-serialised from what was checked: `model` becomes the target's upstream id,
//! `stream_options.include_usage` is forced on for streams, every other value is copied
//! byte for byte (contract §3, architecture §2).

use serde_json::Value;
use serde_json::value::RawValue;

use crate::api::toplevel::TopLevel;
use crate::config::valid_model_name;
use crate::error::GatewayError;

/// Which OpenAI operation a data-plane route performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    ChatCompletions,
    Completions,
    Embeddings,
    Rerank,
}

impl Operation {
    /// Path below the provider's base path (`/v1` for most servers).
    pub fn upstream_path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Rerank => "/rerank",
        }
    }

    /// Whether the operation can stream (and so takes `stream_options`).
    fn streams(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions)
    }

    /// The field that carries the input, required by each operation.
    fn input_field(self) -> (&'static str, InputShape) {
        match self {
            Self::ChatCompletions => ("messages", InputShape::Array),
            Self::Completions => ("prompt", InputShape::StringOrArray),
            Self::Embeddings => ("input", InputShape::StringOrArray),
            Self::Rerank => ("documents", InputShape::Array),
        }
    }
}

#[derive(Clone, Copy)]
enum InputShape {
    Array,
    StringOrArray,
}

/// A checked request: the parsed top level plus the fields the gateway acts on.
#[derive(Debug)]
pub struct ChatRequest {
    pub op: Operation,
    body: TopLevel,
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk.
    pub client_wants_usage: bool,
    pub max_tokens: Option<u64>,
}

impl ChatRequest {
    /// Parses and checks a request body; every failure is the contract's 400 with `param`.
    pub fn parse(op: Operation, bytes: &[u8]) -> Result<ChatRequest, GatewayError> {
        // Not JSON, not an object, or a duplicate key (which could smuggle a second `model`)
        // are all the same client error.
        let mut body = TopLevel::parse(bytes).map_err(|_| GatewayError::InvalidJson)?;
        // A lone UTF-16 surrogate is JSON syntax but no text: upstream decoders disagree on
        // it, so it is refused here (reliability.md B6).
        if body.has_lone_surrogate() {
            return Err(GatewayError::InvalidJson);
        }
        let model = parse_model(&body)?;
        let stream = match decode(&body, "stream")? {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(GatewayError::InvalidType("stream")),
        };
        let mut options = match decode(&body, "stream_options")? {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(o)) => o,
            Some(_) => return Err(GatewayError::InvalidType("stream_options")),
        };
        let client_wants_usage = match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(GatewayError::InvalidType("stream_options")),
        };
        let stream = stream && op.streams();
        if stream {
            // Usage is asked for upstream once here, so every attempt sends the same body
            // apart from `model` (contract §5.3).
            options.insert("include_usage".into(), Value::Bool(true));
            body.set("stream_options", to_raw(&Value::Object(options))?);
        }
        let max_tokens = match parse_count(&body, "max_completion_tokens")? {
            Some(n) => Some(n),
            None => parse_count(&body, "max_tokens")?,
        };
        if let Some(0) = parse_count(&body, "n")? {
            return Err(GatewayError::InvalidValue("n"));
        }
        check_input(&body, op)?;
        Ok(ChatRequest {
            op,
            body,
            model,
            stream,
            client_wants_usage,
            max_tokens,
        })
    }

    /// The body for one upstream attempt: `model` set to the target's upstream id (streams
    /// already carry `stream_options.include_usage: true`, set once by `parse`).
    pub fn upstream_body(&self, upstream_model: &str) -> Result<Vec<u8>, GatewayError> {
        let mut body = self.body.clone();
        body.set("model", to_raw(&Value::String(upstream_model.to_string()))?);
        Ok(body.to_vec())
    }

    /// The whole body as a JSON value, for the tokenizer's prompt estimate. Only called when
    /// usage is missing, so the common path never pays for a full parse.
    pub fn to_value(&self) -> Value {
        serde_json::from_slice(&self.body.to_vec()).unwrap_or(Value::Null)
    }
}

fn parse_model(body: &TopLevel) -> Result<String, GatewayError> {
    match decode(body, "model")? {
        None | Some(Value::Null) => Err(GatewayError::MissingParameter("model")),
        Some(Value::String(s)) if valid_model_name(&s) => Ok(s),
        Some(Value::String(_)) => Err(GatewayError::InvalidModelName),
        Some(_) => Err(GatewayError::InvalidType("model")),
    }
}

/// A non-negative integer field such as `max_tokens` or `n`. Fractions and strings are
/// type errors; negatives and values past 2^32 are value errors (reliability.md B2, B3).
fn parse_count(body: &TopLevel, key: &'static str) -> Result<Option<u64>, GatewayError> {
    match decode(body, key)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                if v > u64::from(u32::MAX) {
                    return Err(GatewayError::InvalidValue(key));
                }
                Ok(Some(v))
            } else if n.as_i64().is_some() {
                Err(GatewayError::InvalidValue(key))
            } else {
                Err(GatewayError::InvalidType(key))
            }
        }
        Some(_) => Err(GatewayError::InvalidType(key)),
    }
}

fn check_input(body: &TopLevel, op: Operation) -> Result<(), GatewayError> {
    let (field, shape) = op.input_field();
    let Some(raw) = body.get(field) else {
        return Err(GatewayError::MissingParameter(field));
    };
    // Only the first byte is needed to know the JSON type; the value itself passes through.
    let first = raw.get().trim_start().as_bytes().first().copied();
    let ok = matches!(
        (shape, first),
        (_, Some(b'[')) | (InputShape::StringOrArray, Some(b'"'))
    );
    if ok {
        Ok(())
    } else {
        Err(GatewayError::InvalidType(field))
    }
}

/// Decodes one top-level value. A value that is syntactically JSON but not representable
/// (a number out of range such as `1e309`) is a value error for that field.
fn decode(body: &TopLevel, key: &'static str) -> Result<Option<Value>, GatewayError> {
    body.get(key)
        .map(|raw| {
            serde_json::from_str::<Value>(raw.get()).map_err(|_| GatewayError::InvalidValue(key))
        })
        .transpose()
}

fn to_raw(v: &Value) -> Result<Box<RawValue>, GatewayError> {
    serde_json::value::to_raw_value(v).map_err(|_| GatewayError::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, GatewayError> {
        ChatRequest::parse(Operation::ChatCompletions, body.as_bytes())
    }

    const MSGS: &str = r#""messages":[{"role":"user","content":"hi"}]"#;

    #[test]
    fn bad_bodies_are_invalid_json() {
        for b in [
            "{",
            "",
            "null",
            "[]",
            "\"str\"",
            r#"{"model":"m",}"#,
            "\u{feff}{}",
        ] {
            assert_eq!(parse(b).unwrap_err(), GatewayError::InvalidJson, "{b:?}");
        }
    }

    #[test]
    fn field_types_are_checked_with_param() {
        let cases = [
            (r#"{"model":123}"#, GatewayError::InvalidType("model")),
            (r#"{"model":["a"]}"#, GatewayError::InvalidType("model")),
            (r#"{"model":{"$ne":1}}"#, GatewayError::InvalidType("model")),
            (r#"{}"#, GatewayError::MissingParameter("model")),
            (r#"{"model":null}"#, GatewayError::MissingParameter("model")),
            (r#"{"model":""}"#, GatewayError::InvalidModelName),
            (
                r#"{"model":"m\r\nX-Injected: 1"}"#,
                GatewayError::InvalidModelName,
            ),
            (
                r#"{"model":"../../etc/passwd"}"#,
                GatewayError::InvalidModelName,
            ),
            (
                r#"{"model":"m","messages":"hi"}"#,
                GatewayError::InvalidType("messages"),
            ),
            (
                r#"{"model":"m"}"#,
                GatewayError::MissingParameter("messages"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse(body).unwrap_err(), want, "{body}");
        }
        let with = |field: &str| format!(r#"{{"model":"m",{MSGS},{field}}}"#);
        let cases = [
            (
                with(r#""stream":"true""#),
                GatewayError::InvalidType("stream"),
            ),
            (
                with(r#""stream_options":5"#),
                GatewayError::InvalidType("stream_options"),
            ),
            (
                with(r#""max_tokens":"10""#),
                GatewayError::InvalidType("max_tokens"),
            ),
            (
                with(r#""max_tokens":1.5"#),
                GatewayError::InvalidType("max_tokens"),
            ),
            (
                with(r#""max_tokens":-1"#),
                GatewayError::InvalidValue("max_tokens"),
            ),
            (
                with(r#""max_tokens":1e309"#),
                GatewayError::InvalidValue("max_tokens"),
            ),
            (
                with(r#""max_tokens":18446744073709551616"#),
                GatewayError::InvalidType("max_tokens"),
            ),
            (with(r#""n":4294967296"#), GatewayError::InvalidValue("n")),
            (with(r#""n":0"#), GatewayError::InvalidValue("n")),
        ];
        for (body, want) in cases {
            let got = parse(&body).unwrap_err();
            assert!(
                got == want
                    || matches!((&got, &want), (GatewayError::InvalidValue(a), GatewayError::InvalidType(b)) if a == b),
                "{body}: {got:?}"
            );
        }
    }

    #[test]
    fn upstream_body_rewrites_model_and_keeps_the_rest_byte_for_byte() {
        let body = r#"{"model":"chat","temperature":0.70,"messages":[{"role":"user","content":"h\u00e9"}],"tools":[{"x":1}]}"#;
        let req = parse(body).unwrap();
        assert!(!req.stream);
        let out = String::from_utf8(req.upstream_body("qwen2.5").unwrap()).unwrap();
        assert_eq!(
            out,
            r#"{"model":"qwen2.5","temperature":0.70,"messages":[{"role":"user","content":"h\u00e9"}],"tools":[{"x":1}]}"#
        );
    }

    #[test]
    fn streams_ask_upstream_for_usage() {
        let req = parse(&format!(r#"{{"model":"chat",{MSGS},"stream":true}}"#)).unwrap();
        assert!(req.stream && !req.client_wants_usage);
        let out: Value = serde_json::from_slice(&req.upstream_body("x").unwrap()).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], true);

        let req = parse(&format!(
            r#"{{"model":"chat",{MSGS},"stream":true,"stream_options":{{"include_usage":true,"other":1}}}}"#
        ))
        .unwrap();
        assert!(req.client_wants_usage);
        let out: Value = serde_json::from_slice(&req.upstream_body("x").unwrap()).unwrap();
        assert_eq!(out["stream_options"]["other"], 1);
    }

    #[test]
    fn embeddings_take_string_or_array_input() {
        assert!(ChatRequest::parse(Operation::Embeddings, br#"{"model":"e","input":"x"}"#).is_ok());
        assert!(
            ChatRequest::parse(Operation::Embeddings, br#"{"model":"e","input":["x"]}"#).is_ok()
        );
        assert_eq!(
            ChatRequest::parse(Operation::Embeddings, br#"{"model":"e","input":5}"#).unwrap_err(),
            GatewayError::InvalidType("input")
        );
    }
}
