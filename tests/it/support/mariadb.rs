//! The MariaDB test harness: one throwaway server (Debian's
//! `mariadb-server`), made with `mariadb-install-db` in a temporary
//! directory and run with `mariadbd` on loopback, shared by every test of
//! a run (each test gets its own database). Without it the tests print
//! `SKIPPED: ...` and pass, except under CI, where they fail. A watcher
//! process stops the server and removes its directory when the test
//! process exits.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::support::free_port;
use crate::support::pg::skip;

pub struct MariaDb {
    root: PathBuf,
    pub port: u16,
}

const USER: &str = "mailbag";
const PASSWORD: &str = "db-secret";

impl MariaDb {
    pub fn start() -> Result<MariaDb, String> {
        for tool in [
            "/usr/bin/mariadb-install-db",
            "/usr/sbin/mariadbd",
            "/usr/bin/mariadb",
        ] {
            if !std::path::Path::new(tool).exists() {
                return Err(format!(
                    "{tool} not found (install the Debian `mariadb-server` package)"
                ));
            }
        }
        let root = tempfile::Builder::new()
            .prefix("mailbag-mariadb-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep();
        let db = MariaDb {
            root,
            port: free_port(),
        };
        db.watch();
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", db.root.join("data").display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("mariadb-install-db: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // mariadbd stays in the foreground; the watcher stops it.
        Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", db.root.join("data").display()))
            .arg(format!("--socket={}", db.socket().display()))
            .arg(format!("--pid-file={}", db.root.join("pid").display()))
            .arg(format!("--log-error={}", db.root.join("log").display()))
            .arg(format!("--port={}", db.port))
            .args(["--bind-address=127.0.0.1", "--user=root", "--skip-log-bin"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("mariadbd: {e}"))?;
        for _ in 0..400 {
            if db
                .admin_sql(&format!(
                    "CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; \
                     GRANT ALL ON *.* TO '{USER}'@'127.0.0.1';"
                ))
                .is_ok()
            {
                return Ok(db);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(db.root.join("log")).unwrap_or_default();
        Err(format!("mariadbd did not answer within 20 s: {log}"))
    }

    fn socket(&self) -> PathBuf {
        self.root.join("sock")
    }

    /// Runs SQL as root over the socket.
    pub fn admin_sql(&self, sql: &str) -> Result<(), String> {
        let out = Command::new("mariadb")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "-e", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A fresh database named after `test`; returns its URL.
    pub fn database(&self, test: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}_{test}", N.fetch_add(1, Ordering::Relaxed));
        self.admin_sql(&format!("CREATE DATABASE {name}")).unwrap();
        format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL in database `db` (the last part of its URL).
    pub fn sql(&self, url: &str, sql: &str) {
        let db = url.rsplit('/').next().unwrap();
        self.admin_sql(&format!("USE {db}; {sql}")).unwrap();
    }

    fn watch(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             [ -f '{root}/pid' ] && kill $(cat '{root}/pid') 2>/dev/null; \
             sleep 2; rm -rf '{root}'",
            pid = std::process::id(),
            root = self.root.display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

/// The shared server, or `None` (after saying why) without MariaDB;
/// panics instead under CI.
pub fn server(test: &str) -> Option<&'static MariaDb> {
    static DB: OnceLock<Result<MariaDb, String>> = OnceLock::new();
    match DB.get_or_init(MariaDb::start) {
        Ok(db) => Some(db),
        Err(why) => skip(test, why),
    }
}
