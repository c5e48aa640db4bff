//! Buckets shared by several gateway instances, in Redis. One Lua script checks and takes every
//! bucket a request needs at once, atomically, on the server's clock. When Redis does not answer
//! within the store timeout the gateway limits on its own buckets, says so once in the log, and
//! tries Redis again a second later.

use redis::aio::ConnectionManager;
use redis::{Client, Script};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// KEYS: the buckets. ARGV[1]: `take` (all or nothing) or `adjust` (add each amount, into debt
/// if need be). Then per bucket: capacity, units per millisecond, cost (`take`) or amount
/// (`adjust`). Returns `{wait_ms, which, level_1, level_2, ...}`; `wait_ms` > 0 when the take
/// was refused (`which`: the bucket that refused, from 1), and then nothing was taken.
const BUCKETS_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
local levels = {}
local wait = 0
local which = 0
for i = 1, #KEYS do
  local cap = tonumber(ARGV[3 * i - 1])
  local rate = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local saved = redis.call('HMGET', KEYS[i], 'units', 'at')
  local units = tonumber(saved[1])
  local at = tonumber(saved[2])
  if units == nil or at == nil then
    units = cap
    at = now
  end
  units = math.min(cap, units + math.max(0, now - at) * rate)
  levels[i] = units
  if mode == 'take' and units < cost then
    local w = math.ceil((cost - units) / rate)
    if w > wait then
      wait = w
      which = i
    end
  end
end
local out = {wait, which}
for i = 1, #KEYS do
  local cap = tonumber(ARGV[3 * i - 1])
  local rate = tonumber(ARGV[3 * i])
  local cost = tonumber(ARGV[3 * i + 1])
  local units = levels[i]
  if mode == 'take' and wait == 0 then
    units = units - cost
  elseif mode == 'adjust' then
    units = math.max(-cap, math.min(cap, units + cost))
  end
  redis.call('HSET', KEYS[i], 'units', tostring(units), 'at', tostring(now))
  -- A bucket left alone refills completely: Redis may forget it by then.
  redis.call('PEXPIRE', KEYS[i], math.ceil(2 * cap / rate) + 1000)
  out[i + 2] = math.floor(units)
end
return out
"#;

/// How long the store is left alone after it failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The most the first call may take: it connects and loads the script, several round trips that
/// `store_timeout`, meant for one, would cut short on a busy host (the gateway would then limit
/// locally, unshared, while its first requests come in).
const FIRST_CALL: Duration = Duration::from_secs(1);

/// One bucket in a store call.
pub struct StoreBucket<'a> {
    pub key: &'a str,
    pub capacity: u64,
    /// The cost to take, or (adjust) the amount to add, negative to charge.
    pub amount: i64,
}

pub enum StoreAnswer {
    /// Taken: each bucket's level after.
    Taken(Vec<i64>),
    /// Refused: nothing taken; the wait until it would be, and the bucket that refused.
    Wait { wait: Duration, bucket: usize },
}

pub struct RedisStore {
    client: Client,
    timeout: Duration,
    script: Script,
    connection: OnceLock<ConnectionManager>,
    /// Whether the last call failed (for the log: one line when it goes, one when it is back).
    down: AtomicBool,
    /// Whether a call has ever been answered.
    answered_once: AtomicBool,
    /// Milliseconds since `epoch` before which the store is not tried again.
    retry_at_ms: AtomicU64,
    epoch: Instant,
}

impl RedisStore {
    /// Checks the URL; connects on first use, so a Redis that is down at start does not stop the
    /// gateway.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisStore, String> {
        // The error would quote the URL, password included: say only what is wrong.
        let client =
            Client::open(url).map_err(|_| "not a valid redis:// or rediss:// URL".to_string())?;
        Ok(RedisStore {
            client,
            timeout,
            script: Script::new(BUCKETS_LUA),
            connection: OnceLock::new(),
            down: AtomicBool::new(false),
            answered_once: AtomicBool::new(false),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn connection(&self) -> Option<ConnectionManager> {
        if let Some(c) = self.connection.get() {
            return Some(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(FIRST_CALL)))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        match ConnectionManager::new_lazy_with_config(self.client.clone(), config) {
            Ok(c) => Some(self.connection.get_or_init(|| c).clone()),
            Err(e) => {
                self.failed(&format!("{:?}", e.kind()));
                None
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the store should be tried now (not within a second of a failure).
    pub fn usable(&self) -> bool {
        self.retry_at_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    fn failed(&self, why: &str) {
        self.retry_at_ms.store(
            self.now_ms() + RETRY_AFTER_FAILURE.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !self.down.swap(true, Ordering::AcqRel) {
            log::warn!(
                "rate-limit store unreachable ({why}): limiting on this instance's own buckets until it is back"
            );
        }
    }

    fn answered(&self) {
        self.answered_once.store(true, Ordering::Release);
        if self.down.swap(false, Ordering::AcqRel) {
            log::info!("rate-limit store is back: limits are shared again");
        }
    }

    /// Takes from every bucket or none (`take`), or adjusts each (`take == false`). `None` when
    /// the store did not answer in time: the caller limits locally.
    pub async fn call(&self, take: bool, buckets: &[StoreBucket<'_>]) -> Option<StoreAnswer> {
        let mut connection = self.connection()?;
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(if take { "take" } else { "adjust" });
        for b in buckets {
            invocation.key(b.key);
            invocation
                .arg(b.capacity)
                .arg(b.capacity as f64 / 60_000.0)
                .arg(b.amount);
        }
        let levels = self
            .exchange(invocation.invoke_async::<Vec<i64>>(&mut connection))
            .await?;
        if levels.len() != buckets.len() + 2 {
            self.failed("unexpected answer");
            return None;
        }
        let wait = levels[0];
        Some(if wait > 0 {
            StoreAnswer::Wait {
                wait: Duration::from_millis(wait as u64),
                bucket: (levels[1] as usize).saturating_sub(1),
            }
        } else {
            StoreAnswer::Taken(levels[2..].to_vec())
        })
    }

    /// One exchange with the store, within its timeout (`FIRST_CALL` until it first answered);
    /// `None`, with the store set aside for a while, when it failed or did not answer.
    async fn exchange<T>(
        &self,
        work: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Option<T> {
        let timeout = if self.answered_once.load(Ordering::Acquire) {
            self.timeout
        } else {
            self.timeout.max(FIRST_CALL)
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(answer)) => {
                self.answered();
                Some(answer)
            }
            Ok(Err(e)) => {
                self.failed(&format!("{:?}", e.kind()));
                None
            }
            Err(_) => {
                self.failed("timed out");
                None
            }
        }
    }

    /// A value and the milliseconds it has left (the response cache's shared entries); `None`
    /// when absent, or when the store did not answer within its timeout.
    pub async fn get_with_ttl(&self, key: &str) -> Option<(Vec<u8>, u64)> {
        if !self.usable() {
            return None;
        }
        let mut connection = self.connection()?;
        let mut pipe = redis::pipe();
        pipe.get(key).pttl(key);
        let (value, ttl) = self
            .exchange(pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut connection))
            .await?;
        value.filter(|_| ttl > 0).map(|value| (value, ttl as u64))
    }

    /// Sets a value that expires after `ttl_ms` (`SET key value PX ttl`).
    pub async fn set_with_ttl(&self, key: &str, value: &[u8], ttl_ms: u64) {
        if !self.usable() || ttl_ms == 0 {
            return;
        }
        let Some(mut connection) = self.connection() else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(ttl_ms);
        self.exchange(cmd.query_async::<()>(&mut connection)).await;
    }
}
