//! TLS termination with rustls (ring provider): loading the PEM certificate
//! and key with clear errors, swapping them on SIGHUP without touching open
//! connections, and the client stream that is either plain TCP or TLS.
//!
//! Off unless both `server.tls_cert` and `server.tls_key` are set. Session
//! tickets resume returning clients with keys kept across restarts
//! ([`super::tickets`]). The
//! certificate's expiry is read at each load, for `/health` and the fleet
//! report.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use anyhow::{bail, Context as _};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::peer_limit::CountedStream;
use super::tickets::TicketKeys;
use crate::config::ServerConfig as ServerSection;

/// Reads the certificate chain and key and checks that they belong
/// together; also returns when the (leaf) certificate expires, in Unix
/// seconds.
fn load(
    cert_path: &Path,
    key_path: &Path,
    tickets: &Arc<TicketKeys>,
) -> anyhow::Result<(TlsAcceptor, i64)> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("cannot read the TLS certificate {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert_path.display()))?;
    let Some(leaf) = certs.first() else {
        bail!("{} holds no certificate", cert_path.display());
    };
    let not_after = match x509_parser::parse_x509_certificate(leaf) {
        Ok((_, certificate)) => certificate.validity().not_after.timestamp(),
        Err(err) => bail!("{} is not an X.509 certificate: {err}", cert_path.display()),
    };
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("cannot read a PEM private key from {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the TLS key {} does not fit the certificate {}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The same keys for every certificate loaded: a reload (same server,
    // new certificate) keeps returning screens resuming.
    config.ticketer = tickets.clone();
    Ok((TlsAcceptor::from(Arc::new(config)), not_after))
}

/// How many days a certificate expiring at `not_after` (Unix seconds) has
/// left at `now_ms`; negative once it expired.
fn days_left(not_after: i64, now_ms: u64) -> f64 {
    (not_after as f64 - now_ms as f64 / 1000.0) / 86_400.0
}

/// When the certificate in use expires: `/health` and the fleet report
/// read it, and a reload (SIGHUP) updates it.
#[derive(Debug, Clone)]
pub struct CertificateExpiry(Arc<AtomicI64>);

impl CertificateExpiry {
    fn new(not_after: i64) -> Self {
        Self(Arc::new(AtomicI64::new(not_after)))
    }

    fn set(&self, not_after: i64) {
        self.0.store(not_after, Ordering::Relaxed);
    }

    /// When it expires, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Days left at `now_ms` (fractional; negative once expired).
    pub fn days_left(&self, now_ms: u64) -> f64 {
        days_left(self.not_after(), now_ms)
    }

    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.days_left(now_ms) < 0.0
    }

    /// `{"certExpiresAt", "certExpiryDays"}`, as `/health` and the fleet
    /// report show it.
    pub fn describe(&self, now_ms: u64) -> serde_json::Value {
        let expires_ms = u64::try_from(self.not_after())
            .unwrap_or(0)
            .saturating_mul(1000);
        serde_json::json!({
            "certExpiresAt": crate::clock::rfc3339_ms(expires_ms),
            "certExpiryDays": (self.days_left(now_ms) * 10.0).round() / 10.0,
        })
    }
}

/// Certificates expiring within this many days are warned about at load.
const EXPIRY_WARNING_DAYS: f64 = 14.0;

fn warn_when_expiring(cert_path: &Path, not_after: i64) {
    let days = days_left(not_after, crate::clock::unix_ms());
    if days < 0.0 {
        tracing::error!(certificate = %cert_path.display(), days_ago = format!("{:.1}", -days), "the TLS certificate has EXPIRED: browsers refuse to connect; replace it and send SIGHUP");
    } else if days < EXPIRY_WARNING_DAYS {
        tracing::warn!(certificate = %cert_path.display(), days_left = format!("{days:.1}"), "the TLS certificate expires soon; replace it and send SIGHUP");
    }
}

/// The current certificate, replaceable while the gateway runs.
pub struct Tls {
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    /// Read per accepted connection, written on reload; held only to clone.
    acceptor: RwLock<TlsAcceptor>,
    expiry: CertificateExpiry,
    tickets: Arc<TicketKeys>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// TLS as configured: `None` when off, an error when half-configured or unusable.
    pub fn from_config(server: &ServerSection) -> anyhow::Result<Option<Self>> {
        match (
            server.tls_cert.as_os_str().is_empty(),
            server.tls_key.as_os_str().is_empty(),
        ) {
            (true, true) => Ok(None),
            (false, false) => {
                let tickets = Arc::new(TicketKeys::open(&server.state_dir));
                let (acceptor, not_after) = load(&server.tls_cert, &server.tls_key, &tickets)?;
                warn_when_expiring(&server.tls_cert, not_after);
                Ok(Some(Self {
                    acceptor: RwLock::new(acceptor),
                    expiry: CertificateExpiry::new(not_after),
                    tickets,
                    cert_path: server.tls_cert.clone(),
                    key_path: server.tls_key.clone(),
                }))
            }
            _ => bail!("set both server.tls_cert and server.tls_key, or neither"),
        }
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// When the certificate in use expires.
    pub fn expiry(&self) -> CertificateExpiry {
        self.expiry.clone()
    }

    /// Re-reads the files; on error the current certificate stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let (acceptor, not_after) = load(&self.cert_path, &self.key_path, &self.tickets)?;
        warn_when_expiring(&self.cert_path, not_after);
        *self
            .acceptor
            .write()
            .unwrap_or_else(PoisonError::into_inner) = acceptor;
        self.expiry.set(not_after);
        Ok(())
    }
}

/// A client connection: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum ClientStream {
    Plain(CountedStream),
    Tls(Box<TlsStream<CountedStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
