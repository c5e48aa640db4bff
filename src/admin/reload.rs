//! Hot reload: the configuration file read again (on `SIGHUP` or `POST /admin/reload`), checked
//! whole, and the registry rebuilt from the running one and swapped in. Requests in flight keep
//! the registry they started with; a file that fails validation changes nothing.
//!
//! What a running process cannot change (its listeners, the connection limits they were built
//! with, Pingora's keys) is kept as it was and named in the report and the log, so a change there
//! is never silently ignored.

use crate::config::{self, Settings};
use crate::registry::Registry;
use arc_swap::ArcSwap;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;

/// Reloads the configuration; one reload at a time.
pub struct Reloader {
    /// The file given with `-c`; `None` when running on the built-in default.
    path: Option<PathBuf>,
    registry: Arc<ArcSwap<Registry>>,
    /// The settings the process started with: the listeners and Pingora's keys stay these.
    started: Settings,
    /// The file's text at start, for Pingora's keys.
    started_text: String,
    /// The settings in force.
    current: ArcSwap<Settings>,
    /// Bumped at each registry swap (the upkeep service follows it).
    swapped: watch::Sender<u64>,
    /// Serialises reloads (SIGHUP and the admin API may ask at once).
    serial: tokio::sync::Mutex<()>,
    last: Mutex<Option<Arc<ReloadReport>>>,
    pub started_at: Instant,
}

/// What a reload did, for the log, the admin answer and the status page.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// `SIGHUP` or `admin API`.
    pub trigger: &'static str,
    pub at_unix: u64,
    /// Why the file was refused (nothing changed then).
    pub error: Option<String>,
    /// Keys whose new value waits for a restart.
    pub restart_required: Vec<String>,
    pub models_added: Vec<String>,
    pub models_removed: Vec<String>,
    pub providers_added: Vec<String>,
    pub providers_removed: Vec<String>,
    /// Providers whose instance pool (and so its health) was kept.
    pub pools_kept: Vec<String>,
    /// Providers whose credentials were kept.
    pub credentials_kept: Vec<String>,
    /// The registry generation in force after the reload.
    pub generation: u64,
}

impl ReloadReport {
    pub fn applied(&self) -> bool {
        self.error.is_none()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": if self.applied() { "reloaded" } else { "rejected" },
            "trigger": self.trigger,
            "at_unix": self.at_unix,
            "error": self.error,
            "restart_required": self.restart_required,
            "models": { "added": self.models_added, "removed": self.models_removed },
            "providers": {
                "added": self.providers_added,
                "removed": self.providers_removed,
                "pools_kept": self.pools_kept,
                "credentials_kept": self.credentials_kept,
            },
            "generation": self.generation,
        })
    }
}

impl Reloader {
    pub fn new(
        path: Option<PathBuf>,
        registry: Arc<ArcSwap<Registry>>,
        started: Settings,
        started_text: String,
    ) -> Reloader {
        Reloader {
            path,
            registry,
            current: ArcSwap::from_pointee(started.clone()),
            started,
            started_text,
            swapped: watch::channel(0).0,
            serial: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            started_at: Instant::now(),
        }
    }

    /// Tells of each registry swap.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.swapped.subscribe()
    }

    /// The settings in force.
    pub fn current(&self) -> Arc<Settings> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        *self.swapped.borrow()
    }

    pub fn last(&self) -> Option<Arc<ReloadReport>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the file again and, if it is valid, puts it in force. Logs the outcome.
    pub async fn reload(&self, trigger: &'static str) -> Arc<ReloadReport> {
        let _one_at_a_time = self.serial.lock().await;
        let mut report = ReloadReport {
            trigger,
            at_unix: crate::ids::unix_now(),
            ..ReloadReport::default()
        };
        if let Err(why) = self.apply(&mut report).await {
            log::error!("reload ({trigger}) rejected; the running configuration stays: {why}");
            report.error = Some(why);
        } else {
            log::info!(
                "configuration reloaded ({trigger}): models added {:?}, removed {:?}; \
                 providers added {:?}, removed {:?}; pools kept {:?}",
                report.models_added,
                report.models_removed,
                report.providers_added,
                report.providers_removed,
                report.pools_kept
            );
            if !report.restart_required.is_empty() {
                log::warn!(
                    "reload ({trigger}): changed, but only a restart applies them: {}",
                    report.restart_required.join(", ")
                );
            }
        }
        report.generation = self.generation();
        let report = Arc::new(report);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        report
    }

    async fn apply(&self, report: &mut ReloadReport) -> Result<(), String> {
        let Some(path) = self.path.clone() else {
            return Err("started without -c FILE: there is no file to read again".into());
        };
        let shown = path.display().to_string();
        // Reading the file and checking it (TLS and key files included) blocks: not on the
        // admin thread.
        let (text, mut settings) = tokio::task::spawn_blocking(move || {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read: {e}"))?;
            let settings = Settings::from_yaml(&text, &|name| std::env::var(name).ok())
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((text, settings))
        })
        .await
        .map_err(|e| format!("{shown}: {e}"))?
        .map_err(|e| format!("{shown}: {e}"))?;
        // Pingora's keys apply only at start, but a file a restart would refuse is refused now.
        let pingora = config::pingora_section(&text).map_err(|e| format!("{shown}: {e}"))?;
        pingora_core::server::configuration::ServerConf::from_yaml(&pingora)
            .map_err(|e| format!("{shown}: a Pingora setting is invalid: {}", e.root_cause()))?;
        report.restart_required = config::restart_only_changes(&self.started, &settings);
        report.restart_required.extend(
            config::pingora_changes(&self.started_text, &text)
                .map_err(|e| format!("{shown}: {e}"))?,
        );
        settings.keep_restart_only(&self.started);
        // The admin listener stays where it is: if other hosts can reach it, it keeps a token.
        config::check_admin_token(settings.admin_listen, settings.admin_token.as_ref())
            .map_err(|e| format!("{shown}: {e} (the admin listener stays until a restart)"))?;

        let old = self.registry.load_full();
        let next = Registry::rebuild(Some(&old), &settings);
        // New key commands run and new pools resolve here, before any request can use them.
        next.prepare(Some(&old)).await?;

        let names = |r: &Registry| -> Vec<String> {
            let mut v: Vec<String> = r.models.keys().cloned().collect();
            v.sort();
            v
        };
        let (before, after) = (names(&old), names(&next));
        report.models_added = after
            .iter()
            .filter(|m| !before.contains(m))
            .cloned()
            .collect();
        report.models_removed = before
            .iter()
            .filter(|m| !after.contains(m))
            .cloned()
            .collect();
        for p in &next.providers {
            match old.provider(&p.name) {
                None => report.providers_added.push(p.name.clone()),
                Some(o) => {
                    if Arc::ptr_eq(&o.upstreams, &p.upstreams) {
                        report.pools_kept.push(p.name.clone());
                    }
                    if Arc::ptr_eq(&o.credentials, &p.credentials) {
                        report.credentials_kept.push(p.name.clone());
                    }
                }
            }
        }
        report.providers_removed = old
            .providers
            .iter()
            .filter(|o| next.provider(&o.name).is_none())
            .map(|o| o.name.clone())
            .collect();

        crate::buffers::BUFFERS.set_limit(settings.edge.max_buffered_bytes);
        self.registry.store(Arc::new(next));
        self.current.store(Arc::new(settings));
        self.swapped.send_modify(|generation| *generation += 1);
        Ok(())
    }
}

/// Reloads on `SIGHUP`. Pingora does not handle that signal, whose default action ends the
/// process: `main` ignores it before anything else (an ignored disposition survives `-d`'s fork,
/// where a thread would not), and this service takes it over once the server runs.
pub struct ReloadOnHangup(pub Arc<Reloader>);

#[async_trait::async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP ({e}): reload with POST /admin/reload");
                return;
            }
        };
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    self.0.reload("SIGHUP").await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{pingora_changes, restart_only_changes, Settings};

    fn settings(yaml: &str) -> Settings {
        Settings::from_yaml(yaml, &|_| None).expect("valid")
    }

    #[test]
    fn restart_only_keys_are_named_and_kept() {
        let running = settings("listen: 127.0.0.1:8080\nadmin_listen: 127.0.0.1:9090\n");
        let mut new = settings(
            "listen: 127.0.0.1:8081\nadmin_listen: 127.0.0.1:9091\n\
             edge: { max_connections: 5, idle_timeout: 5s, body_timeout: 5s }\n",
        );
        assert_eq!(
            restart_only_changes(&running, &new),
            [
                "listen",
                "admin_listen",
                "edge.idle_timeout",
                "edge.max_connections"
            ]
        );
        new.keep_restart_only(&running);
        assert!(restart_only_changes(&running, &new).is_empty());
        // What a reload can change stays changed.
        assert_eq!(new.edge.body_timeout, std::time::Duration::from_secs(5));
    }

    #[test]
    fn changed_pingora_keys_are_named() {
        let before = "threads: 2\npid_file: /tmp/a\nmodels: {}\n";
        let after = "threads: 4\npid_file: /tmp/a\nmodels: { }\nerror_log: /tmp/e\n";
        assert_eq!(
            pingora_changes(before, after).unwrap(),
            ["error_log", "threads"]
        );
        assert!(pingora_changes(before, before).unwrap().is_empty());
    }
}
