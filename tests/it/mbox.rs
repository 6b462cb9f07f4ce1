//! Issue 16: mbox spools (`store.kind = "mbox"`), over real sockets and
//! real files: byte-exact retrieval of hostile spools, `[IN-USE]`, an MTA
//! appending during a session, and UPDATE killed or out of space.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mailbag::auth::passwd_file::PasswdFile;
use mailbag::config::Config;
use mailbag::server::Server;
use mailbag::store::mbox::MboxStore;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{as_unprivileged, config_text, crlf, free_port, write_passwd, Client};

/// A server on an mbox store whose spools are `<dir>/mail/%u`.
pub(crate) struct MboxServer {
    addr: SocketAddr,
    pub(crate) lmtp_addr: Option<SocketAddr>,
    pub(crate) dir: TempDir,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

fn mbox_config(dir: &Path, extra: &str) -> String {
    config_text(
        dir,
        &format!(
            "{extra}\n[store.mbox]\npath = \"{}/mail/%u\"\n",
            dir.display()
        ),
    )
    .replace("[store]\n", "[store]\nkind = \"mbox\"\n")
}

impl MboxServer {
    pub(crate) async fn start(prepare: impl FnOnce(&Path)) -> MboxServer {
        MboxServer::start_with("", prepare).await
    }

    pub(crate) async fn start_with(extra: &str, prepare: impl FnOnce(&Path)) -> MboxServer {
        let dir = tempfile::tempdir().unwrap();
        write_passwd(dir.path());
        std::fs::create_dir(dir.path().join("mail")).unwrap();
        prepare(dir.path());
        let config_path = dir.path().join("mailbag.toml");
        std::fs::write(&config_path, mbox_config(dir.path(), extra)).unwrap();
        let config = Config::load(&config_path).unwrap();
        let passdb = PasswdFile::open_with(
            &config.auth.passwd_file,
            mailbag::auth::cache::VerifiedCache::from_config(&config.auth),
            mailbag::auth::secret::ServerSecret::load_or_create(&config.auth.secret_file).unwrap(),
        )
        .unwrap();
        let store =
            MboxStore::new(&config.store.mbox.path, config.store.mbox.lock_options()).unwrap();
        let server = Server::bind(config, store, passdb).await.unwrap();
        let addr = server.local_addrs()[0];
        let lmtp_addr = server.lmtp_addrs().first().copied();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));
        MboxServer {
            addr,
            lmtp_addr,
            dir,
            shutdown,
            handle,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn spool(&self) -> PathBuf {
        self.dir.path().join("mail/alice")
    }

    /// Logs in; `[IN-USE]` alone is tried again for at most a second (a
    /// process another test forks holds a copy of the session lock's
    /// descriptor until its `exec`, as `TestServer::login` says).
    pub(crate) async fn login(&self) -> Client {
        for _ in 0..50 {
            let mut c = Client::connect(self.addr).await;
            c.line().await;
            c.ok("USER alice").await;
            let reply = c.cmd("PASS wonderland").await;
            if reply.starts_with("+OK") {
                return c;
            }
            assert!(reply.starts_with("-ERR [IN-USE]"), "PASS: {reply}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("alice: the spool stayed locked");
    }

    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }
}

/// An mbox entry as Postfix `local(8)` writes one: `From_` line, the
/// message (which must end in LF), the empty separator line.
pub(crate) fn entry(sender: &str, message: &[u8]) -> Vec<u8> {
    let mut e = format!("From {sender} Sun Dec  6 22:00:00 2026\n").into_bytes();
    e.extend_from_slice(message);
    e.push(b'\n');
    e
}

/// Appends `message` as an MTA does: the dotlock `<spool>.lock` by
/// `O_EXCL`, a process-wide POSIX `fcntl` write lock, append, unlock.
pub(crate) fn mta_append(spool: &Path, message: &[u8]) {
    use nix::fcntl::FcntlArg;
    use std::io::Write;
    let lock = spool.with_extension("lock");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                assert!(Instant::now() < deadline, "the dotlock was never free");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(spool)
        .unwrap();
    let mut fl = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(&f, FcntlArg::F_SETLKW(&fl)).unwrap();
    f.write_all(&entry("mta@example.org", message)).unwrap();
    f.sync_all().unwrap();
    fl.l_type = nix::libc::F_UNLCK as i16;
    nix::fcntl::fcntl(&f, FcntlArg::F_SETLK(&fl)).unwrap();
    drop(f);
    std::fs::remove_file(&lock).unwrap();
}

/// Messages of the hostile spool, as a client must see them (before
/// CRLF): `From ` in bodies, quoting kept as stored, CR bytes, dots, a
/// line far longer than any buffer.
fn hostile() -> Vec<Vec<u8>> {
    let mut huge = b"Subject: huge\n\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 600_000));
    huge.extend_from_slice(b"\nend\n");
    vec![
        b"Subject: from lines\n\nbody\nFrom not after an empty line\n>From quoted\n>>From twice\n"
            .to_vec(),
        b"Subject: cr\r\n\r\nbare\rcr and crlf\r\nmixed\n".to_vec(),
        huge,
        b"Subject: dots\n\n.leading\n..two\n.\n".to_vec(),
        b"Subject: blank lines at the end\n\nx\n\n\n".to_vec(),
        b"Subject: ends without a newline\n\nno newline".to_vec(),
    ]
}

fn hostile_spool() -> Vec<u8> {
    let messages = hostile();
    let mut spool = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if i + 1 == messages.len() {
            // The last one as a broken writer left it: no LF, no separator.
            spool.extend_from_slice(b"From x Sun Dec  6 22:00:00 2026\n");
            spool.extend_from_slice(m);
        } else {
            spool.extend_from_slice(&entry("x@example.org", m));
        }
    }
    spool
}

#[tokio::test]
async fn every_message_of_a_hostile_spool_is_retrieved_byte_exact() {
    let s =
        MboxServer::start(|d| std::fs::write(d.join("mail/alice"), hostile_spool()).unwrap()).await;
    let messages = hostile();
    let mut c = s.login().await;
    let total: usize = messages.iter().map(|m| crlf(m).len()).sum();
    assert_eq!(
        c.ok("STAT").await.trim_end(),
        format!("+OK {} {total}", messages.len())
    );
    for (i, m) in messages.iter().enumerate() {
        let n = i + 1;
        let want = crlf(m);
        assert_eq!(
            c.ok(&format!("LIST {n}")).await.trim_end(),
            format!("+OK {n} {}", want.len())
        );
        let (_, body) = c.multi(&format!("RETR {n}")).await;
        assert!(body == want, "message {n}");
    }
    // TOP: the headers, the empty line and one body line.
    let (_, top) = c.multi("TOP 4 1").await;
    assert_eq!(top, b"Subject: dots\r\n\r\n.leading\r\n");
    let (_, top) = c.multi("TOP 3 0").await;
    assert_eq!(top, b"Subject: huge\r\n\r\n");
    c.ok("QUIT").await;

    // Python's poplib (its 2048-octet line limit leaves out the huge one).
    let script = r#"
import poplib, sys, hashlib
p = poplib.POP3(sys.argv[1], int(sys.argv[2]), timeout=20)
p.user("alice"); p.pass_("wonderland")
for i in [1, 2, 4, 5, 6]:
    resp, lines, octets = p.retr(i)
    data = b"".join(l + b"\r\n" for l in lines)
    size = int(p.list(i).split()[2])
    sys.stdout.write("%d %d %s\n" % (size, len(data), hashlib.sha256(data).hexdigest()))
p.quit()
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(s.addr.ip().to_string())
        .arg(s.addr.port().to_string())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    for (line, i) in lines.iter().zip([0, 1, 3, 4, 5]) {
        let want = crlf(&messages[i]);
        let sha: String = {
            use sha2::Digest;
            sha2::Sha256::digest(&want)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(*line, format!("{} {} {sha}", want.len(), want.len()));
    }
    assert_eq!(lines.len(), 5, "{stdout}");
    // Nothing was deleted, so nothing was written.
    assert_eq!(std::fs::read(s.spool()).unwrap(), hostile_spool());
    s.stop().await;
}

/// curl, a second real client, retrieves every message of the hostile
/// spool byte-exact (the huge line too).
#[tokio::test]
async fn curl_retrieves_every_message_of_a_hostile_spool_byte_exact() {
    let s =
        MboxServer::start(|d| std::fs::write(d.join("mail/alice"), hostile_spool()).unwrap()).await;
    for (i, m) in hostile().iter().enumerate() {
        let out = tokio::process::Command::new("curl")
            .args(["--silent", "--show-error", "--user", "alice:wonderland"])
            .arg(format!("pop3://127.0.0.1:{}/{}", s.addr.port(), i + 1))
            .output()
            .await
            .expect("curl is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == crlf(m), "message {}", i + 1);
    }
    s.stop().await;
}

#[tokio::test]
async fn an_empty_or_missing_spool_is_an_empty_maildrop() {
    let s = MboxServer::start(|d| std::fs::write(d.join("mail/alice"), b"").unwrap()).await;
    let mut c = s.login().await;
    assert_eq!(c.ok("STAT").await.trim_end(), "+OK 0 0");
    c.ok("QUIT").await;
    std::fs::remove_file(s.spool()).unwrap();
    let mut c = s.login().await;
    assert_eq!(c.ok("STAT").await.trim_end(), "+OK 0 0");
    let (_, uidl) = c.multi("UIDL").await;
    assert!(uidl.is_empty());
    c.ok("QUIT").await;
    assert!(!s.spool().exists());
    s.stop().await;
}

#[tokio::test]
async fn a_second_session_is_in_use_and_uidls_survive_deletes_and_restarts() {
    let mut spool = Vec::new();
    spool.extend(entry(
        "a@x",
        b"X-UIDL: qpopper-left-this\nSubject: 1\n\none\n",
    ));
    spool.extend(entry("b@x", b"Subject: 2\nStatus: RO\n\ntwo\n"));
    spool.extend(entry("b@x", b"Subject: 2\n\ntwo\n"));
    spool.extend(entry("c@x", b"Subject: 3\n\nthree\n"));
    let s = MboxServer::start(|d| std::fs::write(d.join("mail/alice"), &spool).unwrap()).await;
    let mut c = s.login().await;
    let mut other = Client::connect(s.addr).await;
    other.line().await;
    other.ok("USER alice").await;
    let refused = other.cmd("PASS wonderland").await;
    assert!(refused.starts_with("-ERR [IN-USE]"), "{refused}");
    let (_, before) = c.multi("UIDL").await;
    let before: Vec<String> = String::from_utf8(before)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(before[0], "qpopper-left-this");
    assert_eq!(before[2], format!("{}-2", before[1]));
    c.ok("DELE 1").await;
    c.ok("QUIT").await;
    let mut c = s.login().await;
    let (_, after) = c.multi("UIDL").await;
    let after: Vec<String> = String::from_utf8(after)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(after, before[1..]);
    c.ok("QUIT").await;
    s.stop().await;
}

#[tokio::test]
async fn deliveries_during_a_session_are_not_blocked_and_are_kept() {
    let mut spool = Vec::new();
    for i in 0..50 {
        spool.extend(entry(
            "a@x",
            format!("Message-ID: <old{i}>\n\nold {i}\n").as_bytes(),
        ));
    }
    let s = MboxServer::start(|d| std::fs::write(d.join("mail/alice"), &spool).unwrap()).await;
    let mut c = s.login().await;
    let path = s.spool();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let appender = std::thread::spawn(move || {
        for i in 0..30 {
            mta_append(
                &path,
                format!("Message-ID: <new{i}>\n\nnew {i}\n").as_bytes(),
            );
            let _ = tx.send(i);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    // Deliveries go through while the session holds the maildrop.
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("a delivery was blocked by the POP3 session")
            .unwrap();
    }
    assert_eq!(c.ok("STAT").await.split(' ').nth(1), Some("50"));
    for n in 1..=40 {
        c.ok(&format!("DELE {n}")).await;
    }
    c.ok("QUIT").await;
    appender.join().unwrap();
    let data = std::fs::read(s.spool()).unwrap();
    let got: Vec<String> = mailbag::admin::import::split_mbox(&data)
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    let mut want: Vec<String> = (40..50)
        .map(|i| format!("Message-ID: <old{i}>\n\nold {i}\n"))
        .collect();
    want.extend((0..30).map(|i| format!("Message-ID: <new{i}>\n\nnew {i}\n")));
    assert_eq!(got, want);
    s.stop().await;
}

/// LMTP delivers into the spool (appending as an MTA does, `From ` lines
/// quoted) while a POP3 session holds it; the session's QUIT keeps it.
#[tokio::test]
async fn lmtp_delivers_into_the_spool_during_a_session() {
    let s = MboxServer::start_with("[lmtp]\nlisten = [\"127.0.0.1:0\"]", |d| {
        std::fs::write(d.join("mail/alice"), entry("a@x", b"Subject: old\n\nold\n")).unwrap()
    })
    .await;
    let mut pop = s.login().await;
    let mut c = Client::connect(s.lmtp_addr.unwrap()).await;
    assert!(c.line().await.starts_with("220 "));
    c.send(b"LHLO client.example\r\n").await;
    while c.line().await.starts_with("250-") {}
    assert!(c
        .cmd("MAIL FROM:<bob@example.org>")
        .await
        .starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(b"Subject: new\r\n\r\nFrom the start\r\n.\r\n").await;
    let done = c.line().await;
    assert!(done.starts_with("250"), "{done}");
    pop.ok("DELE 1").await;
    pop.ok("QUIT").await;
    let mut pop = s.login().await;
    assert!(pop.ok("STAT").await.starts_with("+OK 1 "));
    let (_, body) = pop.multi("RETR 1").await;
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("Subject: new\r\n\r\n>From the start\r\n"),
        "{text}"
    );
    assert!(text.starts_with("Return-Path: <bob@example.org>"), "{text}");
    pop.ok("QUIT").await;
    s.stop().await;
}

fn mailbag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailbag"))
}

/// A child `mailbag serve` on `port`, as nobody when the tests run as
/// root; `ulimit_blocks` limits the size of the files it writes.
fn serve(dir: &Path, ulimit_blocks: Option<u32>) -> Child {
    let mut cmd = match ulimit_blocks {
        Some(blocks) => {
            let mut cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(format!(
                    "trap '' XFSZ; ulimit -f {blocks}; exec \"$0\" serve --config \"$1\""
                ))
                .arg(env!("CARGO_BIN_EXE_mailbag"))
                .arg(dir.join("mailbag.toml"));
            cmd
        }
        None => {
            let mut cmd = mailbag();
            cmd.arg("serve")
                .arg("--config")
                .arg(dir.join("mailbag.toml"));
            cmd
        }
    };
    as_unprivileged(&mut cmd, dir);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn login_to(addr: SocketAddr) -> Client {
    for _ in 0..400 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            let mut c = Client {
                stream: tokio::io::BufReader::new(s),
            };
            c.line().await;
            c.ok("USER alice").await;
            c.ok("PASS wonderland").await;
            return c;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server at {addr} never came up");
}

/// A directory with a config for a child server on a fresh port.
fn child_setup(spool: &[u8]) -> (TempDir, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    std::fs::create_dir(dir.path().join("mail")).unwrap();
    std::fs::write(dir.path().join("mail/alice"), spool).unwrap();
    let port = free_port();
    let text = mbox_config(dir.path(), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
    (dir, format!("127.0.0.1:{port}").parse().unwrap())
}

fn numbered(i: usize) -> Vec<u8> {
    let mut m = format!("Message-ID: <{i}@test>\nSubject: number {i}\n\n").into_bytes();
    for line in 0..20 {
        m.extend_from_slice(format!("line {line} of message {i}, padding padding\n").as_bytes());
    }
    m
}

/// Files beside the spool that must not outlive an UPDATE.
fn leftovers(mail: &Path) -> Vec<String> {
    std::fs::read_dir(mail)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("journal"))
        .collect()
}

/// A server process killed at a random moment of UPDATE, and an MTA
/// delivering before the next session (breaking the dotlock the dead
/// process left, as it would once that is stale): afterwards every
/// message that was not deleted is there exactly once, byte-exact, the
/// deletions are all done or none, and the delivery is kept.
#[tokio::test]
async fn update_killed_at_any_moment_loses_and_duplicates_nothing() {
    const ROUNDS: usize = 16;
    const MESSAGES: usize = 1000;
    const DELETED: usize = 600;
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut outcomes = [0usize; 2];
    // Rounds killed with a journal on disk (mid-UPDATE).
    let mut caught = 0;
    for round in 0..ROUNDS {
        let mut spool = Vec::new();
        for i in 0..MESSAGES {
            spool.extend(entry("a@x", &numbered(i)));
        }
        let (dir, addr) = child_setup(&spool);
        let mut child = serve(dir.path(), None);
        let mut c = login_to(addr).await;
        let mut dele = String::new();
        for n in 1..=DELETED {
            dele.push_str(&format!("DELE {n}\r\n"));
        }
        c.send(dele.as_bytes()).await;
        for _ in 0..DELETED {
            assert!(c.line().await.starts_with("+OK"));
        }
        c.send(b"QUIT\r\n").await;
        let wait = Duration::from_micros(next() % 20_000);
        std::thread::sleep(wait);
        child.kill().unwrap();
        child.wait().unwrap();

        let spool_path = dir.path().join("mail/alice");
        if !leftovers(&dir.path().join("mail")).is_empty() {
            caught += 1;
        }
        let _ = std::fs::remove_file(spool_path.with_extension("lock"));
        mta_append(&spool_path, &numbered(MESSAGES));

        let mut child = serve(dir.path(), None);
        let mut c = login_to(addr).await;
        c.ok("QUIT").await;
        child.kill().unwrap();
        child.wait().unwrap();

        let data = std::fs::read(&spool_path).unwrap();
        let got = mailbag::admin::import::split_mbox(&data);
        let kept: Vec<Vec<u8>> = (DELETED..=MESSAGES).map(numbered).collect();
        let all: Vec<Vec<u8>> = (0..=MESSAGES).map(numbered).collect();
        let deleted_done = got == kept;
        assert!(
            deleted_done || got == all,
            "round {round} (killed after {wait:?}): {} messages, first {:?}",
            got.len(),
            got.first()
                .map(|m| String::from_utf8_lossy(&m[..30]).into_owned())
        );
        assert!(
            leftovers(&dir.path().join("mail")).is_empty(),
            "round {round}"
        );
        outcomes[usize::from(deleted_done)] += 1;
    }
    println!(
        "kept all {}, deleted all {}, killed with a journal on disk {caught}",
        outcomes[0], outcomes[1]
    );
}

/// UPDATE on a full disk (writes past a file size limit fail, as they
/// would with no space left): `-ERR`, and the spool is as it was, with
/// no journal left behind.
#[tokio::test]
async fn update_out_of_space_fails_and_leaves_the_spool_as_it_was() {
    let mut spool = Vec::new();
    for i in 0..1500 {
        spool.extend(entry("a@x", &numbered(i)));
    }
    assert!(spool.len() > 1 << 20);
    let (dir, addr) = child_setup(&spool);
    // 256 blocks: 128 or 256 KiB, as the shell counts them.
    let mut child = serve(dir.path(), Some(256));
    let mut c = login_to(addr).await;
    c.ok("DELE 1").await;
    let reply = c.cmd("QUIT").await;
    assert!(reply.starts_with("-ERR"), "{reply}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(std::fs::read(dir.path().join("mail/alice")).unwrap() == spool);
    assert!(leftovers(&dir.path().join("mail")).is_empty());
    // With space again, the same UPDATE works.
    let mut child = serve(dir.path(), None);
    let mut c = login_to(addr).await;
    c.ok("DELE 1").await;
    c.ok("QUIT").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let data = std::fs::read(dir.path().join("mail/alice")).unwrap();
    assert_eq!(mailbag::admin::import::split_mbox(&data).len(), 1499);
}

/// SUMMARY, `mailbag mailbox inspect/show` and `mailbag import` work on an
/// mbox store; `quarantine` without `store.mbox.quarantine_dir` is
/// refused with nothing done.
#[tokio::test]
async fn summary_mailbox_and_import_work_on_mbox() {
    let mut spool = Vec::new();
    spool.extend(entry(
        "a@x",
        b"From: A <a@example.org>\nSubject: first\n\nhello\n",
    ));
    let (dir, addr) = child_setup(&spool);
    let mut child = serve(dir.path(), None);
    let mut c = login_to(addr).await;
    let (status, body) = c.multi("SUMMARY").await;
    assert!(status.starts_with("+OK"), "{status}");
    assert!(
        String::from_utf8_lossy(&body).contains("first"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    c.ok("QUIT").await;
    child.kill().unwrap();
    child.wait().unwrap();

    let run = |args: &[&str]| {
        let mut cmd = mailbag();
        cmd.arg("--config")
            .arg(dir.path().join("mailbag.toml"))
            .args(args);
        as_unprivileged(&mut cmd, dir.path());
        cmd.output().unwrap()
    };
    let out = run(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["mailbox", "inspect", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("first"));
    let out = run(&["mailbox", "show", "alice", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Subject: first"));
    let before = std::fs::read(dir.path().join("mail/alice")).unwrap();
    let out = run(&["mailbox", "quarantine", "alice", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.mbox.quarantine_dir"));
    assert_eq!(
        std::fs::read(dir.path().join("mail/alice")).unwrap(),
        before
    );

    // An mbox file from elsewhere, with a `From ` line in a body.
    let source = dir.path().join("old.mbox");
    let mut old = entry("z@x", b"Subject: imported\n\n>From here on\n");
    old.extend(entry("z@x", b"Subject: imported 2\n\ntwo\n"));
    std::fs::write(&source, &old).unwrap();
    let out = run(&[
        "import",
        "--user",
        "alice",
        "--from",
        &format!("mbox:{}", source.display()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data = std::fs::read(dir.path().join("mail/alice")).unwrap();
    let messages = mailbag::admin::import::split_mbox(&data);
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[1], b"Subject: imported\n\nFrom here on\n");
    // Stored quoted, as every MTA writes it.
    assert!(data.windows(15).any(|w| w == b"\n>From here on\n"));
}

/// `mailbag import --from mbox:` of a file that is no mbox (one message
/// saved on its own, a file damaged at its start) fails, copies nothing
/// and says why; it used to skip everything before the first `From `
/// line and report "copied and verified 0 messages" (or fewer than the
/// file held) as a success. An empty file, or empty lines before the
/// first `From ` line, are an mbox as before.
#[test]
fn import_of_a_file_that_is_no_mbox_copies_nothing_and_fails() {
    let spool = entry("a@x", b"Subject: own\n\nmine\n");
    let (dir, _) = child_setup(&spool);
    let import = |contents: &[u8]| {
        let source = dir.path().join("source");
        std::fs::write(&source, contents).unwrap();
        let mut cmd = mailbag();
        cmd.arg("--config")
            .arg(dir.path().join("mailbag.toml"))
            .args(["import", "--user", "alice", "--from"])
            .arg(format!("mbox:{}", source.display()));
        as_unprivileged(&mut cmd, dir.path());
        cmd.output().unwrap()
    };
    let spool_now = || std::fs::read(dir.path().join("mail/alice")).unwrap();

    let mut damaged = b"Subject: lost\n\nfirst message\n\n".to_vec();
    damaged.extend(entry("b@x", b"Subject: second\n\ntwo\n"));
    for contents in [&b"Subject: one message\n\nbody\n"[..], &damaged] {
        let out = import(contents);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("not an mbox file"), "{stderr}");
        assert!(stderr.contains("line 1 "), "{stderr}");
        assert_eq!(spool_now(), spool);
    }
    // CR-only line ends: the whole file would be one `From ` line.
    let out = import(b"From a@x\rSubject: one\r\rbody\r\rFrom b@x\rSubject: two\r\rtwo\r");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("CR-only"), "{stderr}");
    assert_eq!(spool_now(), spool);

    let out = import(b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut blank_first = b"\n\r\n".to_vec();
    blank_first.extend(entry("c@x", b"Subject: third\n\nthree\n"));
    let out = import(&blank_first);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mailbag::admin::import::split_mbox(&spool_now()).len(), 2);
}

/// The first login to a 100,000-message spool, to the end of UIDL (debug
/// build: a figure, not a benchmark). `cargo test --test it -- --ignored
/// mbox_first_login --nocapture`
#[tokio::test]
#[ignore]
async fn mbox_first_login_of_100000_messages() {
    const N: usize = 100_000;
    let s = MboxServer::start(|d| {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(d.join("mail/alice")).unwrap());
        for i in 0..N {
            f.write_all(&entry("bench@localhost", &numbered(i)))
                .unwrap();
        }
        f.flush().unwrap();
    })
    .await;
    let started = Instant::now();
    let mut c = s.login().await;
    let (_, uidl) = c.multi("UIDL").await;
    let took = started.elapsed();
    assert_eq!(
        uidl.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        N
    );
    let size = std::fs::metadata(s.spool()).unwrap().len();
    println!(
        "mbox first login to the end of UIDL: {N} messages, {} MB, {took:?} (debug build)",
        size >> 20
    );
    c.ok("QUIT").await;
    s.stop().await;
}

/// `mailbag deliver` into a spool on a full disk (a file size limit):
/// exit 75 for the MTA to retry, and the spool cut back to what it was,
/// its dotlock gone.
#[test]
fn deliver_out_of_space_exits_75_and_leaves_the_spool_as_it_was() {
    let mut spool = Vec::new();
    for i in 0..50 {
        spool.extend(entry("a@x", &numbered(i)));
    }
    let (dir, _) = child_setup(&spool);
    let mut big = b"Subject: big\n\n".to_vec();
    for i in 0..20_000 {
        big.extend_from_slice(format!("line {i} of a large message\n").as_bytes());
    }
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("trap '' XFSZ; ulimit -f 256; exec \"$0\" deliver --config \"$1\" --user alice")
        .arg(env!("CARGO_BIN_EXE_mailbag"))
        .arg(dir.path().join("mailbag.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_unprivileged(&mut cmd, dir.path());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(&big);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(std::fs::read(dir.path().join("mail/alice")).unwrap() == spool);
    assert!(!dir.path().join("mail/alice.lock").exists());
}

/// `mailbag mailbox quarantine` and `release` on an mbox spool, beside a
/// running server: refused while a POP3 session holds the spool; the
/// quarantined message leaves the POP3 view (into its own mbox file in
/// `store.mbox.quarantine_dir`) and comes back at the spool's end with
/// its UIDL, byte-exact; a delivery made meanwhile is kept.
#[tokio::test]
async fn mailbox_quarantine_and_release_move_a_message_out_of_the_spool_and_back() {
    let mut spool = entry("a@x", b"Subject: first\n\nhello\n");
    spool.extend(entry("b@x", b"Subject: culprit\n\nbad\n>From quoted\n"));
    spool.extend(entry("c@x", b"Subject: third\n\nbye\n"));
    let (dir, addr) = child_setup(&spool);
    let quarantine = dir.path().join("quarantine");
    let config = dir.path().join("mailbag.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    // [store.mbox] is the config's last table.
    text.push_str(&format!("quarantine_dir = \"{}\"\n", quarantine.display()));
    std::fs::write(&config, text).unwrap();
    let run = |args: &[&str]| {
        let mut cmd = mailbag();
        cmd.arg("--config").arg(&config).args(args);
        as_unprivileged(&mut cmd, dir.path());
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut child = serve(dir.path(), None);
    let mut c = login_to(addr).await;
    let (_, uidls) = c.multi("UIDL").await;
    let uidls = String::from_utf8(uidls).unwrap();
    let culprit = uidls
        .lines()
        .nth(1)
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    let (_, culprit_body) = c.multi("RETR 2").await;

    // A session holds the spool: nothing is done.
    let (ok, _, err) = run(&["mailbox", "quarantine", "alice", "2"]);
    assert!(!ok);
    assert!(err.contains("in use by a POP3 session"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("mail/alice")).unwrap(), spool);
    c.ok("QUIT").await;

    let (ok, out, err) = run(&["mailbox", "quarantine", "alice", "2"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("(UIDL {culprit})"))
            && out.contains(&format!("mailbag mailbox release alice {culprit}")),
        "{out}"
    );
    let copies: Vec<_> = std::fs::read_dir(quarantine.join("alice"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(
        std::fs::read(&copies[0]).unwrap(),
        entry("b@x", b"Subject: culprit\n\nbad\n>From quoted\n")
    );
    let (ok, out, err) = run(&["mailbox", "inspect", "alice"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("2 messages") && out.contains("quarantined: 1"),
        "{out}"
    );
    assert!(out.contains("culprit") && out.contains(&culprit), "{out}");

    let mut c = login_to(addr).await;
    let (_, list) = c.multi("UIDL").await;
    let list = String::from_utf8(list).unwrap();
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(!list.contains(&culprit));
    c.ok("QUIT").await;
    // A delivery while the message is in quarantine.
    mta_append(&dir.path().join("mail/alice"), b"Subject: fourth\n\nnew\n");

    let (ok, _, err) = run(&["mailbox", "release", "alice", "nosuchuidl"]);
    assert!(!ok && err.contains("no quarantined message"), "{err}");
    let (ok, out, err) = run(&["mailbox", "release", "alice", &culprit]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        format!("released {culprit} into the maildrop of alice")
    );
    let mut c = login_to(addr).await;
    let (_, list) = c.multi("UIDL").await;
    let list = String::from_utf8(list).unwrap();
    assert_eq!(list.lines().count(), 4, "{list}");
    assert_eq!(list.lines().nth(3).unwrap(), format!("4 {culprit}"));
    let (_, body) = c.multi("RETR 4").await;
    assert_eq!(body, culprit_body);
    let (_, fourth) = c.multi("TOP 3 0").await;
    assert!(String::from_utf8_lossy(&fourth).contains("fourth"));
    c.ok("QUIT").await;
    assert!(std::fs::read_dir(quarantine.join("alice"))
        .unwrap()
        .next()
        .is_none());
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `mailbag check-config` with the mbox store checks the spool directory
/// as the server's user: missing, or one it cannot create files in (the
/// dotlock, session lock and journal go there), is an error naming the
/// fix; for Debian's `root:mail` 2775 `/var/mail`, the group to run as.
#[test]
fn check_config_wants_a_spool_directory_the_server_can_create_files_in() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let (dir, _) = child_setup(&entry("a@x", b"Subject: s\n\nx\n"));
    let mail = dir.path().join("mail");
    let check = |gid: Option<u32>| {
        let mut cmd = mailbag();
        cmd.arg("--config")
            .arg(dir.path().join("mailbag.toml"))
            .arg("check-config");
        as_unprivileged(&mut cmd, dir.path());
        if let Some(gid) = gid {
            cmd.gid(gid);
        }
        // As Debian has /var/mail (after `as_unprivileged` gave the test
        // directory to the unprivileged user).
        if mail.exists() && nix::unistd::geteuid().is_root() {
            let group = nix::unistd::Group::from_name("mail").unwrap().unwrap();
            std::os::unix::fs::chown(&mail, Some(0), Some(group.gid.as_raw())).unwrap();
            std::fs::set_permissions(&mail, std::fs::Permissions::from_mode(0o2775)).unwrap();
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED the group part: it needs root to make a root:mail directory");
    } else {
        let (ok, err) = check(None);
        assert!(!ok);
        assert!(
            err.contains("store.mbox.path")
                && err.contains("cannot create files in the spool directory")
                && err.contains("[server] group = \"mail\""),
            "{err}"
        );
        let mail_gid = nix::unistd::Group::from_name("mail").unwrap().unwrap().gid;
        let (ok, err) = check(Some(mail_gid.as_raw()));
        assert!(ok, "{err}");
    }
    std::fs::remove_file(mail.join("alice")).unwrap();
    std::fs::remove_dir(&mail).unwrap();
    let (ok, err) = check(None);
    assert!(!ok);
    assert!(
        err.contains("store.mbox.path") && err.contains("does not exist"),
        "{err}"
    );
}
