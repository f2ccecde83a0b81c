//! A small raw HTTP/1.1 client on tokio TCP: whole requests and responses, streaming reads
//! event by event, and abrupt endings (FIN with `fin`, RST with `rst`).
//!
//! Raw on purpose: tests need to send malformed or oversized requests, read an SSE response
//! one event at a time, and close a connection at an exact point.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on any single read in this client, so no test can hang on a silent server.
pub const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Every header name and value plus the body, for "never appears anywhere" checks.
    pub fn everything(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push('\n');
        }
        s.push_str(&self.text());
        s
    }
}

/// One SSE event: its raw text (without the blank line) and its joined `data:` lines.
#[derive(Debug, Clone)]
pub struct Event {
    pub raw: String,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.raw))
    }

    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(usize),
    ChunkSize,
    ChunkData(usize),
    ChunkCrlf,
    Trailer,
    UntilClose,
    Done,
}

pub struct HttpClient {
    stream: TcpStream,
    /// Bytes read from the socket and not yet consumed.
    raw: Vec<u8>,
    /// Decoded body bytes of the current response not yet handed out.
    payload: Vec<u8>,
    framing: Framing,
    /// Set when the server closed the connection.
    pub eof: bool,
    /// Set when the body ended without its proper end (a cut chunked body).
    pub truncated: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl HttpClient {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<HttpClient> {
        let stream = tokio::time::timeout(READ_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(HttpClient {
            stream,
            raw: Vec::new(),
            payload: Vec::new(),
            framing: Framing::Done,
            eof: false,
            truncated: false,
        })
    }

    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Sends a request with `Host` and (when there is a body) `Content-Length`.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.write_all(&bytes).await
    }

    async fn read_more(&mut self) -> std::io::Result<usize> {
        let mut buf = [0u8; 16 * 1024];
        let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
        if n == 0 {
            self.eof = true;
        }
        self.raw.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    /// Reads a response head and sets up body decoding. `head_only` is for HEAD requests.
    pub async fn read_head(&mut self) -> std::io::Result<Head> {
        let end = loop {
            if let Some(i) = find(&self.raw, b"\r\n\r\n") {
                break i;
            }
            if self.read_more().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a response head ({} bytes)",
                        self.raw.len()
                    ),
                ));
            }
        };
        let text = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        self.raw.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let head = Head { status, headers };
        self.payload.clear();
        self.truncated = false;
        self.framing = if head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            Framing::ChunkSize
        } else if let Some(n) = head.header("content-length").and_then(|v| v.parse().ok()) {
            Framing::Length(n)
        } else if status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::Length(0)
        } else {
            Framing::UntilClose
        };
        Ok(head)
    }

    /// Decodes whatever body bytes `raw` holds into `payload`.
    fn decode(&mut self) {
        loop {
            match self.framing {
                Framing::Done => return,
                Framing::Length(0) => self.framing = Framing::Done,
                Framing::Length(n) => {
                    if self.raw.is_empty() {
                        return;
                    }
                    let take = n.min(self.raw.len());
                    self.payload.extend(self.raw.drain(..take));
                    self.framing = Framing::Length(n - take);
                }
                Framing::UntilClose => {
                    self.payload.append(&mut self.raw);
                    if self.eof {
                        self.framing = Framing::Done;
                    }
                    return;
                }
                Framing::ChunkSize => {
                    let Some(i) = find(&self.raw, b"\r\n") else {
                        return;
                    };
                    let line = String::from_utf8_lossy(&self.raw[..i]).into_owned();
                    self.raw.drain(..i + 2);
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                            .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                    self.framing = if size == 0 {
                        Framing::Trailer
                    } else {
                        Framing::ChunkData(size)
                    };
                }
                Framing::ChunkData(n) => {
                    if self.raw.is_empty() {
                        return;
                    }
                    let take = n.min(self.raw.len());
                    self.payload.extend(self.raw.drain(..take));
                    self.framing = if n == take {
                        Framing::ChunkCrlf
                    } else {
                        Framing::ChunkData(n - take)
                    };
                }
                Framing::ChunkCrlf => {
                    if self.raw.len() < 2 {
                        return;
                    }
                    assert_eq!(&self.raw[..2], b"\r\n", "chunk not followed by CRLF");
                    self.raw.drain(..2);
                    self.framing = Framing::ChunkSize;
                }
                Framing::Trailer => {
                    let Some(i) = find(&self.raw, b"\r\n") else {
                        return;
                    };
                    self.raw.drain(..i + 2);
                    if i == 0 {
                        self.framing = Framing::Done;
                    }
                }
            }
        }
    }

    fn body_done(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    /// Reads more body; returns false when the body is over (ended or cut).
    async fn pull(&mut self) -> std::io::Result<bool> {
        self.decode();
        if self.body_done() {
            return Ok(false);
        }
        if self.eof {
            self.truncated = !matches!(self.framing, Framing::UntilClose);
            self.framing = Framing::Done;
            return Ok(false);
        }
        match self.read_more().await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.eof = true;
            }
            Err(e) => return Err(e),
        }
        self.decode();
        Ok(true)
    }

    /// Reads the rest of the current response's body.
    pub async fn read_body(&mut self) -> std::io::Result<Vec<u8>> {
        while self.pull().await? {}
        Ok(std::mem::take(&mut self.payload))
    }

    /// One whole response.
    pub async fn read_response(&mut self) -> std::io::Result<Response> {
        let head = self.read_head().await?;
        let body = self.read_body().await?;
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    /// The next SSE event of the current response, or `None` at the end of the body.
    /// A partial event left at the end is returned as-is (its `data` may be cut).
    pub async fn next_event(&mut self) -> std::io::Result<Option<Event>> {
        loop {
            // Bytes read together with the head (or an earlier event) may already hold whole
            // events: hand those out before waiting on the socket for more.
            self.decode();
            if let Some(e) = self.take_event() {
                return Ok(Some(e));
            }
            if !self.pull().await? {
                if let Some(e) = self.take_event() {
                    return Ok(Some(e));
                }
                if self.payload.is_empty() {
                    return Ok(None);
                }
                let raw = String::from_utf8_lossy(&std::mem::take(&mut self.payload)).into_owned();
                return Ok(Some(parse_event(raw)));
            }
        }
    }

    /// One whole event from the decoded payload, if it holds one.
    fn take_event(&mut self) -> Option<Event> {
        let sep = find(&self.payload, b"\n\n").map(|i| (i, 2));
        let sep = sep.or_else(|| find(&self.payload, b"\r\n\r\n").map(|i| (i, 4)));
        let (i, n) = sep?;
        let raw = String::from_utf8(self.payload[..i].to_vec()).expect("event is not UTF-8");
        self.payload.drain(..i + n);
        Some(parse_event(raw))
    }

    /// Every remaining SSE event.
    pub async fn all_events(&mut self) -> std::io::Result<Vec<Event>> {
        let mut out = Vec::new();
        while let Some(e) = self.next_event().await? {
            out.push(e);
        }
        Ok(out)
    }

    /// Closes the sending side (FIN) and keeps the socket.
    pub async fn fin(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// Closes the connection with RST (SO_LINGER 0).
    pub fn rst(self) {
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
    }

    /// Waits until the server closes the connection; false if it stays open `within`.
    pub async fn closed_by_server(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut buf = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Bytes read past the last response (for "nothing else came back" checks).
    pub fn leftover(&self) -> &[u8] {
        &self.raw
    }
}

fn parse_event(raw: String) -> Event {
    let data = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    Event { raw, data }
}

/// One request on a fresh connection, read to the end.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut c = HttpClient::connect(addr).await?;
    c.send(method, path, headers, body).await?;
    c.read_response().await
}
