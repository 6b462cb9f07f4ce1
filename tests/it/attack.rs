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

async fn lmtp_data(s: &TestServer) -> Client {
    let mut c = Client::connect(s.lmtp_addr.expect("an LMTP listener")).await;
    assert!(c.line().await.starts_with("220 "));
    c.send(b"LHLO client.example\r\n").await;
    while c.line().await.as_bytes()[3] == b'-' {}
    assert!(c.cmd("MAIL FROM:<a@example.org>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c
}

#[tokio::test]
async fn lmtp_clients_sending_at_once_hold_no_more_than_the_budget() {
    // Room for 200,000 octets of messages being received, all sessions
    // together; messages of 90,000.
    let s = TestServer::start_with(
        "\n[lmtp]\nlisten = [\"127.0.0.1:0\"]\nmax_message_octets = 100000\n\
         max_receiving_octets = 200000\n",
    )
    .await;
    let body = format!(
        "Subject: big\r\n\r\n{}",
        "x".repeat(98).repeat(900) + "\r\n"
    );
    let body = body.replace(&"x".repeat(98), &format!("{}\r\n", "x".repeat(98)));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = lmtp_data(&s).await;
        c.send(body.as_bytes()).await;
        clients.push(c);
    }
    // Each holds its message before any ends it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut replies = Vec::new();
    for c in &mut clients {
        c.send(b".\r\n").await;
        replies.push(c.line().await);
    }
    let refused = replies
        .iter()
        .filter(|r| r.starts_with("452 4.3.1"))
        .count();
    let delivered = replies.iter().filter(|r| r.starts_with("250")).count();
    assert!(refused >= 1 && delivered >= 1, "{replies:?}");
    assert_eq!(refused + delivered, 3, "{replies:?}");
    assert_eq!(s.files(ALICE.0).len(), delivered);
    // What they held is given back: the refused client's retry fits.
    let mut retry = lmtp_data(&s).await;
    retry.send(body.as_bytes()).await;
    assert!(retry.cmd(".").await.starts_with("250"));
    assert!(retry.cmd("QUIT").await.starts_with("221"));
    s.stop().await;
}

#[tokio::test]
async fn a_flood_at_the_permit_limit_never_closes_a_logged_in_session() {
    let s =
        TestServer::start_with("\n[limits]\nmax_connections = 3\nmax_unauthenticated = 2\n").await;
    let mut user = connect_from("127.0.6.1", s.addr).await;
    user.line().await;
    user.ok(&format!("USER {}", ALICE.0)).await;
    user.ok(&format!("PASS {}", ALICE.1)).await;
    // Every other connection is taken, over and over, from many networks.
    let mut flood = Vec::new();
    for i in 1..=40 {
        let mut c = connect_from(&format!("127.0.{}.1", 10 + i), s.addr).await;
        assert!(c.line().await.starts_with("+OK"));
        flood.push(c);
    }
    user.ok("STAT").await;
    user.ok("NOOP").await;
    user.ok("QUIT").await;
    s.stop().await;
}
