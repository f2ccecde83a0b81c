//! What the gateway itself writes downstream: the error envelope, the SSE error event, local
//! JSON answers, and the standard headers every data-plane reply carries (contract §3–§4).
//!
//! Used from request_filter (local answers and errors before the first byte) and from the
//! exchange's commit and stream steps.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::error::GatewayError;
use crate::limits::Headroom;
use crate::proxy::ctx::RequestCtx;

/// A response header with `x-request-id` and, once a target is chosen, the resolved
/// `x-switchyard-model` / `x-switchyard-provider`.
pub fn header(status: u16, content_type: &str, ctx: &RequestCtx) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(6))?;
    h.insert_header("content-type", content_type)?;
    h.insert_header("x-request-id", ctx.request_id.as_str())?;
    // Model and provider names are validated config names, safe as header values.
    if let Some(model) = &ctx.model {
        h.insert_header("x-switchyard-model", model.as_str())?;
    }
    if let Some(provider) = &ctx.provider {
        h.insert_header("x-switchyard-provider", provider.as_str())?;
    }
    if let Some(room) = &ctx.headroom {
        ratelimit_headers(&mut h, room)?;
    }
    Ok(h)
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` as OpenAI sends them.
fn ratelimit_headers(h: &mut ResponseHeader, room: &Headroom) -> Result<()> {
    for (suffix, quota) in [("requests", room.requests), ("tokens", room.tokens)] {
        if let Some(q) = quota {
            h.insert_header(format!("x-ratelimit-limit-{suffix}"), q.limit.to_string())?;
            h.insert_header(
                format!("x-ratelimit-remaining-{suffix}"),
                q.remaining.to_string(),
            )?;
            h.insert_header(
                format!("x-ratelimit-reset-{suffix}"),
                format!("{}s", q.reset_s),
            )?;
        }
    }
    Ok(())
}

/// A complete JSON (or other) reply with an exact `Content-Length`.
pub async fn send_body(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut h: ResponseHeader,
    body: Bytes,
) -> Result<()> {
    h.insert_header("content-length", body.len().to_string())?;
    ctx.http_status = h.status.as_u16();
    session
        .write_response_header(Box::new(h), body.is_empty())
        .await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    ctx.bytes_sent = true;
    Ok(())
}

/// The contract's error envelope, with `Allow`, `Retry-After` or `Connection: close` when
/// the error calls for it. Records the error on the context for the access log.
pub async fn send_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: GatewayError,
) -> Result<()> {
    let mut h = header(err.status().as_u16(), "application/json", ctx)?;
    if let GatewayError::MethodNotAllowed { allow } = &err {
        h.insert_header("allow", *allow)?;
    }
    if err == GatewayError::InvalidApiKey {
        h.insert_header("www-authenticate", "Bearer")?;
    }
    if let Some(after) = err.retry_after() {
        h.insert_header("retry-after", after.as_secs().max(1).to_string())?;
    }
    if closes_connection(&err) {
        // Unread request bytes must never be parsed as the next request (CVE-2025-4366).
        h.insert_header("connection", "close")?;
        session.set_keepalive(None);
    }
    let body = Bytes::from(err.envelope());
    ctx.set_error(err);
    send_body(session, ctx, h, body).await
}

/// Errors raised before the request body was read leave it on the wire.
fn closes_connection(err: &GatewayError) -> bool {
    matches!(
        err,
        GatewayError::RequestTooLarge
            | GatewayError::InvalidApiKey
            | GatewayError::HeaderTooLarge
            | GatewayError::RequestTimeout
            | GatewayError::BadRequest
    )
}

/// The one SSE event that ends a stream that failed after it started (contract §4).
pub fn sse_error_event(err: &GatewayError) -> Bytes {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&err.envelope());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_error_event_is_one_data_event_with_the_envelope() {
        let ev = sse_error_event(&GatewayError::UpstreamDisconnected);
        let text = std::str::from_utf8(&ev).unwrap();
        assert!(text.starts_with("data: {\"error\":"));
        assert!(text.ends_with("\n\n"));
        assert_eq!(text.matches("\n\n").count(), 1);
        let v: serde_json::Value =
            serde_json::from_str(text.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(v["error"]["code"], "upstream_disconnected");
        assert!(!text.contains("[DONE]"));
    }
}
