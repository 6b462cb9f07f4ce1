//! Limits and refusals over real sockets: connections per address and in
//! all, unauthenticated connections, brute-force back-off and blocking,
//! LOGIN-DELAY, slow clients, and the metrics endpoint.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use mailbag::server::limits::{FailurePolicy, Failures};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;

use crate::support::*;

/// Connects from a chosen loopback source address (127.0.0.0/8 is all
/// loopback on Linux), so a test can be several clients.
async fn connect_from(source: &str, addr: SocketAddr) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    Client {
        stream: BufReader::new(stream),
    }
}

#[tokio::test]
async fn connections_per_address_are_limited() {
    let s = TestServer::start_with("\n[limits]\nmax_connections_per_address = 3\n").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = connect_from("127.0.0.2", s.addr).await;
        assert!(c.line().await.starts_with("+OK"));
        open.push(c);
    }
    let mut refused = connect_from("127.0.0.2", s.addr).await;
    let line = refused.line().await;
    assert_eq!(
        line,
        "-ERR [SYS/TEMP] Too many connections from your address; try again later\r\n"
    );
    assert!(refused.closed().await);
    // Another address is not affected.
    let mut other = connect_from("127.0.0.3", s.addr).await;
    assert!(other.line().await.starts_with("+OK"));
    // A slot frees when a connection ends.
    let mut first = open.remove(0);
    first.ok("QUIT").await;
    assert!(first.closed().await);
    let mut again = connect_from("127.0.0.2", s.addr).await;
    assert!(again.line().await.starts_with("+OK"));
    s.stop().await;
}

#[tokio::test]
async fn a_full_pre_login_table_makes_room_by_closing_the_oldest_and_login_frees_a_place() {
    let s = TestServer::start_with("\n[limits]\nmax_unauthenticated = 2\n").await;
    let mut a = s.connect().await;
    a.line().await;
    let mut b = s.connect().await;
    b.line().await;
    // Full: the newcomer is served, the oldest waiting connection goes.
    let mut c = s.connect().await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(
        a.line().await,
        "-ERR [SYS/TEMP] Too many connections waiting to log in; closing the oldest\r\n"
    );
    assert!(a.closed().await);
    // A login gives its place up: the next newcomer closes no one.
    b.ok("USER alice").await;
    b.ok("PASS wonderland").await;
    let mut d = s.connect().await;
    assert!(d.line().await.starts_with("+OK"));
    assert!(c
        .cmd("NOOP")
        .await
        .starts_with("-ERR NOOP is only valid after login"));
    b.ok("STAT").await;
    s.stop().await;
}

#[tokio::test]
async fn total_connections_are_limited() {
    let s = TestServer::start_with("\n[limits]\nmax_connections = 2\n").await;
    // Logged-in sessions hold every connection (one still waiting to log
    // in would give way to the newcomer).
    let _a = s.login(ALICE).await;
    let _b = s.login(BOB).await;
    let mut c = s.connect().await;
    assert_eq!(
        c.line().await,
        "-ERR [SYS/TEMP] Too many connections; try again later\r\n"
    );
    s.stop().await;
}

/// The back-off a guessing address meets, decided where the server
/// decides it (the clock is passed in, so no test waits on one): the first
/// three failures cost the base delay, each later one doubles it up to the
/// cap, and the failure that reaches the limit blocks the address for
/// everyone, whatever name it tries next.
#[test]
fn failures_back_off_after_three_then_block_the_address() {
    let base = Duration::from_millis(50);
    let failures = Failures::new(FailurePolicy {
        base_delay: base,
        max_delay: Duration::from_millis(150),
        window: Duration::from_secs(600),
        max_per_address: 6,
        block: Duration::from_secs(60),
    });
    let guesser: IpAddr = "127.0.0.4".parse().unwrap();
    let now = Instant::now();
    let delays: Vec<Duration> = (0..5)
        .map(|i| {
            let attempt = failures
                .begin(guesser, &format!("user{i}"), now)
                .expect("not blocked yet");
            failures.failed(attempt, now)
        })
        .collect();
    assert_eq!(
        delays,
        [base, base, base, base * 2, Duration::from_millis(150)]
    );
    // The sixth attempt is counted, reaches the limit, and blocks what
    // follows from that address, for the block period.
    let sixth = failures.begin(guesser, "user5", now).expect("sixth");
    failures.failed(sixth, now);
    let later = now + Duration::from_secs(1);
    assert_eq!(
        failures.blocked(guesser, later),
        Some(Duration::from_secs(59))
    );
    assert!(failures.begin(guesser, "alice", later).is_err());
    // Another address is untouched.
    let other: IpAddr = "127.0.0.5".parse().unwrap();
    assert_eq!(failures.blocked(other, later), None);
    let attempt = failures.begin(other, "alice", later).expect("other");
    assert_eq!(failures.failed(attempt, later), base);
}

#[tokio::test]
async fn a_guessing_address_is_slowed_then_refused_while_others_log_in() {
    let s = TestServer::start_with(
        "failure_delay_ms = 50\nmax_failures_per_address = 5\naddress_block_secs = 60\n",
    )
    .await;
    let mut guesser = connect_from("127.0.0.4", s.addr).await;
    guesser.line().await;
    for i in 0..4 {
        guesser.ok(&format!("USER user{i}")).await;
        let reply = guesser.cmd("PASS guess").await;
        assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
        if i == 2 {
            // max_failures (3) per connection: reconnect and go on.
            assert!(guesser.closed().await);
            guesser = connect_from("127.0.0.4", s.addr).await;
            guesser.line().await;
        }
    }
    // How long each failure waits is the policy's to say:
    // `failures_back_off_after_three_then_block_the_address` checks it
    // without a clock.
    guesser.ok("USER user5").await;
    assert!(guesser.cmd("PASS guess").await.starts_with("-ERR [AUTH]"));
    // Five failures: the address is refused, even with the right password.
    let mut next = connect_from("127.0.0.4", s.addr).await;
    let line = next.line().await;
    assert!(
        line.starts_with("-ERR [SYS/TEMP] Too many failed logins from your address; try again in "),
        "{line}"
    );
    // Everyone else logs in as usual.
    let mut other = connect_from("127.0.0.5", s.addr).await;
    other.line().await;
    other.ok("USER alice").await;
    other.ok("PASS wonderland").await;
    s.stop().await;
}

#[tokio::test]
async fn login_delay_is_announced_and_enforced() {
    let s =
        TestServer::start_with("\n[pop3]\nlisten = [\"127.0.0.1:0\"]\nlogin_delay_secs = 600\n")
            .await;
    let mut c = s.connect().await;
    c.line().await;
    let (_, capa) = c.multi("CAPA").await;
    assert!(String::from_utf8(capa)
        .unwrap()
        .contains("LOGIN-DELAY 600\r\n"));
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    c.ok("QUIT").await;
    let mut c = s.connect().await;
    c.line().await;
    c.ok("USER alice").await;
    let reply = c.cmd("PASS wonderland").await;
    assert!(
        reply.starts_with("-ERR [LOGIN-DELAY] Only one login every 600 seconds"),
        "{reply}"
    );
    // Another user is not delayed.
    c.ok("USER bob").await;
    c.ok("PASS builder").await;
    s.stop().await;
}

#[tokio::test]
async fn slow_clients_do_not_hold_up_anyone_else() {
    let s = TestServer::start().await;
    s.deliver("alice", b"Subject: hi\n\nhello\n");
    // Slowloris: 200 connections from four addresses, each sending one
    // byte of a command now and then, never finishing a line.
    let mut slow = Vec::new();
    for i in 0..200 {
        let source = format!("127.0.1.{}", 1 + i % 4);
        let mut c = connect_from(&source, s.addr).await;
        c.line().await;
        slow.push(c);
    }
    let dribble = tokio::spawn(async move {
        for round in 0..20 {
            for c in slow.iter_mut() {
                let _ = c
                    .stream
                    .get_mut()
                    .write_all(&[b"USERNAME"[round % 8]])
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        slow
    });
    for _ in 0..5 {
        let mut c = s.login(ALICE).await;
        let (_, body) = c.multi("RETR 1").await;
        assert_eq!(body, b"Subject: hi\r\n\r\nhello\r\n");
        c.ok("QUIT").await;
        assert!(c.closed().await);
    }
    let slow = dribble.await.unwrap();
    assert_eq!(slow.len(), 200);
    s.stop().await;
}

#[tokio::test]
async fn metrics_endpoint_is_scraped_and_parsed() {
    let s = TestServer::start_with("\n[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let mut c = s.login(ALICE).await;
    c.ok("QUIT").await;
    let mut c = s.connect().await;
    c.line().await;
    c.ok("USER alice").await;
    c.cmd("PASS wrong").await;
    let addr = s.metrics_addr.expect("metrics listener");
    let mut http = tokio::net::TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"));
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{body}"))
    };
    assert_eq!(value("mailbag_logins_total{result=\"ok\"}"), 1.0);
    assert_eq!(value("mailbag_logins_total{result=\"invalid\"}"), 1.0);
    assert!(value("mailbag_connections_total") >= 2.0);
    assert!(value("mailbag_sent_bytes_total") > 0.0);
    assert_eq!(
        value("mailbag_command_duration_seconds_count{verb=\"USER\"}"),
        2.0
    );
    assert_eq!(
        value("mailbag_command_duration_seconds_count{verb=\"QUIT\"}"),
        1.0
    );
    assert!(value("mailbag_command_duration_seconds_bucket{verb=\"PASS\",le=\"+Inf\"}") >= 2.0);
    let mut http = tokio::net::TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET /other HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.0 404"));
    s.stop().await;
}

#[tokio::test]
async fn a_connection_waiting_out_a_failure_delay_is_closed_when_it_loses_its_place() {
    // A minute's failure delay, one pre-login place, two permits.
    let s = TestServer::start_with(
        "failure_delay_ms = 60000\nmax_failure_delay_ms = 60000\n\
         [limits]\nmax_connections = 2\nmax_unauthenticated = 1\n",
    )
    .await;
    let mut waiting = connect_from("127.0.7.1", s.addr).await;
    waiting.line().await;
    waiting.ok(&format!("USER {}", ALICE.0)).await;
    waiting.send(b"PASS not-the-password\r\n").await;
    // Let the server reach the failure delay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A newcomer takes the only place: the waiting connection ends now,
    // not when its minute is up (the client gives up after 20 s).
    let mut newcomer = connect_from("127.0.7.2", s.addr).await;
    assert!(newcomer.line().await.starts_with("+OK"));
    assert_eq!(
        waiting.line().await,
        "-ERR [SYS/TEMP] Too many connections waiting to log in; closing the oldest\r\n"
    );
    assert!(waiting.closed().await);
    // Its permit is free again: a third connection is served.
    let mut third = connect_from("127.0.7.3", s.addr).await;
    assert!(third.line().await.starts_with("+OK"));
    s.stop().await;
}

#[tokio::test]
async fn a_failure_delay_longer_than_the_login_time_left_ends_at_the_deadline() {
    let s = TestServer::start_with(
        "failure_delay_ms = 60000\nmax_failure_delay_ms = 60000\n\
         [limits]\nauthorization_timeout_secs = 2\n",
    )
    .await;
    let mut c = s.connect().await;
    c.line().await;
    c.ok(&format!("USER {}", ALICE.0)).await;
    // Answered no sooner than the delay, which outlasts the login time:
    // the session ends at the deadline, unanswered (the client gives up
    // after 20 s, well before the minute).
    assert_eq!(
        c.cmd("PASS not-the-password").await,
        "-ERR [SYS/TEMP] Too long without logging in; closing\r\n"
    );
    assert!(c.closed().await);
    // The same for a check that takes the hashing queue (APOP/USER-PASS
    // against a stored hash goes through `verify`).
    let mut c = s.connect().await;
    c.line().await;
    c.ok(&format!("USER {}", BOB.0)).await;
    assert_eq!(
        c.cmd("PASS not-the-password").await,
        "-ERR [SYS/TEMP] Too long without logging in; closing\r\n"
    );
    assert!(c.closed().await);
    s.stop().await;
}

/// Many people behind one address (an office's NAT) logging in at the
/// same moment are not taken for a guesser: attempts beyond the address's
/// failure room wait for those being checked, and every right password
/// logs in. Each user has a slow hash, so the checks overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_right_logins_at_once_from_one_address_all_log_in() {
    const PEOPLE: usize = 12;
    let s = TestServer::start_with_dir(|dir| {
        let hash = mailbag::auth::scheme::hash(mailbag::auth::scheme::Scheme::Argon2id, b"pw")
            .expect("hash");
        let mut passwd = std::fs::read_to_string(dir.join("passwd")).unwrap();
        for i in 0..PEOPLE {
            passwd.push_str(&format!("office{i}:{hash}\n"));
        }
        std::fs::write(dir.join("passwd"), passwd).unwrap();
        "max_failures_per_address = 2\naddress_block_secs = 600\n".to_string()
    })
    .await;
    let addr = s.addr;
    let logins: Vec<_> = (0..PEOPLE)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = connect_from("127.0.0.9", addr).await;
                let greeting = c.line().await;
                assert!(greeting.starts_with("+OK"), "office{i}: {greeting}");
                c.ok(&format!("USER office{i}")).await;
                let reply = c.cmd("PASS pw").await;
                assert!(reply.starts_with("+OK"), "office{i}: {reply}");
                c.ok("QUIT").await;
            })
        })
        .collect();
    for login in logins {
        login.await.expect("every one logs in");
    }
    // And the address was never blocked.
    let mut c = connect_from("127.0.0.9", s.addr).await;
    assert!(c.line().await.starts_with("+OK"));
    s.stop().await;
}
