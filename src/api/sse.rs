//! Incremental Server-Sent-Events framer for upstream streams, and the writer side.
//!
//! Stream step of the exchange (≈ `response_body_filter`): each upstream read is pushed in,
//! complete events come out. Follows the WHATWG event-stream rules: lines end in LF, CRLF or
//! CR (a CR that ends one read and an LF that starts the next are one line end), `:` lines
//! are comments, `data:` lines join with `\n`, a blank line dispatches. Work is O(n) over
//! the stream: each byte is scanned once.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Largest event accepted from an upstream (reliability.md F9).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The stream terminator OpenAI clients wait for.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("event larger than the limit")]
    EventTooLarge,
    #[error("invalid UTF-8 in the stream")]
    InvalidUtf8,
}

pub struct SseFramer {
    max: usize,
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// The previous read ended in CR: a leading LF of the next read belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    ready: VecDeque<SseEvent>,
}

impl SseFramer {
    pub fn new(max_event_bytes: usize) -> SseFramer {
        SseFramer {
            max: max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            event: None,
            data: String::new(),
            has_data: false,
            ready: VecDeque::new(),
        }
    }

    pub fn push(&mut self, mut chunk: &[u8]) -> Result<(), SseError> {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(i) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.extend_line(&chunk[..i])?;
            self.end_line()?;
            let crlf = chunk[i] == b'\r' && chunk.get(i + 1) == Some(&b'\n');
            if chunk[i] == b'\r' && i + 1 == chunk.len() {
                self.after_cr = true;
            }
            chunk = &chunk[i + if crlf { 2 } else { 1 }..];
        }
        self.extend_line(chunk)
    }

    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// At the end of the stream: `true` if it ended inside an event (an unfinished line or
    /// data not yet dispatched by a blank line), which the caller treats as a cut stream.
    pub fn ended_mid_event(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + self.data.len() + bytes.len() > self.max {
            return Err(SseError::EventTooLarge);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), SseError> {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        let line = std::str::from_utf8(&line).map_err(|_| SseError::InvalidUtf8)?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_string()),
            // `id` and `retry` are not used by OpenAI-style streams; ignored per spec rules.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        self.ready.push_back(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        });
    }
}

/// `data: …\n\n`, one `data:` line per line of `data`.
pub fn encode_data(data: &str) -> Bytes {
    encode_event(&SseEvent {
        event: None,
        data: data.to_string(),
    })
}

pub fn encode_event(ev: &SseEvent) -> Bytes {
    let mut out = BytesMut::with_capacity(ev.data.len() + 16);
    if let Some(name) = &ev.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    for line in ev.data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        ": keep-alive comment\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"h\u{e9}llo\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\" w\u{1F600}rld\"}}]}\r\n\r\n",
        "event: custom\ndata: line one\ndata: line two\n\n",
        "data:{\"no\":\"space\"}\r\r",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
        "data: [DONE]\n\n",
    );

    fn frame_all(parts: &[&[u8]]) -> Vec<SseEvent> {
        let mut f = SseFramer::new(MAX_EVENT_BYTES);
        let mut out = Vec::new();
        for p in parts {
            f.push(p).unwrap();
            while let Some(e) = f.next_event() {
                out.push(e);
            }
        }
        assert!(!f.ended_mid_event());
        out
    }

    #[test]
    fn whole_stream() {
        let evs = frame_all(&[STREAM.as_bytes()]);
        assert_eq!(evs.len(), 6);
        assert_eq!(evs[2].event.as_deref(), Some("custom"));
        assert_eq!(evs[2].data, "line one\nline two");
        assert_eq!(evs[3].data, "{\"no\":\"space\"}");
        assert_eq!(evs[5].data, "[DONE]");
    }

    #[test]
    fn split_at_every_byte_offset() {
        let whole = frame_all(&[STREAM.as_bytes()]);
        let b = STREAM.as_bytes();
        for i in 1..b.len() {
            assert_eq!(frame_all(&[&b[..i], &b[i..]]), whole, "split at {i}");
        }
    }

    #[test]
    fn random_multi_way_splits() {
        let whole = frame_all(&[STREAM.as_bytes()]);
        let b = STREAM.as_bytes();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..500 {
            let mut cuts = Vec::new();
            let ways = 1 + (seed % 7) as usize;
            for _ in 0..ways {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                cuts.push((seed as usize) % b.len());
            }
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut last = 0;
            for c in cuts {
                parts.push(&b[last..c]);
                last = c;
            }
            parts.push(&b[last..]);
            assert_eq!(frame_all(&parts), whole);
        }
    }

    #[test]
    fn oversized_event_fails_before_its_end() {
        let mut f = SseFramer::new(1024);
        f.push(b"data: ").unwrap();
        assert_eq!(f.push(&[b'x'; 2048]), Err(SseError::EventTooLarge));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut f = SseFramer::new(1024);
        assert_eq!(f.push(b"data: \xff\xfe\n\n"), Err(SseError::InvalidUtf8));
    }

    #[test]
    fn incomplete_tail_is_reported() {
        let mut f = SseFramer::new(1024);
        f.push(b"data: {\"a\":1}\n\ndata: {\"b\"").unwrap();
        assert!(f.next_event().is_some());
        assert!(f.ended_mid_event());
    }

    #[test]
    fn encoder_round_trips() {
        let ev = SseEvent { event: Some("x".into()), data: "a\nb".into() };
        let mut f = SseFramer::new(1024);
        f.push(&encode_event(&ev)).unwrap();
        assert_eq!(f.next_event(), Some(ev));
        assert_eq!(&encode_data("{}")[..], b"data: {}\n\n");
    }
}
