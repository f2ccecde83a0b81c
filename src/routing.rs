//! Model routing: `routes` (first match) → aliases → model → ordered attempt candidates.
//!
//! Called from the exchange's route step (request_filter, after the body is parsed). The
//! resolved model, not the requested name, is what later issues authorise and bill.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::{Config, Model, Target};
use crate::error::GatewayError;

/// Per-model round-robin cursors, rebuilt with each `LiveState`.
pub struct Router {
    cursors: HashMap<String, AtomicUsize>,
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
}

/// Header lookup for route rules, so routing does not depend on Pingora's types.
pub trait HeaderLookup {
    fn header(&self, name: &http::HeaderName) -> Option<&[u8]>;
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let cursors = config
            .models
            .keys()
            .map(|m| (m.clone(), AtomicUsize::new(0)))
            .collect();
        Router { cursors }
    }

    /// Resolves `requested` to a configured model and lists the attempt candidates: the
    /// model's targets starting at its round-robin cursor, then each fallback model's.
    pub fn plan<'a>(
        &self,
        config: &'a Config,
        requested: &str,
        headers: &dyn HeaderLookup,
    ) -> Result<Plan<'a>, GatewayError> {
        let name = resolve_name(config, requested, headers).ok_or(GatewayError::ModelNotFound)?;
        let model = config.models.get(name).ok_or(GatewayError::ModelNotFound)?;
        let mut candidates = self.targets_in_turn(model);
        for fallback in &model.fallbacks {
            if let Some(fb) = config.models.get(fallback) {
                candidates.extend(self.targets_in_turn(fb));
            }
        }
        Ok(Plan { model, candidates })
    }

    fn targets_in_turn<'a>(&self, model: &'a Model) -> Vec<Candidate<'a>> {
        let n = model.targets.len();
        let start = self
            .cursors
            .get(&model.name)
            .map(|c| c.fetch_add(1, Ordering::Relaxed))
            .unwrap_or(0)
            % n.max(1);
        (0..n)
            .map(|i| Candidate {
                model,
                target: &model.targets[(start + i) % n],
            })
            .collect()
    }
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
