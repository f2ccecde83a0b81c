//! The top level of a JSON object as ordered `(key, RawValue)` pairs.
//!
//! Used in `request_filter` (request body: rewrite `model`, set `stream_options`) and in
//! the exchange's commit and stream steps (response body and stream chunks: rewrite
//! `model`). Only the top level is decoded; every value is kept byte for byte, so the
//! upstream runs exactly what was checked and every field the gateway does not read passes
//! untouched. Keys are decoded (so `"mod\u0065l"` and `"model"` are the same key and count
//! as a duplicate) and written back in canonical JSON escaping.
//!
//! Nesting is bounded: serde_json skips a raw value with an iterative loop that has no
//! depth limit, so this module checks the depth itself and rejects anything deeper than
//! serde_json's own recursion limit. A body that passes here can therefore be decoded into
//! a `serde_json::Value` later without a recursion error, and nothing recurses on it.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Deepest nesting accepted, counting the top-level object as 1: the deepest that
/// serde_json's default recursion limit (128, kept on everywhere in the gateway) accepts.
pub const MAX_DEPTH: usize = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopLevelError {
    #[error("not valid JSON")]
    NotJson,
    #[error("not a JSON object")]
    NotObject,
    #[error("duplicate key")]
    DuplicateKey,
    #[error("JSON nested too deeply")]
    TooDeep,
}

/// An object's members in their original order.
#[derive(Debug, Clone, Default)]
pub struct TopLevel {
    members: Vec<(String, Box<RawValue>)>,
}

impl TopLevel {
    /// Parses `bytes` as one JSON object (surrounding whitespace allowed, nothing else).
    pub fn parse(bytes: &[u8]) -> Result<TopLevel, TopLevelError> {
        let first = bytes
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        if first != Some(&b'{') {
            return Err(classify_non_object(bytes));
        }
        let mut duplicate = false;
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let members = de
            .deserialize_map(MembersVisitor {
                duplicate: &mut duplicate,
            })
            .map_err(|_| {
                if duplicate {
                    TopLevelError::DuplicateKey
                } else {
                    TopLevelError::NotJson
                }
            })?;
        de.end().map_err(|_| TopLevelError::NotJson)?;
        // The values are valid JSON now, so the byte scan below sees real structure.
        if members
            .iter()
            .any(|(_, v)| 1 + nesting_depth(v.get().as_bytes()) > MAX_DEPTH)
        {
            return Err(TopLevelError::TooDeep);
        }
        Ok(TopLevel { members })
    }

    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.members
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// Replaces the value in place (keeping the member's position), or appends the member.
    pub fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.members.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.members.push((key.to_string(), value)),
        }
    }

    /// Removes the member, returning its value if it was there.
    pub fn remove(&mut self, key: &str) -> Option<Box<RawValue>> {
        let i = self.members.iter().position(|(k, _)| k == key)?;
        Some(self.members.remove(i).1)
    }

    /// True if any string value holds a `\uD800`-`\uDFFF` escape that is not half of a
    /// surrogate pair. Such strings are valid JSON syntax (RFC 8259 §8.2) and pass `parse`,
    /// but they decode to no Unicode text, so a caller may refuse them (reliability.md B6).
    pub fn has_lone_surrogate(&self) -> bool {
        self.members
            .iter()
            .any(|(_, v)| lone_surrogate(v.get().as_bytes()))
    }

    /// Member keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(k, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The object as compact JSON: members in order, values exactly as parsed or set.
    pub fn to_json(&self) -> String {
        let len: usize = self
            .members
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = String::with_capacity(len + 2);
        out.push('{');
        for (i, (k, v)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_json_string(&mut out, k);
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        out
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.to_json().into_bytes()
    }
}

/// A JSON string value for `s`, for use with [`TopLevel::set`].
pub fn raw_string(s: &str) -> Box<RawValue> {
    // Serialising a `&str` cannot fail; the default (`null`) only keeps this total.
    serde_json::value::to_raw_value(s).unwrap_or_default()
}

/// Tells valid-but-not-an-object from garbage (only the error message differs).
fn classify_non_object(bytes: &[u8]) -> TopLevelError {
    match serde_json::from_slice::<IgnoredAny>(bytes) {
        Ok(_) => TopLevelError::NotObject,
        Err(_) => TopLevelError::NotJson,
    }
}

/// Greatest depth of `[`/`{` nesting in valid JSON text; brackets inside strings skipped.
fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
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

/// Scans valid JSON text for an unpaired surrogate `\u` escape. Keys need no check: they
/// were decoded into `String`s, which serde_json refuses for lone surrogates.
fn lone_surrogate(json: &[u8]) -> bool {
    let (mut i, mut in_string, mut high) = (0, false, false);
    while let Some(&b) = json.get(i) {
        let mut step = 1;
        let unit = match (in_string, b) {
            (false, b'"') => {
                in_string = true;
                None
            }
            (false, _) => None,
            (true, b'\\') if json.get(i + 1) == Some(&b'u') => {
                step = 6;
                hex4(json.get(i + 2..i + 6))
            }
            (true, b'\\') => {
                step = 2;
                Some(0)
            }
            (true, b'"') => {
                in_string = false;
                Some(0)
            }
            (true, _) => Some(0),
        };
        if let Some(u) = unit {
            // A high surrogate must be followed at once by a low one, and only by one.
            let low = (0xDC00..=0xDFFF).contains(&u);
            if high != low {
                return true;
            }
            high = (0xD800..=0xDBFF).contains(&u);
        }
        i += step;
    }
    high
}

fn hex4(digits: Option<&[u8]>) -> Option<u32> {
    let s = std::str::from_utf8(digits?).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Appends `s` as a JSON string literal. Infallible, unlike `serde_json::to_string`'s API.
fn write_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, so both slices end on character boundaries.
        out.push_str(&s[start..i]);
        start = i + 1;
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(short);
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Collects members in order; serde_json's `preserve_order` stays off crate-wide.
struct MembersVisitor<'a> {
    /// Set when the error returned is a duplicate key, so `parse` can name it.
    duplicate: &'a mut bool,
}

impl<'de> Visitor<'de> for MembersVisitor<'_> {
    type Value = Vec<(String, Box<RawValue>)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(String, Box<RawValue>)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            // Two `model` keys would let a client authorise one model and run another:
            // the gateway and the upstream may each pick a different one.
            if members.iter().any(|(k, _)| *k == key) {
                *self.duplicate = true;
                return Err(de::Error::custom("duplicate key"));
            }
            let value: Box<RawValue> = map.next_value()?;
            members.push((key, value));
        }
        Ok(members)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn round_trip_keeps_value_bytes_and_order() {
        let src = br#" {"b":1.50,"a":{"x":[1, 2]} , "c":"\u00e9","d":1e400} "#;
        let t = TopLevel::parse(src).unwrap();
        assert_eq!(
            String::from_utf8(t.to_vec()).unwrap(),
            r#"{"b":1.50,"a":{"x":[1, 2]},"c":"\u00e9","d":1e400}"#
        );
        assert_eq!(t.get("a").unwrap().get(), r#"{"x":[1, 2]}"#);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["b", "a", "c", "d"]);
        assert!(t.get("z").is_none());
    }

    #[test]
    fn set_replaces_in_place_or_appends_and_remove_drops() {
        let mut t = TopLevel::parse(br#"{"model":"a","x":1,"z":null}"#).unwrap();
        t.set("model", raw("\"b\""));
        t.set("y", raw("true"));
        assert_eq!(t.remove("x").unwrap().get(), "1");
        assert!(t.remove("x").is_none());
        assert_eq!(t.to_vec(), br#"{"model":"b","z":null,"y":true}"#);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn keys_are_decoded_and_written_canonically() {
        let t = TopLevel::parse(br#"{"mod\u0065l":"m","q\"\n\u0001":1}"#).unwrap();
        assert_eq!(t.get("model").unwrap().get(), r#""m""#);
        let back = t.to_vec();
        assert_eq!(back, br#"{"model":"m","q\"\n\u0001":1}"#);
        // What we write parses back to the same keys.
        let again = TopLevel::parse(&back).unwrap();
        assert_eq!(again.keys().collect::<Vec<_>>(), ["model", "q\"\n\u{1}"]);
    }

    #[test]
    fn raw_string_escapes() {
        let s = raw_string("a\"b\\c\u{7}é");
        assert_eq!(s.get(), r#""a\"b\\c\u0007é""#);
        let back: String = serde_json::from_str(s.get()).unwrap();
        assert_eq!(back, "a\"b\\c\u{7}é");
    }

    #[test]
    fn errors_are_classified() {
        use TopLevelError::*;
        let cases: &[(&[u8], TopLevelError)] = &[
            (b"[]", NotObject),
            (b"null", NotObject),
            (b" \"s\" ", NotObject),
            (b"{", NotJson),
            (b"", NotJson),
            (b"   ", NotJson),
            (br#"{"a":1} x"#, NotJson),
            (br#"{"a":1}{"b":2}"#, NotJson),
            (br#"{"a":1,}"#, NotJson),
            (b"{\"a\":\"\xff\"}", NotJson),
            (b"\x0c{}", NotJson),
            (br#"{"model":"a","model":"b"}"#, DuplicateKey),
            (br#"{"model":"a","mod\u0065l":"b"}"#, DuplicateKey),
        ];
        for (input, want) in cases {
            assert_eq!(
                TopLevel::parse(input).unwrap_err(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(TopLevel::parse(b"{}").unwrap().is_empty());
    }

    #[test]
    fn lone_surrogates_parse_but_are_reported() {
        let cases: &[(&str, bool)] = &[
            (r#"{"a":"\ud800"}"#, true),
            (r#"{"a":"\udc00x"}"#, true),
            (r#"{"a":"\ud800\u0041"}"#, true),
            (r#"{"a":"\ud800\ud800\udc00"}"#, true),
            (r#"{"a":["ok","\ud83d"]}"#, true),
            (r#"{"a":"\ud83d\ude00"}"#, false),
            (r#"{"a":"\\ud800"}"#, false),
            (r#"{"a":"\u00e9\n","b":{"ud800":1}}"#, false),
            (r#"{"a":"[[[\"{{"}"#, false),
        ];
        for (doc, lone) in cases {
            let t = TopLevel::parse(doc.as_bytes()).unwrap();
            assert_eq!(t.has_lone_surrogate(), *lone, "{doc}");
            // Agrees with serde_json's decoder.
            let decodes = serde_json::from_str::<serde_json::Value>(doc).is_ok();
            assert_eq!(decodes, !lone, "{doc}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!(
            "{{\"metadata\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(
            TopLevel::parse(deep.as_bytes()).unwrap_err(),
            TopLevelError::TooDeep
        );
        let objs = format!(
            "{{\"m\":{}1{}}}",
            "{\"a\":".repeat(10_000),
            "}".repeat(10_000)
        );
        assert_eq!(
            TopLevel::parse(objs.as_bytes()).unwrap_err(),
            TopLevelError::TooDeep
        );
    }

    #[test]
    fn depth_limit_matches_serde_json() {
        // Accepted here exactly when serde_json::Value accepts it, so later decoding of
        // any member cannot hit the recursion limit.
        for inner in [120, 126, 127, 128, 130] {
            let doc = format!("{{\"m\":{}{}}}", "[".repeat(inner), "]".repeat(inner));
            let ours = TopLevel::parse(doc.as_bytes()).is_ok();
            let theirs = serde_json::from_str::<serde_json::Value>(&doc).is_ok();
            assert_eq!(ours, theirs, "depth {inner}");
        }
        // Brackets inside strings are not nesting.
        let doc = format!("{{\"m\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(TopLevel::parse(doc.as_bytes()).is_ok());
    }
}
