//! The route table: method + path → what handles the request, or 404 / 405.
//!
//! First step of request_filter. Everything the gateway serves is listed here, so a route
//! cannot be added without appearing in this one table.

use crate::admin::stats::Report;
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
    /// `POST /api/auth/token`: a user's password for a JWT.
    IssueToken,
    /// A usage or performance report over the ledger (management plane).
    Stats(Report),
    ListKeys,
    CreateKey,
    UpdateKey(String),
    RevokeKey(String),
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential, ever: the explicit list of unauthenticated routes.
    Public,
    /// An API key when keys are configured.
    Key,
    /// The admin credential (`server.admin_token`) when one is set; closed when keys are
    /// configured without one.
    Admin,
}

/// One entry of the route table. `path` ending in `{id}` matches any non-empty rest.
#[derive(Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    /// Every method of this path, for a 405's `Allow`.
    allow: &'static str,
    make: fn(&str) -> Handler,
}

/// Every route the gateway serves. Nothing is routed that is not listed here, and each
/// entry states its access, so no route can fall through to anonymous by omission.
pub const ROUTES: &[Route] = &[
    route("POST", "/v1/chat/completions", Access::Key, |_| {
        Handler::Exchange(Operation::ChatCompletions)
    }),
    route("POST", "/v1/completions", Access::Key, |_| {
        Handler::Exchange(Operation::Completions)
    }),
    route("POST", "/v1/embeddings", Access::Key, |_| {
        Handler::Exchange(Operation::Embeddings)
    }),
    route("POST", "/v1/rerank", Access::Key, |_| {
        Handler::Exchange(Operation::Rerank)
    }),
    route("POST", "/rerank", Access::Key, |_| {
        Handler::Exchange(Operation::Rerank)
    }),
    route("GET", "/v1/models", Access::Key, |_| Handler::ListModels),
    route("GET", "/v1/models/{id}", Access::Key, |id| {
        Handler::GetModel(id.to_owned())
    }),
    route("GET", "/health", Access::Public, |_| Handler::Health),
    // The login itself: the password in the body is the credential.
    route("POST", "/api/auth/token", Access::Public, |_| {
        Handler::IssueToken
    }),
    route("GET", "/metrics", Access::Admin, |_| Handler::Metrics),
    route("POST", "/api/config/reload", Access::Admin, |_| {
        Handler::ReloadConfig
    }),
    route("GET", "/api/stats/usage", Access::Admin, |_| {
        Handler::Stats(Report::Usage)
    }),
    route("GET", "/api/stats/performance", Access::Admin, |_| {
        Handler::Stats(Report::Performance)
    }),
    route("GET", "/api/monitoring/performance", Access::Admin, |_| {
        Handler::Stats(Report::Monitoring)
    }),
    Route {
        allow: "GET, POST",
        ..route("GET", "/api/keys", Access::Admin, |_| Handler::ListKeys)
    },
    Route {
        allow: "GET, POST",
        ..route("POST", "/api/keys", Access::Admin, |_| Handler::CreateKey)
    },
    Route {
        allow: "PATCH, DELETE",
        ..route("PATCH", "/api/keys/{id}", Access::Admin, |id| {
            Handler::UpdateKey(id.to_owned())
        })
    },
    Route {
        allow: "PATCH, DELETE",
        ..route("DELETE", "/api/keys/{id}", Access::Admin, |id| {
            Handler::RevokeKey(id.to_owned())
        })
    },
];

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    make: fn(&str) -> Handler,
) -> Route {
    Route {
        method,
        path,
        access,
        allow: method,
        make,
    }
}

impl Route {
    /// The handler if `path` is this route's; for `{id}` routes, the id.
    fn matches(&self, path: &str) -> Option<Handler> {
        match self.path.strip_suffix("{id}") {
            Some(prefix) => path
                .strip_prefix(prefix)
                .filter(|id| !id.is_empty())
                .map(self.make),
            None => (self.path == path).then(|| (self.make)("")),
        }
    }
}

/// Resolves a request line to its handler and access. Query strings are not part of `path`.
pub fn dispatch(method: &http::Method, path: &str) -> Result<(Handler, Access), GatewayError> {
    let mut allow = None;
    for r in ROUTES {
        if let Some(handler) = r.matches(path) {
            if method.as_str() == r.method {
                return Ok((handler, r.access));
            }
            allow = Some(r.allow);
        }
    }
    Err(allow.map_or(GatewayError::UnknownUrl, |allow| {
        GatewayError::MethodNotAllowed { allow }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn table() {
        assert_eq!(
            dispatch(&Method::POST, "/v1/chat/completions"),
            Ok((Handler::Exchange(Operation::ChatCompletions), Access::Key))
        );
        assert_eq!(
            dispatch(&Method::POST, "/rerank"),
            Ok((Handler::Exchange(Operation::Rerank), Access::Key))
        );
        assert_eq!(
            dispatch(&Method::GET, "/v1/models/Qwen/Qwen2.5-7B"),
            Ok((Handler::GetModel("Qwen/Qwen2.5-7B".into()), Access::Key))
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
        assert_eq!(
            dispatch(&Method::DELETE, "/api/keys/team"),
            Ok((Handler::RevokeKey("team".into()), Access::Admin))
        );
        assert_eq!(
            dispatch(&Method::PUT, "/api/keys"),
            Err(GatewayError::MethodNotAllowed { allow: "GET, POST" })
        );
    }

    #[test]
    fn only_health_and_login_are_public() {
        let public: Vec<&str> = ROUTES
            .iter()
            .filter(|r| r.access == Access::Public)
            .map(|r| r.path)
            .collect();
        assert_eq!(public, ["/health", "/api/auth/token"]);
    }
}
