//! Overhead benchmark: the same load sent directly to a fast mock upstream, through
//! nginx `proxy_pass`, and through the `switchyard` binary, in one run.
//!
//! Run with `cargo bench --bench overhead` or `scripts/bench.sh`. It only runs the
//! binary (path from `SWITCHYARD_BIN`, default the one Cargo built, else
//! `target/release/switchyard`); it links nothing of the crate.
//!
//! Scenarios, each for direct / nginx / switchyard:
//! 1. serial: requests one at a time on one keep-alive connection (p50/p99);
//! 2. open loop at a fixed rate (2,000 req/s): every request has an intended send time
//!    and its latency is measured from that time, so a stalled proxy cannot hide its
//!    queueing (no coordinated omission) (p50/p99/max);
//! 3. fixed concurrency: 64 keep-alive connections in closed loop (req/s);
//! 4. streaming: time to the first SSE `data:` event, one request at a time (p50/p99).
//!
//! The client is a minimal HTTP/1.1 keep-alive client on raw tokio TCP (Content-Length
//! and chunked), identical for the three targets. The mock upstream and the load
//! generator each run on their own single-threaded tokio runtime; the pacer of the
//! open-loop scenario is its own OS thread. The markdown table goes to stdout, progress
//! to stderr.
#![allow(clippy::print_stdout)]

use std::error::Error;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

const SERIAL_WARMUP: usize = 300;
const SERIAL_N: usize = 3_000;
const RATE_PER_S: u64 = 2_000;
const CONCURRENCY: usize = 64;
const STREAM_WARMUP: usize = 20;
const STREAM_N: usize = 250;
/// Above this p99 lateness of the open-loop load generator itself (µs), the fixed-rate
/// p99 bar is reported as inconclusive rather than pass or fail.
const RATE_LAG_LIMIT_US: f64 = 500.0;
/// Gap between the mock's later SSE events: a proxy that buffered the stream would show
/// it in time to first token.
const STREAM_GAP: Duration = Duration::from_millis(1);

/// Seconds of measurement for the fixed-rate and fixed-concurrency scenarios
/// (`BENCH_SECS`, default 3); a warm-up of a sixth of that comes first.
fn load_secs() -> f64 {
    std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(3.0)
}

// ---------------------------------------------------------------------------------------
// Small byte helpers
// ---------------------------------------------------------------------------------------

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Outcome of trying to decode a whole chunked body starting at `buf[0]`.
enum Chunked {
    /// Not all there yet.
    Partial,
    /// Whole body decoded; `consumed` bytes of `buf` belong to it.
    Done { consumed: usize },
}

/// Decodes complete chunks from `buf[*pos..]` into `out`, advancing `*pos`; returns Done
/// at the terminal chunk (and its empty trailer). Malformed framing is an error.
fn decode_chunks(buf: &[u8], pos: &mut usize, out: &mut Vec<u8>) -> Res<Chunked> {
    loop {
        let rest = &buf[*pos..];
        let Some(eol) = find(rest, b"\r\n") else {
            return Ok(Chunked::Partial);
        };
        let line = std::str::from_utf8(&rest[..eol])?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailer section: lines until an empty one.
            let mut p = eol + 2;
            loop {
                let Some(e) = find(&rest[p..], b"\r\n") else {
                    return Ok(Chunked::Partial);
                };
                p += e + 2;
                if e == 0 {
                    *pos += p;
                    return Ok(Chunked::Done { consumed: *pos });
                }
            }
        }
        if rest.len() < eol + 2 + size + 2 {
            return Ok(Chunked::Partial);
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        *pos += eol + 2 + size + 2;
    }
}

struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
    len: usize,
}

fn parse_head(buf: &[u8]) -> Res<Option<Head>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end])?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or("");
    // "HTTP/1.1 200 OK" for responses; requests ignore the status.
    let status = first
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        close: first.starts_with("HTTP/1.0"),
        len: end + 4,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(value.parse()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            head.close = v.contains("close");
        }
    }
    Ok(Some(head))
}

// ---------------------------------------------------------------------------------------
// Mock upstream
// ---------------------------------------------------------------------------------------

const CHAT_JSON: &str = concat!(
    r#"{"id":"chatcmpl-bench0001","object":"chat.completion","created":1700000000,"model":"m","#,
    r#""choices":[{"index":0,"message":{"role":"assistant","content":"Hello! This is the fixed reply of the benchmark mock upstream."},"#,
    r#""logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":260,"completion_tokens":14,"total_tokens":274}}"#
);

fn sse_event(json: &str) -> Vec<u8> {
    let data = format!("data: {json}\n\n");
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

fn sse_delta(content: &str) -> String {
    format!(
        r#"{{"id":"chatcmpl-bench0001","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}"#
    )
}

/// Pre-built replies of the mock.
struct MockReplies {
    chat: Vec<u8>,
    /// Head plus the first event, written together.
    stream_first: Vec<u8>,
    /// Later events, each written after `STREAM_GAP`.
    stream_rest: Vec<Vec<u8>>,
    not_found: Vec<u8>,
}

impl MockReplies {
    fn new() -> Self {
        let chat = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAT_JSON}",
            CHAT_JSON.len()
        )
        .into_bytes();
        let mut stream_first =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_vec();
        stream_first.extend(sse_event(
            r#"{"id":"chatcmpl-bench0001","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}"#,
        ));
        let mut last = sse_event(
            r#"{"id":"chatcmpl-bench0001","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        );
        last.extend(sse_event(
            r#"{"id":"chatcmpl-bench0001","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[],"usage":{"prompt_tokens":260,"completion_tokens":4,"total_tokens":264}}"#,
        ));
        last.extend(sse_event("[DONE]"));
        last.extend_from_slice(b"0\r\n\r\n");
        let stream_rest = vec![
            sse_event(&sse_delta("!")),
            sse_event(&sse_delta(" Fixed")),
            last,
        ];
        let not_found = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_vec();
        Self {
            chat,
            stream_first,
            stream_rest,
            not_found,
        }
    }
}

async fn mock_serve(listener: TcpListener) {
    let replies = Arc::new(MockReplies::new());
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let replies = replies.clone();
        tokio::spawn(async move {
            let _ = mock_conn(sock, &replies).await;
        });
    }
}

async fn mock_conn(mut sock: TcpStream, replies: &MockReplies) -> Res<()> {
    sock.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut body = Vec::with_capacity(4096);
    loop {
        let head = loop {
            if let Some(h) = parse_head(&buf)? {
                break h;
            }
            if sock.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let request_line_end = find(&buf, b"\r\n").unwrap_or(0);
        let is_chat = {
            let line = &buf[..request_line_end];
            line.starts_with(b"POST ") && find(line, b"/chat/completions").is_some()
        };
        body.clear();
        let consumed = if head.chunked {
            loop {
                let mut pos = head.len;
                body.clear();
                match decode_chunks(&buf, &mut pos, &mut body)? {
                    Chunked::Done { consumed } => break consumed,
                    Chunked::Partial => {
                        if sock.read_buf(&mut buf).await? == 0 {
                            return Ok(());
                        }
                    }
                }
            }
        } else {
            let need = head.len + head.content_length.unwrap_or(0);
            while buf.len() < need {
                if sock.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            body.extend_from_slice(&buf[head.len..need]);
            need
        };
        buf.drain(..consumed);
        if !is_chat {
            sock.write_all(&replies.not_found).await?;
        } else if find(&body, br#""stream":true"#).is_some()
            || find(&body, br#""stream": true"#).is_some()
        {
            sock.write_all(&replies.stream_first).await?;
            for event in &replies.stream_rest {
                tokio::time::sleep(STREAM_GAP).await;
                sock.write_all(event).await?;
            }
        } else {
            sock.write_all(&replies.chat).await?;
        }
        if head.close {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    /// When the first complete SSE `data:` event had arrived (streaming only).
    first_event: Option<Instant>,
    body_ok: bool,
}

struct Conn {
    addr: SocketAddr,
    sock: Option<TcpStream>,
    buf: Vec<u8>,
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Res<Self> {
        let mut c = Self {
            addr,
            sock: None,
            buf: Vec::with_capacity(16 * 1024),
            body: Vec::with_capacity(4096),
        };
        c.connect().await?;
        Ok(c)
    }

    async fn connect(&mut self) -> Res<()> {
        let s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        self.sock = Some(s);
        self.buf.clear();
        Ok(())
    }

    /// Sends one request and reads the whole reply; reconnects first if the previous
    /// reply closed the connection. Any error drops the connection.
    async fn send(&mut self, req: &[u8], streaming: bool) -> Res<Reply> {
        if self.sock.is_none() {
            self.connect().await?;
        }
        let r = self.exchange(req, streaming).await;
        if r.is_err() {
            self.sock = None;
        }
        r
    }

    async fn read_more(&mut self) -> Res<usize> {
        let sock = self.sock.as_mut().ok_or("not connected")?;
        Ok(sock.read_buf(&mut self.buf).await?)
    }

    async fn exchange(&mut self, req: &[u8], streaming: bool) -> Res<Reply> {
        self.sock
            .as_mut()
            .ok_or("not connected")?
            .write_all(req)
            .await?;
        let head = loop {
            if let Some(h) = parse_head(&self.buf)? {
                break h;
            }
            if self.read_more().await? == 0 {
                return Err("connection closed before the response head".into());
            }
        };
        self.body.clear();
        let mut first_event = None;
        let consumed = if head.chunked {
            let mut pos = head.len;
            loop {
                let state = decode_chunks(&self.buf, &mut pos, &mut self.body)?;
                if streaming
                    && first_event.is_none()
                    && find(&self.body, b"data:")
                        .is_some_and(|d| find(&self.body[d..], b"\n\n").is_some())
                {
                    first_event = Some(Instant::now());
                }
                match state {
                    Chunked::Done { consumed } => break consumed,
                    Chunked::Partial => {
                        if self.read_more().await? == 0 {
                            return Err("connection closed inside a chunked body".into());
                        }
                    }
                }
            }
        } else if let Some(len) = head.content_length {
            let need = head.len + len;
            while self.buf.len() < need {
                if self.read_more().await? == 0 {
                    return Err("connection closed inside the body".into());
                }
            }
            self.body.extend_from_slice(&self.buf[head.len..need]);
            need
        } else {
            // Delimited by close.
            while self.read_more().await? != 0 {}
            self.body.extend_from_slice(&self.buf[head.len..]);
            self.sock = None;
            self.buf.len()
        };
        self.buf.drain(..consumed);
        if head.close {
            self.sock = None;
        }
        let body_ok = if streaming {
            find(&self.body, b"data: [DONE]").is_some()
        } else {
            find(&self.body, b"\"choices\"").is_some()
        };
        Ok(Reply {
            status: head.status,
            first_event,
            body_ok,
        })
    }
}

fn chat_request(host: SocketAddr, streaming: bool) -> Vec<u8> {
    // About 1 KB of JSON: a system and a user message.
    let system =
        "You are a concise assistant used by a load test. Answer in one short sentence. ".repeat(5);
    let user = "Summarise the benefits of keep-alive connections between a proxy and its upstream servers. "
        .repeat(5);
    let body = format!(
        r#"{{"model":"chat","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{user}"}}],"max_tokens":64,"temperature":0.2,"stream":{streaming}}}"#
    );
    let mut req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\naccept: {}\r\ncontent-length: {}\r\n\r\n",
        if streaming { "text/event-stream" } else { "application/json" },
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

fn check(reply: &Reply) -> Res<()> {
    if reply.status != 200 {
        return Err(format!("status {}", reply.status).into());
    }
    if !reply.body_ok {
        return Err("unexpected body".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Lat {
    /// Sorted, in nanoseconds.
    ns: Vec<u64>,
}

impl Lat {
    fn from(mut ns: Vec<u64>) -> Self {
        ns.sort_unstable();
        Self { ns }
    }
    /// Nearest-rank percentile, in microseconds.
    fn pct(&self, p: f64) -> f64 {
        if self.ns.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.ns.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.ns.len()) - 1;
        self.ns[idx] as f64 / 1_000.0
    }
    fn max(&self) -> f64 {
        self.ns.last().map_or(f64::NAN, |v| *v as f64 / 1_000.0)
    }
    /// Pools another round's samples into this one.
    fn merge(&mut self, other: Lat) {
        self.ns.extend(other.ns);
        self.ns.sort_unstable();
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Default, Clone)]
struct Results {
    serial: Lat,
    rate: Lat,
    rate_sent: u64,
    /// How late the load generator started each open-loop request (its own jitter,
    /// included in `rate`).
    rate_lag: Lat,
    conc_done: u64,
    conc_secs: f64,
    conc: Lat,
    ttft: Lat,
    errors: u64,
    first_error: Option<String>,
}

impl Results {
    fn error(&mut self, e: &(dyn Error + Send + Sync)) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

async fn serial(
    addr: SocketAddr,
    streaming: bool,
    warmup: usize,
    n: usize,
    res: &mut Results,
) -> Res<Lat> {
    let req = chat_request(addr, streaming);
    let mut conn = Conn::open(addr).await?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t0 = Instant::now();
        match conn
            .send(&req, streaming)
            .await
            .and_then(|r| check(&r).map(|()| r))
        {
            Ok(r) => {
                let t = if streaming {
                    r.first_event.unwrap_or_else(Instant::now)
                } else {
                    Instant::now()
                };
                if i >= warmup {
                    samples.push(ns(t - t0));
                }
            }
            Err(e) => res.error(e.as_ref()),
        }
    }
    Ok(Lat::from(samples))
}

/// Open loop: a pacer thread launches request `i` at `start + i / rate`; its latency is
/// from that intended time to the end of the reply. Connections come from a pool that
/// grows when every connection is busy.
async fn fixed_rate(
    addr: SocketAddr,
    rate: u64,
    warm: Duration,
    dur: Duration,
    res: &mut Results,
) -> Res<Lat> {
    let req: Arc<[u8]> = chat_request(addr, false).into();
    let pool: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..16 {
        let c = Conn::open(addr).await?;
        pool.lock().map_err(|_| "poisoned")?.push(c);
    }
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let total = ((warm + dur).as_secs_f64() * rate as f64) as u64;
    let warm_n = (warm.as_secs_f64() * rate as f64) as u64;
    let handle = Handle::current();
    let start = Instant::now() + Duration::from_millis(20);
    let pacer = tokio::task::spawn_blocking(move || {
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let intended = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            let pool = pool.clone();
            let req = req.clone();
            tasks.push(handle.spawn(async move {
                let lag = ns(Instant::now().saturating_duration_since(intended));
                let taken = pool.lock().ok().and_then(|mut p| p.pop());
                let mut conn = match taken {
                    Some(c) => c,
                    None => Conn::open(addr).await?,
                };
                let r = conn.send(&req, false).await;
                let done = Instant::now();
                if let Ok(mut p) = pool.lock() {
                    p.push(conn);
                }
                check(&r?)?;
                Ok::<_, Box<dyn Error + Send + Sync>>((i, ns(done - intended), lag))
            }));
        }
        tasks
    });
    let tasks = pacer.await?;
    let mut samples = Vec::with_capacity(tasks.len());
    let mut lags = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await? {
            Ok((i, lat, lag)) => {
                if i >= warm_n {
                    samples.push(lat);
                    lags.push(lag);
                }
            }
            Err(e) => res.error(e.as_ref()),
        }
    }
    res.rate_sent += total - warm_n;
    res.rate_lag.merge(Lat::from(lags));
    Ok(Lat::from(samples))
}

/// Closed loop: `conns` connections, each sending its next request as soon as the
/// previous reply is complete. Adds the replies completed inside the measured window
/// (and its length) to `res`; returns their latencies.
async fn fixed_concurrency(
    addr: SocketAddr,
    conns: usize,
    warm: Duration,
    dur: Duration,
    res: &mut Results,
) -> Res<Lat> {
    let req: Arc<[u8]> = chat_request(addr, false).into();
    let mut opened = Vec::with_capacity(conns);
    for _ in 0..conns {
        opened.push(Conn::open(addr).await?);
    }
    let start = Instant::now();
    let measure_from = start + warm;
    let end = measure_from + dur;
    let errors = Arc::new(AtomicU64::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut tasks = Vec::with_capacity(conns);
    for mut conn in opened {
        let req = req.clone();
        let errors = errors.clone();
        let first_error = first_error.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                match conn.send(&req, false).await.and_then(|r| check(&r)) {
                    Ok(()) => {
                        let t1 = Instant::now();
                        if t0 >= measure_from && t1 <= end {
                            lat.push(ns(t1 - t0));
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut f) = first_error.lock() {
                            f.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    res.errors += errors.load(Ordering::Relaxed);
    if res.first_error.is_none() {
        res.first_error = first_error.lock().ok().and_then(|f| f.clone());
    }
    res.conc_done += all.len() as u64;
    res.conc_secs += dur.as_secs_f64();
    Ok(Lat::from(all))
}

// ---------------------------------------------------------------------------------------
// Processes under test
// ---------------------------------------------------------------------------------------

/// A child process that is stopped (`stop_signal`, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    name: &'static str,
    /// nginx: TERM (its fast shutdown); switchyard: INT (Pingora's fast shutdown, where
    /// TERM would wait out the graceful-drain period).
    stop_signal: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .arg(format!("-{}", self.stop_signal))
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} did not stop on SIG{} within 5 s; killing it",
            self.name, self.stop_signal
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Res<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

async fn wait_tcp(addr: SocketAddr, proc_: &mut Proc, timeout: Duration) -> Res<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if !proc_.alive() {
            return Err(format!("{} exited during start-up", proc_.name).into());
        }
        if Instant::now() > deadline {
            return Err(
                format!("{} did not listen on {addr} within {timeout:?}", proc_.name).into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_health(addr: SocketAddr, proc_: &mut Proc, timeout: Duration) -> Res<()> {
    let deadline = Instant::now() + timeout;
    let req = format!("GET /health HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes();
    loop {
        if let Ok(mut c) = Conn::open(addr).await
            && let Ok(r) = c.send(&req, false).await
            && r.status == 200
        {
            return Ok(());
        }
        if !proc_.alive() {
            return Err(format!("{} exited during start-up", proc_.name).into());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer GET /health with 200 within {timeout:?}",
                proc_.name
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn nginx_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NGINX_BIN") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
        "/usr/bin/nginx",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

async fn start_nginx(bin: &Path, dir: &Path, mock: SocketAddr) -> Res<(Proc, SocketAddr)> {
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let d = dir.display();
    let conf = format!(
        "worker_processes {threads};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream mock {{
        server {mock};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen {addr} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }}
    }}
}}
",
        threads = threads()
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let log = fs::File::create(dir.join("nginx-stderr.log"))?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut p = Proc {
        child,
        name: "nginx",
        stop_signal: "TERM",
    };
    if let Err(e) = wait_tcp(addr, &mut p, Duration::from_secs(10)).await {
        return Err(format!(
            "{e}\n{}\n{}",
            log_tail(&dir.join("nginx-stderr.log")),
            log_tail(&dir.join("nginx-error.log"))
        )
        .into());
    }
    Ok((p, addr))
}

fn switchyard_path() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHYARD_BIN") {
        return PathBuf::from(p);
    }
    match option_env!("CARGO_BIN_EXE_switchyard") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from("target/release/switchyard"),
    }
}

async fn start_switchyard(bin: &Path, dir: &Path, mock: SocketAddr) -> Res<(Proc, SocketAddr)> {
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let yaml = format!(
        "server:\n  listen: [\"{addr}\"]\nproviders:\n  mock:\n    type: openai\n    endpoints: [\"http://{mock}/v1\"]\nmodels:\n  chat:\n    targets: [{{provider: mock, model: m}}]\n"
    );
    let cfg = dir.join("switchyard.yaml");
    fs::write(&cfg, yaml)?;
    let log_path = dir.join("switchyard.log");
    let log = fs::File::create(&log_path)?;
    let child = Command::new(bin)
        .arg("serve")
        .arg("-c")
        .arg(&cfg)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut p = Proc {
        child,
        name: "switchyard",
        stop_signal: "INT",
    };
    if let Err(e) = wait_health(addr, &mut p, Duration::from_secs(30)).await {
        return Err(format!("{e}\n{}", log_tail(&log_path)).into());
    }
    // One real request proves the route works before measuring.
    let mut c = Conn::open(addr).await?;
    let r = c.send(&chat_request(addr, false), false).await?;
    if let Err(e) = check(&r) {
        return Err(format!(
            "switchyard answered the probe chat request with {e}\n{}",
            log_tail(&log_path)
        )
        .into());
    }
    Ok((p, addr))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

struct Target {
    name: &'static str,
    addr: SocketAddr,
    res: Results,
}

fn fmt_us(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:.1}")
    }
}

fn fmt_added(v: f64, base: f64) -> String {
    if v.is_nan() || base.is_nan() {
        "—".into()
    } else {
        format!("{:+.1}", v - base)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b <= 0.0 {
        "—".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "not run",
    }
}

#[allow(clippy::too_many_lines)]
fn report(
    direct: &Results,
    nginx: Option<&Results>,
    sy: Option<&Results>,
    rss: (Option<u64>, Option<u64>),
    secs: f64,
) -> String {
    let nan = f64::NAN;
    let get = |r: Option<&Results>, f: &dyn Fn(&Results) -> f64| r.map_or(nan, f);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Latencies in µs (lower is better), throughput in requests/s (higher is better)."
    );
    let _ = writeln!(
        out,
        "\"added\" = target minus direct; the last column compares switchyard with nginx: added latency switchyard/nginx, or throughput switchyard/nginx.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | metric | direct | nginx | switchyard | nginx added | switchyard added | switchyard / nginx |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
    type Metric<'a> = (&'a str, &'a str, &'a dyn Fn(&Results) -> f64);
    let lat_rows: [Metric; 8] = [
        ("serial, 1 connection", "p50", &|r| r.serial.pct(50.0)),
        ("serial, 1 connection", "p99", &|r| r.serial.pct(99.0)),
        ("open loop 2,000 req/s", "p50", &|r| r.rate.pct(50.0)),
        ("open loop 2,000 req/s", "p99", &|r| r.rate.pct(99.0)),
        ("open loop 2,000 req/s", "max", &|r| r.rate.max()),
        ("open loop 2,000 req/s", "send lag p99", &|r| {
            r.rate_lag.pct(99.0)
        }),
        ("stream TTFT, serial", "p50", &|r| r.ttft.pct(50.0)),
        ("stream TTFT, serial", "p99", &|r| r.ttft.pct(99.0)),
    ];
    for (scenario, metric, f) in lat_rows {
        let d = f(direct);
        let n = get(nginx, f);
        let s = get(sy, f);
        let _ = writeln!(
            out,
            "| {scenario} | {metric} | {} | {} | {} | {} | {} | {} |",
            fmt_us(d),
            fmt_us(n),
            fmt_us(s),
            fmt_added(n, d),
            fmt_added(s, d),
            ratio(s - d, n - d)
        );
    }
    let rps = |r: &Results| r.conc_done as f64 / r.conc_secs;
    let (d, n, s) = (rps(direct), get(nginx, &rps), get(sy, &rps));
    let fmt_rps = |v: f64| {
        if v.is_nan() {
            "—".to_string()
        } else {
            format!("{v:.0}")
        }
    };
    let _ = writeln!(
        out,
        "| {CONCURRENCY} connections, closed loop | req/s | {} | {} | {} | {} | {} | {} |",
        fmt_rps(d),
        fmt_rps(n),
        fmt_rps(s),
        ratio(n, d),
        ratio(s, d),
        ratio(s, n)
    );
    let p99c = |r: &Results| r.conc.pct(99.0);
    let _ = writeln!(
        out,
        "| {CONCURRENCY} connections, closed loop | p99 µs | {} | {} | {} | {} | {} | {} |",
        fmt_us(p99c(direct)),
        fmt_us(get(nginx, &p99c)),
        fmt_us(get(sy, &p99c)),
        fmt_added(get(nginx, &p99c), p99c(direct)),
        fmt_added(get(sy, &p99c), p99c(direct)),
        ratio(
            get(sy, &p99c) - p99c(direct),
            get(nginx, &p99c) - p99c(direct)
        )
    );
    let errs = |r: Option<&Results>| r.map_or("—".to_string(), |r| r.errors.to_string());
    let _ = writeln!(
        out,
        "| all | errors | {} | {} | {} | | | |",
        direct.errors,
        errs(nginx),
        errs(sy)
    );
    let kib = |v: Option<u64>| {
        v.map_or("—".to_string(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    let _ = writeln!(
        out,
        "\nswitchyard RSS (VmRSS): idle after start-up {}, idle after the load {}.",
        kib(rss.0),
        kib(rss.1)
    );
    let _ = writeln!(
        out,
        "Requests measured per target: serial {SERIAL_N}, open loop {} ({secs} s), stream {STREAM_N}.",
        direct.rate_sent
    );

    // Bars.
    let _ = writeln!(out, "\n| bar | measured | limit | result |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    let both = nginx.is_some() && sy.is_some();
    // 1. serial added latency within 2x of nginx's.
    let f = |r: &Results| r.serial.pct(50.0);
    let (s_add, n_add) = (get(sy, &f) - f(direct), get(nginx, &f) - f(direct));
    let pass = both.then(|| s_add <= 2.0 * n_add.max(0.0));
    let _ = writeln!(
        out,
        "| serial added latency (p50) ≤ 2× nginx's | {} µs | {} µs | {} |",
        fmt_us(s_add),
        fmt_us(2.0 * n_add),
        verdict(pass)
    );
    // 2. p99 added at 2,000 req/s under 1 ms.
    let f = |r: &Results| r.rate.pct(99.0);
    let s_add = get(sy, &f) - f(direct);
    let pass = sy.map(|_| s_add < 1_000.0);
    // The load generator's own lateness (same machine, same cores) is in every
    // latency; when it is of the order of the bar, the bar cannot be judged.
    let lag = |r: &Results| r.rate_lag.pct(99.0);
    let worst_lag = [Some(direct), sy]
        .into_iter()
        .flatten()
        .map(lag)
        .fold(0.0, f64::max);
    let noisy = worst_lag > RATE_LAG_LIMIT_US;
    let _ = writeln!(
        out,
        "| p99 added latency at 2,000 req/s < 1 ms | {} µs | 1000.0 µs | {} |",
        fmt_us(s_add),
        if noisy && pass.is_some() {
            format!(
                "INCONCLUSIVE ({}: load generator send lag p99 {:.1} ms > {:.1} ms, machine too noisy)",
                verdict(pass),
                worst_lag / 1_000.0,
                RATE_LAG_LIMIT_US / 1_000.0
            )
        } else {
            verdict(pass).to_string()
        }
    );
    // 3. throughput at 64 connections ≥ 80 % of nginx.
    let pass = both.then_some(s >= 0.8 * n);
    let _ = writeln!(
        out,
        "| throughput at {CONCURRENCY} connections ≥ 80 % of nginx | {} | ≥ 0.80× | {} |",
        ratio(s, n),
        verdict(pass)
    );
    // 4. TTFT within 0.3 ms of direct.
    let f = |r: &Results| r.ttft.pct(50.0);
    let s_add = get(sy, &f) - f(direct);
    let pass = sy.map(|_| s_add <= 300.0);
    let _ = writeln!(
        out,
        "| stream TTFT (p50) within 0.3 ms of direct | {} µs | 300.0 µs | {} |",
        fmt_add_plain(s_add),
        verdict(pass)
    );
    // 5. idle RSS < 40 MiB.
    let pass = rss.0.map(|k| k < 40 * 1024);
    let _ = writeln!(
        out,
        "| idle RSS of switchyard < 40 MiB | {} | 40.0 MiB | {} |",
        kib(rss.0),
        verdict(pass)
    );
    let all_errors = direct.errors + nginx.map_or(0, |r| r.errors) + sy.map_or(0, |r| r.errors);
    if all_errors > 0 {
        let _ = writeln!(
            out,
            "\nWARNING: {all_errors} requests failed; the numbers above exclude them."
        );
    }
    out
}

fn fmt_add_plain(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:+.1}")
    }
}

// ---------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------

/// The four scenarios. Each runs for every target in two rounds, the second in reverse
/// target order, and the rounds' samples are pooled, so slow drift on the shared machine
/// does not favour whichever target runs first.
#[derive(Clone, Copy)]
enum Scenario {
    Serial,
    Rate,
    Concurrency,
    Stream,
}

const ROUNDS: usize = 2;

async fn run_scenario(t: &mut Target, sc: Scenario, secs: f64) -> Res<()> {
    let per_round = secs / ROUNDS as f64;
    let warm = Duration::from_secs_f64(per_round / 4.0);
    let dur = Duration::from_secs_f64(per_round);
    match sc {
        Scenario::Serial => {
            let n = SERIAL_N / ROUNDS;
            eprintln!("[{}] serial x{n}", t.name);
            let lat = serial(t.addr, false, SERIAL_WARMUP, n, &mut t.res).await?;
            t.res.serial.merge(lat);
        }
        Scenario::Rate => {
            eprintln!(
                "[{}] open loop {RATE_PER_S} req/s for {per_round} s",
                t.name
            );
            let lat = fixed_rate(t.addr, RATE_PER_S, warm, dur, &mut t.res).await?;
            t.res.rate.merge(lat);
        }
        Scenario::Concurrency => {
            eprintln!("[{}] {CONCURRENCY} connections for {per_round} s", t.name);
            let lat = fixed_concurrency(t.addr, CONCURRENCY, warm, dur, &mut t.res).await?;
            t.res.conc.merge(lat);
        }
        Scenario::Stream => {
            let n = STREAM_N / ROUNDS;
            eprintln!("[{}] stream TTFT x{n}", t.name);
            let lat = serial(t.addr, true, STREAM_WARMUP, n, &mut t.res).await?;
            t.res.ttft.merge(lat);
        }
    }
    Ok(())
}

/// The scenarios to run: all, or those named in `BENCH_ONLY` (comma-separated `serial`,
/// `rate`, `conc`, `stream`) for a quicker look at one of them while profiling.
fn scenarios() -> Vec<Scenario> {
    let all = [
        ("serial", Scenario::Serial),
        ("rate", Scenario::Rate),
        ("conc", Scenario::Concurrency),
        ("stream", Scenario::Stream),
    ];
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    all.iter()
        .filter(|(name, _)| only.is_empty() || only.split(',').any(|o| o.trim() == *name))
        .map(|(_, sc)| *sc)
        .collect()
}

async fn run_all(targets: &mut [Target], secs: f64) -> Res<()> {
    for sc in scenarios() {
        for round in 0..ROUNDS {
            let n = targets.len();
            for i in 0..n {
                let idx = if round % 2 == 0 { i } else { n - 1 - i };
                run_scenario(&mut targets[idx], sc, secs).await?;
            }
        }
    }
    for t in targets.iter() {
        if let Some(e) = &t.res.first_error {
            eprintln!("[{}] {} errors; first: {e}", t.name, t.res.errors);
        }
    }
    Ok(())
}

fn version_of(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

async fn bench(dir: &Path) -> Res<bool> {
    let secs = load_secs();
    let t_start = Instant::now();
    // (a) mock upstream on its own single-threaded runtime and OS thread.
    let std_listener = StdListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let mock_addr = std_listener.local_addr()?;
    std::thread::Builder::new()
        .name("mock-upstream".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("mock runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(l) => mock_serve(l).await,
                    Err(e) => eprintln!("mock listener: {e}"),
                }
            });
        })?;

    // (b) nginx.
    let mut nginx_proc = None;
    let mut nginx_note = String::new();
    match nginx_path() {
        None => {
            nginx_note = "nginx not installed (looked in /usr/sbin, /usr/local/sbin, /usr/bin; set NGINX_BIN): nginx column skipped".into();
        }
        Some(bin) => match start_nginx(&bin, dir, mock_addr).await {
            Ok(p) => {
                nginx_note = version_of(&bin, "-v");
                nginx_proc = Some(p);
            }
            Err(e) => eprintln!("nginx failed to start, nginx column skipped: {e}"),
        },
    }
    if nginx_proc.is_none() && !nginx_note.is_empty() {
        eprintln!("{nginx_note}");
    }

    // (c) switchyard.
    let sy_bin = switchyard_path();
    let mut sy_proc = None;
    let mut sy_version = String::new();
    if sy_bin.exists() {
        sy_version = version_of(&sy_bin, "--version");
        match start_switchyard(&sy_bin, dir, mock_addr).await {
            Ok(p) => sy_proc = Some(p),
            Err(e) => eprintln!("switchyard failed to start, switchyard column skipped: {e}"),
        }
    } else {
        eprintln!(
            "switchyard binary not found at {} (build it with `cargo build --release` or set SWITCHYARD_BIN): switchyard column skipped",
            sy_bin.display()
        );
    }
    let mut rss_idle = None;
    if let Some((p, _)) = &sy_proc {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_idle = rss_kib(p.pid());
    }

    let mut targets = vec![Target {
        name: "direct",
        addr: mock_addr,
        res: Results::default(),
    }];
    if let Some((_, addr)) = &nginx_proc {
        targets.push(Target {
            name: "nginx",
            addr: *addr,
            res: Results::default(),
        });
    }
    if let Some((_, addr)) = &sy_proc {
        targets.push(Target {
            name: "switchyard",
            addr: *addr,
            res: Results::default(),
        });
    }
    run_all(&mut targets, secs).await?;
    let mut rss_after = None;
    if let Some((p, _)) = &mut sy_proc {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !p.alive() {
            return Err("switchyard exited during the benchmark".into());
        }
        rss_after = rss_kib(p.pid());
    }
    let find_res = |name: &str| {
        targets
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.res.clone())
    };
    let direct = find_res("direct").unwrap_or_default();
    let nginx = find_res("nginx");
    let sy = find_res("switchyard");
    let mut out = String::new();
    let _ = writeln!(out, "## Switchyard overhead benchmark\n");
    let _ = writeln!(
        out,
        "- switchyard: {} ({})\n- nginx: {}\n- CPUs visible: {} (mock upstream, load generator, nginx and switchyard all share them); switchyard threads = nginx worker_processes = {}\n- request: non-stream chat, {} B body; reply {} B JSON\n- logging: switchyard SWITCHYARD_LOG={} (info = one JSON access-log line per request, to a file here); nginx access_log off\n",
        if sy_version.is_empty() {
            "not run".to_string()
        } else {
            sy_version
        },
        sy_bin.display(),
        if nginx_proc.is_some() {
            nginx_note
        } else {
            "not run".to_string()
        },
        threads(),
        threads(),
        {
            let req = chat_request(mock_addr, false);
            req.len() - head_len(&req)
        },
        CHAT_JSON.len(),
        std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| "unset (info)".into())
    );
    out.push_str(&report(
        &direct,
        nginx.as_ref(),
        sy.as_ref(),
        (rss_idle, rss_after),
        secs,
    ));
    let _ = writeln!(
        out,
        "\nTotal wall time: {:.1} s.",
        t_start.elapsed().as_secs_f64()
    );
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    drop(nginx_proc);
    drop(sy_proc);
    Ok(sy.is_some() && direct.errors == 0)
}

fn head_len(req: &[u8]) -> usize {
    find(req, b"\r\n\r\n").map_or(0, |i| i + 4)
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` (and any filter); this harness takes no arguments.
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("client runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(bench(&dir));
    drop(rt);
    let code = match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("switchyard was not measured (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            ExitCode::FAILURE
        }
    };
    if std::env::var_os("BENCH_KEEP_DIR").is_none() {
        let _ = fs::remove_dir_all(&dir);
    } else {
        eprintln!("kept {}", dir.display());
    }
    code
}
