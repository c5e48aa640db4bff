//! TLS at the client listeners: the certificate files loaded for rustls, and loaded again when they
//! change, without a restart and without touching connections already open.
//!
//! Pingora's rustls listener (`TlsSettings::build`) reads its certificate paths once, into a fixed
//! `ServerConfig`, and panics on a bad file; it also takes a rustls `ResolvesServerCert` instead.
//! [`CertificateReloader`] is that resolver: every handshake takes the current certificate from an
//! `ArcSwap` (no lock, no file access), and a background service reads the files every
//! [`CHECK_INTERVAL`] and swaps in a new pair when their bytes changed and parse into a matching
//! certificate and key. A half-written or mismatched pair is logged and the old one kept, so a
//! rotation can write the two files in either order. Connections already open keep the session
//! they negotiated.

use crate::config::TlsFiles;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the certificate files are checked for a change.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Why a certificate pair cannot be used, and which of the two files is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    Cert(String),
    Key(String),
    /// Both files are readable but do not belong together.
    Pair(String),
}

impl CertError {
    /// The config key at fault, below the listener's `tls`.
    pub fn field(&self) -> &'static str {
        match self {
            CertError::Cert(_) => ".cert",
            CertError::Key(_) => ".key",
            CertError::Pair(_) => "",
        }
    }
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Cert(m) | CertError::Key(m) | CertError::Pair(m) => f.write_str(m),
        }
    }
}

/// Reads and checks a certificate pair from its files.
pub fn load_certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, CertError> {
    let (cert, key) = read_files(files)?;
    parse_certified_key(&cert, &key)
}

/// The largest certificate or key file read: a chain is a few KiB, and a path to something else
/// (`/dev/zero`, a log) must not take the memory.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

fn read_files(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let read = |path: &std::path::Path| {
        use std::io::Read;
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if bytes.len() as u64 > MAX_PEM_BYTES {
            return Err(format!("{} is larger than 1 MiB", path.display()));
        }
        Ok(bytes)
    };
    let cert = read(&files.cert).map_err(CertError::Cert)?;
    let key = read(&files.key).map_err(CertError::Key)?;
    Ok((cert, key))
}

/// A certificate chain (PEM, leaf first) and its private key (PEM) as rustls serves them.
pub fn parse_certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Cert(format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(CertError::Cert("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| CertError::Key(format!("holds no PEM private key: {e}")))?;
    pingora_core::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| CertError::Pair("no TLS crypto provider is installed".into()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        pingora_core::tls::RusTlsError::InconsistentKeys(_) => {
            CertError::Pair("the private key does not belong to the certificate".into())
        }
        e => CertError::Key(format!("not a usable private key: {e}")),
    })?;
    Ok(Arc::new(certified))
}

/// The certificate a TLS listener serves, swapped for a new one when its files change.
pub struct CertificateReloader {
    files: TlsFiles,
    current: ArcSwap<CertifiedKey>,
    /// The files' bytes as last read, so an unchanged pair is not parsed again.
    last_read: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for CertificateReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateReloader")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl CertificateReloader {
    /// Loads the pair now; the config's validation has already checked it.
    pub fn load(files: &TlsFiles) -> Result<Self, CertError> {
        let (cert, key) = read_files(files)?;
        let certified = parse_certified_key(&cert, &key)?;
        Ok(CertificateReloader {
            files: files.clone(),
            current: ArcSwap::new(certified),
            last_read: Mutex::new((cert, key)),
        })
    }

    /// Pingora's listener settings serving this certificate, HTTP/2 and HTTP/1.1 offered by ALPN.
    pub fn listener_settings(self: &Arc<Self>) -> pingora_core::Result<TlsSettings> {
        // The paths are only reported by Pingora: with a resolver set, it never reads them.
        let mut settings = TlsSettings::intermediate(
            &self.files.cert.to_string_lossy(),
            &self.files.key.to_string_lossy(),
        )?;
        settings.set_cert_resolver(self.clone());
        settings.enable_h2();
        Ok(settings)
    }

    /// Reads the files and swaps in the pair they hold if it changed and is usable. Returns
    /// whether a new certificate is now served.
    pub fn reload(&self) -> bool {
        let (cert, key) = match read_files(&self.files) {
            Ok(bytes) => bytes,
            Err(e) => {
                log::warn!("TLS certificate not reloaded, the old one stays: {e}");
                return false;
            }
        };
        let Ok(mut last) = self.last_read.lock() else {
            return false;
        };
        if last.0 == cert && last.1 == key {
            return false;
        }
        match parse_certified_key(&cert, &key) {
            Ok(certified) => {
                self.current.store(certified);
                log::info!(
                    "TLS certificate {} reloaded",
                    self.files.cert.to_string_lossy()
                );
                *last = (cert, key);
                true
            }
            Err(e) => {
                // Likely a rotation halfway through (one file written, not yet the other):
                // the next check sees the pair again.
                log::warn!(
                    "TLS certificate {} not reloaded, the old one stays: {e}",
                    self.files.cert.to_string_lossy()
                );
                false
            }
        }
    }
}

impl ResolvesServerCert for CertificateReloader {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[async_trait]
impl BackgroundService for CertificateReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticks = tokio::time::interval(CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            // Two small files: read on this background runtime, never a request's.
            self.reload();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn a_pair_parses_and_errors_name_the_file_at_fault() {
        let (cert, key) = pair("a.test");
        let (_, other_key) = pair("b.test");
        assert!(parse_certified_key(cert.as_bytes(), key.as_bytes()).is_ok());
        for (c, k, field) in [
            ("", key.as_str(), ".cert"),
            ("not pem", key.as_str(), ".cert"),
            (key.as_str(), key.as_str(), ".cert"),
            (cert.as_str(), "", ".key"),
            (cert.as_str(), cert.as_str(), ".key"),
            (cert.as_str(), other_key.as_str(), ""),
        ] {
            let e = parse_certified_key(c.as_bytes(), k.as_bytes()).unwrap_err();
            assert_eq!(e.field(), field, "{e}");
        }
    }

    #[test]
    fn reload_swaps_only_a_changed_usable_pair() {
        let dir = std::env::temp_dir().join(format!("dragoman-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        let (cert, key) = pair("a.test");
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let reloader = CertificateReloader::load(&files).unwrap();
        let first = reloader.current.load_full();
        assert!(!reloader.reload(), "unchanged files");

        // Halfway through a rotation: a new certificate, the old key.
        let (cert2, key2) = pair("b.test");
        std::fs::write(&files.cert, &cert2).unwrap();
        assert!(!reloader.reload());
        assert_eq!(reloader.current.load().cert, first.cert);
        std::fs::write(&files.key, &key2).unwrap();
        assert!(reloader.reload());
        assert_ne!(reloader.current.load().cert, first.cert);

        std::fs::remove_file(&files.key).unwrap();
        assert!(!reloader.reload(), "a missing file keeps the old pair");
        let endless = TlsFiles {
            cert: "/dev/zero".into(),
            key: files.key.clone(),
        };
        assert_eq!(load_certified_key(&endless).unwrap_err().field(), ".cert");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
