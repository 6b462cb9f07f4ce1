//! The loads of issue 6, each against any POP3 server at an address:
//! login cycles, RETR throughput (with every size checked against LIST),
//! idle authenticated sessions with the server's memory per session, a
//! large maildrop's login-to-end-of-UIDL time, and the server's RSS growth
//! while it sends one large message. Each returns its figures as JSON
//! fields; `main` adds the common ones and prints them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::generate::Users;
use crate::measure::{round, Latencies, Meter};
use crate::pop3::Client;
use crate::procfs;

/// Fields of a result, in print order.
pub type Fields = Vec<(String, Value)>;

fn field(name: &str, value: Value) -> (String, Value) {
    (name.to_string(), value)
}

/// Errors seen by workers: counted, and the first few kept to print.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: std::sync::Mutex<Vec<String>>,
}

impl Errors {
    fn record(&self, e: &anyhow::Error) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().expect("no panics while held");
        if first.len() < 5 {
            first.push(format!("{e:#}"));
        }
    }

    /// `{prefix}errors` and `first_{prefix}errors`.
    fn fields(&self, prefix: &str) -> Fields {
        vec![
            field(
                &format!("{prefix}errors"),
                json!(self.count.load(Ordering::Relaxed)),
            ),
            field(
                &format!("first_{prefix}errors"),
                json!(*self.first.lock().expect("no panics while held")),
            ),
        ]
    }
}

/// Stops a load when the server's anonymous RSS passes a limit: a server that keeps
/// memory per login must not exhaust a shared machine. Sampled every
/// half second from /proc in a thread of its own.
pub struct MemoryGuard {
    tripped: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    limit_kib: u64,
}

impl MemoryGuard {
    /// Watches the tree of `server_pid` (none: never trips).
    pub fn start(server_pid: Option<u32>, limit_kib: u64) -> MemoryGuard {
        let tripped = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        if let Some(pid) = server_pid {
            let (tripped, done) = (tripped.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if procfs::anon_rss_kib(&procfs::tree(pid)) > limit_kib {
                        tripped.store(true, Ordering::Relaxed);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
        }
        MemoryGuard {
            tripped,
            done,
            limit_kib,
        }
    }

    /// True once the server went over the limit.
    pub fn tripped(&self) -> bool {
        self.tripped.load(Ordering::Relaxed)
    }

    fn fields(&self) -> Fields {
        vec![field(
            "memory_guard_tripped",
            json!(if self.tripped() {
                Value::from(format!(
                    "server anonymous RSS over {} MiB: load cut short",
                    self.limit_kib / 1024
                ))
            } else {
                Value::from(false)
            }),
        )]
    }
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// The server under load, as the loads that watch it need it.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Everyone's password.
    pub password: String,
    /// The root of its process tree.
    pub pid: Option<u32>,
    /// Cuts the load short if its memory runs away.
    pub guard: Arc<MemoryGuard>,
}

/// (a) Login cycles: connect, greeting, USER/PASS, STAT, UIDL, LIST, QUIT,
/// by `concurrency` workers over distinct users taken round-robin (a
/// maildrop is locked per session), for `duration` or `max_cycles`.
pub async fn login(
    server: Server,
    users: Users,
    concurrency: usize,
    duration: Duration,
    max_cycles: Option<u64>,
) -> Result<Fields> {
    let Server {
        addr,
        password,
        pid: server_pid,
        guard,
    } = server;
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let users = Arc::new(users);
    let password = Arc::new(password);
    let meter = Meter::start(server_pid);
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, errors, users, password, guard) = (
            next.clone(),
            errors.clone(),
            users.clone(),
            password.clone(),
            guard.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            while Instant::now() < deadline && !guard.tripped() {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if max_cycles.is_some_and(|max| i >= max) {
                    break;
                }
                let start = Instant::now();
                match login_cycle(addr, &users.name(i), &password).await {
                    Ok(()) => latencies.push(start.elapsed()),
                    Err(e) => errors.record(&e),
                }
            }
            latencies
        }));
    }
    let mut latencies = Latencies::default();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let wall = meter.elapsed();
    let mut out = vec![
        field("concurrency", json!(concurrency)),
        field("cycles", json!(latencies.len())),
        field(
            "cycles_per_s",
            json!(round(latencies.len() as f64 / wall, 1)),
        ),
    ];
    out.extend(latencies.summary("cycle"));
    out.extend(errors.fields(""));
    out.extend(guard.fields());
    out.extend(meter.finish(worker_threads()));
    Ok(out)
}

async fn login_cycle(addr: SocketAddr, user: &str, password: &str) -> Result<()> {
    let mut c = Client::connect(addr).await?;
    c.login(user, password).await?;
    let (count, _) = c.stat().await?;
    let uids = c.uidl().await?;
    let sizes = c.list().await?;
    ensure!(
        uids as u64 == count && sizes.len() as u64 == count,
        "{user}: STAT says {count} messages, UIDL lists {uids}, LIST {}",
        sizes.len()
    );
    c.quit().await
}

/// (b) RETR throughput: `concurrency` readers, reader i logged in as
/// `users[i]`, each reading its messages in turn (without DELE) until
/// `duration`; every message's octets must equal its LIST size.
pub async fn retr(
    addr: SocketAddr,
    users: Vec<String>,
    password: String,
    concurrency: usize,
    duration: Duration,
    server_pid: Option<u32>,
) -> Result<Fields> {
    ensure!(
        users.len() >= concurrency,
        "RETR needs a maildrop per reader: {} users for {concurrency} readers",
        users.len()
    );
    let octets = Arc::new(AtomicU64::new(0));
    let mismatches = Arc::new(AtomicU64::new(0));
    let meter = Meter::start(server_pid);
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for user in users.into_iter().take(concurrency) {
        let (octets, mismatches, password) = (octets.clone(), mismatches.clone(), password.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await?;
            c.login(&user, &password).await?;
            let sizes = c.list().await?;
            ensure!(!sizes.is_empty(), "{user} has no messages");
            let mut latencies = Latencies::default();
            let mut n = 0;
            while Instant::now() < deadline {
                let start = Instant::now();
                let got = c.retr(n + 1).await?;
                latencies.push(start.elapsed());
                if got != sizes[n] {
                    mismatches.fetch_add(1, Ordering::Relaxed);
                    bail!(
                        "{user}: RETR {} sent {got} octets, LIST said {}",
                        n + 1,
                        sizes[n]
                    );
                }
                octets.fetch_add(got, Ordering::Relaxed);
                n = (n + 1) % sizes.len();
            }
            c.quit().await?;
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Latencies::default();
    let mut failures = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(l) => latencies.extend(l),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let wall = meter.elapsed();
    let octets = octets.load(Ordering::Relaxed);
    let mut out = vec![
        field("concurrency", json!(concurrency)),
        field("messages", json!(latencies.len())),
        field("octets", json!(octets)),
        field("mb_per_s", json!(round(octets as f64 / wall / 1e6, 1))),
        field(
            "messages_per_s",
            json!(round(latencies.len() as f64 / wall, 1)),
        ),
        field("size_mismatches", json!(mismatches.load(Ordering::Relaxed))),
        field("errors", json!(failures.len())),
        field("first_errors", json!(failures)),
    ];
    out.extend(latencies.summary("retr"));
    out.extend(meter.finish(worker_threads()));
    Ok(out)
}

/// (c) Idle sessions: log in `users.count` distinct users and keep them
/// open, then report the server's memory per session (PSS and RSS summed
/// over its process tree, after minus before) and NOOP latency with all
/// of them open. Stops opening at the first failure or after
/// `ramp_limit`, and reports how many it held.
pub async fn idle(
    server: Server,
    users: Users,
    open_concurrency: usize,
    noop_rounds: usize,
    ramp_limit: Duration,
) -> Result<Fields> {
    let Server {
        addr,
        password,
        pid,
        guard,
    } = server;
    let server_pid = pid.context("idle needs the server's PID to read its memory")?;
    let before = procfs::memory(server_pid);
    let meter = Meter::start(Some(server_pid));
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Errors::default());
    let users = Arc::new(users);
    let password = Arc::new(password);
    let ramp_deadline = Instant::now() + ramp_limit;
    let out_of_time = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..open_concurrency {
        let out_of_time = out_of_time.clone();
        let guard = guard.clone();
        let (next, stop, errors, users, password) = (
            next.clone(),
            stop.clone(),
            errors.clone(),
            users.clone(),
            password.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) && !guard.tripped() {
                if Instant::now() >= ramp_deadline {
                    out_of_time.store(true, Ordering::Relaxed);
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= users.count {
                    break;
                }
                let opened = async {
                    let mut c = Client::connect(addr).await?;
                    c.login(&users.name(i), &password).await?;
                    Ok::<_, anyhow::Error>(c)
                };
                match tokio::time::timeout(Duration::from_secs(30), opened).await {
                    Ok(Ok(c)) => held.push(c),
                    Ok(Err(e)) => {
                        errors.record(&e);
                        stop.store(true, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.record(&anyhow::anyhow!("login took over 30 s"));
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            held
        }));
    }
    let mut groups = Vec::new();
    for task in tasks {
        groups.push(task.await?);
    }
    let open_s = meter.elapsed();
    let sessions: usize = groups.iter().map(Vec::len).sum();
    ensure!(sessions > 0, "no session could be opened");
    // Let the server settle (Dovecot's login processes hand over and exit).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = procfs::memory(server_pid);

    // NOOP from every session, a group per worker, with all held open.
    let mut latencies = Latencies::default();
    for _ in 0..noop_rounds {
        let mut tasks = Vec::new();
        for mut group in groups.drain(..) {
            tasks.push(tokio::spawn(async move {
                let mut latencies = Latencies::default();
                for c in group.iter_mut() {
                    let start = Instant::now();
                    c.simple("NOOP").await?;
                    latencies.push(start.elapsed());
                }
                Ok::<_, anyhow::Error>((group, latencies))
            }));
        }
        for task in tasks {
            let (group, l) = task.await??;
            groups.push(group);
            latencies.extend(l);
        }
    }
    let per = |a: u64, b: u64| round(a.saturating_sub(b) as f64 / sessions as f64, 1);
    let mut out = vec![
        field("sessions", json!(sessions)),
        field("sessions_asked", json!(users.count)),
        field(
            "ramp_ended_by",
            json!(if errors.count.load(Ordering::Relaxed) > 0 {
                "an open error"
            } else if guard.tripped() {
                "the server memory guard"
            } else if out_of_time.load(Ordering::Relaxed) {
                "the ramp time limit"
            } else {
                "all open"
            }),
        ),
        field("open_s", json!(round(open_s, 2))),
        field("server_processes", json!(after.processes)),
        field("pss_before_kib", json!(before.pss_kib)),
        field("pss_after_kib", json!(after.pss_kib)),
        field(
            "pss_per_session_kib",
            json!(per(after.pss_kib, before.pss_kib)),
        ),
        field(
            "rss_per_session_kib",
            json!(per(after.rss_kib, before.rss_kib)),
        ),
    ];
    out.extend(latencies.summary("noop"));
    // Opening stops at the first failure (the fd limit, say): that ends
    // the ramp, and is reported, but is not a failed run.
    out.extend(errors.fields("open_"));
    out.extend(guard.fields());
    out.extend(meter.finish(worker_threads()));
    drop(groups);
    Ok(out)
}

/// (d) A large maildrop: from sending PASS to the end of the UIDL reply,
/// `repeat` times. The first is the first login ever only if the caller
/// made it so (a fresh Maildir); it is reported apart as `first_ms`.
pub async fn maildrop(
    addr: SocketAddr,
    user: String,
    password: String,
    repeat: usize,
) -> Result<Fields> {
    let mut times = Vec::new();
    let mut count = 0;
    let meter = Meter::start(None);
    for _ in 0..repeat.max(1) {
        let mut c = Client::connect(addr).await?;
        c.simple(&format!("USER {user}")).await?;
        let start = Instant::now();
        c.simple(&format!("PASS {password}"))
            .await
            .with_context(|| format!("login as {user}"))?;
        let uids = c.uidl().await?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        let (stat, _) = c.stat().await?;
        ensure!(
            uids as u64 == stat,
            "UIDL listed {uids} messages, STAT says {stat}"
        );
        count = uids;
        c.quit().await?;
    }
    let first = times[0];
    let mut warm = times[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    let median = warm.get(warm.len() / 2).copied();
    let mut out = vec![
        field("messages", json!(count)),
        field("first_ms", json!(round(first, 1))),
        field("warm_median_ms", json!(median.map(|m| round(m, 1)))),
        field("warm_min_ms", json!(warm.first().map(|m| round(*m, 1)))),
        field("warm_runs", json!(warm.len())),
    ];
    out.extend(meter.finish(worker_threads()));
    Ok(out)
}

/// RSS growth while the server sends message 1 of `user` (meant to be
/// large): the server tree's RSS is sampled every millisecond from just
/// before RETR to its end, against the RSS after login.
pub async fn rss(
    addr: SocketAddr,
    user: String,
    password: String,
    server_pid: u32,
) -> Result<Fields> {
    let mut c = Client::connect(addr).await?;
    c.login(&user, &password).await?;
    let sizes = c.list().await?;
    ensure!(!sizes.is_empty(), "{user} has no messages");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = procfs::tree(server_pid);
    let baseline = procfs::rss_kib(&pids);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            let mut samples = 0u64;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(procfs::rss_kib(&pids));
                samples += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            (peak.max(procfs::rss_kib(&pids)), samples)
        })
    };
    let start = Instant::now();
    let got = c.retr(1).await;
    let secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (peak, samples) = sampler.join().expect("sampler does not panic");
    let got = got?;
    ensure!(
        got == sizes[0],
        "RETR 1 sent {got} octets, LIST said {}",
        sizes[0]
    );
    c.quit().await?;
    Ok(vec![
        field("message_octets", json!(got)),
        field("rss_before_kib", json!(baseline)),
        field("rss_peak_kib", json!(peak)),
        field("rss_growth_kib", json!(peak.saturating_sub(baseline))),
        field("samples", json!(samples)),
        field("mb_per_s", json!(round(got as f64 / secs / 1e6, 1))),
    ])
}

/// Threads of the generator's runtime, for the saturation check.
pub fn worker_threads() -> usize {
    tokio::runtime::Handle::current().metrics().num_workers()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A fake POP3 server on loopback holding two generated messages;
    /// LIST overstates message 2 by `lie` octets.
    async fn fake_server(lie: u64) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let messages: Vec<Vec<u8>> = [900, 30_000]
            .iter()
            .enumerate()
            .map(|(i, &size)| generate::message(i as u64, size))
            .collect();
        let sizes: Vec<u64> = messages.iter().map(|m| generate::crlf_size(m)).collect();
        let list = format!("+OK\r\n1 {}\r\n2 {}\r\n.\r\n", sizes[0], sizes[1] + lie);
        let stat = format!("+OK 2 {}\r\n", sizes[0] + sizes[1]);
        let wires: Arc<Vec<Vec<u8>>> =
            Arc::new(messages.iter().map(|m| generate::wire_form(m)).collect());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (list, stat, wires) = (list.clone(), stat.clone(), wires.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"+OK fake\r\n").await?;
                    while let Some(line) = lines.next_line().await? {
                        let reply: Vec<u8> = match line.split(' ').collect::<Vec<_>>()[..] {
                            ["LIST"] => list.clone().into_bytes(),
                            ["STAT"] => stat.clone().into_bytes(),
                            ["UIDL"] => b"+OK\r\n1 a\r\n2 b\r\n.\r\n".to_vec(),
                            ["RETR", n] => {
                                let n: usize = n.parse().unwrap();
                                [b"+OK\r\n".as_slice(), &wires[n - 1]].concat()
                            }
                            ["QUIT"] => {
                                write.write_all(b"+OK bye\r\n").await?;
                                break;
                            }
                            _ => b"+OK\r\n".to_vec(),
                        };
                        write.write_all(&reply).await?;
                    }
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        addr
    }

    fn value<'a>(fields: &'a Fields, key: &str) -> &'a Value {
        &fields.iter().find(|(k, _)| k == key).unwrap().1
    }

    fn users() -> Users {
        Users {
            prefix: "u".into(),
            first: 1,
            count: 10,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn login_cycles_count_every_completed_cycle() {
        let addr = fake_server(0).await;
        let server = Server {
            addr,
            password: "pw".into(),
            pid: None,
            guard: Arc::new(MemoryGuard::start(None, u64::MAX)),
        };
        let f = login(server, users(), 4, Duration::from_secs(30), Some(20))
            .await
            .unwrap();
        assert_eq!(value(&f, "cycles"), &json!(20));
        assert_eq!(value(&f, "errors"), &json!(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retr_accepts_exact_sizes_and_catches_a_wrong_one() {
        let addr = fake_server(0).await;
        let users = vec!["a".to_string(), "b".to_string()];
        let f = retr(
            addr,
            users.clone(),
            "pw".into(),
            2,
            Duration::from_millis(200),
            None,
        )
        .await
        .unwrap();
        assert_eq!(value(&f, "size_mismatches"), &json!(0));
        assert!(value(&f, "messages").as_u64().unwrap() > 0);

        let addr = fake_server(1).await;
        let f = retr(addr, users, "pw".into(), 2, Duration::from_secs(5), None)
            .await
            .unwrap();
        assert_eq!(value(&f, "size_mismatches"), &json!(2));
        assert_eq!(value(&f, "errors"), &json!(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn maildrop_reports_first_and_warm_logins() {
        let addr = fake_server(0).await;
        let f = maildrop(addr, "u1".into(), "pw".into(), 3).await.unwrap();
        assert_eq!(value(&f, "messages"), &json!(2));
        assert_eq!(value(&f, "warm_runs"), &json!(2));
    }
}

/// (e) LMTP deliveries: `concurrency` clients, each on one connection
/// (reconnecting after an error), sending one `size`-octet message per
/// transaction to one recipient taken round-robin from `users`, until
/// `duration`. A delivery counts when the server answers 250 for it:
/// then it is durable (RFC 2033).
pub async fn lmtp(
    addr: SocketAddr,
    users: Users,
    size: usize,
    concurrency: usize,
    duration: Duration,
    server_pid: Option<u32>,
) -> Result<Fields> {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let users = Arc::new(users);
    let meter = Meter::start(server_pid);
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, errors, users) = (next.clone(), errors.clone(), users.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Latencies::default();
            let mut conn: Option<Lmtp> = None;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let start = Instant::now();
                let sent = async {
                    if conn.is_none() {
                        conn = Some(Lmtp::connect(addr).await?);
                    }
                    let c = conn.as_mut().expect("just connected");
                    c.deliver(&users.name(i), &crate::generate::message(i, size))
                        .await
                }
                .await;
                match sent {
                    Ok(()) => latencies.push(start.elapsed()),
                    Err(e) => {
                        errors.record(&e);
                        conn = None;
                    }
                }
            }
            if let Some(mut c) = conn {
                let _ = c.command("QUIT").await;
            }
            latencies
        }));
    }
    let mut latencies = Latencies::default();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let wall = meter.elapsed();
    let mut out = vec![
        field("concurrency", json!(concurrency)),
        field("message_octets", json!(size)),
        field("deliveries", json!(latencies.len())),
        field(
            "deliveries_per_s",
            json!(round(latencies.len() as f64 / wall, 1)),
        ),
    ];
    out.extend(latencies.summary("delivery"));
    out.extend(errors.fields(""));
    out.extend(meter.finish(worker_threads()));
    Ok(out)
}

/// One LMTP client connection (RFC 2033), past LHLO.
struct Lmtp {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl Lmtp {
    async fn connect(addr: SocketAddr) -> Result<Lmtp> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to LMTP at {addr}"))?;
        stream.set_nodelay(true)?;
        let mut c = Lmtp {
            stream: tokio::io::BufReader::new(stream),
        };
        c.reply("greeting", b'2').await?;
        c.command("LHLO bench.localhost").await?;
        c.reply("LHLO", b'2').await?;
        Ok(c)
    }

    async fn command(&mut self, line: &str) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        let s = self.stream.get_mut();
        s.write_all(line.as_bytes()).await?;
        s.write_all(b"\r\n").await?;
        Ok(())
    }

    /// Reads one (possibly multi-line) reply; it must start with `class`.
    async fn reply(&mut self, what: &str, class: u8) -> Result<()> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(Duration::from_secs(60), self.stream.read_line(&mut line))
                .await
                .with_context(|| format!("{what}: no reply in 60 s"))??;
            ensure!(n > 0, "{what}: connection closed");
            ensure!(
                line.as_bytes().first() == Some(&class),
                "{what}: {}",
                line.trim_end()
            );
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    }

    async fn deliver(&mut self, user: &str, message: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        // Pipelined (RFC 2920, which LMTP servers offer): one write for
        // the envelope, one for the data.
        let envelope = format!("MAIL FROM:<bench@localhost>\r\nRCPT TO:<{user}>\r\nDATA\r\n");
        self.stream.get_mut().write_all(envelope.as_bytes()).await?;
        self.reply("MAIL", b'2').await?;
        self.reply("RCPT", b'2').await?;
        self.reply("DATA", b'3').await?;
        let data = crate::generate::wire_form(message);
        self.stream.get_mut().write_all(&data).await?;
        self.reply("end of data", b'2').await
    }
}

#[cfg(test)]
mod lmtp_tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    /// A fake LMTP server: answers every transaction 250, except that
    /// every third one is refused with 451 at the end of its data; it
    /// counts the messages it received whole.
    async fn fake_lmtp(received: Arc<AtomicU64>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let received = received.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 fake LMTP\r\n").await?;
                    let mut in_data = false;
                    let mut n = 0u64;
                    while let Some(line) = lines.next_line().await? {
                        let reply: &[u8] = if in_data {
                            if line != "." {
                                continue;
                            }
                            in_data = false;
                            n += 1;
                            if n.is_multiple_of(3) {
                                b"451 4.3.0 try again\r\n"
                            } else {
                                received.fetch_add(1, Ordering::Relaxed);
                                b"250 2.0.0 ok\r\n"
                            }
                        } else if line.starts_with("LHLO") {
                            b"250-fake\r\n250 PIPELINING\r\n"
                        } else if line == "DATA" {
                            in_data = true;
                            b"354 go on\r\n"
                        } else if line == "QUIT" {
                            write.write_all(b"221 bye\r\n").await?;
                            break;
                        } else {
                            b"250 2.1.0 ok\r\n"
                        };
                        write.write_all(reply).await?;
                    }
                    Ok::<_, std::io::Error>(())
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn lmtp_counts_only_deliveries_answered_250_and_reconnects_after_a_refusal() {
        let received = Arc::new(AtomicU64::new(0));
        let addr = fake_lmtp(received.clone()).await;
        let users = Users {
            prefix: "u".into(),
            first: 1,
            count: 3,
        };
        let fields = lmtp(addr, users, 2000, 2, Duration::from_millis(300), None)
            .await
            .unwrap();
        let get = |k: &str| {
            fields
                .iter()
                .find(|(name, _)| name == k)
                .and_then(|(_, v)| v.as_u64())
                .unwrap()
        };
        let deliveries = get("deliveries");
        assert!(deliveries > 0);
        assert_eq!(deliveries, received.load(Ordering::Relaxed));
        assert!(get("errors") > 0, "{fields:?}");
    }
}
