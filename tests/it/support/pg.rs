//! The PostgreSQL test harness: a throwaway cluster made with `initdb`
//! and run with `pg_ctl`, shared by every test of a run (each test gets
//! its own database), mailbag nodes serving in this process, and fixtures
//! that hold mail in either backend so one behaviour runs against both.
//!
//! Without the server binaries [`cluster`] prints `SKIPPED: ...` and the
//! test passes, except when the `CI` variable is set: then it fails, so a
//! CI that lost its `postgresql` package does not go green by skipping.
//!
//! A watcher process started with the cluster stops it and removes its
//! directory when the test process exits, however it exits: statics are
//! never dropped, and a panic or ^C must not leave a server behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

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
    /// Off for tests (speed); on when measuring.
    fsync: bool,
    /// Whether TCP clients must use TLS (`server.crt`, `server.key` in
    /// `root`, a certificate for localhost and 127.0.0.1).
    tls: bool,
}

pub fn pg_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MAILBAG_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("pg_ctl").exists().then_some(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("pg_ctl").exists() && bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        command_as(self.as_postgres, &self.bin.join(program))
    }

    /// initdb, start, and a watcher that cleans up after this process.
    pub fn start() -> Result<Cluster, String> {
        Cluster::start_with(false)
    }

    /// Like [`Cluster::start`]; `fsync` as in production when measuring.
    pub fn start_with(fsync: bool) -> Result<Cluster, String> {
        Cluster::start_full(fsync, false)
    }

    /// A cluster that refuses TCP clients without TLS.
    pub fn start_tls() -> Result<Cluster, String> {
        Cluster::start_full(false, true)
    }

    fn start_full(fsync: bool, tls: bool) -> Result<Cluster, String> {
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
            fsync,
            tls,
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
        if tls {
            cluster.require_tls()?;
        }
        cluster.start_server()?;
        Ok(cluster)
    }

    /// The server certificate (self-signed: also the CA to trust).
    pub fn ca(&self) -> PathBuf {
        self.root.join("server.crt")
    }

    /// A certificate and key for the server, and pg_hba.conf lines that
    /// reject TCP clients without TLS.
    fn require_tls(&self) -> Result<(), String> {
        let key = self.root.join("server.key");
        mailbag::server::tls::write_self_signed(&["localhost", "127.0.0.1"], &self.ca(), &key)
            .map_err(|e| format!("certificate: {e}"))?;
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        if self.as_postgres {
            Command::new("chown")
                .arg("postgres:")
                .arg(&key)
                .arg(self.ca())
                .status()
                .map_err(|e| format!("chown: {e}"))?;
        }
        let hba = self.data.join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
        std::fs::write(&hba, format!("hostnossl all all all reject\n{old}"))
            .map_err(|e| e.to_string())
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
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=400",
            self.port,
            self.root.display(),
            if self.fsync { "on" } else { "off" }
        );
        if self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                self.ca().display(),
                self.root.join("server.key").display()
            ));
        }
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
            "host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5{}",
            self.port,
            if self.tls { " sslmode=require" } else { "" }
        )
    }

    /// Over the Unix socket, which needs no TLS: for setting up.
    fn admin_url(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.root.display(),
            self.port
        )
    }

    /// A store on `url`, trusting this cluster's certificate.
    pub fn store(&self, url: &str) -> PgStore {
        PgStore::new(&PgOptions {
            url: url.to_string(),
            pool_size: 4,
            lock_connections: 2,
            ca_file: self.tls.then(|| self.ca()),
        })
        .unwrap()
    }

    /// A fresh database, migrated, with alice (plaintext-equivalent) and
    /// bob (ARGON2ID).
    pub async fn database(&self, name: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let db = format!("t{}_{name}", N.fetch_add(1, Ordering::Relaxed));
        self.create(&db).await;
        self.url(&db)
    }

    /// Database `db`, migrated, with alice and bob.
    pub async fn create(&self, db: &str) {
        let admin = connect(&self.admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let url = self.url(db);
        let store = self.store(&url);
        let applied = store.migrate().await.unwrap();
        assert_eq!(
            applied.last(),
            Some(&mailbag::store::postgres::schema::LATEST)
        );
        let users = PgPassDb::new(Arc::clone(store.pool())).await;
        users
            .add_user(ALICE.0, ALICE.1.as_bytes(), Scheme::Plain)
            .await
            .unwrap();
        users
            .add_user(BOB.0, BOB.1.as_bytes(), Scheme::Argon2id)
            .await
            .unwrap();
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

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

pub fn command_as(as_postgres: bool, program: &Path) -> Command {
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

pub fn skip<T>(test: &str, why: &str) -> Option<T> {
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

pub fn pg_store(url: &str) -> PgStore {
    PgStore::new(&PgOptions {
        url: url.to_string(),
        pool_size: 4,
        lock_connections: 2,
        ca_file: None,
    })
    .unwrap()
}

// ------------------------------------------------------------------ nodes

/// One mailbag node serving in this process.
pub struct Node {
    pub addr: SocketAddr,
    /// The LMTP listener, when the config has one.
    pub lmtp: Option<SocketAddr>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl Node {
    pub async fn start<S: Store, P: PassDb>(config: Config, store: S, passdb: P) -> Node {
        let server = Server::bind(config, store, passdb).await.unwrap();
        let addr = server.local_addrs()[0];
        let lmtp = server.lmtp_addrs().first().copied();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));
        Node {
            addr,
            lmtp,
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
        let common = "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[lmtp]\nlisten = [\"127.0.0.1:0\"]\n";
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
            StoreKind::Mbox => panic!("the fixture has no mbox backend"),
        }
    }

    pub async fn deliver(&self, user: &str, message: &[u8]) -> String {
        match &self.store {
            AnyStore::Maildir(s) => s.deliver(user, message.to_vec()).await,
            AnyStore::Postgres(s) => Store::deliver(s, user.into(), message.to_vec()).await,
        }
        .unwrap()
    }
}
