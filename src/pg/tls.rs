//! TLS to PostgreSQL, with rustls: used when the connection string says
//! `sslmode=require`.
//!
//! mailbag then verifies the server's certificate (chain and host name)
//! against `store.ca_file`, or the system's CA bundle when that is not
//! set; a certificate that does not verify fails the connection. Without
//! `sslmode=require` (libpq's default is `prefer`) connections are made
//! without TLS, as before: "prefer" cannot verify anything, and a server
//! with a self-signed certificate (Debian's default) must keep working.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

/// Where the system's CA bundle usually is (Debian, then Red Hat).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// Why TLS to the database cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    /// The CA file could not be read or holds no certificate.
    #[error("{path}: {message}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// No `ca_file` and no system bundle found.
    #[error("sslmode=require needs store.ca_file (no system CA bundle found)")]
    NoRoots,
}

/// Makes a TLS connector for each connection attempt.
#[derive(Clone)]
pub struct RustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for RustlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RustlsConnect")
    }
}

impl RustlsConnect {
    /// Trusts the certificates in `ca_file`, or in the system's bundle.
    pub fn new(ca_file: Option<&Path>) -> Result<RustlsConnect, PgTlsError> {
        let path = match ca_file {
            Some(path) => path.to_path_buf(),
            None => SYSTEM_BUNDLES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .ok_or(PgTlsError::NoRoots)?,
        };
        let ca = |message: String| PgTlsError::Ca {
            path: path.clone(),
            message,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&path).map_err(|e| ca(e.to_string()))? {
            roots
                .add(cert.map_err(|e| ca(e.to_string()))?)
                .map_err(|e| ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ca("no certificate in the file".into()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(RustlsConnect {
            config: Arc::new(config),
        })
    }
}

impl MakeTlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnectOne;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnectOne> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnectOne {
            config: Arc::clone(&self.config),
            name,
        })
    }
}

/// The connector for one host.
pub struct RustlsConnectOne {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnectOne {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            Ok(RustlsStream(connector.connect(self.name, stream).await?))
        })
    }
}

/// A TLS connection to the database.
pub struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding would need the certificate's signature
        // hash; password authentication works without it.
        ChannelBinding::none()
    }
}
