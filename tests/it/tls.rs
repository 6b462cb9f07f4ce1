//! TLS over real sockets: implicit TLS (RFC 8314), STLS (RFC 2595) and
//! its command-injection rule, the plaintext policy, certificate reload,
//! and real clients (openssl s_client, curl).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A line-oriented POP3 client over any stream.
pub struct Lines<S> {
    pub stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Lines<S> {
    pub fn new(stream: S) -> Self {
        Lines {
            stream: BufReader::new(stream),
        }
    }

    pub async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        tokio::time::timeout(TIMEOUT, self.stream.read_until(b'\n', &mut buf))
            .await
            .expect("server did not answer in time")
            .unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
        self.stream.get_mut().flush().await.unwrap();
    }

    pub async fn cmd(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n").as_bytes()).await;
        self.line().await
    }

    /// The lines of a multi-line response up to its terminator.
    pub async fn body(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            assert!(!line.is_empty(), "closed inside a multi-line response");
            if line == ".\r\n" {
                return lines;
            }
            lines.push(line.trim_end().to_string());
        }
    }
}

/// A client that trusts only the test server's certificate.
pub fn connector(dir: &Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.join("tls/cert.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn handshake(dir: &Path, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(TIMEOUT, connector(dir).connect(name, tcp))
        .await
        .expect("handshake timed out")
}

pub async fn implicit(s: &TestServer) -> Lines<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(s.tls_addr.unwrap()).await.unwrap();
    let mut c = Lines::new(handshake(s.dir.path(), tcp).await.unwrap());
    assert!(c.line().await.starts_with("+OK"));
    c
}

/// Connects to the plain listener and upgrades with STLS.
pub async fn stls(s: &TestServer) -> Lines<TlsStream<TcpStream>> {
    let mut c = Lines::new(TcpStream::connect(s.addr).await.unwrap());
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(c.cmd("STLS").await, "+OK Begin TLS negotiation\r\n");
    assert!(c.stream.buffer().is_empty());
    let tcp = c.stream.into_inner();
    Lines::new(handshake(s.dir.path(), tcp).await.unwrap())
}

#[tokio::test]
async fn implicit_tls_serves_pop3_and_offers_no_stls() {
    let s = TestServer::start_tls("trusted_networks = []").await;
    let mut c = implicit(&s).await;
    assert!(c.cmd("CAPA").await.starts_with("+OK"));
    let capa = c.body().await;
    assert!(!capa.iter().any(|l| l == "STLS"), "{capa:?}");
    assert!(capa.iter().any(|l| l == "USER"), "{capa:?}");
    assert!(
        capa.contains(&"SASL SCRAM-SHA-256 CRAM-MD5 PLAIN LOGIN".to_string()),
        "{capa:?}"
    );
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert!(c.cmd("PASS wonderland").await.starts_with("+OK Logged in"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
}

#[tokio::test]
async fn stls_upgrades_and_then_allows_plaintext_logins() {
    let s = TestServer::start_tls("trusted_networks = []").await;
    let mut c = Lines::new(TcpStream::connect(s.addr).await.unwrap());
    c.line().await;
    assert!(c.cmd("CAPA").await.starts_with("+OK"));
    let capa = c.body().await;
    assert!(capa.iter().any(|l| l == "STLS"), "{capa:?}");
    drop(c);
    let mut c = stls(&s).await;
    assert!(c.cmd("CAPA").await.starts_with("+OK"));
    let capa = c.body().await;
    assert!(!capa.iter().any(|l| l == "STLS"), "{capa:?}");
    assert_eq!(
        c.cmd("STLS").await,
        "-ERR This connection already uses TLS\r\n"
    );
    assert!(c.cmd("USER bob").await.starts_with("+OK"));
    assert!(c.cmd("PASS builder").await.starts_with("+OK Logged in"));
    assert!(c
        .cmd("STLS")
        .await
        .starts_with("-ERR STLS is not valid after login"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
}

#[tokio::test]
async fn commands_pipelined_behind_stls_are_discarded() {
    let s = TestServer::start_tls("").await;
    let mut c = Lines::new(TcpStream::connect(s.addr).await.unwrap());
    c.line().await;
    c.send(b"STLS\r\nCAPA\r\n").await;
    assert_eq!(c.line().await, "+OK Begin TLS negotiation\r\n");
    // Had CAPA been answered in the clear, its bytes would break the
    // handshake; had it been kept, its answer would come first over TLS.
    let mut c = Lines::new(
        handshake(s.dir.path(), c.stream.into_inner())
            .await
            .unwrap(),
    );
    let first = c.cmd("NOOP").await;
    assert!(
        first.starts_with("-ERR NOOP is only valid after login"),
        "{first}"
    );
}

#[tokio::test]
async fn plaintext_logins_are_refused_outside_trusted_networks() {
    let s = TestServer::start_tls("trusted_networks = []").await;
    let mut c = Lines::new(TcpStream::connect(s.addr).await.unwrap());
    c.line().await;
    assert!(c.cmd("CAPA").await.starts_with("+OK"));
    let capa = c.body().await;
    assert!(!capa.iter().any(|l| l == "USER"), "{capa:?}");
    assert!(
        capa.contains(&"SASL SCRAM-SHA-256 CRAM-MD5".to_string()),
        "{capa:?}"
    );
    let refused = "-ERR [AUTH] Plaintext authentication is not allowed on an unencrypted connection; use STLS first\r\n";
    assert_eq!(c.cmd("USER alice").await, refused);
    assert_eq!(c.cmd("PASS wonderland").await, refused);
    assert_eq!(c.cmd("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=").await, refused);
    assert_eq!(c.cmd("AUTH LOGIN").await, refused);
}

#[tokio::test]
async fn allow_plaintext_overrides_an_empty_trusted_list() {
    let s = TestServer::start_with("trusted_networks = []\nallow_plaintext = true").await;
    let mut c = s.connect().await;
    c.line().await;
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
}

#[tokio::test]
async fn without_a_certificate_stls_is_neither_offered_nor_accepted() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.line().await;
    let (_, capa) = c.multi("CAPA").await;
    assert!(!String::from_utf8_lossy(&capa).contains("STLS"));
    assert_eq!(
        c.cmd("STLS").await,
        "-ERR TLS is not available on this server\r\n"
    );
}

#[tokio::test]
async fn failed_handshake_ends_only_that_session() {
    let s = TestServer::start_tls("").await;
    let mut c = Lines::new(TcpStream::connect(s.addr).await.unwrap());
    c.line().await;
    assert!(c.cmd("STLS").await.starts_with("+OK"));
    c.send(b"this is not a ClientHello\r\n").await;
    let mut rest = String::new();
    let _ = tokio::time::timeout(
        TIMEOUT,
        tokio::io::AsyncReadExt::read_to_string(&mut c.stream, &mut rest),
    )
    .await;
    let mut ok = implicit(&s).await;
    assert!(ok.cmd("NOOP").await.starts_with("-ERR"));
}

#[tokio::test]
async fn reload_keeps_the_old_certificate_when_the_new_key_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    let (cert, key) = (
        dir.path().join("tls/cert.pem"),
        dir.path().join("tls/key.pem"),
    );
    mailbag::server::tls::write_self_signed(&["localhost"], &cert, &key).unwrap();
    let tls = mailbag::server::tls::Tls::load(&cert, &key).unwrap();
    let first = std::fs::read(&cert).unwrap();
    std::fs::remove_file(&key).unwrap();
    mailbag::server::tls::write_self_signed(&["localhost"], &cert, &key).unwrap();
    assert_ne!(first, std::fs::read(&cert).unwrap());
    tls.reload().unwrap();
    std::fs::write(&key, "not a key").unwrap();
    assert!(tls.reload().is_err(), "a broken key must keep the old one");
}

async fn run(cmd: &mut tokio::process::Command, stdin: &[u8]) -> (bool, String) {
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("the client program is installed");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("client finished")
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn url(scheme: &str, addr: SocketAddr, path: &str) -> String {
    format!("{scheme}://127.0.0.1:{}/{path}", addr.port())
}

#[tokio::test]
async fn openssl_s_client_starttls_pop3_logs_in() {
    let s = TestServer::start_tls("trusted_networks = []").await;
    s.deliver("alice", b"Subject: hello\n\nover TLS\n");
    let (_, out) = run(
        tokio::process::Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-crlf",
                "-starttls",
                "pop3",
                "-connect",
            ])
            .arg(s.addr.to_string()),
        b"USER alice\nPASS wonderland\nRETR 1\nQUIT\n",
    )
    .await;
    assert!(
        out.contains("+OK Logged in. Maildrop has 1 message"),
        "{out}"
    );
    assert!(out.contains("over TLS"), "{out}");
}

#[tokio::test]
async fn curl_over_pop3s_and_stls() {
    let s = TestServer::start_tls("trusted_networks = []").await;
    s.deliver("alice", b"Subject: hello\n\nvia curl\n");
    let (ok, out) = run(
        tokio::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--insecure",
                "--user",
                "alice:wonderland",
            ])
            .arg(url("pop3s", s.tls_addr.unwrap(), "1")),
        b"",
    )
    .await;
    assert!(ok && out.contains("via curl"), "{out}");
    let (ok, out) = run(
        tokio::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--insecure",
                "--ssl-reqd",
                "--user",
                "alice:wonderland",
            ])
            .arg(url("pop3", s.addr, "1")),
        b"",
    )
    .await;
    assert!(ok && out.contains("via curl"), "{out}");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_sessions() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    let (cert, key) = (
        dir.path().join("tls/cert.pem"),
        dir.path().join("tls/key.pem"),
    );
    mailbag::server::tls::write_self_signed(&["localhost"], &cert, &key).unwrap();
    let (plain, implicit_port) = (free_port(), free_port());
    let text = config_text(dir.path(), "").replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:{plain}\"]\nlisten_tls = [\"127.0.0.1:{implicit_port}\"]"),
    ) + "\n[tls]\ncertificate = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n";
    std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailbag"));
    if let Some((uid, gid)) = unprivileged(dir.path()) {
        server.uid(uid).gid(gid);
    }
    let mut server = server
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("mailbag.toml"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{implicit_port}").parse().unwrap();
    let name = || ServerName::try_from("localhost").unwrap();
    let old = connector(dir.path());
    let mut tcp = None;
    for _ in 0..200 {
        if let Ok(t) = TcpStream::connect(addr).await {
            tcp = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut session = Lines::new(old.connect(name(), tcp.unwrap()).await.unwrap());
    session.line().await;
    assert!(session.cmd("USER alice").await.starts_with("+OK"));
    assert!(session
        .cmd("PASS wonderland")
        .await
        .starts_with("+OK Logged in"));

    std::fs::remove_file(&key).unwrap();
    mailbag::server::tls::write_self_signed(&["localhost"], &cert, &key).unwrap();
    unprivileged(dir.path());
    let new = connector(dir.path());
    let pid = server.id().unwrap();
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -HUP {pid}"))
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let mut reloaded = false;
    for _ in 0..100 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        if new.connect(name(), tcp).await.is_ok() {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "new handshakes never got the new certificate");
    let tcp = TcpStream::connect(addr).await.unwrap();
    assert!(old.connect(name(), tcp).await.is_err());
    // The session that started before the reload goes on.
    assert!(session.cmd("STAT").await.starts_with("+OK 0 0"));
    assert!(session.cmd("QUIT").await.starts_with("+OK"));
    server.kill().await.unwrap();
}
