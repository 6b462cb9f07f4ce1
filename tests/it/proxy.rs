//! The PROXY protocol from a trusted load balancer: v1 and v2 headers set
//! the client address that limits and logs use; headers from anyone else
//! are not honoured; malformed and lying headers end the connection.

use std::net::SocketAddr;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// The balancer is 127.0.0.2; one connection per client address is
/// allowed, so which address the server believes is visible.
const CONFIG: &str = "\n[pop3]\nlisten = [\"127.0.0.1:0\"]\nproxy_from = [\"127.0.0.2/32\"]\n[limits]\nmax_connections_per_address = 1\n";

async fn from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

async fn via_balancer(addr: SocketAddr, header: &[u8]) -> Client {
    let mut stream = from("127.0.0.2", addr).await;
    stream.write_all(header).await.unwrap();
    Client {
        stream: BufReader::new(stream),
    }
}

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 192.0.2.1 40000 110\r\n").into_bytes()
}

fn v2(client: [u8; 4]) -> Vec<u8> {
    let mut h = mailbag_proto::proxy::V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&[192, 0, 2, 1, 0x9c, 0x40, 0, 110]);
    h
}

#[tokio::test]
async fn v1_and_v2_headers_name_the_real_client() {
    let s = TestServer::start_with(CONFIG).await;
    // Two clients behind one balancer: each gets its own slot.
    let mut a = via_balancer(s.addr, &v1("198.51.100.7")).await;
    assert!(a.line().await.starts_with("+OK mailbag"));
    let mut b = via_balancer(s.addr, &v2([198, 51, 100, 8])).await;
    assert!(b.line().await.starts_with("+OK mailbag"));
    // The same client again is over its limit of one.
    let mut c = via_balancer(s.addr, &v1("198.51.100.7")).await;
    assert!(c
        .line()
        .await
        .starts_with("-ERR [SYS/TEMP] Too many connections from your address"));
    // A header and a pipelined command in one write: the command runs.
    let mut d = via_balancer(s.addr, &[v1("198.51.100.9"), b"CAPA\r\n".to_vec()].concat()).await;
    assert!(d.line().await.starts_with("+OK mailbag"));
    assert!(d.line().await.starts_with("+OK Capability list follows"));
    // The real client is not on loopback, so plaintext logins are refused.
    a.send(b"USER alice\r\n").await;
    assert!(a
        .line()
        .await
        .starts_with("-ERR [AUTH] Plaintext authentication is not allowed"));
    s.stop().await;
}

#[tokio::test]
async fn headers_from_untrusted_addresses_are_not_honoured() {
    let s = TestServer::start_with(CONFIG).await;
    let mut stream = from("127.0.0.3", s.addr).await;
    stream.write_all(&v1("198.51.100.7")).await.unwrap();
    let mut c = Client {
        stream: BufReader::new(stream),
    };
    assert!(c.line().await.starts_with("+OK mailbag"));
    // The header was read as a (bad) command, not as an address.
    assert!(c.line().await.starts_with("-ERR Unknown command \"PROXY\""));
    // The client is on loopback as far as the server knows.
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    s.stop().await;
}

#[tokio::test]
async fn malformed_or_lying_headers_end_the_connection() {
    let s = TestServer::start_with(CONFIG).await;
    let mut lying = mailbag_proto::proxy::V2_SIGNATURE.to_vec();
    lying.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let mut short = mailbag_proto::proxy::V2_SIGNATURE.to_vec();
    short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
    for header in [
        b"PROXY TCP4 999.0.0.1 192.0.2.1 1 2\r\n".to_vec(),
        b"PROXY TCP4 198.51.100.7 192.0.2.1 99999 2\r\n".to_vec(),
        b"USER alice\r\n".to_vec(),
        [b"PROXY TCP4 ".as_slice(), &[b'9'; 300]].concat(),
        lying,
        short,
    ] {
        let mut c = via_balancer(s.addr, &header).await;
        // Closed without a greeting (a reset, when unread bytes remain).
        let mut got = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            c.stream.read_to_end(&mut got),
        )
        .await
        .expect("the connection was not closed");
        assert!(
            got.is_empty(),
            "{:?}: {:?}",
            String::from_utf8_lossy(&header),
            String::from_utf8_lossy(&got)
        );
    }
    // The balancer's next good connection works.
    let mut ok = via_balancer(s.addr, &v1("198.51.100.7")).await;
    assert!(ok.line().await.starts_with("+OK mailbag"));
    s.stop().await;
}

#[tokio::test]
async fn implicit_tls_behind_the_balancer() {
    let s = TestServer::start_tls(
        "\n[pop3]\nlisten = [\"127.0.0.1:0\"]\nproxy_from = [\"127.0.0.2/32\"]\n",
    )
    .await;
    // The header comes first, then the TLS handshake.
    let mut tcp = from("127.0.0.2", s.tls_addr.unwrap()).await;
    tcp.write_all(&v2([198, 51, 100, 20])).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = crate::tls::connector(s.dir.path())
        .connect(name, tcp)
        .await
        .unwrap();
    let mut c = crate::tls::Lines::new(tls);
    assert!(c.line().await.starts_with("+OK mailbag"));
    // Over TLS, plaintext logins are fine from anywhere.
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert!(c.cmd("PASS wonderland").await.starts_with("+OK Logged in"));
    s.stop().await;
}
