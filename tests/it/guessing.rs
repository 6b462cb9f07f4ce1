//! Password guessing over real sockets: every attempt is counted before
//! its credential is checked, a success clears only its own user's
//! failures, and the answers do not depend on whether the user exists.

use std::net::SocketAddr;

use tokio::io::BufReader;
use tokio::net::TcpSocket;

use crate::support::*;

/// Connects from a chosen loopback source address (127.0.0.0/8 is all
/// loopback on Linux), so that one test can be several clients.
pub async fn connect_from(source: &str, addr: SocketAddr) -> Client {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    Client {
        stream: BufReader::new(stream),
    }
}

/// The limits of these tests: 10 failures block an address, and one
/// address may hold every connection a test opens.
pub const GUESSING: &str = "max_failures_per_address = 10\n\
                            [limits]\n\
                            max_connections_per_address = 500\n";

/// How the server answered a set of guesses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// `-ERR [AUTH]`: the password was checked and refused.
    pub checked: usize,
    /// `-ERR [SYS/TEMP] Too many failed logins`: refused unchecked.
    pub refused: usize,
    /// Anything else, as it came.
    pub other: Vec<String>,
}

/// Opens `n` connections from `source` (all greeted first), then sends a
/// wrong password for `user` on all of them at once.
pub async fn parallel_guesses(addr: SocketAddr, source: &str, user: &str, n: usize) -> Tally {
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut c = connect_from(source, addr).await;
        let greeting = c.line().await;
        assert!(greeting.starts_with("+OK"), "{greeting}");
        clients.push(c);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let user = user.to_string();
            tokio::spawn(async move {
                c.send(format!("USER {user}\r\nPASS not-the-password\r\n").as_bytes())
                    .await;
                let first = c.line().await;
                assert!(first.starts_with("+OK"), "{first}");
                c.line().await
            })
        })
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        let answer = task.await.unwrap();
        if answer.starts_with("-ERR [AUTH] Authentication failed") {
            tally.checked += 1;
        } else if answer.starts_with("-ERR [SYS/TEMP] Too many failed logins") {
            tally.refused += 1;
        } else {
            tally.other.push(answer);
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_from_one_address_are_checked_at_most_the_limit() {
    let s = TestServer::start_with(GUESSING).await;
    let tally = parallel_guesses(s.addr, "127.0.0.2", "bob", 100).await;
    assert_eq!(
        tally,
        Tally {
            checked: 10,
            refused: 90,
            other: Vec::new()
        }
    );
    // The address stays refused, from a new connection too.
    let mut c = connect_from("127.0.0.2", s.addr).await;
    assert!(c
        .line()
        .await
        .starts_with("-ERR [SYS/TEMP] Too many failed logins"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_are_answered_alike_for_known_and_unknown_users() {
    // Most users store plaintext, so an unknown user's decoy check is
    // much cheaper than bob's Argon2id.
    let s = TestServer::start_with_dir(|dir| {
        let mut passwd = std::fs::read_to_string(dir.join("passwd")).unwrap();
        for i in 0..5 {
            passwd.push_str(&format!("plain{i}:{{PLAIN}}secret{i}\n"));
        }
        std::fs::write(dir.join("passwd"), passwd).unwrap();
        GUESSING.to_string()
    })
    .await;
    let known = parallel_guesses(s.addr, "127.0.0.2", "bob", 60).await;
    let unknown = parallel_guesses(s.addr, "127.0.0.3", "nobody-here", 60).await;
    assert_eq!(known, unknown);
    assert_eq!((known.checked, known.refused), (10, 50));
    s.stop().await;
}

#[tokio::test]
async fn logging_into_ones_own_account_does_not_clear_guesses_at_another() {
    let s = TestServer::start_with(GUESSING).await;
    let mut guesses = 0;
    loop {
        let mut c = connect_from("127.0.0.2", s.addr).await;
        let greeting = c.line().await;
        if greeting.starts_with("-ERR [SYS/TEMP] Too many failed logins") {
            break;
        }
        assert!(guesses < 10, "still not refused after {guesses} guesses");
        c.ok("USER bob").await;
        let answer = c.cmd("PASS guess").await;
        assert!(answer.starts_with("-ERR [AUTH]"), "{answer}");
        guesses += 1;
        // The guesser's own account, in between.
        let mut own = connect_from("127.0.0.2", s.addr).await;
        if own.line().await.starts_with("+OK") {
            own.ok("USER alice").await;
            let answer = own.cmd("PASS wonderland").await;
            if answer.starts_with("+OK") {
                own.ok("QUIT").await;
            }
        }
    }
    assert_eq!(guesses, 10);
    s.stop().await;
}

#[tokio::test]
async fn a_person_who_mistyped_then_got_it_right_starts_afresh() {
    let s = TestServer::start_with(GUESSING).await;
    // Nine failures for alice, then her right password: the address is
    // not one failure from a block any more.
    for _ in 0..3 {
        let mut c = connect_from("127.0.0.2", s.addr).await;
        c.line().await;
        for _ in 0..3 {
            c.ok("USER alice").await;
            assert!(c.cmd("PASS typo").await.starts_with("-ERR [AUTH]"));
        }
    }
    let mut c = connect_from("127.0.0.2", s.addr).await;
    c.line().await;
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    c.ok("QUIT").await;
    for _ in 0..3 {
        let mut c = connect_from("127.0.0.2", s.addr).await;
        assert!(c.line().await.starts_with("+OK"));
        c.ok("USER alice").await;
        assert!(c.cmd("PASS typo").await.starts_with("-ERR [AUTH]"));
    }
    s.stop().await;
}
