//! `Gateway`: Switchyard's `ProxyHttp`. Thin per-phase dispatch; the work lives in the
//! submodules named for what they own.
//!
//! - `early_request_filter`: request id, config snapshot.
//! - `request_filter`: header limit, route table, then a local answer or the LLM exchange
//!   (which always ends the request here: see `exchange` for why).
//! - `logging`: access-log line and metrics (`logging` module).

pub mod ctx;
pub mod dispatch;
pub mod exchange;
pub mod logging;
pub mod respond;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;

use crate::admin::{
    self,
    stats::{Report, StatsApi},
};
use crate::api::models;
use crate::auth::virtual_keys::VirtualKeys;
use crate::auth::{self, Principal};
use crate::config::reload::{Reloader, Trigger};
use crate::error::GatewayError;
use crate::ledger::Ledger;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::shutdown::Drain;
use crate::state::{LiveState, SharedState};
use crate::upstream::UpstreamPool;
use ctx::RequestCtx;
use dispatch::{Access, Handler};

pub struct Gateway {
    state: SharedState,
    pool: UpstreamPool,
    /// `POST /api/config/reload`; `None` on the metrics listener.
    reloader: Option<Arc<Reloader>>,
    limits: Arc<Limits>,
    ledger: Ledger,
    /// The reports over the ledger; `None` on the metrics listener.
    stats: Option<Arc<StatsApi>>,
    virtual_keys: Arc<VirtualKeys>,
    drain: Drain,
    /// Serving `server.metrics_listen`: only `GET /metrics`, no auth, nothing else.
    metrics_only: bool,
}

impl Gateway {
    pub fn new(
        state: SharedState,
        reloader: Arc<Reloader>,
        limits: Arc<Limits>,
        ledger: Ledger,
        stats: Arc<StatsApi>,
        virtual_keys: Arc<VirtualKeys>,
        drain: Drain,
    ) -> Gateway {
        Gateway {
            state,
            pool: UpstreamPool::new(),
            reloader: Some(reloader),
            limits,
            ledger,
            stats: Some(stats),
            virtual_keys,
            drain,
            metrics_only: false,
        }
    }

    /// The gateway for the optional own metrics listener.
    pub fn metrics_only(state: SharedState) -> Gateway {
        Gateway {
            state,
            pool: UpstreamPool::new(),
            reloader: None,
            limits: Arc::default(),
            ledger: Ledger::disabled(),
            stats: None,
            virtual_keys: Arc::new(VirtualKeys::new("")),
            drain: Drain::default(),
            metrics_only: true,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.request_id = ctx::request_id(session.get_header("x-request-id").map(|v| v.as_bytes()));
        ctx.state = Some(self.state.load_full());
        ctx.drain = self.drain.clone();
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(state) = ctx.state.clone() else {
            respond::send_error(session, ctx, GatewayError::Internal).await?;
            return Ok(true);
        };
        if header_bytes(session) > state.config.server.limits.max_header {
            respond::send_error(session, ctx, GatewayError::HeaderTooLarge).await?;
            return Ok(true);
        }
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let (handler, access) = match dispatch::dispatch(&method, &path) {
            // The metrics listener serves Prometheus without auth, and nothing else.
            Ok((Handler::Metrics, _)) if self.metrics_only => (Handler::Metrics, Access::Public),
            Ok(_) if self.metrics_only => {
                respond::send_error(session, ctx, GatewayError::UnknownUrl).await?;
                return Ok(true);
            }
            Ok(routed) => routed,
            Err(e) => {
                // The body (if any) was not read: close rather than parse it as a request.
                session.set_keepalive(None);
                respond::send_error(session, ctx, e).await?;
                return Ok(true);
            }
        };
        if let Err(e) = authorize(session, ctx, &state, &self.virtual_keys, access) {
            respond::send_error(session, ctx, e).await?;
            return Ok(true);
        }
        match handler {
            Handler::Exchange(op) => {
                exchange::serve(&self.pool, &self.limits, session, ctx, state, op).await?
            }
            Handler::ListModels => {
                let body = models::list(&state.config, may_use(ctx), state.built_at);
                send_json(session, ctx, body).await?;
            }
            Handler::GetModel(id) => {
                match models::get(&state.config, &id, may_use(ctx), state.built_at) {
                    Some(body) => send_json(session, ctx, body).await?,
                    None => respond::send_error(session, ctx, GatewayError::ModelNotFound).await?,
                }
            }
            Handler::Health => {
                let body = serde_json::json!({
                    "status": "ok",
                    "models_count": state.config.models.len(),
                    "running_models": state.running_models(),
                    "version": env!("CARGO_PKG_VERSION"),
                });
                send_json(session, ctx, serde_json::to_vec(&body).unwrap_or_default()).await?;
            }
            Handler::Metrics => {
                let h = respond::header(200, "text/plain; version=0.0.4", ctx)?;
                respond::send_body(session, ctx, h, Bytes::from(Metrics::encode())).await?;
            }
            Handler::ReloadConfig => self.reload_config(session, ctx).await?,
            Handler::IssueToken => issue_token(session, ctx, &state).await?,
            Handler::Stats(report) => self.stats(session, ctx, report).await?,
            Handler::ListKeys => {
                let body = admin::keys::list(&state.config, &self.virtual_keys);
                send_json(session, ctx, body).await?;
            }
            Handler::CreateKey | Handler::UpdateKey(_) | Handler::RevokeKey(_) => {
                self.change_key(session, ctx, &state, handler).await?;
            }
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Every route is answered in request_filter; there are no passthrough routes yet.
        Error::e_explain(ErrorType::InternalError, "no passthrough route")
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        logging::record(ctx, e, &self.ledger);
    }
}

impl Gateway {
    /// Creates (201), updates or revokes a virtual key.
    async fn change_key(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        state: &LiveState,
        handler: Handler,
    ) -> Result<()> {
        let limits = &state.config.server.limits;
        let body = match handler {
            Handler::RevokeKey(_) => Bytes::new(),
            _ => {
                match exchange::read_small_body(session, MAX_LOGIN_BODY, limits.body_timeout).await
                {
                    Ok(b) => b,
                    Err(e) => return respond::send_error(session, ctx, e).await,
                }
            }
        };
        let (status, answer) = match handler {
            Handler::CreateKey => (
                201,
                admin::keys::create(&state.config, &self.virtual_keys, &body).await,
            ),
            Handler::UpdateKey(name) => (
                200,
                admin::keys::update(&state.config, &self.virtual_keys, &name, &body).await,
            ),
            Handler::RevokeKey(name) => (
                200,
                admin::keys::revoke(&state.config, &self.virtual_keys, &name).await,
            ),
            _ => (500, Err(GatewayError::Internal)),
        };
        match answer {
            Ok(body) => {
                let h = respond::header(status, "application/json", ctx)?;
                respond::send_body(session, ctx, h, Bytes::from(body)).await
            }
            Err(e) => respond::send_error(session, ctx, e).await,
        }
    }

    async fn stats(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        report: Report,
    ) -> Result<()> {
        let Some(stats) = &self.stats else {
            return respond::send_error(session, ctx, GatewayError::UnknownUrl).await;
        };
        let query = session.req_header().uri.query().map(str::to_owned);
        match stats.answer(report, query.as_deref()).await {
            Ok(body) => send_json(session, ctx, body).await,
            Err(e) => respond::send_error(session, ctx, e).await,
        }
    }

    /// `POST /api/config/reload`: applies the file now; 200 when the new config is live,
    /// 422 with the file's errors (and the old config still serving) when it is not.
    async fn reload_config(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(reloader) = &self.reloader else {
            return respond::send_error(session, ctx, GatewayError::UnknownUrl).await;
        };
        match reloader.reload(Trigger::Api).await {
            Ok(()) => {
                let state = self.state.load();
                let body = serde_json::json!({
                    "status": "reloaded",
                    "models_count": state.config.models.len(),
                    "providers_count": state.config.providers.len(),
                });
                send_json(session, ctx, serde_json::to_vec(&body).unwrap_or_default()).await
            }
            Err(e) => {
                respond::send_error(session, ctx, GatewayError::ConfigNotApplied(e.to_string()))
                    .await
            }
        }
    }
}

/// Largest management request body read (logins, keys).
const MAX_LOGIN_BODY: usize = 16 * 1024;

/// `POST /api/auth/token`: `{"username","password"}` → `{"access_token","token_type",
/// "expires_in"}`, or the same 401 as any bad credential.
async fn issue_token(session: &mut Session, ctx: &mut RequestCtx, state: &LiveState) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Login {
        username: String,
        password: String,
    }
    let Some(settings) = state.config.jwt.clone() else {
        return respond::send_error(session, ctx, GatewayError::InvalidApiKey).await;
    };
    let limits = &state.config.server.limits;
    let body = match exchange::read_small_body(session, MAX_LOGIN_BODY, limits.body_timeout).await {
        Ok(b) => b,
        Err(e) => return respond::send_error(session, ctx, e).await,
    };
    let Ok(login) = serde_json::from_slice::<Login>(&body) else {
        return respond::send_error(session, ctx, GatewayError::InvalidJson).await;
    };
    // Password hashing is slow on purpose: keep it off the workers.
    let issued = tokio::task::spawn_blocking(move || {
        auth::jwt::issue(&settings, &login.username, &login.password)
    })
    .await
    .ok()
    .flatten();
    let Some(issued) = issued else {
        return respond::send_error(session, ctx, GatewayError::InvalidApiKey).await;
    };
    let body = serde_json::json!({
        "access_token": issued.token,
        "token_type": "bearer",
        "expires_in": issued.expires_in.as_secs(),
    });
    send_json(session, ctx, serde_json::to_vec(&body).unwrap_or_default()).await
}

/// The access step: the route's access against the request's credential. Sets the key the
/// request runs as (for allowlists, limits and the ledger).
fn authorize(
    session: &Session,
    ctx: &mut RequestCtx,
    state: &LiveState,
    virtual_keys: &VirtualKeys,
    access: Access,
) -> Result<(), GatewayError> {
    let headers = &session.req_header().headers;
    match access {
        Access::Public => Ok(()),
        Access::Key => {
            let who = auth::authenticate(&state.config, virtual_keys, headers)?;
            ctx.key = who.as_ref().map(Principal::name);
            ctx.api_key = who.as_ref().and_then(Principal::key).cloned();
            Ok(())
        }
        Access::Admin if auth::admin_allowed(&state.config, virtual_keys, headers) => Ok(()),
        Access::Admin => Err(GatewayError::InvalidApiKey),
    }
}

/// The model allowlist of the request's key (all models while auth is off).
fn may_use(ctx: &RequestCtx) -> impl Fn(&str) -> bool + use<> {
    let key = ctx.api_key.clone();
    move |model| key.as_ref().is_none_or(|k| k.may_use(model))
}

async fn send_json(session: &mut Session, ctx: &mut RequestCtx, body: Vec<u8>) -> Result<()> {
    let h = respond::header(200, "application/json", ctx)?;
    respond::send_body(session, ctx, h, Bytes::from(body)).await
}

/// Size of the request line and header block, as the client sent them (contract §2
/// `server.limits.max_header`).
fn header_bytes(session: &Session) -> usize {
    let req = session.req_header();
    let line = req.method.as_str().len() + req.uri.to_string().len() + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}
