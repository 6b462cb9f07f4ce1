//! The PostgreSQL backend against a real PostgreSQL server that these
//! tests start themselves (a throwaway cluster made with `initdb` and run
//! with `pg_ctl`), and the same behaviour suite run against both backends.
//!
//! Without the server binaries the PostgreSQL tests print `SKIPPED: ...`
//! and pass, except when the `CI` variable is set: then they fail, so a CI
//! that lost its `postgresql` package does not go green by skipping.
//!
//! One cluster serves every test of a run (each test gets its own
//! database). A watcher process started with it stops it and removes its
//! directory when the test process exits, however it exits: statics are
//! never dropped, and a panic or ^C must not leave a server behind.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mailbag::auth::passwd_file::PasswdFile;
use mailbag::auth::postgres::PgPassDb;
use mailbag::auth::scheme::Scheme;
use mailbag::auth::PassDb;
use mailbag::config::{Config, StoreKind};
use mailbag::server::Server;
use mailbag::store::maildir::MaildirStore;
use mailbag::store::postgres::{PgOptions, PgStore};
use mailbag::store::Store;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::support::*;

// ---------------------------------------------------------------- cluster

/// A running PostgreSQL cluster in a temporary directory.
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    root: PathBuf,
    pub port: u16,
    /// Whether the server processes run as the `postgres` user (we are
    /// root, and PostgreSQL refuses to run as root).
    as_postgres: bool,
}

fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MAILBAG_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").exists() && bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        command_as(self.as_postgres, &self.bin.join(program))
    }

    /// initdb, start, and a watcher that cleans up after this process.
    pub fn start() -> Result<Cluster, String> {
        let bin = pg_bin().ok_or(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin \
             (install the Debian `postgresql` package, or set MAILBAG_PG_BIN)",
        )?;
        let as_postgres = is_root();
        let root = tempfile::Builder::new()
            .prefix("mailbag-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        if as_postgres {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(&root)
                .status()
                .map_err(|e| format!("chown: {e}"))?
                .success();
            if !ok {
                return Err("cannot chown the cluster directory to the postgres user".into());
            }
        }
        let data = root.join("data");
        let cluster = Cluster {
            bin,
            data,
            root,
            port: free_port(),
            as_postgres,
        };
        cluster.watch();
        let out = cluster
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .arg("-D")
            .arg(&cluster.data)
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        cluster.start_server()?;
        Ok(cluster)
    }

    /// Stops the cluster and removes its directory once this process has
    /// gone, even after a panic or a signal.
    fn watch(&self) {
        let runas = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {runas}'{bin}/pg_ctl' -D '{data}' stop -m immediate >/dev/null 2>&1; \
             rm -rf '{root}'",
            pid = std::process::id(),
            bin = self.bin.display(),
            data = self.data.display(),
            root = self.root.display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    pub fn start_server(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400",
            self.port,
            self.root.display()
        );
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-l"])
            .arg(self.root.join("log"))
            .args(["-o", &options, "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("pg_ctl start: {e}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.root.join("log")).unwrap_or_default();
            return Err(format!(
                "pg_ctl start failed: {}{log}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    pub fn stop_server(&self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "fast", "stop"])
            .stdin(Stdio::null())
            .output();
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5",
            self.port
        )
    }

    /// A fresh database, migrated, with alice (plaintext-equivalent) and
    /// bob (ARGON2ID).
    pub async fn database(&self, name: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let db = format!("t{}_{name}", N.fetch_add(1, Ordering::Relaxed));
        let admin = connect(&self.url("postgres")).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let url = self.url(&db);
        let store = pg_store(&url);
        assert_eq!(store.migrate().await.unwrap(), vec![1]);
        let users = PgPassDb::new(Arc::clone(store.pool())).await;
        users
            .add_user(ALICE.0, ALICE.1.as_bytes(), Scheme::Plain)
            .await
            .unwrap();
        users
            .add_user(BOB.0, BOB.1.as_bytes(), Scheme::Argon2id)
            .await
            .unwrap();
        url
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn command_as(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The shared cluster, or `None` (after saying why) when PostgreSQL is
/// not installed; panics instead under CI.
pub fn cluster(test: &str) -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(cluster) => Some(cluster),
        Err(why) => skip(test, why),
    }
}

fn skip<T>(test: &str, why: &str) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: PostgreSQL tests cannot run under CI: {why}");
    }
    eprintln!("SKIPPED: {test}: {why}");
    None
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

fn pg_store(url: &str) -> PgStore {
    PgStore::new(&PgOptions {
        url: url.to_string(),
        pool_size: 4,
        lock_connections: 2,
    })
    .unwrap()
}

// ------------------------------------------------------------------ nodes

/// One mailbag node serving in this process.
pub struct Node {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl Node {
    async fn start<S: Store, P: PassDb>(config: Config, store: S, passdb: P) -> Node {
        let server = Server::bind(config, store, passdb).await.unwrap();
        let addr = server.local_addrs()[0];
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));
        Node {
            addr,
            shutdown,
            handle: Some(handle),
        }
    }

    pub async fn login(&self, user: (&str, &str)) -> Client {
        let mut c = Client::connect(self.addr).await;
        c.line().await;
        c.ok(&format!("USER {}", user.0)).await;
        c.ok(&format!("PASS {}", user.1)).await;
        c
    }

    /// The reply to PASS (the login may fail).
    pub async fn try_login(&self, user: (&str, &str)) -> (Client, String) {
        let mut c = Client::connect(self.addr).await;
        c.line().await;
        c.ok(&format!("USER {}", user.0)).await;
        let reply = c.cmd(&format!("PASS {}", user.1)).await;
        (c, reply)
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Maildir,
    Postgres,
}

/// Mail in one backend, with the config a node needs to serve it.
pub struct Fixture {
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub url: Option<String>,
    store: AnyStore,
}

enum AnyStore {
    Maildir(MaildirStore),
    Postgres(PgStore),
}

impl Fixture {
    /// `None` when PostgreSQL is wanted but not installed (outside CI).
    pub async fn new(backend: Backend, test: &str) -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("mailbag.toml");
        let common = "[pop3]\nlisten = [\"127.0.0.1:0\"]\n";
        let (text, url) = match backend {
            Backend::Maildir => {
                write_passwd(dir.path());
                (
                    format!("{common}[store]\nroot = \"mail\"\n[auth]\npasswd_file = \"passwd\"\nfailure_delay_ms = 10\n"),
                    None,
                )
            }
            Backend::Postgres => {
                let url = cluster(test)?.database(test).await;
                (
                    format!("{common}[store]\nkind = \"postgres\"\nurl = \"{url}\"\npool_size = 4\n[auth]\nfailure_delay_ms = 10\n"),
                    Some(url),
                )
            }
        };
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap();
        let store = match &url {
            None => AnyStore::Maildir(MaildirStore::new(
                config.store.root.clone(),
                config.store.path.clone(),
                config.store.default_domain.clone(),
            )),
            Some(url) => AnyStore::Postgres(pg_store(url)),
        };
        Some(Fixture {
            dir,
            config_path,
            url,
            store,
        })
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).unwrap()
    }

    /// A node serving this fixture's mail (several may run at once).
    pub async fn node(&self) -> Node {
        let config = self.config();
        match config.store.kind {
            StoreKind::Maildir => {
                let passdb = PasswdFile::open(&config.auth.passwd_file).unwrap();
                let store = MaildirStore::new(
                    config.store.root.clone(),
                    config.store.path.clone(),
                    config.store.default_domain.clone(),
                );
                Node::start(config, store, passdb).await
            }
            StoreKind::Postgres => {
                let store = pg_store(self.url.as_deref().unwrap());
                let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
                Node::start(config, store, passdb).await
            }
        }
    }

    pub async fn deliver(&self, user: &str, message: &[u8]) -> String {
        match &self.store {
            AnyStore::Maildir(s) => s.deliver(user, message.to_vec()).await,
            AnyStore::Postgres(s) => Store::deliver(s, user, message.to_vec()).await,
        }
        .unwrap()
    }
}

/// Runs a generic behaviour against both backends, as two tests.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn maildir() {
                super::$name(super::Backend::Maildir).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    )*};
}

both_backends!(
    stat_list_uidl_retr_and_top_are_exact,
    large_message_streams_byte_exact,
    dele_then_dropped_connection_deletes_nothing,
    dele_then_quit_deletes_exactly_the_marked_messages,
    delivery_during_a_session_is_invisible_and_survives_quit,
    second_login_gets_in_use_until_the_first_ends,
);

// ------------------------------------------------- the shared behaviours

const ONE: &[u8] = b"From: a@example.org\nSubject: one\n\nHello\n.dot line\n";
const TWO: &[u8] = b"Subject: two\r\n\r\nsecond message\r\nline 2\r\n";

fn uids(listing: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(listing)
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect()
}

async fn stat_list_uidl_retr_and_top_are_exact(backend: Backend) {
    let Some(f) = Fixture::new(backend, "stat_list_uidl_retr_and_top_are_exact").await else {
        return;
    };
    f.deliver("alice", ONE).await;
    f.deliver("alice", TWO).await;
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    let (one, two) = (crlf(ONE).len(), crlf(TWO).len());
    assert_eq!(c.cmd("STAT").await, format!("+OK 2 {}\r\n", one + two));
    let (_, list) = c.multi("LIST").await;
    assert_eq!(list, format!("1 {one}\r\n2 {two}\r\n").into_bytes());
    let (_, uidl) = c.multi("UIDL").await;
    let first = uids(&uidl);
    assert_eq!(first.len(), 2);
    assert!(first
        .iter()
        .all(|u| !u.is_empty() && u.len() <= 70 && u.bytes().all(|b| (0x21..=0x7e).contains(&b))));
    let (status, body) = c.multi("RETR 1").await;
    assert_eq!(status, format!("+OK {one} octets\r\n"));
    assert_eq!(body, crlf(ONE));
    let (_, top) = c.multi("TOP 2 0").await;
    assert_eq!(top, b"Subject: two\r\n\r\n");
    c.ok("QUIT").await;
    // UIDLs are stable across sessions (and, for PostgreSQL, across nodes).
    let other = f.node().await;
    let mut c = other.login(ALICE).await;
    let (_, uidl) = c.multi("UIDL").await;
    assert_eq!(uids(&uidl), first);
    c.ok("QUIT").await;
}

async fn large_message_streams_byte_exact(backend: Backend) {
    let Some(f) = Fixture::new(backend, "large_message_streams_byte_exact").await else {
        return;
    };
    // Several 256 KiB chunks, with lines that need dot-stuffing on chunk
    // boundaries somewhere, and 8-bit bytes.
    let mut message = b"Subject: big\n\n".to_vec();
    let mut i = 0u32;
    while message.len() < 1_300_000 {
        message.extend_from_slice(format!(".line {i} ").as_bytes());
        message.extend_from_slice(b"\xe9\xff with some padding text\n");
        i += 1;
    }
    f.deliver("bob", &message).await;
    let node = f.node().await;
    let mut c = node.login(BOB).await;
    let (status, body) = c.multi("RETR 1").await;
    assert_eq!(status, format!("+OK {} octets\r\n", crlf(&message).len()));
    assert!(body == crlf(&message), "RETR differs from the message");
    c.ok("QUIT").await;
}

async fn dele_then_dropped_connection_deletes_nothing(backend: Backend) {
    let Some(f) = Fixture::new(backend, "dele_then_dropped_connection_deletes_nothing").await
    else {
        return;
    };
    f.deliver("alice", ONE).await;
    f.deliver("alice", TWO).await;
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    c.ok("DELE 1").await;
    c.ok("DELE 2").await;
    drop(c);
    let mut c = login_when_free(&node, ALICE).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 2 "));
    c.ok("QUIT").await;
}

/// Logs in, retrying while the lock of a just-ended session is released.
async fn login_when_free(node: &Node, user: (&str, &str)) -> Client {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (c, reply) = node.try_login(user).await;
        if reply.starts_with("+OK") {
            return c;
        }
        assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
        assert!(Instant::now() < deadline, "the maildrop stayed locked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dele_then_quit_deletes_exactly_the_marked_messages(backend: Backend) {
    let Some(f) = Fixture::new(
        backend,
        "dele_then_quit_deletes_exactly_the_marked_messages",
    )
    .await
    else {
        return;
    };
    for m in [ONE, TWO, ONE] {
        f.deliver("alice", m).await;
    }
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    let (_, uidl) = c.multi("UIDL").await;
    let before = uids(&uidl);
    c.ok("RETR 3").await;
    c.body().await;
    c.ok("DELE 2").await;
    c.ok("QUIT").await;
    let mut c = node.login(ALICE).await;
    let (_, uidl) = c.multi("UIDL").await;
    assert_eq!(uids(&uidl), vec![before[0].clone(), before[2].clone()]);
    c.ok("QUIT").await;
}

async fn delivery_during_a_session_is_invisible_and_survives_quit(backend: Backend) {
    let Some(f) = Fixture::new(
        backend,
        "delivery_during_a_session_is_invisible_and_survives_quit",
    )
    .await
    else {
        return;
    };
    f.deliver("alice", ONE).await;
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    f.deliver("alice", TWO).await;
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 1 {}\r\n", crlf(ONE).len())
    );
    c.ok("DELE 1").await;
    c.ok("QUIT").await;
    let mut c = node.login(ALICE).await;
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 1 {}\r\n", crlf(TWO).len())
    );
    c.ok("QUIT").await;
}

async fn second_login_gets_in_use_until_the_first_ends(backend: Backend) {
    let Some(f) = Fixture::new(backend, "second_login_gets_in_use_until_the_first_ends").await
    else {
        return;
    };
    let node = f.node().await;
    let mut first = node.login(ALICE).await;
    let (_, reply) = node.try_login(ALICE).await;
    assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
    // Another user is not held up.
    node.login(BOB).await.ok("QUIT").await;
    first.ok("QUIT").await;
    node.login(ALICE).await.ok("QUIT").await;
}
