//! The route table: method + path → what handles the request, or 404 / 405.
//!
//! First step of request_filter. Everything the gateway serves is listed here, so a route
//! cannot be added without appearing in this one table.

use crate::api::openai::Operation;
use crate::error::GatewayError;

/// What serves a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// An LLM exchange with an upstream.
    Exchange(Operation),
    ListModels,
    GetModel(String),
    Health,
    Metrics,
    /// `POST /api/config/reload` (management plane).
    ReloadConfig,
}

/// Resolves a request line. Query strings are not part of `path`.
pub fn dispatch(method: &http::Method, path: &str) -> Result<Handler, GatewayError> {
    let (handler, allow) = match path {
        "/v1/chat/completions" => (Handler::Exchange(Operation::ChatCompletions), "POST"),
        "/v1/completions" => (Handler::Exchange(Operation::Completions), "POST"),
        "/v1/embeddings" => (Handler::Exchange(Operation::Embeddings), "POST"),
        "/v1/rerank" | "/rerank" => (Handler::Exchange(Operation::Rerank), "POST"),
        "/v1/models" => (Handler::ListModels, "GET"),
        "/health" => (Handler::Health, "GET"),
        "/metrics" => (Handler::Metrics, "GET"),
        "/api/config/reload" => (Handler::ReloadConfig, "POST"),
        _ => match path.strip_prefix("/v1/models/") {
            Some(id) if !id.is_empty() => (Handler::GetModel(id.to_string()), "GET"),
            _ => return Err(GatewayError::UnknownUrl),
        },
    };
    if method.as_str() == allow {
        Ok(handler)
    } else {
        Err(GatewayError::MethodNotAllowed { allow })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn table() {
        assert_eq!(
            dispatch(&Method::POST, "/v1/chat/completions"),
            Ok(Handler::Exchange(Operation::ChatCompletions))
        );
        assert_eq!(
            dispatch(&Method::POST, "/rerank"),
            Ok(Handler::Exchange(Operation::Rerank))
        );
        assert_eq!(
            dispatch(&Method::GET, "/v1/models/Qwen/Qwen2.5-7B"),
            Ok(Handler::GetModel("Qwen/Qwen2.5-7B".into()))
        );
        assert_eq!(
            dispatch(&Method::GET, "/v1/chat/completions"),
            Err(GatewayError::MethodNotAllowed { allow: "POST" })
        );
        assert_eq!(
            dispatch(&Method::POST, "/v1/chat/completion"),
            Err(GatewayError::UnknownUrl)
        );
        assert_eq!(
            dispatch(&Method::GET, "/v1/models/"),
            Err(GatewayError::UnknownUrl)
        );
        assert_eq!(
            dispatch(&Method::DELETE, "/health"),
            Err(GatewayError::MethodNotAllowed { allow: "GET" })
        );
    }
}
