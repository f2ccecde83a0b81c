//! A scriptable OpenAI-compatible upstream on raw tokio TCP (reliability.md §4.0 "mock").
//!
//! Raw TCP rather than an HTTP library so a reply can split its writes at chosen byte
//! offsets, stall, end with FIN or RST in the middle of an event, or hold its headers back.
//! Every request is recorded raw (method, path, headers, body), and every connection records
//! when and how it was closed, so tests can assert "the upstream connection was closed
//! within 1 s of the client leaving".
//!
//! Which reply a request gets: the scripted queue first (`push`), then a responder closure
//! (`respond_with`, which sees the recorded request), then a reply registered for the
//! request's `model` (the target's upstream id, `on_model`), then the default (`Reply::auto`,
//! which answers chat, completions and embeddings like a real server, one token per chunk).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};

/// Prompt tokens the mock reports in every `usage` it sends.
pub const MOCK_PROMPT_TOKENS: u64 = 11;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub conn: usize,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl RecordedRequest {
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn model(&self) -> Option<String> {
        self.json()["model"].as_str().map(str::to_string)
    }

    pub fn is_stream(&self) -> bool {
        self.json()["stream"] == Value::Bool(true)
    }

    pub fn wants_usage(&self) -> bool {
        self.json()["stream_options"]["include_usage"] == Value::Bool(true)
    }
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// The gateway closed it (EOF on read).
    PeerFin,
    /// The gateway reset it (read error).
    PeerReset,
    /// The mock closed it itself (an `Ending`, or `Connection: close`).
    Mock,
}

/// One accepted connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: usize,
    pub opened: Instant,
    pub requests: usize,
    pub closed: Option<(Instant, CloseKind)>,
}

/// How an SSE reply ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `data: [DONE]`, then the terminating chunk; the connection stays open for reuse.
    Done,
    /// The terminating chunk without `data: [DONE]`: a clean body end, but a cut answer.
    EndWithoutDone,
    /// FIN in the middle of the chunked body (no terminating chunk, no `[DONE]`).
    Fin,
    /// Half of one more event, then RST.
    DropMidEvent,
    /// RST right after the last event.
    Rst,
    /// Nothing more, and the connection held open until the gateway closes it.
    Stall,
}

/// Whether an SSE reply carries the usage-only chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageMode {
    /// Only when the request asked with `stream_options.include_usage` (OpenAI's behaviour).
    IfAsked,
    Never,
    Always,
}

/// A gate an SSE reply waits on before each event after the first: the test opens it
/// event by event, so it can observe the client side between two upstream events.
#[derive(Clone)]
pub struct Gate(Arc<Semaphore>);

impl Gate {
    pub fn new() -> Gate {
        Gate(Arc::new(Semaphore::new(0)))
    }
    /// Lets `n` more events out.
    pub fn open(&self, n: usize) {
        self.0.add_permits(n);
    }
    pub fn open_all(&self) {
        self.0.add_permits(1 << 20);
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

#[derive(Clone)]
enum ReplyBody {
    /// Answer like a real server, from the request.
    Auto,
    /// A fixed body with `Content-Length`.
    Fixed(Vec<u8>),
    /// A chunked SSE stream of `tokens`.
    Sse,
    /// Read the request and never answer.
    Stall,
}

/// What the mock sends for one request. Builder style.
#[derive(Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    header_delay: Duration,
    body: ReplyBody,
    tokens: Vec<String>,
    event_delay: Duration,
    usage: UsageMode,
    ending: Ending,
    splits: Vec<usize>,
    gate: Option<Gate>,
    close: bool,
    idle_close: Option<Duration>,
}

impl Reply {
    fn base(body: ReplyBody) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            header_delay: Duration::ZERO,
            body,
            tokens: default_tokens(),
            event_delay: Duration::ZERO,
            usage: UsageMode::IfAsked,
            ending: Ending::Done,
            splits: Vec::new(),
            gate: None,
            close: false,
            idle_close: None,
        }
    }

    /// Answers like an OpenAI server: chat/completions JSON or SSE (by the request's
    /// `stream`), embeddings JSON; usage included as a real server would.
    pub fn auto() -> Reply {
        Reply::base(ReplyBody::Auto)
    }

    /// A fixed JSON body with this status.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            ..Reply::base(ReplyBody::Fixed(body.into()))
        }
    }

    /// An error status with an OpenAI-style error body.
    pub fn status(status: u16) -> Reply {
        let body = json!({"error": {"message": format!("mock upstream status {status}"), "type": "server_error", "param": null, "code": null}});
        Reply::json(status, body.to_string())
    }

    /// An SSE stream, one token per chunk, `delay` between events.
    pub fn sse<S: Into<String>>(tokens: impl IntoIterator<Item = S>, delay: Duration) -> Reply {
        Reply {
            tokens: tokens.into_iter().map(Into::into).collect(),
            event_delay: delay,
            ..Reply::base(ReplyBody::Sse)
        }
    }

    /// Reads the request and never answers.
    pub fn stall() -> Reply {
        Reply::base(ReplyBody::Stall)
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn retry_after(self, secs: u64) -> Reply {
        self.header("Retry-After", &secs.to_string())
    }

    /// Holds the status line back this long.
    pub fn slow_headers(mut self, d: Duration) -> Reply {
        self.header_delay = d;
        self
    }

    /// Tokens for `auto` and `sse` replies.
    pub fn tokens<S: Into<String>>(mut self, tokens: impl IntoIterator<Item = S>) -> Reply {
        self.tokens = tokens.into_iter().map(Into::into).collect();
        self
    }

    /// `true`: the usage chunk when asked (the default); `false`: never.
    pub fn usage_chunk(mut self, on: bool) -> Reply {
        self.usage = if on {
            UsageMode::IfAsked
        } else {
            UsageMode::Never
        };
        self
    }

    pub fn usage_mode(mut self, mode: UsageMode) -> Reply {
        self.usage = mode;
        self
    }

    pub fn ending(mut self, ending: Ending) -> Reply {
        self.ending = ending;
        self
    }

    /// Extra TCP write boundaries, as byte offsets into the SSE payload (each piece goes
    /// out as its own write and its own HTTP chunk).
    pub fn split_at(mut self, offsets: impl IntoIterator<Item = usize>) -> Reply {
        self.splits = offsets.into_iter().collect();
        self.splits.sort_unstable();
        self.splits.dedup();
        self
    }

    /// Waits on `gate` before each event after the first.
    pub fn gated(mut self, gate: &Gate) -> Reply {
        self.gate = Some(gate.clone());
        self
    }

    /// `Connection: close` and close after this reply.
    pub fn close(mut self) -> Reply {
        self.close = true;
        self
    }

    /// After this reply, close the connection if no next request comes within `d`
    /// (an upstream's keep-alive timeout, without telling the client).
    pub fn keepalive_close_after(mut self, d: Duration) -> Reply {
        self.idle_close = Some(d);
        self
    }
}

/// Three tokens: "Hello", " world", "!".
pub fn default_tokens() -> Vec<String> {
    vec!["Hello".into(), " world".into(), "!".into()]
}

/// Words that are each exactly one token in cl100k_base (and most BPE vocabularies), with
/// their leading space, so a tokenizer count of the concatenated text equals the number of
/// chunks: the ground truth for `usage_source: counted`.
const ONE_TOKEN_WORDS: &[&str] = &[
    " the", " of", " and", " to", " in", " is", " it", " you", " that", " he", " was", " for",
    " on", " are", " with", " as", " his", " they", " be", " at", " one", " have", " this",
    " from", " or", " had", " by", " word", " but", " what", " some", " we", " can", " out",
    " other", " were", " all", " there", " when",
];

/// `n` tokens, one tokenizer token each (cycling through common words).
pub fn numbered_tokens(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| ONE_TOKEN_WORDS[i % ONE_TOKEN_WORDS.len()].to_string())
        .collect()
}

/// The SSE events (without the `data: ` prefix) an `sse` reply sends for this request:
/// one chunk per token (the last one carries `finish_reason`), then the usage chunk when
/// it applies. `[DONE]` is not included.
pub fn sse_events(tokens: &[String], model: &str, usage: bool) -> Vec<String> {
    let n = tokens.len();
    let mut out: Vec<String> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": t})
            } else {
                json!({"content": t})
            };
            let finish = if i + 1 == n {
                json!("stop")
            } else {
                Value::Null
            };
            json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
            .to_string()
        })
        .collect();
    if usage {
        out.push(
            json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": MOCK_PROMPT_TOKENS,
                    "completion_tokens": n,
                    "total_tokens": MOCK_PROMPT_TOKENS + n as u64,
                },
            })
            .to_string(),
        );
    }
    out
}

/// A non-stream chat completion body for these tokens.
pub fn chat_completion(tokens: &[String], model: &str) -> Value {
    json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "system_fingerprint": "fp_mock",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": tokens.concat()},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": MOCK_PROMPT_TOKENS,
            "completion_tokens": tokens.len(),
            "total_tokens": MOCK_PROMPT_TOKENS + tokens.len() as u64,
        },
    })
}

type Responder = Box<dyn Fn(&RecordedRequest) -> Option<Reply> + Send + Sync>;

struct State {
    queue: VecDeque<Reply>,
    responder: Option<Arc<Responder>>,
    by_model: HashMap<String, Reply>,
    default: Reply,
    requests: Vec<RecordedRequest>,
    conns: Vec<ConnInfo>,
    events_sent: usize,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
}

impl Shared {
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state.lock().unwrap());
        self.changed.notify_waiters();
        r
    }

    fn mark_closed(&self, conn: usize, kind: CloseKind) {
        self.update(|s| {
            if let Some(c) = s.conns.get_mut(conn)
                && c.closed.is_none()
            {
                c.closed = Some((Instant::now(), kind));
            }
        });
    }
}

/// The mock server. Dropping it stops accepting; open connections end with their tasks.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl MockUpstream {
    /// Listens on 127.0.0.1:0 and serves `Reply::auto()` until told otherwise.
    pub async fn start() -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                responder: None,
                by_model: HashMap::new(),
                default: Reply::auto(),
                requests: Vec::new(),
                conns: Vec::new(),
                events_sent: 0,
            }),
            changed: Notify::new(),
        });
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let id = accept_shared.update(|s| {
                    let id = s.conns.len();
                    s.conns.push(ConnInfo {
                        id,
                        opened: Instant::now(),
                        requests: 0,
                        closed: None,
                    });
                    id
                });
                tasks.spawn(serve_conn(accept_shared.clone(), stream, id));
                while tasks.try_join_next().is_some() {}
            }
        });
        MockUpstream {
            addr,
            shared,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The base URL a provider's `endpoints` entry takes: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues a reply for the next request (before any other rule).
    pub fn push(&self, reply: Reply) -> &Self {
        self.shared.update(|s| s.queue.push_back(reply));
        self
    }

    /// The reply when nothing more specific applies.
    pub fn set_default(&self, reply: Reply) -> &Self {
        self.shared.update(|s| s.default = reply);
        self
    }

    /// The reply for requests whose body's `model` is `model`.
    pub fn on_model(&self, model: &str, reply: Reply) -> &Self {
        self.shared.update(|s| {
            s.by_model.insert(model.to_string(), reply);
        });
        self
    }

    /// A closure that picks the reply from the request (e.g. from a body field the
    /// gateway passes through untouched); `None` falls through to the other rules.
    pub fn respond_with(
        &self,
        f: impl Fn(&RecordedRequest) -> Option<Reply> + Send + Sync + 'static,
    ) -> &Self {
        let f: Responder = Box::new(f);
        self.shared.update(|s| s.responder = Some(Arc::new(f)));
        self
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.state.lock().unwrap().requests.len()
    }

    pub fn conns(&self) -> Vec<ConnInfo> {
        self.shared.state.lock().unwrap().conns.clone()
    }

    /// Connections accepted and not yet closed by either side.
    pub fn open_conns(&self) -> usize {
        self.shared
            .state
            .lock()
            .unwrap()
            .conns
            .iter()
            .filter(|c| c.closed.is_none())
            .count()
    }

    /// SSE events (content, usage and `[DONE]`) fully written so far, over all requests.
    pub fn events_sent(&self) -> usize {
        self.shared.state.lock().unwrap().events_sent
    }

    /// Waits until `cond` holds over the mock's state, or `within` passes.
    async fn wait_for(&self, within: Duration, cond: impl Fn(&State) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(&self.shared.state.lock().unwrap()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return cond(&self.shared.state.lock().unwrap());
            }
        }
    }

    /// Waits until at least `n` requests arrived; returns whether they did in time.
    pub async fn wait_requests(&self, n: usize, within: Duration) -> bool {
        self.wait_for(within, |s| s.requests.len() >= n).await
    }

    /// Waits until at least `n` SSE events were written.
    pub async fn wait_events_sent(&self, n: usize, within: Duration) -> bool {
        self.wait_for(within, |s| s.events_sent >= n).await
    }

    /// Waits until connection `conn` is closed; returns when and how.
    pub async fn wait_conn_closed(
        &self,
        conn: usize,
        within: Duration,
    ) -> Option<(Instant, CloseKind)> {
        self.wait_for(within, |s| {
            s.conns.get(conn).is_some_and(|c| c.closed.is_some())
        })
        .await;
        self.shared
            .state
            .lock()
            .unwrap()
            .conns
            .get(conn)
            .and_then(|c| c.closed)
    }
}

fn choose(shared: &Shared, req: &RecordedRequest) -> Reply {
    let (queued, responder) = {
        let mut s = shared.state.lock().unwrap();
        (s.queue.pop_front(), s.responder.clone())
    };
    if let Some(r) = queued {
        return r;
    }
    if let Some(f) = responder
        && let Some(r) = f(req)
    {
        return r;
    }
    let s = shared.state.lock().unwrap();
    req.model()
        .and_then(|m| s.by_model.get(&m).cloned())
        .unwrap_or_else(|| s.default.clone())
}

async fn serve_conn(shared: Arc<Shared>, stream: TcpStream, conn: usize) {
    let (rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<RecordedRequest>();
    let reader = tokio::spawn(read_loop(shared.clone(), rd, conn, tx));
    let mut idle_close: Option<Duration> = None;
    loop {
        let next = match idle_close {
            Some(d) => match tokio::time::timeout(d, rx.recv()).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = wr.shutdown().await;
                    shared.mark_closed(conn, CloseKind::Mock);
                    let _ = tokio::time::timeout(Duration::from_secs(30), reader).await;
                    return;
                }
            },
            None => rx.recv().await,
        };
        let Some(req) = next else { break };
        let reply = choose(&shared, &req);
        idle_close = reply.idle_close;
        match write_reply(&shared, &mut wr, &req, reply).await {
            Ok(After::KeepAlive) => continue,
            Ok(After::Close) => {
                let _ = wr.shutdown().await;
                shared.mark_closed(conn, CloseKind::Mock);
                // Let the reader see the gateway's side close, then stop.
                let _ = tokio::time::timeout(Duration::from_secs(30), reader).await;
                return;
            }
            Ok(After::Reset) => {
                // Let what was written be read first: the RST comes "after event N".
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = wr.as_ref().set_zero_linger();
                reader.abort();
                let _ = reader.await;
                shared.mark_closed(conn, CloseKind::Mock);
                drop(wr);
                return;
            }
            Ok(After::Hold) | Err(_) => {
                // Wait for the gateway to close its side (recorded by the reader).
                let _ = reader.await;
                return;
            }
        }
    }
    let _ = reader.await;
}

/// Reads and records requests; marks the connection closed on EOF or error.
async fn read_loop(
    shared: Arc<Shared>,
    mut rd: OwnedReadHalf,
    conn: usize,
    tx: mpsc::UnboundedSender<RecordedRequest>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        // Parse as many complete requests as the buffer holds.
        while let Some((req, used)) = parse_request(&buf, conn) {
            buf.drain(..used);
            shared.update(|s| {
                s.requests.push(req.clone());
                if let Some(c) = s.conns.get_mut(conn) {
                    c.requests += 1;
                }
            });
            let _ = tx.send(req);
        }
        let mut chunk = [0u8; 16 * 1024];
        match rd.read(&mut chunk).await {
            Ok(0) => {
                shared.mark_closed(conn, CloseKind::PeerFin);
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                shared.mark_closed(conn, CloseKind::PeerReset);
                return;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One complete request at the start of `buf`, and how many bytes it used.
fn parse_request(buf: &[u8], conn: usize) -> Option<(RecordedRequest, usize)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let (body, used) =
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut body = Vec::new();
            let mut pos = head_end;
            loop {
                let line_end = pos + find(&buf[pos..], b"\r\n")?;
                let size_txt = String::from_utf8_lossy(&buf[pos..line_end]);
                let size = usize::from_str_radix(size_txt.split(';').next()?.trim(), 16).ok()?;
                pos = line_end + 2;
                if size == 0 {
                    // No trailers from the gateway: the final CRLF follows.
                    if buf.len() < pos + 2 {
                        return None;
                    }
                    pos += 2;
                    break;
                }
                if buf.len() < pos + size + 2 {
                    return None;
                }
                body.extend_from_slice(&buf[pos..pos + size]);
                pos += size + 2;
            }
            (body, pos)
        } else {
            let len: usize = get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() < head_end + len {
                return None;
            }
            (buf[head_end..head_end + len].to_vec(), head_end + len)
        };
    Some((
        RecordedRequest {
            conn,
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        },
        used,
    ))
}

enum After {
    KeepAlive,
    Close,
    Reset,
    /// Stop writing and keep the connection open until the gateway closes it.
    Hold,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn head(
    status: u16,
    content_type: &str,
    extra: &[(String, String)],
    framing: &str,
    close: bool,
) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n{framing}\r\n",
        reason(status)
    );
    for (k, v) in extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if close {
        h.push_str("Connection: close\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

async fn write_reply(
    shared: &Shared,
    wr: &mut OwnedWriteHalf,
    req: &RecordedRequest,
    reply: Reply,
) -> std::io::Result<After> {
    if !reply.header_delay.is_zero() {
        tokio::time::sleep(reply.header_delay).await;
    }
    let model = req.model().unwrap_or_default();
    let body = match &reply.body {
        ReplyBody::Stall => return Ok(After::Hold),
        ReplyBody::Fixed(b) => Some(b.clone()),
        ReplyBody::Auto if req.path.ends_with("/embeddings") => Some(
            json!({
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}],
                "model": model,
                "usage": {"prompt_tokens": MOCK_PROMPT_TOKENS, "total_tokens": MOCK_PROMPT_TOKENS},
            })
            .to_string()
            .into_bytes(),
        ),
        ReplyBody::Auto if !req.is_stream() => Some(
            chat_completion(&reply.tokens, &model)
                .to_string()
                .into_bytes(),
        ),
        ReplyBody::Auto | ReplyBody::Sse => None,
    };
    if let Some(body) = body {
        let framing = format!("Content-Length: {}\r\n", body.len());
        let mut out = head(
            reply.status,
            "application/json",
            &reply.headers,
            framing.trim_end(),
            reply.close,
        );
        out.extend_from_slice(&body);
        wr.write_all(&out).await?;
        wr.flush().await?;
        return Ok(if reply.close {
            After::Close
        } else {
            After::KeepAlive
        });
    }
    write_sse(shared, wr, req, &reply, &model).await
}

async fn write_sse(
    shared: &Shared,
    wr: &mut OwnedWriteHalf,
    req: &RecordedRequest,
    reply: &Reply,
    model: &str,
) -> std::io::Result<After> {
    let with_usage = match reply.usage {
        UsageMode::IfAsked => req.wants_usage(),
        UsageMode::Never => false,
        UsageMode::Always => true,
    };
    let mut events: Vec<Vec<u8>> = sse_events(&reply.tokens, model, with_usage)
        .into_iter()
        .map(|e| format!("data: {e}\n\n").into_bytes())
        .collect();
    if reply.ending == Ending::Done {
        events.push(b"data: [DONE]\n\n".to_vec());
    }
    let h = head(
        reply.status,
        "text/event-stream",
        &reply.headers,
        "Transfer-Encoding: chunked",
        reply.close,
    );
    wr.write_all(&h).await?;
    wr.flush().await?;

    let mut offset = 0usize;
    for (i, ev) in events.iter().enumerate() {
        if i > 0 {
            if let Some(gate) = &reply.gate {
                gate.0
                    .acquire()
                    .await
                    .map_err(std::io::Error::other)?
                    .forget();
            }
            if !reply.event_delay.is_zero() {
                tokio::time::sleep(reply.event_delay).await;
            }
        }
        // Cut this event at every split offset that falls inside it.
        let mut start = 0usize;
        let cuts: Vec<usize> = reply
            .splits
            .iter()
            .filter(|&&s| s > offset && s < offset + ev.len())
            .map(|&s| s - offset)
            .chain(std::iter::once(ev.len()))
            .collect();
        for cut in cuts {
            wr.write_all(&chunk(&ev[start..cut])).await?;
            wr.flush().await?;
            if cut != ev.len() {
                // Give the split its own segment and, usually, its own read at the gateway.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            start = cut;
        }
        offset += ev.len();
        shared.update(|s| s.events_sent += 1);
    }
    match reply.ending {
        Ending::Done | Ending::EndWithoutDone => {
            wr.write_all(b"0\r\n\r\n").await?;
            wr.flush().await?;
            Ok(if reply.close {
                After::Close
            } else {
                After::KeepAlive
            })
        }
        Ending::Fin => Ok(After::Close),
        Ending::Rst => Ok(After::Reset),
        Ending::DropMidEvent => {
            let next = format!(
                "data: {}\n\n",
                sse_events(&["cut".to_string()], model, false)[0]
            );
            let half = &next.as_bytes()[..next.len() / 2];
            wr.write_all(&chunk(half)).await?;
            wr.flush().await?;
            Ok(After::Reset)
        }
        Ending::Stall => Ok(After::Hold),
    }
}
