//! The upstream HTTP/1.1 request, head and body in one buffer.
//!
//! Used in the exchange's attempt step (≈ Pingora's `upstream_request_filter` plus the request
//! write). Pingora's `HttpSession::write_request_header` flushes the head on its own and the
//! body follows in a second write: two syscalls and, on loopback, two wake-ups of the upstream
//! per request, which the overhead benchmark showed as ~40 µs each on the 2-core machine
//! (docs/performance.md). So the head is serialised here and sent with the body in one write;
//! the response is still read and parsed by Pingora's `HttpSession`.
//!
//! Nothing from the client's headers is copied (reliability E5). Every byte of the head is a
//! value checked when the state was built (endpoint authority and base path, the provider's
//! credential), a fixed string, a number, or the request id, which is
//! `[A-Za-z0-9._-]{1,128}` by construction (`proxy::ctx::request_id`).

use std::fmt;
use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

/// The part of a request head that is the same for every request to one endpoint.
#[derive(Clone)]
pub struct HeadTemplate {
    base_path: String,
    /// `host: …` and, with a credential, `authorization: Bearer …`, each ending in CRLF.
    fixed_lines: Vec<u8>,
}

/// Why an endpoint's head cannot be built: a value that would break the head's framing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("the endpoint's host or path contains a byte not allowed in a request head")]
    Endpoint,
    #[error("the provider's `api_key` contains a space or a control character")]
    Credential,
}

impl HeadTemplate {
    /// Checks and serialises the fixed part once, off the request path.
    pub fn new(
        authority: &str,
        base_path: &str,
        api_key: Option<&str>,
    ) -> Result<HeadTemplate, HeadError> {
        if !authority
            .bytes()
            .chain(base_path.bytes())
            .all(is_token_byte)
        {
            return Err(HeadError::Endpoint);
        }
        let mut fixed_lines = Vec::with_capacity(64);
        fixed_lines.extend_from_slice(b"host: ");
        fixed_lines.extend_from_slice(authority.as_bytes());
        fixed_lines.extend_from_slice(b"\r\n");
        if let Some(key) = api_key {
            if key.is_empty() || !key.bytes().all(is_token_byte) {
                return Err(HeadError::Credential);
            }
            fixed_lines.extend_from_slice(b"authorization: Bearer ");
            fixed_lines.extend_from_slice(key.as_bytes());
            fixed_lines.extend_from_slice(b"\r\n");
        }
        Ok(HeadTemplate {
            base_path: base_path.to_owned(),
            fixed_lines,
        })
    }

    /// `POST {base}{path}` with a JSON `body`: the whole request, ready for one write.
    pub fn request(&self, path: &str, stream: bool, request_id: &str, body: &[u8]) -> Bytes {
        let accept: &[u8] = if stream {
            b"text/event-stream"
        } else {
            b"application/json"
        };
        let mut out = BytesMut::with_capacity(256 + self.fixed_lines.len() + body.len());
        out.put_slice(b"POST ");
        out.put_slice(self.base_path.as_bytes());
        out.put_slice(path.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        out.put_slice(&self.fixed_lines);
        out.put_slice(b"content-type: application/json\r\ncontent-length: ");
        // Writing to a `BytesMut` cannot fail.
        let _ = write!(out, "{}", body.len());
        out.put_slice(b"\r\naccept: ");
        out.put_slice(accept);
        out.put_slice(b"\r\nx-request-id: ");
        out.put_slice(request_id_bytes(request_id));
        out.put_slice(b"\r\n\r\n");
        out.put_slice(body);
        out.freeze()
    }
}

/// The template holds the credential: never print it.
impl fmt::Debug for HeadTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeadTemplate")
            .field("base_path", &self.base_path)
            .finish_non_exhaustive()
    }
}

/// Visible ASCII without spaces: what a host, a path or a bearer token may hold here.
fn is_token_byte(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// The id as bytes, or `-` should a caller ever pass one that could break the head.
fn request_id_bytes(id: &str) -> &[u8] {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { id.as_bytes() } else { b"-" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn head_and_body_form_one_well_framed_request() {
        let t = HeadTemplate::new("api.example.com:8443", "/v1", Some("sk-test")).unwrap();
        let body = br#"{"model":"m","messages":[]}"#;
        let req = t.request("/chat/completions", true, "rid-1", body);
        let (head, rest) = text(&req).split_once("\r\n\r\n").unwrap();
        assert_eq!(rest.as_bytes(), body);
        let mut lines = head.split("\r\n");
        assert_eq!(lines.next(), Some("POST /v1/chat/completions HTTP/1.1"));
        let headers: Vec<&str> = lines.collect();
        assert!(headers.contains(&"host: api.example.com:8443"));
        assert!(headers.contains(&"authorization: Bearer sk-test"));
        assert!(headers.contains(&"accept: text/event-stream"));
        assert!(headers.contains(&"x-request-id: rid-1"));
        let len = format!("content-length: {}", body.len());
        assert!(headers.contains(&len.as_str()));
        // httparse agrees on the framing.
        let mut parsed = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Request::new(&mut parsed);
        let status = r.parse(&req).unwrap();
        assert_eq!(status, httparse::Status::Complete(head.len() + 4));
    }

    #[test]
    fn no_credential_no_authorization_line() {
        let t = HeadTemplate::new("127.0.0.1:9000", "", None).unwrap();
        let req = t.request("/embeddings", false, "x", b"{}");
        assert!(text(&req).starts_with("POST /embeddings HTTP/1.1\r\nhost: 127.0.0.1:9000\r\n"));
        assert!(!text(&req).to_ascii_lowercase().contains("authorization"));
        assert!(text(&req).contains("accept: application/json\r\n"));
    }

    #[test]
    fn bytes_that_could_split_the_head_are_refused() {
        for key in ["a\r\nx-evil: 1", "a b", "tab\there", "", "nul\0"] {
            assert_eq!(
                HeadTemplate::new("h", "", Some(key)).unwrap_err(),
                HeadError::Credential,
                "{key:?}"
            );
        }
        assert_eq!(
            HeadTemplate::new("h", "/v1\r\nx: y", None).unwrap_err(),
            HeadError::Endpoint
        );
        let t = HeadTemplate::new("h", "", None).unwrap();
        let req = t.request("/completions", false, "bad\r\nid", b"{}");
        assert!(text(&req).contains("x-request-id: -\r\n"));
    }

    #[test]
    fn debug_never_shows_the_credential() {
        let t = HeadTemplate::new("h", "/v1", Some("sk-canary-91")).unwrap();
        assert!(!format!("{t:?}").contains("sk-canary-91"));
    }
}
