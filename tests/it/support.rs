//! Test support: start a real server in-process and talk to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mailbag::auth::passwd_file::PasswdFile;
use mailbag::config::Config;
use mailbag::server::Server;
use mailbag::store::maildir::{self, MaildirStore};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub mod accounts;
pub mod ha;
pub mod ldap;
pub mod mariadb;
pub mod pg;
pub mod postfix;

/// `alice` has a plaintext-equivalent secret (so APOP works); `bob` an
/// ARGON2ID hash.
pub const ALICE: (&str, &str) = ("alice", "wonderland");
pub const BOB: (&str, &str) = ("bob", "builder");

pub struct TestServer {
    pub addr: SocketAddr,
    /// The first `lmtp.listen` address, when the config has one.
    pub lmtp_addr: Option<SocketAddr>,
    /// The metrics endpoint, when the config has one.
    pub metrics_addr: Option<SocketAddr>,
    /// The implicit-TLS address, when started with TLS.
    pub tls_addr: Option<SocketAddr>,
    pub dir: TempDir,
    pub config_path: PathBuf,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

/// A port that was free a moment ago, for servers started as processes
/// (which cannot report a port 0 back).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn config_text(dir: &Path, extra: &str) -> String {
    let _ = dir;
    // A test that needs more of [pop3] brings the whole table.
    let pop3 = if extra.contains("[pop3]") {
        ""
    } else {
        "[pop3]\nlisten = [\"127.0.0.1:0\"]"
    };
    // The same for [store].
    let store = if extra.contains("[store]") {
        ""
    } else {
        "[store]\nroot = \"mail\""
    };
    format!(
        r#"
{pop3}
{store}
[auth]
passwd_file = "passwd"
{delay}
{extra}
"#,
        delay = if extra.contains("failure_delay_ms") {
            ""
        } else {
            "failure_delay_ms = 10"
        }
    )
}

pub fn write_passwd(dir: &Path) {
    let bob =
        mailbag::auth::scheme::hash(mailbag::auth::scheme::Scheme::Argon2id, BOB.1.as_bytes())
            .expect("hash");
    std::fs::write(
        dir.join("passwd"),
        format!("{}:{{PLAIN}}{}\n{}:{}\n", ALICE.0, ALICE.1, BOB.0, bob),
    )
    .unwrap();
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with("").await
    }

    /// Starts a server whose config has `extra` appended to `[auth]`
    /// (further tables may follow in `extra`).
    pub async fn start_with(extra: &str) -> TestServer {
        TestServer::start_config(|_| extra.to_string(), false).await
    }

    /// Like [`TestServer::start_with`], with `extra` made by `prepare`,
    /// which may also set up the server's directory before it starts.
    pub async fn start_with_dir(prepare: impl FnOnce(&Path) -> String) -> TestServer {
        TestServer::start_config(prepare, false).await
    }

    /// Starts a server with a fresh self-signed certificate for
    /// `localhost` (in `tls/cert.pem`), STLS on `addr` and implicit TLS
    /// on `tls_addr`.
    pub async fn start_tls(extra: &str) -> TestServer {
        TestServer::start_config(|_| extra.to_string(), true).await
    }

    async fn start_config(prepare: impl FnOnce(&Path) -> String, tls: bool) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        write_passwd(dir.path());
        let extra = prepare(dir.path());
        let config_path = dir.path().join("mailbag.toml");
        let mut text = config_text(dir.path(), &extra);
        if tls {
            std::fs::create_dir(dir.path().join("tls")).unwrap();
            mailbag::server::tls::write_self_signed(
                &["localhost", "127.0.0.1"],
                &dir.path().join("tls/cert.pem"),
                &dir.path().join("tls/key.pem"),
            )
            .unwrap();
            text = text.replace("[pop3]\n", "[pop3]\nlisten_tls = [\"127.0.0.1:0\"]\n");
            text.push_str("\n[tls]\ncertificate = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n");
        }
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap();
        let passdb = PasswdFile::open_with_names(
            &config.auth.passwd_file,
            mailbag::auth::cache::VerifiedCache::from_config(&config.auth),
            mailbag::auth::secret::ServerSecret::load_or_create(&config.auth.secret_file).unwrap(),
            config.auth.case_insensitive_names,
        )
        .unwrap()
        .with_rehash(config.auth.rehash_scheme());
        let store = MaildirStore::new(
            config.store.root.clone(),
            config.store.path.clone(),
            config.store.default_domain.clone(),
        )
        .with_uidl_sources(config.store.uidl_sources());
        let server = Server::bind(config, store, passdb).await.unwrap();
        let addr = server.local_addrs()[0];
        let metrics_addr = server.metrics_addr();
        let lmtp_addr = server.lmtp_addrs().first().copied();
        let tls_addr = server.local_tls_addrs().first().copied();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));
        TestServer {
            addr,
            lmtp_addr,
            metrics_addr,
            tls_addr,
            dir,
            config_path,
            shutdown,
            handle: Some(handle),
        }
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir
            .path()
            .join("mail/localhost")
            .join(user)
            .join("Maildir")
    }

    pub fn deliver(&self, user: &str, message: &[u8]) -> String {
        maildir::deliver(&self.maildir(user), message).unwrap()
    }

    /// Names of the files in new/ and cur/ together, sorted.
    pub fn files(&self, user: &str) -> Vec<String> {
        let mut v = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir(user).join(sub)) {
                for e in rd {
                    v.push(format!(
                        "{sub}/{}",
                        e.unwrap().file_name().to_string_lossy()
                    ));
                }
            }
        }
        v.sort();
        v
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Logs in. A maildrop lock is an `flock`, which the kernel releases
    /// when the last descriptor of it closes; a process that another test
    /// forks at that moment holds a copy until its `exec` closes it, so a
    /// login right after a QUIT may meet `[IN-USE]` for an instant: that
    /// answer alone is tried again, for at most a second.
    pub async fn login(&self, user: (&str, &str)) -> Client {
        for _ in 0..50 {
            let mut c = self.connect().await;
            c.line().await;
            c.ok(&format!("USER {}", user.0)).await;
            let reply = c.cmd(&format!("PASS {}", user.1)).await;
            if reply.starts_with("+OK") {
                return c;
            }
            assert!(reply.starts_with("-ERR [IN-USE]"), "PASS: {reply}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{}: the maildrop stayed locked", user.0);
    }

    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Stops the server but keeps its directory.
    pub async fn shutdown(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Client {
    pub stream: BufReader<TcpStream>,
}

const TIMEOUT: Duration = Duration::from_secs(20);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        Client {
            stream: BufReader::new(stream),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// One response line, with its CRLF.
    pub async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        tokio::time::timeout(TIMEOUT, self.stream.read_until(b'\n', &mut buf))
            .await
            .expect("server did not answer in time")
            .unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Sends a command and returns the status line.
    pub async fn cmd(&mut self, command: &str) -> String {
        self.send(format!("{command}\r\n").as_bytes()).await;
        self.line().await
    }

    /// Sends a command and insists on `+OK`.
    pub async fn ok(&mut self, command: &str) -> String {
        let line = self.cmd(command).await;
        assert!(line.starts_with("+OK"), "{command}: {line}");
        line
    }

    /// The body of a multi-line response, raw (still dot-stuffed), without
    /// the terminating line.
    pub async fn body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let mut line = Vec::new();
            tokio::time::timeout(TIMEOUT, self.stream.read_until(b'\n', &mut line))
                .await
                .expect("server did not finish the response in time")
                .unwrap();
            assert!(
                !line.is_empty(),
                "connection closed inside a multi-line response"
            );
            if line == b".\r\n" {
                return body;
            }
            body.extend_from_slice(&line);
        }
    }

    /// Sends a command expecting a multi-line `+OK` and returns the
    /// status line and the unstuffed body.
    pub async fn multi(&mut self, command: &str) -> (String, Vec<u8>) {
        let status = self.ok(command).await;
        (status, unstuff(&self.body().await))
    }

    /// Whether the server closed the connection (reads to EOF).
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(TIMEOUT, self.stream.read_to_end(&mut rest)).await,
            Ok(Ok(_))
        )
    }
}

/// Undoes POP3 dot-stuffing of a multi-line body (CRLF lines).
pub fn unstuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// A message's bytes as POP3 sends them: CRLF line endings and a final
/// CRLF.
pub fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = 0u8;
    for &b in message {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A small tmpfs mounted for a full-disk test, unmounted on drop.
pub struct TmpFs {
    pub path: PathBuf,
}

impl TmpFs {
    /// Mounts a tmpfs of `size` (e.g. "64k") at `path` (created). `None`
    /// when this machine does not let the tests mount (not root, or a
    /// container without the capability).
    pub fn mount(path: &Path, size: &str) -> Option<TmpFs> {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| TmpFs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// The files of one Maildir subdirectory (`new`, `cur`, `tmp`): name and
/// content, sorted by name.
pub fn maildir_files(maildir: &Path, sub: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = match std::fs::read_dir(maildir.join(sub)) {
        Ok(rd) => rd
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The `,S=` and `,W=` fields of a Maildir file name.
pub fn size_fields(name: &str) -> (Option<u64>, Option<u64>) {
    let base = name.split(':').next().unwrap();
    let field = |key: &str| {
        base.split(',')
            .skip(1)
            .find_map(|f| f.strip_prefix(key))
            .and_then(|n| n.parse().ok())
    };
    (field("S="), field("W="))
}

/// mailbag refuses to touch mail as root without `[server] user`, and CI
/// runs the tests as root: a mailbag process that a test starts then runs
/// as `nobody` (pass the ids to `Command::uid` and `gid`), and `dir` (its
/// config, passwd-file and mail) is handed to nobody first. Call it again
/// after the test writes new files there as root. `None`, changing
/// nothing, when the tests do not run as root.
pub fn unprivileged(dir: &Path) -> Option<(u32, u32)> {
    fn chown_tree(path: &Path, uid: u32, gid: u32) {
        // Config files stay root's (and readable): started as root,
        // mailbag refuses a config anyone else could have written.
        if path.extension().is_some_and(|e| e == "toml") {
            return;
        }
        let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
        let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        if is_dir {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                chown_tree(&entry.path(), uid, gid);
            }
        }
    }
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("user nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    chown_tree(dir, uid, gid);
    Some((uid, gid))
}

/// [`unprivileged`] applied to a `std` command.
pub fn as_unprivileged<'c>(
    cmd: &'c mut std::process::Command,
    dir: &Path,
) -> &'c mut std::process::Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = unprivileged(dir) {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Login cycles (connect, USER, PASS, QUIT) per second that 16 clients
/// make against `addr` for ten seconds, each as its own user from
/// `user(i)` with `password`. Prints and returns the figure: for the
/// ignored rate tests that are run by hand.
pub async fn login_rate(
    what: &str,
    addr: SocketAddr,
    user: impl Fn(usize) -> String,
    password: &'static str,
) -> f64 {
    let began = std::time::Instant::now();
    let budget = std::time::Duration::from_secs(10);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let name = user(i);
        tasks.push(tokio::spawn(async move {
            let mut done = 0u32;
            while began.elapsed() < budget && done < 10_000 {
                let mut c = Client::connect(addr).await;
                c.line().await;
                c.ok(&format!("USER {name}")).await;
                c.ok(&format!("PASS {password}")).await;
                c.ok("QUIT").await;
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let secs = began.elapsed().as_secs_f64();
    let rate = f64::from(total) / secs;
    println!("{what}: {rate:.0} login cycles/s at 16 clients ({total} in {secs:.1} s)");
    rate
}

/// The passwd-file beside the other passdbs' rates: 16 users whose
/// hashes are in `scheme`, as the directories' rate tests store them.
pub async fn passwd_file_login_rate(scheme: mailbag::auth::scheme::Scheme) -> f64 {
    let stored = mailbag::auth::scheme::hash(scheme, b"load").unwrap();
    let server = TestServer::start_with_dir(|dir| {
        let lines: String = (0..16).map(|i| format!("load{i}:{stored}\n")).collect();
        std::fs::write(dir.join("passwd"), lines).unwrap();
        // Logins in flight count as failures until they succeed.
        "max_failures_per_address = 10000".to_string()
    })
    .await;
    login_rate(
        &format!("passwd-file {scheme:?}"),
        server.addr,
        |i| format!("load{i}"),
        "load",
    )
    .await
}
