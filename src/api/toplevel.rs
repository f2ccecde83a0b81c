//! The top level of a JSON object as ordered `(key, RawValue)` pairs.
//!
//! Used in request_filter (request body: rewrite `model`, set `stream_options`) and in the
//! exchange's commit step (response body: rewrite `model`). Only the top level is decoded;
//! every nested value is kept byte for byte, so upstream runs exactly what was checked and
//! every field the gateway does not read passes untouched (architecture §2). serde_json's
//! recursion limit stays on: a deeply nested value is an error, never a stack overflow.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopLevelError {
    #[error("not valid JSON")]
    NotJson,
    #[error("not a JSON object")]
    NotObject,
    #[error("duplicate key")]
    DuplicateKey,
}

/// An object's members in their original order.
#[derive(Debug, Clone)]
pub struct TopLevel {
    members: Vec<(String, Box<RawValue>)>,
}

impl TopLevel {
    pub fn parse(bytes: &[u8]) -> Result<TopLevel, TopLevelError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            // Distinguish "valid JSON but not an object" from garbage for the message only.
            return Err(if serde_json::from_slice::<de::IgnoredAny>(bytes).is_ok() {
                TopLevelError::NotObject
            } else {
                TopLevelError::NotJson
            });
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let members = de
            .deserialize_map(MembersVisitor)
            .map_err(|e| {
                if e.to_string().starts_with(DUPLICATE) {
                    TopLevelError::DuplicateKey
                } else {
                    TopLevelError::NotJson
                }
            })?;
        de.end().map_err(|_| TopLevelError::NotJson)?;
        if nesting_depth(bytes) > MAX_DEPTH {
            return Err(TopLevelError::NotJson);
        }
        Ok(TopLevel { members })
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Replaces the value in place, or appends the member.
    pub fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.members.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.members.push((key.to_string(), value)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.members.retain(|(k, _)| k != key);
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let len: usize = self.members.iter().map(|(k, v)| k.len() + v.get().len() + 4).sum();
        let mut out = Vec::with_capacity(len + 2);
        out.push(b'{');
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Keys were decoded from JSON strings; re-encoding them cannot fail.
            out.extend_from_slice(&serde_json::to_vec(k).unwrap_or_default());
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        out.push(b'}');
        out
    }
}

const DUPLICATE: &str = "duplicate key";

/// serde_json's own recursion limit. Raw values are skipped without it (its skip is
/// iterative), so the limit is checked here: a body nested deeper than any real request
/// is refused before an upstream parser has to deal with it (reliability.md B4).
const MAX_DEPTH: usize = 128;

/// Deepest `[`/`{` nesting outside strings, in one pass over already-validated JSON.
fn nesting_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<(String, Box<RawValue>)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(String, Box<RawValue>)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            // Two `model` keys would let a client authorise one model and run another.
            if members.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let value: Box<RawValue> = map.next_value()?;
            members.push((key, value));
        }
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_bytes_and_order() {
        let src = br#"{"b":1.50,"a":{"x":[1, 2]},"c":"\u00e9"}"#;
        let t = TopLevel::parse(src).unwrap();
        assert_eq!(t.to_vec(), br#"{"b":1.50,"a":{"x":[1, 2]},"c":"\u00e9"}"#);
        assert_eq!(t.get("a").unwrap().get(), r#"{"x":[1, 2]}"#);
    }

    #[test]
    fn set_replaces_in_place_or_appends() {
        let mut t = TopLevel::parse(br#"{"model":"a","x":1}"#).unwrap();
        t.set("model", RawValue::from_string("\"b\"".into()).unwrap());
        t.set("y", RawValue::from_string("true".into()).unwrap());
        t.remove("x");
        assert_eq!(t.to_vec(), br#"{"model":"b","y":true}"#);
    }

    #[test]
    fn errors() {
        assert_eq!(TopLevel::parse(b"[]").unwrap_err(), TopLevelError::NotObject);
        assert_eq!(TopLevel::parse(b"null").unwrap_err(), TopLevelError::NotObject);
        assert_eq!(TopLevel::parse(b"{").unwrap_err(), TopLevelError::NotJson);
        assert_eq!(TopLevel::parse(b"").unwrap_err(), TopLevelError::NotJson);
        assert_eq!(TopLevel::parse(br#"{"a":1} x"#).unwrap_err(), TopLevelError::NotJson);
        assert_eq!(
            TopLevel::parse(br#"{"model":"a","model":"b"}"#).unwrap_err(),
            TopLevelError::DuplicateKey
        );
        assert_eq!(TopLevel::parse(b"{\"a\":\"\xff\"}").unwrap_err(), TopLevelError::NotJson);
        // A lone surrogate escape is valid JSON syntax (RFC 8259 §8.2) and passes through.
        assert!(TopLevel::parse(br#"{"a":"\ud800"}"#).is_ok());
        assert!(TopLevel::parse(br#"{"a":"[[[\"{{"}"#).is_ok());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"metadata\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(TopLevel::parse(deep.as_bytes()).unwrap_err(), TopLevelError::NotJson);
    }
}
