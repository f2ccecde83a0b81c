//! Request-handling errors: one `GatewayError` per row of contract §4.
//!
//! Every phase of the exchange returns these; `proxy::respond` renders them as the OpenAI
//! error envelope before the first response byte, or as one SSE error event after it. The
//! client message is fixed per variant, so nothing from upstream bodies, URLs, paths or
//! secrets can leak into a response: causes go to the log, not into `Display`.

use std::time::Duration;

use http::StatusCode;

use crate::limits::LimitKind;

/// What the ledger row's `status` says about a request (contract §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerStatus {
    Ok,
    ClientCancelled,
    UpstreamError,
    UpstreamTimeout,
    RejectedRate,
    RejectedInvalid,
    InternalError,
}

impl LedgerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientCancelled => "client_cancelled",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::RejectedRate => "rejected_rate",
            Self::RejectedInvalid => "rejected_invalid",
            Self::InternalError => "internal_error",
        }
    }
}

/// One error the gateway itself produces. Variants carry only what the client may see
/// (a parameter name, an `Allow` list, a retry hint) — never upstream text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("We could not parse the JSON body of your request. The body must be a JSON object.")]
    InvalidJson,
    #[error("Invalid type for '{0}'.")]
    InvalidType(&'static str),
    #[error("Missing required parameter: '{0}'.")]
    MissingParameter(&'static str),
    #[error("Invalid value for '{0}'.")]
    InvalidValue(&'static str),
    #[error("Invalid model name.")]
    InvalidModelName,
    #[error("Incorrect or missing credentials.")]
    InvalidApiKey,
    #[error("Rate limit reached for {}. Retry after the time in Retry-After.", .kind.as_str())]
    RateLimited {
        kind: LimitKind,
        retry_after: Duration,
    },
    #[error("The rate limiter is unavailable. Retry after the time in Retry-After.")]
    RateLimiterUnavailable,
    #[error("You exceeded your current quota: this key's budget for the period is spent.")]
    InsufficientQuota { retry_after: Duration },
    #[error("The usage database is unavailable.")]
    LedgerUnavailable,
    #[error("'{0}' is already taken.")]
    Conflict(&'static str),
    #[error("No such key.")]
    KeyNotFound,
    #[error("The model does not exist or you do not have access to it.")]
    ModelNotFound,
    #[error("Unknown request URL.")]
    UnknownUrl,
    #[error("Method not allowed.")]
    MethodNotAllowed { allow: &'static str },
    #[error("The request body is too large.")]
    RequestTooLarge,
    #[error("The request headers are too large.")]
    HeaderTooLarge,
    #[error("Timed out reading the request.")]
    RequestTimeout,
    #[error("Malformed HTTP request.")]
    BadRequest,
    #[error("The request exceeds the model's context length.")]
    ContextLengthExceeded,
    #[error("The upstream rejected the request.")]
    UpstreamRejected,
    #[error("The upstream returned an invalid response.")]
    BadUpstreamResponse,
    #[error("No backend is available for this model.")]
    BackendUnavailable { retry_after: Option<Duration> },
    #[error("The upstream is rate limiting requests.")]
    UpstreamRateLimited { retry_after: Option<Duration> },
    #[error("The upstream timed out.")]
    UpstreamTimeout,
    #[error("The upstream closed the connection before the response was complete.")]
    UpstreamDisconnected,
    #[error("The server is shutting down.")]
    ServerShutdown,
    #[error("Internal error.")]
    Internal,
    /// A config reload was asked for and the file was not applied; carries the file's own
    /// errors (`FILE:LINE:COL: message`), which name keys, never secret values.
    #[error("The config was not applied; the previous config keeps serving. {0}")]
    ConfigNotApplied(String),
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            InvalidJson
            | InvalidType(_)
            | MissingParameter(_)
            | InvalidValue(_)
            | InvalidModelName
            | BadRequest
            | ContextLengthExceeded
            | UpstreamRejected => StatusCode::BAD_REQUEST,
            InvalidApiKey => StatusCode::UNAUTHORIZED,
            Conflict(_) => StatusCode::CONFLICT,
            RateLimited { .. } | InsufficientQuota { .. } => StatusCode::TOO_MANY_REQUESTS,
            ModelNotFound | UnknownUrl | KeyNotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            BadUpstreamResponse | UpstreamDisconnected => StatusCode::BAD_GATEWAY,
            BackendUnavailable { .. }
            | UpstreamRateLimited { .. }
            | ServerShutdown
            | RateLimiterUnavailable
            | LedgerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ConfigNotApplied(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    pub fn error_type(&self) -> &'static str {
        // Contract §4: a 429's type says which limit it was.
        if matches!(self, GatewayError::InsufficientQuota { .. }) {
            return "insufficient_quota";
        }
        if let GatewayError::RateLimited { kind, .. } = self {
            return match kind {
                LimitKind::Tokens => "tokens",
                LimitKind::Requests | LimitKind::Concurrency => "requests",
            };
        }
        if self.status().is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }

    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidJson => "invalid_json",
            InvalidType(_) => "invalid_type",
            MissingParameter(_) => "missing_required_parameter",
            InvalidValue(_) => "invalid_value",
            InvalidModelName => "invalid_model_name",
            InvalidApiKey => "invalid_api_key",
            RateLimited { .. } => "rate_limit_exceeded",
            RateLimiterUnavailable => "rate_limiter_unavailable",
            InsufficientQuota { .. } => "insufficient_quota",
            LedgerUnavailable => "ledger_unavailable",
            Conflict(_) => "already_exists",
            KeyNotFound => "key_not_found",
            ModelNotFound => "model_not_found",
            UnknownUrl => "unknown_url",
            MethodNotAllowed { .. } => "method_not_allowed",
            RequestTooLarge => "request_too_large",
            HeaderTooLarge => "request_header_too_large",
            RequestTimeout => "request_timeout",
            BadRequest => "bad_request",
            ContextLengthExceeded => "context_length_exceeded",
            UpstreamRejected => "upstream_rejected_request",
            BadUpstreamResponse => "bad_upstream_response",
            BackendUnavailable { .. } => "backend_unavailable",
            UpstreamRateLimited { .. } => "upstream_rate_limited",
            UpstreamTimeout => "upstream_timeout",
            UpstreamDisconnected => "upstream_disconnected",
            ServerShutdown => "server_shutdown",
            Internal => "internal_error",
            ConfigNotApplied(_) => "config_invalid",
        }
    }

    pub fn param(&self) -> Option<&'static str> {
        use GatewayError::*;
        match self {
            InvalidType(p) | MissingParameter(p) | InvalidValue(p) | Conflict(p) => Some(p),
            InvalidModelName | ModelNotFound => Some("model"),
            _ => None,
        }
    }

    /// `Retry-After` for 503s: the upstream's own hint when it gave one, else one second.
    pub fn retry_after(&self) -> Option<Duration> {
        use GatewayError::*;
        match self {
            BackendUnavailable { retry_after } | UpstreamRateLimited { retry_after } => {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            ServerShutdown | RateLimiterUnavailable | LedgerUnavailable => {
                Some(Duration::from_secs(1))
            }
            RateLimited { retry_after, .. } | InsufficientQuota { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    pub fn ledger_status(&self) -> LedgerStatus {
        use GatewayError::*;
        match self {
            UpstreamTimeout => LedgerStatus::UpstreamTimeout,
            BadUpstreamResponse
            | BackendUnavailable { .. }
            | UpstreamRateLimited { .. }
            | UpstreamDisconnected
            | ContextLengthExceeded
            | UpstreamRejected => LedgerStatus::UpstreamError,
            Internal | ServerShutdown | LedgerUnavailable => LedgerStatus::InternalError,
            RateLimited { .. } | RateLimiterUnavailable | InsufficientQuota { .. } => {
                LedgerStatus::RejectedRate
            }
            _ => LedgerStatus::RejectedInvalid,
        }
    }

    /// The OpenAI envelope `{"error":{"message","type","param","code"}}`.
    pub fn envelope(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        });
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_four_fields() {
        let v: serde_json::Value =
            serde_json::from_slice(&GatewayError::InvalidType("max_tokens").envelope()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_type");
        assert_eq!(v["error"]["param"], "max_tokens");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_tokens")
        );
    }

    #[test]
    fn server_errors_are_typed_server_error() {
        for e in [
            GatewayError::BadUpstreamResponse,
            GatewayError::UpstreamTimeout,
            GatewayError::BackendUnavailable { retry_after: None },
            GatewayError::Internal,
        ] {
            assert!(e.status().is_server_error());
            assert_eq!(e.error_type(), "server_error");
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&e.envelope()).unwrap()["error"]["param"],
                serde_json::Value::Null
            );
        }
    }

    #[test]
    fn unavailable_always_carries_retry_after() {
        let e = GatewayError::UpstreamRateLimited {
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(
            GatewayError::BackendUnavailable { retry_after: None }.retry_after(),
            Some(Duration::from_secs(1))
        );
        assert_eq!(GatewayError::InvalidJson.retry_after(), None);
    }
}
