//! A provider's keys at run time: which key an attempt sends, keys set aside after the upstream
//! refused them, and keys that change while the gateway runs (files re-read, commands run again).
//!
//! The request path only reads: each key's current value sits in an `ArcSwapOption`, with the
//! header value (or query pair) it is sent as rendered once when the key changes, so an attempt
//! takes one atomic load and a reference count. Files and commands are read and run by
//! [`Credentials::refresh`], a background task (run by `upkeep`); a key that cannot be renewed
//! keeps its last good value (a command's token only until its stated lifetime ends).
//!
//! With several keys (`api_keys`) attempts take them in turn. A key answered 401, or 429, is set
//! aside for `key_cooldown` (a 429's `Retry-After` when it gives one, at most
//! [`MAX_SET_ASIDE`]) and the attempt may be retried with another key. A lone key is never set
//! aside: there is nothing to switch to, and the upstream's answer goes to the client as before.
//!
//! Nothing here logs or returns a key or a command's output: messages name the config key.

use crate::config::{
    check_key, read_key_file, CommandConfig, KeySource, ProviderKey, Secret, MAX_KEY_FILE_BYTES,
};
use crate::providers::openai::encode_component;
use crate::providers::AuthPlacement;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a key is set aside, whatever a 429's `Retry-After` asks (as for models set aside).
pub const MAX_SET_ASIDE: Duration = Duration::from_secs(300);
/// A command's token is renewed when this share of its stated lifetime has passed.
const RENEW_AT: f64 = 0.8;
/// Wait before running a failed command again (shorter when its token expires sooner).
const COMMAND_RETRY: Duration = Duration::from_secs(5);

/// A key as an attempt sends it.
pub struct ActiveKey {
    secret: Secret,
    /// `prefix + key`, for a header placement; marked sensitive.
    header: Option<http::HeaderValue>,
    /// `name=key`, percent-encoded, for a query placement.
    query: Option<String>,
    /// When a command's token stops being valid, if its output said.
    expires: Option<Instant>,
}

impl ActiveKey {
    fn new(
        secret: Secret,
        placement: &AuthPlacement,
        expires: Option<Instant>,
    ) -> Result<Self, &'static str> {
        check_key(&secret)?;
        let (header, query) = match placement {
            AuthPlacement::Header { prefix, .. } => {
                let mut value = http::HeaderValue::from_maybe_shared(Bytes::from(format!(
                    "{prefix}{}",
                    secret.expose()
                )))
                .map_err(|_| "with `auth.prefix` is not a valid header value")?;
                value.set_sensitive(true);
                (Some(value), None)
            }
            AuthPlacement::Query { name } => (
                None,
                Some(format!(
                    "{}={}",
                    encode_component(name),
                    encode_component(secret.expose())
                )),
            ),
            AuthPlacement::Body { .. } | AuthPlacement::None => (None, None),
        };
        Ok(ActiveKey {
            secret,
            header,
            query,
            expires,
        })
    }

    pub fn secret(&self) -> &str {
        self.secret.expose()
    }

    /// The auth header's value (header placements).
    pub fn header(&self) -> Option<&http::HeaderValue> {
        self.header.as_ref()
    }

    /// `name=key` for the URL (query placements).
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    fn valid_at(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// The key an attempt sends: which one (to set it aside if refused) and its value.
pub struct AttemptKey {
    pub index: usize,
    pub key: Arc<ActiveKey>,
}

/// Why no key could be picked.
#[derive(Debug, PartialEq, Eq)]
pub enum NoKey {
    /// Every key is set aside after 401/429 answers; the first comes back after this long.
    SetAside(Duration),
    /// No key holds a valid value (a command's token expired and it keeps failing).
    Unavailable,
}

struct KeySlot {
    config_key: String,
    source: KeySource,
    active: ArcSwapOption<ActiveKey>,
    /// Milliseconds after `Credentials::epoch` until which the key is set aside; 0: never was.
    aside_until: AtomicU64,
}

/// One provider's keys.
pub struct Credentials {
    provider: String,
    placement: AuthPlacement,
    slots: Box<[KeySlot]>,
    next: AtomicUsize,
    cooldown: Duration,
    poll: Duration,
    epoch: Instant,
}

impl Credentials {
    /// Literal keys and files (read by the config) are in use at once; commands hold no key
    /// until [`Credentials::load`] runs them.
    pub fn new(
        provider: &str,
        keys: &[ProviderKey],
        placement: AuthPlacement,
        cooldown: Duration,
        poll: Duration,
    ) -> Credentials {
        let slots = keys
            .iter()
            .map(|k| {
                let initial = match &k.source {
                    KeySource::Literal(s) | KeySource::File { initial: s, .. } => {
                        match ActiveKey::new(s.clone(), &placement, None) {
                            Ok(key) => Some(Arc::new(key)),
                            Err(why) => {
                                log::error!("provider {provider}: {}: the key {why}", k.config_key);
                                None
                            }
                        }
                    }
                    KeySource::Command(_) => None,
                };
                KeySlot {
                    config_key: k.config_key.clone(),
                    source: k.source.clone(),
                    active: ArcSwapOption::new(initial),
                    aside_until: AtomicU64::new(0),
                }
            })
            .collect();
        Credentials {
            provider: provider.to_string(),
            placement,
            slots,
            next: AtomicUsize::new(0),
            cooldown,
            poll,
            epoch: Instant::now(),
        }
    }

    /// Whether these credentials were built from the same key settings (a file's by its path,
    /// not the content it had when the config was read). A reload keeps such credentials: their
    /// renewed values and the keys set aside stay, and no command runs again.
    pub fn same_config(
        &self,
        provider: &str,
        keys: &[ProviderKey],
        placement: &AuthPlacement,
        cooldown: Duration,
        poll: Duration,
    ) -> bool {
        let same_source = |a: &KeySource, b: &KeySource| match (a, b) {
            (KeySource::File { path: a, .. }, KeySource::File { path: b, .. }) => a == b,
            (a, b) => a == b,
        };
        self.provider == provider
            && self.placement == *placement
            && self.cooldown == cooldown
            && self.poll == poll
            && self.slots.len() == keys.len()
            && self.slots.iter().zip(keys).all(|(slot, k)| {
                slot.config_key == k.config_key && same_source(&slot.source, &k.source)
            })
    }

    /// Whether a key comes from a file or a command, and so needs [`Credentials::refresh`].
    pub fn changes(&self) -> bool {
        self.slots
            .iter()
            .any(|s| !matches!(s.source, KeySource::Literal(_)))
    }

    /// Whether attempts switch keys after a 401 or 429 (several keys).
    pub fn rotates(&self) -> bool {
        self.slots.len() > 1
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// The key for an attempt: the next in turn that is not set aside, holds a valid value and
    /// has not been refused for this request (`tried`, a bit per key). `Ok(None)` when the
    /// provider takes no key (`auth: none`).
    pub fn pick(&self, tried: u64, now: Instant) -> Result<Option<AttemptKey>, NoKey> {
        let n = self.slots.len();
        if n == 0 {
            return Ok(None);
        }
        let start = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        let now_ms = self.millis(now);
        let mut soonest: Option<u64> = None;
        for i in 0..n {
            let index = (start + i) % n;
            let slot = &self.slots[index];
            let until = slot.aside_until.load(Ordering::Relaxed);
            if until > now_ms {
                soonest = Some(soonest.map_or(until, |s| s.min(until)));
                continue;
            }
            if tried & bit(index) != 0 {
                continue;
            }
            if let Some(key) = slot.active.load_full().filter(|k| k.valid_at(now)) {
                return Ok(Some(AttemptKey { index, key }));
            }
        }
        Err(match soonest {
            Some(until) => NoKey::SetAside(Duration::from_millis(until - now_ms)),
            None => NoKey::Unavailable,
        })
    }

    /// Whether a retry could get another key than those in `tried`.
    pub fn another_key(&self, tried: u64, now: Instant) -> bool {
        let now_ms = self.millis(now);
        self.slots.iter().enumerate().any(|(i, slot)| {
            tried & bit(i) == 0
                && slot.aside_until.load(Ordering::Relaxed) <= now_ms
                && slot.active.load().as_ref().is_some_and(|k| k.valid_at(now))
        })
    }

    /// The key in use for a request planned now (a body placement writes it into the body once).
    pub fn current(&self, now: Instant) -> Option<Arc<ActiveKey>> {
        self.pick(0, now).ok().flatten().map(|a| a.key)
    }

    /// The upstream refused key `index` with `status` (401 or 429): it is set aside for
    /// `retry_after` (a 429's, when it gives one) or `key_cooldown`. A later refusal may lengthen
    /// the time aside, never shorten it.
    pub fn set_aside(
        &self,
        index: usize,
        status: u16,
        retry_after: Option<Duration>,
        now: Instant,
    ) {
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let length = retry_after
            .filter(|d| status == 429 && !d.is_zero())
            .unwrap_or(self.cooldown)
            .min(MAX_SET_ASIDE);
        let until = self.millis(now).saturating_add(duration_millis(length));
        let before = slot.aside_until.fetch_max(until, Ordering::Relaxed);
        if before < until {
            log::warn!(
                "provider {}: {} answered {status}; set aside for {} s",
                self.provider,
                slot.config_key,
                length.as_secs_f64().ceil()
            );
        }
    }

    /// Runs every key command once, before traffic. The first failure is returned naming its
    /// config key.
    pub async fn load(&self) -> Result<(), String> {
        for slot in self.slots.iter() {
            if let KeySource::Command(command) = &slot.source {
                // A stated lifetime counts from when the command was asked, as renewals do.
                let started = Instant::now();
                let (secret, lifetime) = run_command(command)
                    .await
                    .map_err(|why| format!("{}: {why}", slot.config_key))?;
                self.install(slot, secret, lifetime.map(|l| started + l))
                    .map_err(|why| format!("{}: the command's token {why}", slot.config_key))?;
            }
        }
        Ok(())
    }

    fn install(
        &self,
        slot: &KeySlot,
        secret: Secret,
        expires: Option<Instant>,
    ) -> Result<(), &'static str> {
        let key = ActiveKey::new(secret, &self.placement, expires)?;
        slot.active.store(Some(Arc::new(key)));
        Ok(())
    }

    /// Keeps files and commands current until `shutdown` says stop: one task per changing key.
    pub async fn refresh(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..self.slots.len() {
            let this = self.clone();
            match &self.slots[index].source {
                KeySource::Literal(_) => {}
                KeySource::File { .. } => {
                    tasks.spawn(async move { this.watch_file(index).await });
                }
                KeySource::Command(_) => {
                    tasks.spawn(async move { this.renew_command(index).await });
                }
            }
        }
        if tasks.is_empty() {
            return;
        }
        // Ends on shutdown, or when the sender is gone; dropping the set aborts the tasks.
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        tasks.abort_all();
    }

    /// Reads the key file every `key_file_poll`; a new key is used at once. A missing, empty or
    /// unreadable file keeps the last good key, with one warning until the file is good again.
    async fn watch_file(&self, index: usize) {
        let slot = &self.slots[index];
        let KeySource::File { path, .. } = &slot.source else {
            return;
        };
        // The last failure warned of, so a file that stays broken warns once per reason.
        let mut failing: Option<String> = None;
        loop {
            tokio::time::sleep(self.poll).await;
            let read = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_key_file(&path)).await
            };
            match read {
                Ok(Ok(secret)) => {
                    let unchanged = slot
                        .active
                        .load()
                        .as_ref()
                        .is_some_and(|k| k.secret == secret);
                    let recovered = failing.take().is_some();
                    if unchanged && !recovered {
                        continue;
                    }
                    if unchanged {
                        log::info!(
                            "provider {}: {} is readable again",
                            self.provider,
                            slot.config_key
                        );
                        continue;
                    }
                    match self.install(slot, secret, None) {
                        Ok(()) => log::info!(
                            "provider {}: {} changed; the new key is in use",
                            self.provider,
                            slot.config_key
                        ),
                        Err(why) => log::warn!(
                            "provider {}: {}: the new key {why}; keeping the last good key",
                            self.provider,
                            slot.config_key
                        ),
                    }
                }
                Ok(Err(why)) => {
                    if failing.as_ref() != Some(&why) {
                        log::warn!(
                            "provider {}: {}: {why}; keeping the last good key",
                            self.provider,
                            slot.config_key
                        );
                        failing = Some(why);
                    }
                }
                Err(_) => {} // the blocking read panicked or was cancelled: try again
            }
        }
    }

    /// Runs the key command again before its token expires: at 80% of the lifetime its output
    /// states, else every `refresh_every`. A failed run keeps the last good token (until it
    /// expires) and is tried again after a short wait; a failure is logged when it starts (or
    /// changes, or the token expires meanwhile) and when it ends, not at every retry.
    async fn renew_command(&self, index: usize) {
        let slot = &self.slots[index];
        let KeySource::Command(command) = &slot.source else {
            return;
        };
        let mut wait = next_renewal(
            command,
            slot.active.load().as_ref().map(|k| k.expires),
            Instant::now(),
        );
        // The failure logged last, and whether the token had expired by then.
        let mut failing: Option<(String, bool)> = None;
        loop {
            tokio::time::sleep(wait).await;
            let started = Instant::now();
            let outcome = match run_command(command).await {
                Ok((secret, lifetime)) => self
                    .install(slot, secret, lifetime.map(|l| started + l))
                    .map(|()| lifetime)
                    .map_err(|why| format!("the command's token {why}")),
                Err(why) => Err(why),
            };
            let now = Instant::now();
            match outcome {
                Ok(lifetime) => {
                    if failing.take().is_some() {
                        log::info!(
                            "provider {}: {} works again; its token is renewed",
                            self.provider,
                            slot.config_key
                        );
                    } else {
                        log::debug!("provider {}: {} renewed", self.provider, slot.config_key);
                    }
                    wait = next_renewal(command, Some(lifetime.map(|l| started + l)), now);
                }
                Err(why) => {
                    let left = slot
                        .active
                        .load()
                        .as_ref()
                        .and_then(|k| k.expires)
                        .map(|e| e.saturating_duration_since(now));
                    wait = COMMAND_RETRY.min(command.refresh_every);
                    let state = (why, left.is_some_and(|l| l.is_zero()));
                    if failing.as_ref() == Some(&state) {
                        log::debug!(
                            "provider {}: {}: {}; still failing",
                            self.provider,
                            slot.config_key,
                            state.0
                        );
                        continue;
                    }
                    let why = &state.0;
                    match left {
                        Some(left) if left.is_zero() => log::error!(
                            "provider {}: {}: {why}; its last token has expired",
                            self.provider,
                            slot.config_key
                        ),
                        Some(left) => log::warn!(
                            "provider {}: {}: {why}; keeping the last good token ({} s left)",
                            self.provider,
                            slot.config_key,
                            left.as_secs()
                        ),
                        None => log::warn!(
                            "provider {}: {}: {why}; keeping the last good token",
                            self.provider,
                            slot.config_key
                        ),
                    }
                    failing = Some(state);
                }
            }
        }
    }
}

/// The bit for key `index` in a request's set of refused keys (at most 64 keys, checked by the
/// config).
fn bit(index: usize) -> u64 {
    1u64.checked_shl(u32::try_from(index).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// Adds key `index` to a request's set of refused keys.
pub fn mark_tried(tried: &mut u64, index: usize) {
    *tried |= bit(index);
}

fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When a command runs next, after a run at `now` whose token expires at `expires` (`None`
/// inside: no stated lifetime).
fn next_renewal(
    command: &CommandConfig,
    expires: Option<Option<Instant>>,
    now: Instant,
) -> Duration {
    match expires.flatten() {
        Some(at) => at
            .saturating_duration_since(now)
            .mul_f64(RENEW_AT)
            .max(Duration::from_millis(100)),
        None => command.refresh_every,
    }
}

/// Runs a key command (no shell; stdin and stderr closed) and reads its token from stdout,
/// within its timeout. Errors say what went wrong, never what the command printed.
pub async fn run_command(command: &CommandConfig) -> Result<(Secret, Option<Duration>), String> {
    use tokio::io::AsyncReadExt;
    let Some((program, args)) = command.run.split_first() else {
        return Err("the command is empty".into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let Some(stdout) = child.stdout.take() else {
        return Err(format!("cannot read the output of {program}"));
    };
    let run = async {
        let mut out = Vec::new();
        stdout
            .take(MAX_KEY_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| format!("cannot read the output of {program}: {e}"))?;
        if out.len() as u64 > MAX_KEY_FILE_BYTES {
            return Err(format!(
                "{program} printed more than {MAX_KEY_FILE_BYTES} bytes"
            ));
        }
        let status = child
            .wait()
            .await
            .map_err(|e| format!("cannot wait for {program}: {e}"))?;
        if !status.success() {
            return Err(format!("{program} failed ({status})"));
        }
        Ok(out)
    };
    // On timeout `run` is dropped, and with it the child, which `kill_on_drop` kills.
    let out = tokio::time::timeout(command.timeout, run)
        .await
        .map_err(|_| {
            format!(
                "{program} did not finish within {} s",
                command.timeout.as_secs_f64()
            )
        })??;
    parse_token(&out).map_err(|why| format!("{program} {why}"))
}

/// A command's output: a plain token, or `{"token": "...", "expires_in": SECONDS}` (`access_token`
/// is read as `token`, as OAuth token endpoints name it).
fn parse_token(out: &[u8]) -> Result<(Secret, Option<Duration>), &'static str> {
    #[derive(serde::Deserialize)]
    struct Stated {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<f64>,
    }
    let text = std::str::from_utf8(out)
        .map_err(|_| "printed something that is not text")?
        .trim();
    let (secret, lifetime) = if text.starts_with('{') {
        // serde_json's messages may quote the input: none of them is passed on.
        let stated: Stated = serde_json::from_str(text).map_err(|_| {
            "printed a JSON object that is not {\"token\": \"...\", \"expires_in\": seconds}"
        })?;
        let token = stated
            .token
            .or(stated.access_token)
            .ok_or("printed a JSON object without a `token` string")?;
        let lifetime = match stated.expires_in {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 && s <= 1e9 => Some(Duration::from_secs_f64(s)),
            Some(_) => {
                return Err("printed an `expires_in` that is not a positive number of seconds")
            }
        };
        (Secret::new(token.trim()), lifetime)
    } else {
        (Secret::new(text), None)
    };
    check_key(&secret).map_err(|why| match why {
        "is empty" => "printed no token",
        _ => "printed a token that cannot be sent in a header (line breaks or control characters)",
    })?;
    Ok((secret, lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(n: usize) -> Vec<ProviderKey> {
        (0..n)
            .map(|i| ProviderKey {
                config_key: format!("providers.p.api_keys[{i}]"),
                source: KeySource::Literal(Secret::new(format!("key-{i}"))),
            })
            .collect()
    }

    fn bearer() -> AuthPlacement {
        AuthPlacement::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }

    fn creds(n: usize) -> Credentials {
        Credentials::new(
            "p",
            &literal(n),
            bearer(),
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
    }

    fn picked(c: &Credentials, tried: u64, now: Instant) -> String {
        c.pick(tried, now)
            .ok()
            .flatten()
            .map(|a| a.key.secret().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn keys_are_taken_in_turn_with_the_header_rendered_once() {
        let c = creds(2);
        let now = Instant::now();
        let seen: Vec<String> = (0..4).map(|_| picked(&c, 0, now)).collect();
        assert_eq!(seen, ["key-0", "key-1", "key-0", "key-1"]);
        let a = c.pick(0, now).unwrap().unwrap();
        assert_eq!(
            a.key.header().unwrap().to_str().unwrap(),
            format!("Bearer {}", a.key.secret())
        );
        assert!(a.key.header().unwrap().is_sensitive());
        assert_eq!(a.key.query(), None);
    }

    #[test]
    fn a_key_set_aside_is_skipped_until_its_time_is_up() {
        let c = creds(2);
        let t0 = Instant::now();
        c.set_aside(0, 401, None, t0);
        for _ in 0..4 {
            assert_eq!(picked(&c, 0, t0 + Duration::from_secs(59)), "key-1");
        }
        let back: Vec<String> = (0..2)
            .map(|_| picked(&c, 0, t0 + Duration::from_secs(61)))
            .collect();
        assert!(back.contains(&"key-0".to_string()), "{back:?}");
    }

    #[test]
    fn retry_after_sets_a_429_key_aside_for_that_long_capped() {
        let c = creds(2);
        let t0 = Instant::now();
        c.set_aside(0, 429, Some(Duration::from_secs(5)), t0);
        c.set_aside(1, 429, Some(Duration::from_secs(3600)), t0);
        assert_eq!(
            c.pick(0, t0).err(),
            Some(NoKey::SetAside(Duration::from_secs(5)))
        );
        assert_eq!(picked(&c, 0, t0 + Duration::from_secs(6)), "key-0");
        // key 1 is back after the cap, not an hour.
        assert_eq!(
            c.pick(bit(0), t0 + Duration::from_secs(6)).err(),
            Some(NoKey::SetAside(MAX_SET_ASIDE - Duration::from_secs(6)))
        );
        assert_eq!(picked(&c, bit(0), t0 + MAX_SET_ASIDE), "key-1");
        // Without Retry-After (or a 401's), the cooldown.
        let c = creds(2);
        c.set_aside(0, 429, None, t0);
        c.set_aside(1, 401, Some(Duration::from_secs(5)), t0);
        assert_eq!(
            c.pick(0, t0).err(),
            Some(NoKey::SetAside(Duration::from_secs(60)))
        );
    }

    #[test]
    fn a_shorter_refusal_never_shortens_the_time_aside() {
        let c = creds(2);
        let t0 = Instant::now();
        c.set_aside(0, 429, Some(Duration::from_secs(100)), t0);
        c.set_aside(0, 429, Some(Duration::from_secs(1)), t0);
        assert_eq!(picked(&c, 0, t0 + Duration::from_secs(50)), "key-1");
        assert_eq!(picked(&c, 0, t0 + Duration::from_secs(50)), "key-1");
    }

    #[test]
    fn keys_refused_for_this_request_are_not_tried_again() {
        let c = creds(2);
        let now = Instant::now();
        let mut tried = 0;
        mark_tried(&mut tried, 1);
        assert!(c.another_key(tried, now));
        for _ in 0..3 {
            assert_eq!(picked(&c, tried, now), "key-0");
        }
        mark_tried(&mut tried, 0);
        assert!(!c.another_key(tried, now));
        assert_eq!(c.pick(tried, now).err(), Some(NoKey::Unavailable));
    }

    #[test]
    fn query_placement_is_percent_encoded_once() {
        let keys = vec![ProviderKey {
            config_key: "providers.g.api_key".into(),
            source: KeySource::Literal(Secret::new("a b&c")),
        }];
        let c = Credentials::new(
            "g",
            &keys,
            AuthPlacement::Query { name: "key".into() },
            Duration::from_secs(60),
            Duration::from_secs(1),
        );
        let a = c.pick(0, Instant::now()).unwrap().unwrap();
        assert_eq!(a.key.query(), Some("key=a%20b%26c"));
        assert!(a.key.header().is_none());
    }

    #[test]
    fn no_keys_means_no_auth() {
        let c = creds(0);
        assert!(c.pick(0, Instant::now()).unwrap().is_none());
    }

    #[test]
    fn an_expired_token_is_not_used() {
        let c = creds(1);
        let now = Instant::now();
        let key = ActiveKey::new(Secret::new("tok"), &bearer(), Some(now)).unwrap();
        c.slots[0].active.store(Some(Arc::new(key)));
        assert_eq!(c.pick(0, now).err(), Some(NoKey::Unavailable));
    }

    #[test]
    fn command_output_is_a_plain_token_or_a_json_object() {
        let (t, l) = parse_token(b"  tok-123\n").unwrap();
        assert_eq!((t.expose(), l), ("tok-123", None));
        let (t, l) = parse_token(br#"{"token": "tok-456", "expires_in": 3600}"#).unwrap();
        assert_eq!(
            (t.expose(), l),
            ("tok-456", Some(Duration::from_secs(3600)))
        );
        let (t, l) =
            parse_token(br#"{"access_token": "ya29", "expires_in": 1.5, "x": 1}"#).unwrap();
        assert_eq!((t.expose(), l), ("ya29", Some(Duration::from_millis(1500))));
        for bad in [
            &b""[..],
            b"\n",
            b"two\nlines",
            br#"{"token": 5}"#,
            br#"{"expires_in": 5}"#,
            br#"{"token": "t", "expires_in": -1}"#,
            br#"{"token": "secret-in-bad-json""#,
            b"\xff\xfe",
        ] {
            let e = parse_token(bad).expect_err("refused");
            assert!(!e.contains("secret") && !e.contains("two"), "{e}");
        }
    }

    #[test]
    fn renewal_comes_at_80_percent_of_a_stated_lifetime_else_every_refresh() {
        let command = CommandConfig {
            run: vec!["true".into()],
            refresh_every: Duration::from_secs(30),
            timeout: Duration::from_secs(1),
        };
        let now = Instant::now();
        assert_eq!(
            next_renewal(&command, Some(Some(now + Duration::from_secs(100))), now),
            Duration::from_secs(80)
        );
        assert_eq!(
            next_renewal(&command, Some(None), now),
            Duration::from_secs(30)
        );
        assert_eq!(next_renewal(&command, None, now), Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_at_its_timeout_and_its_output_never_shown() {
        let hang = CommandConfig {
            run: vec!["sh".into(), "-c".into(), "echo secret-out; sleep 30".into()],
            refresh_every: Duration::from_secs(30),
            timeout: Duration::from_millis(300),
        };
        let started = Instant::now();
        let e = run_command(&hang).await.expect_err("timed out");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(e.contains("did not finish"), "{e}");
        let fail = CommandConfig {
            run: vec![
                "sh".into(),
                "-c".into(),
                "echo secret-out; echo secret-err >&2; exit 3".into(),
            ],
            ..hang.clone()
        };
        let e = run_command(&fail).await.expect_err("failed");
        assert!(e.contains("exit status: 3") && !e.contains("secret"), "{e}");
        let ok = CommandConfig {
            run: vec![
                "sh".into(),
                "-c".into(),
                r#"echo '{"token": "t-1", "expires_in": 60}'"#.into(),
            ],
            ..hang
        };
        let (t, l) = run_command(&ok).await.unwrap();
        assert_eq!((t.expose(), l), ("t-1", Some(Duration::from_secs(60))));
    }
}
