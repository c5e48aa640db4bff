//! How an instance and its failures read in the log: one short line naming the provider, the
//! instance's URL and address, and what went wrong. Pingora's own messages print the peer's whole
//! `Debug` form (every connection option, over 1 KB a line) and the error's chain of contexts;
//! these replace them where the gateway can: the error of a failed connect, and the active health
//! checks' reports (Pingora logs `"{summary} becomes unhealthy, {error}"` with the check's
//! summary and error, both written here).
//!
//! Nothing here can hold a key: a connect failure or a health check happens before any request,
//! and instance URLs carry no credentials (`InstanceUrl` refuses them).

use crate::config::InstanceUrl;
use async_trait::async_trait;
use pingora_error::{Error, ErrorSource};
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::Backend;
use std::sync::Arc;

/// The longest cause written for one failure; an OS or TLS error's text is far shorter.
const MAX_CAUSE_CHARS: usize = 160;

/// `provider `openai` instance https://api.openai.com/v1 (162.159.140.245:443)`.
pub fn instance(provider: &str, backend: &Backend) -> String {
    match backend.ext.get::<Arc<InstanceUrl>>() {
        Some(url) => format!(
            "provider `{provider}` instance {}://{}{} ({})",
            if url.tls { "https" } else { "http" },
            url.authority(),
            url.base_path,
            backend.addr
        ),
        None => format!("provider `{provider}` instance {}", backend.addr),
    }
}

/// What finally went wrong, without the chain of contexts around it: the OS's or TLS library's
/// message (`Connection refused (os error 111)`), or the innermost context Pingora gave.
pub fn cause(e: &Error) -> String {
    let root = e.root_cause();
    let text = match root.downcast_ref::<Error>() {
        Some(inner) => inner.context.as_ref().map_or_else(
            || inner.etype.as_str().to_string(),
            |c| c.as_str().to_string(),
        ),
        None => root.to_string(),
    };
    match text.char_indices().nth(MAX_CAUSE_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text,
    }
}

/// The error of a failed connect to `backend`, in one line: its type (which decides the client's
/// answer and the retry) and the instance with the cause as its only context.
pub fn connect_failure(e: &Error, provider: &str, backend: Option<&Backend>) -> Box<Error> {
    let context = match backend {
        Some(b) => format!("{}: {}", instance(provider, b), cause(e)),
        None => format!("provider `{provider}`: {}", cause(e)),
    };
    Error::create(
        e.etype.clone(),
        ErrorSource::Upstream,
        Some(context.into()),
        None,
    )
}

/// A health check whose reports Pingora logs in one line each: the instance as [`instance`]
/// writes it, and the failure as [`cause`] does.
pub struct Reported {
    pub check: Box<dyn HealthCheck + Send + Sync>,
    pub provider: String,
}

#[async_trait]
impl HealthCheck for Reported {
    async fn check(&self, target: &Backend) -> pingora_error::Result<()> {
        self.check.check(target).await.map_err(|e| {
            Error::create(
                e.etype.clone(),
                ErrorSource::Upstream,
                Some(cause(&e).into()),
                None,
            )
        })
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        self.check.health_status_change(target, healthy).await;
    }

    fn backend_summary(&self, target: &Backend) -> String {
        instance(&self.provider, target)
    }

    fn health_threshold(&self, success: bool) -> usize {
        self.check.health_threshold(success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_error::{ErrorType, OrErr};

    fn backend() -> Backend {
        let mut b = Backend::new("127.0.0.1:1").unwrap();
        b.ext.insert(Arc::new(
            InstanceUrl::parse("http://127.0.0.1:1/v1", 1).unwrap(),
        ));
        b
    }

    #[test]
    fn a_connect_failure_is_one_short_line_naming_the_instance() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let inner: pingora_error::Result<()> =
            Err(io).or_err(ErrorType::ConnectRefused, "Fail to connect to 127.0.0.1:1");
        let outer = inner
            .map_err(|e| e.more_context(format!("Fail to connect to {}", "x".repeat(1500))))
            .unwrap_err();
        let short = connect_failure(&outer, "p", Some(&backend()));
        let line = short.to_string();
        assert_eq!(short.etype, ErrorType::ConnectRefused);
        assert_eq!(short.esource, ErrorSource::Upstream);
        assert!(
            line.contains("provider `p` instance http://127.0.0.1:1/v1 (127.0.0.1:1)"),
            "{line}"
        );
        assert!(line.contains("refused"), "{line}");
        assert!(line.len() < 200, "{} bytes: {line}", line.len());
    }

    #[test]
    fn a_long_cause_is_cut() {
        let e = Error::explain(ErrorType::ConnectError, "y".repeat(5000));
        assert_eq!(cause(&e).chars().count(), MAX_CAUSE_CHARS + 3);
        let e = Error::explain(ErrorType::ConnectError, "é".repeat(5000));
        assert!(cause(&e).ends_with("é..."));
    }
}
