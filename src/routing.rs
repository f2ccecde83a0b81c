//! Model routing: `routes` (first match) → aliases → model → ordered attempt candidates.
//!
//! Called from the exchange's route step (request_filter, after the body is parsed). The
//! resolved model, not the requested name, is what later issues authorise and bill. Each
//! model's targets are ordered by its `balance` strategy (`balance`) from the live load of
//! their providers (`upstream`); targets with no endpoint able to take an attempt are left
//! out, so a dead backend costs no attempt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::balance::{self, Load};
use crate::config::{Balance, Config, Model, Target};
use crate::error::GatewayError;
use crate::upstream::Upstreams;

/// Per-model request counters (they rotate round robin and ties), rebuilt with each
/// `LiveState`.
pub struct Router {
    ticks: HashMap<String, AtomicUsize>,
}

/// One upstream attempt candidate: a model's target.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub model: &'a Model,
    pub target: &'a Target,
}

/// Where a request goes: the resolved model and its candidates in attempt order.
#[derive(Debug)]
pub struct Plan<'a> {
    pub model: &'a Model,
    pub candidates: Vec<Candidate<'a>>,
    /// When no candidate is available because every endpoint is cooling down: how soon the
    /// first comes back (the 503's `Retry-After`).
    pub soonest_back: Option<Duration>,
}

/// Header lookup for route rules, so routing does not depend on Pingora's types.
pub trait HeaderLookup {
    fn header(&self, name: &http::HeaderName) -> Option<&[u8]>;
}

/// What routing needs to know of the caller: its headers (route rules, `hash_key`) and
/// which models its key may use.
pub struct Caller<'r> {
    pub headers: &'r dyn HeaderLookup,
    pub may_use: &'r dyn Fn(&str) -> bool,
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let ticks = config
            .models
            .keys()
            .map(|m| (m.clone(), AtomicUsize::new(0)))
            .collect();
        Router { ticks }
    }

    /// Resolves `requested` to a configured model and lists the attempt candidates: the
    /// model's available targets in its balance order, then each fallback model's. The
    /// key's allowlist (`may_use`) is checked on the resolved model and on every fallback,
    /// so neither an alias, a route rule nor a fallback leads past it.
    pub fn plan<'a>(
        &self,
        config: &'a Config,
        requested: &str,
        request: &Caller<'_>,
        upstreams: &Upstreams,
        now: Instant,
    ) -> Result<Plan<'a>, GatewayError> {
        let name =
            resolve_name(config, requested, request.headers).ok_or(GatewayError::ModelNotFound)?;
        let model = config
            .models
            .get(name)
            .filter(|m| (request.may_use)(&m.name))
            .ok_or(GatewayError::ModelNotFound)?;
        let headers = request.headers;
        let mut candidates = Vec::with_capacity(model.targets.len());
        let chain = std::iter::once(model).chain(
            model
                .fallbacks
                .iter()
                .filter_map(|f| config.models.get(f))
                .filter(|m| (request.may_use)(&m.name)),
        );
        for m in chain.clone() {
            self.push_in_order(m, headers, upstreams, now, &mut candidates);
        }
        let soonest_back = if candidates.is_empty() {
            chain
                .flat_map(|m| &m.targets)
                .filter_map(|t| upstreams.provider(&t.provider)?.soonest_back(now))
                .min()
        } else {
            None
        };
        Ok(Plan {
            model,
            candidates,
            soonest_back,
        })
    }

    fn push_in_order<'a>(
        &self,
        model: &'a Model,
        headers: &dyn HeaderLookup,
        upstreams: &Upstreams,
        now: Instant,
        out: &mut Vec<Candidate<'a>>,
    ) {
        let tick = self
            .ticks
            .get(&model.name)
            .map_or(0, |c| c.fetch_add(1, Ordering::Relaxed));
        let affinity = (model.balance == Balance::HashKey)
            .then(|| client_key(headers))
            .flatten();
        let loads: Vec<Load> = model
            .targets
            .iter()
            .map(|t| target_load(t, upstreams, now, affinity.is_some()))
            .collect();
        out.extend(
            balance::order(model.balance, &loads, tick, affinity)
                .into_iter()
                .map(|i| Candidate {
                    model,
                    target: &model.targets[i],
                }),
        );
    }
}

/// A target's live load; its identity is hashed only when the request asks for affinity.
fn target_load(t: &Target, upstreams: &Upstreams, now: Instant, affinity: bool) -> Load {
    let (in_flight, latency_us, available) = upstreams
        .provider(&t.provider)
        .map_or((0, 0, false), |p| p.load(now));
    Load {
        weight: t.weight,
        in_flight,
        latency_us,
        available,
        id: if affinity {
            balance::stable_hash(&[t.provider.as_bytes(), t.model.as_bytes()])
        } else {
            0
        },
    }
}

/// The client's credential, hashed, for `hash_key` affinity: the same key lands on the same
/// target (and its KV cache) while that target is available.
fn client_key(headers: &dyn HeaderLookup) -> Option<u64> {
    headers
        .header(&http::header::AUTHORIZATION)
        .or_else(|| headers.header(&http::HeaderName::from_static("x-api-key")))
        .map(|v| balance::stable_hash(&[v]))
}

/// Route rules first (first match wins), then aliases, then model names. Names are
/// case-sensitive (reliability.md E1).
fn resolve_name<'a>(
    config: &'a Config,
    requested: &'a str,
    headers: &dyn HeaderLookup,
) -> Option<&'a str> {
    for route in &config.routes {
        let model_ok = route
            .model
            .as_ref()
            .is_none_or(|glob| glob.is_match(requested));
        let headers_ok = route
            .headers
            .iter()
            .all(|(name, want)| headers.header(name) == Some(want.as_bytes()));
        if model_ok && headers_ok {
            return Some(route.use_model.as_str());
        }
    }
    if let Some(model) = config.aliases.get(requested) {
        return Some(model.as_str());
    }
    config.models.contains_key(requested).then_some(requested)
}
