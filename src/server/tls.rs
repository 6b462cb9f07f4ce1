//! TLS for POP3 (RFC 8314 implicit TLS, RFC 2595 STLS) with rustls.
//!
//! Owns: loading the certificate chain and key from PEM files, the
//! acceptor that new handshakes use (swapped whole on reload, so that
//! SIGHUP picks up a renewed certificate without dropping sessions), and
//! [`Stream`], the one connection type the driver serves whether or not it
//! is encrypted. Must not log key material.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Where rustls warns about what a client put in its ClientHello: an IP
/// address as the SNI host name (mpop and others send one), a malformed
/// or repeated one. The handshake goes on (or fails, and the session log
/// says so); an operator can do nothing about a client's choice, so these
/// are not warnings for the server's log.
const RUSTLS_CLIENT_HELLO_TARGET: &str = "rustls::msgs::handshake";

/// The log filter: `spec` (`MAILBAG_LOG`, in `tracing`'s `EnvFilter`
/// syntax) or `info`, with rustls's warnings about clients' SNI values
/// at `error`, unless `spec` names a rustls target itself. Every other
/// target, mailbag's own included, keeps its level.
pub fn log_filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    let spec = spec.map(str::trim).filter(|s| !s.is_empty());
    let filter = spec
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if spec.is_some_and(|s| s.contains("rustls")) {
        return filter;
    }
    match format!("{RUSTLS_CLIENT_HELLO_TARGET}=error").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {message}")]
    Pem {
        /// `tls.certificate` or `tls.key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (e.g. the key does not match).
    #[error("tls.certificate and tls.key: {0}")]
    Config(#[from] rustls::Error),
}

/// When the server certificate in use stops being valid (its notAfter),
/// for the metrics; updated when a reload takes a new certificate.
#[derive(Debug)]
pub struct Expiry {
    /// `tls.certificate`: the file the certificate came from.
    pub certificate: PathBuf,
    /// Seconds since the Unix epoch; `i64::MIN` when the certificate's
    /// validity could not be read.
    not_after: AtomicI64,
}

impl Expiry {
    /// The notAfter time in Unix seconds, when the certificate has one
    /// that could be read.
    pub fn not_after(&self) -> Option<i64> {
        Some(self.not_after.load(Ordering::Relaxed)).filter(|&t| t != i64::MIN)
    }
}

/// The current TLS settings: an acceptor that a reload replaces.
pub struct Tls {
    certificate: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
    expiry: Arc<Expiry>,
}

impl Tls {
    /// Loads the PEM certificate chain and private key.
    pub fn load(certificate: &Path, key: &Path) -> Result<Tls, TlsError> {
        let (config, not_after) = server_config(certificate, key)?;
        Ok(Tls {
            certificate: certificate.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(config),
            expiry: Arc::new(Expiry {
                certificate: certificate.to_owned(),
                not_after: AtomicI64::new(not_after.unwrap_or(i64::MIN)),
            }),
        })
    }

    /// Reads the files again; new handshakes use them, sessions already
    /// running keep theirs. On error the previous pair stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (config, not_after) = server_config(&self.certificate, &self.key)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
        self.expiry
            .not_after
            .store(not_after.unwrap_or(i64::MIN), Ordering::Relaxed);
        Ok(())
    }

    /// The expiry of the certificate in use, kept current across reloads.
    pub fn expiry(&self) -> Arc<Expiry> {
        self.expiry.clone()
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }
}

/// The notAfter of a DER certificate, in Unix seconds; `None` for one
/// that does not parse as X.509 (rustls decides whether it is usable).
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(certificate.validity().not_after.timestamp())
}

/// The rustls config for the pair, and the server certificate's notAfter.
fn server_config(
    certificate: &Path,
    key: &Path,
) -> Result<(Arc<ServerConfig>, Option<i64>), TlsError> {
    let pem_error = |what, path: &Path, message: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| pem_error("tls.certificate", certificate, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error("tls.certificate", certificate, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(
            "tls.certificate",
            certificate,
            "no CERTIFICATE block found".into(),
        ));
    }
    // The chain's first certificate is the server's own.
    let expires = not_after(&chain[0]);
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error("tls.key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok((Arc::new(config), expires))
}

/// A client connection, encrypted or not. The driver holds one value and
/// replaces it in place at STLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large, and idle plaintext
    /// sessions should not pay for it).
    Tls(Box<TlsStream<TcpStream>>),
    /// Between taking the TCP stream out for a handshake and putting the
    /// TLS stream back; any IO here fails.
    Upgrading,
    /// An in-memory stream, for driving a session in unit tests.
    #[cfg(test)]
    Memory(Box<dyn MemoryIo>),
}

/// What an in-memory test stream must be.
#[cfg(test)]
pub trait MemoryIo: AsyncRead + AsyncWrite + Unpin + Send {}
#[cfg(test)]
impl<T: AsyncRead + AsyncWrite + Unpin + Send> MemoryIo for T {}

impl Stream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Upgrades a plain stream with a server handshake. The stream is
    /// left as `Upgrading` (unusable) if the handshake fails.
    pub async fn start_tls(&mut self, acceptor: TlsAcceptor) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Upgrading) else {
            return Err(io::Error::other("STLS on a stream that is not plain TCP"));
        };
        let tls = acceptor.accept(tcp).await?;
        *self = Stream::Tls(Box::new(tls));
        Ok(())
    }
}

fn upgrading() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake did not finish")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
            #[cfg(test)]
            Stream::Memory(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
            #[cfg(test)]
            Stream::Memory(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Upgrading => Poll::Ready(Err(upgrading())),
            #[cfg(test)]
            Stream::Memory(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Upgrading => Poll::Ready(Ok(())),
            #[cfg(test)]
            Stream::Memory(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Writes a self-signed certificate for `names` (DNS names or IP
/// addresses) and its key as PEM files, e.g. for the demo.
pub fn write_self_signed(names: &[&str], certificate: &Path, key: &Path) -> io::Result<()> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    std::fs::write(certificate, certified.cert.pem())?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)?;
    f.write_all(certified.signing_key.serialize_pem().as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod log_tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(spec: Option<&str>) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(log_filter(spec))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI extension: ignoring IP address");
            tracing::warn!(target: "rustls::server::hs", "another rustls warning");
            tracing::warn!(target: "mailbag::server::pop3", "mailbag's own warning");
            tracing::info!(target: "mailbag::server", "an info line");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn only_rustls_client_hello_warnings_are_silenced() {
        for spec in [None, Some(""), Some("info"), Some("not a [valid filter")] {
            let log = logged(spec);
            assert!(!log.contains("Illegal SNI"), "{spec:?}: {log}");
            assert!(log.contains("another rustls warning"), "{spec:?}: {log}");
            assert!(log.contains("mailbag's own warning"), "{spec:?}: {log}");
            assert!(log.contains("an info line"), "{spec:?}: {log}");
        }
        // An operator who names rustls gets what they asked for.
        assert!(logged(Some("info,rustls=warn")).contains("Illegal SNI"));
        assert!(!logged(Some("warn")).contains("an info line"));
    }
}
