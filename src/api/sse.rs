//! Server-Sent Events: the incremental framer for upstream streams, and the writer side.
//!
//! Used in the stream step of the exchange (after the upstream's response headers, for
//! `stream: true` requests): each upstream read is pushed into an [`SseFramer`], complete
//! events come out, and the gateway writes its own events with [`encode_event`]. Parsing
//! follows the WHATWG event-stream rules: lines end in LF, CRLF or CR (a CR ending one read
//! and an LF starting the next are one line end), `:` lines are comments, `data:` lines
//! join with `\n`, a blank line dispatches, an event without data is dropped, and a leading
//! BOM is ignored. Unlike a browser, the framer is strict about what it forwards: invalid
//! UTF-8 and events over the size limit are errors, because the gateway relays the bytes.
//! Each input byte is scanned once and copied at most twice, so work is O(n) per stream.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

/// Largest event accepted from an upstream (reliability.md F9): 1 MiB.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// The stream terminator OpenAI clients wait for.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// A line buffer that grew past this is freed after use rather than kept for the stream.
const LINE_KEEP: usize = 64 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event. `event` is `None` for the default type (`message`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("event larger than the limit")]
    EventTooLarge,
    #[error("invalid UTF-8 in the stream")]
    InvalidUtf8,
    #[error("stream ended inside a line")]
    Truncated,
}

/// Incremental event-stream parser. Feed reads with [`push`](Self::push), take events with
/// [`next_event`](Self::next_event), and call [`finish`](Self::finish) at end of stream.
/// After an error every further call returns the same error.
#[derive(Debug)]
pub struct SseFramer {
    max: usize,
    /// Bytes of the current line not yet ended (only when a line spans reads).
    line: Vec<u8>,
    /// The previous read ended in CR: an LF starting the next read belongs to it.
    after_cr: bool,
    /// No line processed yet: a BOM at its start is dropped.
    first_line: bool,
    event: Option<String>,
    data: String,
    /// Distinguishes "one empty `data:` line" (dispatched as "") from "no data" (dropped).
    has_data: bool,
    ready: VecDeque<SseEvent>,
    failed: Option<SseError>,
}

impl SseFramer {
    pub fn new(max_event_bytes: usize) -> SseFramer {
        SseFramer {
            max: max_event_bytes,
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            event: None,
            data: String::new(),
            has_data: false,
            ready: VecDeque::new(),
            failed: None,
        }
    }

    /// Parses one read. Events it completes wait in [`next_event`](Self::next_event).
    /// Fails as soon as the pending event passes the size limit, not at its end.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), SseError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let result = self.push_inner(chunk);
        if let Err(e) = result {
            self.failed = Some(e);
        }
        result
    }

    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    /// True if the stream so far stops inside an event: an unended line, or `data:` lines
    /// not yet dispatched by a blank line.
    pub fn ended_mid_event(&self) -> bool {
        !self.line.is_empty() || self.has_data
    }

    /// Call at end of stream, after taking the queued events. `Ok(None)`: it ended cleanly
    /// between events. `Err(Truncated)`: it ended inside a line (a cut event, never to be
    /// forwarded). `Ok(Some(ev))`: it ended after whole `data:` lines but before the blank
    /// line that dispatches them; the WHATWG rules discard such an event, so the caller
    /// should treat the stream as cut too, and may at most accept a final `[DONE]` from it.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if !self.line.is_empty() {
            self.failed = Some(SseError::Truncated);
            return Err(SseError::Truncated);
        }
        let pending = self.has_data.then(|| self.take_event());
        self.event = None;
        Ok(pending)
    }

    fn push_inner(&mut self, mut chunk: &[u8]) -> Result<(), SseError> {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(i) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.end_line(&chunk[..i])?;
            let end = match (chunk[i], chunk.get(i + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) => {
                    self.after_cr = true;
                    1
                }
                _ => 1,
            };
            chunk = &chunk[i + end..];
        }
        self.check_size(chunk.len())?;
        self.line.extend_from_slice(chunk);
        Ok(())
    }

    /// Fails if `extra` more bytes would take the pending event past the limit.
    fn check_size(&self, extra: usize) -> Result<(), SseError> {
        let event_len = self.event.as_ref().map_or(0, String::len);
        let pending = self
            .line
            .len()
            .saturating_add(self.data.len())
            .saturating_add(event_len)
            .saturating_add(extra);
        if pending > self.max {
            return Err(SseError::EventTooLarge);
        }
        Ok(())
    }

    /// Ends the current line with `tail`, the part of it in this read. A line contained in
    /// one read is parsed straight from the read, without a copy.
    fn end_line(&mut self, tail: &[u8]) -> Result<(), SseError> {
        self.check_size(tail.len())?;
        if self.line.is_empty() {
            return self.process_line(tail);
        }
        let mut line = std::mem::take(&mut self.line);
        line.extend_from_slice(tail);
        let result = self.process_line(&line);
        line.clear();
        if line.capacity() <= LINE_KEEP {
            self.line = line;
        }
        result
    }

    fn process_line(&mut self, mut line: &[u8]) -> Result<(), SseError> {
        if std::mem::take(&mut self.first_line) {
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line[0] == b':' {
            // A comment (keep-alive): ignored, so not even checked for UTF-8.
            return Ok(());
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => self.add_data(utf8(value)?),
            b"event" => self.event = Some(utf8(value)?.to_string()),
            // `id` and `retry` steer browser reconnection, which a relay does not do; other
            // fields are ignored by the spec's rules.
            _ => {}
        }
        Ok(())
    }

    fn add_data(&mut self, value: &str) {
        if self.has_data {
            self.data.push('\n');
        }
        self.data.push_str(value);
        self.has_data = true;
    }

    fn dispatch(&mut self) {
        if self.has_data {
            let ev = self.take_event();
            self.ready.push_back(ev);
        }
        // The event type does not carry over to the next event, dispatched or not.
        self.event = None;
    }

    fn take_event(&mut self) -> SseEvent {
        self.has_data = false;
        SseEvent {
            // An empty `event:` means the default type, like no `event:` line.
            event: self.event.take().filter(|e| !e.is_empty()),
            data: std::mem::take(&mut self.data),
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, SseError> {
    std::str::from_utf8(bytes).map_err(|_| SseError::InvalidUtf8)
}

/// `data: …\n\n`, one `data:` line per line of `data`.
pub fn encode_data(data: &str) -> Bytes {
    encode(None, data)
}

/// The event in wire form: an `event:` line if it has a type, then its `data:` lines.
pub fn encode_event(ev: &SseEvent) -> Bytes {
    encode(ev.event.as_deref(), &ev.data)
}

fn encode(event: Option<&str>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    if let Some(name) = event.filter(|n| !n.is_empty()) {
        // A line break in the name would end the field early and corrupt the framing.
        let name = name.split(['\r', '\n']).next().unwrap_or_default();
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_u8(b'\n');
    }
    // CR, LF and CRLF all end a line on the client, so each starts a new `data:` line.
    for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// 20 events: deltas with multi-byte UTF-8, a comment, a multi-line event, LF, CRLF and
    /// CR line ends (mixed inside one event too), typed and `id:`/`retry:` lines, a usage
    /// event and `[DONE]`.
    const STREAM: &str = concat!(
        "\u{FEFF}: keep-alive comment\n\n",
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"h\u{e9}llo\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\" w\u{1F600}rld\"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"\u{4e2d}\u{6587}\"}}]}\r\r",
        "id: 7\nretry: 1000\ndata: {\"choices\":[{\"delta\":{\"content\":\"\u{df}\"}}]}\n\n",
        "event: custom\ndata: line one\r\ndata: line two\rdata:line three\n\n",
        "data:{\"no\":\"space\"}\n\n",
        "data:  two spaces\n\n",
        "data\n\n",
        "event: lonely\n\n",
        ": another comment\r\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"\u{3b1}\u{3b2}\u{3b3}\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"6\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"7\"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"8\"}}]}\r\r",
        "data: {\"choices\":[{\"delta\":{\"content\":\"9\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"10\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"11\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "event:\ndata: {\"choices\":[{\"delta\":{\"content\":\"\u{e9}\u{e9}\"}}]}\n\n",
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
        assert_eq!(f.finish(), Ok(None));
        out
    }

    fn ev(data: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: data.to_string(),
        }
    }

    #[test]
    fn whole_stream_yields_the_expected_events() {
        let evs = frame_all(&[STREAM.as_bytes()]);
        assert_eq!(evs.len(), 20);
        assert_eq!(
            evs[1].data,
            "{\"choices\":[{\"delta\":{\"content\":\"h\u{e9}llo\"}}]}"
        );
        assert_eq!(
            evs[3].data,
            "{\"choices\":[{\"delta\":{\"content\":\"\u{4e2d}\u{6587}\"}}]}"
        );
        assert_eq!(
            evs[5],
            SseEvent {
                event: Some("custom".into()),
                data: "line one\nline two\nline three".into()
            }
        );
        assert_eq!(evs[6], ev("{\"no\":\"space\"}"));
        assert_eq!(evs[7], ev(" two spaces"));
        assert_eq!(evs[8], ev(""));
        // The `event: lonely` block had no data and was dropped; its type did not leak.
        assert_eq!(evs[9].event, None);
        assert_eq!(evs[17].event, None);
        assert!(evs[18].data.contains("\"usage\""));
        assert_eq!(evs[19], ev("[DONE]"));
        for e in evs.iter().filter(|e| e.data.starts_with('{')) {
            serde_json::from_str::<serde_json::Value>(&e.data).unwrap();
        }
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
    fn one_byte_at_a_time() {
        let whole = frame_all(&[STREAM.as_bytes()]);
        let parts: Vec<&[u8]> = STREAM.as_bytes().chunks(1).collect();
        assert_eq!(frame_all(&parts), whole);
    }

    /// xorshift64: enough randomness for split points, reproducible from the seed.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn random_one_to_seven_way_splits() {
        let whole = frame_all(&[STREAM.as_bytes()]);
        let b = STREAM.as_bytes();
        for start in [1u64, 42, 0x9E37_79B9_7F4A_7C15] {
            let mut seed = start;
            for _ in 0..2000 {
                let ways = 1 + (next(&mut seed) % 7) as usize;
                // Cuts may coincide: empty reads must not change anything either.
                let mut cuts: Vec<usize> = (1..ways)
                    .map(|_| (next(&mut seed) as usize) % (b.len() + 1))
                    .collect();
                cuts.sort_unstable();
                let mut parts = Vec::new();
                let mut last = 0;
                for c in cuts {
                    parts.push(&b[last..c]);
                    last = c;
                }
                parts.push(&b[last..]);
                assert_eq!(
                    frame_all(&parts),
                    whole,
                    "seed {start} parts {}",
                    parts.len()
                );
            }
        }
    }

    #[test]
    fn cr_then_empty_read_then_lf_is_one_line_end() {
        let evs = frame_all(&[b"data: a\r", b"", b"\ndata: b\n\n"]);
        assert_eq!(evs, vec![ev("a\nb")]);
    }

    #[test]
    fn leading_bom_is_ignored_once() {
        let evs = frame_all(&[b"\xEF\xBB", b"\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n"]);
        // Only the stream's first BOM is dropped; a later one makes an unknown field.
        assert_eq!(evs, vec![ev("a")]);
    }

    #[test]
    fn oversized_event_fails_before_its_end() {
        let mut f = SseFramer::new(1024);
        f.push(b"data: ").unwrap();
        assert_eq!(f.push(&[b'x'; 2048]), Err(SseError::EventTooLarge));
        // The framer stays failed.
        assert_eq!(f.push(b"\n\n"), Err(SseError::EventTooLarge));
        assert_eq!(f.finish(), Err(SseError::EventTooLarge));
    }

    #[test]
    fn endless_line_fails_near_the_limit_with_bounded_buffer() {
        let mut f = SseFramer::new(MAX_EVENT_BYTES);
        let read = [b'x'; 16 * 1024];
        f.push(b"data: ").unwrap();
        let mut fed = 6;
        while f.push(&read).is_ok() {
            fed += read.len();
            assert!(fed <= MAX_EVENT_BYTES, "no error after {fed} bytes");
        }
        assert!(fed + read.len() > MAX_EVENT_BYTES);
        assert!(f.line.capacity() <= 2 * MAX_EVENT_BYTES);
    }

    #[test]
    fn many_data_lines_count_towards_the_limit() {
        // Pending size is the data so far plus the raw line being added: after 8 lines
        // 87 bytes of data, and the 9th line's 16 bytes pass 100.
        let mut f = SseFramer::new(100);
        for _ in 0..8 {
            f.push(b"data: 0123456789\n").unwrap();
        }
        assert_eq!(f.data.len(), 87);
        assert_eq!(f.push(b"data: 0123456789\n"), Err(SseError::EventTooLarge));
        // Separate events each under the limit are fine.
        let mut f = SseFramer::new(100);
        for _ in 0..50 {
            f.push(b"data: 0123456789\n\n").unwrap();
        }
        assert_eq!(f.ready.len(), 50);
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut f = SseFramer::new(1024);
        assert_eq!(f.push(b"data: \xff\xfe\n\n"), Err(SseError::InvalidUtf8));
        let mut f = SseFramer::new(1024);
        // A truncated multi-byte character at the end of a line.
        assert_eq!(f.push(b"data: \xe2\x82\n"), Err(SseError::InvalidUtf8));
        let mut f = SseFramer::new(1024);
        assert_eq!(f.push(b"event: \xc0\n"), Err(SseError::InvalidUtf8));
        // Comments and unknown fields are dropped, so their bytes do not matter.
        let evs = frame_all(&[b": \xff\n\xfe: x\ndata: ok\n\n"]);
        assert_eq!(evs, vec![ev("ok")]);
    }

    #[test]
    fn incomplete_tail_is_reported() {
        let mut f = SseFramer::new(1024);
        f.push(b"data: {\"a\":1}\n\ndata: {\"b\"").unwrap();
        assert_eq!(f.next_event(), Some(ev("{\"a\":1}")));
        assert!(f.ended_mid_event());
        assert_eq!(f.finish(), Err(SseError::Truncated));

        let mut f = SseFramer::new(1024);
        f.push(b"data: [DONE]\n").unwrap();
        assert!(f.next_event().is_none());
        assert!(f.ended_mid_event());
        assert_eq!(f.finish(), Ok(Some(ev("[DONE]"))));

        let mut f = SseFramer::new(1024);
        f.push(b"data: a\n\n: bye\r").unwrap();
        assert!(!f.ended_mid_event());
        assert_eq!(f.finish(), Ok(None));
        assert_eq!(f.next_event(), Some(ev("a")));
    }

    #[test]
    fn encoder_writes_one_data_line_per_line() {
        assert_eq!(&encode_data("{}")[..], b"data: {}\n\n");
        assert_eq!(&encode_data("")[..], b"data: \n\n");
        assert_eq!(
            &encode_data("a\nb\r\nc\rd")[..],
            b"data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        let typed = SseEvent {
            event: Some("x\ny".into()),
            data: "a".into(),
        };
        assert_eq!(&encode_event(&typed)[..], b"event: x\ndata: a\n\n");
        assert_eq!(DONE, &encode_data("[DONE]")[..]);
    }

    #[test]
    fn encoder_round_trips_through_the_framer() {
        let events = [
            SseEvent {
                event: Some("x".into()),
                data: "a\nb".into(),
            },
            ev(""),
            ev(" leading space and \u{1F600}"),
            ev("\n"),
        ];
        let mut f = SseFramer::new(1024);
        for e in &events {
            f.push(&encode_event(e)).unwrap();
        }
        for e in events {
            assert_eq!(f.next_event(), Some(e));
        }
        assert_eq!(f.finish(), Ok(None));
    }
}
