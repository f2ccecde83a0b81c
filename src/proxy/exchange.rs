//! The LLM exchange, run inside `request_filter`: body → route → attempts → commit → stream.
//!
//! Why not Pingora's normal phases: a body read in `request_filter` cannot be forwarded past
//! 64 KiB (cloudflare/pingora#575, #780), and Pingora cannot retry on an upstream status
//! (cloudflare/pingora#873). So the exchange sends the request itself over Pingora's pooled
//! connections (`upstream::UpstreamPool`) and writes the response with
//! `write_response_header/body`. The steps
//! mirror the phases they stand in for (pick ≈ `upstream_peer`, build ≈
//! `upstream_request_filter`, commit ≈ `response_filter`, stream ≈ `response_body_filter`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession;
use tokio::time::timeout_at;

use crate::accounting::{self, CostParts, StreamTally, Usage, UsageSource, tokenizer};
use crate::api::openai::{ChatRequest, Operation};
use crate::api::sse::{self, SseFramer};
use crate::api::stream::{self as chunks, ChunkKind};
use crate::api::toplevel::TopLevel;
use crate::config::{Model, Pricing, Timeouts};
use crate::error::{GatewayError, LedgerStatus};
use crate::limits::{Check, Denied, Limits, Scope};
use crate::metrics::Metrics;
use crate::proxy::ctx::RequestCtx;
use crate::proxy::respond;
use crate::routing::{Caller, HeaderLookup};
use crate::shutdown::Drain;
use crate::state::LiveState;
use crate::upstream::{InFlightGuard, ResolvedEndpoint, SendError, UpstreamPool, Verdict};

/// Non-stream responses are buffered (for usage and the `model` rewrite) up to this size.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Upstream error bodies are read only this far, to classify them; they never reach clients.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Completion tokens reserved for a chat or completion request that sets no `max_tokens`.
const DEFAULT_COMPLETION_RESERVE: u64 = 1024;
/// Upper bound on upstream attempts per request, whatever the config lists (no retry storms).
const MAX_ATTEMPTS: usize = 8;
/// How long to wait for the upstream's end of body after `[DONE]` before giving up on
/// returning the connection to the pool.
const DONE_LINGER: Duration = Duration::from_millis(50);

/// Why an exchange stopped early.
enum Stop {
    /// A gateway error: rendered as the envelope, or as the SSE error event once streaming.
    Error(GatewayError),
    /// The client went away; the upstream connection is closed, not pooled.
    ClientGone,
}

impl From<GatewayError> for Stop {
    fn from(e: GatewayError) -> Self {
        Stop::Error(e)
    }
}

/// Runs one exchange and writes whatever the client gets.
pub async fn serve(
    pool: &UpstreamPool,
    limits: &Limits,
    session: &mut Session,
    ctx: &mut RequestCtx,
    state: Arc<LiveState>,
    op: Operation,
) -> Result<()> {
    ctx.exchange = true;
    let result = run(pool, limits, session, ctx, &state, op).await;
    if let Some(mut held) = ctx.admission.take() {
        // Tokens reserved at admission become the tokens used; the concurrency slot frees.
        held.settle(ctx.usage.prompt_tokens + ctx.usage.completion_tokens);
    }
    match result {
        Ok(()) => Ok(()),
        Err(Stop::Error(err)) if !ctx.bytes_sent => respond::send_error(session, ctx, err).await,
        Err(Stop::Error(err)) => {
            ctx.set_error(err);
            Ok(())
        }
        Err(Stop::ClientGone) => {
            ctx.status = LedgerStatus::ClientCancelled;
            ctx.error_code = None;
            // 499: the nginx convention for "client closed request", for the log only.
            ctx.http_status = 499;
            session.set_keepalive(None);
            Ok(())
        }
    }
}

async fn run(
    pool: &UpstreamPool,
    limits: &Limits,
    session: &mut Session,
    ctx: &mut RequestCtx,
    state: &LiveState,
    op: Operation,
) -> Result<(), Stop> {
    let config = &state.config;
    let body = read_body(
        session,
        config.server.limits.max_body,
        config.server.limits.body_timeout,
    )
    .await?;
    let req = ChatRequest::parse(op, &body)?;
    ctx.model_requested = Some(req.model.clone());
    ctx.stream = req.stream;
    let plan = {
        // Scoped: the caller view borrows the session, which the attempts need again.
        let key = ctx.api_key.clone();
        let may_use = |model: &str| key.as_ref().is_none_or(|k| k.may_use(model));
        let caller = Caller {
            headers: &SessionHeaders(session),
            may_use: &may_use,
        };
        state.router.plan(
            config,
            &req.model,
            &caller,
            &state.upstreams,
            Instant::now(),
        )?
    };
    ctx.model = Some(plan.model.name.clone());
    admit(
        limits,
        ctx,
        state,
        plan.model,
        reservation(&req, body.len()),
    )
    .await?;
    let _in_flight = InFlight::start(&plan.model.name);

    let timeouts = &config.server.timeouts;
    let deadline = ctx.started + timeouts.total;
    let mut last_err = GatewayError::BackendUnavailable {
        retry_after: plan.soonest_back,
    };
    'candidates: for candidate in &plan.candidates {
        let Some(upstream) = state.upstreams.provider(&candidate.target.provider) else {
            continue;
        };
        let upstream_body = req.upstream_body(&candidate.target.model)?;
        let mut tried = Vec::new();
        while let Some(ep) = upstream.pick(&mut tried, Instant::now()) {
            if ctx.attempts as usize >= MAX_ATTEMPTS {
                break 'candidates;
            }
            ctx.attempts += 1;
            ctx.model = Some(candidate.model.name.clone());
            ctx.provider = Some(ep.provider.clone());
            ctx.endpoint = Some(ep.url.clone());
            let request = ep.head.request(
                op.upstream_path(),
                req.stream,
                &ctx.request_id,
                &upstream_body,
            );
            let on_endpoint = ep.state.start();
            let sent = Instant::now();
            let outcome = tokio::select! {
                biased;
                r = attempt(pool, ep, timeouts, deadline, &request) => r,
                stop = interrupted(session, &mut ctx.drain) => return Err(stop),
            };
            match outcome {
                Ok((up, peer)) => {
                    ep.state.record(Verdict::Ok {
                        latency: sent.elapsed(),
                    });
                    count_attempt(&ep.provider, "ok");
                    if candidate.model.name != plan.model.name {
                        count_fallback(&plan.model.name, &candidate.model.name);
                    }
                    let answer = Answer {
                        up,
                        peer,
                        model: candidate.model,
                        deadline,
                        on_endpoint,
                    };
                    return commit(pool, session, ctx, &req, answer).await;
                }
                Err(failure) => {
                    ep.state.record(failure.verdict());
                    count_attempt(&ep.provider, failure.outcome_label());
                    tracing::debug!(request_id = %ctx.request_id, provider = %ep.provider, endpoint = %ep.url, outcome = failure.outcome_label(), "upstream attempt failed");
                    let retry = failure.retryable(candidate.model);
                    last_err = failure.into_error();
                    if !retry {
                        return Err(Stop::Error(last_err));
                    }
                }
            }
        }
    }
    Err(Stop::Error(last_err))
}

/// Tokens a request may use, reserved against `tpm` before it runs (contract §5.4): the
/// prompt estimated at 4 bytes a token of body (cheap, and on the high side for JSON) plus
/// the completion cap it asks for, else `DEFAULT_COMPLETION_RESERVE`. Embeddings and rerank
/// produce no completion.
fn reservation(req: &ChatRequest, body_bytes: usize) -> u64 {
    let prompt = body_bytes as u64 / 4;
    let completion = match req.op {
        Operation::ChatCompletions | Operation::Completions => {
            req.max_tokens.unwrap_or(DEFAULT_COMPLETION_RESERVE)
        }
        Operation::Embeddings | Operation::Rerank => 0,
    };
    prompt.saturating_add(completion)
}

/// The limit step: the key's budget, then the rate limits of the key, of the key on the
/// resolved model, and of the model, checked together; the hold goes on the context to be settled when the request ends.
async fn admit(
    limits: &Limits,
    ctx: &mut RequestCtx,
    state: &LiveState,
    model: &Model,
    reserve: u64,
) -> Result<(), GatewayError> {
    let key = ctx.api_key.clone();
    if let Some(k) = key.as_ref().filter(|k| k.budget.is_some()) {
        limits.budgets.ready().await;
        match limits.budgets.check(k, chrono::Utc::now()) {
            Ok(charge) => ctx.budget_charge = charge,
            Err(retry_after) => return Err(GatewayError::InsufficientQuota { retry_after }),
        }
    }
    let mut checks = Vec::with_capacity(2);
    if let Some(k) = key.as_ref().filter(|k| !k.limits.is_empty()) {
        checks.push(Check {
            scope: Scope::Key(k.name.clone()),
            limits: k.limits,
        });
    }
    if let Some(k) = &key
        && let Some(limits) = k.model_limits.get(&model.name)
    {
        checks.push(Check {
            scope: Scope::KeyModel(k.name.clone(), model.name.clone()),
            limits: *limits,
        });
    }
    if !model.limits.is_empty() {
        checks.push(Check {
            scope: Scope::Model(model.name.clone()),
            limits: model.limits,
        });
    }
    if checks.is_empty() {
        return Ok(());
    }
    match limits
        .rates
        .admit(&checks, reserve, state.config.rate_limits.window)
        .await
    {
        Ok(Some((held, room))) => {
            // Headers for rate-limited keys only (contract §3).
            if key.as_ref().is_some_and(|k| !k.limits.is_empty()) {
                ctx.headroom = Some(room);
            }
            ctx.admission = Some(held);
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(Denied::StoreUnavailable) => Err(GatewayError::RateLimiterUnavailable),
        Err(Denied::Limit(no)) => {
            if let Some(m) = Metrics::get() {
                let key = ctx.key.as_deref().unwrap_or("anonymous");
                m.rate_limited
                    .with_label_values(&[key, no.kind.as_str()])
                    .inc();
            }
            Err(GatewayError::RateLimited {
                kind: no.kind,
                retry_after: no.retry_after,
            })
        }
    }
}

/// `read_body` for the management routes' small JSON bodies, where a client that went away
/// needs no answer of its own: its error is a plain `BadRequest`.
pub(super) async fn read_small_body(
    session: &mut Session,
    max: usize,
    within: Duration,
) -> Result<Bytes, GatewayError> {
    read_body(session, max, within)
        .await
        .map_err(|stop| match stop {
            Stop::Error(e) => e,
            Stop::ClientGone => GatewayError::BadRequest,
        })
}

/// Reads the request body under `max_body` and `body_timeout` (contract §2). A declared
/// `Content-Length` over the limit is refused before a byte of the body is read.
async fn read_body(session: &mut Session, max: usize, within: Duration) -> Result<Bytes, Stop> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(GatewayError::RequestTooLarge.into());
    }
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = BytesMut::with_capacity(declared.map_or(4096, |n| n as usize));
    loop {
        match timeout_at(deadline, session.read_request_body()).await {
            Err(_) => return Err(GatewayError::RequestTimeout.into()),
            Ok(Err(e)) if e.esource() == &ErrorSource::Downstream && is_closed(&e) => {
                return Err(Stop::ClientGone);
            }
            Ok(Err(_)) => return Err(GatewayError::BadRequest.into()),
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Ok(Some(chunk))) => {
                if buf.len() + chunk.len() > max {
                    return Err(GatewayError::RequestTooLarge.into());
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

fn is_closed(e: &pingora::Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::ReadError
    )
}

/// Resolves when the client has gone (FIN or RST) while we wait on the upstream. A FIN
/// counts as gone (contract §5.2), which is Pingora's `abort_on_close` default.
async fn client_gone(session: &mut Session) {
    loop {
        if session.read_body_or_idle(true).await.is_err() {
            return;
        }
    }
}

/// Resolves when the exchange must stop waiting on its upstream: the client went away, or
/// a graceful stop's grace period is ending (`shutdown`).
async fn interrupted(session: &mut Session, drain: &mut Drain) -> Stop {
    tokio::select! {
        _ = client_gone(session) => Stop::ClientGone,
        _ = drain.expired() => Stop::Error(GatewayError::ServerShutdown),
    }
}

/// How one attempt failed, before anything reached the client.
enum Failure {
    Connect,
    Timeout,
    Status {
        code: u16,
        retry_after: Option<Duration>,
        context_length: bool,
    },
    Protocol,
}

impl Failure {
    fn outcome_label(&self) -> &'static str {
        match self {
            Failure::Connect => "connect_error",
            Failure::Timeout => "timeout",
            Failure::Status { code: 429, .. } => "status_429",
            Failure::Status { code, .. } if *code >= 500 => "status_5xx",
            Failure::Status { .. } => "status_4xx",
            Failure::Protocol => "bad_response",
        }
    }

    /// Contract §5.1: retry on `retry_on` outcomes only; a client's 4xx never.
    fn retryable(&self, model: &Model) -> bool {
        match self {
            Failure::Connect => model.retry_on.connect,
            Failure::Timeout => model.retry_on.timeout,
            Failure::Status { code, .. } => model.retry_on.statuses.contains(code),
            Failure::Protocol => false,
        }
    }

    /// What the failure says about the endpoint's health (see `upstream::circuit`): a
    /// refused connection, 429 or 503 sidelines it at once; timeouts, other 5xx and broken
    /// responses count towards its circuit; a client 4xx says nothing.
    fn verdict(&self) -> Verdict {
        match self {
            Failure::Connect => Verdict::CoolNow { retry_after: None },
            Failure::Status {
                code: 429 | 503,
                retry_after,
                ..
            } => Verdict::CoolNow {
                retry_after: *retry_after,
            },
            Failure::Status { code, .. } if *code < 500 => Verdict::Neutral,
            Failure::Timeout | Failure::Protocol | Failure::Status { .. } => Verdict::Strike,
        }
    }

    fn into_error(self) -> GatewayError {
        match self {
            Failure::Connect => GatewayError::BackendUnavailable { retry_after: None },
            Failure::Timeout => GatewayError::UpstreamTimeout,
            Failure::Protocol => GatewayError::BadUpstreamResponse,
            Failure::Status {
                code,
                retry_after,
                context_length,
            } => match code {
                _ if context_length => GatewayError::ContextLengthExceeded,
                400 | 413 | 422 => GatewayError::UpstreamRejected,
                408 | 504 => GatewayError::UpstreamTimeout,
                429 => GatewayError::UpstreamRateLimited { retry_after },
                503 => GatewayError::BackendUnavailable { retry_after },
                _ => GatewayError::BadUpstreamResponse,
            },
        }
    }
}

/// Sends `request` on a pooled connection and reads the response header within
/// `first_byte`. A 2xx hands back the live upstream session; anything else is a `Failure`.
async fn attempt(
    pool: &UpstreamPool,
    ep: &ResolvedEndpoint,
    timeouts: &Timeouts,
    total_deadline: Instant,
    request: &[u8],
) -> Result<(HttpSession, pingora::upstreams::peer::HttpPeer), Failure> {
    let peer = ep.peer(timeouts);
    let deadline =
        tokio::time::Instant::from_std(total_deadline.min(Instant::now() + timeouts.first_byte));
    let (mut up, reused) =
        match timeout_at(deadline, pool.send(&peer, request, timeouts.idle)).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(SendError::Connect)) => return Err(Failure::Connect),
            // A pooled connection the upstream closed while idle: the request never ran, so it
            // is a connect failure and safe to retry.
            Ok(Err(SendError::Write { reused: true })) => return Err(Failure::Connect),
            Ok(Err(SendError::Write { reused: false })) => return Err(Failure::Protocol),
            Ok(Ok(s)) => s,
        };
    // `idle` bounds every read of the response (Pingora's read timeout resets per read).
    up.set_read_timeout(Some(timeouts.idle));
    match timeout_at(deadline, up.read_response_header()).await {
        Err(_) => return Err(Failure::Timeout),
        // Closed without a response on a pooled connection: as above, the upstream dropped
        // it while idle.
        Ok(Err(e)) if reused && e.etype() != &ErrorType::ReadTimedout => {
            return Err(Failure::Connect);
        }
        Ok(Err(e)) if e.etype() == &ErrorType::ReadTimedout => return Err(Failure::Timeout),
        Ok(Err(_)) => return Err(Failure::Protocol),
        Ok(Ok(())) => {}
    }
    let Some(resp) = up.response_header() else {
        return Err(Failure::Protocol);
    };
    let code = resp.status.as_u16();
    if resp.status.is_success() {
        return Ok((up, peer));
    }
    let retry_after = resp
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let context_length = code == 400 && {
        let body = read_bounded(&mut up, MAX_ERROR_BODY_BYTES, deadline)
            .await
            .unwrap_or_default();
        mentions_context_length(&body)
    };
    Err(Failure::Status {
        code,
        retry_after,
        context_length,
    })
}

/// Upstreams word this differently (OpenAI's code, vLLM's and llama.cpp's messages).
fn mentions_context_length(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("context_length_exceeded")
        || text.contains("context length")
        || text.contains("exceeds the available context size")
        || text.contains("maximum context")
}

/// Reads a whole upstream body up to `max` bytes before `deadline`.
async fn read_bounded(
    up: &mut HttpSession,
    max: usize,
    deadline: tokio::time::Instant,
) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    loop {
        match timeout_at(deadline, up.read_response_body()).await {
            Ok(Ok(Some(chunk))) if buf.len() + chunk.len() <= max => buf.extend_from_slice(&chunk),
            Ok(Ok(None)) => return Some(buf.freeze()),
            _ => return None,
        }
    }
}

/// A 2xx upstream response whose header is in hand, and what serving it needs.
struct Answer<'a> {
    up: HttpSession,
    peer: pingora::upstreams::peer::HttpPeer,
    /// The model whose target answered (its pricing bills the request).
    model: &'a Model,
    deadline: Instant,
    /// Counts the request on its endpoint until the response is done.
    on_endpoint: InFlightGuard,
}

/// The response committed to the client: buffered JSON, or an SSE stream.
async fn commit(
    pool: &UpstreamPool,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &ChatRequest,
    answer: Answer<'_>,
) -> Result<(), Stop> {
    let is_sse = answer
        .up
        .response_header()
        .and_then(|h| h.headers.get(http::header::CONTENT_TYPE))
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if req.stream && is_sse {
        stream(pool, session, ctx, req, answer).await
    } else {
        buffered(pool, session, ctx, req, answer).await
    }
}

async fn buffered(
    pool: &UpstreamPool,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &ChatRequest,
    answer: Answer<'_>,
) -> Result<(), Stop> {
    let Answer {
        mut up,
        peer,
        model,
        deadline,
        on_endpoint: _on_endpoint,
    } = answer;
    let deadline = tokio::time::Instant::from_std(deadline);
    let body = tokio::select! {
        biased;
        b = read_bounded(&mut up, MAX_RESPONSE_BYTES, deadline) => b,
        stop = interrupted(session, &mut ctx.drain) => return Err(stop),
    };
    let Some(body) = body else {
        return Err(GatewayError::BadUpstreamResponse.into());
    };
    let mut top = TopLevel::parse(&body).map_err(|_| GatewayError::BadUpstreamResponse)?;
    if top.get("model").is_some() {
        let name =
            serde_json::value::to_raw_value(&req.model).map_err(|_| GatewayError::Internal)?;
        top.set("model", name);
    }
    let (usage, source) = match top
        .get("usage")
        .and_then(|u| serde_json::from_str(u.get()).ok())
        .and_then(|v| accounting::usage_from_value(&v))
    {
        Some(u) => (u, UsageSource::Upstream),
        None => {
            let whole: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let request = req.to_value();
            off_runtime(move || {
                accounting::settle_response(&whole, tokenizer::estimate_prompt_tokens(&request))
            })
            .await
        }
    };
    let cost = settle(ctx, model, usage, source);
    if wants_cost(session)
        && let Some(block) = cost_block(cost)
    {
        top.set("cost", block);
    }
    pool.release(up, &peer).await;
    let h = respond::header(200, "application/json", ctx).map_err(|_| GatewayError::Internal)?;
    respond::send_body(session, ctx, h, Bytes::from(top.to_vec()))
        .await
        .map_err(|_| Stop::ClientGone)
}

/// How a stream ended.
enum StreamEnd {
    Done,
    ClientGone,
    Failed(GatewayError),
}

async fn stream(
    pool: &UpstreamPool,
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &ChatRequest,
    answer: Answer<'_>,
) -> Result<(), Stop> {
    let Answer {
        mut up,
        peer,
        model,
        deadline,
        on_endpoint,
    } = answer;
    let mut h =
        respond::header(200, "text/event-stream", ctx).map_err(|_| GatewayError::Internal)?;
    h.insert_header("cache-control", "no-cache")
        .map_err(|_| GatewayError::Internal)?;
    // Chunked, so the connection stays reusable and a cut stream is visible in HTTP framing.
    h.insert_header("transfer-encoding", "chunked")
        .map_err(|_| GatewayError::Internal)?;
    ctx.http_status = 200;
    if session
        .write_response_header(Box::new(h), false)
        .await
        .is_err()
    {
        return Err(Stop::ClientGone);
    }
    ctx.bytes_sent = true;
    let mut tally = StreamTally::default();
    let cost = if wants_cost(session) {
        model.pricing.as_ref()
    } else {
        None
    };
    let end = pump(session, ctx, req, &mut up, &mut tally, deadline, cost).await;
    // Close or pool the upstream connection first: counting tokens may load the tokenizer,
    // and a cancelled generation must not run on meanwhile (contract §5.2).
    let result = match end {
        StreamEnd::Done => {
            // Counted before the end goes out, so the key's budget is charged by the time
            // the client can send its next request.
            let (usage, source) = stream_usage(req, tally).await;
            let _ = settle(ctx, model, usage, source);
            let _ = session.write_response_body(None, true).await;
            linger_and_release(pool, up, &peer).await;
            return Ok(());
        }
        StreamEnd::ClientGone => {
            up.shutdown().await;
            drop(up);
            Err(Stop::ClientGone)
        }
        StreamEnd::Failed(err) => {
            // The upstream broke a stream it had started: a strike against its health.
            on_endpoint.state().record(Verdict::Strike);
            up.shutdown().await;
            drop(up);
            let _ = session
                .write_response_body(Some(respond::sse_error_event(&err)), true)
                .await;
            ctx.set_error(err);
            Ok(())
        }
    };
    let (usage, source) = stream_usage(req, tally).await;
    let _ = settle(ctx, model, usage, source);
    result
}

/// A stream's usage: the upstream's, or counted from the deltas with an estimated prompt.
async fn stream_usage(req: &ChatRequest, tally: StreamTally) -> (Usage, UsageSource) {
    if tally.has_upstream_usage() {
        return tally.settle(0);
    }
    let body = req.to_value();
    off_runtime(move || tally.settle(tokenizer::estimate_prompt_tokens(&body))).await
}

/// Tokenizing (and building the tokenizer on first use) is CPU work: run it on the blocking
/// pool so it never stalls other requests' I/O on this worker.
async fn off_runtime<F>(f: F) -> (Usage, UsageSource)
where
    F: FnOnce() -> (Usage, UsageSource) + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or((Usage::default(), UsageSource::None))
}

/// Moves events from upstream to client as they arrive: each upstream read is framed, each
/// event rewritten, and everything framed from that read is written at once.
async fn pump(
    session: &mut Session,
    ctx: &mut RequestCtx,
    req: &ChatRequest,
    up: &mut HttpSession,
    tally: &mut StreamTally,
    deadline: Instant,
    cost: Option<&Pricing>,
) -> StreamEnd {
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut framer = SseFramer::new(sse::MAX_EVENT_BYTES);
    loop {
        let read = tokio::select! {
            biased;
            r = timeout_at(deadline, up.read_response_body()) => r,
            stop = interrupted(session, &mut ctx.drain) => return match stop {
                Stop::ClientGone => StreamEnd::ClientGone,
                Stop::Error(e) => StreamEnd::Failed(e),
            },
        };
        let chunk = match read {
            Err(_) => return StreamEnd::Failed(GatewayError::UpstreamTimeout),
            Ok(Err(e)) if e.etype() == &ErrorType::ReadTimedout => {
                return StreamEnd::Failed(GatewayError::UpstreamTimeout);
            }
            Ok(Err(_)) | Ok(Ok(None)) => {
                return StreamEnd::Failed(GatewayError::UpstreamDisconnected);
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        if framer.push(&chunk).is_err() {
            return StreamEnd::Failed(GatewayError::BadUpstreamResponse);
        }
        let mut out = BytesMut::new();
        let mut done = false;
        while let Some(ev) = framer.next_event() {
            match forward_event(&ev, req, tally, cost) {
                Ok(Some(bytes)) => out.extend_from_slice(&bytes),
                Ok(None) => {}
                Err(err) => {
                    // Deliver what was good before the bad event, then fail the stream.
                    let _ = write_out(session, ctx, out).await;
                    return StreamEnd::Failed(err);
                }
            }
            if ev.data == "[DONE]" {
                done = true;
                break;
            }
        }
        if write_out(session, ctx, out).await.is_err() {
            return StreamEnd::ClientGone;
        }
        if done {
            return StreamEnd::Done;
        }
    }
}

async fn write_out(session: &mut Session, ctx: &mut RequestCtx, out: BytesMut) -> Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    if ctx.ttft.is_none() {
        ctx.ttft = Some(ctx.started.elapsed());
    }
    session.write_response_body(Some(out.freeze()), false).await
}

/// One upstream event → the bytes the client gets (or none), per contract §5.3: `model`
/// rewritten to the requested name, the usage-only chunk dropped unless the client asked,
/// and given the `cost` block when the client asked for that too (`cost`: the pricing).
fn forward_event(
    ev: &sse::SseEvent,
    req: &ChatRequest,
    tally: &mut StreamTally,
    cost: Option<&Pricing>,
) -> Result<Option<Bytes>, GatewayError> {
    match chunks::inspect_chunk(&ev.data) {
        ChunkKind::Done => Ok(Some(Bytes::from_static(sse::DONE))),
        ChunkKind::NotJson => Err(GatewayError::BadUpstreamResponse),
        ChunkKind::Json(info) => {
            if info.has_error {
                // Upstream error text never reaches clients (contract §4).
                return Err(GatewayError::BadUpstreamResponse);
            }
            tally.observe(&info);
            if info.usage_only && !req.client_wants_usage {
                return Ok(None);
            }
            let mut data =
                chunks::rewrite_model(&ev.data, &req.model).unwrap_or_else(|| ev.data.clone());
            if let (Some(p), Some(usage), true) = (cost, info.usage, info.usage_only) {
                data = with_cost(data, &usage, p);
            }
            Ok(Some(sse::encode_event(&sse::SseEvent {
                event: ev.event.clone(),
                data,
            })))
        }
    }
}

/// After `[DONE]` the upstream's chunked body usually ends within the same packet; wait a
/// moment for it so the connection can go back to the pool, else close it.
async fn linger_and_release(
    pool: &UpstreamPool,
    mut up: HttpSession,
    peer: &pingora::upstreams::peer::HttpPeer,
) {
    let deadline = tokio::time::Instant::now() + DONE_LINGER;
    while !up.response_done() {
        match timeout_at(deadline, up.read_response_body()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => break,
            _ => {
                up.shutdown().await;
                return;
            }
        }
    }
    pool.release(up, peer).await;
}

/// Records the request's usage and cost, and charges the cost to the key's budget.
fn settle(ctx: &mut RequestCtx, model: &Model, usage: Usage, source: UsageSource) -> CostParts {
    ctx.usage = usage;
    ctx.usage_source = source;
    let parts = model.pricing.as_ref().map_or(CostParts::default(), |p| {
        accounting::cost_parts(
            &usage,
            p.input_per_token,
            p.output_per_token,
            p.cached_input_per_token,
        )
    });
    ctx.cost_usd = parts.total();
    if let Some(charge) = ctx.budget_charge.take() {
        charge.charge(ctx.cost_usd);
    }
    parts
}

/// Whether the client asked for the `cost` block (`x-switchyard-cost: true`).
fn wants_cost(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get("x-switchyard-cost")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// The usage chunk's data with the `cost` block added (unchanged if it does not parse).
fn with_cost(data: String, usage: &Usage, p: &Pricing) -> String {
    let parts = accounting::cost_parts(
        usage,
        p.input_per_token,
        p.output_per_token,
        p.cached_input_per_token,
    );
    let Ok(mut top) = TopLevel::parse(data.as_bytes()) else {
        return data;
    };
    let Some(block) = cost_block(parts) else {
        return data;
    };
    top.set("cost", block);
    String::from_utf8(top.to_vec()).unwrap_or(data)
}

/// `{"input_cost","output_cost","total_cost"}` in USD, as the multi-model API reference
/// shows it.
fn cost_block(parts: CostParts) -> Option<Box<serde_json::value::RawValue>> {
    let v = serde_json::json!({
        "input_cost": parts.input_usd,
        "output_cost": parts.output_usd,
        "total_cost": parts.total(),
    });
    serde_json::value::to_raw_value(&v).ok()
}

fn count_attempt(provider: &str, outcome: &str) {
    if let Some(m) = Metrics::get() {
        m.upstream_attempts
            .with_label_values(&[provider, outcome])
            .inc();
    }
}

fn count_fallback(model: &str, fallback: &str) {
    if let Some(m) = Metrics::get() {
        m.fallbacks.with_label_values(&[model, fallback]).inc();
    }
}

/// `switchyard_in_flight_requests{model}` up for as long as the exchange runs.
struct InFlight(Option<prometheus::IntGauge>);

impl InFlight {
    fn start(model: &str) -> InFlight {
        let gauge = Metrics::get().map(|m| m.in_flight.with_label_values(&[model]));
        if let Some(g) = &gauge {
            g.inc();
        }
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

/// Route rules read request headers through this, so routing does not know Pingora.
struct SessionHeaders<'a>(&'a Session);

impl HeaderLookup for SessionHeaders<'_> {
    fn header(&self, name: &http::HeaderName) -> Option<&[u8]> {
        self.0.req_header().headers.get(name).map(|v| v.as_bytes())
    }
}
