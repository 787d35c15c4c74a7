//! The limit shared by every gateway instance: the same GCRA as
//! [`super::gcra`], with the TATs kept in Redis.
//!
//! One request costs one round trip: an `EVALSHA` of [`SCRIPT`] (an `EVAL`
//! the first time a server sees it) that reads the TATs of all the request's
//! keys, decides, and writes them back only when every key admits it. Redis
//! runs a script atomically, so two instances counting the same client
//! cannot both take the last request, and the clock is Redis's own (`TIME`),
//! so instances whose clocks disagree still agree on the count. Each key
//! expires when its bucket would be full again: an idle client costs
//! nothing.
//!
//! Redis is a help, not a dependency: when it cannot be reached in
//! [`BUDGET`] the request is counted by this instance alone (the caller's
//! fallback) and Redis is left alone for [`RETRY_AFTER`]. The change is
//! logged once each way: one `warn` when Redis goes away, one `info` when it
//! answers again. A client never sees an error for it.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client, Script};
use tokio::sync::Mutex;

use super::{gcra::Cell, Decision, Key};

/// The most a request waits for Redis, to connect or to answer, before it
/// is counted locally instead. Well below any request budget.
pub const BUDGET: Duration = Duration::from_millis(250);

/// How long Redis is left alone after a failure; requests meanwhile are
/// counted locally without waiting on it.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// KEYS: one per limit. ARGV: the interval and the tolerance of each key,
/// in microseconds, in the order of KEYS. Returns, per key,
/// `{allowed, remaining, reset_us, retry_after_us}`.
pub const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out, tats, all = {}, {}, true
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local ahead = new_tat - now
  if ahead > tolerance then
    all = false
    out[i] = {0, 0, tat - now, ahead - tolerance}
  else
    tats[i] = new_tat
    out[i] = {1, math.floor((tolerance - ahead) / interval), ahead, 0}
  end
end
if all then
  for i, key in ipairs(KEYS) do
    redis.call('SET', key, tats[i], 'PX', math.ceil((tats[i] - now) / 1000) + 1)
  end
end
return out
";

/// A connection to Redis, opened on first use and again after a failure.
pub struct SharedCells {
    client: Client,
    script: Script,
    /// Prefix of every key, so several systems can share one Redis.
    prefix: String,
    /// The open connection, and when Redis may be tried again after a
    /// failure. An async mutex: connecting happens under it, so that one
    /// request (not every waiting one) pays for a reconnect.
    state: Mutex<State>,
    /// Whether the last attempt reached Redis: the transitions are what is
    /// logged. Relaxed is enough, it orders nothing else.
    up: AtomicBool,
}

#[derive(Default)]
struct State {
    connection: Option<MultiplexedConnection>,
    retry_at: Option<Instant>,
}

impl SharedCells {
    pub fn new(url: &str, prefix: String) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: Client::open(url)?,
            script: Script::new(SCRIPT),
            prefix,
            state: Mutex::new(State::default()),
            up: AtomicBool::new(true),
        })
    }

    /// The decisions of Redis, or `None` when it cannot be asked now.
    pub async fn check(&self, cells: &[(Key, Cell)]) -> Option<Vec<Decision>> {
        let mut connection = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        for (key, cell) in cells {
            invocation
                .key(format!("{}:{key}", self.prefix))
                .arg(micros(cell.interval))
                .arg(micros(cell.tolerance));
        }
        let answer: Result<Vec<(u8, u64, u64, u64)>, _> =
            invocation.invoke_async(&mut connection).await;
        match answer {
            Ok(rows) if rows.len() == cells.len() => {
                self.reached();
                Some(
                    rows.into_iter()
                        .map(|(allowed, remaining, reset, retry_after)| Decision {
                            allowed: allowed == 1,
                            remaining,
                            reset: Duration::from_micros(reset),
                            retry_after: Duration::from_micros(retry_after),
                        })
                        .collect(),
                )
            }
            Ok(rows) => {
                self.failed(format!("the script answered {} rows", rows.len()))
                    .await;
                None
            }
            Err(error) => {
                self.failed(error.to_string()).await;
                None
            }
        }
    }

    /// The open connection, or a new one; `None` while Redis is left alone
    /// or when it cannot be reached.
    async fn connection(&self) -> Option<MultiplexedConnection> {
        let mut state = self.state.lock().await;
        if let Some(connection) = &state.connection {
            return Some(connection.clone());
        }
        if state.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(BUDGET))
            .set_response_timeout(Some(BUDGET));
        match self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(connection) => {
                state.connection = Some(connection.clone());
                state.retry_at = None;
                Some(connection)
            }
            Err(error) => {
                state.retry_at = Some(Instant::now() + RETRY_AFTER);
                drop(state);
                self.went_down(error.to_string());
                None
            }
        }
    }

    async fn failed(&self, reason: String) {
        let mut state = self.state.lock().await;
        state.connection = None;
        state.retry_at = Some(Instant::now() + RETRY_AFTER);
        drop(state);
        self.went_down(reason);
    }

    fn went_down(&self, reason: String) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(%reason, "redis unreachable; rate limits counted per instance");
        }
    }

    fn reached(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("redis reachable again; rate limits shared");
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
