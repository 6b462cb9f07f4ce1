//! The real parts of a highly available deployment, for the failover
//! tests (tests/it/ha.rs): a PostgreSQL primary with a synchronous
//! streaming standby made by `pg_basebackup -R`, PgBouncer, HAProxy with
//! `send-proxy-v2`, `mailbag serve` processes (the real binary), and
//! python3 poplib/smtplib clients. Everything listens on 127.0.0.1 on
//! ports picked here.
//!
//! A failover cannot be undone, so each scenario starts its own pair of
//! servers instead of sharing one per test binary. Every process is a
//! child that is killed when its value drops (a failing test included),
//! and the PostgreSQL pair also has a watcher that stops it and removes
//! its directory when the test process exits however it exits.
//!
//! Without the programs (PostgreSQL's server binaries, `haproxy`,
//! `pgbouncer`, `python3`) a test prints `SKIPPED` and passes, except
//! under CI (see [`super::pg::skip`]).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mailbag::auth::postgres::PgPassDb;
use mailbag::auth::scheme::Scheme;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

use super::pg::{command_as, connect, is_root, pg_bin, pg_store};
use super::{as_unprivileged, free_port, unprivileged};

/// The password of every user the scenarios make.
pub const PASSWORD: &str = "failover";

/// The programs the scenarios need besides PostgreSQL, or why not.
pub fn programs() -> Result<(), String> {
    for (program, package) in [
        ("haproxy", "haproxy"),
        ("pgbouncer", "pgbouncer"),
        ("python3", "python3"),
    ] {
        let found = Command::new("sh")
            .args([
                "-c",
                &format!("command -v {program} || test -x /usr/sbin/{program}"),
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!(
                "{program} not found (install the Debian `{package}` package)"
            ));
        }
    }
    pg_bin().map(|_| ()).ok_or_else(|| {
        "PostgreSQL server binaries not found (install the Debian `postgresql` package)".into()
    })
}

fn program(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from(name)
    }
}

/// The `postgres` account's ids, for the processes that refuse root.
fn postgres_ids() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .expect("user postgres");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

/// A directory the `postgres` account owns (when we are root).
fn postgres_dir(prefix: &str) -> Result<PathBuf, String> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    if let Some((uid, gid)) = postgres_ids() {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    Ok(dir)
}

async fn wait_listening(port: u16, what: &str) {
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not listen on port {port}");
}

// ------------------------------------------------------------ PostgreSQL

/// A primary and a synchronous streaming standby (`standby1`).
pub struct Replicated {
    bin: PathBuf,
    root: PathBuf,
    as_postgres: bool,
    pub primary_port: u16,
    pub standby_port: u16,
}

impl Replicated {
    fn data(&self, which: &str) -> PathBuf {
        self.root.join(which)
    }

    fn command(&self, program: &str) -> Command {
        command_as(self.as_postgres, &self.bin.join(program))
    }

    fn run(&self, what: &str, command: &mut Command) -> Result<(), String> {
        let out = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{what}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{what} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// initdb and start the primary, clone it with `pg_basebackup -R`,
    /// start the standby, and wait until it is the synchronous one; then
    /// database `mailbag`, migrated, with `users` (password [`PASSWORD`]).
    pub async fn start(users: &[String]) -> Result<Replicated, String> {
        let bin = pg_bin().ok_or("PostgreSQL server binaries not found")?;
        let pair = Replicated {
            bin,
            root: postgres_dir("mailbag-ha-pg-")?,
            as_postgres: is_root(),
            primary_port: free_port(),
            standby_port: free_port(),
        };
        pair.watch();
        pair.run(
            "initdb",
            pair.command("initdb")
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
                .arg("-D")
                .arg(pair.data("primary")),
        )?;
        // As docs/DEPLOYMENT.md recommends: a commit returns once the
        // standby has it.
        append(
            &pair.data("primary").join("postgresql.conf"),
            &format!(
                "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
                 fsync = off\nmax_connections = 300\nwal_level = replica\n\
                 synchronous_standby_names = 'FIRST 1 (standby1)'\nsynchronous_commit = on\n",
                pair.primary_port,
                pair.root.display()
            ),
        )?;
        pair.pg_ctl("primary", "start")?;
        pair.run(
            "pg_basebackup",
            pair.command("pg_basebackup")
                .arg("-D")
                .arg(pair.data("standby"))
                .args(["-R", "-X", "stream", "--no-sync", "-d"])
                .arg(format!(
                    "host=127.0.0.1 port={} user=postgres application_name=standby1",
                    pair.primary_port
                )),
        )?;
        // The standby's own settings (postgresql.auto.conf comes last):
        // its port, its name towards the primary, and no synchronous
        // standby of its own, so that once promoted it commits without
        // one until a new standby is attached.
        append(
            &pair.data("standby").join("postgresql.auto.conf"),
            &format!(
                "port = {}\nsynchronous_standby_names = ''\n\
                 primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=standby1'\n",
                pair.standby_port, pair.primary_port
            ),
        )?;
        pair.pg_ctl("standby", "start")?;
        let admin = connect(&pair.admin_url(pair.primary_port, "postgres")).await;
        let mut synchronous = false;
        for _ in 0..300 {
            let row = admin
                .query_opt(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            if row.is_some_and(|r| r.get::<_, String>(0) == "sync") {
                synchronous = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !synchronous {
            return Err("the standby did not become synchronous".into());
        }
        admin
            .batch_execute("CREATE DATABASE mailbag")
            .await
            .map_err(|e| e.to_string())?;
        let store = pg_store(&pair.direct_url(pair.primary_port));
        store.migrate().await.map_err(|e| e.to_string())?;
        let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
        for user in users {
            passdb
                .add_user(user, PASSWORD.as_bytes(), Scheme::Plain)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(pair)
    }

    fn pg_ctl(&self, which: &str, action: &str) -> Result<(), String> {
        self.run(
            &format!("pg_ctl {action} ({which})"),
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data(which))
                .args(["-w", "-m", "fast", "-l"])
                .arg(self.root.join(format!("{which}.log")))
                .arg(action),
        )
    }

    /// `pg_ctl promote` on the standby.
    pub fn promote_standby(&self) {
        self.pg_ctl("standby", "promote").unwrap();
    }

    /// `pg_ctl stop -m fast` on the old primary.
    pub fn stop_primary(&self) {
        self.pg_ctl("primary", "stop").unwrap();
    }

    /// Both servers, primary first: a new connection takes the first
    /// that accepts writes.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=mailbag \
             target_session_attrs=read-write connect_timeout=5",
            self.primary_port, self.standby_port
        )
    }

    pub fn direct_url(&self, port: u16) -> String {
        format!("host=127.0.0.1 port={port} user=postgres dbname=mailbag connect_timeout=5")
    }

    fn admin_url(&self, port: u16, db: &str) -> String {
        format!(
            "host={} port={port} user=postgres dbname={db}",
            self.root.display()
        )
    }

    /// The server logs, for a failure message.
    pub fn logs(&self) -> String {
        ["primary", "standby"]
            .iter()
            .map(|w| {
                let log = std::fs::read_to_string(self.root.join(format!("{w}.log")));
                format!("--- {w}.log\n{}", tail(&log.unwrap_or_default(), 30))
            })
            .collect()
    }

    /// Stops both servers and removes the directory after this process.
    fn watch(&self) {
        let runas = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let bin = self.bin.display();
        let root = self.root.display();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {runas}'{bin}/pg_ctl' -D '{root}/primary' stop -m immediate >/dev/null 2>&1; \
             {runas}'{bin}/pg_ctl' -D '{root}/standby' stop -m immediate >/dev/null 2>&1; \
             rm -rf '{root}'",
            pid = std::process::id(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        for which in ["primary", "standby"] {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data(which))
                .args(["-m", "immediate", "stop"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ------------------------------------------------------------- processes

/// A child process killed (SIGKILL) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// PgBouncer in front of one PostgreSQL server.
pub struct PgBouncer {
    _child: Killed,
    pub port: u16,
    dir: PathBuf,
}

impl PgBouncer {
    /// `pool_mode` is `session` or `transaction`.
    pub async fn start(server_port: u16, dbname: &str, pool_mode: &str) -> PgBouncer {
        let dir = postgres_dir("mailbag-pgbouncer-").unwrap();
        let port = free_port();
        let config = dir.join("pgbouncer.ini");
        // server_login_retry and query_wait_timeout short: a client of a
        // PgBouncer whose server has gone is refused in seconds, and
        // moves on to the next host of its connection string.
        std::fs::write(
            &config,
            format!(
                "[databases]\n{dbname} = host=127.0.0.1 port={server_port} dbname={dbname}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {auth}\n\
                 pool_mode = {pool_mode}\nmax_client_conn = 500\ndefault_pool_size = 100\n\
                 server_login_retry = 1\nquery_wait_timeout = 3\n\
                 logfile = {log}\n",
                auth = dir.join("users.txt").display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        let mut command = Command::new(program("pgbouncer"));
        // It logs to its logfile and to stderr: the file is enough.
        command
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = postgres_ids() {
            // PgBouncer refuses to run as root.
            command.uid(uid).gid(gid);
            for file in ["pgbouncer.ini", "users.txt"] {
                std::os::unix::fs::chown(dir.join(file), Some(uid), Some(gid)).unwrap();
            }
        }
        let child = Killed(command.spawn().expect("pgbouncer"));
        wait_listening(port, "pgbouncer").await;
        PgBouncer {
            _child: child,
            port,
            dir,
        }
    }

    pub fn log(&self) -> String {
        tail(
            &std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default(),
            20,
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// HAProxy in TCP mode: POP3 with `send-proxy-v2`, LMTP without (it has
/// no PROXY support, and needs none: it has no per-client limits).
pub struct HaProxy {
    _child: Killed,
    pub pop3: u16,
    pub lmtp: u16,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// In front of `nodes`.
    pub async fn start(nodes: &[&NodeProcess]) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let (pop3, lmtp) = (free_port(), free_port());
        let mut pop3_servers = String::new();
        let mut lmtp_servers = String::new();
        // Checked every 200 ms and out after one failure: a killed node
        // leaves quickly. A connection refused is retried on another node.
        for (i, node) in nodes.iter().enumerate() {
            pop3_servers.push_str(&format!(
                "    server node{i} 127.0.0.1:{} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 1\n",
                node.pop3
            ));
            lmtp_servers.push_str(&format!(
                "    server node{i} 127.0.0.1:{} check inter 200ms fall 1 rise 1\n",
                node.lmtp
            ));
        }
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n    maxconn 1000\n\
                 defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n\
                 \x20   timeout server 60s\n    retries 3\n    option redispatch\n\
                 frontend pop3\n    bind 127.0.0.1:{pop3}\n    default_backend pop3\n\
                 backend pop3\n    balance roundrobin\n{pop3_servers}\
                 frontend lmtp\n    bind 127.0.0.1:{lmtp}\n    default_backend lmtp\n\
                 backend lmtp\n    balance roundrobin\n{lmtp_servers}"
            ),
        )
        .unwrap();
        let child = Killed(
            Command::new(program("haproxy"))
                .arg("-db")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("haproxy"),
        );
        wait_listening(pop3, "haproxy").await;
        wait_listening(lmtp, "haproxy").await;
        HaProxy {
            _child: child,
            pop3,
            lmtp,
            _dir: dir,
        }
    }
}

/// A `mailbag serve` process (the real binary), trusting PROXY headers
/// from 127.0.0.1, on ports that stay its own across restarts.
pub struct NodeProcess {
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pub pop3: u16,
    pub lmtp: u16,
    child: Option<Killed>,
}

impl NodeProcess {
    /// Node `name`'s config in `dir` (nodes of one deployment share the
    /// directory, and so the server secret).
    pub fn new(dir: &Path, name: &str, url: &str) -> NodeProcess {
        let (pop3, lmtp) = (free_port(), free_port());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[pop3]\nlisten = [\"127.0.0.1:{pop3}\"]\nproxy_from = [\"127.0.0.1/32\"]\n\
                 [lmtp]\nlisten = [\"127.0.0.1:{lmtp}\"]\n\
                 [store]\nkind = \"postgres\"\nurl = \"{url}\"\npool_size = 8\nlock_connections = 2\n\
                 [auth]\nfailure_delay_ms = 10\nsecret_file = \"mailbag.secret\"\n"
            ),
        )
        .unwrap();
        NodeProcess {
            dir: dir.to_path_buf(),
            config,
            log: dir.join(format!("{name}.log")),
            pop3,
            lmtp,
            child: None,
        }
    }

    /// `mailbag serve` with `config`, its log appended to `log`.
    pub fn spawn(&self) -> std::io::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_mailbag"));
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("MAILBAG_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        as_unprivileged(&mut command, &self.dir);
        command.spawn()
    }

    /// Starts the node and waits until its LMTP listener greets.
    pub async fn start(&mut self) {
        self.child = Some(Killed(self.spawn().expect("mailbag serve")));
        for _ in 0..600 {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.lmtp)).await {
                let mut line = String::new();
                let mut reader = BufReader::new(stream);
                let read =
                    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
                if matches!(read, Ok(Ok(_))) && line.starts_with("220") {
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.0.try_wait().ok().flatten())
            {
                panic!("mailbag serve exited ({status}): {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("mailbag serve did not come up: {}", self.log());
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        self.child = None;
    }

    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }
}

/// The last lines of a node's log.
pub fn read_log(path: &Path) -> String {
    tail(&std::fs::read_to_string(path).unwrap_or_default(), 30)
}

/// A directory for the nodes' configs, secret and logs, readable by the
/// account the nodes run as.
pub fn nodes_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    unprivileged(dir.path());
    dir
}

/// The python3 clients of `ha_clients.py`, each session and delivery a
/// JSON line in `out`.
pub struct Clients {
    child: Option<Killed>,
    stop: PathBuf,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Clients {
    /// `pop3_per_user` POP3 clients on each of `users`, and
    /// `lmtp_clients` delivering to them in turn.
    pub fn start(
        balancer: &HaProxy,
        users: &[String],
        pop3_per_user: usize,
        lmtp_clients: usize,
    ) -> Clients {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("ha_clients.py");
        std::fs::write(&script, include_str!("ha_clients.py")).unwrap();
        let stop = dir.path().join("STOP");
        let out = dir.path().join("events.jsonl");
        let child = Command::new("python3")
            .arg(&script)
            .args([
                "127.0.0.1",
                &balancer.pop3.to_string(),
                &balancer.lmtp.to_string(),
            ])
            .arg(PASSWORD)
            .arg(&stop)
            .args([pop3_per_user.to_string(), lmtp_clients.to_string()])
            .args(users)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .expect("python3");
        Clients {
            child: Some(Killed(child)),
            stop,
            out,
            _dir: dir,
        }
    }

    /// Every event so far (a last line still being written is left out).
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What python wrote on stderr (a traceback).
    pub fn stderr(&self) -> String {
        let path = self.out.with_file_name("stderr");
        tail(&std::fs::read_to_string(path).unwrap_or_default(), 30)
    }

    /// Asks the clients to finish their sessions and waits for them (at
    /// most `limit`; then they are killed).
    pub async fn stop(&mut self, limit: Duration) {
        std::fs::write(&self.stop, b"").unwrap();
        let deadline = tokio::time::Instant::now() + limit;
        while let Some(child) = self.child.as_mut() {
            if child.0.try_wait().ok().flatten().is_some() || tokio::time::Instant::now() > deadline
            {
                self.child = None;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
