//! A client that means harm, over real sockets: connections that hold a
//! place without logging in, floods that try to push real users out.

use std::net::SocketAddr;

use tokio::io::BufReader;
use tokio::net::TcpSocket;

use crate::support::{Client, TestServer, ALICE};

/// A client connected from `source` (any 127.0.0.0/8 address).
async fn connect_from(source: &str, addr: SocketAddr) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    Client {
        stream: BufReader::new(stream),
    }
}

#[tokio::test]
async fn a_connection_stalled_after_stls_loses_its_place_to_a_newcomer() {
    // The handshake may take 30 s and the login 120 s; the only place
    // waiting to log in is the one the stalled connection holds.
    let s = TestServer::start_tls("\n[limits]\nmax_unauthenticated = 1\n").await;
    let mut stalled = connect_from("127.0.3.1", s.addr).await;
    stalled.line().await;
    stalled.ok("STLS").await;
    // No ClientHello follows. A newcomer takes the place: the stalled
    // connection is closed now, not when its handshake times out.
    let mut newcomer = connect_from("127.0.3.2", s.addr).await;
    assert!(newcomer.line().await.starts_with("+OK"));
    assert!(
        stalled.closed().await,
        "the stalled handshake kept its place"
    );
    newcomer.ok(&format!("USER {}", ALICE.0)).await;
    newcomer.ok(&format!("PASS {}", ALICE.1)).await;
    newcomer.ok("QUIT").await;
    s.stop().await;
}
