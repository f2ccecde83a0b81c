//! The Redis store of the rate limits (`rate_limits.store: redis://…`): the same exact
//! one-second-bucket windows as the memory store, kept in Redis so every instance that
//! shares it enforces one limit.
//!
//! One Lua script per decision (one round trip): it reads the clock from Redis (`TIME`,
//! so instances with skewed clocks agree), checks every scope of the request and charges
//! them all or none. A second script settles a token reservation and frees the concurrency
//! slot when the request ends; the request does not wait for it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::{Check, Headroom, LimitKind, Quota, Rejection, Scope};

/// Admits or refuses, atomically over all scopes. KEYS: per scope `req`, `tok`, `inflight`.
/// ARGV: window seconds, reserve, then per scope rpm, tpm, concurrency (0 = none).
/// Returns `{0, kind, retry_after}` (kind 1 requests, 2 tokens, 3 concurrency) or
/// `{1, second, rpm, used, reset, tpm, used, reset}` for the first scope after charging.
const ADMIT: &str = r"
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[1])
local reserve = tonumber(ARGV[2])
local n = #KEYS / 3
local function live(key)
  local out = {}
  local flat = redis.call('HGETALL', key)
  for j = 1, #flat, 2 do
    local s = tonumber(flat[j])
    if s + window >= now then
      table.insert(out, {s, tonumber(flat[j + 1])})
    else
      redis.call('HDEL', key, flat[j])
    end
  end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  return out
end
local function total(b)
  local x = 0
  for _, v in ipairs(b) do x = x + v[2] end
  return x
end
local function wait(b, need, limit)
  local sum = total(b)
  for _, v in ipairs(b) do
    sum = sum - v[2]
    if sum + need <= limit then return math.max(1, v[1] + window + 1 - now) end
  end
  return window + 1
end
local function capped(tpm)
  if tpm > 0 and reserve > tpm then return tpm end
  return reserve
end
local first = nil
for i = 0, n - 1 do
  local rpm, tpm, conc = tonumber(ARGV[3 + i * 3]), tonumber(ARGV[4 + i * 3]), tonumber(ARGV[5 + i * 3])
  local req, tok = live(KEYS[1 + i * 3]), live(KEYS[2 + i * 3])
  local inflight = tonumber(redis.call('GET', KEYS[3 + i * 3]) or '0')
  if conc > 0 and inflight >= conc then return {0, 3, 1} end
  if rpm > 0 and total(req) + 1 > rpm then return {0, 1, wait(req, 1, rpm)} end
  if tpm > 0 and total(tok) + capped(tpm) > tpm then return {0, 2, wait(tok, capped(tpm), tpm)} end
  if i == 0 then first = {rpm, req, tpm, tok} end
end
for i = 0, n - 1 do
  local tpm = tonumber(ARGV[4 + i * 3])
  redis.call('HINCRBY', KEYS[1 + i * 3], now, 1)
  redis.call('EXPIRE', KEYS[1 + i * 3], window + 2)
  redis.call('HINCRBY', KEYS[2 + i * 3], now, capped(tpm))
  redis.call('EXPIRE', KEYS[2 + i * 3], window + 2)
  redis.call('INCR', KEYS[3 + i * 3])
  redis.call('EXPIRE', KEYS[3 + i * 3], 3600)
end
local rpm, req, tpm, tok = first[1], first[2], first[3], first[4]
table.insert(req, {now, 1})
table.insert(tok, {now, capped(tpm)})
local function reset(b, limit)
  if limit == 0 or total(b) < limit then return 0 end
  return wait(b, 1, limit)
end
return {1, now, rpm, total(req), reset(req, rpm), tpm, total(tok), reset(tok, tpm)}
";

/// Settles and releases. KEYS: per scope `tok`, `inflight`. ARGV: second, token delta.
const SETTLE: &str = r"
for i = 0, #KEYS / 2 - 1 do
  if redis.call('HEXISTS', KEYS[1 + i * 2], ARGV[1]) == 1 then
    if redis.call('HINCRBY', KEYS[1 + i * 2], ARGV[1], ARGV[2]) < 0 then
      redis.call('HSET', KEYS[1 + i * 2], ARGV[1], 0)
    end
  end
  if redis.call('DECR', KEYS[2 + i * 2]) < 0 then redis.call('SET', KEYS[2 + i * 2], 0) end
end
return 1
";

/// Redis answers within this or the decision counts as the store being down.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why the Redis store gave no decision.
#[derive(Debug, thiserror::Error)]
#[error("rate-limit store unavailable: {0}")]
pub struct Unavailable(#[from] redis::RedisError);

/// The shared store.
pub struct RedisLimiter {
    client: Client,
    conn: OnceLock<ConnectionManager>,
    admit: Script,
    settle: Script,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter").finish_non_exhaustive()
    }
}

/// An admitted request's hold on the shared counters.
#[derive(Debug)]
pub struct RedisHold {
    limiter: Arc<RedisLimiter>,
    keys: Vec<String>,
    reserves: Vec<u64>,
    second: u64,
    done: bool,
}

fn keys_of(scope: &Scope) -> [String; 3] {
    let tag = match scope {
        Scope::Key(name) => format!("switchyard:k:{name}"),
        Scope::Model(name) => format!("switchyard:m:{name}"),
        Scope::KeyModel(key, model) => format!("switchyard:km:{key}:{model}"),
    };
    [
        format!("{tag}:req"),
        format!("{tag}:tok"),
        format!("{tag}:inflight"),
    ]
}

impl RedisLimiter {
    /// A store for `url`; connects on first use and reconnects by itself.
    pub fn new(url: &str) -> Result<RedisLimiter, Unavailable> {
        Ok(RedisLimiter {
            client: Client::open(url)?,
            conn: OnceLock::new(),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
        })
    }

    fn conn(&self) -> Result<ConnectionManager, Unavailable> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        Ok(self.conn.get_or_init(|| made).clone())
    }

    pub async fn admit(
        self: &Arc<Self>,
        checks: &[Check],
        reserve: u64,
        window: Duration,
    ) -> Result<Result<(RedisHold, Headroom), Rejection>, Unavailable> {
        let mut inv = self.admit.prepare_invoke();
        inv.arg(window.as_secs().max(1)).arg(reserve);
        let mut keys = Vec::with_capacity(checks.len() * 2);
        let mut reserves = Vec::with_capacity(checks.len());
        for c in checks {
            let [req, tok, inflight] = keys_of(&c.scope);
            inv.key(req).key(&tok).key(&inflight);
            inv.arg(c.limits.rpm.unwrap_or(0))
                .arg(c.limits.tpm.unwrap_or(0))
                .arg(c.limits.concurrency.unwrap_or(0));
            keys.push(tok);
            keys.push(inflight);
            reserves.push(c.limits.tpm.map_or(reserve, |t| reserve.min(t)));
        }
        let mut conn = self.conn()?;
        let reply: Vec<u64> = inv.invoke_async(&mut conn).await?;
        Ok(decode(reply).map(|(second, room)| {
            let hold = RedisHold {
                limiter: self.clone(),
                keys,
                reserves,
                second,
                done: false,
            };
            (hold, room)
        }))
    }
}

fn decode(reply: Vec<u64>) -> Result<(u64, Headroom), Rejection> {
    let at = |i: usize| reply.get(i).copied().unwrap_or(0);
    if at(0) == 0 {
        let kind = match at(1) {
            2 => LimitKind::Tokens,
            3 => LimitKind::Concurrency,
            _ => LimitKind::Requests,
        };
        return Err(Rejection {
            kind,
            retry_after: Duration::from_secs(at(2).max(1)),
        });
    }
    let quota = |limit: u64, used: u64, reset_s: u64| {
        (limit > 0).then_some(Quota {
            limit,
            remaining: limit.saturating_sub(used),
            reset_s,
        })
    };
    Ok((
        at(1),
        Headroom {
            requests: quota(at(2), at(3), at(4)),
            tokens: quota(at(5), at(6), at(7)),
        },
    ))
}

impl RedisHold {
    /// Settles the reservation to `used` tokens and frees the concurrency slot, in the
    /// background: the response never waits on it.
    pub fn settle(&mut self, used: u64) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // Scopes may have reserved different (capped) amounts: settle each by its own.
        for (pair, reserved) in self.keys.chunks(2).zip(&self.reserves) {
            let delta = used as i64 - *reserved as i64;
            self.spawn_settle(pair.to_vec(), delta);
        }
    }

    fn spawn_settle(&self, keys: Vec<String>, delta: i64) {
        let limiter = self.limiter.clone();
        let second = self.second;
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let Ok(mut conn) = limiter.conn() else { return };
            let mut inv = limiter.settle.prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            inv.arg(second).arg(delta);
            if let Err(err) = inv.invoke_async::<i64>(&mut conn).await {
                tracing::warn!(error = %err, "rate-limit settle failed; the reservation stands until its window passes");
            }
        });
    }
}

impl Drop for RedisHold {
    fn drop(&mut self) {
        if !self.done {
            // Never settled (the request ended early): keep the reservation, free the slot.
            self.done = true;
            for pair in self.keys.chunks(2) {
                self.spawn_settle(pair.to_vec(), 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decode() {
        assert_eq!(
            decode(vec![0, 2, 7]).unwrap_err(),
            Rejection {
                kind: LimitKind::Tokens,
                retry_after: Duration::from_secs(7)
            }
        );
        let (second, room) = decode(vec![1, 1000, 5, 5, 3, 0, 0, 0]).unwrap();
        assert_eq!(second, 1000);
        assert_eq!(
            room.requests,
            Some(Quota {
                limit: 5,
                remaining: 0,
                reset_s: 3
            })
        );
        assert_eq!(room.tokens, None);
    }
}
