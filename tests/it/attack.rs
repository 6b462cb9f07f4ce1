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

#[tokio::test]
async fn idle_connections_holding_every_permit_give_way_to_a_user() {
    // Fewer connections in all than may wait to log in (1,000 by
    // default), as an operator lowering max_connections gets.
    let s = TestServer::start_with("\n[limits]\nmax_connections = 4\n").await;
    s.deliver(ALICE.0, b"Subject: hi\n\nhello\n");
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut c = connect_from("127.0.4.1", s.addr).await;
        assert!(c.line().await.starts_with("+OK"));
        idle.push(c);
    }
    let mut user = connect_from("127.0.4.2", s.addr).await;
    assert!(user.line().await.starts_with("+OK"), "the user was refused");
    user.ok(&format!("USER {}", ALICE.0)).await;
    user.ok(&format!("PASS {}", ALICE.1)).await;
    let (_, body) = user.multi("RETR 1").await;
    assert_eq!(body, b"Subject: hi\r\n\r\nhello\r\n");
    // The oldest idle connection made room.
    assert!(idle[0].closed().await);
    user.ok("QUIT").await;
    s.stop().await;
}

#[tokio::test]
async fn a_flood_from_one_network_never_pushes_out_a_user_logging_in() {
    let s = TestServer::start_with("\n[limits]\nmax_unauthenticated = 4\n").await;
    let mut user = connect_from("127.0.9.1", s.addr).await;
    user.line().await;
    user.ok(&format!("USER {}", ALICE.0)).await;
    // One connection from each of 30 addresses of one /24: every address
    // holds as few places as the user's, but together they hold the most.
    let mut flood = Vec::new();
    for i in 1..=30 {
        let mut c = connect_from(&format!("127.0.5.{i}"), s.addr).await;
        assert!(c.line().await.starts_with("+OK"));
        flood.push(c);
    }
    user.ok(&format!("PASS {}", ALICE.1)).await;
    user.ok("STAT").await;
    assert!(flood[0].closed().await);
    s.stop().await;
}
