//! The session's own guarantees over real sockets: deadlines that cover
//! writes, admission before any handshake, room made for real users when
//! idle sockets fill the pre-login places, LMTP's own limits, RETR of a
//! message that changes under it, STLS forgetting what came before, and
//! listeners on both address families.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;
use crate::tls::{connector, Lines};

/// A socket from a chosen loopback source address (all of 127/8 is
/// loopback on Linux), with an optional small receive buffer.
async fn socket_from(source: &str, addr: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(octets) = recv_buffer {
        socket.set_recv_buffer_size(octets).unwrap();
    }
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

async fn client_from(source: &str, addr: SocketAddr) -> Client {
    Client {
        stream: BufReader::new(socket_from(source, addr, None).await),
    }
}

/// Tries `attempt` every 250 ms for up to 30 s until it says yes.
async fn eventually<F, Fut>(mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..120 {
        if attempt().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test]
async fn ipv4_and_ipv6_wildcards_listen_on_one_port() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 on this machine; skipped");
        return;
    }
    // Port 0 on IPv6, then the port it got on IPv4 by another server.
    let v6 = TestServer::start_with("\n[pop3]\nlisten = [\"[::]:0\"]\n").await;
    let port = v6.addr.port();
    let v4 = TestServer::start_with(&format!("\n[pop3]\nlisten = [\"0.0.0.0:{port}\"]\n")).await;
    let mut c = Client::connect(format!("[::1]:{port}").parse().unwrap()).await;
    assert!(c.line().await.starts_with("+OK"));
    let mut c = Client::connect(format!("127.0.0.1:{port}").parse().unwrap()).await;
    assert!(c.line().await.starts_with("+OK"));
    v4.stop().await;
    v6.stop().await;
    // Both families on one port in one server, as the example config has.
    let port = free_port();
    let s = TestServer::start_with(&format!(
        "\n[pop3]\nlisten = [\"0.0.0.0:{port}\", \"[::]:{port}\"]\n"
    ))
    .await;
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let mut c = Client::connect(addr.parse().unwrap()).await;
        assert!(c.line().await.starts_with("+OK"), "{addr}");
    }
    s.stop().await;
}

#[tokio::test]
async fn user_given_before_stls_is_forgotten() {
    let s = TestServer::start_tls("").await;
    let mut c = Lines::new(TcpStream::connect(s.addr).await.unwrap());
    assert!(c.line().await.starts_with("+OK"));
    // Loopback may log in in the clear, so USER is taken here...
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert_eq!(c.cmd("STLS").await, "+OK Begin TLS negotiation\r\n");
    let tcp = c.stream.into_inner();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector(s.dir.path()).connect(name, tcp).await.unwrap();
    let mut c = Lines::new(tls);
    // ...and not remembered once TLS starts.
    assert_eq!(c.cmd("PASS wonderland").await, "-ERR Send USER first\r\n");
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert!(c.cmd("PASS wonderland").await.starts_with("+OK Logged in"));
    s.stop().await;
}

#[tokio::test]
async fn a_message_that_changes_size_during_retr_ends_the_connection_unretrieved() {
    let s = TestServer::start().await;
    let original = b"Subject: size\n\nthe body as delivered\n".to_vec();
    for changed in [b"Subject: size\n\nthe bo".to_vec(), {
        let mut longer = original.clone();
        longer.extend_from_slice(b"and a line appended later\n");
        longer
    }] {
        let name = s.deliver("alice", &original);
        let path = s.maildir("alice").join("new").join(&name);
        let mut c = s.login(ALICE).await;
        // The snapshot announced the delivered size; the file then changes.
        std::fs::write(&path, &changed).unwrap();
        c.send(b"RETR 1\r\n").await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), c.stream.read_to_end(&mut got))
            .await
            .expect("the connection stayed open");
        let _ = read;
        assert!(
            !got.ends_with(b"\r\n.\r\n"),
            "a changed message went out as complete: {:?}",
            String::from_utf8_lossy(&got)
        );
        // Not retrieved: still unseen, in new/.
        assert!(path.exists(), "{:?}", s.files("alice"));
        let mut c = s.login(ALICE).await;
        c.ok("DELE 1").await;
        c.ok("QUIT").await;
        assert!(c.closed().await);
    }
    s.stop().await;
}

/// Commands pipelined before a RETR whose message changed size get their
/// whole answers before the connection ends; the failed RETR never gets
/// its terminating line.
#[tokio::test]
async fn answers_pipelined_before_a_failed_retr_are_sent_before_the_connection_ends() {
    let s = TestServer::start().await;
    let first = b"Subject: one\n\nthe first body\n";
    s.deliver("alice", first);
    let second = b"Subject: two\n\nthe second body\n";
    let name = s.deliver("alice", second);
    let path = s.maildir("alice").join("new").join(&name);
    let mut c = s.login(ALICE).await;
    std::fs::write(&path, b"Subject: two\n\nthe second body, and more\n").unwrap();
    c.send(b"STAT\r\nRETR 1\r\nRETR 2\r\n").await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), c.stream.read_to_end(&mut got))
        .await
        .expect("the connection stayed open")
        .unwrap();
    let got = String::from_utf8_lossy(&got).into_owned();
    let whole_first = format!(
        "+OK 2 {}\r\n+OK {} octets\r\n{}.\r\n",
        crlf(first).len() + crlf(second).len(),
        crlf(first).len(),
        String::from_utf8_lossy(&crlf(first))
    );
    assert!(got.starts_with(&whole_first), "{got:?}");
    let rest = &got[whole_first.len()..];
    assert!(rest.starts_with("+OK "), "{got:?}");
    assert!(!rest.ends_with("\r\n.\r\n"), "{got:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_retr_never_read_loses_the_maildrop_lock_at_autologout() {
    let s = TestServer::start_with("\n[limits]\nautologout_secs = 1\n").await;
    // Larger than every socket buffer between the two ends.
    let mut big = b"Subject: big\n\n".to_vec();
    while big.len() < 24 << 20 {
        big.extend_from_slice(&[b'x'; 1000]);
        big.push(b'\n');
    }
    s.deliver("alice", &big);
    let mut stalled = s.login(ALICE).await;
    stalled.send(b"RETR 1\r\n").await;
    // The stalled reader's session ends, and with it the lock.
    let logged_in = eventually(|| async {
        let mut c = s.connect().await;
        c.line().await;
        c.ok("USER alice").await;
        let reply = c.cmd("PASS wonderland").await;
        assert!(
            reply.starts_with("+OK Logged in") || reply.starts_with("-ERR [IN-USE]"),
            "{reply}"
        );
        reply.starts_with("+OK")
    })
    .await;
    assert!(
        logged_in,
        "the maildrop stayed locked by a client that does not read"
    );
    drop(stalled);
    s.stop().await;
}

#[tokio::test]
async fn pipelined_capa_never_read_does_not_hold_pre_login_places_past_the_deadline() {
    let s = TestServer::start_with("\n[limits]\nauthorization_timeout_secs = 2\n").await;
    // 300 connections from 3 addresses (100 each, the per-address
    // limit), each pipelining CAPA behind a tiny receive window and never
    // reading: the server's writes to them stall.
    let capa = b"CAPA\r\n".repeat(1000);
    let mut flood = Vec::new();
    for i in 0..300 {
        let source = format!("127.0.2.{}", 1 + i % 3);
        let mut socket = socket_from(&source, s.addr, Some(4096)).await;
        let _ = socket.write_all(&capa).await;
        flood.push(socket);
    }
    // After the deadline the same addresses have their places back.
    let admitted = eventually(|| async {
        let mut c = client_from("127.0.2.1", s.addr).await;
        c.line().await.starts_with("+OK")
    })
    .await;
    assert!(admitted, "stalled pre-login sessions outlived the deadline");
    // So do all the places of the other addresses, each as its stalled
    // session reaches the deadline (the flood was opened over a while,
    // longer than the deadline on a loaded machine).
    let mut fresh = Vec::new();
    let mut refused = 0;
    while fresh.len() < 99 {
        let mut c = client_from("127.0.2.2", s.addr).await;
        if c.line().await.starts_with("+OK") {
            fresh.push(c);
        } else {
            refused += 1;
            assert!(
                refused < 120,
                "stalled pre-login sessions outlived the deadline"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    drop(flood);
    s.stop().await;
}

#[tokio::test]
async fn idle_implicit_tls_sockets_count_against_their_address() {
    let s = TestServer::start_tls("\n[limits]\nmax_connections_per_address = 3\n").await;
    let tls_addr = s.tls_addr.unwrap();
    // Three sockets that never send a ClientHello.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(socket_from("127.0.4.1", tls_addr, None).await);
    }
    // Their address is full, whichever port it comes to...
    let refused = eventually(|| async {
        let mut c = client_from("127.0.4.1", s.addr).await;
        c.line().await
            == "-ERR [SYS/TEMP] Too many connections from your address; try again later\r\n"
    })
    .await;
    assert!(refused, "sockets before the handshake were not counted");
    // ...while another address logs in as usual.
    let mut other = client_from("127.0.4.2", s.addr).await;
    other.line().await;
    other.ok("USER alice").await;
    other.ok("PASS wonderland").await;
    drop(idle);
    s.stop().await;
}

#[tokio::test]
async fn lmtp_connections_have_limits_of_their_own() {
    let s = TestServer::start_with(
        "\n[lmtp]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = 4\nmax_connections_per_address = 2\n[limits]\nmax_connections = 4\n",
    )
    .await;
    let lmtp = s.lmtp_addr.unwrap();
    let mut held = Vec::new();
    for source in ["127.0.5.1", "127.0.5.1", "127.0.5.2", "127.0.5.2"] {
        let mut c = client_from(source, lmtp).await;
        assert!(c.line().await.starts_with("220 "));
        held.push(c);
    }
    // Per address...
    let mut c = client_from("127.0.5.3", lmtp).await;
    assert_eq!(
        c.line().await,
        "421 4.3.2 Too many connections; try again later\r\n"
    );
    drop(held.pop());
    let mut c = client_from("127.0.5.1", lmtp).await;
    assert_eq!(
        c.line().await,
        "421 4.3.2 Too many connections from your address; try again later\r\n"
    );
    // LMTP's connections take none of POP3's.
    let mut pop = Vec::new();
    for _ in 0..4 {
        let mut c = s.connect().await;
        assert!(c.line().await.starts_with("+OK"));
        pop.push(c);
    }
    s.stop().await;
}

/// The flood of the figure: `flood_addresses` addresses holding
/// `per_address` sockets each that never log in, and `slow` clients from
/// 4 more sending one byte a second; then a client from its own address
/// logs in and retrieves its mail. Returns the time that took.
async fn log_in_through_a_flood(
    flood_addresses: usize,
    per_address: usize,
    slow: usize,
) -> Duration {
    let s = TestServer::start().await;
    s.deliver("alice", b"Subject: through the flood\n\nhello\n");
    let mut flood = Vec::new();
    for a in 0..flood_addresses {
        for _ in 0..per_address {
            let source = format!("127.0.6.{}", a + 1);
            flood.push(socket_from(&source, s.addr, None).await);
        }
    }
    let mut dribblers = Vec::new();
    for i in 0..slow {
        let source = format!("127.0.7.{}", 1 + i % 4);
        dribblers.push(socket_from(&source, s.addr, None).await);
    }
    let dribble = tokio::spawn(async move {
        for round in 0..30 {
            for c in dribblers.iter_mut() {
                let _ = c.write_all(&[b"USERNAME"[round % 8]]).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut c = client_from("127.0.8.1", s.addr).await;
    assert!(c.line().await.starts_with("+OK"));
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    let (_, body) = c.multi("RETR 1").await;
    assert_eq!(body, b"Subject: through the flood\r\n\r\nhello\r\n");
    c.ok("QUIT").await;
    let took = started.elapsed();
    dribble.abort();
    drop(flood);
    s.stop().await;
    took
}

#[tokio::test]
async fn a_real_user_logs_in_through_1200_idle_sockets_and_200_slow_clients() {
    // The default limits: 1,000 pre-login places, 100 per address.
    let took = log_in_through_a_flood(12, 100, 200).await;
    println!("logged in and retrieved through the flood in {took:?}");
}

#[tokio::test]
async fn pipelined_uidls_not_read_for_a_while_are_all_answered_in_order() {
    let s = TestServer::start().await;
    crate::hostile::many_messages(&s.maildir("alice"), 1000);
    let mut c = s.login(ALICE).await;
    let (_, expected) = c.multi("UIDL").await;
    assert_eq!(expected.split(|&b| b == b'\n').count(), 1001);
    const UIDLS: usize = 1000;
    c.send(&b"UIDL\r\n".repeat(UIDLS)).await;
    c.send(b"QUIT\r\n").await;
    // The client reads nothing for a while; then everything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..UIDLS {
        let (status, body) = (c.line().await, unstuff(&c.body().await));
        assert!(status.starts_with("+OK"), "answer {i}: {status}");
        assert!(body == expected, "answer {i} differs");
    }
    assert!(c.line().await.starts_with("+OK"));
    assert!(c.closed().await);
    s.stop().await;
}
