//! A deliberately small HTTPS/1.1 client for the one request bearer-token
//! checks make: RFC 7662 token introspection (a POST with client
//! credentials). Hand-written rather than hyper or reqwest: one request
//! per connection (`Connection: close`), a response read whole into a
//! bounded buffer, Content-Length or chunked bodies, and nothing else
//! (no redirects, proxies, cookies, compression or connection reuse),
//! over the tokio-rustls and ring already in the build.
//!
//! Must not: follow anything the server says to elsewhere, read past
//! [`MAX_RESPONSE_OCTETS`], outlive the caller's deadline (connect, TLS,
//! write and read together), speak anything but HTTPS, or put a token or
//! secret into an error.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// Largest response (head and body) read.
pub const MAX_RESPONSE_OCTETS: usize = 64 * 1024;
/// Where the system's CA bundle usually is (Debian, then Red Hat).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// An `https://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    host: String,
    port: u16,
    path: String,
}

impl HttpsUrl {
    /// Parses an HTTPS URL without user info, query-less or not; `None`
    /// for anything else.
    pub fn parse(url: &str) -> Option<HttpsUrl> {
        let rest = url.strip_prefix("https://")?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.contains('@') || path.contains(['#', ' ', '\r', '\n']) {
            return None;
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host, port.parse().ok()?)
            }
            _ => (authority, 443),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
        {
            return None;
        }
        Some(HttpsUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// A TLS client configuration trusting `ca_file`, or the system bundle.
pub fn connector(ca_file: Option<&Path>) -> Result<TlsConnector, String> {
    let path = match ca_file {
        Some(path) => path.to_path_buf(),
        None => SYSTEM_BUNDLES
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .ok_or("no CA file given and no system CA bundle found")?,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// POSTs `body` (a form) to `url` with HTTP Basic `credentials`, all
/// before `deadline`; the status and body of a response of at most
/// [`MAX_RESPONSE_OCTETS`].
pub async fn post_form(
    tls: &TlsConnector,
    url: &HttpsUrl,
    credentials: &str,
    body: &str,
    deadline: Instant,
) -> Result<(u16, Vec<u8>), String> {
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {{host}}\r\nAuthorization: Basic {credentials}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.path,
        body.len()
    );
    exchange(tls, url, head, deadline).await
}

/// GETs `url` before `deadline` (a JWKS document).
pub async fn get(
    tls: &TlsConnector,
    url: &HttpsUrl,
    deadline: Instant,
) -> Result<(u16, Vec<u8>), String> {
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {{host}}\r\nAccept: application/json\r\n\
         Connection: close\r\n\r\n",
        url.path
    );
    exchange(tls, url, head, deadline).await
}

/// Sends `request` (with `{host}` standing for the Host header's value)
/// and reads the whole response, before `deadline`.
async fn exchange(
    tls: &TlsConnector,
    url: &HttpsUrl,
    request: String,
    deadline: Instant,
) -> Result<(u16, Vec<u8>), String> {
    let exchange = async {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(url.host.clone()).map_err(|e| e.to_string())?;
        let mut stream = tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let host = if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        };
        let request = request.replacen("{host}", &host, 1);
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        stream.flush().await.map_err(|e| format!("write: {e}"))?;
        let mut response = Vec::new();
        let mut limited = (&mut stream).take(MAX_RESPONSE_OCTETS as u64 + 1);
        // A server that closes without TLS close_notify still sent what
        // it sent; the body's framing decides whether it is whole.
        let _ = limited.read_to_end(&mut response).await;
        if response.len() > MAX_RESPONSE_OCTETS {
            return Err(format!("response larger than {MAX_RESPONSE_OCTETS} octets"));
        }
        parse_response(&response)
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| "no answer in time".to_string())?
}

/// The status and body of a whole HTTP/1.1 response.
pub fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete response head")?;
    let head = std::str::from_utf8(&response[..end]).map_err(|_| "response head not UTF-8")?;
    let body = &response[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err("malformed status line".into());
    };
    if !version.starts_with("HTTP/1.") {
        return Err("not an HTTP/1 response".into());
    }
    let status: u16 = code.parse().map_err(|_| "malformed status code")?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "malformed length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
            if !chunked {
                return Err("unsupported transfer encoding".into());
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        body.get(..length)
            .ok_or("response body cut short")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunked body cut short")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or("chunked body cut short")?;
        out.extend_from_slice(chunk);
        data = data
            .get(size..)
            .and_then(|rest| rest.strip_prefix(b"\r\n"))
            .ok_or("chunked body cut short")?;
    }
}

/// `application/x-www-form-urlencoded` escaping of one value.
pub fn form_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_https_only() {
        assert_eq!(
            HttpsUrl::parse("https://idp.example/oauth2/introspect"),
            Some(HttpsUrl {
                host: "idp.example".into(),
                port: 443,
                path: "/oauth2/introspect".into()
            })
        );
        assert_eq!(
            HttpsUrl::parse("https://127.0.0.1:8443").map(|u| (u.port, u.path)),
            Some((8443, "/".into()))
        );
        assert_eq!(
            HttpsUrl::parse("https://[::1]:8443/x").map(|u| u.host),
            Some("::1".into())
        );
        for bad in [
            "http://idp.example/",
            "https://user:pw@idp.example/",
            "https://idp.example:99999/",
            "https:///x",
            "https://idp example/",
            "https://idp.example/a b",
        ] {
            assert_eq!(HttpsUrl::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn responses_are_framed_by_length_or_chunks() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing";
        assert_eq!(parse_response(r).unwrap(), (200, b"{}".to_vec()));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (200, b"{\"a\":1}".to_vec()));
        let r = b"HTTP/1.0 401 Unauthorized\r\n\r\nno";
        assert_eq!(parse_response(r).unwrap(), (401, b"no".to_vec()));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"SMTP 220\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn form_values_are_escaped() {
        assert_eq!(form_escape("a.b-c_d~e"), "a.b-c_d~e");
        assert_eq!(form_escape("a+b/c=&d"), "a%2Bb%2Fc%3D%26d");
    }
}
