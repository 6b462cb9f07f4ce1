//! Failover with the real parts: HAProxy (`send-proxy-v2`) in front of
//! two `mailbag serve` nodes on a PostgreSQL primary with a synchronous
//! streaming standby, directly or through PgBouncer. While python3 poplib
//! clients log in, RETR, DELE and QUIT and an smtplib LMTP client
//! delivers, all through HAProxy, one node is killed with SIGKILL, the
//! standby is promoted and the old primary stopped, and the killed node
//! is started again. The clients' record and the promoted database must
//! then show that nothing acknowledged was lost or doubled, nothing was
//! deleted without a QUIT that could have answered `+OK`, and the
//! maildrop lock held across nodes throughout; and how long the clients
//! took to recover is printed.
//!
//! The CI form runs the load for a few seconds around each fault;
//! `MAILBAG_HA_SOAK_SECS` lengthens every phase (the `#[ignore]`d
//! `failover_soak` uses 30; see docs/DEPLOYMENT.md).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::ha::{
    nodes_dir, programs, read_log, Clients, HaProxy, NodeProcess, PgBouncer, Replicated, PASSWORD,
};
use crate::support::pg::{connect, skip};
use crate::support::Client;

/// How long the clients may take to recover after a fault before the
/// test gives up (not a bound it asserts on recovery: the times are
/// printed).
const GIVE_UP: Duration = Duration::from_secs(90);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The load: POP3 clients per user on three users, two per user so that
/// they meet on one maildrop, and LMTP clients delivering to each user
/// in turn.
const POP3_PER_USER: usize = 2;
const LMTP_CLIENTS: usize = 2;

fn users() -> Vec<String> {
    (0..3).map(|i| format!("ha{i}@example.org")).collect()
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every client has succeeded again with a session or
/// delivery begun after `since`: each POP3 client with a session that
/// wrote (RETR, DELE, and QUIT answered `+OK`), each LMTP client with a
/// `250`. Returns how long after `since` the first and the last POP3
/// client, and the first and the last LMTP client, did.
async fn recovered(
    clients: &Clients,
    since: f64,
    what: &str,
    logs: &dyn Fn() -> String,
) -> Recovery {
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    loop {
        let events = clients.events();
        // worker -> its first success begun after `since` (or infinity).
        let mut first: HashMap<(&str, &str), f64> = HashMap::new();
        for e in &events {
            let (Some(kind), Some(worker)) = (e["kind"].as_str(), e["worker"].as_str()) else {
                continue;
            };
            let done = match kind {
                "pop3" if num(e, "start") > Some(since) && !strings(e, "retr").is_empty() => {
                    num(e, "quit_ok")
                }
                "lmtp" if num(e, "sent") > Some(since) => num(e, "ok"),
                _ => None,
            };
            let slot = first.entry((kind, worker)).or_insert(f64::INFINITY);
            *slot = slot.min(done.unwrap_or(f64::INFINITY));
        }
        let span = |kind: &str| {
            let times: Vec<f64> = first
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|(_, t)| *t - since)
                .collect();
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            let max = times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (min, max, times.len())
        };
        let (pop3, lmtp) = (span("pop3"), span("lmtp"));
        let all = pop3.2 == users().len() * POP3_PER_USER && lmtp.2 == LMTP_CLIENTS;
        if all && pop3.1.is_finite() && lmtp.1.is_finite() {
            return Recovery {
                pop3: (pop3.0, pop3.1),
                lmtp: (lmtp.0, lmtp.1),
            };
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{what}: the clients did not all recover within {GIVE_UP:?}: {first:?}\n\
                 python: {}\n{}",
                clients.stderr(),
                logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Seconds from a fault to the first and the last client's success.
struct Recovery {
    pop3: (f64, f64),
    lmtp: (f64, f64),
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "POP3 {:.2}-{:.2}s, LMTP {:.2}-{:.2}s",
            self.pop3.0, self.pop3.1, self.lmtp.0, self.lmtp.1
        )
    }
}

/// How the nodes reach PostgreSQL.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Direct,
    /// A PgBouncer (`pool_mode = session`) beside each server, both in
    /// the nodes' connection string.
    PgBouncer,
}

async fn scenario(test: &str, path: Path, phase: Duration) {
    if let Err(why) = programs() {
        skip::<()>(test, &why);
        return;
    }
    let users = users();
    let pair = match Replicated::start(&users).await {
        Ok(pair) => pair,
        Err(why) => panic!("{test}: {why}"),
    };
    let bouncers = match path {
        Path::Direct => Vec::new(),
        Path::PgBouncer => vec![
            PgBouncer::start(pair.primary_port, "mailbag", "session").await,
            PgBouncer::start(pair.standby_port, "mailbag", "session").await,
        ],
    };
    let url = match path {
        Path::Direct => pair.url(),
        Path::PgBouncer => format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=mailbag \
             target_session_attrs=read-write connect_timeout=5",
            bouncers[0].port, bouncers[1].port
        ),
    };
    let dir = nodes_dir();
    let mut node1 = NodeProcess::new(dir.path(), "node1", &url);
    let mut node2 = NodeProcess::new(dir.path(), "node2", &url);
    // One after the other: the first creates the shared server secret.
    node1.start().await;
    node2.start().await;
    let balancer = HaProxy::start(&[&node1, &node2]).await;
    let mut clients = Clients::start(&balancer, &users, POP3_PER_USER, LMTP_CLIENTS);
    let node_logs = [node1.log_path(), node2.log_path()];
    let logs = || {
        format!(
            "--- node1\n{}\n--- node2\n{}\n{}{}",
            read_log(&node_logs[0]),
            read_log(&node_logs[1]),
            pair.logs(),
            bouncers
                .iter()
                .map(PgBouncer::log)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    let started = now();
    recovered(&clients, started, "start", &logs).await;
    tokio::time::sleep(phase).await;

    let killed = now();
    node1.kill();
    let after_kill = recovered(&clients, killed, "node killed", &logs).await;
    tokio::time::sleep(phase).await;

    let promoting = now();
    pair.promote_standby();
    pair.stop_primary();
    let failover = now();
    let after_failover = recovered(&clients, failover, "failover", &logs).await;
    tokio::time::sleep(phase).await;

    let restarted = now();
    node1.start().await;
    let after_restart = recovered(&clients, restarted, "node restarted", &logs).await;
    tokio::time::sleep(phase).await;

    clients.stop(Duration::from_secs(60)).await;
    let events = clients.events();

    // The lock across nodes, asked directly: a session on the restarted
    // node keeps the other node's login out until its QUIT.
    let user = users[0].as_str();
    let mut first = proxied_login(node1.pop3).await;
    let reply = first.cmd(&format!("USER {user}")).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    let reply = first.cmd(&format!("PASS {PASSWORD}")).await;
    assert!(reply.starts_with("+OK"), "node1 after the restart: {reply}");
    let mut second = proxied_login(node2.pop3).await;
    second.ok(&format!("USER {user}")).await;
    let reply = second.cmd(&format!("PASS {PASSWORD}")).await;
    assert!(
        reply.starts_with("-ERR [IN-USE]"),
        "node2 beside node1: {reply}"
    );
    first.ok("QUIT").await;
    let mut third = proxied_login(node2.pop3).await;
    third.ok(&format!("USER {user}")).await;
    third.ok(&format!("PASS {PASSWORD}")).await;
    third.ok("QUIT").await;

    // What the promoted server holds.
    let db = connect(&pair.direct_url(pair.standby_port)).await;
    let rows = db
        .query(
            "SELECT d.name, coalesce((SELECT string_agg(c.data, ''::bytea ORDER BY c.seq)
                                         FROM message_chunks c WHERE c.message_id = m.id), '')
               FROM messages m JOIN maildrops d ON d.id = m.maildrop_id",
            &[],
        )
        .await
        .unwrap();
    let mut present: HashMap<String, (String, usize)> = HashMap::new();
    for row in rows {
        let user: String = row.get(0);
        let body: Vec<u8> = row.get(1);
        let text = String::from_utf8_lossy(&body);
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Token: "))
            .map(|t| t.trim_end().to_owned())
            .expect("every message has a token");
        present.entry(token).or_insert((user, 0)).1 += 1;
    }

    let report = std::panic::catch_unwind(|| check(&events, &present)).unwrap_or_else(|_| {
        panic!(
            "{test}: faults at: node killed {killed:.3}, promote {promoting:.3}, \
             stopped {failover:.3}, restarted {restarted:.3}\n{}",
            logs()
        )
    });
    eprintln!(
        "{test} ({path:?}): {} sessions with QUIT +OK, {} broken by a fault, {} [IN-USE] refusals, \
         {} deliveries acknowledged, {} not ({} of them left unknown by a broken connection), \
         {} QUITs left unknown; promote and stop took {:.2}s; every client succeeded again \
         (first-last client, from the end of the fault): node killed: {after_kill}; \
         failover: {after_failover}; node restarted: {after_restart}",
        report.quit_ok,
        report.broken,
        report.in_use,
        report.acknowledged,
        report.refused,
        report.delivery_unknown,
        report.quit_unknown,
        failover - promoting,
    );
    assert!(report.in_use > 0, "the clients never met on one maildrop");
    assert!(report.deleted > 0, "no session deleted anything");
}

/// A connection straight to a node, with the PROXY header it insists on
/// from 127.0.0.1, past its greeting.
async fn proxied_login(port: u16) -> Client {
    let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
    c.send(b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 110\r\n")
        .await;
    let greeting = c.line().await;
    assert!(greeting.starts_with("+OK"), "{greeting}");
    c
}

#[derive(Default, Debug)]
struct Report {
    quit_ok: usize,
    broken: usize,
    quit_unknown: usize,
    in_use: usize,
    acknowledged: usize,
    refused: usize,
    delivery_unknown: usize,
    deleted: usize,
}

/// The promises, from the clients' record and the database's content.
fn check(events: &[Value], present: &HashMap<String, (String, usize)>) -> Report {
    let mut report = Report::default();
    let crashed: Vec<&Value> = events.iter().filter(|e| e.get("crash").is_some()).collect();
    assert!(crashed.is_empty(), "the client script failed: {crashed:?}");
    // No message is stored twice, whatever became of its delivery.
    for (token, (_, n)) in present {
        assert_eq!(*n, 1, "message {token} is stored {n} times");
    }
    let sessions: Vec<&Value> = events.iter().filter(|e| e["kind"] == "pop3").collect();
    let deliveries: Vec<&Value> = events.iter().filter(|e| e["kind"] == "lmtp").collect();
    let sent: HashMap<String, String> = deliveries
        .iter()
        .map(|d| {
            (
                d["token"].as_str().unwrap().to_owned(),
                d["user"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (token, (user, _)) in present {
        assert_eq!(
            sent.get(token),
            Some(user),
            "message {token} stored for the wrong user"
        );
    }

    // Deleted for good: DELE'd in a session whose QUIT answered +OK. May
    // be deleted: DELE'd in one whose QUIT got no answer (the node died
    // around it).
    let mut deleted = HashSet::new();
    let mut maybe_deleted = HashSet::new();
    for s in &sessions {
        let dele = strings(s, "dele");
        if s.get("quit_ok").is_some() {
            report.quit_ok += 1;
            report.deleted += dele.len();
            deleted.extend(dele);
        } else if s.get("quit_sent").is_some() && s.get("quit_err").is_none() {
            report.quit_unknown += 1;
            maybe_deleted.extend(dele);
        }
        if s.get("error").is_some() {
            report.broken += 1;
        }
        if s.get("pass_err")
            .and_then(Value::as_str)
            .is_some_and(|e| e.contains("[IN-USE]"))
        {
            report.in_use += 1;
        }
    }
    for token in &deleted {
        assert!(
            !present.contains_key(token),
            "message {token} was DELE'd in a session whose QUIT answered +OK, and is still there"
        );
    }

    // Every message acknowledged with 250 is there, unless deleted as above.
    for d in &deliveries {
        let token = d["token"].as_str().unwrap();
        if d.get("ok").is_some() {
            report.acknowledged += 1;
            assert!(
                present.contains_key(token)
                    || deleted.contains(token)
                    || maybe_deleted.contains(token),
                "message {token} was acknowledged with 250 and is gone, never deleted by a QUIT: {d}; \
                 sessions that read it: {:?}",
                sessions
                    .iter()
                    .filter(|s| strings(s, "retr").iter().any(|t| t == token))
                    .collect::<Vec<_>>()
            );
        } else {
            report.refused += 1;
            if d.get("code").is_none() {
                report.delivery_unknown += 1;
            }
        }
    }
    // Nothing else went: a message a client retrieved and kept, or whose
    // QUIT failed, is still there (unless a later session deleted it).
    for s in &sessions {
        let kept: Vec<String> = if s.get("quit_ok").is_some() {
            let dele = strings(s, "dele");
            strings(s, "retr")
                .into_iter()
                .filter(|t| !dele.contains(t))
                .collect()
        } else if s.get("quit_err").is_some() {
            strings(s, "retr")
        } else {
            Vec::new()
        };
        for token in kept {
            assert!(
                present.contains_key(&token)
                    || deleted.contains(&token)
                    || maybe_deleted.contains(&token),
                "message {token} is gone, never deleted by a QUIT: {s}"
            );
        }
    }

    // [IN-USE] across nodes: a session that committed at QUIT held the
    // lock at least from its PASS +OK (taken before the reply) to the
    // sending of QUIT (released after it); two such windows on one
    // maildrop never overlap. A session that changed nothing can answer
    // QUIT +OK with its lock already lost, so only committing ones count.
    let mut windows: HashMap<&str, Vec<(f64, f64)>> = HashMap::new();
    for s in &sessions {
        let committed = s.get("quit_ok").is_some() && !strings(s, "retr").is_empty();
        if let (true, Some(from), Some(to)) = (committed, num(s, "pass_ok"), num(s, "quit_sent")) {
            windows
                .entry(s["user"].as_str().unwrap())
                .or_default()
                .push((from, to));
        }
    }
    for (user, mut w) in windows {
        w.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in w.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "two sessions held {user}'s maildrop at once: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
    }
    report
}

fn phase() -> Duration {
    let secs = std::env::var("MAILBAG_HA_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_through_haproxy_loses_and_doubles_nothing() {
    scenario(
        "failover_through_haproxy_loses_and_doubles_nothing",
        Path::Direct,
        phase(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_behind_pgbouncer_in_session_mode_loses_and_doubles_nothing() {
    scenario(
        "failover_behind_pgbouncer_in_session_mode_loses_and_doubles_nothing",
        Path::PgBouncer,
        phase(),
    )
    .await;
}

/// Session-level advisory locks do not survive a pooler that moves a
/// client between server sessions: behind PgBouncer in `transaction` or
/// `statement` mode, `mailbag serve` refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_is_refused_at_start() {
    let test = "transaction_pooling_is_refused_at_start";
    if let Err(why) = programs() {
        skip::<()>(test, &why);
        return;
    }
    let Some(cluster) = crate::support::pg::cluster(test) else {
        return;
    };
    cluster.create("ha_pooling").await;
    for mode in ["transaction", "statement", "session"] {
        let bouncer = PgBouncer::start(cluster.port, "ha_pooling", mode).await;
        let url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=ha_pooling connect_timeout=5",
            bouncer.port
        );
        let dir = nodes_dir();
        let mut node = NodeProcess::new(dir.path(), "node", &url);
        if mode == "session" {
            // The supported mode: the node starts and serves.
            node.start().await;
            let mut c = proxied_login(node.pop3).await;
            c.ok("USER alice").await;
            c.ok("PASS wonderland").await;
            c.ok("QUIT").await;
            continue;
        }
        let mut child = node.spawn().unwrap();
        let mut status = None;
        for _ in 0..600 {
            status = child.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = node.log();
        eprintln!(
            "pool_mode = {mode}: {}",
            log.trim_end().lines().last().unwrap_or("")
        );
        assert!(
            status.is_some_and(|s| !s.success()),
            "pool_mode = {mode}: mailbag serve did not refuse to start ({status:?}): {log}\n{}",
            bouncer.log()
        );
        assert!(
            log.contains("does not keep a client on one server session")
                && log.contains("pool_mode = session"),
            "pool_mode = {mode}: {log}"
        );
    }
}

/// The long form: 30 seconds of load around each fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn failover_soak() {
    scenario("failover_soak", Path::Direct, Duration::from_secs(30)).await;
    scenario("failover_soak", Path::PgBouncer, Duration::from_secs(30)).await;
}
