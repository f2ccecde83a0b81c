//! `GET /v1/models` and `GET /v1/models/{id}`, answered from the config snapshot.
//!
//! request_filter, local answer: no upstream is contacted. Aliases resolve to their model's
//! entry, so a client can look up the name it will send.

use serde::Serialize;

use crate::config::{Config, Model};

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    aliases: &'a [String],
}

fn object(model: &Model, created: u64) -> ModelObject<'_> {
    ModelObject {
        id: &model.name,
        object: "model",
        created,
        owned_by: "switchyard",
        aliases: &model.aliases,
    }
}

/// `{"object":"list","data":[…]}` over the models the caller may use.
pub fn list(config: &Config, may_use: impl Fn(&str) -> bool, created: u64) -> Vec<u8> {
    let data: Vec<_> = config
        .models
        .values()
        .filter(|m| may_use(&m.name))
        .map(|m| object(m, created))
        .collect();
    serde_json::to_vec(&serde_json::json!({ "object": "list", "data": data })).unwrap_or_default()
}

/// One model by name or alias; `None` for an unknown name or one the caller may not use
/// (the caller answers 404 either way: a key cannot probe which models exist).
pub fn get(
    config: &Config,
    id: &str,
    may_use: impl Fn(&str) -> bool,
    created: u64,
) -> Option<Vec<u8>> {
    let name = config.aliases.get(id).map(String::as_str).unwrap_or(id);
    let model = config.models.get(name).filter(|m| may_use(&m.name))?;
    serde_json::to_vec(&object(model, created)).ok()
}
