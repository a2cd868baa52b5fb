//! TLS for both listeners (`--tls-cert`, `--tls-key`), through rustls (ring).
//!
//! The certificate is served by a resolver that SIGHUP reloads: a renewed
//! certificate reaches new connections without a restart, and connections
//! already open keep the session they negotiated. A reload that fails (a
//! file half-written, a key that does not match) keeps the old certificate
//! and says why in the log.

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::sync;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The server's TLS setup, shared by both listeners.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Certificate>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert", &self.resolver.cert).finish_non_exhaustive()
    }
}

/// The certificate in use, replaced on reload.
#[derive(Debug)]
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&sync::read(&self.current)))
    }
}

impl Tls {
    /// Loads the certificate chain and key (PEM).
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let provider = provider();
        let resolver = Arc::new(Certificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(certified_key(cert, key, &provider)?)),
        });
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), resolver })
    }

    /// Reads the files again; on success new handshakes use them.
    pub fn reload(&self) -> anyhow::Result<()> {
        let loaded = certified_key(&self.resolver.cert, &self.resolver.key, &provider())?;
        *sync::write(&self.resolver.current) = Arc::new(loaded);
        Ok(())
    }

    /// The server side of a handshake, bounded in time.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(accepted) => accepted,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

/// Watches SIGHUP from now on (the handler is installed before this
/// returns, so a SIGHUP right after start cannot kill the process), and
/// reloads the certificate on each until `stop`; without TLS a SIGHUP is
/// only logged.
pub fn reload_on_hangup(
    tls: Option<Tls>,
    stop: tokio_util::sync::CancellationToken,
) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let hangups = signal(SignalKind::hangup());
    async move {
        let Ok(mut hangups) = hangups else {
            return tracing::warn!("tls: cannot watch SIGHUP; certificates will not be reloaded");
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => match tls.as_ref().map(Tls::reload) {
                    Some(Ok(())) => tracing::info!("tls: certificate reloaded"),
                    Some(Err(error)) => tracing::warn!("tls: reload failed, keeping the current certificate: {error:#}"),
                    None => tracing::info!("SIGHUP: nothing to reload (no --tls-cert)"),
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!("--tls-cert {}: cannot read a PEM certificate chain", cert.display())
        })?;
    if chain.is_empty() {
        anyhow::bail!("--tls-cert {}: no certificate in the file", cert.display());
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: cannot read a PEM private key", key.display()))?;
    CertifiedKey::from_der(chain, key_der, provider)
        .with_context(|| format!("--tls-key {}: unusable with the certificate", key.display()))
}
