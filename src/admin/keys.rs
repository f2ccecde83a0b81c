//! `GET|POST /api/keys`, `PATCH|DELETE /api/keys/{name}`: virtual keys through the
//! management API (issue 4). Admin only. A created key is shown once, in the response that
//! creates it; afterwards only its name, allowlist, limits and budget are.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::virtual_keys::VirtualKeys;
use crate::config::{ApiKey, BudgetPeriod, Config, model_glob_set, valid_model_name};
use crate::error::GatewayError;
use crate::ledger::keys::KeyRecord;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    name: Option<String>,
    models: Option<Vec<String>>,
    limits: Option<LimitsBody>,
    /// `null` removes the budget; absent keeps it.
    #[serde(default, deserialize_with = "present")]
    budget: Option<Option<BudgetBody>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    rpm: Option<u64>,
    tpm: Option<u64>,
    concurrency: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetBody {
    usd: f64,
    period: String,
}

/// Tells a field set to `null` from one left out.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Every key: the file's (`source: config`) and the virtual ones (`source: api`).
pub fn list(config: &Config, keys: &VirtualKeys) -> Vec<u8> {
    let from_file = config.keys.values().map(|k| file_key(k));
    let records = keys.records();
    let from_api = records.iter().map(record_json);
    let data: Vec<Value> = from_file.chain(from_api).collect();
    serde_json::to_vec(&json!({"object": "list", "data": data})).unwrap_or_default()
}

/// Creates a key; the answer carries it in plain text, once.
pub async fn create(
    config: &Config,
    keys: &VirtualKeys,
    body: &[u8],
) -> Result<Vec<u8>, GatewayError> {
    let b: KeyBody = serde_json::from_slice(body).map_err(|_| GatewayError::InvalidJson)?;
    let name = b
        .name
        .clone()
        .ok_or(GatewayError::MissingParameter("name"))?;
    if !valid_model_name(&name) {
        return Err(GatewayError::InvalidValue("name"));
    }
    if config.keys.contains_key(&name) {
        return Err(GatewayError::Conflict("name"));
    }
    let mut record = KeyRecord {
        name,
        digest: String::new(),
        models: Vec::new(),
        rpm: None,
        tpm: None,
        concurrency: None,
        budget_usd: None,
        budget_period: None,
        created_ms: 0,
    };
    apply(&mut record, b)?;
    let (key, record) = keys.create(record).await?;
    let mut v = record_json(&record);
    v["key"] = Value::String(key);
    serde_json::to_vec(&v).map_err(|_| GatewayError::Internal)
}

/// Changes a virtual key's models, limits or budget (the fields given).
pub async fn update(
    config: &Config,
    keys: &VirtualKeys,
    name: &str,
    body: &[u8],
) -> Result<Vec<u8>, GatewayError> {
    if config.keys.contains_key(name) {
        // A key of the file changes with the file.
        return Err(GatewayError::Conflict("name"));
    }
    let b: KeyBody = serde_json::from_slice(body).map_err(|_| GatewayError::InvalidJson)?;
    if b.name.is_some() {
        return Err(GatewayError::InvalidValue("name"));
    }
    let mut record = keys
        .records()
        .iter()
        .find(|r| r.name == name)
        .cloned()
        .ok_or(GatewayError::KeyNotFound)?;
    apply(&mut record, b)?;
    keys.update(&record).await?;
    serde_json::to_vec(&record_json(&record)).map_err(|_| GatewayError::Internal)
}

pub async fn revoke(
    config: &Config,
    keys: &VirtualKeys,
    name: &str,
) -> Result<Vec<u8>, GatewayError> {
    if config.keys.contains_key(name) {
        return Err(GatewayError::Conflict("name"));
    }
    keys.revoke(name).await?;
    serde_json::to_vec(&json!({"name": name, "revoked": true})).map_err(|_| GatewayError::Internal)
}

/// Validates the body's fields onto `record`.
fn apply(record: &mut KeyRecord, b: KeyBody) -> Result<(), GatewayError> {
    if let Some(models) = b.models {
        if model_glob_set(&models).is_err() {
            return Err(GatewayError::InvalidValue("models"));
        }
        record.models = models;
    }
    if let Some(l) = b.limits {
        let positive = |v: Option<u64>| match v {
            Some(0) => Err(GatewayError::InvalidValue("limits")),
            Some(n) => i64::try_from(n)
                .map(Some)
                .map_err(|_| GatewayError::InvalidValue("limits")),
            None => Ok(None),
        };
        record.rpm = positive(l.rpm)?;
        record.tpm = positive(l.tpm)?;
        record.concurrency = positive(l.concurrency)?;
    }
    match b.budget {
        None => {}
        Some(None) => {
            record.budget_usd = None;
            record.budget_period = None;
        }
        Some(Some(budget)) => {
            if !(budget.usd.is_finite() && budget.usd > 0.0)
                || BudgetPeriod::from_name(&budget.period).is_none()
            {
                return Err(GatewayError::InvalidValue("budget"));
            }
            record.budget_usd = Some(budget.usd);
            record.budget_period = Some(budget.period);
        }
    }
    Ok(())
}

fn record_json(r: &KeyRecord) -> Value {
    json!({
        "name": r.name,
        "source": "api",
        "models": r.models,
        "limits": {"rpm": r.rpm, "tpm": r.tpm, "concurrency": r.concurrency},
        "budget": r.budget_usd.map(|usd| json!({"usd": usd, "period": r.budget_period})),
        "created_at": r.created_ms / 1000,
    })
}

fn file_key(k: &ApiKey) -> Value {
    json!({
        "name": k.name,
        "source": "config",
        "models": if k.models.is_some() { Value::String("(from the config file)".into()) } else { json!([]) },
        "limits": {"rpm": k.limits.rpm, "tpm": k.limits.tpm, "concurrency": k.limits.concurrency},
        "budget": k.budget.map(|b| json!({"usd": b.usd, "period": b.period.name()})),
        "created_at": null,
    })
}
