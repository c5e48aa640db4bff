//! The gateway's configuration: typed structs, `${VAR}` expansion and validation, all in one place,
//! so that a bad file fails at start with a message naming the key.
//!
//! One YAML file holds both Pingora's `ServerConf` keys (threads, pid_file, ...; Pingora reads those
//! itself) and the gateway's own sections below.

use crate::providers::{AuthPlacement, ProviderKind};
use crate::upstream::balance::BalanceMode;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Default request body limit: long contexts and base64 images.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
/// Anthropic requires `max_tokens`; this is sent when the client gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// Upstream calls one client request may cause, over its attempts, hedges and fallbacks.
pub const DEFAULT_MAX_UPSTREAM_CALLS: u32 = 8;
/// The most upstream calls any setting allows one request (`max_attempts`, `max_upstream_calls`,
/// `hedge.max`): each is a billed call, so more is a typo, never a plan.
pub const MAX_UPSTREAM_CALLS: u32 = 100;
/// The largest `max_request_bytes` and `max_response_bytes`: what one request may hold in memory.
pub const MAX_BODY_BYTES: usize = 1024 * 1024 * 1024;

/// `value` within `min..=max`, or an error naming `key` and the range.
fn within(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("must be from {min} to {max}"),
        ))
    }
}

/// A configuration error, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `providers.openai.api_key`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A credential. Its `Debug` never shows the value, so it cannot leak through a log line.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Client-facing listeners: addresses, or `{address, tls: {cert, key}}`.
    #[serde(default = "default_listen")]
    pub listen: OneOrMany<ListenConfig>,
    /// Admin listener: `/healthz`, `/readyz`, `/metrics`. `null` turns it off.
    #[serde(
        default = "default_admin_listen",
        deserialize_with = "admin_listen_address"
    )]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin endpoints require (all but `/healthz` and `/readyz`); required
    /// when `admin_listen` is not a loopback address.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// Largest accepted request body, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Largest upstream response the gateway buffers for translation, in bytes.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// Gateway keys: who may call, and which models. Empty: anyone who reaches the listener.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyConfig>,
    /// `auth: none`: serve without gateway keys on a non-loopback listener, knowingly.
    #[serde(default)]
    pub auth: Option<ClientAuth>,
    /// Where rate-limit buckets live: in this process (default), or shared through Redis.
    #[serde(default)]
    pub limits: LimitStoreConfig,
    /// Client-side deadlines and limits.
    #[serde(default)]
    pub edge: EdgeConfig,
    /// A/B experiments: model names served by one of several models, each user always by the
    /// same one.
    #[serde(default)]
    pub experiments: BTreeMap<String, ExperimentConfig>,
    /// `POST /v1/compare`.
    #[serde(default)]
    pub compare: CompareConfig,
    /// `POST /v1/batch`.
    #[serde(default)]
    pub batch: BatchConfig,
    /// The response cache's bounds (models opt in with `models.<name>.cache`).
    #[serde(default)]
    pub cache: CacheConfig,
    /// Prometheus series on the admin listener's `/metrics` (default on).
    #[serde(default = "default_metrics")]
    pub metrics: bool,
    /// One JSON line per request: `stderr`, or `{path: FILE, buffer: LINES}`. Absent: off.
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
}

fn default_metrics() -> bool {
    true
}

/// `access_log: stderr`, `access_log: /var/log/dragoman/access.log`, or
/// `access_log: {path: ..., buffer: 8192}`.
#[derive(Debug, Clone)]
pub enum AccessLogConfig {
    Path(String),
    Detailed { path: String, buffer: Option<usize> },
}

impl<'de> Deserialize<'de> for AccessLogConfig {
    // By hand rather than untagged, so that a mistake is named ("unknown field `bufer`") instead
    // of "data did not match any variant".
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Detailed {
            path: String,
            #[serde(default)]
            buffer: Option<usize>,
        }
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(path) => Ok(AccessLogConfig::Path(path)),
            table @ serde_yaml::Value::Mapping(_) => Detailed::deserialize(table)
                .map(|t| AccessLogConfig::Detailed {
                    path: t.path,
                    buffer: t.buffer,
                })
                .map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(
                "expected `stderr`, a file path, or {path: FILE, buffer: LINES}",
            )),
        }
    }
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stderr,
    File(std::path::PathBuf),
}

/// The validated `access_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub target: AccessLogTarget,
    /// Lines waiting for the writer at most; past it lines are dropped (and counted).
    pub buffer: usize,
}

pub const DEFAULT_ACCESS_LOG_BUFFER: usize = 8192;

impl AccessLogConfig {
    fn validate(&self) -> Result<AccessLogSettings, ConfigError> {
        let (path, buffer) = match self {
            AccessLogConfig::Path(path) => (path, None),
            AccessLogConfig::Detailed { path, buffer } => (path, *buffer),
        };
        let key = match self {
            AccessLogConfig::Path(_) => "access_log",
            AccessLogConfig::Detailed { .. } => "access_log.path",
        };
        let target = match path.as_str() {
            "stderr" => AccessLogTarget::Stderr,
            "" => return Err(ConfigError::new(key, "must name a file, or `stderr`")),
            file => AccessLogTarget::File(file.into()),
        };
        let buffer = buffer.unwrap_or(DEFAULT_ACCESS_LOG_BUFFER);
        within("access_log.buffer", buffer as u64, 1, 1 << 20)?;
        Ok(AccessLogSettings { target, buffer })
    }
}

/// `compare: {max_models: 8}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    /// The most models one compare request may name.
    #[serde(default)]
    pub max_models: Option<u32>,
}

/// `batch: {max_requests: 1000, concurrency: 16, global_concurrency: 64}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The most requests one batch may hold.
    #[serde(default)]
    pub max_requests: Option<u32>,
    /// The most requests of one batch running at once.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// The most batched requests running at once, over all batches.
    #[serde(default)]
    pub global_concurrency: Option<u32>,
}

/// `cache: {max_bytes: 268435456, max_entry_bytes: 1048576}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The most bytes all cached answers may hold together.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// The largest answer stored, in bytes.
    #[serde(default)]
    pub max_entry_bytes: Option<u64>,
    /// `memory` (default), or `redis`: entries are also shared through `limits.store`.
    #[serde(default)]
    pub store: CacheStore,
}

/// Where cached answers live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStore {
    /// In this process only.
    #[default]
    Memory,
    /// Also in the Redis of `limits.store`, shared with other gateway processes.
    Redis,
}

/// `models.<name>.cache: {ttl: 1h}`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCacheConfig {
    /// How long a stored answer is served.
    pub ttl: HumanDuration,
}

/// Validated `cache` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_bytes: usize,
    pub max_entry_bytes: usize,
    pub store: CacheStore,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: 256 << 20,
            max_entry_bytes: 1 << 20,
            store: CacheStore::Memory,
        }
    }
}

impl CacheConfig {
    fn validate(&self, limit_store: &LimitStoreSettings) -> Result<CacheSettings, ConfigError> {
        if self.store == CacheStore::Redis && limit_store.redis_url.is_none() {
            return Err(ConfigError::new(
                "cache.store",
                "`redis` shares the cache through `limits.store`, which is not set",
            ));
        }
        let default = CacheSettings::default();
        let max_bytes = self.max_bytes.unwrap_or(default.max_bytes as u64);
        // Far above any sensible value; keeps the sums of weights clear of overflow.
        within("cache.max_bytes", max_bytes, 1, 1 << 40)?;
        let max_entry_bytes = self
            .max_entry_bytes
            .unwrap_or((default.max_entry_bytes as u64).min(max_bytes));
        within("cache.max_entry_bytes", max_entry_bytes, 1, max_bytes)?;
        Ok(CacheSettings {
            max_bytes: usize::try_from(max_bytes)
                .map_err(|_| ConfigError::new("cache.max_bytes", "too large"))?,
            max_entry_bytes: usize::try_from(max_entry_bytes)
                .map_err(|_| ConfigError::new("cache.max_entry_bytes", "too large"))?,
            store: self.store,
        })
    }
}

/// Validated `compare` and `batch` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutSettings {
    pub compare_max_models: usize,
    pub batch_max_requests: usize,
    pub batch_concurrency: usize,
    pub batch_global_concurrency: usize,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        FanoutSettings {
            compare_max_models: 8,
            batch_max_requests: 1000,
            batch_concurrency: 16,
            batch_global_concurrency: 64,
        }
    }
}

/// The bound on each of the fan-out settings: far above any sensible value, far below what would
/// exhaust the process (each running request holds a leg, a socket and its buffers).
const MAX_FANOUT: u64 = 100_000;

fn validate_fanout(
    compare: &CompareConfig,
    batch: &BatchConfig,
) -> Result<FanoutSettings, ConfigError> {
    let d = FanoutSettings::default();
    let setting = |key: &str, value: Option<u32>, default: usize| match value {
        None => Ok(default),
        Some(v) => within(key, v.into(), 1, MAX_FANOUT).map(|()| v as usize),
    };
    Ok(FanoutSettings {
        compare_max_models: setting(
            "compare.max_models",
            compare.max_models,
            d.compare_max_models,
        )?,
        batch_max_requests: setting(
            "batch.max_requests",
            batch.max_requests,
            d.batch_max_requests,
        )?,
        batch_concurrency: setting("batch.concurrency", batch.concurrency, d.batch_concurrency)?,
        batch_global_concurrency: setting(
            "batch.global_concurrency",
            batch.global_concurrency,
            d.batch_global_concurrency,
        )?,
    })
}

/// `experiments.<name>`: clients ask for `<name>` as a model; each user is served by one arm.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// The arms: `[{model: a, weight: 90}, {model: b, weight: 10}]`.
    pub split: Vec<ArmConfig>,
    /// A request header that names the user, tried before the request's own `user` field.
    #[serde(default)]
    pub sticky_header: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    pub model: String,
    pub weight: u32,
}

/// A validated experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentSettings {
    pub name: String,
    /// Each arm's model and weight, in the configured order.
    pub arms: Vec<(String, u32)>,
    pub sticky_header: Option<http::HeaderName>,
}

/// The largest weight of an experiment's arm: weights are shares, so this is plenty of precision.
const MAX_ARM_WEIGHT: u64 = 1_000_000;

/// `limits: {store: "redis://127.0.0.1:6379", store_timeout: 50ms}` at the top level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitStoreConfig {
    /// A `redis://` (or `rediss://`) URL; absent: buckets in this process only.
    #[serde(default)]
    pub store: Option<Secret>,
    /// The longest a request waits on the store before it is limited on local buckets instead.
    #[serde(default)]
    pub store_timeout: Option<HumanDuration>,
}

/// `limits: {rpm, tpm, concurrency}` of one gateway key, model or provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens (input and output) per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests in flight at once (in this process).
    #[serde(default)]
    pub concurrency: Option<u32>,
}

impl LimitsConfig {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.concurrency.is_none()
    }

    /// Each value is positive and small enough that bucket arithmetic stays exact.
    fn validate(self, key: &str) -> Result<LimitsConfig, ConfigError> {
        const MOST: u64 = 1 << 40;
        for (name, value) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("concurrency", self.concurrency.map(u64::from)),
        ] {
            if let Some(v) = value {
                if v == 0 || v > MOST {
                    return Err(ConfigError::new(
                        format!("{key}.limits.{name}"),
                        format!("must be between 1 and {MOST}"),
                    ));
                }
            }
        }
        Ok(self)
    }
}

pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(50);

impl LimitStoreConfig {
    fn validate(&self) -> Result<LimitStoreSettings, ConfigError> {
        if let Some(url) = &self.store {
            crate::limits::store::RedisStore::new(url.expose(), DEFAULT_STORE_TIMEOUT)
                .map_err(|e| ConfigError::new("limits.store", e))?;
        }
        let store_timeout = match self.store_timeout {
            Some(HumanDuration(d)) if d.is_zero() => {
                return Err(ConfigError::new(
                    "limits.store_timeout",
                    "must be greater than 0",
                ))
            }
            Some(HumanDuration(d)) => d,
            None => DEFAULT_STORE_TIMEOUT,
        };
        Ok(LimitStoreSettings {
            redis_url: self.store.clone(),
            store_timeout,
        })
    }
}

/// The validated rate-limit store.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitStoreSettings {
    /// `None`: in-process buckets only.
    pub redis_url: Option<Secret>,
    pub store_timeout: Duration,
}

/// The client side's deadlines and limits (`edge:`): what a slow or hostile client may hold.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// The whole header block of a request, from the connection's start (first request) or
    /// from its first byte (later requests on a kept-alive connection).
    pub header_timeout: HumanDuration,
    /// The whole request body, from the end of its header.
    pub body_timeout: HumanDuration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: HumanDuration,
    /// How long one write to a client that reads nothing may wait.
    pub write_timeout: HumanDuration,
    /// The longest a stream may run, from its request's start.
    pub max_stream_duration: HumanDuration,
    /// Client connections served at once; past it a connection is answered 503 and closed.
    pub max_connections: usize,
    /// Bytes held by all request bodies and buffered answers at once; past it, 503.
    pub max_buffered_bytes: usize,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            header_timeout: HumanDuration(Duration::from_secs(10)),
            body_timeout: HumanDuration(Duration::from_secs(120)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            write_timeout: HumanDuration(Duration::from_secs(60)),
            max_stream_duration: HumanDuration(Duration::from_secs(30 * 60)),
            max_connections: 10_000,
            max_buffered_bytes: 1024 * 1024 * 1024,
        }
    }
}

/// The validated `edge:` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeSettings {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_stream_duration: Duration,
    pub max_connections: usize,
    pub max_buffered_bytes: usize,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        // The defaults are valid by construction.
        let d = EdgeConfig::default();
        EdgeSettings {
            header_timeout: d.header_timeout.0,
            body_timeout: d.body_timeout.0,
            idle_timeout: d.idle_timeout.0,
            write_timeout: d.write_timeout.0,
            max_stream_duration: d.max_stream_duration.0,
            max_connections: d.max_connections,
            max_buffered_bytes: d.max_buffered_bytes,
        }
    }
}

/// The longest any `edge` deadline may be: far beyond any real use, and far from overflowing
/// the clock arithmetic done with it.
const MAX_EDGE_DURATION: Duration = MAX_DURATION;

impl EdgeConfig {
    fn validate(&self, max_request_bytes: usize) -> Result<EdgeSettings, ConfigError> {
        let deadline = |d: HumanDuration, what: &str| {
            if d.0.is_zero() || d.0 > MAX_EDGE_DURATION {
                Err(ConfigError::new(
                    format!("edge.{what}"),
                    "must be greater than 0 and at most 24h",
                ))
            } else {
                Ok(d.0)
            }
        };
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "edge.max_connections",
                "must be greater than 0",
            ));
        }
        // A request is held twice: as received, and as planned for the upstream.
        if self.max_buffered_bytes / 2 < max_request_bytes {
            return Err(ConfigError::new(
                "edge.max_buffered_bytes",
                format!(
                    "must be at least twice max_request_bytes ({max_request_bytes}), or a \
                     request of the largest allowed size could never be served"
                ),
            ));
        }
        Ok(EdgeSettings {
            header_timeout: deadline(self.header_timeout, "header_timeout")?,
            body_timeout: deadline(self.body_timeout, "body_timeout")?,
            idle_timeout: deadline(self.idle_timeout, "idle_timeout")?,
            write_timeout: deadline(self.write_timeout, "write_timeout")?,
            max_stream_duration: deadline(self.max_stream_duration, "max_stream_duration")?,
            max_connections: self.max_connections,
            max_buffered_bytes: self.max_buffered_bytes,
        })
    }
}

/// The only value of the top-level `auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    None,
}

/// One gateway key: the key itself or its SHA-256 (so the file need hold no secret), and the
/// models it may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(default)]
    pub key: Option<Secret>,
    /// Lowercase or uppercase hex of the key's SHA-256.
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// The models this key may use; all when absent.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// A validated gateway key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySettings {
    pub name: String,
    /// SHA-256 of the key: the key itself is not kept.
    pub sha256: [u8; 32],
    /// `None`: every model.
    pub models: Option<Vec<String>>,
    pub limits: LimitsConfig,
}

fn default_listen() -> OneOrMany<ListenConfig> {
    OneOrMany(vec![ListenConfig::Plain(SocketAddr::from((
        [127, 0, 0, 1],
        8080,
    )))])
}

/// One client listener: `127.0.0.1:8080` (plain HTTP/1.1), or
/// `{ address: "0.0.0.0:8443", tls: { cert: FILE, key: FILE } }` (TLS, HTTP/2 or HTTP/1.1 by ALPN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenConfig {
    Plain(SocketAddr),
    Tls { address: SocketAddr, tls: TlsFiles },
}

impl ListenConfig {
    pub fn address(&self) -> SocketAddr {
        match self {
            ListenConfig::Plain(a) | ListenConfig::Tls { address: a, .. } => *a,
        }
    }
}

impl<'de> Deserialize<'de> for ListenConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            address: String,
            #[serde(default)]
            tls: Option<TlsFiles>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Plain(String),
            Full(Full),
        }
        let (address, tls) = match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected an address (127.0.0.1:8080) or {address, tls: {cert, key}}",
            )
        })? {
            Repr::Plain(a) => (a, None),
            Repr::Full(Full { address, tls }) => (address, tls),
        };
        let address = listen_address(&address).map_err(serde::de::Error::custom)?;
        Ok(match tls {
            None => ListenConfig::Plain(address),
            Some(tls) => ListenConfig::Tls { address, tls },
        })
    }
}

/// A listener's address: `IP:PORT`, or `HOST:PORT` with the name resolved once, when the file is
/// loaded, to its first IPv4 address (its first address when it has none): `localhost:8080` is
/// `127.0.0.1:8080`. One name is one socket, as an address is; list `[::1]:8080` beside it to
/// take IPv6 connections too.
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    let example = "write IP:PORT or HOST:PORT, e.g. 127.0.0.1:8080 or localhost:8080";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` has no port: {example}"));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!("`{text}` has no valid port: {example}"));
    };
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    if host.is_empty() || !host.chars().all(is_name) {
        return Err(format!("`{text}` is not an address: {example}"));
    }
    let resolved: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}

/// `admin_listen`: an address as [`listen_address`] reads it, or `null`.
fn admin_listen_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| listen_address(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// A TLS listener's certificate chain and private key, PEM files read at start and re-read when
/// they change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}
fn default_admin_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
}
fn default_max_request_bytes() -> usize {
    DEFAULT_MAX_REQUEST_BYTES
}
fn default_max_response_bytes() -> usize {
    64 * 1024 * 1024
}

/// `listen: 127.0.0.1:8080` or `listen: [127.0.0.1:8080, "[::1]:8080"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    /// A list, or one item (a string or a mapping). Not an untagged enum: that would replace the
    /// item's own error (`cannot resolve ...`) with "data did not match any variant".
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::value::{MapAccessDeserializer, StrDeserializer};
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct OneOrManyVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one entry or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(StrDeserializer::new(v)).map(|x| OneOrMany(vec![x]))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|x| OneOrMany(vec![x]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }
        }
        d.deserialize_any(OneOrManyVisitor(std::marker::PhantomData))
    }
}

/// One upstream service: a protocol, its instances, and its credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Base URLs of the instances (as the provider's SDK names its base URL). Defaults to the
    /// kind's public endpoint.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// A file holding the key (surrounding whitespace trimmed), read again when it changes.
    #[serde(default)]
    pub api_key_file: Option<String>,
    /// A command that prints a token (Azure Entra ID, Google OAuth), run again before it expires.
    #[serde(default)]
    pub api_key_command: Option<CommandConfig>,
    /// Several keys, used in turn; a key answered 401 or 429 is set aside for a while.
    #[serde(default)]
    pub api_keys: Option<Vec<KeyEntry>>,
    /// How long a key answered 401, or 429 without `Retry-After`, is set aside (`api_keys`).
    #[serde(default = "default_key_cooldown")]
    pub key_cooldown: HumanDuration,
    /// How often key files are checked for a new key.
    #[serde(default = "default_key_file_poll")]
    pub key_file_poll: HumanDuration,
    /// Where the key goes; each kind has the right default.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Azure OpenAI's `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Anthropic's `anthropic-version` header.
    #[serde(default = "default_anthropic_version")]
    pub anthropic_version: String,
    /// Extra headers sent on every upstream request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// The whole response (non-streaming), or the first byte (streaming).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Longest gap between two chunks of a stream.
    #[serde(default = "default_stream_idle_timeout")]
    pub stream_idle_timeout: HumanDuration,
    /// Attempts per request across this provider's instances (the first one included).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled for each further one, with jitter.
    #[serde(default = "default_retry_backoff")]
    pub retry_backoff: HumanDuration,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    #[serde(default)]
    pub circuit_breaker: Option<BreakerOverrides>,
    /// Lets a key go to a non-loopback `http://` endpoint, in clear.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// `round_robin` (weighted, default), `least_inflight` or `ewma`.
    #[serde(default)]
    pub balance: BalanceMode,
    /// Rate limits of this provider, over all its models and keys (to stay under its own).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Client headers of the provider families (`anthropic-beta`, `openai-beta`, ...) that
    /// reach this provider; the others are dropped (see `header_policy`).
    #[serde(default)]
    pub forward_headers: Vec<String>,
    /// `false`: no `x-forwarded-for` to this provider, so end users' addresses stay with the
    /// gateway (a public API has no use for them).
    #[serde(default = "yes")]
    pub forward_client_address: bool,
    /// `true`: a `${VAR}` in this provider's entry that is unset or empty leaves the provider
    /// out, with its models, instead of failing the start (see `leave_out_optional_providers`).
    #[serde(default)]
    pub optional: bool,
}

/// Active health checks: `tcp` (default) or HTTP `{path, interval, expect_status}`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// HTTP path to GET; without it the check is a TCP connect.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default = "default_health_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// `false` turns active checks off.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: None,
            interval: default_health_interval(),
            expect_status: default_expect_status(),
            enabled: true,
        }
    }
}

/// Overrides of the circuit breaker's defaults.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BreakerOverrides {
    pub consecutive_failures: Option<u32>,
    pub failure_rate: Option<f64>,
    pub min_requests: Option<u32>,
    pub window: Option<HumanDuration>,
    pub cooldown: Option<HumanDuration>,
}

fn yes() -> bool {
    true
}
fn default_key_cooldown() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_key_file_poll() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// `api_key_command`: an argument vector (`[gcloud, auth, print-access-token]`, run without a
/// shell), or `{ run: [...], refresh_every: 5m, timeout: 10s }`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandConfig {
    pub run: Vec<String>,
    /// When the output states no lifetime: how often the command runs again.
    pub refresh_every: Duration,
    /// How long one run may take; then it is killed and counts as failed.
    pub timeout: Duration,
}

/// Default `refresh_every` of a command whose output states no lifetime.
pub const DEFAULT_COMMAND_REFRESH: Duration = Duration::from_secs(300);
/// Default `timeout` of one run of a key command.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

impl<'de> Deserialize<'de> for CommandConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            run: Vec<String>,
            #[serde(default)]
            refresh_every: Option<HumanDuration>,
            #[serde(default)]
            timeout: Option<HumanDuration>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Argv(Vec<String>),
            Full(Full),
        }
        let full = match Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a list of arguments, or { run: [...], refresh_every, timeout }",
            )
        })? {
            Repr::Argv(run) => Full {
                run,
                refresh_every: None,
                timeout: None,
            },
            Repr::Full(f) => f,
        };
        Ok(CommandConfig {
            run: full.run,
            refresh_every: full.refresh_every.map_or(DEFAULT_COMMAND_REFRESH, |d| d.0),
            timeout: full.timeout.map_or(DEFAULT_COMMAND_TIMEOUT, |d| d.0),
        })
    }
}

/// One of `api_keys`: the key itself (usually `"${ENV_VAR}"`), `{ file: PATH }` or
/// `{ command: ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeyEntry {
    Literal(Secret),
    File { file: String },
    Command { command: CommandConfig },
}

/// Where a provider key comes from, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// Fixed for the process's life.
    Literal(Secret),
    /// Read at start (this is the content then), and again whenever the file changes.
    File { path: String, initial: Secret },
    /// Run at start, before traffic, and again before its token expires.
    Command(CommandConfig),
}

/// One provider key and the config key it was given under (for messages; never the value).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderKey {
    pub config_key: String,
    pub source: KeySource,
}

/// Most keys one provider may rotate over.
pub const MAX_PROVIDER_KEYS: usize = 64;
/// Longest `key_cooldown`, `key_file_poll`, `refresh_every` or command `timeout`.
const MAX_KEY_DURATION: Duration = MAX_DURATION;

/// Reads a key file: its content, whitespace trimmed, when it holds a usable key.
pub fn read_key_file(path: &str) -> Result<Secret, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_KEY_FILE_BYTES + 1)
                .read_to_string(&mut text)
                .map(|_| ())
        })
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(format!("{path} is larger than {MAX_KEY_FILE_BYTES} bytes"));
    }
    let key = Secret::new(text.trim());
    check_key(&key).map_err(|why| format!("{path} {why}"))?;
    Ok(key)
}

/// Largest key file or key command output read.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// Whether a key can be sent: not empty, and a valid header value (no line breaks).
pub fn check_key(key: &Secret) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("is empty");
    }
    if key.expose().contains(['\r', '\n']) {
        return Err("must not contain line breaks");
    }
    if http::HeaderValue::from_str(key.expose()).is_err() {
        return Err("holds characters a header cannot carry");
    }
    Ok(())
}

fn validate_command(key: &str, c: &CommandConfig) -> Result<(), ConfigError> {
    if c.run.first().is_none_or(|p| p.is_empty()) {
        return Err(ConfigError::new(key, "the command needs a program to run"));
    }
    for (name, d) in [("refresh_every", c.refresh_every), ("timeout", c.timeout)] {
        if d.is_zero() || d > MAX_KEY_DURATION {
            return Err(ConfigError::new(
                format!("{key}.{name}"),
                "must be greater than 0 and at most 24h",
            ));
        }
    }
    Ok(())
}
fn default_health_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_expect_status() -> u16 {
    200
}
fn default_stream_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_attempts() -> u32 {
    3
}
fn default_retry_backoff() -> HumanDuration {
    HumanDuration(Duration::from_millis(50))
}

fn default_anthropic_version() -> String {
    "2023-06-01".into()
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

/// The largest endpoint `weight`: weights are relative, and Pingora's weighted round robin holds
/// one slot per unit of weight (a weight of 10^10 would take 20 GB).
pub const MAX_WEIGHT: usize = 1000;

/// `"https://host/v1"` or `{ url: "https://host/v1", weight: 2 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    pub url: String,
    pub weight: usize,
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            url: String,
            #[serde(default = "one")]
            weight: usize,
        }
        fn one() -> usize {
            1
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Url(String),
            Full(Full),
        }
        let repr = Repr::deserialize(d).map_err(|_| {
            serde::de::Error::custom(format!(
                "expected a URL or {{url, weight}}, the weight a whole number from 1 to {MAX_WEIGHT}"
            ))
        })?;
        match repr {
            Repr::Url(url) => Ok(EndpointConfig { url, weight: 1 }),
            Repr::Full(f) => Ok(EndpointConfig {
                url: f.url,
                weight: f.weight,
            }),
        }
    }
}

/// `auth: { header: x-api-key, prefix: "" }`, `auth: { query: key }`, `auth: { body: api_key }`,
/// or `auth: none`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AuthConfig {
    Named(AuthNone),
    Header {
        header: String,
        #[serde(default)]
        prefix: String,
    },
    Query {
        query: String,
    },
    Body {
        body: String,
    },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthNone {
    None,
}

/// One model clients can ask for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub provider: String,
    /// The upstream's model id (Azure: the deployment name). Defaults to the model's name.
    #[serde(default)]
    pub model: Option<String>,
    /// `max_tokens` sent to providers that require one when the client gave none.
    #[serde(default)]
    pub default_max_tokens: Option<u32>,
    /// Overrides the provider's `timeout` for this model: the bound on one leg of a request served
    /// by this model, from the leg's start, across its retries.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// The bound on a whole request to this model, its fallbacks included (default: this model's
    /// `timeout` plus each fallback's).
    #[serde(default)]
    pub total_timeout: Option<HumanDuration>,
    /// The most upstream calls one request to this model may cause: every attempt of every leg
    /// (retries, hedges, fallbacks) counts.
    #[serde(default)]
    pub max_upstream_calls: Option<u32>,
    #[serde(default)]
    pub connect_timeout: Option<HumanDuration>,
    #[serde(default)]
    pub stream_idle_timeout: Option<HumanDuration>,
    /// Models tried, in order, when this one fails.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Conditions that send a request to the fallbacks (default: all of them).
    #[serde(default)]
    pub fallback_on: Option<Vec<FallbackCondition>>,
    /// Hedged requests: `{after: 2s, max: 1}`. Only streamed requests are hedged: a whole
    /// answer's first byte comes when all of it is generated.
    #[serde(default)]
    pub hedge: Option<HedgeConfig>,
    /// Rate limits of this model, over all keys.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Answers served from the response cache: `{ttl: 1h}`. Absent: not cached.
    #[serde(default)]
    pub cache: Option<ModelCacheConfig>,
}

/// When a failed request goes to the next fallback model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackCondition {
    /// The upstream answered 429.
    RateLimited,
    /// The upstream answered 5xx (529 included), or could not be reached.
    ServerError,
    /// No answer within the model's timeout (the gateway's deadline, or an upstream's 504/408).
    Timeout,
    /// The prompt does not fit the model's context window.
    ContextLength,
}

pub const ALL_FALLBACK_CONDITIONS: [FallbackCondition; 4] = [
    FallbackCondition::RateLimited,
    FallbackCondition::ServerError,
    FallbackCondition::Timeout,
    FallbackCondition::ContextLength,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeConfig {
    /// Send a second request when no first byte came after this long (streamed requests only).
    pub after: HumanDuration,
    /// How many extra requests at most.
    #[serde(default = "one_hedge")]
    pub max: u32,
}

fn one_hedge() -> u32 {
    1
}

/// A duration written as `30s`, `500ms`, `2m`, or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Seconds(f64),
            Text(String),
        }
        let seconds = match Repr::deserialize(d)? {
            Repr::Seconds(s) => Some(s),
            Repr::Text(t) => parse_seconds(&t),
        };
        let seconds = seconds
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| {
                serde::de::Error::custom("expected a duration such as 30s, 500ms, 2m or 1h")
            })?;
        // Deadlines are instants plus durations, and backoffs multiples of them: a bound keeps
        // that arithmetic far from overflowing (where `Instant + Duration` panics).
        if seconds > MAX_DURATION.as_secs_f64() {
            return Err(serde::de::Error::custom(
                "must be at most 24h (86400 seconds)",
            ));
        }
        Ok(HumanDuration(Duration::from_secs_f64(seconds)))
    }
}

/// The longest duration any setting takes.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `500ms`, `30s`, `2m`, `1h` or a number of seconds, in seconds.
fn parse_seconds(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Some(seconds)
}

/// A provider after validation: the credential read, the endpoints parsed.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    pub name: String,
    pub kind: ProviderKind,
    pub endpoints: Vec<InstanceUrl>,
    /// The first key's value at start (empty for a command, which runs when the gateway starts).
    pub credential: Secret,
    /// Every key and where it comes from; empty with `auth: none`.
    pub keys: Vec<ProviderKey>,
    pub key_cooldown: Duration,
    pub key_file_poll: Duration,
    pub auth: AuthPlacement,
    pub api_version: Option<String>,
    pub anthropic_version: String,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
    /// `None`: no active checks.
    pub health_check: Option<HealthCheckConfig>,
    pub circuit_breaker: BreakerOverrides,
    pub balance: BalanceMode,
    pub limits: LimitsConfig,
    /// Provider-family client headers let through to this provider, lower case.
    pub forward_headers: Vec<http::HeaderName>,
    /// Whether the client's address goes upstream in `x-forwarded-for`.
    pub forward_client_address: bool,
}

/// An endpoint's base URL, split into the parts a connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`/v1`, or empty).
    pub base_path: String,
    pub weight: usize,
}

impl InstanceUrl {
    pub fn parse(url: &str, weight: usize) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("`{url}` must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if path.contains('?') || path.contains('#') {
            return Err(format!("`{url}` must not carry a query or fragment"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}` has an unterminated IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("`{url}` has a bad port"))?,
                None => default_port,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("`{url}` has a bad port"))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() || host.contains('@') {
            return Err(format!("`{url}` has no valid host"));
        }
        if !(1..=MAX_WEIGHT).contains(&weight) {
            return Err(format!("weight must be from 1 to {MAX_WEIGHT}"));
        }
        Ok(InstanceUrl {
            tls,
            host,
            port,
            base_path: path.trim_end_matches('/').to_string(),
            weight,
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A model after validation.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub name: String,
    pub provider: String,
    pub upstream_model: String,
    pub default_max_tokens: u32,
    pub timeout: Duration,
    /// Bounds the whole chain (this model, then its fallbacks).
    pub total_timeout: Duration,
    /// Upstream calls a request to this model may cause, its fallbacks' included.
    pub max_upstream_calls: u32,
    pub connect_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub fallbacks: Vec<String>,
    pub fallback_on: Vec<FallbackCondition>,
    pub hedge: Option<HedgeConfig>,
    pub limits: LimitsConfig,
    /// How long its answers are cached; `None`: not cached.
    pub cache_ttl: Option<Duration>,
}

/// The validated configuration, ready to build the gateway from.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    /// The listeners of `listen` that terminate TLS, with their certificate files.
    pub tls: BTreeMap<SocketAddr, TlsFiles>,
    pub admin_listen: Option<SocketAddr>,
    /// What the admin endpoints require, when set.
    pub admin_token: Option<Secret>,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub providers: Vec<ProviderSettings>,
    pub models: Vec<ModelSettings>,
    pub experiments: Vec<ExperimentSettings>,
    pub keys: Vec<KeySettings>,
    pub fanout: FanoutSettings,
    pub cache: CacheSettings,
    pub limit_store: LimitStoreSettings,
    pub edge: EdgeSettings,
    /// Whether requests are counted for `/metrics`.
    pub metrics: bool,
    pub access_log: Option<AccessLogSettings>,
}

/// Pingora's own top-level keys, which share the file with the gateway's.
const PINGORA_KEYS: &[&str] = &[
    "version",
    "daemon",
    "error_log",
    "pid_file",
    "upgrade_sock",
    "user",
    "group",
    "working_directory",
    "threads",
    "listener_tasks_per_fd",
    "work_stealing",
    "runtime_enable_alt_timer",
    "ca_file",
    "s2n_config_cache_size",
    "grace_period_seconds",
    "graceful_shutdown_timeout_seconds",
    "client_bind_to_ipv4",
    "client_bind_to_ipv6",
    "upstream_keepalive_pool_size",
    "upstream_connect_offload_threadpools",
    "upstream_connect_offload_thread_per_pool",
    "downstream_tls_offload_threadpools",
    "downstream_tls_offload_thread_per_pool",
    "upstream_debug_ssl_keylog",
    "max_retries",
    "upgrade_sock_connect_accept_max_retries",
    "max_blocking_threads",
    "blocking_threads_ttl_seconds",
    "fast_timeout_to_tokio_threshold_seconds",
    "runtime_metrics_poll_time_histogram",
    "runtime_metrics_poll_time_histogram_scale",
    "runtime_metrics_poll_time_histogram_resolution_micros",
    "runtime_metrics_poll_time_histogram_buckets",
    "daemon_wait_for_ready",
    "daemon_ready_timeout_seconds",
    "daemon_notify_timeout_seconds",
];

/// The most worker threads: Pingora starts each one at start-up.
pub const MAX_THREADS: u64 = 1024;

/// Pingora's `threads`, which it takes as given: 0 panics in its runtime, and a huge number starts
/// that many threads. (A value of the wrong type is left to Pingora's own error.)
fn check_pingora_threads(threads: Option<&serde_yaml::Value>) -> Result<(), ConfigError> {
    match threads.and_then(serde_yaml::Value::as_u64) {
        Some(n) => within("threads", n, 1, MAX_THREADS),
        None => Ok(()),
    }
}

/// Pingora's part of a configuration file: only its own top-level keys, as YAML. Pingora's parser
/// quotes the text it was given in its errors; given only this, it can quote no key of ours.
pub fn pingora_section(text: &str) -> Result<String, ConfigError> {
    let doc: serde_yaml::Value = serde_yaml::from_str(text)
        .map_err(|e| ConfigError::new("", format!("invalid YAML: {e}")))?;
    let mut section = serde_yaml::Mapping::new();
    if let serde_yaml::Value::Mapping(map) = doc {
        for (k, v) in map {
            if k.as_str().is_some_and(|k| PINGORA_KEYS.contains(&k)) {
                section.insert(k, v);
            }
        }
    }
    if section.is_empty() {
        return Ok(String::from("---\nversion: 1\n"));
    }
    serde_yaml::to_string(&section).map_err(|e| ConfigError::new("", format!("invalid YAML: {e}")))
}

impl Settings {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
        Self::from_yaml(&text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates YAML text; `env` looks up `${VAR}` values.
    pub fn from_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let mut doc: serde_yaml::Value = serde_yaml::from_str(text)
            .map_err(|e| ConfigError::new("", format!("invalid YAML: {e}")))?;
        if doc.is_null() {
            doc = serde_yaml::Value::Mapping(Default::default());
        }
        let serde_yaml::Value::Mapping(map) = &mut doc else {
            return Err(ConfigError::new("", "the file must be a YAML mapping"));
        };
        check_pingora_threads(map.get("threads"))?;
        // Pingora's keys are Pingora's to read; everything else must be ours.
        map.retain(|k, _| !k.as_str().is_some_and(|k| PINGORA_KEYS.contains(&k)));
        let model_count = |map: &serde_yaml::Mapping| {
            map.get("models")
                .and_then(serde_yaml::Value::as_mapping)
                .map_or(0, serde_yaml::Mapping::len)
        };
        let models_before = model_count(map);
        let left_out = leave_out_optional_providers(map, env);
        if models_before > 0 && model_count(map) == 0 {
            // Serving nothing at all is never what a file with models meant.
            return Err(ConfigError::new(
                "providers",
                format!(
                    "every model's provider was left out: {}",
                    left_out.join("; ")
                ),
            ));
        }
        for note in left_out {
            log::warn!("{note}");
        }
        expand_env(&mut doc, &mut String::new(), env)?;
        let config: GatewayConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            ConfigError::new(key, e.into_inner().to_string())
        })?;
        config.validate()
    }

    /// The embedded default: localhost listeners, and every provider whose standard environment
    /// variable is set, with its common models.
    pub fn default_from_env(env: &dyn Fn(&str) -> Option<String>) -> Settings {
        let mut config = GatewayConfig {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            admin_token: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: default_max_response_bytes(),
            providers: BTreeMap::new(),
            models: BTreeMap::new(),
            keys: BTreeMap::new(),
            auth: None,
            limits: LimitStoreConfig::default(),
            edge: EdgeConfig::default(),
            experiments: BTreeMap::new(),
            compare: CompareConfig::default(),
            batch: BatchConfig::default(),
            cache: CacheConfig::default(),
            metrics: true,
            access_log: None,
        };
        let presets: [(&str, ProviderKind, &str, &[&str]); 3] = [
            (
                "openai",
                ProviderKind::Openai,
                "OPENAI_API_KEY",
                &[
                    "gpt-4o",
                    "gpt-4o-mini",
                    "gpt-4.1",
                    "gpt-4.1-mini",
                    "o3-mini",
                ],
            ),
            (
                "anthropic",
                ProviderKind::Anthropic,
                "ANTHROPIC_API_KEY",
                &[
                    "claude-sonnet-4-0",
                    "claude-3-7-sonnet-latest",
                    "claude-3-5-haiku-latest",
                ],
            ),
            (
                "gemini",
                ProviderKind::Gemini,
                "GEMINI_API_KEY",
                &["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.0-flash"],
            ),
        ];
        for (name, kind, var, models) in presets {
            let Some(key) = env(var).filter(|k| !k.is_empty()) else {
                continue;
            };
            config.providers.insert(
                name.into(),
                ProviderConfig {
                    kind,
                    endpoints: vec![],
                    api_key: Some(Secret::new(key)),
                    api_key_file: None,
                    api_key_command: None,
                    api_keys: None,
                    key_cooldown: default_key_cooldown(),
                    key_file_poll: default_key_file_poll(),
                    auth: None,
                    api_version: None,
                    anthropic_version: default_anthropic_version(),
                    headers: BTreeMap::new(),
                    connect_timeout: default_connect_timeout(),
                    timeout: default_timeout(),
                    stream_idle_timeout: default_stream_idle_timeout(),
                    max_attempts: default_max_attempts(),
                    retry_backoff: default_retry_backoff(),
                    health_check: None,
                    circuit_breaker: None,
                    allow_insecure_http: false,
                    balance: BalanceMode::default(),
                    limits: LimitsConfig::default(),
                    forward_headers: vec![],
                    forward_client_address: true,
                    optional: false,
                },
            );
            for model in models {
                config.models.insert(
                    model.to_string(),
                    ModelConfig {
                        provider: name.into(),
                        model: None,
                        default_max_tokens: None,
                        timeout: None,
                        total_timeout: None,
                        max_upstream_calls: None,
                        connect_timeout: None,
                        stream_idle_timeout: None,
                        fallbacks: vec![],
                        fallback_on: None,
                        hedge: None,
                        limits: LimitsConfig::default(),
                        cache: None,
                    },
                );
            }
        }
        // The presets are valid by construction.
        config.validate().unwrap_or_else(|e| {
            log::error!("embedded default configuration is invalid: {e}");
            Settings {
                listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
                tls: BTreeMap::new(),
                admin_listen: default_admin_listen(),
                admin_token: None,
                max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
                max_response_bytes: default_max_response_bytes(),
                providers: vec![],
                models: vec![],
                experiments: vec![],
                keys: vec![],
                fanout: FanoutSettings::default(),
                cache: CacheSettings::default(),
                limit_store: LimitStoreSettings {
                    redis_url: None,
                    store_timeout: DEFAULT_STORE_TIMEOUT,
                },
                edge: EdgeSettings::default(),
                metrics: true,
                access_log: None,
            }
        })
    }
}

impl GatewayConfig {
    fn validate(self) -> Result<Settings, ConfigError> {
        if self.listen.0.is_empty() {
            return Err(ConfigError::new(
                "listen",
                "at least one address is required",
            ));
        }
        for (key, bytes) in [
            ("max_request_bytes", self.max_request_bytes),
            ("max_response_bytes", self.max_response_bytes),
        ] {
            within(key, bytes as u64, 1, MAX_BODY_BYTES as u64)?;
        }
        let mut providers = Vec::new();
        for (name, p) in &self.providers {
            providers.push(validate_provider(name, p)?);
        }
        let mut models = Vec::new();
        let mut total_timeouts = Vec::new();
        for (name, m) in &self.models {
            let key = format!("models.{name}");
            let Some(provider) = providers.iter().find(|p| p.name == m.provider) else {
                return Err(ConfigError::new(
                    format!("{key}.provider"),
                    format!("unknown provider `{}`", m.provider),
                ));
            };
            if name.is_empty() {
                return Err(ConfigError::new("models", "a model name must not be empty"));
            }
            let upstream_model = m.model.clone().unwrap_or_else(|| name.clone());
            if upstream_model.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.model"),
                    "must not be empty",
                ));
            }
            if provider.kind == ProviderKind::Gemini && upstream_model.contains(['/', '?', '#']) {
                return Err(ConfigError::new(
                    format!("{key}.model"),
                    "a Gemini model id must not contain '/', '?' or '#'",
                ));
            }
            if m.default_max_tokens == Some(0) {
                return Err(ConfigError::new(
                    format!("{key}.default_max_tokens"),
                    "must be greater than 0",
                ));
            }
            for (i, fallback) in m.fallbacks.iter().enumerate() {
                if fallback == name || !self.models.contains_key(fallback) {
                    return Err(ConfigError::new(
                        format!("{key}.fallbacks[{i}]"),
                        format!("`{fallback}` is not another configured model"),
                    ));
                }
            }
            if let Some(calls) = m.max_upstream_calls {
                within(
                    &format!("{key}.max_upstream_calls"),
                    calls.into(),
                    1,
                    MAX_UPSTREAM_CALLS.into(),
                )?;
            }
            if let Some(h) = m.hedge {
                if h.after.0.is_zero() || h.max == 0 {
                    return Err(ConfigError::new(
                        format!("{key}.hedge"),
                        "`after` and `max` must be greater than 0",
                    ));
                }
                within(
                    &format!("{key}.hedge.max"),
                    h.max.into(),
                    1,
                    MAX_UPSTREAM_CALLS.into(),
                )?;
            }
            let positive = |d: Option<HumanDuration>, what: &str| match d {
                Some(HumanDuration(d)) if d.is_zero() => Err(ConfigError::new(
                    format!("{key}.{what}"),
                    "must be greater than 0",
                )),
                _ => Ok(d.map(|d| d.0)),
            };
            total_timeouts.push(positive(m.total_timeout, "total_timeout")?);
            models.push(ModelSettings {
                name: name.clone(),
                provider: m.provider.clone(),
                upstream_model,
                default_max_tokens: m.default_max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                timeout: positive(m.timeout, "timeout")?.unwrap_or(provider.timeout),
                // Set below, once every model's `timeout` is known.
                total_timeout: Duration::ZERO,
                max_upstream_calls: m.max_upstream_calls.unwrap_or(DEFAULT_MAX_UPSTREAM_CALLS),
                connect_timeout: positive(m.connect_timeout, "connect_timeout")?
                    .unwrap_or(provider.connect_timeout),
                stream_idle_timeout: positive(m.stream_idle_timeout, "stream_idle_timeout")?
                    .unwrap_or(provider.stream_idle_timeout),
                fallbacks: m.fallbacks.clone(),
                fallback_on: m
                    .fallback_on
                    .clone()
                    .unwrap_or_else(|| ALL_FALLBACK_CONDITIONS.to_vec()),
                hedge: m.hedge,
                limits: m.limits.validate(&key)?,
                cache_ttl: positive(m.cache.map(|c| c.ttl), "cache.ttl")?,
            });
        }
        let timeouts: BTreeMap<String, Duration> =
            models.iter().map(|m| (m.name.clone(), m.timeout)).collect();
        for (m, configured) in models.iter_mut().zip(total_timeouts) {
            m.total_timeout = configured.unwrap_or_else(|| {
                let fallbacks = m.fallbacks.iter().filter_map(|f| timeouts.get(f).copied());
                default_total_timeout(m.timeout, fallbacks)
            });
        }
        let limit_store = self.limits.validate()?;
        let experiments = validate_experiments(&self.experiments, &models)?;
        let keys = validate_keys(&self.keys, &models, &experiments)?;
        let (listen, tls) = validate_listeners(&self.listen.0)?;
        if let Some(admin) = self.admin_listen {
            if let Some(client) = listen.iter().find(|a| overlaps(**a, admin)) {
                return Err(ConfigError::new(
                    "admin_listen",
                    format!(
                        "{admin} takes the port of the client listener {client}: the admin \
                         endpoints need an address of their own"
                    ),
                ));
            }
        }
        // Secure by default: a listener other hosts can reach needs keys, or an explicit
        // `auth: none`.
        if keys.is_empty() && self.auth.is_none() {
            if let Some(open) = listen.iter().find(|a| !a.ip().is_loopback()) {
                return Err(ConfigError::new(
                    "keys",
                    format!(
                        "required when listening on {open}, which other hosts can reach: \
                         add gateway keys, or set `auth: none` to serve anyone"
                    ),
                ));
            }
        }
        if self.admin_token.as_ref().is_some_and(Secret::is_empty) {
            return Err(ConfigError::new("admin_token", "must not be empty"));
        }
        check_admin_token(self.admin_listen, self.admin_token.as_ref())?;
        Ok(Settings {
            listen,
            tls,
            admin_listen: self.admin_listen,
            admin_token: self.admin_token,
            max_request_bytes: self.max_request_bytes,
            max_response_bytes: self.max_response_bytes,
            providers,
            models,
            experiments,
            keys,
            fanout: validate_fanout(&self.compare, &self.batch)?,
            cache: self.cache.validate(&limit_store)?,
            limit_store,
            edge: self.edge.validate(self.max_request_bytes)?,
            metrics: self.metrics,
            access_log: self.access_log.as_ref().map(|a| a.validate()).transpose()?,
        })
    }
}

/// An admin listener other hosts can reach needs `admin_token`: the admin endpoints show the
/// configuration and reload it.
pub fn check_admin_token(
    admin_listen: Option<SocketAddr>,
    token: Option<&Secret>,
) -> Result<(), ConfigError> {
    match admin_listen {
        Some(addr) if !addr.ip().is_loopback() && token.is_none() => Err(ConfigError::new(
            "admin_token",
            format!(
                "required when admin_listen is {addr}, which other hosts can reach                  (e.g. admin_token: \"${{DRAGOMAN_ADMIN_TOKEN}}\")"
            ),
        )),
        _ => Ok(()),
    }
}

/// What a reload cannot change in a running process: the listeners (bound at start, the TLS
/// ones with their certificate files), and the connection-level `edge` limits the listeners were
/// built with. Each key whose value differs between `running` and `new` is named.
pub fn restart_only_changes(running: &Settings, new: &Settings) -> Vec<String> {
    let mut changed = Vec::new();
    let mut note = |key: &str, differs: bool| {
        if differs {
            changed.push(key.to_string());
        }
    };
    note(
        "listen",
        running.listen != new.listen || running.tls != new.tls,
    );
    note("admin_listen", running.admin_listen != new.admin_listen);
    let (a, b) = (&running.edge, &new.edge);
    note("edge.header_timeout", a.header_timeout != b.header_timeout);
    note("edge.idle_timeout", a.idle_timeout != b.idle_timeout);
    note(
        "edge.max_connections",
        a.max_connections != b.max_connections,
    );
    changed
}

impl Settings {
    /// Puts back the restart-only values of `running` (see [`restart_only_changes`]), so that
    /// these settings say what is in force after a reload.
    pub fn keep_restart_only(&mut self, running: &Settings) {
        self.listen = running.listen.clone();
        self.tls = running.tls.clone();
        self.admin_listen = running.admin_listen;
        self.edge.header_timeout = running.edge.header_timeout;
        self.edge.idle_timeout = running.edge.idle_timeout;
        self.edge.max_connections = running.edge.max_connections;
    }
}

/// Pingora's top-level keys whose value differs between two files: Pingora reads them once, at
/// start.
pub fn pingora_changes(running: &str, new: &str) -> Result<Vec<String>, ConfigError> {
    let section = |text: &str| -> Result<serde_yaml::Mapping, ConfigError> {
        let doc: serde_yaml::Value = serde_yaml::from_str(&pingora_section(text)?)
            .map_err(|e| ConfigError::new("", format!("invalid YAML: {e}")))?;
        Ok(match doc {
            serde_yaml::Value::Mapping(m) => m,
            _ => serde_yaml::Mapping::new(),
        })
    };
    let (a, b) = (section(running)?, section(new)?);
    Ok(PINGORA_KEYS
        .iter()
        .filter(|k| a.get(**k) != b.get(**k))
        .map(|k| k.to_string())
        .collect())
}

/// The client listeners' addresses, each once, and the TLS files of those that terminate TLS, each
/// pair loaded once here so that a missing, unreadable or mismatched file fails at start.
#[allow(clippy::type_complexity)]
fn validate_listeners(
    listen: &[ListenConfig],
) -> Result<(Vec<SocketAddr>, BTreeMap<SocketAddr, TlsFiles>), ConfigError> {
    let mut addresses = Vec::with_capacity(listen.len());
    let mut tls = BTreeMap::new();
    for (i, entry) in listen.iter().enumerate() {
        let key = if listen.len() == 1 {
            "listen".to_string()
        } else {
            format!("listen[{i}]")
        };
        let address = entry.address();
        if let Some(other) = addresses.iter().find(|a| overlaps(**a, address)) {
            let why = if *other == address {
                format!("{address} is listed twice")
            } else {
                format!("{address} and {other} take the same port")
            };
            return Err(ConfigError::new(key, why));
        }
        addresses.push(address);
        if let ListenConfig::Tls { tls: files, .. } = entry {
            crate::tls::load_certified_key(files)
                .map_err(|e| ConfigError::new(format!("{key}.tls{}", e.field()), e.to_string()))?;
            tls.insert(address, files.clone());
        }
    }
    Ok((addresses, tls))
}

/// Whether two listeners would take the same socket: the same port on the same address, or on an
/// unspecified one (`0.0.0.0` takes the port on every IPv4 address; `[::]` on every address,
/// IPv4 too, as Linux binds it dual-stack).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let covers = |wide: SocketAddr, other: SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
    };
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// Each experiment's arms: configured models, each once, with weights that are shares.
fn validate_experiments(
    experiments: &BTreeMap<String, ExperimentConfig>,
    models: &[ModelSettings],
) -> Result<Vec<ExperimentSettings>, ConfigError> {
    let mut out = Vec::with_capacity(experiments.len());
    for (name, e) in experiments {
        let key = format!("experiments.{name}");
        if name.is_empty() {
            return Err(ConfigError::new(
                "experiments",
                "an experiment name must not be empty",
            ));
        }
        if models.iter().any(|m| &m.name == name) {
            return Err(ConfigError::new(
                key,
                "is also the name of a model: clients could not tell which they ask for",
            ));
        }
        if e.split.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.split"),
                "needs at least one arm",
            ));
        }
        let mut arms: Vec<(String, u32)> = Vec::with_capacity(e.split.len());
        for (i, arm) in e.split.iter().enumerate() {
            let at = format!("{key}.split[{i}]");
            if !models.iter().any(|m| m.name == arm.model) {
                return Err(ConfigError::new(
                    format!("{at}.model"),
                    format!("unknown model `{}`", arm.model),
                ));
            }
            if arms.iter().any(|(m, _)| *m == arm.model) {
                return Err(ConfigError::new(
                    format!("{at}.model"),
                    format!("`{}` is already an arm of this experiment", arm.model),
                ));
            }
            within(
                &format!("{at}.weight"),
                arm.weight.into(),
                0,
                MAX_ARM_WEIGHT,
            )?;
            arms.push((arm.model.clone(), arm.weight));
        }
        if arms.iter().all(|(_, w)| *w == 0) {
            return Err(ConfigError::new(
                format!("{key}.split"),
                "at least one arm needs a weight above 0",
            ));
        }
        let sticky_header = match &e.sticky_header {
            None => None,
            Some(h) => Some(http::HeaderName::try_from(h.as_str()).map_err(|_| {
                ConfigError::new(format!("{key}.sticky_header"), "not a valid header name")
            })?),
        };
        out.push(ExperimentSettings {
            name: name.clone(),
            arms,
            sticky_header,
        });
    }
    Ok(out)
}

/// Each key's digest (from `key` or `key_sha256`, exactly one) and its models (each configured
/// model or experiment).
fn validate_keys(
    keys: &BTreeMap<String, KeyConfig>,
    models: &[ModelSettings],
    experiments: &[ExperimentSettings],
) -> Result<Vec<KeySettings>, ConfigError> {
    let known = |name: &str| {
        models.iter().any(|m| m.name == name) || experiments.iter().any(|e| e.name == name)
    };
    let mut out: Vec<KeySettings> = Vec::new();
    for (name, k) in keys {
        let key = format!("keys.{name}");
        let sha256 = match (&k.key, &k.key_sha256) {
            (Some(secret), None) => {
                if secret.is_empty() {
                    return Err(ConfigError::new(format!("{key}.key"), "must not be empty"));
                }
                crate::access::sha256(secret.expose().as_bytes())
            }
            (None, Some(hex)) => parse_sha256(hex).ok_or_else(|| {
                ConfigError::new(
                    format!("{key}.key_sha256"),
                    "must be 64 hexadecimal digits (the key's SHA-256)",
                )
            })?,
            _ => {
                return Err(ConfigError::new(
                    key,
                    "needs exactly one of `key` and `key_sha256`",
                ))
            }
        };
        if let Some(other) = out.iter().find(|o| o.sha256 == sha256) {
            return Err(ConfigError::new(
                key,
                format!("the same key as keys.{}", other.name),
            ));
        }
        if let Some(list) = &k.models {
            if let Some(unknown) = list.iter().find(|m| !known(m)) {
                return Err(ConfigError::new(
                    format!("{key}.models"),
                    format!("unknown model `{unknown}`"),
                ));
            }
        }
        out.push(KeySettings {
            name: name.clone(),
            sha256,
            models: k.models.clone(),
            limits: k.limits.validate(&key)?,
        });
    }
    Ok(out)
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A chain's default `total_timeout`: the model's own `timeout`, then each fallback's, one after
/// the other.
/// `localhost` or a loopback address (the only hosts a key may reach over plain HTTP by default).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_total_timeout(own: Duration, fallbacks: impl Iterator<Item = Duration>) -> Duration {
    fallbacks.fold(own, Duration::saturating_add)
}

/// The provider's keys, from whichever of `api_key`, `api_key_file`, `api_key_command` and
/// `api_keys` is given (at most one). Files are read now; commands run when the gateway starts.
fn provider_keys(key: &str, p: &ProviderConfig) -> Result<Vec<ProviderKey>, ConfigError> {
    let given = [
        ("api_key", p.api_key.is_some()),
        ("api_key_file", p.api_key_file.is_some()),
        ("api_key_command", p.api_key_command.is_some()),
        ("api_keys", p.api_keys.is_some()),
    ];
    let mut named = given.iter().filter(|(_, set)| *set).map(|(n, _)| *n);
    if let (Some(first), Some(second)) = (named.next(), named.next()) {
        return Err(ConfigError::new(
            format!("{key}.{second}"),
            format!("give one of api_key, api_key_file, api_key_command and api_keys, not {first} and {second}"),
        ));
    }
    let literal = |config_key: String, k: &Secret| -> Result<ProviderKey, ConfigError> {
        // An empty `api_key` means "no key" (refused below unless `auth: none`).
        check_key(k).map_err(|why| ConfigError::new(config_key.clone(), why))?;
        Ok(ProviderKey {
            config_key,
            source: KeySource::Literal(k.clone()),
        })
    };
    let file = |config_key: String, path: &str| -> Result<ProviderKey, ConfigError> {
        let initial = read_key_file(path).map_err(|m| ConfigError::new(config_key.clone(), m))?;
        Ok(ProviderKey {
            config_key,
            source: KeySource::File {
                path: path.to_string(),
                initial,
            },
        })
    };
    let command = |config_key: String, c: &CommandConfig| -> Result<ProviderKey, ConfigError> {
        validate_command(&config_key, c)?;
        Ok(ProviderKey {
            config_key,
            source: KeySource::Command(c.clone()),
        })
    };
    if let Some(k) = &p.api_key {
        if k.is_empty() {
            return Ok(Vec::new());
        }
        return Ok(vec![literal(format!("{key}.api_key"), k)?]);
    }
    if let Some(path) = &p.api_key_file {
        return Ok(vec![file(format!("{key}.api_key_file"), path)?]);
    }
    if let Some(c) = &p.api_key_command {
        return Ok(vec![command(format!("{key}.api_key_command"), c)?]);
    }
    let Some(entries) = &p.api_keys else {
        return Ok(Vec::new());
    };
    if entries.is_empty() || entries.len() > MAX_PROVIDER_KEYS {
        return Err(ConfigError::new(
            format!("{key}.api_keys"),
            format!("give between 1 and {MAX_PROVIDER_KEYS} keys"),
        ));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let config_key = format!("{key}.api_keys[{i}]");
            match entry {
                KeyEntry::Literal(k) => literal(config_key, k),
                KeyEntry::File { file: path } => file(format!("{config_key}.file"), path),
                KeyEntry::Command { command: c } => command(format!("{config_key}.command"), c),
            }
        })
        .collect()
}

fn validate_provider(name: &str, p: &ProviderConfig) -> Result<ProviderSettings, ConfigError> {
    let key = format!("providers.{name}");
    let endpoints = if p.endpoints.is_empty() {
        let Some(url) = p.kind.dialect().default_endpoint() else {
            return Err(ConfigError::new(
                format!("{key}.endpoints"),
                format!("required for kind {}", p.kind.as_str()),
            ));
        };
        vec![EndpointConfig {
            url: url.into(),
            weight: 1,
        }]
    } else {
        p.endpoints.clone()
    };
    let endpoints = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            InstanceUrl::parse(&e.url, e.weight)
                .map_err(|m| ConfigError::new(format!("{key}.endpoints[{i}]"), m))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let keys = provider_keys(&key, p)?;
    let auth = match &p.auth {
        None => p.kind.dialect().default_auth(),
        Some(AuthConfig::Named(AuthNone::None)) => AuthPlacement::None,
        Some(AuthConfig::Header { header, prefix }) => {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    format!("{key}.auth.header"),
                    format!("`{header}` is not a valid header name"),
                ));
            }
            if http::HeaderValue::from_str(prefix).is_err() {
                return Err(ConfigError::new(
                    format!("{key}.auth.prefix"),
                    "not a valid header value",
                ));
            }
            AuthPlacement::Header {
                name: header.to_ascii_lowercase(),
                prefix: prefix.clone(),
            }
        }
        Some(AuthConfig::Query { query }) => AuthPlacement::Query {
            name: query.clone(),
        },
        Some(AuthConfig::Body { body }) => AuthPlacement::Body {
            field: body.clone(),
        },
    };
    if keys.is_empty() && auth != AuthPlacement::None {
        return Err(ConfigError::new(
            format!("{key}.api_key"),
            "a credential is required (api_key, api_key_file, api_key_command or api_keys), \
             or set `auth: none`",
        ));
    }
    if keys.len() > 1 && matches!(auth, AuthPlacement::Body { .. }) {
        // The key is written into the body once, when the request is planned, so an attempt
        // cannot switch to another key.
        return Err(ConfigError::new(
            format!("{key}.api_keys"),
            "several keys need the key in a header or the query (`auth`), not the body",
        ));
    }
    for (name, d) in [
        ("key_cooldown", p.key_cooldown.0),
        ("key_file_poll", p.key_file_poll.0),
    ] {
        if d.is_zero() || d > MAX_KEY_DURATION {
            return Err(ConfigError::new(
                format!("{key}.{name}"),
                "must be greater than 0 and at most 24h",
            ));
        }
    }
    let credential = match keys.first().map(|k| &k.source) {
        Some(KeySource::Literal(k) | KeySource::File { initial: k, .. }) => k.clone(),
        _ => Secret::default(),
    };
    if auth != AuthPlacement::None && !p.allow_insecure_http {
        // A key sent in clear may only cross the loopback interface.
        if let Some((i, e)) = endpoints
            .iter()
            .enumerate()
            .find(|(_, e)| !e.tls && !is_loopback_host(&e.host))
        {
            return Err(ConfigError::new(
                format!("{key}.endpoints[{i}]"),
                format!(
                    "http:// to {} would send the key in clear: use https://, or set \
                     `allow_insecure_http: true` if the network is trusted",
                    e.host
                ),
            ));
        }
    }
    if p.kind == ProviderKind::AzureOpenai && p.api_version.is_none() {
        return Err(ConfigError::new(
            format!("{key}.api_version"),
            "required for kind azure-openai (e.g. 2024-10-21)",
        ));
    }
    if http::HeaderValue::from_str(&p.anthropic_version).is_err() {
        return Err(ConfigError::new(
            format!("{key}.anthropic_version"),
            "not a valid header value",
        ));
    }
    let mut headers = Vec::new();
    for (h, v) in &p.headers {
        let name = http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            ConfigError::new(format!("{key}.headers.{h}"), "not a valid header name")
        })?;
        let value = http::HeaderValue::from_str(v).map_err(|_| {
            ConfigError::new(format!("{key}.headers.{h}"), "not a valid header value")
        })?;
        headers.push((name, value));
    }
    let mut forward_headers = Vec::new();
    for (i, h) in p.forward_headers.iter().enumerate() {
        let at = || format!("{key}.forward_headers[{i}]");
        let name = http::HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| ConfigError::new(at(), format!("`{h}` is not a valid header name")))?;
        if crate::header_policy::is_never_forwarded(name.as_str()) {
            return Err(ConfigError::new(
                at(),
                format!(
                    "`{h}` is never forwarded: credentials, framing and the forwarded-for family \
                     are the gateway's to set"
                ),
            ));
        }
        forward_headers.push(name);
    }
    if p.timeout.0.is_zero() {
        return Err(ConfigError::new(
            format!("{key}.timeout"),
            "must be greater than 0",
        ));
    }
    if p.connect_timeout.0.is_zero() {
        return Err(ConfigError::new(
            format!("{key}.connect_timeout"),
            "must be greater than 0",
        ));
    }
    if p.stream_idle_timeout.0.is_zero() {
        return Err(ConfigError::new(
            format!("{key}.stream_idle_timeout"),
            "must be greater than 0",
        ));
    }
    within(
        &format!("{key}.max_attempts"),
        p.max_attempts.into(),
        1,
        MAX_UPSTREAM_CALLS.into(),
    )?;
    let health_check = match &p.health_check {
        Some(h) if !h.enabled => None,
        Some(h) => {
            if h.interval.0.is_zero() {
                return Err(ConfigError::new(
                    format!("{key}.health_check.interval"),
                    "must be greater than 0",
                ));
            }
            if let Some(path) = &h.path {
                if !path.starts_with('/') {
                    return Err(ConfigError::new(
                        format!("{key}.health_check.path"),
                        "must start with /",
                    ));
                }
            }
            if !(100..=599).contains(&h.expect_status) {
                return Err(ConfigError::new(
                    format!("{key}.health_check.expect_status"),
                    "must be an HTTP status",
                ));
            }
            Some(h.clone())
        }
        None => Some(HealthCheckConfig::default()),
    };
    let circuit_breaker = p.circuit_breaker.unwrap_or_default();
    if circuit_breaker
        .failure_rate
        .is_some_and(|r| !(r > 0.0 && r <= 1.0))
    {
        return Err(ConfigError::new(
            format!("{key}.circuit_breaker.failure_rate"),
            "must be in (0, 1]",
        ));
    }
    Ok(ProviderSettings {
        name: name.to_string(),
        kind: p.kind,
        endpoints,
        credential,
        keys,
        key_cooldown: p.key_cooldown.0,
        key_file_poll: p.key_file_poll.0,
        auth,
        api_version: p.api_version.clone(),
        anthropic_version: p.anthropic_version.clone(),
        headers,
        connect_timeout: p.connect_timeout.0,
        timeout: p.timeout.0,
        stream_idle_timeout: p.stream_idle_timeout.0,
        max_attempts: p.max_attempts,
        retry_backoff: p.retry_backoff.0,
        health_check,
        circuit_breaker,
        balance: p.balance,
        limits: p.limits.validate(&key)?,
        forward_headers,
        forward_client_address: p.forward_client_address,
    })
}

/// Takes out of the file, before `${VAR}`s are expanded, each provider marked `optional: true`
/// whose entry refers to an environment variable that is unset or empty (an empty line in a
/// systemd `EnvironmentFile` counts as unset), with the models it serves, and those models'
/// mentions in other models' `fallbacks` and in keys' `models`. Returns one message per provider
/// left out, naming the variable and the models. Providers not marked optional are left alone: an
/// unset variable there stays an error, so a typo in a name cannot turn a provider off unseen.
fn leave_out_optional_providers(
    map: &mut serde_yaml::Mapping,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    use serde_yaml::Value;
    let mut left_out = Vec::new();
    if let Some(Value::Mapping(providers)) = map.get_mut("providers") {
        providers.retain(|name, entry| {
            if entry.get("optional") != Some(&Value::Bool(true)) {
                return true;
            }
            let unset = first_unset_variable(entry, env);
            if let (Some(var), Some(name)) = (unset, name.as_str()) {
                left_out.push((name.to_string(), var, Vec::new()));
                return false;
            }
            true
        });
    }
    if left_out.is_empty() {
        return Vec::new();
    }
    let mut dropped_models = Vec::new();
    if let Some(Value::Mapping(models)) = map.get_mut("models") {
        models.retain(|name, model| {
            let provider = model.get("provider").and_then(Value::as_str);
            match left_out
                .iter_mut()
                .find(|(p, _, _)| Some(p.as_str()) == provider)
            {
                Some((_, _, models)) => {
                    let name = name.as_str().unwrap_or("?").to_string();
                    models.push(name.clone());
                    dropped_models.push(name);
                    false
                }
                None => true,
            }
        });
        for (_, model) in models.iter_mut() {
            if let Some(Value::Sequence(fallbacks)) = model.get_mut("fallbacks") {
                fallbacks.retain(|f| {
                    !f.as_str()
                        .is_some_and(|f| dropped_models.iter().any(|d| d == f))
                });
            }
        }
    }
    if let Some(Value::Mapping(keys)) = map.get_mut("keys") {
        for (_, key) in keys.iter_mut() {
            if let Some(Value::Sequence(allowed)) = key.get_mut("models") {
                allowed.retain(|m| {
                    !m.as_str()
                        .is_some_and(|m| dropped_models.iter().any(|d| d == m))
                });
            }
        }
    }
    left_out
        .into_iter()
        .map(|(provider, var, models)| {
            let models = if models.is_empty() {
                String::from("no models")
            } else {
                format!("its models {}", models.join(", "))
            };
            format!(
                "providers.{provider}: left out (optional), with {models}: environment variable \
                 {var} is not set or empty"
            )
        })
        .collect()
}

/// The first `${VAR}` in `value`'s strings whose variable is unset or empty.
fn first_unset_variable(
    value: &serde_yaml::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                let after = &rest[start + 2..];
                let end = after.find('}')?;
                let name = &after[..end];
                if env(name).is_none_or(|v| v.is_empty()) {
                    return Some(name.to_string());
                }
                rest = &after[end + 1..];
            }
            None
        }
        serde_yaml::Value::Mapping(map) => map.values().find_map(|v| first_unset_variable(v, env)),
        serde_yaml::Value::Sequence(items) => {
            items.iter().find_map(|v| first_unset_variable(v, env))
        }
        _ => None,
    }
}

/// Replaces `${VAR}` in every string value; an unset variable is an error naming the key.
fn expand_env(
    value: &mut serde_yaml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        serde_yaml::Value::String(s) if s.contains("${") => {
            *s = expand_str(s, env).map_err(|m| ConfigError::new(path.clone(), m))?;
        }
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                match k.as_str() {
                    Some(k) => path.push_str(k),
                    None => path.push('?'),
                }
                expand_env(v, path, env)?;
                path.truncate(len);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand_env(v, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated ${ in value".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{name}}}` is not a valid variable reference"));
        }
        match env(name) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "OPENAI_API_KEY" => Some("sk-test".into()),
            "ANTHROPIC_API_KEY" => Some("ant-test".into()),
            _ => None,
        }
    }

    const EXAMPLE: &str = r#"
threads: 2
pid_file: /tmp/dragoman.pid
listen: 127.0.0.1:8080
admin_listen: 127.0.0.1:9090
providers:
  openai:    { kind: openai,    api_key: "${OPENAI_API_KEY}" }
  anthropic: { kind: anthropic, api_key: "${ANTHROPIC_API_KEY}" }
  azure:     { kind: azure-openai, endpoints: ["https://name.openai.azure.com"], api_key: "x", api_version: "2024-10-21" }
  local-llama:
    kind: openai
    auth: none
    endpoints: ["http://10.0.0.11:8000/v1", { url: "http://10.0.0.12:8000/v1", weight: 2 }]
models:
  gpt-4o-mini:  { provider: openai }
  claude-haiku: { provider: anthropic, model: claude-3-5-haiku-latest, timeout: 30s }
  llama-3-8b:   { provider: local-llama, model: meta-llama/Meta-Llama-3-8B-Instruct }
"#;

    #[test]
    fn the_documented_shape_loads() {
        let s = Settings::from_yaml(EXAMPLE, &env).unwrap();
        assert_eq!(s.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(s.providers.len(), 4);
        let openai = s.providers.iter().find(|p| p.name == "openai").unwrap();
        assert_eq!(openai.credential.expose(), "sk-test");
        assert_eq!(openai.endpoints[0].host, "api.openai.com");
        assert_eq!(openai.endpoints[0].base_path, "/v1");
        assert!(openai.endpoints[0].tls);
        let llama = s
            .providers
            .iter()
            .find(|p| p.name == "local-llama")
            .unwrap();
        assert_eq!(llama.auth, AuthPlacement::None);
        assert_eq!(llama.endpoints[1].weight, 2);
        assert_eq!(llama.endpoints[1].port, 8000);
        let haiku = s.models.iter().find(|m| m.name == "claude-haiku").unwrap();
        assert_eq!(haiku.upstream_model, "claude-3-5-haiku-latest");
        assert_eq!(haiku.timeout, Duration::from_secs(30));
        let mini = s.models.iter().find(|m| m.name == "gpt-4o-mini").unwrap();
        assert_eq!(mini.upstream_model, "gpt-4o-mini");
    }

    fn err(yaml: &str) -> ConfigError {
        Settings::from_yaml(yaml, &env).unwrap_err()
    }

    #[test]
    fn gateway_keys_are_validated_naming_the_key() {
        let base = "providers:\n  p: { kind: openai, api_key: k }\nmodels:\n  m: { provider: p }\n";
        for (keys, key, needle) in [
            (
                "  a: { key: x, key_sha256: \"00\" }",
                "keys.a",
                "exactly one",
            ),
            ("  a: {}", "keys.a", "exactly one"),
            ("  a: { key: \"\" }", "keys.a.key", "empty"),
            (
                "  a: { key_sha256: \"xyz\" }",
                "keys.a.key_sha256",
                "64 hexadecimal",
            ),
            ("  a: { key: x, models: [ghost] }", "keys.a.models", "ghost"),
            ("  a: { key: x }\n  b: { key: x }", "keys.b", "keys.a"),
            ("  a: { key: x, limit: 1 }", "keys.a.limit", "unknown field"),
        ] {
            let e = err(&format!("{base}keys:\n{keys}\n"));
            assert_eq!(e.key, key, "{keys}: {e}");
            assert!(e.message.contains(needle), "{keys}: {e}");
        }
        let sha = "2D711642B726B04401627CA9FBAC32F5C8530FB1903CC4DB02258717921A4881";
        let settings = Settings::from_yaml(
            &format!(
                "{base}keys:\n  a: {{ key: y }}\n  b: {{ key_sha256: \"{sha}\", models: [m] }}\n"
            ),
            &env,
        )
        .expect("valid keys");
        // SHA-256("x"), given in (uppercase) hex, is the digest the plain key would get.
        assert_eq!(settings.keys[0].sha256, crate::access::sha256(b"y"));
        assert_eq!(settings.keys[1].sha256, crate::access::sha256(b"x"));
        assert_eq!(
            settings.keys[1].models.as_deref(),
            Some(&["m".to_string()][..])
        );
    }

    #[test]
    fn experiments_are_validated_naming_the_key() {
        let base = "providers:\n  p: { kind: openai, api_key: k }\nmodels:\n  a: { provider: p }\n  b: { provider: p }\n";
        for (experiments, key, needle) in [
            (
                "  x: { split: [] }",
                "experiments.x.split",
                "at least one arm",
            ),
            (
                "  x: { split: [{ model: ghost, weight: 1 }] }",
                "experiments.x.split[0].model",
                "ghost",
            ),
            (
                "  x: { split: [{ model: a, weight: 1 }, { model: a, weight: 2 }] }",
                "experiments.x.split[1].model",
                "already an arm",
            ),
            (
                "  x: { split: [{ model: a, weight: 0 }, { model: b, weight: 0 }] }",
                "experiments.x.split",
                "above 0",
            ),
            (
                "  x: { split: [{ model: a, weight: 10000000 }] }",
                "experiments.x.split[0].weight",
                "from 0 to 1000000",
            ),
            (
                "  x: { split: [{ model: a, weight: 1 }], sticky_header: \"bad header\" }",
                "experiments.x.sticky_header",
                "header name",
            ),
            (
                "  a: { split: [{ model: b, weight: 1 }] }",
                "experiments.a",
                "also the name of a model",
            ),
            (
                "  x: { split: [{ model: a }] }",
                "experiments.x.split[0]",
                "weight",
            ),
        ] {
            let e = err(&format!("{base}experiments:\n{experiments}\n"));
            assert_eq!(e.key, key, "{experiments}: {e}");
            assert!(e.message.contains(needle), "{experiments}: {e}");
        }
        // A key may name an experiment among its models.
        let settings = Settings::from_yaml(
            &format!(
                "{base}experiments:\n  x: {{ split: [{{ model: a, weight: 9 }}, {{ model: b, weight: 1 }}], sticky_header: x-user }}\nkeys:\n  k: {{ key: s, models: [x] }}\n"
            ),
            &env,
        )
        .expect("valid experiment");
        assert_eq!(
            settings.experiments,
            vec![ExperimentSettings {
                name: "x".into(),
                arms: vec![("a".into(), 9), ("b".into(), 1)],
                sticky_header: Some(http::HeaderName::from_static("x-user")),
            }]
        );
    }

    #[test]
    fn rate_limits_are_validated_naming_the_key() {
        let base = "providers:\n  p: { kind: openai, api_key: k }\n";
        for (yaml, key, needle) in [
            (
                "models:\n  m: { provider: p }\nkeys:\n  a: { key: x, limits: { rpm: 0 } }\n",
                "keys.a.limits.rpm",
                "between 1 and",
            ),
            (
                "models:\n  m: { provider: p, limits: { tpm: 10000000000000000 } }\n",
                "models.m.limits.tpm",
                "between 1 and",
            ),
            (
                "models:\n  m: { provider: p, limits: { concurrency: 0 } }\n",
                "models.m.limits.concurrency",
                "between 1 and",
            ),
            (
                "models:\n  m: { provider: p, limits: { rps: 1 } }\n",
                "models.m.limits.rps",
                "unknown field",
            ),
            (
                "limits: { store: \"http://127.0.0.1:6379\" }\n",
                "limits.store",
                "redis://",
            ),
            (
                "limits: { store: \"redis://127.0.0.1\", store_timeout: 0s }\n",
                "limits.store_timeout",
                "greater than 0",
            ),
        ] {
            let e = err(&format!("{base}{yaml}"));
            assert_eq!(e.key, key, "{yaml}: {e}");
            assert!(e.message.contains(needle), "{yaml}: {e}");
        }
        // A store URL's password never appears in an error.
        let e = err(&format!(
            "{base}limits: {{ store: \"redis://:hunter2@[::1\" }}\n"
        ));
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let s = Settings::from_yaml(
            &format!(
                "{base}limits: {{ store: \"redis://127.0.0.1:6379\" }}\n\
                 models:\n  m: {{ provider: p, limits: {{ rpm: 60, tpm: 1000, concurrency: 4 }} }}\n"
            ),
            &env,
        )
        .expect("valid limits");
        assert_eq!(s.models[0].limits.concurrency, Some(4));
        assert!(s.limit_store.redis_url.is_some());
        assert_eq!(s.limit_store.store_timeout, DEFAULT_STORE_TIMEOUT);
    }

    #[test]
    fn a_key_goes_over_plain_http_only_to_loopback_unless_allowed() {
        let provider = |endpoint: &str, extra: &str| {
            format!("providers:\n  p: {{ kind: openai, api_key: k, endpoints: [\"{endpoint}\"]{extra} }}\n")
        };
        let e = err(&provider("http://10.0.0.5:8000/v1", ""));
        assert_eq!(e.key, "providers.p.endpoints[0]");
        assert!(e.message.contains("allow_insecure_http"), "{e}");
        assert_eq!(
            err(&provider("http://vllm.internal/v1", "")).key,
            "providers.p.endpoints[0]"
        );
        for ok in [
            provider("http://127.0.0.1:8000/v1", ""),
            provider("http://localhost:8000/v1", ""),
            provider("http://[::1]:8000/v1", ""),
            provider("https://vllm.internal/v1", ""),
            provider("http://10.0.0.5:8000/v1", ", allow_insecure_http: true"),
            // No key, nothing to leak.
            "providers:\n  p: { kind: openai, auth: none, endpoints: [\"http://10.0.0.5/v1\"] }\n"
                .into(),
        ] {
            Settings::from_yaml(&ok, &env).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn an_open_listener_without_keys_is_refused() {
        let base = "providers:\n  p: { kind: openai, api_key: k }\nmodels:\n  m: { provider: p }\n";
        let e = err(&format!("listen: 0.0.0.0:8080\n{base}"));
        assert_eq!(e.key, "keys");
        let e = err(&format!("listen: [127.0.0.1:8080, \"[::]:8081\"]\n{base}"));
        assert_eq!(e.key, "keys");
        for extra in ["auth: none\n", "keys:\n  a: { key: x }\n"] {
            Settings::from_yaml(&format!("listen: 0.0.0.0:8080\n{base}{extra}"), &env)
                .expect("allowed");
        }
        Settings::from_yaml(&format!("listen: \"[::1]:8080\"\n{base}"), &env).expect("loopback");
    }

    #[test]
    fn metrics_and_the_access_log_are_read_and_validated() {
        let s = Settings::from_yaml("", &env).unwrap();
        assert!(s.metrics);
        assert_eq!(s.access_log, None);
        let s = Settings::from_yaml("metrics: false\naccess_log: stderr\n", &env).unwrap();
        assert!(!s.metrics);
        assert_eq!(
            s.access_log,
            Some(AccessLogSettings {
                target: AccessLogTarget::Stderr,
                buffer: DEFAULT_ACCESS_LOG_BUFFER
            })
        );
        let s =
            Settings::from_yaml("access_log: { path: /tmp/a.log, buffer: 16 }\n", &env).unwrap();
        assert_eq!(
            s.access_log,
            Some(AccessLogSettings {
                target: AccessLogTarget::File("/tmp/a.log".into()),
                buffer: 16
            })
        );
        for (yaml, key, needle) in [
            ("access_log: \"\"\n", "access_log", "must name a file"),
            (
                "access_log: { path: \"\" }\n",
                "access_log.path",
                "must name a file",
            ),
            (
                "access_log: { path: a, buffer: 0 }\n",
                "access_log.buffer",
                "from 1",
            ),
            (
                "access_log: { path: a, bufer: 1 }\n",
                "access_log",
                "unknown field `bufer`",
            ),
            ("access_log: 5\n", "access_log", "expected `stderr`"),
            ("metrics: maybe\n", "metrics", ""),
        ] {
            let e = err(yaml);
            assert_eq!(e.key, key, "{yaml}");
            assert!(e.to_string().contains(needle), "{yaml}: {e}");
        }
    }

    #[test]
    fn the_edge_section_has_production_defaults_and_is_validated() {
        let s = Settings::from_yaml("", &env).unwrap();
        assert_eq!(s.edge, EdgeSettings::default());
        assert_eq!(s.edge.header_timeout, Duration::from_secs(10));
        assert!(s.edge.max_buffered_bytes >= 2 * s.max_request_bytes);
        let s = Settings::from_yaml(
            "edge: { header_timeout: 300ms, idle_timeout: 2s, max_connections: 5 }\n",
            &env,
        )
        .unwrap();
        assert_eq!(s.edge.header_timeout, Duration::from_millis(300));
        assert_eq!(s.edge.idle_timeout, Duration::from_secs(2));
        assert_eq!(s.edge.max_connections, 5);
        assert_eq!(s.edge.body_timeout, EdgeSettings::default().body_timeout);
        for (yaml, key) in [
            ("edge: { body_timeout: 0 }\n", "edge.body_timeout"),
            ("edge: { write_timeout: 200h }\n", "edge.write_timeout"),
            (
                "edge: { max_stream_duration: 800h }\n",
                "edge.max_stream_duration",
            ),
            ("edge: { max_connections: 0 }\n", "edge.max_connections"),
            (
                "max_request_bytes: 100\nedge: { max_buffered_bytes: 199 }\n",
                "edge.max_buffered_bytes",
            ),
            ("edge: { header_timout: 1s }\n", "edge.header_timout"),
        ] {
            assert_eq!(err(yaml).key, key, "{yaml}");
        }
    }

    #[test]
    fn forward_headers_are_header_names_the_gateway_does_not_own() {
        let provider = |list: &str| {
            format!("providers:\n  p: {{ kind: openai, api_key: k, forward_headers: {list} }}\n")
        };
        let s = Settings::from_yaml(&provider("[Anthropic-Beta, openai-beta]"), &env).unwrap();
        let names: Vec<&str> = s.providers[0]
            .forward_headers
            .iter()
            .map(|h| h.as_str())
            .collect();
        assert_eq!(names, ["anthropic-beta", "openai-beta"]);
        for list in ["[x-api-key]", "[X-Forwarded-For]", "[\"bad header\"]"] {
            assert_eq!(
                err(&provider(list)).key,
                "providers.p.forward_headers[0]",
                "{list}"
            );
        }
    }

    #[test]
    fn listeners_are_addresses_or_tls_entries() {
        let s = Settings::from_yaml(
            "listen: [127.0.0.1:1, { address: \"127.0.0.1:2\" }]\n",
            &env,
        )
        .unwrap();
        assert_eq!(s.listen.len(), 2);
        assert!(s.tls.is_empty());
        let e = err("listen: [127.0.0.1:1, \"127.0.0.1:1\"]\n");
        assert_eq!(e.key, "listen[1]");
        assert!(e.message.contains("twice"), "{e}");
        let e = err("listen: [127.0.0.1:3, \"[::]:3\"]\n");
        assert_eq!(e.key, "listen[1]");
        assert!(e.message.contains("same port"), "{e}");
        for apart in [
            "[0.0.0.0:3, \"[::1]:3\"]",
            "[127.0.0.1:3, 127.0.0.2:3]",
            "[127.0.0.1:0, 127.0.0.1:0]",
        ] {
            Settings::from_yaml(&format!("listen: {apart}\nauth: none\n"), &env)
                .unwrap_or_else(|e| panic!("{apart}: {e}"));
        }
        let e = err("listen: { address: \"127.0.0.1:2\", tsl: {} }\n");
        assert_eq!(e.key, "listen");
        let e = err("listen: { address: \"127.0.0.1:2\", tls: { cert: /nonexistent/c.pem, key: /nonexistent/k.pem } }\n");
        assert_eq!(e.key, "listen.tls.cert");
        assert!(e.message.contains("/nonexistent/c.pem"), "{e}");
    }

    #[test]
    fn an_optional_provider_whose_variable_is_unset_or_empty_is_left_out_with_its_models() {
        let yaml = r#"
providers:
  openai: { kind: openai, api_key: "${OPENAI_API_KEY}", optional: true }
  gemini: { kind: gemini, api_key: "${GEMINI_API_KEY}", optional: true }
  azure: { kind: azure-openai, endpoints: ["https://${AZURE_NAME}.openai.azure.com"], api_key: k, api_version: "1", optional: true }
models:
  gpt: { provider: openai, fallbacks: [flash, az] }
  flash: { provider: gemini }
  az: { provider: azure }
keys:
  team: { key: "team-key-123", models: [gpt, flash] }
"#;
        let env_with = |empty_gemini: bool| {
            move |name: &str| match name {
                "OPENAI_API_KEY" => Some("sk-test".to_string()),
                "GEMINI_API_KEY" if empty_gemini => Some(String::new()),
                _ => None,
            }
        };
        for empty_gemini in [false, true] {
            let env = env_with(empty_gemini);
            let s = Settings::from_yaml(yaml, &env).unwrap();
            let providers: Vec<_> = s.providers.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(providers, ["openai"]);
            let models: Vec<_> = s.models.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(models, ["gpt"]);
            assert!(s.models[0].fallbacks.is_empty());
            assert_eq!(s.keys[0].models.as_deref(), Some(&["gpt".to_string()][..]));
        }
        // The message names the variable and the models that went with the provider.
        let mut doc: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let serde_yaml::Value::Mapping(map) = &mut doc else {
            unreachable!()
        };
        let notes = leave_out_optional_providers(map, &env_with(false));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("providers.gemini")
                && notes[0].contains("GEMINI_API_KEY")
                && notes[0].contains("flash"),
            "{notes:?}"
        );
        assert!(notes[1].contains("AZURE_NAME"), "{notes:?}");
        // Not optional: an unset variable is still an error naming the key.
        let strict = yaml.replace(", optional: true", "");
        let e = Settings::from_yaml(&strict, &env_with(false)).unwrap_err();
        assert_eq!(e.key, "providers.gemini.api_key", "{e}");
        // Optional, with every variable set: served.
        let all = |name: &str| Some(format!("{name}-value"));
        let s = Settings::from_yaml(yaml, &all).unwrap();
        assert_eq!(s.providers.len(), 3);
        assert_eq!(s.models.len(), 3);
        // Serving nothing at all is never what a file with models meant.
        let e = Settings::from_yaml(yaml, &|_: &str| None).unwrap_err();
        assert_eq!(e.key, "providers", "{e}");
        assert!(
            e.message.contains("OPENAI_API_KEY") && e.message.contains("GEMINI_API_KEY"),
            "{e}"
        );
        let e = err("providers:\n  p: { kind: openai, api_key: k, optional: yes-please }\n");
        assert_eq!(e.key, "providers.p.optional", "{e}");
    }

    #[test]
    fn listeners_take_host_names_resolved_at_load() {
        let s = Settings::from_yaml(
            "listen: [localhost:1, { address: \"localhost:2\" }]\nadmin_listen: localhost:3\n",
            &env,
        )
        .unwrap();
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(s.listen, vec![loopback(1), loopback(2)]);
        assert_eq!(s.admin_listen, Some(loopback(3)));
        let s = Settings::from_yaml("listen: localhost:1\n", &env).unwrap();
        assert_eq!(s.listen, vec![loopback(1)]);
        // Addresses still read as addresses; `null` still turns the admin listener off.
        let s = Settings::from_yaml("listen: \"[::1]:4\"\nadmin_listen: null\n", &env).unwrap();
        assert_eq!(s.listen, vec!["[::1]:4".parse().unwrap()]);
        assert_eq!(s.admin_listen, None);
        // What cannot be a listener's address is named, with the reason.
        for (yaml, key, why) in [
            ("listen: localhost\n", "listen", "has no port"),
            ("listen: localhost:http\n", "listen", "no valid port"),
            (
                "listen: [127.0.0.1:1, \"local host:2\"]\n",
                "listen[1]",
                "not an address",
            ),
            ("listen: 8080\n", "listen", "a list"),
            (
                "admin_listen: localhost:99999\n",
                "admin_listen",
                "no valid port",
            ),
            (
                "admin_listen: \"[::1:9090\"\n",
                "admin_listen",
                "not an address",
            ),
        ] {
            let e = err(yaml);
            assert_eq!(e.key, key, "{yaml}: {e}");
            assert!(e.message.contains(why), "{yaml}: {e}");
            assert!(!e.message.contains("untagged"), "{yaml}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let e = err("providers:\n  p: { kind: openai, api_key: \"${NOPE}\" }\n");
        assert_eq!(e.key, "providers.p.api_key");
        assert!(e.message.contains("NOPE"), "{e}");

        let e = err("providers:\n  p: { kind: openaii, api_key: k }\n");
        assert_eq!(e.key, "providers.p.kind");

        let e = err("providers:\n  p: { kind: openai, api_key: k, timeot: 3s }\n");
        assert_eq!(e.key, "providers.p.timeot");
        assert!(e.message.contains("unknown field"), "{e}");

        let e = err("providers:\n  p: { kind: openai, api_key: k, timeout: soon }\n");
        assert_eq!(e.key, "providers.p.timeout");

        let e = err("models:\n  m: { provider: ghost }\n");
        assert_eq!(e.key, "models.m.provider");

        let e = err("providers:\n  p: { kind: openai }\n");
        assert_eq!(e.key, "providers.p.api_key");

        let e = err(
            "providers:\n  p: { kind: azure-openai, api_key: k, endpoints: [\"https://x\"] }\n",
        );
        assert_eq!(e.key, "providers.p.api_version");

        let e = err("providers:\n  p: { kind: azure-openai, api_key: k, api_version: v }\n");
        assert_eq!(e.key, "providers.p.endpoints");

        let e = err("providers:\n  p: { kind: openai, api_key: k, endpoints: [\"ftp://x\"] }\n");
        assert_eq!(e.key, "providers.p.endpoints[0]");

        let e = err("listen: nowhere\n");
        assert_eq!(e.key, "listen");

        let e = err("lisen: 127.0.0.1:1\n");
        assert!(e.message.contains("lisen"), "{e}");
    }

    #[test]
    fn total_timeout_defaults_to_the_chains_timeouts_and_must_be_positive() {
        let yaml = "providers:\n  p: { kind: openai, api_key: k, timeout: 10s }\nmodels:\n  \
                    m: { provider: p, timeout: 2s, fallbacks: [f, g] }\n  \
                    f: { provider: p, timeout: 3s }\n  g: { provider: p }\n  \
                    t: { provider: p, total_timeout: 1m, fallbacks: [f] }\n";
        let s = Settings::from_yaml(yaml, &env).unwrap();
        let total = |name: &str| {
            s.models
                .iter()
                .find(|m| m.name == name)
                .map(|m| m.total_timeout)
        };
        assert_eq!(total("m"), Some(Duration::from_secs(2 + 3 + 10)));
        assert_eq!(total("f"), Some(Duration::from_secs(3)));
        assert_eq!(total("g"), Some(Duration::from_secs(10)));
        assert_eq!(total("t"), Some(Duration::from_secs(60)));
        assert_eq!(
            default_total_timeout(Duration::MAX, [Duration::from_secs(1)].into_iter()),
            Duration::MAX
        );

        let e = err("providers:\n  p: { kind: openai, api_key: k }\nmodels:\n  m: { provider: p, total_timeout: 0s }\n");
        assert_eq!(e.key, "models.m.total_timeout");
    }

    #[test]
    fn max_upstream_calls_has_a_default_and_must_be_positive() {
        let yaml = "providers:\n  p: { kind: openai, api_key: k }\nmodels:\n  \
                    m: { provider: p }\n  n: { provider: p, max_upstream_calls: 3 }\n";
        let s = Settings::from_yaml(yaml, &env).unwrap();
        let cap = |name: &str| {
            s.models
                .iter()
                .find(|m| m.name == name)
                .map(|m| m.max_upstream_calls)
        };
        assert_eq!(cap("m"), Some(DEFAULT_MAX_UPSTREAM_CALLS));
        assert_eq!(cap("n"), Some(3));
        let e = err("providers:\n  p: { kind: openai, api_key: k }\nmodels:\n  m: { provider: p, max_upstream_calls: 0 }\n");
        assert_eq!(e.key, "models.m.max_upstream_calls");
    }

    #[test]
    fn api_key_file_is_read_and_trimmed() {
        let path = std::env::temp_dir().join(format!("dragoman-key-{}", std::process::id()));
        std::fs::write(&path, "file-key\n").unwrap();
        let yaml = format!(
            "providers:\n  p: {{ kind: anthropic, api_key_file: \"{}\" }}\n",
            path.display()
        );
        let s = Settings::from_yaml(&yaml, &env).unwrap();
        assert_eq!(s.providers[0].credential.expose(), "file-key");
        std::fs::remove_file(&path).unwrap();
        let e = Settings::from_yaml(&yaml, &env).unwrap_err();
        assert_eq!(e.key, "providers.p.api_key_file");
    }

    #[test]
    fn key_sources_are_read_and_validated_naming_the_key() {
        let provider = |keys: &str| {
            format!(
                "providers:\n  p: {{ kind: openai, {keys} }}\nmodels:\n  m: {{ provider: p }}\n"
            )
        };
        let s = Settings::from_yaml(
            &provider("api_keys: [k1, { command: [tok] }], key_cooldown: 5s, key_file_poll: 200ms"),
            &env,
        )
        .unwrap();
        let p = &s.providers[0];
        assert_eq!(p.keys.len(), 2);
        assert_eq!(p.keys[0].source, KeySource::Literal(Secret::new("k1")));
        assert_eq!(p.keys[1].config_key, "providers.p.api_keys[1].command");
        assert_eq!(
            p.keys[1].source,
            KeySource::Command(CommandConfig {
                run: vec!["tok".into()],
                refresh_every: DEFAULT_COMMAND_REFRESH,
                timeout: DEFAULT_COMMAND_TIMEOUT,
            })
        );
        assert_eq!(
            (p.key_cooldown, p.key_file_poll),
            (Duration::from_secs(5), Duration::from_millis(200))
        );
        let s = Settings::from_yaml(
            &provider(
                "api_key_command: { run: [sh, -c, \"echo t\"], refresh_every: 45m, timeout: 3s }",
            ),
            &env,
        )
        .unwrap();
        let KeySource::Command(c) = &s.providers[0].keys[0].source else {
            panic!("not a command");
        };
        assert_eq!(c.run, ["sh", "-c", "echo t"]);
        assert_eq!(
            (c.refresh_every, c.timeout),
            (Duration::from_secs(2700), Duration::from_secs(3))
        );
        // The command is not run while the config is read: its key holds nothing yet.
        assert!(s.providers[0].credential.is_empty());

        for (keys, key) in [
            (
                "api_key: k, api_key_command: [x]",
                "providers.p.api_key_command",
            ),
            ("api_key_file: f, api_keys: [k]", "providers.p.api_keys"),
            ("api_keys: []", "providers.p.api_keys"),
            ("api_keys: [k, \"\"]", "providers.p.api_keys[1]"),
            (
                "api_keys: [k, { file: /nonexistent/key }]",
                "providers.p.api_keys[1].file",
            ),
            ("api_key_command: []", "providers.p.api_key_command"),
            (
                "api_key_command: { run: [x], timeout: 0s }",
                "providers.p.api_key_command.timeout",
            ),
            (
                "api_key_command: { run: [x], refresh_every: 0s }",
                "providers.p.api_key_command.refresh_every",
            ),
            (
                "api_key_command: { program: x }",
                "providers.p.api_key_command",
            ),
            (
                "api_keys: [a, b], auth: { body: key }",
                "providers.p.api_keys",
            ),
            (
                "api_keys: [a, b], key_cooldown: 0s",
                "providers.p.key_cooldown",
            ),
            ("api_key: k, key_file_poll: 0s", "providers.p.key_file_poll"),
            (
                "api_key: k, auth: { header: h, prefix: \"a\\u0001\" }",
                "providers.p.auth.prefix",
            ),
            ("api_key: \"a\\u0001b\"", "providers.p.api_key"),
        ] {
            let e = err(&provider(keys));
            assert_eq!(e.key, key, "{keys}: {e}");
        }
        let many: Vec<String> = (0..=MAX_PROVIDER_KEYS).map(|i| format!("k{i}")).collect();
        let e = err(&provider(&format!("api_keys: [{}]", many.join(", "))));
        assert_eq!(e.key, "providers.p.api_keys");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::from_yaml(EXAMPLE, &env).unwrap();
        let dump = format!("{s:?}");
        assert!(!dump.contains("sk-test"));
        assert!(!dump.contains("ant-test"));
    }

    #[test]
    fn default_enables_only_providers_with_keys() {
        let s = Settings::default_from_env(&env);
        let names: Vec<_> = s.providers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["anthropic", "openai"]);
        assert!(s.models.iter().any(|m| m.name == "gpt-4o-mini"));
        assert!(s.models.iter().any(|m| m.name == "claude-3-5-haiku-latest"));
        assert!(!s.models.iter().any(|m| m.provider == "gemini"));
        assert_eq!(s.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(s.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
    }

    #[test]
    fn durations_and_urls() {
        assert_eq!(parse_seconds("500ms"), Some(0.5));
        assert_eq!(parse_seconds("2m"), Some(120.0));
        assert_eq!(parse_seconds("1.5s"), Some(1.5));
        assert_eq!(parse_seconds("fast"), None);
        let u = InstanceUrl::parse("http://[::1]:9000/v1/", 1).unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.base_path.as_str()),
            ("::1", 9000, "/v1")
        );
        assert_eq!(u.authority(), "[::1]:9000");
        assert!(InstanceUrl::parse("https://user@host/", 1).is_err());
        assert!(InstanceUrl::parse("https://host/v1?x=1", 1).is_err());
    }
}
